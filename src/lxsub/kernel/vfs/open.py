"""open(2) semantics over the VFS: O_CREAT/O_EXCL/O_NOFOLLOW/O_TMPFILE,
permission checks against the Linux view, devices and FIFOs."""

from __future__ import annotations

import errno
import os
import stat as st
from typing import TYPE_CHECKING

from lxsub.abi.fcntl import (O_CREAT, O_DIRECTORY, O_EXCL, O_NOATIME, O_NOFOLLOW, O_NONBLOCK, O_PATH, O_TMPFILE,
                             O_TRUNC)
from lxsub.kernel import creds as caps
from lxsub.kernel.call import Blocking
from lxsub.kernel.fs import devices
from lxsub.kernel.vfs import created, lookup, perm
from lxsub.kernel.vfs.mount import want_write
from lxsub.kernel.vfs.node import Node

if TYPE_CHECKING:
    from lxsub.kernel.vfs.vfs import Vfs
    from lxsub.kernel.vfs.caller import Caller


def _access_wanted(flags: int) -> int:
    acc = flags & os.O_ACCMODE
    want = {os.O_RDONLY: perm.MAY_READ, os.O_WRONLY: perm.MAY_WRITE}.get(acc, perm.MAY_READ | perm.MAY_WRITE)
    if flags & O_TRUNC:
        want |= perm.MAY_WRITE
    return want


def open_at(vfs: "Vfs", caller: "Caller", dirfd: int, path: bytes, flags: int, mode: int, resolve: int = 0):
    """A provider-side host fd for the file (or a Blocking job for FIFOs)."""
    if resolve:
        return _open_restricted(vfs, caller, dirfd, path, flags, mode, resolve)
    if flags & O_TMPFILE == O_TMPFILE:
        return _open_tmpfile(vfs, caller, dirfd, path, flags, mode)
    if flags & O_CREAT and not flags & O_PATH:
        node, created_fd = _lookup_or_create(vfs, caller, dirfd, path, flags, mode)
        if created_fd is not None:
            return created_fd
    else:
        node = lookup.resolve_at(vfs, caller, dirfd, path, follow_default=not flags & O_NOFOLLOW)
    try:
        return open_node(vfs, caller, node, flags)
    finally:
        node.release()


def _open_restricted(vfs, caller, dirfd, path, flags, mode, resolve: int):
    """openat2(2) with RESOLVE_* flags: the same open, every step of the
    walk under the restrictions (kernel/vfs/path.py)."""
    if not path:
        raise OSError(errno.ENOENT, "empty path")
    w, start = lookup.restricted_walk(vfs, caller, dirfd, path, resolve)
    try:
        if flags & O_TMPFILE == O_TMPFILE:
            d = w.resolve(start, path, True)
            return _tmpfile_in(vfs, caller, d, flags, mode)
        if flags & O_CREAT and not flags & O_PATH:
            parent, name = w.resolve_parent(start, path)
            node, created_fd = _lookup_or_create_in(w, caller, parent, path, name, flags, mode)
            if created_fd is not None:
                return created_fd
        else:
            node = w.resolve(start, path, not flags & O_NOFOLLOW)
    finally:
        start.release()
    try:
        return open_node(vfs, caller, node, flags)
    finally:
        node.release()


def _lookup_or_create(vfs, caller, dirfd, path, flags, mode) -> tuple[Node, int | None]:
    parent, name = lookup.resolve_parent_at(vfs, caller, dirfd, path)
    return _lookup_or_create_in(lookup.walker(vfs, caller), caller, parent, path, name, flags, mode)


def _lookup_or_create_in(w, caller, parent: Node, path: bytes, name: bytes, flags: int,
                         mode: int) -> tuple[Node, int | None]:
    """The last name in `parent` (which this releases), made if missing."""
    try:
        if name in (b".", b".."):
            raise OSError(errno.EISDIR, "is a directory")
        try:
            node = w.resolve(parent, name, follow=not (flags & (O_EXCL | O_NOFOLLOW)))
        except FileNotFoundError:
            node = None
        if node is None:
            if path.endswith(b"/"):
                raise OSError(errno.EISDIR, "is a directory")
            want_write(parent)      # lookup_open: O_CREAT without write access to the mount
            check_may_create(caller, parent)
            umask = caller.fs.umask
            # F_CREATED_QUERY: the description handed over says it made the file.
            return parent, created.mark(parent.fs.create(parent, name, flags, mode & 0o7777 & ~umask,
                                                         caller.creds))
        if flags & O_EXCL:
            node.release()
            raise OSError(errno.EEXIST, "file exists")
        return node, None
    finally:
        # The (parent, fd) pair above is only used for its fd; release parent.
        parent.release()


