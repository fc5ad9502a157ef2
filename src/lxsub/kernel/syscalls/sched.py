"""Calls whose first argument (or the `who` of getpriority) is a PID: the
provider translates it and the host does the rest in the caller."""

from __future__ import annotations

import errno

from lxsub.kernel.call import Call, Native
from lxsub.kernel.creds import Creds


def _translate_arg(c: Call, i: int) -> Native:
    pid = c.int(i)
    if pid != 0:
        host = c.inst.pids.host_of_vtid(pid) or c.inst.pids.host_of_vpid(pid)
        if host is None or pid < 0:
            raise OSError(errno.ESRCH if pid > 0 else errno.EINVAL, "no such process")
        c.set_arg(i, host)
    return Native()


def sys_pid_first(c: Call) -> Native:
    """sched_*, prlimit64, migrate_pages, move_pages."""
    return _translate_arg(c, 0)


def sys_get_robust_list(c: Call) -> Native | int:
    """get_robust_list(2) of another task: ESRCH if there is none, EPERM
    unless the caller may ptrace it for reading with its real ids
    (kernel/futex/syscalls.c, PTRACE_MODE_READ_REALCREDS)."""
    pid = c.int(0)
    pids = c.inst.pids
    target = pids.tasks_by_vid.get(pid) if pid > 0 else None
    if target is None and pid == 1:
        return _init_robust_list(c)
    if target is None:
        raise OSError(errno.ESRCH, "no such process")
    if target.process is not c.task.process and not c.task.creds.may_ptrace_read(
            target.creds, target.process.dumpable, realcreds=True):
        raise OSError(errno.EPERM, "may not read that process's robust list")
    c.set_arg(0, target.host_tid)
    return Native()


ROBUST_LIST_HEAD_SIZE = 24


def _init_robust_list(c: Call) -> int:
    """/init is the provider: root, with no robust list of its own (a task
    that never called set_robust_list reads NULL and the head's size)."""
    if not c.task.creds.may_ptrace_read(Creds(), True, realcreds=True):
        raise OSError(errno.EPERM, "may not read that process's robust list")
    c.write(c.ptr(2), ROBUST_LIST_HEAD_SIZE.to_bytes(8, "little"))
    c.write(c.ptr(1), bytes(8))
    return 0


def sys_cpu_mask(c: Call) -> Native:
    """sched_setaffinity/sched_getaffinity: run with the caller's own mask."""
    native = _translate_arg(c, 0)
    native.own_cpu_mask = True
    return native


PRIO_PROCESS, PRIO_PGRP = 0, 1


def sys_priority(c: Call) -> Native:
    """getpriority/setpriority and ioprio_get/set: (which, who, ...)."""
    which, who = c.int(0), c.int(1)
    if who == 0:
        return Native()
    if which == PRIO_PROCESS:
        if who < 0:     # find_task_by_vpid finds none: ESRCH (sys_getpriority)
            raise OSError(errno.ESRCH, "no such process")
        return _translate_arg(c, 1)
    if which == PRIO_PGRP:
        return _translate_group(c, 1)
    return Native()


def _translate_group(c: Call, i: int) -> Native:
    host = c.inst.pids.group_to_host(c.int(i))
    if host is None:
        raise OSError(errno.ESRCH, "no such process group")
    c.set_arg(i, host)
    return Native()


IOPRIO_WHO_PROCESS, IOPRIO_WHO_PGRP = 1, 2


def sys_ioprio(c: Call) -> Native:
    which = c.int(0)
    if c.int(1) == 0 or which not in (IOPRIO_WHO_PROCESS, IOPRIO_WHO_PGRP):
        return Native()
    if which == IOPRIO_WHO_PROCESS:
        return _translate_arg(c, 1)
    return _translate_group(c, 1)
