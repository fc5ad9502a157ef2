"""adjtimex, clock_adjtime and clock_settime: the host's clock, which an
instance reads but never sets.

Linux lets anyone read the kernel clock's discipline (adjtimex(2): modes
0, or ADJ_OFFSET_SS_READ); those queries run on the host with the caller's
struct timex and it is written back. Any change needs CAP_SYS_TIME in the
initial user namespace, which no instance has over the host clock: after
the argument checks Linux makes (kernel/time/timekeeping.c
timekeeping_validate_timex, in its order, with the instance's own
capabilities deciding where a capable caller would pass), a change is
EPERM.
"""

from __future__ import annotations

import errno
import struct

from lxsub.kernel import creds as caps
from lxsub.kernel.call import Call, Native
from lxsub.kernel.task import active_pid_ns, tid_in
from lxsub.platform import libc

CLOCK_REALTIME = 0
CLOCKFD, CLOCKFD_MASK = 3, 7

TIMEX_SIZE = 208        # struct __kernel_timex on x86_64
_MODES = struct.Struct("<I")
_FREQ_AT, _TIME_USEC_AT, _TICK_AT = 16, 80, 88

# The kernel's own mode bits (uapi linux/timex.h; glibc's ADJ_OFFSET_SINGLESHOT
# and ADJ_OFFSET_SS_READ are these or'ed with ADJ_ADJTIME).
ADJ_OFFSET, ADJ_FREQUENCY, ADJ_SETOFFSET, ADJ_NANO, ADJ_TICK = 0x0001, 0x0002, 0x0100, 0x2000, 0x4000
ADJ_ADJTIME, ADJ_OFFSET_SINGLESHOT, ADJ_OFFSET_READONLY = 0x8000, 0x0001, 0x2000
USER_HZ = 100
PPM_SCALE = 1000 << 16  # NSEC_PER_USEC << (NTP_SCALE_SHIFT - SHIFT_USEC)
LLONG_MAX = (1 << 63) - 1

NSEC_PER_SEC, USEC_PER_SEC = 1_000_000_000, 1_000_000
# kernel/time/timekeeping.c: KTIME_SEC_MAX - TIME_UPTIME_SEC_MAX
TIME_SETTOD_SEC_MAX = (1 << 63) // NSEC_PER_SEC - 30 * 365 * 24 * 3600


def _long(buf: bytes, at: int) -> int:
    return struct.unpack_from("<q", buf, at)[0]


def is_query(modes: int) -> bool:
    """modes for which do_adjtimex changes nothing: 0, or a read-only
    adjtime (ADJ_OFFSET_SS_READ) that injects no offset."""
    if modes & ADJ_ADJTIME:
        return bool(modes & ADJ_OFFSET_SINGLESHOT and modes & ADJ_OFFSET_READONLY
                    and not modes & ADJ_SETOFFSET)
    return modes == 0


