"""unshare(2) (kernel/fork.c ksys_unshare, kernel/nsproxy.c).

What unshare does to the caller's own host resources (a private descriptor
table with CLONE_FILES, SysV semaphore undo list with CLONE_SYSVSEM, a
single-threaded check with CLONE_THREAD/SIGHAND/VM) runs natively: those
are no namespaces and need no privilege. CLONE_FS also gives the task its
own root, working directory and umask here (task.FsContext), as Linux's
unshare_fs does. New namespaces are refused with EPERM, as Linux does for a
caller without CAP_SYS_ADMIN and a container's runtime does for root.
"""

from __future__ import annotations

import errno

from lxsub.abi.sched import (CLONE_FILES, CLONE_FS, CLONE_NEWCGROUP, CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS,
                              CLONE_NEWPID, CLONE_NEWTIME, CLONE_NEWUSER, CLONE_NEWUTS, CLONE_SIGHAND, CLONE_SYSVSEM,
                              CLONE_THREAD, CLONE_VM)
from lxsub.kernel.call import Call, Native

NAMESPACES = (CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWCGROUP
              | CLONE_NEWTIME | CLONE_NEWUSER)
_UNSHAREABLE = CLONE_THREAD | CLONE_FS | CLONE_SIGHAND | CLONE_VM | CLONE_FILES | CLONE_SYSVSEM | NAMESPACES


def _implied(flags: int) -> int:
    """ksys_unshare: a new user namespace implies CLONE_THREAD|CLONE_FS, a
    VM CLONE_SIGHAND, handlers CLONE_THREAD, a mount namespace CLONE_FS."""
    if flags & CLONE_NEWUSER:
        flags |= CLONE_THREAD | CLONE_FS
    if flags & CLONE_VM:
        flags |= CLONE_SIGHAND
    if flags & CLONE_SIGHAND:
        flags |= CLONE_THREAD
    if flags & CLONE_NEWNS:
        flags |= CLONE_FS
    return flags


def sys_unshare(c: Call):
    flags = _implied(c.args[0])
    if flags & ~_UNSHAREABLE:
        raise OSError(errno.EINVAL, "unknown unshare flag")    # check_unshare_flags
    if flags & (CLONE_THREAD | CLONE_SIGHAND | CLONE_VM) and len(c.task.process.threads) > 1:
        raise OSError(errno.EINVAL, "not single-threaded")
    if flags & NAMESPACES:
        raise OSError(errno.EPERM, "new namespaces are not permitted")
    task = c.task

    def done(result: int) -> None:
        # unshare_fs: a context shared with other tasks is copied for this one.
        if result == 0 and flags & CLONE_FS and task.fs.users > 1:
            old, task.fs = task.fs, task.fs.copy().attach()
            old.detach()
    return Native(done)
