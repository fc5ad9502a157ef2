"""Path arguments of syscalls: from (dirfd, path, AT_* flags) to Nodes.

A dirfd is a real descriptor in the pico process; the provider copies it
(pidfd_getfd) to start the walk from the very directory the program holds.
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import TYPE_CHECKING

from lxsub.abi.fcntl import AT_EMPTY_PATH, AT_FDCWD, AT_SYMLINK_FOLLOW, AT_SYMLINK_NOFOLLOW, O_PATH
from lxsub.kernel.vfs.node import Node
from lxsub.kernel.vfs.path import Walker
from lxsub.platform import libc

if TYPE_CHECKING:
    from lxsub.kernel.instance import Instance
    from lxsub.kernel.task import Task


def walker(inst: "Instance", task: "Task") -> Walker:
    return Walker(inst.mounts, task.fs.root, task.creds)


def copy_fd(task: "Task", fd: int) -> int:
    """A provider-side duplicate of the caller's descriptor `fd` (EBADF if none)."""
    if fd < 0:
        raise OSError(errno.EBADF, "bad file descriptor")
    pidfd = task.process.pidfd()
    try:
        return libc.pidfd_getfd(pidfd, fd)
    except OSError as e:
        if e.errno == errno.ESRCH:
            raise
        raise OSError(errno.EBADF, "bad file descriptor") from None


def node_of_fd(inst: "Instance", task: "Task", fd: int) -> Node:
    """The file the caller's descriptor refers to, as a Node (caller owns it)."""
    return inst.node_of_host_fd(copy_fd(task, fd))     # owns the copy, or closes it


def node_of_open_fd(inst: "Instance", task: "Task", fd: int) -> Node:
    """node_of_fd for the calls that take a file opened for I/O (Linux's
    fdget, not fdget_raw: fchmod, fchown, the f*xattr calls): an O_PATH
    descriptor is EBADF there (open(2), O_PATH)."""
    copy = copy_fd(task, fd)
    try:
        is_path = fcntl.fcntl(copy, fcntl.F_GETFL) & O_PATH
    except OSError:
        is_path = 0
    if is_path:
        os.close(copy)
        raise OSError(errno.EBADF, "an O_PATH descriptor")
    return inst.node_of_host_fd(copy)


def start_node(inst: "Instance", task: "Task", dirfd: int, path: bytes) -> Node:
    """Where a relative walk starts: cwd for AT_FDCWD, else the dirfd's file."""
    if path.startswith(b"/"):
        return task.fs.root.dup()
    if dirfd == AT_FDCWD:
        return task.fs.cwd.dup()
    node = node_of_fd(inst, task, dirfd)
    if path and not node.is_dir():
        node.release()
        raise OSError(errno.ENOTDIR, "not a directory")
    return node


def resolve_at(inst: "Instance", task: "Task", dirfd: int, path: bytes, flags: int = 0,
               follow_default: bool = True) -> Node:
    """The file named by a (dirfd, path, flags) triple, honouring AT_EMPTY_PATH
    and AT_SYMLINK_NOFOLLOW/FOLLOW."""
    if not path:
        if flags & AT_EMPTY_PATH:
            if dirfd == AT_FDCWD:
                return task.fs.cwd.dup()
            return node_of_fd(inst, task, dirfd)
        raise OSError(errno.ENOENT, "empty path")
    follow = follow_default
    if flags & AT_SYMLINK_NOFOLLOW:
        follow = False
    if flags & AT_SYMLINK_FOLLOW:
        follow = True
    if path[:1] == b"/":      # the walk starts from the caller's root itself
        return walker(inst, task).resolve(task.fs.root, path, follow)
    start = start_node(inst, task, dirfd, path)
    try:
        return walker(inst, task).resolve(start, path, follow)
    finally:
        start.release()


def resolve_parent_at(inst: "Instance", task: "Task", dirfd: int, path: bytes) -> tuple[Node, bytes]:
    start = start_node(inst, task, dirfd, path)
    try:
        return walker(inst, task).resolve_parent(start, path)
    finally:
        start.release()
