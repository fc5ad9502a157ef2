"""Time namespaces (time_namespaces(7)), kept by the provider.

A time namespace moves CLOCK_MONOTONIC (with its COARSE and RAW variants)
and CLOCK_BOOTTIME (with BOOTTIME_ALARM) by offsets of its own, for the
tasks in it. unshare(CLONE_NEWTIME) makes one for the caller's *children*
(its time_for_children; the caller stays where it is); its offsets are
written to /proc/<pid>/timens_offsets until a task enters it (fork, or
setns), then frozen, as Linux does (kernel/time/namespace.c). Task.timens
and Task.timens_for_children hold them; None is the instance's own (no
offsets).

How the offsets reach the clock reads: as for the instance's wall clock
(kernel/timekeeping.py), a process in a namespace with offsets gets its
vDSO clock entries rewritten to the syscalls (at fork, exec, setns); and a
process that unshares a time namespace is given a seccomp filter of the
provider's (injected at the unshare's exit, platform/inject.py; inherited
by its children) that stops clock_gettime of the monotonic and boottime
clocks and absolute clock_nanosleep on them by ptrace, so the provider
adds the offsets to the reads and takes them off absolute times. Other
processes pay nothing.
"""

from __future__ import annotations

import errno
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lxsub.abi.sysno import NUMBERS
from lxsub.kernel import extra_filter
from lxsub.kernel.task import new_ns_inum
from lxsub.platform import bpf
from lxsub.platform.bpf import ArgRule, ByArgs
from lxsub.platform.inject import SysCall

if TYPE_CHECKING:
    from lxsub.kernel.instance import Instance
    from lxsub.kernel.task import Task

NSEC_PER_SEC = 1_000_000_000
CLOCK_MONOTONIC, CLOCK_MONOTONIC_RAW, CLOCK_MONOTONIC_COARSE = 1, 4, 6
CLOCK_BOOTTIME, CLOCK_BOOTTIME_ALARM = 7, 9
MONOTONIC_CLOCKS = (CLOCK_MONOTONIC, CLOCK_MONOTONIC_RAW, CLOCK_MONOTONIC_COARSE)
BOOTTIME_CLOCKS = (CLOCK_BOOTTIME, CLOCK_BOOTTIME_ALARM)
SHIFTED_CLOCKS = MONOTONIC_CLOCKS + BOOTTIME_CLOCKS
# clock_nanosleep takes only these of them (the others: EINVAL/ENOTSUPP on the host).
_SLEEP_CLOCKS = (CLOCK_MONOTONIC, CLOCK_BOOTTIME, CLOCK_BOOTTIME_ALARM)
# kernel/time/namespace.c proc_timens_set_offset: KTIME_SEC_MAX.
_KTIME_SEC_MAX = ((1 << 63) - 1) // NSEC_PER_SEC


@dataclass(eq=False)
class TimeNamespace:
    monotonic: int = 0                 # ns
    boottime: int = 0                  # ns
    frozen: bool = False               # a task is in it: its offsets are fixed
    inum: int = field(default_factory=new_ns_inum)

    def offset(self, clockid: int) -> int:
        if clockid in MONOTONIC_CLOCKS:
            return self.monotonic
        if clockid in BOOTTIME_CLOCKS:
            return self.boottime
        return 0

    def shifts(self) -> bool:
        return bool(self.monotonic or self.boottime)


def of(task: "Task | None") -> TimeNamespace | None:
    return getattr(task, "timens", None) if task is not None else None


def for_children(task: "Task | None") -> TimeNamespace | None:
    return getattr(task, "timens_for_children", None) if task is not None else None


def offset(task: "Task", clockid: int) -> int:
    ns = of(task)
    return ns.offset(clockid) if ns is not None else 0


def unshare(task: "Task") -> None:
    """copy_time_ns: a new namespace for the task's children, with the
    offsets of the task's own."""
    old = of(task)
    task.timens_for_children = TimeNamespace(old.monotonic, old.boottime) if old else TimeNamespace()


def enter(task: "Task", ns: TimeNamespace | None) -> None:
    """The task is in ns from now on (its children too); the offsets freeze."""
    task.timens = task.timens_for_children = ns
    if ns is not None:
        ns.frozen = True


def on_fork(inst: "Instance", parent: "Task", child: "Task", thread: bool) -> None:
    """timens_on_fork: a new process enters its parent's time_for_children;
    a thread shares its process's namespace."""
    if thread:
        child.timens, child.timens_for_children = of(parent), for_children(parent)
        return
    from lxsub.kernel.vfs import pseudo
    if pseudo.WRITES_PENDING:
        pseudo.apply_pending_writes()      # offsets written before the fork are in
    enter(child, for_children(parent))
    patch_if_shifted(child)