def check_may_create(caller: "Caller", parent: Node) -> None:
    door = parent.fs.door
    if door is not None:        # DrvFs: a socket bound there is a host file too
        door.check(caller.creds)
    if perm.needs_checks(caller.creds):
        a = parent.fs.getattr(parent, caller)
        perm.check(caller.creds, a.mode, a.uid, a.gid, perm.MAY_WRITE | perm.MAY_EXEC)


def open_node(vfs: "Vfs", caller: "Caller", node: Node, flags: int):
    fs = node.fs
    if flags & O_PATH:
        if flags & O_DIRECTORY and not node.is_dir():
            raise OSError(errno.ENOTDIR, "not a directory")
        return fs.open(node, O_PATH, caller)
    attr = fs.getattr(node, caller)
    mode = attr.mode
    if st.S_ISLNK(mode):
        raise OSError(errno.ELOOP, "is a symlink")
    if flags & O_DIRECTORY and not st.S_ISDIR(mode):
        raise OSError(errno.ENOTDIR, "not a directory")
    if st.S_ISDIR(mode) and (flags & os.O_ACCMODE or flags & O_CREAT):
        raise OSError(errno.EISDIR, "is a directory")
    # sb_permission: writing a file, directory or symlink of a read-only
    # mount is EROFS before the caller's rights are looked at.
    if _access_wanted(flags) & perm.MAY_WRITE and (st.S_ISREG(mode) or st.S_ISDIR(mode)):
        want_write(node)
    if perm.needs_checks(caller.creds):
        perm.check(caller.creds, mode, attr.uid, attr.gid, _access_wanted(flags))
    # may_open: "O_NOATIME can only be set by the owner or superuser"
    # (inode_owner_or_capable; open(2) EPERM). The host owns every file.
    if flags & O_NOATIME and caller.creds.fsuid != attr.uid and not caller.creds.capable(caps.CAP_FOWNER):
        raise OSError(errno.EPERM, "O_NOATIME on a file the caller does not own")
    if st.S_ISREG(mode) and (flags & os.O_ACCMODE or flags & O_TRUNC) and node.host_st is not None:
        vfs.images.check_writable((node.host_st.st_dev, node.host_st.st_ino))
    if (st.S_ISCHR(mode) or st.S_ISBLK(mode)) and vfs.loops.claims(st.S_IFMT(mode), attr.rdev):
        return vfs.loops.open(st.S_IFMT(mode), attr.rdev, flags)
    if st.S_ISCHR(mode) or st.S_ISBLK(mode):
        fd = devices.open_device(st.S_IFMT(mode), attr.rdev, flags,
                                 caller.task.host_pid if caller.task is not None else None)
        if attr.rdev == devices.PTMX_RDEV and st.S_ISCHR(mode):
            vfs.ptys.opened_master(fd, caller.creds.fsuid)
        vfs.opened_devices.opened(fd, attr.rdev, node)
        return fd
    if st.S_ISFIFO(mode) and not flags & O_NONBLOCK:
        return _blocking_fifo_open(fs, node, flags, caller)
    if st.S_ISSOCK(mode):
        raise OSError(errno.ENXIO, "no such device or address")
    return fs.open(node, flags, caller)


def open_regular(node: Node, flags: int, caller: "Caller") -> int:
    """The provider's own open of a file it reads or truncates itself.

    Only a regular file (vfs_truncate's EINVAL for the others), and with
    O_NONBLOCK: a FIFO, a device or a leased file put where a regular file
    was expected must never keep the provider's thread waiting.
    """
    if not st.S_ISREG(node.fs.getattr(node, caller).mode):
        raise OSError(errno.EINVAL, "not a regular file")
    return node.fs.open(node, flags | O_NONBLOCK, caller)


def _blocking_fifo_open(fs, node: Node, flags: int, caller: "Caller") -> Blocking:
    # A FIFO open waits for the other end: do it off the provider's thread.
    own = node.dup()

    def work() -> int:
        try:
            return fs.open(own, flags, caller)
        finally:
            own.release()
    return Blocking(work)


def _open_tmpfile(vfs, caller, dirfd, path, flags, mode) -> int:
    return _tmpfile_in(vfs, caller, lookup.resolve_at(vfs, caller, dirfd, path), flags, mode)


def _tmpfile_in(vfs, caller, d: Node, flags: int, mode: int) -> int:
    """An unnamed file in directory d (which this releases)."""
    try:
        if not d.is_dir():
            raise OSError(errno.ENOTDIR, "not a directory")
        want_write(d)
        check_may_create(caller, d)
        return d.fs.open_tmpfile(d, flags, mode & 0o7777 & ~caller.fs.umask, caller.creds)
    finally:
        d.release()
