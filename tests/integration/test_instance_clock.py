"""The instance's own wall clock (kernel/timekeeping.py, platform/vdso.py).

Root of an instance sets the instance's CLOCK_REALTIME, never the host's;
every way of reading it (glibc through the vDSO, the syscalls, time(),
gettimeofday, the coarse clock) sees the new time, in the process that set
it, in one forked before the set and in one started after it; CLOCK_MONOTONIC
does not move. An unprivileged user gets EPERM. Until the clock is set the
vDSO is left alone (no trap on the vDSO path). Before this, every set was
EPERM. Time namespaces (kernel/timens.py) move the monotonic and boottime
clocks of the processes in them. The program is
tests/fixtures/programs/clock_instance.c, run in a BusyBox instance of its
own (setting the clock is seen by the whole instance)."""

from __future__ import annotations

import time

import pytest

from tests.fixtures.cbuild import PROGRAMS, gcc_static
from tests.fixtures.runner import LxRunner
from tests.integration.distros import Instance, describe

DELTA = 100_000          # seconds: a bit more than a day ahead
PATH = "/clock-instance/c"


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> bytes:
    tmp = tmp_path_factory.mktemp("clock")
    return gcc_static(tmp, "clock_instance", PROGRAMS / "clock_instance.c").read_bytes()


@pytest.fixture(scope="module")
def box(host_user, busybox_tar, program):
    """A BusyBox instance of this module's own, with the program in it. The
    clock set lives as long as the instance runs (a restart is a reboot):
    this one stays up between commands."""
    runner = LxRunner(host_user)
    runner.configure("[instance]\nidle_timeout = 60\n")
    try:
        runner.import_distro("bbclock", busybox_tar)
    except BaseException:
        runner.close()
        raise
    inst = Instance(runner, "bbclock")
    cp = inst.lx(["--", f"mkdir -p {PATH.rsplit('/', 1)[0]} && cat > {PATH} && chmod 755 {PATH}"],
                 input=program, timeout=60)
    assert cp.returncode == 0, describe(cp)
    yield inst
    runner.close()


def _run(box, *args: str) -> dict[str, list[float]]:
    cp = box.lx(["--", PATH, *args], timeout=60)
    assert cp.returncode == 0, describe(cp)
    out = {}
    for line in cp.stdout.decode().splitlines():
        words = line.split()
        out[" ".join(words[:2])] = [float(w) for w in words[2:]]
    return out


def _near(values: list[float], want: float, slack: float = 3) -> bool:
    return all(abs(v - want) <= slack for v in values)


def test_root_sets_the_instance_clock_and_every_reader_sees_it(box):
    # Never set: the vDSO is the host's (no trap on the vDSO path).
    assert _run(box, "patched")["vdso patched"] == [0]
    host_before, mono_before = time.time(), time.monotonic()

    out = _run(box, "set", str(DELTA))
    assert out["set result"] == [0], out
    want = host_before + DELTA
    # The setter and a child forked before the set, through the vDSO (glibc
    # clock_gettime, time, gettimeofday, the coarse clock) and the syscall.
    for who in ("parent", "child"):
        assert _near(out[f"{who} now"], want), out
        assert _near(out[f"{who} mono"], out["parent mono"][0]), out    # monotonic stays

    # A process started after the set: its new vDSO is patched too.
    assert _run(box, "patched")["vdso patched"] == [1]
    later = _run(box, "now")
    assert _near(later["self now"], time.time() + DELTA), later

    # The host's clock did not move.
    assert abs((time.time() - host_before) - (time.monotonic() - mono_before)) < 1


def test_absolute_sleeps_on_the_instance_clock(box):
    """clock_nanosleep and timerfd_settime with TIMER_ABSTIME take the
    instance's time (a day off from the host's: the sleep would end at
    once, or never)."""
    if _near(_run(box, "now")["self now"], time.time()):
        _run(box, "set", str(DELTA))          # run alone: the clock is not set yet
    before = _run(box, "now")["self now"][0]
    assert abs(before - time.time() - DELTA) < 5
    out = _run(box, "abs")
    assert out["abs nanosleep"][:2] == [0, 1], out
    assert out["abs timerfd"] == [0, 1, 1], out
    # The program's own timespec is left as it gave it (the host's copy
    # goes below its stack).
    assert _near(out["abs nanosleep"][2:], before, 5), out


def test_sysv_ipc_times_are_on_the_instance_clock(box):
    """msgctl(IPC_STAT) shows the times the host kernel stamped on the
    instance's clock (so does /proc/sysvipc, through the same helper). Before, a queue's msg_stime was the
    host's, a day off from time() once the clock was set (LTP msgsnd01 and
    shmctl01 failed when an earlier clock test left the clock seconds off)."""
    if _near(_run(box, "now")["self now"], time.time()):
        _run(box, "set", str(DELTA))          # run alone: the clock is not set yet
    out = _run(box, "ipc")
    stime, ctime, now = out["ipc stime"]
    assert abs(stime - now) <= 1 and abs(ctime - now) <= 1, out
    assert abs(now - time.time() - DELTA) < 5, out


def test_unprivileged_users_cannot_set_it(box):
    from errno import EPERM
    out = _run(box, "user")
    assert out["user eperm"] == [-EPERM] * 4, out


def _lines(box, *args: str) -> dict[str, str]:
    cp = box.lx(["--", PATH, *args], timeout=60)
    assert cp.returncode == 0, describe(cp)
    return {" ".join(line.split()[:2]): " ".join(line.split()[2:]) for line in cp.stdout.decode().splitlines()}


def test_a_time_namespace_moves_monotonic_and_boottime_for_children(box):
    """unshare(CLONE_NEWTIME) makes a namespace for the caller's children
    (/proc/self/ns/time_for_children differs from time); its offsets are
    written to /proc/self/timens_offsets, and read by a child through the
    vDSO (rewritten) and the syscalls, sysinfo's uptime and an absolute
    sleep included; then they are fixed (the write changes nothing: its
    EACCES does not reach write(2) through the provider's /proc). Before,
    unshare of a time namespace was EPERM."""
    out = _lines(box, "timens")
    assert out["timens unshare"] == "0", out
    assert out["timens write"] == str(len("1 1000 0\nboottime 2000 0\n")), out
    assert out["timens offsets"] == "monotonic 1000 0,boottime 2000 0,", out     # spaces squeezed
    assert out["timens links-differ"] == "1", out
    shifts = [int(v) for v in out["child shift"].split()]
    assert abs(shifts[0] - 1000) <= 2 and abs(shifts[1] - 1000) <= 2, out
    assert abs(shifts[2] - 2000) <= 2 and abs(shifts[3] - 2000) <= 2, out
    assert out["child patched"] == "1", out
    assert out["child abs-sleep"] == "0 1", out
    assert abs(int(out["parent shift"])) <= 2, out             # the caller stays in its own
    assert out["parent after"] == "monotonic 1000 0,boottime 2000 0,", out


def test_unprivileged_users_cannot_make_a_time_namespace(box):
    from errno import EPERM
    assert _lines(box, "timens-user")["user unshare"] == str(-EPERM)