def patch_if_shifted(task: "Task") -> None:
    """A process in a namespace with offsets reads its clocks by syscall."""
    ns = of(task)
    if ns is not None and ns.shifts():
        from lxsub.platform import vdso
        vdso.patch(task.process.host_pid)


# -- /proc/<pid>/timens_offsets ---------------------------------------------------

def offsets_text(task: "Task") -> bytes:
    """proc_timens_show_offsets: the time_for_children namespace's."""
    ns = for_children(task) or TimeNamespace()
    out = b""
    for name, value in ((b"monotonic", ns.monotonic), (b"boottime", ns.boottime)):
        sec, nsec = divmod(value, NSEC_PER_SEC)
        out += b"%-10s %10d %9d\n" % (name, sec, nsec)
    return out


def write_offsets(writer: "Task", target: "Task", data: bytes) -> None:
    """proc_timens_set_offset: lines `<clock> <sec> <nsec>` (clock by number
    or name), for the target's time_for_children, before any task entered it;
    the writer needs CAP_SYS_TIME. (A write to a /proc file reaches the
    provider through a pipe, kernel/vfs/pseudo.py: the errors raised here
    leave the offsets as they were but do not reach write(2)'s caller.)"""
    from lxsub.kernel import creds as caps
    if not writer.creds.capable(caps.CAP_SYS_TIME):
        raise OSError(errno.EPERM, "CAP_SYS_TIME needed")
    changes = []
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        words = line.split()
        if len(words) != 3:
            raise OSError(errno.EINVAL, "bad offset line")
        clock = {b"monotonic": CLOCK_MONOTONIC, b"boottime": CLOCK_BOOTTIME}.get(words[0])
        try:
            clock = int(words[0]) if clock is None else clock
            sec, nsec = int(words[1]), int(words[2])
        except ValueError:
            raise OSError(errno.EINVAL, "bad offset line") from None
        if clock not in (CLOCK_MONOTONIC, CLOCK_BOOTTIME):
            raise OSError(errno.EINVAL, "only monotonic and boottime have offsets")
        if not 0 <= nsec < NSEC_PER_SEC:
            raise OSError(errno.EINVAL, "bad nanoseconds")
        # The clock moved must stay within [0, KTIME_SEC_MAX / 2].
        moved = (time.clock_gettime_ns(clock) + sec * NSEC_PER_SEC + nsec) // NSEC_PER_SEC
        if abs(sec) > _KTIME_SEC_MAX or not 0 <= moved <= _KTIME_SEC_MAX // 2:
            raise OSError(errno.ERANGE, "offset out of range")
        changes.append((clock, sec * NSEC_PER_SEC + nsec))
    ns = for_children(target)
    if ns is None or ns.frozen:       # the instance's own is frozen from the start
        raise OSError(errno.EACCES, "a task has entered the namespace")
    for clock, value in changes:
        if clock == CLOCK_MONOTONIC:
            ns.monotonic = value
        else:
            ns.boottime = value


# -- the filter a process that unshares a time namespace is given ------------------

def _rules_on(index: int, values) -> tuple[ArgRule, ...]:
    return tuple(ArgRule(index, "eq", v, bpf.RET_TRACE) for v in values)


def _filter_call() -> SysCall:
    """seccomp(SET_MODE_FILTER, TSYNC): clock_gettime of the shifted clocks
    and absolute clock_nanosleep on them stop (TRACE: loses to the instance
    filter's USER_NOTIF, wins over its ALLOW)."""
    actions = {
        NUMBERS["clock_gettime"]: ByArgs(_rules_on(0, SHIFTED_CLOCKS), bpf.RET_ALLOW),
        NUMBERS["clock_nanosleep"]: ByArgs((ArgRule(1, "any_bit", 1, ByArgs(_rules_on(0, _SLEEP_CLOCKS),
                                                                             bpf.RET_ALLOW)),),
                                           bpf.RET_ALLOW),
    }
    return extra_filter.seccomp_call(actions)


FILTER = _filter_call()


def give_filter(inst: "Instance", task: "Task") -> None:
    """Inject the filter into task's process at this syscall exit (once)."""
    proc = task.process
    if getattr(proc, "timens_filter", False):
        return
    proc.timens_filter = True
    extra_filter.inject(inst, proc, task.host_tid, "timens_filter", FILTER, "time namespace")
