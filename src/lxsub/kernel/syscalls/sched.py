"""Calls whose first argument (or the `who` of getpriority) is a PID: the
provider translates it and the host does the rest in the caller."""

from __future__ import annotations

import errno
import os
import resource
import struct

from lxsub.abi.resource import RLIMIT_NOFILE
from lxsub.abi.sysno import NUMBERS
from lxsub.kernel.call import Call, Native
from lxsub.kernel.creds import CAP_SYS_NICE, CAP_SYS_RESOURCE, Creds
from lxsub.kernel.sysctl import sysctls_of
from lxsub.kernel.task import active_pid_ns


def _translate_arg(c: Call, i: int, negative: int = errno.EINVAL) -> Native:
    pid = c.int(i)
    if pid != 0:
        ns = active_pid_ns(c.task)
        task = c.inst.pids.task_in(ns, pid)
        host = task.host_tid if task is not None else c.inst.pids.host_pid_in(ns, pid)
        if host is None or pid < 0:
            raise OSError(errno.ESRCH if pid > 0 else negative, "no such process")
        c.set_arg(i, host)
    return Native()


def sys_pid_first(c: Call) -> Native:
    """sched_*: a negative pid is EINVAL (sched_getparam(2))."""
    return _translate_arg(c, 0)


def sys_task_first(c: Call) -> Native:
    """prlimit64, migrate_pages, move_pages look the pid up as it is
    (find_task_by_vpid): a negative one is no process, ESRCH. Another
    process's pages move only for a caller that may ptrace-read it with
    its real ids (kernel_migrate_pages, find_mm_struct: EPERM); another's
    limits only for one whose ids are all its (check_prlimit_permission)
    or with CAP_SYS_RESOURCE. The host sees one user and checks neither."""
    pid = c.int(0)
    native = _translate_arg(c, 0, errno.ESRCH)
    target = c.inst.pids.task_in(active_pid_ns(c.task), pid) if pid > 0 else None
    if target is None or target.process is c.task.process:
        return native
    me, them = c.task.creds, target.creds
    if c.nr == NUMBERS["prlimit64"]:
        allowed = (me.ruid == them.euid == them.suid == them.ruid and me.rgid == them.egid == them.sgid
                   == them.rgid) or me.capable(CAP_SYS_RESOURCE)
    else:
        allowed = me.may_ptrace_read(them, target.process.dumpable, realcreds=True)
    if not allowed:
        raise OSError(errno.EPERM, "may not act on that process")
    return native


def sys_prlimit64(c: Call) -> Native:
    """prlimit64(2): the process looked up and the permission checked as
    sys_task_first; then do_prlimit's bound for a new RLIMIT_NOFILE (the
    filter stops only that): a hard limit above fs.nr_open is EPERM (the
    host checks its own nr_open, not the instance's)."""
    native = sys_task_first(c)
    if c.uint(1) == RLIMIT_NOFILE and c.ptr(2):
        _check_nofile_limit(c, c.ptr(2))
    return native


def sys_setrlimit(c: Call) -> Native:
    """setrlimit(2) of RLIMIT_NOFILE (the only one the filter stops): the
    instance's fs.nr_open bounds the hard limit (EPERM above it)."""
    _check_nofile_limit(c, c.ptr(1))
    return Native()


def _check_nofile_limit(c: Call, addr: int) -> None:
    """do_prlimit: a soft limit above the hard one is EINVAL (the host
    says so itself), a hard one above fs.nr_open EPERM."""
    soft, hard = struct.unpack("<QQ", c.read(addr, 16))
    if soft <= hard and hard > sysctls_of(c.inst).value("fs/nr_open"):
        raise OSError(errno.EPERM, "RLIMIT_NOFILE above fs.nr_open")


