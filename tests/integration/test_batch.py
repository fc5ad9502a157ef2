"""`lx` in batch jobs (issue 17, item 3; docs/HPC.md).

Under Slurm or HTCondor `lx` has no terminal and no controlling tty, often
no XDG_RUNTIME_DIR, an LX_HOME on a network file system (sockets must not
go there) or with a long path, and a job array starts dozens of `lx -e`
at the same second with one LX_HOME. A job ends with SIGTERM and then
SIGKILL of its process group (or, with cgroups, of every process in the
job's cgroup). These tests run `lx` that way: stdin from /dev/null, a new
session (setsid: no controlling terminal), XDG_RUNTIME_DIR unset, TMPDIR
the runner's own directory (so each test has its own runtime directory).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lxsub.errors import EXIT_NOPERM
from tests.fixtures.runner import LxRunner, describe, wait_for

CONCURRENT = 32
NOBODY = 65534


# -- running lx as a batch job ----------------------------------------------------------------

def batch_env(lx: LxRunner, **extra: str) -> dict[str, str]:
    """The runner's environment as a batch job has it: no XDG_RUNTIME_DIR."""
    env = lx.env(extra)
    env.pop("XDG_RUNTIME_DIR", None)
    return env


def start_job(lx: LxRunner, args: list[str], env: dict[str, str], argv_prefix=()) -> subprocess.Popen:
    """`lx ARGS` as a job step: no terminal (stdin /dev/null, own session)."""
    lx._ran = True
    return subprocess.Popen([*argv_prefix, *lx.command(args)], env=env, cwd=str(lx.root),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)


def run_job(lx: LxRunner, args: list[str], env: dict[str, str], timeout: float = 120):
    p = start_job(lx, args, env)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def shutdown(lx: LxRunner, env: dict[str, str]) -> None:
    """End the manager these tests started (the runner's own close() uses
    another runtime directory: its XDG_RUNTIME_DIR)."""
    run_job(lx, ["--shutdown"], env, timeout=60)


def runtime_dir_of(lx: LxRunner) -> Path:
    found = list((lx.tmp / f"lxsub-{lx.user.uid}").glob("*"))
    assert len(found) == 1, found
    return found[0]


# -- /proc --------------------------------------------------------------------------------------

def _read(path: str, binary: bool = False):
    try:
        with open(path, "rb" if binary else "r") as f:
            return f.read()
    except OSError:
        return None


def _status(pid: int) -> dict[str, str]:
    text = _read(f"/proc/{pid}/status") or ""
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def _start_time(pid: int) -> int | None:
    stat = _read(f"/proc/{pid}/stat")
    return int(stat.rsplit(")", 1)[1].split()[19]) if stat else None


def lx_processes(lx_home: Path) -> tuple[list[int], list[int]]:
    """(managers, instances) of this LX_HOME: host processes with it in their
    environment, the instance named by its comm (protocol.INSTANCE_NAME_PREFIX),
    the manager by its command line (which its forks share)."""
    needle = b"LX_HOME=" + os.fsencode(lx_home)
    managers, instances = [], []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        environ = _read(f"/proc/{entry}/environ", binary=True)
        if not environ or needle not in environ.split(b"\0"):
            continue
        comm = (_read(f"/proc/{entry}/comm") or "").strip()
        cmdline = _read(f"/proc/{entry}/cmdline", binary=True) or b""
        if comm.startswith("lx:"):
            instances.append(int(entry))
        elif b"lxsub.manager.daemon" in cmdline and not comm.startswith("lx-"):
            managers.append(int(entry))       # (an instance's helpers are named lx-...)
    return managers, instances


def instance_tree(instance: int) -> set[tuple[int, int]]:
    """(pid, start time) of the instance and every process it hosts: its
    descendants and its tracees (the pico processes)."""
    parents, tracers = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _status(int(entry))
            if st:
                parents[int(entry)] = int(st["PPid"])
                tracers[int(entry)] = int(st["TracerPid"])
    tree, grew = {instance}, True
    while grew:
        more = {p for p, pp in parents.items() if pp in tree or tracers[p] in tree} - tree
        tree |= more
        grew = bool(more)
    return {(p, _start_time(p)) for p in tree}


