"""<sys/inotify.h>: inotify_init1, which counts instances, and
inotify_add_watch, the one inotify call that names a path.

inotify_init1 makes the host's inotify instance in the provider, where it
is counted against the caller's user (fs.inotify.max_user_instances);
inotify_rm_watch and reading events run natively on it. Adding a watch needs the path resolved inside the
instance: the provider walks it as any path, then adds the watch on that very
host inode through a duplicate of the caller's inotify descriptor
(pidfd_getfd; a duplicate shares the inotify group, so the watch descriptor
and the events are the caller's). Events name entries relative to the
watched directory, and a host name is the Linux name, so they reach the
program untranslated.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

from lxsub.abi.fcntl import AT_FDCWD, O_PATH
from lxsub.abi.inotify import (ALL_INOTIFY_BITS, IN_CLOEXEC, IN_DONT_FOLLOW, IN_MASK_ADD, IN_MASK_CREATE,
                               IN_NONBLOCK, IN_ONLYDIR)
from lxsub.abi.sysno import NUMBERS
from lxsub.kernel.call import Call, NewFd
from lxsub.kernel.sysctl import sysctls_of
from lxsub.kernel.vfs import lookup, perm
from lxsub.platform import libc
from lxsub.platform.livefiles import LiveFiles

if TYPE_CHECKING:
    from lxsub.kernel.vfs.caller import Caller
    from lxsub.kernel.vfs.node import Node


def sys_inotify_add_watch(c: Call) -> int:
    """inotify_add_watch(2), in fs/notify/inotify/inotify_user.c's order:
    the mask (EINVAL), the descriptor (EBADF, EINVAL unless inotify), the
    path (IN_DONT_FOLLOW, IN_ONLYDIR: ENOTDIR), read permission (EACCES)."""
    fd, mask = c.int(0), c.uint(2)
    if not mask & ALL_INOTIFY_BITS or (mask & IN_MASK_ADD and mask & IN_MASK_CREATE):
        raise OSError(errno.EINVAL, "invalid inotify mask")
    group = lookup.copy_fd(c.task, fd)
    try:
        if os.readlink(f"/proc/self/fd/{group}") != "anon_inode:inotify":
            raise OSError(errno.EINVAL, "not an inotify descriptor")
        node = watched_node(c, AT_FDCWD, c.path(1), follow=not mask & IN_DONT_FOLLOW,
                            only_dir=bool(mask & IN_ONLYDIR))
        try:
            return _watch_host_object(group, node, mask, c.task)
        finally:
            node.release()
    finally:
        os.close(group)


def watched_node(c: Call, dirfd: int, path: bytes, follow: bool, only_dir: bool) -> "Node":
    """The object an inotify watch or a fanotify mark is put on
    (inotify_find_inode, fanotify_find_path): the path walked from dirfd,
    ENOTDIR when only a directory is wanted, and "you can only watch an
    inode if you have read permissions on it" (the Linux owner and mode,
    not the host's). The caller releases the node."""
    node = lookup.resolve_at(c.inst.vfs, c.task, dirfd, path, 0, follow_default=follow)
    try:
        if only_dir and not node.is_dir():
            raise OSError(errno.ENOTDIR, "not a directory")
        a = node.fs.getattr(node, c.task)
        perm.check(c.task.creds, a.mode, a.uid, a.gid, perm.MAY_READ)
    except BaseException:
        node.release()
        raise
    return node


def _watch_host_object(group: int, node: "Node", mask: int, caller: "Caller") -> int:
    """The watch on the host object behind the node: its O_PATH descriptor,
    or what a pseudo file is opened as (a memfd, a scratch directory: Linux
    lets /proc files be watched, and nothing writes them, so no events).
    The path given to the host is our descriptor's magic link, which the
    host follows to that very inode, a symlink included, so IN_DONT_FOLLOW
    has done its work in our walk and is dropped."""
    own = node.fd if node.fd is not None else node.fs.open(node, O_PATH, caller)
    try:
        return libc.inotify_add_watch(group, f"/proc/self/fd/{own}".encode(), mask & ~IN_DONT_FOLLOW)
    finally:
        if own != node.fd:
            os.close(own)


_SYS_INOTIFY_INIT1 = NUMBERS["inotify_init1"]


def sys_inotify_init1(c: Call) -> NewFd:
    """inotify_init(2) and inotify_init1(2) (fs/notify/inotify/
    inotify_user.c do_inotify_init): unknown flags EINVAL; then the new
    group is charged to the caller's effective user, EMFILE when that user
    already has fs.inotify.max_user_instances of them (inc_ucount: no
    capability lifts it). An instance stops counting when its last
    descriptor closes, in whichever process that is."""
    flags = c.int(0) if c.nr == _SYS_INOTIFY_INIT1 else 0
    if flags & ~(IN_CLOEXEC | IN_NONBLOCK):
        raise OSError(errno.EINVAL, "unknown inotify_init1 flags")
    groups = _groups_of(c.inst)
    user = c.task.creds.euid
    with groups.lock:
        if groups.count(user) >= sysctls_of(c.inst).value("fs/inotify/max_user_instances"):
            raise OSError(errno.EMFILE, "too many inotify instances")
        fd = libc.inotify_init1(IN_CLOEXEC | flags & IN_NONBLOCK)
        groups.add(fd, user)
    return NewFd(fd, bool(flags & IN_CLOEXEC))


def _groups_of(inst) -> LiveFiles:
    """The instance's inotify instances, by the user charged for each."""
    found = getattr(inst, "inotify_groups", None)
    if found is None:
        found = inst.inotify_groups = LiveFiles()
    return found
