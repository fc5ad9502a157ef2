"""BSD process accounting (acct(2), acct(5)): one record per process of
the instance that ends, appended to the file acct(2) named.

Linux keeps the accounting file per PID namespace (kernel/acct.c); an
instance is one. The record is struct acct_v3 (CONFIG_BSD_PROCESS_ACCT_V3,
as the host reports in /proc/config.gz): the Linux ids and names the
instance gave the process, and its times as the host counted them (the
ended process's /proc/PID/stat).

Linux writes the record in do_exit, before the process is a zombie its
parent's wait can report; here that is the PTRACE_EVENT_EXIT stop of the
process's last thread, which the host holds until the provider lets it
go. The provider asks the host for those stops only while accounting is
on (`exit_events`, for every task of the instance; children inherit the
option): a program pays nothing for it otherwise. A thread that ends
without that stop (one SIGKILL took before its stop, or that was not yet
asked) has its process's record written when the host reports the end.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lxsub.kernel.task import Process, Task

ACCT_VERSION = 3
AHZ = 100                        # the records' clock, as USER_HZ
AXSIG, ACORE = 0x10, 0x08        # ac_flag: killed by a signal, dumped core
# struct acct_v3: flag, version, tty, exitcode, uid, gid, pid, ppid, btime,
# etime (an IEEE float), then eight comp_t and the 16-byte command name.
_V3 = struct.Struct("<BBHIIIIIIf8H16s")
_MANTISSA, _EXPONENT = 13, 3


def encode_comp_t(value: int) -> int:
    """kernel/acct.c encode_comp_t: 13 bits of mantissa, a base-8 exponent
    in the 3 bits above, rounded; 0xffff when too large."""
    exp = rnd = 0
    while value > (1 << _MANTISSA) - 1:
        rnd = value & (1 << (_EXPONENT - 1))
        value >>= _EXPONENT
        exp += 1
    if rnd:
        value += 1
        if value > (1 << _MANTISSA) - 1:
            value >>= _EXPONENT
            exp += 1
    if exp > 0xFFFF >> _MANTISSA:
        return 0xFFFF
    return (exp << _MANTISSA) + value


def _host_times(host_pid: int) -> tuple[int, int, int, int, int]:
    """(utime, stime, minflt, majflt, start) in clock ticks from the host's
    /proc/PID/stat; zeros when it has gone."""
    try:
        with open(f"/proc/{host_pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except OSError:
        return 0, 0, 0, 0, 0
    # After the name: state is fields[0], so stat(5)'s field N is fields[N - 3].
    return (int(fields[11]), int(fields[12]), int(fields[7]), int(fields[9]), int(fields[19]))


def record(proc: "Process", status: int, ruid: int, rgid: int) -> bytes:
    """The acct_v3 record of `proc`, ended with wait status `status`."""
    utime, stime, minflt, majflt, start = _host_times(proc.host_pid)
    ticks = os.sysconf("SC_CLK_TCK")
    elapsed = max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - start / ticks)
    flag = 0
    if os.WIFSIGNALED(status):
        flag |= AXSIG | (ACORE if os.WCOREDUMP(status) else 0)
    ppid = proc.parent.pid if proc.parent is not None else 0
    to_ahz = AHZ / ticks
    return _V3.pack(flag, ACCT_VERSION, 0, status & 0xFFFFFFFF, ruid, rgid, proc.pid, ppid,
                    int(time.time() - elapsed) & 0xFFFFFFFF, elapsed * AHZ,
                    encode_comp_t(int(utime * to_ahz)), encode_comp_t(int(stime * to_ahz)),
                    0, 0, 0, encode_comp_t(minflt), encode_comp_t(majflt), 0,
                    proc.comm.encode()[:15])


class Accounting:
    """The instance's accounting file: a provider descriptor opened for
    appending when acct(2) named it, or none."""

    def __init__(self) -> None:
        self._fd = -1
        self._lock = threading.Lock()
        self._exiting: set["Task"] = set()        # past their exit stop, not yet gone
        self._written: set["Process"] = set()     # recorded at an exit stop, not yet gone

    @property
    def on(self) -> bool:
        return self._fd >= 0

    def switch_to(self, fd: int) -> None:
        """Account to `fd` from now on (-1: stop), closing the former file."""
        with self._lock:
            old, self._fd = self._fd, fd
        if old >= 0:
            os.close(old)

    def exit_stop(self, task: "Task", status: int, whole: bool) -> None:
        """`task` stopped at its exit with wait status `status`: the
        process's record, if the `whole` process ends (exit_group, a fatal
        signal) or it is the last of its threads to get there
        (acct_process runs for a thread group that is dead)."""
        self._exiting.add(task)
        proc = task.process
        if proc in self._written:
            return
        if not whole and any(t not in self._exiting for t in proc.threads.values()):
            return
        self._written.add(proc)
        self._write(proc, status, task.creds.ruid, task.creds.rgid)

    def task_gone(self, task: "Task") -> None:
        if self._exiting:
            self._exiting.discard(task)

    def process_ended(self, proc: "Process", status: int, ruid: int, rgid: int) -> None:
        """The host reported the end of `proc`'s last thread: its record,
        unless its exit stop wrote it."""
        if self._written and proc in self._written:
            self._written.discard(proc)
            return
        self._write(proc, status, ruid, rgid)

    def _write(self, proc: "Process", status: int, ruid: int, rgid: int) -> None:
        with self._lock:
            if self._fd < 0:
                return
            try:
                os.write(self._fd, record(proc, status, ruid, rgid))
            except OSError:
                pass              # a full disk or a file gone: Linux drops the record too


def accounting_of(inst) -> Accounting:
    """The instance's accounting, made on first use."""
    found = getattr(inst, "accounting", None)
    if found is None:
        found = inst.accounting = Accounting()
    return found
