"""Build the Linux Test Project's system call tests into a cache, once.

The result is a directory tree `root/` holding `/opt/ltp` (test binaries,
`runtest/syscalls`) and the run-time libraries the tests link against that a
Debian minbase lacks, ready to lay over the Debian bookworm fixture.  Its
name carries a hash of the source tarball and of this recipe, so a new
tarball or recipe builds anew and nothing is rebuilt otherwise; a finished
build is renamed into place, so a directory under its final name is whole.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Build dependencies, as ../shared/conformance/README.md lists them.
BUILD_PACKAGES = [
    "autoconf", "automake", "make", "pkg-config", "bison", "flex", "m4", "gcc",
    "libaio-dev", "libacl1-dev", "libattr1-dev", "libcap-dev", "libnuma-dev",
    "libtirpc-dev", "libkeyutils-dev",
]
# Run-time libraries of those, which Debian's minbase does not have.
RUNTIME_PACKAGES = ["libaio1", "libnuma1", "libtirpc3", "libtirpc-common",
                    "libkeyutils1", "libgssapi-krb5-2", "libkrb5-3", "libk5crypto3",
                    "libkrb5support0", "libcom-err2", "libkeyutils1"]
RECIPE_VERSION = 1
PREFIX = "/opt/ltp"


def log(msg: str) -> None:
    print(f"[ltp] {msg}", file=sys.stderr, flush=True)


def _key(tarball: Path, names: list[str] | None) -> str:
    h = hashlib.sha256()
    with open(tarball, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    h.update(repr((RECIPE_VERSION, BUILD_PACKAGES, RUNTIME_PACKAGES)).encode())
    if names:
        h.update(repr(sorted(names)).encode())
    return h.hexdigest()[:12]


def parse_runtest(text: str) -> list[tuple[str, str]]:
    """(name, command) for each entry of a runtest file: NAME COMMAND, with
    blanks or tabs between, # comments."""
    entries = []
    for line in text.splitlines():
        words = line.strip().split(None, 1)
        if words and not words[0].startswith("#"):
            entries.append((words[0], words[1] if len(words) > 1 else words[0]))
    return entries


def _source_dirs(src: Path, names: list[str]) -> list[str]:
    """The directories of testcases/kernel/syscalls that build the programs
    these runtest entries run (a program PROG is built from PROG.c)."""
    commands = {entry: command.split()[0] for entry, command in
                parse_runtest((src / "runtest" / "syscalls").read_text())}
    syscalls = src / "testcases" / "kernel" / "syscalls"
    dirs = []
    for entry in names:
        if entry not in commands:
            raise SystemExit(f"ltp build: {entry} is not an entry of runtest/syscalls")
        name = commands[entry]
        # NAME_64 and NAME_16 are NAME.c built again (64-bit offsets, 16-bit ids).
        base = name.removesuffix("_64").removesuffix("_16")
        found = [c.parent for c in (sorted(syscalls.glob(f"**/{name}.c"))
                                    or sorted(syscalls.glob(f"**/{base}.c")))]
        # Else a directory named after it whose Makefile builds it from elsewhere.
        found += [d for d in (syscalls / re.sub(r"_?\d+$", "", base),) if d.is_dir()]
        if not found:
            raise SystemExit(f"ltp build: no source for test {name} under {syscalls}")
        dirs.append(str(found[0].relative_to(src)))
    return list(dict.fromkeys(dirs))


def _run(argv: list[str], cwd: Path | None = None, log_to: Path | None = None) -> None:
    out = open(log_to, "ab") if log_to else subprocess.DEVNULL
    try:
        cp = subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                            stderr=subprocess.STDOUT)
    finally:
        if log_to:
            out.close()
    if cp.returncode != 0:
        where = f" (log: {log_to})" if log_to else ""
        raise SystemExit(f"ltp build: `{' '.join(argv)}` failed with exit {cp.returncode}{where}")


