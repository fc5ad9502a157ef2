"""Path arguments of syscalls: from (dirfd, path, AT_* flags) to Nodes.

A dirfd is a real descriptor in the pico process; the provider copies it
(pidfd_getfd) to start the walk from the very directory the program holds.
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import TYPE_CHECKING

from lxsub.abi.fcntl import (AT_EMPTY_PATH, AT_FDCWD, AT_SYMLINK_FOLLOW, AT_SYMLINK_NOFOLLOW, O_PATH, RESOLVE_BENEATH,
                              RESOLVE_IN_ROOT)
from lxsub.kernel.vfs.node import Node
from lxsub.kernel.vfs.path import Walker

if TYPE_CHECKING:
    from lxsub.kernel.vfs.vfs import Vfs
    from lxsub.kernel.vfs.caller import Caller


def walker(vfs: "Vfs", caller: "Caller") -> Walker:
    """A walk in the caller's mount namespace, from its root."""
    return Walker(vfs.mounts_of(caller), caller.fs.root, caller)


def restricted_walk(vfs: "Vfs", caller: "Caller", dirfd: int, path: bytes, resolve: int) -> tuple[Walker, Node]:
    """The walker and the start node (the caller owns it) for openat2's
    RESOLVE_* flags. RESOLVE_BENEATH and RESOLVE_IN_ROOT scope the walk to
    the dirfd's directory (the cwd for AT_FDCWD): it is the walk's root, an
    absolute path included (openat2(2))."""
    if not resolve & (RESOLVE_BENEATH | RESOLVE_IN_ROOT):
        return Walker(vfs.mounts_of(caller), caller.fs.root, caller, resolve), start_node(vfs, caller, dirfd, path)
    scope = caller.fs.cwd.dup() if dirfd == AT_FDCWD else node_of_fd(vfs, caller, dirfd)
    if not scope.is_dir():
        scope.release()
        raise OSError(errno.ENOTDIR, "not a directory")
    return Walker(vfs.mounts_of(caller), scope, caller, resolve), scope


def copy_fd(caller: "Caller", fd: int) -> int:
    """A provider-side duplicate of the caller's descriptor `fd` (EBADF if none)."""
    return caller.copy_fd(fd)


def node_of_fd(vfs: "Vfs", caller: "Caller", fd: int) -> Node:
    """The file the caller's descriptor refers to, as a Node (caller owns it)."""
    return vfs.node_of_host_fd(copy_fd(caller, fd), vfs.mounts_of(caller))   # owns the copy, or closes it


def node_of_open_fd(vfs: "Vfs", caller: "Caller", fd: int, host_objects: bool = False) -> Node:
    """node_of_fd for the calls that take a file opened for I/O (Linux's
    fdget, not fdget_raw: fchmod, fchown, the f*xattr calls): an O_PATH
    descriptor is EBADF there (open(2), O_PATH). With `host_objects`, a
    pipe, socket or anonymous inode is a Node of the anonymous mount
    (whose calls act on the host object itself) instead of ENOTDIR."""
    copy = copy_fd(caller, fd)
    try:
        is_path = fcntl.fcntl(copy, fcntl.F_GETFL) & O_PATH
    except OSError:
        is_path = 0
    if is_path:
        os.close(copy)
        raise OSError(errno.EBADF, "an O_PATH descriptor")
    if host_objects:
        return vfs.node_or_anon(copy, vfs.mounts_of(caller))
    return vfs.node_of_host_fd(copy, vfs.mounts_of(caller))


def start_node(vfs: "Vfs", caller: "Caller", dirfd: int, path: bytes) -> Node:
    """Where a relative walk starts: cwd for AT_FDCWD, else the dirfd's file."""
    if path.startswith(b"/"):
        return caller.fs.root.dup()
    if dirfd == AT_FDCWD:
        return caller.fs.cwd.dup()
    node = node_of_fd(vfs, caller, dirfd)
    if path and not node.is_dir():
        node.release()
        raise OSError(errno.ENOTDIR, "not a directory")
    return node


def resolve_at(vfs: "Vfs", caller: "Caller", dirfd: int, path: bytes, flags: int = 0,
               follow_default: bool = True) -> Node:
    """The file named by a (dirfd, path, flags) triple, honouring AT_EMPTY_PATH
    and AT_SYMLINK_NOFOLLOW/FOLLOW."""
    if not path:
        if flags & AT_EMPTY_PATH:
            if dirfd == AT_FDCWD:
                return caller.fs.cwd.dup()
            return node_of_fd(vfs, caller, dirfd)
        raise OSError(errno.ENOENT, "empty path")
    follow = follow_default
    if flags & AT_SYMLINK_NOFOLLOW:
        follow = False
    if flags & AT_SYMLINK_FOLLOW:
        follow = True
    if path[:1] == b"/":      # the walk starts from the caller's root itself
        return walker(vfs, caller).resolve(caller.fs.root, path, follow)
    start = start_node(vfs, caller, dirfd, path)
    try:
        return walker(vfs, caller).resolve(start, path, follow)
    finally:
        start.release()


def resolve_parent_at(vfs: "Vfs", caller: "Caller", dirfd: int, path: bytes) -> tuple[Node, bytes]:
    start = start_node(vfs, caller, dirfd, path)
    try:
        return walker(vfs, caller).resolve_parent(start, path)
    finally:
        start.release()