def alive(procs: set[tuple[int, int]]) -> set[tuple[int, int]]:
    """Those still running (same pid and start time: not a reused pid)."""
    return {(p, t) for p, t in procs if _start_time(p) == t and
            not (_status(p).get("State", "").startswith("Z"))}


def _one_instance(lx: LxRunner) -> int:
    def found() -> int | None:
        _, instances = lx_processes(lx.lx_home)
        return instances[0] if len(instances) == 1 else None
    return wait_for(found, what="the instance")


# -- concurrent first launches ---------------------------------------------------------------------

def test_32_concurrent_first_launches_start_one_manager_and_one_instance(lx, busybox_tar):
    """A job array's tasks: 32 `lx -e` at once, no terminal, no
    XDG_RUNTIME_DIR, the same LX_HOME, nothing running yet."""
    lx.import_distro("bb", busybox_tar)
    # The instance and manager outlive the launches long enough to be counted.
    lx.configure("[instance]\nidle_timeout = 60\n[manager]\nidle_timeout = 60\n")
    env = batch_env(lx)
    assert lx_processes(lx.lx_home) == ([], []), "a manager runs before the first launch"
    try:
        jobs = [start_job(lx, ["-d", "bb", "-e", "echo", f"task-{i}"], env) for i in range(CONCURRENT)]
        results = []
        for p in jobs:
            out, err = p.communicate(timeout=180)
            results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
        for i, cp in enumerate(results):
            assert cp.returncode == 0 and cp.stdout == f"task-{i}\n".encode(), describe(cp)
        managers, instances = lx_processes(lx.lx_home)
        assert len(managers) == 1 and len(instances) == 1, (managers, instances)
        log = (lx.lx_home / "manager.log").read_text()
        assert log.count(" listening on ") == 1, log
        assert len(re.findall(r"instance bb \(\d+\) started", log)) == 1, log
        # The sockets are in the local runtime directory, none under LX_HOME
        # (which may be on NFS, shared by every node).
        runtime = runtime_dir_of(lx)
        assert (runtime / "manager.sock").is_socket()
        assert oct(runtime.stat().st_mode & 0o777) == oct(0o700)
        under_home = [p for p in lx.lx_home.rglob("*") if p.is_socket()]
        assert under_home == [], under_home
    finally:
        shutdown(lx, env)


def test_a_long_lx_home_and_a_long_xdg_runtime_dir_still_work(lx, busybox_tar):
    """Socket addresses hold 108 bytes (unix(7)): an LX_HOME and an
    XDG_RUNTIME_DIR too long for that are no obstacle."""
    deep = lx.root / ("d" * 60) / ("e" * 60)
    home, xdg = deep / "lxhome", deep / "xdg-run"
    for d in (home, xdg):
        d.mkdir(parents=True, mode=0o700)
    for d in (lx.root / ("d" * 60), deep, home, xdg):
        lx.user.give(d)
    assert len(str(home / "run" / "manager.sock")) > 108
    env = batch_env(lx, LX_HOME=str(home), XDG_RUNTIME_DIR=str(xdg))
    try:
        cp = run_job(lx, ["--import", "bb", str(lx.distros / "bb"), str(lx.readable(busybox_tar))], env)
        assert cp.returncode == 0, describe(cp)
        cp = run_job(lx, ["-d", "bb", "-e", "echo", "long ok"], env)
        assert cp.returncode == 0 and cp.stdout == b"long ok\n", describe(cp)
        assert (runtime_dir_of(lx) / "manager.sock").is_socket()
        assert list(xdg.iterdir()) == []
    finally:
        shutdown(lx, env)


# A manager on its way out (idle, or lx --shutdown) still holds manager.lock
# for a moment after its socket has gone.
HOLD_MANAGER_LOCK = """
import fcntl, os, sys, time
from lxsub.manager import paths
fd = os.open(paths.runtime_dir() / "manager.lock", os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(float(sys.argv[1]))
"""