def _missing_packages(names: list[str]) -> list[str]:
    missing = []
    for name in dict.fromkeys(names):
        cp = subprocess.run(["dpkg-query", "-W", "-f=${Status}", name],
                            capture_output=True, text=True)
        if "install ok installed" not in cp.stdout:
            missing.append(name)
    return missing


def install_build_packages() -> None:
    missing = _missing_packages(BUILD_PACKAGES)
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit("ltp build: missing build packages, install them as root: "
                         f"apt-get install {' '.join(missing)}")
    log(f"apt-get install {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (["apt-get", "update", "-q"],
                 ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]):
        if subprocess.run(argv, env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL).returncode != 0:
            raise SystemExit(f"ltp build: `{' '.join(argv)}` failed")


def _add_runtime_libraries(root: Path, work: Path) -> None:
    """Unpack the run-time packages into root, as apt would install them."""
    debs = work / "debs"
    debs.mkdir()
    _run(["apt-get", "download", *dict.fromkeys(RUNTIME_PACKAGES)], cwd=debs)
    for deb in sorted(debs.glob("*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(root)])


def _strip(tree: Path) -> None:
    for dirpath, _, files in os.walk(tree):
        for name in files:
            path = Path(dirpath) / name
            with open(path, "rb") as f:
                if f.read(4) != b"\x7fELF":
                    continue
            subprocess.run(["strip", "--strip-debug", str(path)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def build(tarball: Path, cache: Path, jobs: int | None = None,
          names: list[str] | None = None) -> Path:
    """The cached build for tarball (built first when missing): a tree to lay
    over a Debian bookworm root.  With names (runtest entries), only the
    directories that build those tests (a CI-sized build)."""
    def built(key: str) -> Path | None:
        root = cache / f"ltp-{key}" / "root"
        return root if (root / PREFIX.lstrip("/") / "runtest" / "syscalls").exists() else None

    # A whole build serves any subset.
    found = built(_key(tarball, None)) or (names and built(_key(tarball, names)))
    if found:
        return found
    key = _key(tarball, names)
    cache.mkdir(parents=True, exist_ok=True)
    # Two runs that need the same build (engineers' runs beside CI's) make
    # it once: the second waits for the first and takes its result.
    with open(cache / f".ltp-{key}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("waiting for another build of the same tree")
            fcntl.flock(lock, fcntl.LOCK_EX)
        return built(key) or _build(tarball, cache, cache / f"ltp-{key}", jobs, names)


def _build(tarball: Path, cache: Path, final: Path, jobs: int | None,
           names: list[str] | None) -> Path:
    install_build_packages()
    work = Path(tempfile.mkdtemp(prefix=".ltp-build-", dir=cache))
    build_log = work / "build.log"
    try:
        src = work / "src"
        src.mkdir()
        log(f"unpacking {tarball.name}")
        _run(["tar", "-xJf", str(tarball), "-C", str(src)])
        dirs = _source_dirs(src, names) if names else ["testcases/kernel/syscalls"]
        jobs = jobs or os.cpu_count() or 1
        log(f"building (make -j{jobs}; several minutes; log: {build_log})")
        _run(["make", "autotools"], cwd=src, log_to=build_log)
        _run(["./configure", f"--prefix={PREFIX}"], cwd=src, log_to=build_log)
        if names:
            _run(["make", f"-j{jobs}", "-C", "lib"], cwd=src, log_to=build_log)
        root = work / "out" / "root"
        for d in dirs:
            _run(["make", f"-j{jobs}", "-C", d], cwd=src, log_to=build_log)
            _run(["make", "-C", d, "install", f"DESTDIR={root}"], cwd=src, log_to=build_log)
        runtest = root / PREFIX.lstrip("/") / "runtest"
        runtest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / "runtest" / "syscalls", runtest / "syscalls")
        _strip(root / PREFIX.lstrip("/"))
        log("adding run-time libraries")
        _add_runtime_libraries(root, work)
        shutil.rmtree(final, ignore_errors=True)
        (work / "out").rename(final)
        shutil.copy2(build_log, final / "build.log")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"built {final}")
    return final / "root"
