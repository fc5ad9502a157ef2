"""The clock calls: the instance's wall clock (kernel/timekeeping.py).

adjtimex, clock_adjtime, clock_settime and settimeofday change the
instance's CLOCK_REALTIME and NTP state, never the host's, after the
argument checks Linux makes in its order (kernel/time/timekeeping.c
timekeeping_validate_timex, kernel/time/time.c) with the instance's own
capabilities deciding (CAP_SYS_TIME: the instance's root). Reads of the
realtime clocks that reach the provider (clock_gettime of REALTIME,
REALTIME_COARSE, REALTIME_ALARM and TAI, gettimeofday, time: direct
syscalls always, the vDSO's once the instance's clock was set) are
answered with the instance's time. Absolute times on those clocks
(clock_nanosleep, timer_settime, timerfd_settime with TIMER_ABSTIME) are
made the host's in a copy below the caller's stack (but a timerfd with
TFD_TIMER_CANCEL_ON_SET stays the host clock's). What Linux does when the
clock is set with such timers armed (clock_was_set: they fire at the new
time; TFD_TIMER_CANCEL_ON_SET cancels) is not done: they keep the host
time they were given.
"""

from __future__ import annotations

import ctypes
import errno
import struct

from lxsub.abi.sysno import NUMBERS
from lxsub.kernel import creds as caps
from lxsub.kernel import timekeeping, timens
from lxsub.kernel.call import Call, Native
from lxsub.kernel.task import active_pid_ns, tid_in
from lxsub.platform import libc, memory

CLOCK_REALTIME, CLOCK_MONOTONIC = 0, 1
TIMER_ABSTIME = 1
TFD_TIMER_CANCEL_ON_SET = 2
_SYS_GETTIMEOFDAY = NUMBERS["gettimeofday"]
CLOCKFD, CLOCKFD_MASK = 3, 7

TIMEX_SIZE = 208        # struct __kernel_timex on x86_64
_MODES = struct.Struct("<I")
_FREQ_AT, _TIME_SEC_AT, _TIME_USEC_AT, _TICK_AT = 16, 72, 80, 88

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
    if clockid != CLOCK_REALTIME:
        # Only the wall clock has an NTP state; the host says whether this
        # clock exists (EINVAL) and can be adjusted at all (EOPNOTSUPP).
        if is_query(modes):
            state = libc.clock_adjtime(clockid, timex)
            c.write(addr, bytes(timex))
            return state
        libc.clock_adjtime(clockid, bytearray(TIMEX_SIZE))
        _check_change(c, timex, modes)
        raise OSError(errno.EPERM, "only the instance's wall clock can be adjusted")
    _check_change(c, timex, modes)
    clk = timekeeping.clock_of(c.inst)
    if modes & ADJ_SETOFFSET:
        sec, usec = _long(timex, _TIME_SEC_AT), _long(timex, _TIME_USEC_AT)
        _inject(clk, sec * NSEC_PER_SEC + usec * (1 if modes & ADJ_NANO else 1000))
    tx = _decode_timex(timex)
    state = clk.adjtimex(tx)
    _encode_timex(timex, tx)
    c.write(addr, bytes(timex))
    return state


def _inject(clk: timekeeping.InstanceClock, delta: int) -> None:
    """timekeeping_inject_offset: the new time must be valid and not before boot."""
    new = clk.realtime_ns() + delta
    if not 0 <= new // NSEC_PER_SEC < TIME_SETTOD_SEC_MAX or new < timekeeping.host_ns(CLOCK_MONOTONIC):
        raise OSError(errno.EINVAL, "the injected offset makes an invalid time")
    clk.inject(delta)


_TIMEX_FIELDS = (("offset", 8, "q"), ("freq", 16, "q"), ("maxerror", 24, "q"), ("esterror", 32, "q"),
                 ("status", 40, "i"), ("constant", 48, "q"), ("precision", 56, "q"),
                 ("tolerance", 64, "q"), ("sec", 72, "q"), ("usec", 80, "q"), ("tick", 88, "q"),
                 ("tai", 160, "i"))
# pps_fill_timex without PPS: ppsfreq, jitter, shift, stabil, jitcnt, calcnt, errcnt, stbcnt.
_PPS_ZEROED = ((96, "q"), (104, "q"), (112, "i"), (120, "q"), (128, "q"), (136, "q"), (144, "q"), (152, "q"))


def _decode_timex(buf: bytes) -> timekeeping.Timex:
    tx = timekeeping.Timex(modes=_MODES.unpack_from(buf)[0])
    for name, at, fmt in _TIMEX_FIELDS:
        setattr(tx, name, struct.unpack_from("<" + fmt, buf, at)[0])
    return tx


