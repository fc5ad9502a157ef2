"""<sys/inotify.h>: inotify_add_watch, the one inotify call that names a path.

inotify_init1, inotify_rm_watch and reading events run natively on the
host's inotify instance. Adding a watch needs the path resolved inside the
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
from lxsub.abi.inotify import ALL_INOTIFY_BITS, IN_DONT_FOLLOW, IN_MASK_ADD, IN_MASK_CREATE, IN_ONLYDIR
from lxsub.kernel.call import Call
from lxsub.kernel.vfs import lookup, perm
from lxsub.platform import libc

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
        node = lookup.resolve_at(c.inst.vfs, c.task, AT_FDCWD, c.path(1), 0,
                                 follow_default=not mask & IN_DONT_FOLLOW)
        try:
            if mask & IN_ONLYDIR and not node.is_dir():
                raise OSError(errno.ENOTDIR, "not a directory")
            # inotify_find_inode: "you can only watch an inode if you have
            # read permissions on it" (the Linux owner and mode, not the host's).
            a = node.fs.getattr(node, c.task)
            perm.check(c.task.creds, a.mode, a.uid, a.gid, perm.MAY_READ)
            return _watch_host_object(group, node, mask, c.task)
        finally:
            node.release()
    finally:
        os.close(group)


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
