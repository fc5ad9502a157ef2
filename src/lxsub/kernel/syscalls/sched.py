"""Calls whose first argument (or the `who` of getpriority) is a PID: the
provider translates it and the host does the rest in the caller."""

from __future__ import annotations

import errno

from lxsub.kernel.call import Call, Native


def _translate_arg(c: Call, i: int) -> Native:
    pid = c.int(i)
    if pid != 0:
        host = c.inst.pids.host_of_vtid(pid) or c.inst.pids.host_of_vpid(pid)
        if host is None or pid < 0:
            raise OSError(errno.ESRCH if pid > 0 else errno.EINVAL, "no such process")
        c.set_arg(i, host)
    return Native()


def sys_pid_first(c: Call) -> Native:
    """sched_*, prlimit64, get_robust_list, migrate_pages, move_pages."""
    return _translate_arg(c, 0)


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