def _encode_timex(buf: bytearray, tx: timekeeping.Timex) -> None:
    for name, at, fmt in _TIMEX_FIELDS:
        value = getattr(tx, name)
        bits = 32 if fmt == "i" else 64
        value &= (1 << bits) - 1
        struct.pack_into("<" + fmt.upper(), buf, at, value)
    for at, fmt in _PPS_ZEROED:
        struct.pack_into("<" + fmt, buf, at, 0)


def sys_adjtimex(c: Call) -> int:
    return _clock_adjtime(c, CLOCK_REALTIME, c.ptr(0))


def sys_clock_adjtime(c: Call) -> int:
    return _clock_adjtime(c, c.int(0), c.ptr(1))


def sys_clock_settime(c: Call) -> int:
    """clock_settime(2), in Linux's order: a clock without clock_set is
    EINVAL, then the timespec is read (EFAULT) and checked (EINVAL), then
    the permission (EPERM). The instance's root sets the instance's wall
    clock (kernel/timekeeping.py); the host's is never touched."""
    clockid = c.int(0)
    settable = clockid == CLOCK_REALTIME or (clockid < 0 and clockid & CLOCKFD_MASK != CLOCKFD)
    if not settable:
        raise OSError(errno.EINVAL, "this clock cannot be set")
    sec, nsec = struct.unpack("<qq", c.read(c.ptr(1), 16))
    if clockid == CLOCK_REALTIME and not (0 <= sec < TIME_SETTOD_SEC_MAX
                                          and 0 <= nsec < NSEC_PER_SEC):
        raise OSError(errno.EINVAL, "bad time")
    if clockid != CLOCK_REALTIME:
        raise OSError(errno.EPERM, "CPU clocks cannot be set")     # posix_cpu_clock_set
    _need_sys_time(c)
    timekeeping.clock_of(c.inst).set_realtime(sec * NSEC_PER_SEC + nsec)
    return 0


def _need_sys_time(c: Call) -> None:
    if not c.task.creds.capable(caps.CAP_SYS_TIME):
        raise OSError(errno.EPERM, "setting the clock needs CAP_SYS_TIME")


def sys_settimeofday(c: Call) -> int:
    """settimeofday(2) as kernel/time/time.c: tv read and its usec checked,
    tz read, the time checked, the permission, the timezone's range; then
    the instance's timezone and wall clock are set."""
    tv, tz = c.ptr(0), c.ptr(1)
    new = None
    if tv:
        sec, usec = struct.unpack("<qq", c.read(tv, 16))
        if not 0 <= usec <= USEC_PER_SEC:
            raise OSError(errno.EINVAL, "bad microseconds")
        new = (sec, usec * 1000)
    zone = struct.unpack("<ii", c.read(tz, 8)) if tz else None
    if new is not None and not (0 <= new[0] < TIME_SETTOD_SEC_MAX and new[1] < NSEC_PER_SEC):
        raise OSError(errno.EINVAL, "bad time")
    _need_sys_time(c)
    clk = timekeeping.clock_of(c.inst)
    if zone is not None:
        if not -15 * 60 <= zone[0] <= 15 * 60:
            raise OSError(errno.EINVAL, "timezone beyond 15 hours")
        clk.tz = zone
    if new is not None:
        clk.set_realtime(new[0] * NSEC_PER_SEC + new[1])
    return 0


# -- reading the instance's clocks -------------------------------------------------


def _clock(c: Call) -> timekeeping.InstanceClock | None:
    """The instance's clock while it differs from the host's, else None."""
    clk = getattr(c.inst, "clock", None)
    return clk if clk is not None and clk.active else None


def _now(c: Call, clockid: int) -> int:
    """A realtime clock as the instance reads it (a notification cannot
    let the call run on: the host's answer is given the same way)."""
    clk = _clock(c)
    return clk.clock_ns(clockid) if clk is not None else timekeeping.host_ns(clockid)


def sys_clock_gettime(c: Call):
    """clock_gettime of a realtime clock (the filter sends only those, and
    the CPU clocks of other processes): the instance's time."""
    clockid = c.int(0)
    if clockid < 0:
        return sys_cpu_clock(c)
    if clockid in timens.SHIFTED_CLOCKS:
        # Stopped by a time namespace's filter (kernel/timens.py).
        shift = timens.offset(c.task, clockid)
        if not shift:
            return Native()
        now = timekeeping.host_ns(clockid) + shift
    elif clockid in timekeeping.REALTIME_CLOCKS:
        now = _now(c, clockid)
    else:
        return Native() if c.regs is not None else -errno.EINVAL     # no filter sends others
    sec, nsec = divmod(now, NSEC_PER_SEC)
    c.write(c.ptr(1), struct.pack("<qq", sec, nsec))
    return 0


