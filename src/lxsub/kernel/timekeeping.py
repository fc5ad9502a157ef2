"""The instance's own wall clock and NTP state (clock_settime, adjtimex).

An instance is a machine of its own: its root (CAP_SYS_TIME) sets *its*
wall clock, never the host's. CLOCK_REALTIME of the instance is the
host's plus `offset_ns`; the clocks derived from it (REALTIME_COARSE,
REALTIME_ALARM, TAI) move with it, TAI also by the instance's TAI offset.
MONOTONIC, BOOTTIME and the CPU clocks are the host's, as on Linux where
setting the time does not move them.

The clock reads must see the offset, and most reads never enter the
kernel: the vDSO answers them. So once an instance's clock stops being
the host's (a set, an injected offset, a leap second armed), `activate`
rewrites the vDSO clock entries of every process of the instance to the
real syscalls (platform/vdso.py), and so does every exec and fork after
that (kernel/instance.py); the filter sends clock_gettime of the
realtime clocks, gettimeofday and time to the provider (kernel/table.py),
which adds the offset. An instance whose clock was never set pays
nothing on the vDSO path (no process is patched); a direct syscall of
those calls traps (a seccomp filter is the same for every instance and
fixed at a process's start) and is answered with the host's time. Once
active, an instance stays so: its processes keep calling the syscalls
even if the offset comes back to 0. The offset lives as long as the
instance runs: a restarted instance starts from the host's clock again.

Why the vDSO is rewritten rather than its data: the vDSO's data page
(vvar) is the host kernel's, shared by every process and not writable;
the text is an ordinary private mapping a tracer may write (a breakpoint
does the same), so one small write per process at exec sends the reads
to the filter, with no code of the provider's mapped into the program.

The NTP state (kernel/time/ntp.c) starts as the host's at the first use
and is then the instance's: modes are applied as process_adjtimex_modes
does and read back as __do_adjtimex reports them; second_overflow's work
(the leap second state machine TIME_OK/INS/DEL/OOP/WAIT, maxerror
growing 500 us a second up to NTP_PHASE_LIMIT and STA_UNSYNC) is done
lazily, for the seconds that passed, at each read. Not modelled: the
discipline itself (the PLL's offset and frequency, adjtime()'s slew and
`tick` do not change the instance's clock rate; the offset read back does
not decay).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from lxsub.kernel.instance import Instance

NSEC_PER_SEC, NSEC_PER_USEC = 1_000_000_000, 1000
SECS_PER_DAY = 86400
CLOCK_REALTIME, CLOCK_REALTIME_COARSE, CLOCK_REALTIME_ALARM, CLOCK_TAI = 0, 5, 8, 11
REALTIME_CLOCKS = (CLOCK_REALTIME, CLOCK_REALTIME_COARSE, CLOCK_REALTIME_ALARM, CLOCK_TAI)

# uapi linux/timex.h
ADJ_OFFSET, ADJ_FREQUENCY, ADJ_MAXERROR, ADJ_ESTERROR = 0x1, 0x2, 0x4, 0x8
ADJ_STATUS, ADJ_TIMECONST, ADJ_TAI, ADJ_SETOFFSET = 0x10, 0x20, 0x80, 0x100
ADJ_MICRO, ADJ_NANO, ADJ_TICK, ADJ_ADJTIME, ADJ_OFFSET_READONLY = 0x1000, 0x2000, 0x4000, 0x8000, 0x2000
STA_PLL, STA_PPSFREQ, STA_PPSTIME, STA_FLL, STA_INS, STA_DEL = 0x1, 0x2, 0x4, 0x8, 0x10, 0x20
STA_UNSYNC, STA_FREQHOLD = 0x40, 0x80
STA_CLOCKERR, STA_NANO, STA_MODE, STA_CLK = 0x1000, 0x2000, 0x4000, 0x8000
STA_RONLY = 0x0100 | 0x0200 | 0x0400 | 0x0800 | STA_CLOCKERR | STA_NANO | STA_MODE | STA_CLK
TIME_OK, TIME_INS, TIME_DEL, TIME_OOP, TIME_WAIT, TIME_ERROR = range(6)

NTP_SCALE_SHIFT = 32
MAXPHASE = 500_000_000                       # ns
MAXFREQ = 500_000                            # ns/s
MAXFREQ_SCALED = MAXFREQ << NTP_SCALE_SHIFT
PPM_SCALE = NSEC_PER_USEC << (NTP_SCALE_SHIFT - 16)
PPM_SCALE_INV_SHIFT = 19
PPM_SCALE_INV = (1 << (PPM_SCALE_INV_SHIFT + NTP_SCALE_SHIFT)) // PPM_SCALE + 1
NTP_PHASE_LIMIT = (MAXPHASE // NSEC_PER_USEC) << 5
MAXTC, MAX_TAI_OFFSET = 10, 100000
NEVER = 1 << 63


def shift_right(x: int, s: int) -> int:
    """ntp.c shift_right: an arithmetic shift that rounds toward zero."""
    return -((-x) >> s) if x < 0 else x >> s


def host_ns(clockid: int) -> int:
    return time.clock_gettime_ns(clockid)


@dataclass
class Timex:
    """The fields of struct __kernel_timex the NTP code reads and writes."""
    modes: int = 0
    offset: int = 0
    freq: int = 0
    maxerror: int = 0
    esterror: int = 0
    status: int = 0
    constant: int = 0
    precision: int = 0
    tolerance: int = 0
    sec: int = 0
    usec: int = 0
    tick: int = 0
    tai: int = 0


@dataclass
class Ntp:
    """kernel/time/ntp.c's state variables, one set per instance."""
    status: int = STA_UNSYNC
    state: int = TIME_OK
    offset_ns: int = 0                       # time_offset, unscaled
    freq: int = 0                            # time_freq, scaled ns/s
    maxerror: int = NTP_PHASE_LIMIT
    esterror: int = NTP_PHASE_LIMIT
    constant: int = 2
    tick_usec: int = 10000
    tai: int = 0
    adjust: int = 0                          # adjtime()'s time_adjust, us
    reftime: int = 0
    next_leap: int = NEVER                   # ntp_next_leap_sec

    def clear(self) -> None:
        """ntp_clear(): a set or injected time drops the discipline."""
        self.adjust = 0
        self.status |= STA_UNSYNC
        self.maxerror = self.esterror = NTP_PHASE_LIMIT
        self.offset_ns = 0
        self.next_leap = NEVER