def sys_get_robust_list(c: Call) -> Native | int:
    """get_robust_list(2) of another task: ESRCH if there is none, EPERM
    unless the caller may ptrace it for reading with its real ids
    (kernel/futex/syscalls.c, PTRACE_MODE_READ_REALCREDS)."""
    pid = c.int(0)
    pids = c.inst.pids
    target = pids.task_in(active_pid_ns(c.task), pid) if pid > 0 else None
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
    """sched_setaffinity/sched_getaffinity: run with the caller's own mask.
    Setting another user's mask needs CAP_SYS_NICE (sched_setaffinity:
    check_same_owner), which the host cannot tell from one host user."""
    if c.nr == NUMBERS["sched_setaffinity"]:
        target = _sched_target(c, c.int(0))
        if not _same_owner_or_nice(c.task.creds, target):
            raise OSError(errno.EPERM, "not permitted to change that mask")
    native = _translate_arg(c, 0)
    native.own_cpu_mask = True
    return native


SCHED_NORMAL, SCHED_FIFO, SCHED_RR, SCHED_BATCH, SCHED_IDLE, SCHED_DEADLINE = 0, 1, 2, 3, 5, 6
_POLICIES = (SCHED_NORMAL, SCHED_FIFO, SCHED_RR, SCHED_BATCH, SCHED_IDLE, SCHED_DEADLINE)
SCHED_RESET_ON_FORK = 0x40000000
_SCHED_ATTR_MIN = 48      # SCHED_ATTR_SIZE_VER0


def _sched_target(c: Call, pid: int) -> tuple[Creds, int] | None:
    """(credentials, host tid) of the task a sched_* call names; None
    where the host answers anyway (ESRCH, EINVAL for a negative pid)."""
    if pid == 0:
        return c.task.creds, c.task.host_tid
    task = c.inst.pids.task_in(active_pid_ns(c.task), pid) if pid > 0 else None
    if task is None:
        return (Creds(), c.inst.init.host_pid) if pid == 1 else None
    return task.creds, task.host_tid


def _same_owner_or_nice(me: Creds, target: tuple[Creds, int] | None) -> bool:
    """check_same_owner: the caller's euid is the target's euid or real
    uid; or CAP_SYS_NICE."""
    return (target is None or me.capable(CAP_SYS_NICE)
            or me.euid in (target[0].euid, target[0].ruid))


def sys_sched_set(c: Call) -> Native:
    """sched_setscheduler, sched_setparam, sched_setattr: trapped for the
    caller itself too, because the host sees one host user (root where the
    provider is root) and cannot apply Linux's checks for the instance's:
    without CAP_SYS_NICE a real-time policy needs RLIMIT_RTPRIO, no one
    gets SCHED_DEADLINE, and only the target's owner may change it
    (kernel/sched/syscalls.c user_check_sched_setscheduler). Arguments the
    host would refuse (EINVAL, EFAULT) are left to it. Run with the
    caller's own CPU mask: SCHED_DEADLINE wants the whole root domain."""
    target = _sched_target(c, c.int(0))
    if target is not None and not c.task.creds.capable(CAP_SYS_NICE):
        request = _requested_policy(c, target[1])
        if request is not None and _refused_without_cap(c.task.creds, target, *request):
            raise OSError(errno.EPERM, "not permitted to change the scheduling policy")
    native = _translate_arg(c, 0)
    native.own_cpu_mask = True
    return native


def _requested_policy(c: Call, host_tid: int) -> tuple[int, int] | None:
    """(policy, rt priority) the call asks for; None when unreadable."""
    try:
        if c.nr == NUMBERS["sched_setattr"]:
            head = c.read(c.ptr(1), _SCHED_ATTR_MIN)
            return int.from_bytes(head[4:8], "little"), int.from_bytes(head[24:28], "little")
        setscheduler = c.nr == NUMBERS["sched_setscheduler"]
        prio = int.from_bytes(c.read(c.ptr(2 if setscheduler else 1), 4), "little", signed=True)
        policy = c.int(1) & ~SCHED_RESET_ON_FORK if setscheduler else os.sched_getscheduler(host_tid)
        return policy, prio
    except OSError:
        return None


