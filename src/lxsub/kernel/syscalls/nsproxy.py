"""unshare(2) (kernel/fork.c ksys_unshare, kernel/nsproxy.c) and setns(2).

What unshare does to the caller's own host resources (a private descriptor
table with CLONE_FILES, SysV semaphore undo list with CLONE_SYSVSEM, a
single-threaded check with CLONE_THREAD/SIGHAND/VM) runs natively: those
are no namespaces and need no privilege. CLONE_FS also gives the task its
own root, working directory and umask here (task.FsContext), as Linux's
unshare_fs does. New UTS, IPC and PID namespaces are the provider's
(kernel/task.py uts_of, ipc_of, PidNamespace): the host runs the call
without their flags. Other new namespaces are refused with EPERM, as Linux does for a
caller without CAP_SYS_ADMIN and a container's runtime does for root.
"""

from __future__ import annotations

import errno
import os

from lxsub.abi.sched import (CLONE_FILES, CLONE_FS, CLONE_NEWCGROUP, CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS,
                              CLONE_NEWPID, CLONE_NEWTIME, CLONE_NEWUSER, CLONE_NEWUTS, CLONE_PARENT, CLONE_SIGHAND,
                              CLONE_SYSVSEM, CLONE_THREAD, CLONE_VM)
from lxsub.kernel.call import Call, Native
from lxsub.kernel.sysctl import sysctls_of
from lxsub.kernel.task import PidNamespace, active_pid_ns, children_pid_ns, ipc_of, ns_within, uts_of
from lxsub.platform import libc

NAMESPACES = (CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWCGROUP
              | CLONE_NEWTIME | CLONE_NEWUSER)
_UNSHAREABLE = CLONE_THREAD | CLONE_FS | CLONE_SIGHAND | CLONE_VM | CLONE_FILES | CLONE_SYSVSEM | NAMESPACES
# The namespaces the provider keeps for the instance's processes.
EMULATED = CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID
# include/linux/pid_namespace.h: PID namespaces nest 32 deep (the
# instance's is level 0 here as on a host).
MAX_PID_NS_LEVEL = 32


def _implied(flags: int) -> int:
    """ksys_unshare: a new user namespace implies CLONE_THREAD|CLONE_FS, a
    VM CLONE_SIGHAND, handlers CLONE_THREAD, a mount namespace CLONE_FS,
    an IPC namespace CLONE_SYSVSEM (the old namespace's semaphore undo
    list is left behind: exit_sem)."""
    if flags & CLONE_NEWIPC:
        flags |= CLONE_SYSVSEM
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
        _check_new_namespaces(c, flags)
    if flags & CLONE_FILES:
        _check_table_copy_fits(c)
    task = c.task
    if flags & CLONE_NEWPID:
        _check_new_pid_ns(task)
    if flags & EMULATED:
        # The host unshares the rest (CLONE_SYSVSEM: exit_sem, as Linux).
        c.set_arg(0, (c.args[0] | (flags & CLONE_SYSVSEM)) & ~EMULATED)

    def done(result: int) -> None:
        if result != 0:
            return
        # unshare_fs: a context shared with other tasks is copied for this one.
        if flags & CLONE_FS and task.fs.users > 1:
            old, task.fs = task.fs, task.fs.copy().attach()
            old.detach()
        if flags & CLONE_NEWUTS:
            task.uts = uts_of(c.inst, task).copy()
        if flags & CLONE_NEWIPC:
            c.inst.enter_ipc(task, c.inst.new_ipc())
        if flags & CLONE_NEWPID:
            # Its children go into a new namespace; it stays where it is.
            task.child_pid_ns = PidNamespace(children_pid_ns(task))
    return Native(done)


def _check_new_pid_ns(task) -> None:
    """copy_pid_ns: a task whose children already go to a namespace it
    is not in cannot make another (EINVAL); 32 levels at most (ENOSPC)."""
    where = children_pid_ns(task)
    if where is not active_pid_ns(task):
        raise OSError(errno.EINVAL, "pid_for_children is not the caller's namespace")
    if where is not None and where.level >= MAX_PID_NS_LEVEL:
        raise OSError(errno.ENOSPC, "too many nested PID namespaces")


def _check_table_copy_fits(c: Call) -> None:
    """unshare_fd: a descriptor table shared with another task is copied
    (dup_fd), and the copy must hold every descriptor up to the highest
    open one, counted in whole words of 64, within fs.nr_open rounded down
    to a word (alloc_fdtable), else EMFILE. The host's own nr_open still
    applies when the call runs."""
    nr_open = sysctls_of(c.inst).value("fs/nr_open")
    tid = c.task.host_tid
    try:
        highest = max((int(n) for n in os.listdir(f"/proc/{tid}/fd")), default=-1)
    except OSError:
        return
    words = (highest + 1 + 63) // 64
    if words * 64 <= nr_open // 64 * 64:
        return
    if any(other != tid and libc.same_fd_table(tid, other) for other in list(c.inst.pids.tasks_by_host)):
        raise OSError(errno.EMFILE, "the descriptor table's copy would exceed fs.nr_open")


def _check_new_namespaces(c: Call, flags: int) -> None:
    """unshare_nsproxy_namespaces / copy_namespaces: CAP_SYS_ADMIN, else
    EPERM. UTS and IPC namespaces are the provider's to keep; the others
    are refused as a container's runtime does."""
    from lxsub.kernel import creds as caps
    if not c.task.creds.capable(caps.CAP_SYS_ADMIN) or flags & NAMESPACES & ~EMULATED:
        raise OSError(errno.EPERM, "new namespaces are not permitted")


