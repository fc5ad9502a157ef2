"""Calls that look into another process of the instance: kcmp(2),
process_vm_readv(2) and process_vm_writev(2).

The provider does them itself, by virtual pid, and only for processes of
the instance: a pid that is no instance task is ESRCH as a pid of another
PID namespace is in Linux, so no host process is ever reached. Access is
Linux's ptrace rule, PTRACE_MODE_READ_REALCREDS for kcmp (kernel/kcmp.c)
and PTRACE_MODE_ATTACH_REALCREDS for the memory copies (mm/process_vm_access.c
mm_access), checked with the instance's credentials (creds.may_ptrace_read):
on the host every pico process is the same user. The provider's loop is
busy with the call meanwhile, so no target can be reaped and its host pid
reused before the host call is made.
"""

from __future__ import annotations

import ctypes
import errno
from typing import TYPE_CHECKING

from lxsub.abi.kcmp import KCMP_EPOLL_TFD, KCMP_TYPES
from lxsub.abi.sysno import SYS_KCMP
from lxsub.kernel.call import Call
from lxsub.kernel.task import active_pid_ns
from lxsub.platform import libc, memory

if TYPE_CHECKING:
    from lxsub.kernel.task import Task


def _task(c: Call, vtid: int) -> "Task":
    """find_task_by_vpid: any thread of the instance; ESRCH otherwise."""
    task = c.inst.pids.task_in(active_pid_ns(c.task), vtid) if vtid > 0 else None
    if task is None:
        raise OSError(errno.ESRCH, "no such process")
    return task


def _may_access(c: Call, target: "Task") -> bool:
    """ptrace_may_access with REALCREDS: the caller's own thread group
    always; another process by the ids, dumpability and capability rule."""
    if target.process is c.task.process:
        return True
    return c.task.creds.may_ptrace_read(target.creds, bool(target.process.dumpable),
                                        realcreds=True)


def sys_kcmp(c: Call) -> int:
    """kcmp(2): both tasks found (ESRCH), both readable (EPERM), then the
    host compares the same kernel objects by their host ids. The slot of
    KCMP_EPOLL_TFD is read from the caller's memory and handed over."""
    t1, t2 = _task(c, c.int(0)), _task(c, c.int(1))
    kind = c.int(2)
    if not (_may_access(c, t1) and _may_access(c, t2)):
        raise OSError(errno.EPERM, "not permitted")
    if not 0 <= kind < KCMP_TYPES:
        raise OSError(errno.EINVAL, "bad type")
    idx1, idx2 = c.args[3], c.args[4]
    if kind == KCMP_EPOLL_TFD:
        # struct kcmp_epoll_slot { __u32 efd, tfd; __u64 toff; }
        slot = ctypes.create_string_buffer(c.read(idx2, 16), 16)
        return libc.syscall(SYS_KCMP, t1.host_tid, t2.host_tid, kind, idx1,
                            ctypes.addressof(slot))
    return libc.syscall(SYS_KCMP, t1.host_tid, t2.host_tid, kind, idx1, idx2)


def _process_vm(c: Call, to_target: bool) -> int:
    """process_vm_readv/writev (mm/process_vm_access.c process_vm_rw):
    flags (EINVAL), the local iovecs (EINVAL, EFAULT; nothing to copy is
    0 at once), the remote ones, then the target (ESRCH) and ptrace's
    attach rule (EPERM)."""
    lvec, lcnt, rvec, rcnt, flags = c.ptr(1), c.args[2], c.ptr(3), c.args[4], c.args[5]
    if flags:
        raise OSError(errno.EINVAL, "flags must be 0")
    local = memory.read_iovecs(c.pid, lvec, lcnt)
    if not sum(n for _, n in local):
        return 0
    remote = memory.read_iovecs(c.pid, rvec, rcnt)
    target = _task(c, c.int(0))
    if not _may_access(c, target):
        raise OSError(errno.EPERM, "not permitted")
    if to_target:
        return memory.copy_between(c.pid, local, target.host_tid, remote)
    return memory.copy_between(target.host_tid, remote, c.pid, local)


def sys_process_vm_readv(c: Call) -> int:
    return _process_vm(c, to_target=False)


def sys_process_vm_writev(c: Call) -> int:
    return _process_vm(c, to_target=True)