def sys_gettimeofday(c: Call) -> int:
    """gettimeofday(2): the instance's wall clock and timezone (the host's
    until settimeofday sets one)."""
    tv, tz = c.ptr(0), c.ptr(1)
    if tv:
        sec, nsec = divmod(_now(c, CLOCK_REALTIME), NSEC_PER_SEC)
        c.write(tv, struct.pack("<qq", sec, nsec // 1000))
    if tz:
        clk = getattr(c.inst, "clock", None)
        zone = clk.tz if clk is not None and clk.tz is not None else _host_tz()
        c.write(tz, struct.pack("<ii", *zone))
    return 0


def _host_tz() -> tuple[int, int]:
    buf = ctypes.create_string_buffer(8)
    libc.syscall(_SYS_GETTIMEOFDAY, 0, ctypes.addressof(buf))
    return struct.unpack("<ii", buf.raw)


def sys_time(c: Call) -> int:
    sec = _now(c, CLOCK_REALTIME) // NSEC_PER_SEC
    if c.ptr(0):
        c.write(c.ptr(0), struct.pack("<q", sec))
    return sec


# -- absolute times: the instance's (or the time namespace's), made the host's ------


def _shift(c: Call, clockid: int | None) -> int:
    """How far the caller's clockid is ahead of the host's: the instance's
    wall clock for the realtime clocks, the caller's time namespace for the
    monotonic and boottime ones; 0 for the rest."""
    if clockid in timekeeping.REALTIME_CLOCKS:
        clk = _clock(c)
        return clk.clock_ns(clockid) - timekeeping.host_ns(clockid) if clk is not None else 0
    if clockid in timens.SHIFTED_CLOCKS:
        return timens.offset(c.task, clockid)
    return 0


def _convert_timespec(c: Call, arg: int, at: int, size: int, shift: int) -> None:
    """Point argument `arg` at a copy (below the caller's red zone) of the
    `size`-byte struct it points to, whose timespec at byte `at` is made the
    host's absolute time (`shift` off; a time before the host clock's zero
    has expired: do_timens_ktime_to_host). A struct that cannot be read or
    holds an invalid time is left to the host's checks."""
    addr = c.ptr(arg)
    try:
        data = bytearray(c.read(addr, size))
    except OSError:
        return
    sec, nsec = struct.unpack_from("<qq", data, at)
    if sec < 0 or not 0 <= nsec < NSEC_PER_SEC or (sec == 0 and nsec == 0 and size > 16):
        return                            # invalid, or a timer being disarmed
    host = max(sec * NSEC_PER_SEC + nsec - shift, 1)
    struct.pack_into("<qq", data, at, *divmod(host, NSEC_PER_SEC))
    assert c.regs is not None
    (copy,) = memory.write_below_sp(c.pid, c.regs.rsp, [bytes(data)])
    c.set_arg(arg, copy)      # the program's own pointer is back at the exit, or for a restart


def sys_clock_nanosleep(c: Call):
    """A CPU clock's pid translated; an absolute sleep made the host's time."""
    clockid = c.int(0)
    if clockid < 0:
        return sys_cpu_clock(c)
    shift = _shift(c, clockid) if c.int(1) & TIMER_ABSTIME else 0
    if shift:
        _convert_timespec(c, 2, 0, 16, shift)
    return Native()


def sys_timer_settime(c: Call):
    """timer_settime(2) with TIMER_ABSTIME: the timer's clock (from
    /proc/<pid>/timers) decides the shift."""
    if c.int(1) & TIMER_ABSTIME and (_clock(c) is not None or timens.of(c.task) is not None):
        shift = _shift(c, _timer_clock(c.task.process.host_pid, c.int(0)))
        if shift:
            _convert_timespec(c, 2, 16, 32, shift)
    return Native()


def sys_timerfd_settime(c: Call):
    """timerfd_settime(2) with TFD_TIMER_ABSTIME: the timerfd's clock (from
    its fdinfo) decides the shift. (With TFD_TIMER_CANCEL_ON_SET the call
    runs natively: such a timer is the host clock's, cancelled when the
    host's is set, never the instance's.)"""
    if c.int(1) & TIMER_ABSTIME and (_clock(c) is not None or timens.of(c.task) is not None):
        shift = _shift(c, _fdinfo_clock(c.task.host_tid, c.int(0)))
        if shift:
            _convert_timespec(c, 2, 16, 32, shift)
    return Native()


def _timer_clock(pid: int, timer: int) -> int | None:
    try:
        with open(f"/proc/{pid}/timers", "rb") as f:
            text = f.read().split(b"\n")
    except OSError:
        return None
    for i, line in enumerate(text):
        if line.strip() == b"ID: %d" % timer:
            for follow in text[i + 1:i + 4]:
                if follow.startswith(b"ClockID:"):
                    return int(follow.split()[1])
    return None


def _fdinfo_clock(tid: int, fd: int) -> int | None:
    try:
        with open(f"/proc/{tid}/fdinfo/{fd}", "rb") as f:
            for line in f:
                if line.startswith(b"clockid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


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