def test_a_launch_meeting_an_exiting_manager_starts_the_next_one(lx, busybox_tar):
    """The manager that `lx` starts gives up at once while the lock is held;
    `lx` must try again when it is let go, not wait for a manager that
    nobody starts."""
    lx.import_distro("bb", busybox_tar)
    env = batch_env(lx)
    holder = subprocess.Popen(lx.user.wrap([lx.python, "-c", HOLD_MANAGER_LOCK, "2"]), env=env,
                              stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert holder.stdout.readline() == b"held\n"
        started = time.monotonic()
        cp = run_job(lx, ["-d", "bb", "-e", "echo", "after"], env)
        assert cp.returncode == 0 and cp.stdout == b"after\n", describe(cp)
        assert time.monotonic() - started < 15
    finally:
        holder.kill()
        holder.wait()
        shutdown(lx, env)


# -- job end -------------------------------------------------------------------------------------------

# A command that outlives the polite end of a job: it ignores SIGTERM and
# SIGHUP and leaves a daemon behind; only the instance's end kills those.
STUBBORN = "trap '' TERM HUP; (trap '' TERM HUP; sleep 1001) & echo started; sleep 1000"


def _start_stubborn(lx: LxRunner, env: dict[str, str], argv_prefix=()) -> tuple[subprocess.Popen, int]:
    job = start_job(lx, ["-d", "bb", "--", STUBBORN], env, argv_prefix)
    assert job.stdout.readline() == b"started\n", describe(subprocess.CompletedProcess(
        job.args, job.poll(), b"", job.stderr.read() if job.poll() is not None else b""))
    instance = _one_instance(lx)
    wait_for(lambda: len(instance_tree(instance)) >= 3, what="the command's processes")
    return job, instance


def _next_job_works(lx: LxRunner, env: dict[str, str], old_instance: int) -> None:
    cp = run_job(lx, ["-d", "bb", "-e", "echo", "next job"], env)
    assert cp.returncode == 0 and cp.stdout == b"next job\n", describe(cp)
    _, instances = lx_processes(lx.lx_home)
    assert old_instance not in instances


def test_sigterm_then_sigkill_of_the_process_group_leaves_no_instance_process(lx, busybox_tar):
    """Slurm without cgroups (proctrack/pgid): SIGTERM to lx, then SIGKILL
    of its process group. The manager and instance are in their own
    session, out of reach; the instance ends with its last client and kills
    everything it hosts, daemons and signal-ignoring programs included."""
    lx.import_distro("bb", busybox_tar)
    lx.configure("[instance]\nidle_timeout = 1\n")
    env = batch_env(lx)
    try:
        job, instance = _start_stubborn(lx, env)
        tree = instance_tree(instance)
        job.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert job.poll() is None, "the command ignores SIGTERM: lx waits for it"
        os.killpg(job.pid, signal.SIGKILL)
        job.communicate(timeout=30)
        wait_for(lambda: not alive(tree), timeout=30, what=f"the end of the instance's processes {tree}")
        _next_job_works(lx, env, instance)
    finally:
        shutdown(lx, env)


def _cgroup2_root() -> Path | None:
    for line in (_read("/proc/self/mounts") or "").splitlines():
        fields = line.split()
        if fields[2] == "cgroup2" and os.access(fields[1], os.W_OK):
            return Path(fields[1])
    return None


@pytest.fixture
def job_cgroup():
    """A fresh cgroup2 cgroup with cgroup.kill (Linux 5.14), as Slurm makes one per job."""
    root = _cgroup2_root()
    if os.geteuid() != 0 or root is None or not (root / "cgroup.procs").exists():
        pytest.skip("needs root and a writable cgroup2 hierarchy")
    cg = root / f"lxsub-test-job-{os.getpid()}-{time.monotonic_ns()}"
    cg.mkdir()
    if not (cg / "cgroup.kill").exists():
        cg.rmdir()
        pytest.skip("the kernel has no cgroup.kill (Linux < 5.14)")
    yield cg
    (cg / "cgroup.kill").write_text("1")
    wait_for(lambda: not (cg / "cgroup.procs").read_text().split(), what="an empty cgroup")
    cg.rmdir()


@pytest.mark.parametrize("end", ["term-then-kill", "kill"])
def test_cgroup_kill_at_job_end_leaves_nothing_and_the_next_job_starts(lx, busybox_tar, job_cgroup, end):
    """Slurm with proctrack/cgroup: the manager and instance the job started
    are in the job's cgroup, and the job's end kills them with it (SIGTERM
    to every process, then SIGKILL; or SIGKILL alone, as cgroup.kill or an
    OOM kill does). Nothing of the instance survives (its pico processes die
    with their tracer, PTRACE_O_EXITKILL), and the next job, in another
    cgroup, finds the stale socket and lock harmless."""
    lx.import_distro("bb", busybox_tar)
    lx.configure("[instance]\nidle_timeout = 60\n[manager]\nidle_timeout = 60\n")
    env = batch_env(lx)
    into_cgroup = ("sh", "-c", f'echo $$ > {job_cgroup}/cgroup.procs && exec "$@"', "job")
    try:
        job, instance = _start_stubborn(lx, env, into_cgroup)
        tree = instance_tree(instance)
        managers, _ = lx_processes(lx.lx_home)
        members = {int(p) for p in (job_cgroup / "cgroup.procs").read_text().split()}
        assert instance in members and set(managers) <= members, (instance, managers, members)
        if end == "term-then-kill":
            for pid in members:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            time.sleep(1.0)
        (job_cgroup / "cgroup.kill").write_text("1")
        job.communicate(timeout=30)
        wait_for(lambda: not (job_cgroup / "cgroup.procs").read_text().split(), what="an empty cgroup")
        assert not alive(tree), alive(tree)
        assert lx_processes(lx.lx_home) == ([], [])
        if end == "kill":     # nobody could clean up: the socket file stays behind
            assert (runtime_dir_of(lx) / "manager.sock").exists()
        _next_job_works(lx, env, instance)
    finally:
        shutdown(lx, env)


# -- an unsafe runtime directory ------------------------------------------------------------------------

@pytest.mark.parametrize("attack", ["other-owner", "group-writable", "symlink"])
def test_a_premade_runtime_directory_is_refused(lx, busybox_tar, attack):
    """Someone else made `$TMPDIR/lxsub-<uid>` first, in a world-writable
    sticky directory like /tmp: lx refuses it in one line, with its own
    exit status, and starts nothing there."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make a directory owned by another user")
    lx.import_distro("bb", busybox_tar)
    shared_tmp = lx.root / "shared-tmp"
    shared_tmp.mkdir()
    os.chmod(shared_tmp, 0o1777)
    planted = shared_tmp / f"lxsub-{lx.user.uid}"
    if attack == "symlink":
        elsewhere = shared_tmp / "elsewhere"
        elsewhere.mkdir(mode=0o700)
        os.chown(elsewhere, lx.user.uid, lx.user.gid)
        os.symlink(elsewhere, planted)
        os.lchown(planted, NOBODY, NOBODY)
    else:
        planted.mkdir()
        owner = NOBODY if attack == "other-owner" else lx.user.uid
        os.chown(planted, owner, owner)
        os.chmod(planted, 0o700 if attack == "other-owner" else 0o770)
    env = batch_env(lx, TMPDIR=str(shared_tmp))
    cp = run_job(lx, ["-d", "bb", "-e", "echo", "must not run"], env)
    err = cp.stderr.decode()
    assert cp.returncode == EXIT_NOPERM and cp.stdout == b"", describe(cp)
    assert len(err.splitlines()) == 1 and f"unsafe runtime directory {planted}" in err, describe(cp)
    assert lx_processes(lx.lx_home) == ([], [])
    if attack != "symlink":
        assert list(planted.iterdir()) == []