def sys_clone_new_ns(c: Call) -> Native:
    """clone(2) with CLONE_NEWUTS, CLONE_NEWIPC or CLONE_NEWPID (and no
    other namespace: the filter refuses those): the host clones without
    them and the child gets new ones (Instance._new_task). CLONE_SYSVSEM
    shares the undo list of semaphores the new namespace cannot reach:
    EINVAL (copy_namespaces); a thread cannot be in another PID namespace
    than its group, nor a sibling of a namespace's init (copy_process)."""
    flags = c.uint(0)
    task = c.task
    if flags & CLONE_NEWPID and flags & (CLONE_THREAD | CLONE_PARENT):
        raise OSError(errno.EINVAL, "CLONE_NEWPID with CLONE_THREAD or CLONE_PARENT")
    if flags & CLONE_THREAD and children_pid_ns(task) is not active_pid_ns(task):
        raise OSError(errno.EINVAL, "a thread in another PID namespace")
    _check_new_namespaces(c, flags)
    if flags & CLONE_NEWPID:
        _check_new_pid_ns(task)
    where = children_pid_ns(task)
    if where is not None and not where.open_to_new():
        raise OSError(errno.ENOMEM, "the PID namespace's init has exited")     # alloc_pid
    if flags & CLONE_NEWIPC and flags & CLONE_SYSVSEM:
        raise OSError(errno.EINVAL, "CLONE_NEWIPC with CLONE_SYSVSEM")
    c.set_arg(0, c.args[0] & ~EMULATED)
    task.clone_new_ns = flags & EMULATED

    def done(result: int) -> None:
        task.clone_new_ns = 0      # consumed by the child, or the clone failed
    return Native(done)


# -- setns(2): into the namespaces the instance has ---------------------------

_SETNS_PIDFD_FLAGS = NAMESPACES


def sys_setns(c: Call) -> int:
    """setns(2) (kernel/nsproxy.c): a namespace file of /proc/<pid>/ns (its
    type must be `nstype` when that is given) or a pidfd of an instance
    process with namespace flags; anything else EINVAL, no descriptor
    EBADF. The UTS and IPC namespaces joined are the file's or the
    process's; of the other types the instance has one, so joining one is
    joining the caller's own: only each type's install checks apply
    (CAP_SYS_ADMIN, EPERM; re-entering one's own user namespace EINVAL),
    and joining the mount namespace moves root and cwd to its root, as
    mntns_install does."""
    from lxsub.kernel.fs.procfs.ns import namespace_of_fd
    from lxsub.kernel.syscalls.signal import pidfd_host_pid, process_of_pidfd
    from lxsub.kernel.vfs import lookup
    nstype = c.int(1)
    local = lookup.copy_fd(c.task, c.int(0))        # EBADF
    try:
        ns = namespace_of_fd(c.inst, local)
        if ns is not None:
            if nstype and ns.kind != nstype:
                raise OSError(errno.EINVAL, "not a namespace of that type")
            kinds, joined = ns.kind, {ns.kind: ns.obj}
        elif pidfd_host_pid(local) is not None:
            target = process_of_pidfd(c, local, errno.EINVAL)
            if not nstype or nstype & ~_SETNS_PIDFD_FLAGS:
                raise OSError(errno.EINVAL, "bad namespace flags")
            owner = next(iter(target.threads.values()), None)
            kinds = nstype
            joined = {CLONE_NEWUTS: uts_of(c.inst, owner), CLONE_NEWIPC: ipc_of(c.inst, owner),
                      CLONE_NEWPID: target.pid_ns}
        else:
            raise OSError(errno.EINVAL, "not a namespace file or pidfd")
    finally:
        os.close(local)
    _install(c, kinds)
    if kinds & CLONE_NEWUTS and joined.get(CLONE_NEWUTS) is not None:
        uts = joined[CLONE_NEWUTS]          # its names from now on
        c.task.uts = uts if uts is not c.inst.uts else None
    if kinds & CLONE_NEWIPC and joined.get(CLONE_NEWIPC) is not None:
        c.inst.enter_ipc(c.task, joined[CLONE_NEWIPC])
    if kinds & CLONE_NEWPID:
        _join_pid_ns(c.task, joined.get(CLONE_NEWPID))
    return 0


def _join_pid_ns(task, ns) -> None:
    """pidns_install: the caller's children go to ns (None: the
    instance's), which must be its own namespace or one below it (EINVAL)."""
    active = active_pid_ns(task)
    if not ns_within(ns, active):
        raise OSError(errno.EINVAL, "not the caller's PID namespace or below it")
    task.child_pid_ns = ns if ns is not active else None


def _install(c: Call, kinds: int) -> None:
    """The install checks of each namespace type joined, as validate_nsset
    runs them (user, then the others), then the mount namespace's effect."""
    from lxsub.kernel import creds as caps
    cr = c.task.creds
    if kinds & CLONE_NEWUSER:
        raise OSError(errno.EINVAL, "already in that user namespace")     # userns_install
    if kinds & CLONE_NEWTIME and len(c.task.process.threads) > 1:
        raise OSError(errno.EUSERS, "not single-threaded")                # timens_install
    if not cr.capable(caps.CAP_SYS_ADMIN):
        raise OSError(errno.EPERM, "CAP_SYS_ADMIN needed")
    if kinds & CLONE_NEWNS:
        if not cr.capable(caps.CAP_SYS_CHROOT):
            raise OSError(errno.EPERM, "CAP_SYS_CHROOT needed")
        if c.task.fs.users != 1:
            raise OSError(errno.EINVAL, "the fs context is shared")
        root = c.inst.vfs.mounts.root_mount.root()
        c.task.fs.set_cwd(root.dup())
        c.task.fs.set_root(root)
