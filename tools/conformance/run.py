"""Run LTP's `runtest/syscalls` natively (a chroot) and under lxsub, side by side.

Both environments get the same tree: the Debian bookworm fixture with the
LTP build laid over it.  Each entry runs as LTP's README says, one at a time
per environment, `cd /tmp; PATH=/opt/ltp/testcases/bin:$PATH LTPROOT=/opt/ltp
TMPDIR=/tmp COMMAND`, as root, with a time limit; the two environments run
in parallel threads (one core each).

- native: `unshare --mount` + chroot, with /proc, /sys, /dev and a fresh
  tmpfs /tmp mounted for each entry (needs root);
- lxsub: the tree imported once as a distro in a private LX_HOME, each entry
  one `lx -d ltp -u root -e /bin/sh -c ...`; after a timeout the instance is
  terminated so that nothing of the entry lingers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

from tools.conformance.build import parse_runtest

PREFIX = "/opt/ltp"
SHELL_SETUP = f"cd /tmp; PATH={PREFIX}/testcases/bin:$PATH LTPROOT={PREFIX} TMPDIR=/tmp; export PATH LTPROOT TMPDIR; "
FIRST_PROBLEM = re.compile(rb"^.*\b(TFAIL|TBROK)\b.*$", re.M)
FIRST_TCONF = re.compile(rb"^.*\bTCONF\b.*$", re.M)
OUTPUT_LIMIT = 4000


@dataclasses.dataclass
class Result:
    name: str
    status: str          # pass, conf, fail, timeout, missing
    exit: int | None
    seconds: float
    problem: str = ""    # the first TFAIL/TBROK line, or the output's tail

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def read_runtest(root: Path) -> list[tuple[str, str]]:
    """(name, command) for each entry of the build's runtest/syscalls."""
    return parse_runtest((root / PREFIX.lstrip("/") / "runtest" / "syscalls").read_text())


def classify(name: str, code: int | None, output: bytes, seconds: float,
             timed_out: bool) -> Result:
    """LTP's exit status: 0 pass, 32 TCONF, anything else a failure."""
    found = (FIRST_TCONF if code == 32 and not timed_out else FIRST_PROBLEM).search(output)
    problem = found.group(0).decode(errors="replace").strip() if found else ""
    if timed_out:
        status = "timeout"
    elif code == 0:
        status = "pass"
    elif code == 32:
        status = "conf"
    elif code == 127 and b"not found" in output:
        status = "missing"
    else:
        status = "fail"
    if status in ("fail", "timeout") and not problem:
        tail = output.decode(errors="replace").strip().splitlines()[-3:]
        problem = " | ".join(tail)[:300]
    return Result(name, status, code, round(seconds, 2), problem[:300])


def _run_group(argv: list[str], timeout: float, env: dict | None = None) -> tuple[int | None, bytes, bool]:
    """Run argv in its own process group; kill the group on timeout."""
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        out, _ = p.communicate(timeout=timeout)
        return p.returncode, out[-OUTPUT_LIMIT * 4:], False
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            out, _ = p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            out = b""
        return p.returncode, (out or b"")[-OUTPUT_LIMIT * 4:], True


def kill_rooted_in(root: Path) -> list[int]:
    """SIGKILL every host process whose root directory is `root` (or a
    directory below it); returns their pids."""
    prefix = os.path.realpath(root)
    killed = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            where = os.readlink(f"/proc/{entry}/root").removesuffix(" (deleted)")
        except OSError:
            continue
        if where == prefix or where.startswith(prefix + "/"):
            try:
                os.kill(int(entry), signal.SIGKILL)
                killed.append(int(entry))
            except ProcessLookupError:
                pass
    return killed


class Native:
    """Entries run in a chroot of the tree, with a private mount namespace each."""

    name = "native"

    def __init__(self, root: Path) -> None:
        self.root = root

    def run(self, name: str, command: str, timeout: float) -> Result:
        r = str(self.root)
        setup = (f"mount -t proc proc {r}/proc && mount --rbind /dev {r}/dev && "
                 f"mount -t sysfs sysfs {r}/sys && mount -t tmpfs tmpfs {r}/tmp && "
                 f"exec chroot {r} /bin/sh -c \"$0\"")
        argv = ["unshare", "--mount", "--propagation", "private", "--fork", "--",
                "/bin/sh", "-c", setup, SHELL_SETUP + "exec " + command]
        t0 = time.monotonic()
        code, out, timed_out = _run_group(argv, timeout)
        seconds = time.monotonic() - t0
        # A test's daemon that left the process group (setsid, a double
        # fork) would outlive it, and the tree, for hours: end it too.
        kill_rooted_in(self.root)
        return classify(name, code, out, seconds, timed_out)

    def close(self) -> None:
        kill_rooted_in(self.root)