@dataclass
class InstanceClock:
    offset_ns: int = 0               # instance CLOCK_REALTIME - host CLOCK_REALTIME
    active: bool = False             # the instance's vDSOs send clock reads to the provider
    ntp: Ntp | None = None
    last_sec: int = 0                # the instance second second_overflow last ran for
    tz: tuple[int, int] | None = None        # settimeofday's timezone, once set
    on_activate: Callable[[], None] | None = field(default=None, repr=False)

    # -- reading ---------------------------------------------------------------
    def realtime_ns(self) -> int:
        """The instance's CLOCK_REALTIME, after the seconds' NTP work."""
        self._overflow()
        return host_ns(CLOCK_REALTIME) + self.offset_ns

    def clock_ns(self, clockid: int) -> int:
        """One of REALTIME_CLOCKS as the instance reads it (the host's
        errors, e.g. an alarm clock without an RTC, raise)."""
        self._overflow()
        now = host_ns(clockid) + self.offset_ns
        if clockid == CLOCK_TAI and self.ntp is not None:
            now += (self.ntp.tai - _host_tai()) * NSEC_PER_SEC
        return now

    def to_host(self, clockid: int, ns: int) -> int:
        """An absolute time of one of the instance's REALTIME_CLOCKS as the
        host's same clock reads it."""
        delta = self.offset_ns
        if clockid == CLOCK_TAI and self.ntp is not None:
            delta += (self.ntp.tai - _host_tai()) * NSEC_PER_SEC
        return ns - delta

    # -- setting ---------------------------------------------------------------
    def set_realtime(self, ns: int) -> None:
        """do_settimeofday64: the wall clock jumps; the NTP state is cleared."""
        self.offset_ns = ns - host_ns(CLOCK_REALTIME)
        self.ntp_state().clear()
        self.last_sec = ns // NSEC_PER_SEC
        self.activate()

    def inject(self, delta_ns: int) -> None:
        """timekeeping_inject_offset (ADJ_SETOFFSET)."""
        self.set_realtime(self.realtime_ns() + delta_ns)

    def activate(self) -> None:
        if not self.active:
            self.active = True
            if self.on_activate is not None:
                self.on_activate()

    # -- NTP -------------------------------------------------------------------
    def ntp_state(self) -> Ntp:
        if self.ntp is None:
            self.ntp = _ntp_from_host()
            self.last_sec = (host_ns(CLOCK_REALTIME) + self.offset_ns) // NSEC_PER_SEC
        return self.ntp

    def adjtimex(self, tx: Timex) -> int:
        """__do_adjtimex after validation and ADJ_SETOFFSET: apply tx's
        modes, fill tx with the state, return the clock state."""
        ntp = self.ntp_state()
        now = self.realtime_ns()
        if tx.modes & ADJ_ADJTIME:
            saved = ntp.adjust
            if not tx.modes & ADJ_OFFSET_READONLY:
                ntp.adjust = tx.offset
            tx.offset = saved
        else:
            if tx.modes:
                self._apply_modes(ntp, tx, now // NSEC_PER_SEC)
            tx.offset = ntp.offset_ns if ntp.status & STA_NANO else (ntp.offset_ns & 0xFFFFFFFF) // NSEC_PER_USEC
        if ntp.status & (STA_INS | STA_DEL) or ntp.state != TIME_OK:
            self.activate()          # a leap second must reach the vDSO readers
        result = TIME_ERROR if ntp.status & (STA_UNSYNC | STA_CLOCKERR) else ntp.state
        tx.freq = shift_right((ntp.freq >> PPM_SCALE_INV_SHIFT) * PPM_SCALE_INV, NTP_SCALE_SHIFT)
        tx.maxerror, tx.esterror, tx.status = ntp.maxerror, ntp.esterror, ntp.status
        tx.constant, tx.precision, tx.tolerance = ntp.constant, 1, MAXFREQ_SCALED // PPM_SCALE
        tx.tick, tx.tai = ntp.tick_usec, ntp.tai
        tx.sec, nsec = divmod(now, NSEC_PER_SEC)
        tx.usec = nsec if ntp.status & STA_NANO else nsec // NSEC_PER_USEC
        if tx.sec >= ntp.next_leap:          # the leap second reported as 23:59:60
            if ntp.state == TIME_INS and ntp.status & STA_INS:
                result, tx.tai, tx.sec = TIME_OOP, tx.tai + 1, tx.sec - 1
            if ntp.state == TIME_DEL and ntp.status & STA_DEL:
                result, tx.tai, tx.sec = TIME_WAIT, tx.tai - 1, tx.sec + 1
            if ntp.state == TIME_OOP and tx.sec == ntp.next_leap:
                result = TIME_WAIT
        return result

    def _apply_modes(self, ntp: Ntp, tx: Timex, now_sec: int) -> None:
        """process_adjtimex_modes."""
        m = tx.modes
        if m & ADJ_STATUS:
            if ntp.status & STA_PLL and not tx.status & STA_PLL:
                ntp.state, ntp.status, ntp.next_leap = TIME_OK, STA_UNSYNC, NEVER
            if not ntp.status & STA_PLL and tx.status & STA_PLL:
                ntp.reftime = now_sec
            ntp.status = (ntp.status & STA_RONLY) | (tx.status & ~STA_RONLY & 0xFFFFFFFF)
        if m & ADJ_NANO:
            ntp.status |= STA_NANO
        if m & ADJ_MICRO:
            ntp.status &= ~STA_NANO
        if m & ADJ_FREQUENCY:
            ntp.freq = max(min(tx.freq * PPM_SCALE, MAXFREQ_SCALED), -MAXFREQ_SCALED)
        if m & ADJ_MAXERROR:
            ntp.maxerror = tx.maxerror
        if m & ADJ_ESTERROR:
            ntp.esterror = tx.esterror
        if m & ADJ_TIMECONST:
            constant = tx.constant + (0 if ntp.status & STA_NANO else 4)
            ntp.constant = max(min(constant, MAXTC), 0)
        if m & ADJ_TAI and 0 <= tx.constant <= MAX_TAI_OFFSET:
            ntp.tai = tx.constant
        if m & ADJ_OFFSET:
            self._update_offset(ntp, tx.offset, now_sec)
        if m & ADJ_TICK:
            ntp.tick_usec = tx.tick

    @staticmethod
    def _update_offset(ntp: Ntp, offset: int, now_sec: int) -> None:
        """ntp_update_offset: the phase, and the frequency the PLL/FLL takes from it."""
        if not ntp.status & STA_PLL:
            return
        if not ntp.status & STA_NANO:
            offset = max(min(offset, 1_000_000), -1_000_000) * NSEC_PER_USEC
        offset = max(min(offset, MAXPHASE), -MAXPHASE)
        secs = 0 if ntp.status & STA_FREQHOLD else now_sec - ntp.reftime
        ntp.reftime = now_sec
        freq_adj = 0
        ntp.status &= ~STA_MODE
        if secs >= 256 and (ntp.status & STA_FLL or secs > 2048):     # MINSEC, MAXSEC
            ntp.status |= STA_MODE
            freq_adj = int((offset << (NTP_SCALE_SHIFT - 2)) / secs)   # SHIFT_FLL 2
        secs = min(secs, 1 << (2 + 1 + ntp.constant))                  # SHIFT_PLL 2
        shift = NTP_SCALE_SHIFT - 2 * (2 + 2 + ntp.constant)
        freq_adj += (offset * secs) << shift if shift >= 0 else (offset * secs) >> -shift
        ntp.freq = max(min(freq_adj + ntp.freq, MAXFREQ_SCALED), -MAXFREQ_SCALED)
        ntp.offset_ns = offset

    def _overflow(self) -> None:
        """second_overflow for the second boundaries the instance's clock
        crossed since the last read, in jumps: only the boundaries where
        the leap second state moves matter, and maxerror's growth."""
        ntp = self.ntp
        if ntp is None:
            return
        secs = self._secs()
        if secs > self.last_sec:
            ntp.maxerror += MAXFREQ // NSEC_PER_USEC * (secs - self.last_sec)
            if ntp.maxerror > NTP_PHASE_LIMIT:
                ntp.maxerror = NTP_PHASE_LIMIT
                ntp.status |= STA_UNSYNC
        for _ in range(8):                   # each step moves the state on
            secs = self._secs()
            if secs <= self.last_sec:
                self.last_sec = min(self.last_sec, secs)
                return
            if not self._leap_step(ntp, secs):
                self.last_sec = secs
                return

    def _secs(self) -> int:
        return (host_ns(CLOCK_REALTIME) + self.offset_ns) // NSEC_PER_SEC

    def _leap_step(self, ntp: Ntp, secs: int) -> bool:
        """One transition of the leap second state machine at a boundary
        in (last_sec, secs]; False when there is none."""
        first = self.last_sec + 1
        st = ntp.state
        if st == TIME_OK:
            if ntp.status & STA_INS:
                ntp.state, ntp.next_leap = TIME_INS, first + SECS_PER_DAY - first % SECS_PER_DAY
            elif ntp.status & STA_DEL:
                ntp.state, ntp.next_leap = TIME_DEL, first + SECS_PER_DAY - (first + 1) % SECS_PER_DAY
            else:
                return False
        elif st in (TIME_INS, TIME_DEL) and not ntp.status & (STA_INS if st == TIME_INS else STA_DEL):
            ntp.state, ntp.next_leap = TIME_OK, NEVER
        elif st in (TIME_INS, TIME_DEL):
            leap = ntp.next_leap
            if not first <= leap <= secs:
                return False
            if st == TIME_INS:
                # 23:59:60: the wall clock goes back a second, TAI does not.
                self.offset_ns -= NSEC_PER_SEC
                ntp.tai += 1
                ntp.state = TIME_OOP
                self.last_sec = leap - 1
            else:
                # 23:59:59 is skipped.
                self.offset_ns += NSEC_PER_SEC
                ntp.tai -= 1
                ntp.state, ntp.next_leap = TIME_WAIT, NEVER
                self.last_sec = leap + 1
            return True
        elif st == TIME_OOP:
            ntp.state, ntp.next_leap = TIME_WAIT, NEVER
        elif st == TIME_WAIT and not ntp.status & (STA_INS | STA_DEL):
            ntp.state = TIME_OK
        else:
            return False
        self.last_sec = first
        return True


def _host_timex() -> tuple[int, bytes]:
    from lxsub.platform import libc
    buf = bytearray(208)
    state = libc.clock_adjtime(CLOCK_REALTIME, buf)
    return state, bytes(buf)


def _host_tai() -> int:
    import struct
    return struct.unpack_from("<i", _host_timex()[1], 160)[0]


def _ntp_from_host() -> Ntp:
    """The instance's NTP state starts as the host's reads."""
    import struct
    _state, buf = _host_timex()
    offset, freq, maxerror, esterror = struct.unpack_from("<qqqq", buf, 8)
    status = struct.unpack_from("<i", buf, 40)[0]
    constant = struct.unpack_from("<q", buf, 48)[0]
    tick = struct.unpack_from("<q", buf, 88)[0]
    tai = struct.unpack_from("<i", buf, 160)[0]
    return Ntp(status=status & 0xFFFFFFFF, offset_ns=offset if status & STA_NANO else offset * NSEC_PER_USEC,
               freq=freq * PPM_SCALE, maxerror=maxerror, esterror=esterror, constant=constant,
               tick_usec=tick, tai=tai)


def clock_of(inst: "Instance") -> InstanceClock:
    """The instance's clock, made on first use."""
    clk = getattr(inst, "clock", None)
    if clk is None:
        clk = inst.clock = InstanceClock()
        clk.on_activate = lambda: _patch_all(inst)
    return clk


def instance_seconds(inst: "Instance", host_sec: int) -> int:
    """A time the host kernel stamped in seconds (a SysV object's
    msg_stime, shm_ctime, ...) on the instance's wall clock, 0 (never)
    kept. The host keeps whole seconds only, so the stamp is taken as the
    middle of its second; and the offset applied is today's, where Linux
    would have stamped with the clock as it was then."""
    clk = getattr(inst, "clock", None)
    if not host_sec or clk is None or not clk.offset_ns:
        return host_sec
    return (host_sec * NSEC_PER_SEC + NSEC_PER_SEC // 2 + clk.offset_ns) // NSEC_PER_SEC


def active(inst: "Instance") -> bool:
    clk = getattr(inst, "clock", None)
    return clk is not None and clk.active


def _patch_all(inst: "Instance") -> None:
    from lxsub.platform import vdso
    for proc in list(inst.pids.processes_by_host.values()):
        vdso.patch(proc.host_pid)


def patch_new_image(inst: "Instance", pid: int) -> None:
    """An exec'd image (a fresh vDSO) or a fork child of an active instance."""
    if active(inst):
        from lxsub.platform import vdso
        vdso.patch(pid)
