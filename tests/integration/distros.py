"""Imported distros shared by the integration and security tests.

Importing Debian takes tens of seconds, so each (host user, tarball) pair is
imported once per test process and reused by every module that asks for it
(tests/integration and tests/security both use this).  Tests that change the
instance keep to their own scratch paths.

    inst = imported(host_user, "deb", debian_tar)
    cp = inst.sh("echo hi")                 # lx -d deb -- 'echo hi'
    cp = inst.exe("id", "-u")               # lx -d deb -e id -u
    inst.rootfs                             # host path of the instance root
"""

from __future__ import annotations

import atexit
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.fixtures.runner import HostUser, LxRunner, describe

__all__ = ["Instance", "imported", "close_all", "describe"]


@dataclass
class Instance:
    runner: LxRunner
    name: str

    @property
    def user(self) -> HostUser:
        return self.runner.user

    @property
    def rootfs(self) -> Path:
        return self.runner.distros / self.name / "rootfs"

    def lx(self, args: list[str], input: bytes | None = None, timeout: float = 120,
           check: bool = False, **kw) -> subprocess.CompletedProcess:
        return self.runner.run(["-d", self.name, *args], input=input, timeout=timeout,
                               check=check, **kw)

    def sh(self, command: str, input: bytes | None = None, timeout: float = 120,
           check: bool = False, **kw) -> subprocess.CompletedProcess:
        """lx -d NAME -- COMMAND (through the user's shell)."""
        return self.lx(["--", command], input=input, timeout=timeout, check=check, **kw)

    def exe(self, *argv: str, input: bytes | None = None, timeout: float = 120,
            check: bool = False, **kw) -> subprocess.CompletedProcess:
        """lx -d NAME -e ARGV... (exec directly)."""
        return self.lx(["-e", *argv], input=input, timeout=timeout, check=check, **kw)

    def out(self, command: str, **kw) -> str:
        """stdout of a shell command that must succeed."""
        cp = self.sh(command, check=True, **kw)
        return cp.stdout.decode(errors="replace")


_cache: dict[tuple[str, str, str], Instance] = {}


def imported(user: HostUser, name: str, tarball: Path) -> Instance:
    key = (user.kind, name, str(tarball))
    if key not in _cache:
        runner = LxRunner(user)
        try:
            runner.import_distro(name, tarball)
        except BaseException:
            runner.close()
            raise
        _cache[key] = Instance(runner, name)
    return _cache[key]


def close_all() -> None:
    while _cache:
        _, inst = _cache.popitem()
        inst.runner.close()


atexit.register(close_all)


def run_probe(distro: Instance, program: bytes, path: str, *args: str,
              user: str | None = None) -> dict[str, str]:
    """Copy a static probe program to `path` inside the distro and run it
    (as `user`, or the default user); its lines as {first two words: the
    rest}, the form the C probes under tests/fixtures/programs print."""
    cp = distro.lx(["--", f"mkdir -p {path.rsplit('/', 1)[0]} && cat > {path} && chmod 755 {path}"],
                   input=program, timeout=60)
    assert cp.returncode == 0, describe(cp)
    cp = distro.lx([*(["-u", user] if user else []), "--", path, *args], timeout=60)
    assert cp.returncode == 0, describe(cp)
    out = {}
    for line in cp.stdout.decode().splitlines():
        words = line.split(" ", 2)
        out[" ".join(words[:2])] = words[2] if len(words) > 2 else ""
    return out
