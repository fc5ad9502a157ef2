"""Calls whose first argument (or the `who` of getpriority) is a PID: the
provider translates it and the host does the rest in the caller."""

from __future__ import annotations

import errno
import os
import resource

from lxsub.abi.sysno import NUMBERS
from lxsub.kernel.call import Call, Native
from lxsub.kernel.creds import CAP_SYS_NICE, Creds


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
    if c.nr == NUMBERS["setpriority"] and which in (PRIO_PROCESS, PRIO_PGRP):
        _check_renice(c, which, who, c.int(2))
    if who == 0:
        return Native()
    if which == PRIO_PROCESS:
        if who < 0:     # find_task_by_vpid finds none: ESRCH (sys_getpriority)
            raise OSError(errno.ESRCH, "no such process")
        return _translate_arg(c, 1)
    if which == PRIO_PGRP:
        return _translate_group(c, 1)
    return Native()


MIN_NICE, MAX_NICE = -20, 19


def _renice_targets(c: Call, which: int, who: int) -> list[tuple[Creds, int, int]]:
    """(creds, host pid, host tid) of each thread setpriority would change."""
    pids = c.inst.pids
    if which == PRIO_PROCESS:
        task = c.task if who == 0 else pids.tasks_by_vid.get(who) if who > 0 else None
        if task is not None:
            return [(task.creds, task.process.host_pid, task.host_tid)]
        if who == 1:    # /init is the provider, running as root
            return [(Creds(), c.inst.init.host_pid, c.inst.init.host_pid)]
        return []
    group = os.getpgid(c.task.process.host_pid) if who == 0 else pids.group_to_host(who)
    out = []
    # Newest first, as the kernel's pid lists hold a group (attach_pid adds
    # at the head): the last refusal, which is the answer, is the oldest's.
    for proc in reversed(list(pids.processes_by_vid.values())):
        try:
            if proc is c.inst.init or group is None or os.getpgid(proc.host_pid) != group:
                continue
        except OSError:
            continue
        out += [(t.creds, proc.host_pid, t.host_tid) for t in list(proc.threads.values())]
    return out


def _renice_error(me: Creds, creds: Creds, host_pid: int, host_tid: int, nice: int) -> int:
    """set_one_prio: EPERM unless the caller's euid is the target's real or
    effective uid; EACCES to lower the nice value past RLIMIT_NICE (can_nice);
    CAP_SYS_NICE passes both. 0 when allowed."""
    if me.capable(CAP_SYS_NICE):
        return 0
    if me.euid not in (creds.ruid, creds.euid):
        return errno.EPERM
    try:
        lower = nice < os.getpriority(os.PRIO_PROCESS, host_tid)
        limit = resource.prlimit(host_pid, resource.RLIMIT_NICE)[0]
    except OSError:
        return 0        # gone meanwhile: the host answers
    if lower and (limit != resource.RLIM_INFINITY and 20 - nice > limit):
        return errno.EACCES
    return 0


def _check_renice(c: Call, which: int, who: int, nice: int) -> None:
    """The host process runs as one host user, so Linux's per-task checks
    are made here. Where some targets are refused, the others are changed
    here and the last refusal is the answer, as sys_setpriority does."""
    nice = min(max(nice, MIN_NICE), MAX_NICE)
    targets = _renice_targets(c, which, who)
    errors = [_renice_error(c.task.creds, *t, nice) for t in targets]
    refused = [e for e in errors if e]
    if not refused:
        return
    for (_creds, _pid, tid), err in zip(targets, errors):
        if not err:
            try:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
            except OSError:
                pass
    raise OSError(refused[-1], "not permitted to change that priority")


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