class Lxsub:
    """Entries run under lxsub: the tree imported once as distro `ltp`."""

    name = "lxsub"

    def __init__(self, tarball: Path, home: Path, src: Path) -> None:
        self.home = home
        self.env = dict(os.environ, LX_HOME=str(home / "home"),
                        XDG_CONFIG_HOME=str(home / "config"),
                        XDG_RUNTIME_DIR=str(home / "run"),
                        PYTHONPATH=os.pathsep.join(p for p in (str(src), os.environ.get("PYTHONPATH")) if p))
        for d in ("home", "config", "run"):
            (home / d).mkdir(parents=True, exist_ok=True)
            os.chmod(home / d, 0o700)
        self.lx = [sys.executable, "-m", "lxsub"]
        cp = subprocess.run([*self.lx, "--import", "ltp", str(home / "distro"), str(tarball)],
                            env=self.env, stdin=subprocess.DEVNULL, capture_output=True)
        if cp.returncode != 0:
            raise SystemExit(f"conformance: lx --import failed: {cp.stderr.decode(errors='replace').strip()}")

    def run(self, name: str, command: str, timeout: float) -> Result:
        argv = [*self.lx, "-d", "ltp", "-u", "root", "-e", "/bin/sh", "-c", SHELL_SETUP + "exec " + command]
        t0 = time.monotonic()
        code, out, timed_out = _run_group(argv, timeout, self.env)
        if timed_out:
            self._terminate()
        return classify(name, code, out, time.monotonic() - t0, timed_out)

    def _terminate(self) -> None:
        subprocess.run([*self.lx, "--terminate", "ltp"], env=self.env,
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=60)

    def close(self) -> None:
        subprocess.run([*self.lx, "--shutdown"], env=self.env, stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=60)


def lay_out_tree(debian_tarball: Path, ltp_root: Path, dest: Path) -> Path:
    """dest/ = the Debian tree with the LTP build over it; also dest.tar for lx."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    subprocess.run(["tar", "-xzf", str(debian_tarball), "-C", str(dest),
                    "--numeric-owner"], check=True)
    # Over Debian's merged /usr: the packages' /lib goes through the /lib symlink.
    subprocess.run(f"tar -C '{ltp_root}' -c . | tar -C '{dest}' -x --keep-directory-symlink",
                   shell=True, check=True)
    tarball = dest.with_suffix(".tar")
    with tarfile.open(tarball, "w") as tar:
        for entry in sorted(os.listdir(dest)):
            tar.add(dest / entry, arcname=entry)
    return tarball


# Entries that set the host's clock when they run natively (as root): the
# other environment's tests must not run meanwhile, or they see the host's
# time jump (lxsub's instance clock is the host's plus its own offset).
HOST_CLOCK_SETTERS = re.compile(r"^(adjtimex|clock_adjtime|clock_settime|leapsec|settimeofday|stime)\d")


class _SharedOrAlone:
    """A lock that many hold together (`shared`) or one alone (`alone`)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._holders = 0
        self._alone = False

    @contextlib.contextmanager
    def shared(self):
        with self._cond:
            self._cond.wait_for(lambda: not self._alone)
            self._holders += 1
        try:
            yield
        finally:
            with self._cond:
                self._holders -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def alone(self):
        with self._cond:
            self._cond.wait_for(lambda: not self._alone)
            self._alone = True                       # no new holders from here
            self._cond.wait_for(lambda: self._holders == 0)
        try:
            yield
        finally:
            with self._cond:
                self._alone = False
                self._cond.notify_all()


def run_all(envs: Iterable, entries: list[tuple[str, str]], timeout: float,
            on_result: Callable[[str, Result], None]) -> dict[str, list[Result]]:
    """Every entry in every environment, one thread per environment; a
    native entry that sets the host's clock runs alone."""
    results: dict[str, list[Result]] = {}
    lock = _SharedOrAlone()

    def worker(env) -> None:
        results[env.name] = out = []
        for name, command in entries:
            alone = env.name == Native.name and HOST_CLOCK_SETTERS.match(name)
            with lock.alone() if alone else lock.shared():
                try:
                    res = env.run(name, command, timeout)
                except Exception as e:  # a harness problem is a failed entry, not a lost run
                    res = Result(name, "fail", None, 0.0, f"harness: {e!r}"[:300])
            out.append(res)
            on_result(env.name, res)

    threads = [threading.Thread(target=worker, args=(env,)) for env in envs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results