def _check_change(c: Call, timex: bytes, modes: int) -> None:
    """timekeeping_validate_timex: EINVAL or EPERM in Linux's order."""
    capable = c.task.creds.capable(caps.CAP_SYS_TIME)
    if modes & ADJ_ADJTIME:
        if not modes & ADJ_OFFSET_SINGLESHOT:
            raise OSError(errno.EINVAL, "ADJ_ADJTIME without ADJ_OFFSET_SINGLESHOT")
        if not modes & ADJ_OFFSET_READONLY and not capable:
            raise OSError(errno.EPERM, "changing the clock needs CAP_SYS_TIME")
    else:
        if modes and not capable:
            raise OSError(errno.EPERM, "changing the clock needs CAP_SYS_TIME")
        tick = _long(timex, _TICK_AT)
        if modes & ADJ_TICK and not 900000 // USER_HZ <= tick <= 1100000 // USER_HZ:
            raise OSError(errno.EINVAL, "tick more than 10% off")
    if modes & ADJ_SETOFFSET:
        if not capable:
            raise OSError(errno.EPERM, "injecting time needs CAP_SYS_TIME")
        usec = _long(timex, _TIME_USEC_AT)
        if usec < 0 or usec >= (NSEC_PER_SEC if modes & ADJ_NANO else USEC_PER_SEC):
            raise OSError(errno.EINVAL, "bad time offset")
    if modes & ADJ_FREQUENCY:
        freq = _long(timex, _FREQ_AT)
        if not -((LLONG_MAX + 1) // PPM_SCALE) <= freq <= LLONG_MAX // PPM_SCALE:  # C division
            raise OSError(errno.EINVAL, "frequency out of range")


def _clock_adjtime(c: Call, clockid: int, addr: int) -> int:
    timex = bytearray(c.read(addr, TIMEX_SIZE))          # copy_from_user: EFAULT
    if clockid < 0:
        # Dynamic clocks name a posix clock device by descriptor (the instance
        # has none: EINVAL); CPU clocks have no clock_adj (EOPNOTSUPP).
        if clockid & CLOCKFD_MASK == CLOCKFD:
            raise OSError(errno.EINVAL, "not a posix clock")
        raise OSError(errno.EOPNOTSUPP, "CPU clocks cannot be adjusted")
    modes = _MODES.unpack_from(timex)[0]
    if is_query(modes):
        state = libc.clock_adjtime(clockid, timex)
        c.write(addr, bytes(timex))
        return state
    # The clock must exist and be adjustable before the modes are looked at:
    # a query on the host answers EINVAL or EOPNOTSUPP as Linux would.
    libc.clock_adjtime(clockid, bytearray(TIMEX_SIZE))
    _check_change(c, timex, modes)
    raise OSError(errno.EPERM, "the host clock is not the instance's to change")


def sys_adjtimex(c: Call) -> int:
    return _clock_adjtime(c, CLOCK_REALTIME, c.ptr(0))


def sys_clock_adjtime(c: Call) -> int:
    return _clock_adjtime(c, c.int(0), c.ptr(1))


def sys_clock_settime(c: Call) -> int:
    """clock_settime(2), in Linux's order: a clock without clock_set is
    EINVAL, then the timespec is read (EFAULT) and checked (EINVAL), then
    the permission (EPERM; the host clock is never the instance's)."""
    clockid = c.int(0)
    settable = clockid == CLOCK_REALTIME or (clockid < 0 and clockid & CLOCKFD_MASK != CLOCKFD)
    if not settable:
        raise OSError(errno.EINVAL, "this clock cannot be set")
    sec, nsec = struct.unpack("<qq", c.read(c.ptr(1), 16))
    if clockid == CLOCK_REALTIME and not (0 <= sec < TIME_SETTOD_SEC_MAX
                                          and 0 <= nsec < NSEC_PER_SEC):
        raise OSError(errno.EINVAL, "bad time")
    raise OSError(errno.EPERM, "the host clock is not the instance's to change")


# -- CPU-time clocks of other processes (clock_getcpuclockid(3)) ------------

CPUCLOCK_PERTHREAD_MASK, CPUCLOCK_CLOCK_MASK = 4, 3


def translate_cpu_clock(c: Call, i: int) -> None:
    """A negative clockid names a process's or thread's CPU clock by pid,
    `~pid << 3 | kind` (MAKE_PROCESS_CPUCLOCK / MAKE_THREAD_CPUCLOCK): the
    pid is virtual, the host's is written in its place. As Linux's
    pid_for_clock: 0 is the caller itself (left as it is), a thread clock
    only of the caller's own thread group, a process clock of a process
    (or the caller's own tid); anything else is EINVAL, so no host process's
    clock is ever named. Dynamic clocks (CLOCKFD) are descriptors."""
    clock = c.int(i)
    if clock >= 0 or clock & CLOCKFD_MASK == CLOCKFD:
        return
    pid = ~(clock >> 3)
    if pid == 0:
        return
    pids, ns = c.inst.pids, active_pid_ns(c.task)
    if clock & CPUCLOCK_PERTHREAD_MASK:
        task = pids.task_in(ns, pid)
        host = task.host_tid if task is not None and task.process is c.task.process else None
    else:
        proc = c.task.process if pid == tid_in(c.task, ns) else pids.process_in(ns, pid)
        host = proc.host_pid if proc is not None else None
    if host is None:
        raise OSError(errno.EINVAL, "no such clock")
    c.set_arg(i, (~host << 3) | (clock & CLOCKFD_MASK))


def sys_cpu_clock(c: Call) -> Native:
    """clock_gettime, clock_getres, clock_nanosleep of a negative clockid."""
    translate_cpu_clock(c, 0)
    return Native()