def _refused_without_cap(me: Creds, target: tuple[Creds, int], policy: int, prio: int) -> bool:
    """user_check_sched_setscheduler for valid arguments (invalid ones are
    the host's EINVAL): SCHED_DEADLINE never; another owner's task never;
    a real-time policy only within the target's RLIMIT_RTPRIO."""
    rt = policy in (SCHED_FIFO, SCHED_RR)
    if policy not in _POLICIES or (not 1 <= prio <= 99 if rt else prio and policy != SCHED_DEADLINE):
        return False
    if policy == SCHED_DEADLINE or not _same_owner_or_nice(me, target):
        return True
    if not rt:
        return False
    host_tid = target[1]
    try:
        limit = resource.prlimit(host_tid, resource.RLIMIT_RTPRIO)[0]
        current = os.sched_getscheduler(host_tid)
        current_prio = os.sched_getparam(host_tid).sched_priority
    except OSError:
        return False
    if limit == resource.RLIM_INFINITY:
        return False
    return (policy != current and limit == 0) or (prio > current_prio and prio > limit)


PRIO_PROCESS, PRIO_PGRP, PRIO_USER = 0, 1, 2


def sys_priority(c: Call) -> Native | int:
    """getpriority/setpriority and ioprio_get/set: (which, who, ...)."""
    which, who = c.int(0), c.int(1)
    if which == PRIO_USER and c.nr in (NUMBERS["setpriority"], NUMBERS["getpriority"]):
        return _user_priority(c, c.uint(1))
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
    pids, ns = c.inst.pids, active_pid_ns(c.task)
    if which == PRIO_PROCESS:
        task = c.task if who == 0 else pids.task_in(ns, who) if who > 0 else None
        if task is not None:
            return [(task.creds, task.process.host_pid, task.host_tid)]
        if who == 1 and ns is None:    # /init is the provider, running as root
            return [(Creds(), c.inst.init.host_pid, c.inst.init.host_pid)]
        return []
    group = os.getpgid(c.task.process.host_pid) if who == 0 else pids.group_host_in(ns, who)
    out = []
    # Newest first, as the kernel's pid lists hold a group (attach_pid adds
    # at the head): the last refusal, which is the answer, is the oldest's.
    for proc in reversed(pids.visible(ns)):
        try:
            if proc is c.inst.init or group is None or os.getpgid(proc.host_pid) != group:
                continue
        except OSError:
            continue
        out += [(t.creds, proc.host_pid, t.host_tid) for t in list(proc.threads.values())]
    return out


def _user_threads(c: Call, uid: int) -> list[tuple[Creds, int, int]]:
    """(creds, host pid, host tid) of each instance thread whose real uid is
    `uid` (PRIO_USER: for_each_process_thread ... task_uid(p) == uid), /init
    (the provider, root) included."""
    out = [(Creds(), c.inst.init.host_pid, c.inst.init.host_pid)] if uid == 0 else []
    for proc in list(c.inst.pids.processes_by_vid.values()):
        if proc is c.inst.init:
            continue
        out += [(t.creds, proc.host_pid, t.host_tid) for t in list(proc.threads.values())
                if t.creds.ruid == uid]
    return out


def _user_priority(c: Call, uid: int) -> int:
    """getpriority/setpriority(PRIO_USER) over the instance's processes of
    a Linux user (0: the caller's real uid), never the host's user: ESRCH
    when it has none; getpriority answers 20 - the lowest nice value (the
    raw syscall's form); setpriority changes each thread it may and answers
    the last refusal (kernel/sys.c)."""
    uid = uid or c.task.creds.ruid
    targets = _user_threads(c, uid)
    if not targets:
        raise OSError(errno.ESRCH, "no process of that user")
    if c.nr == NUMBERS["getpriority"]:
        nices = []
        for _creds, _pid, tid in targets:
            try:
                nices.append(os.getpriority(os.PRIO_PROCESS, tid))
            except OSError:
                pass
        if not nices:
            raise OSError(errno.ESRCH, "no process of that user")
        return 20 - min(nices)
    nice = min(max(c.int(2), MIN_NICE), MAX_NICE)
    err = 0
    for target in targets:
        refusal = _renice_error(c.task.creds, *target, nice)
        if refusal:
            err = refusal
            continue
        try:
            os.setpriority(os.PRIO_PROCESS, target[2], nice)
        except OSError as e:
            err = e.errno
    if err:
        raise OSError(err, "not permitted to change that priority")
    return 0


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
    host = c.inst.pids.group_host_in(active_pid_ns(c.task), c.int(i))
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
