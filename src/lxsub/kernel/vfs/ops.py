"""Namespace and attribute operations with Linux permission rules.

Syscall handlers decode arguments and call these; these check what Linux
checks (directory write/search, sticky bit, ownership, capabilities) against
the Linux view and then ask the file system to do it.
"""

from __future__ import annotations

import errno
import stat as st
from typing import TYPE_CHECKING

from lxsub.abi.fcntl import RENAME_EXCHANGE, RENAME_NOREPLACE, RENAME_WHITEOUT, UTIME_NOW, UTIME_OMIT
from lxsub.kernel import creds as caps
from lxsub.kernel.fs import linuxmeta
from lxsub.kernel.vfs import lookup, perm
from lxsub.kernel.vfs.mount import want_write
from lxsub.kernel.vfs.node import Node

if TYPE_CHECKING:
    from lxsub.kernel.vfs.vfs import Vfs
    from lxsub.kernel.vfs.caller import Caller


def _e(code: int) -> OSError:
    import os
    return OSError(code, os.strerror(code))


def _door(caller: "Caller", node: Node) -> None:
    """A program changing a file of a file system behind a host door
    (DrvFs) must hold the door, however it reached the file (a descriptor
    another user passed it): kernel/doors.py. The provider's own work
    (a Caller that is no Task) needs none."""
    door = node.fs.door
    if door is not None and caller.task is not None:
        door.check(caller.creds)


def _may_modify_dir(caller: "Caller", d: Node) -> None:
    if perm.needs_checks(caller.creds):
        a = d.fs.getattr(d, caller)
        perm.check(caller.creds, a.mode, a.uid, a.gid, perm.MAY_WRITE | perm.MAY_EXEC)


def _sticky_allows(caller: "Caller", d: Node, victim: Node) -> None:
    if caller.creds.capable(caps.CAP_FOWNER):
        return
    da = d.fs.getattr(d, caller)
    if da.mode & st.S_ISVTX:
        va = victim.fs.getattr(victim, caller)
        if caller.creds.fsuid not in (va.uid, da.uid):
            raise _e(errno.EPERM)


def _entry(vfs, caller, parent: Node, name: bytes) -> Node:
    return lookup.walker(vfs, caller).resolve(parent, name, follow=False)


def want_create(vfs: "Vfs", caller: "Caller", parent: Node, name: bytes) -> None:
    """filename_create(): an existing name is EEXIST before a read-only
    mount (or pseudo file system, whose own create answers EROFS) refuses,
    and that before the directory's permission."""
    read_only_mount = parent.mount is not None and parent.mount.read_only
    if not read_only_mount and not parent.fs.read_only:
        return
    try:
        _entry(vfs, caller, parent, name).release()
    except FileNotFoundError:
        want_write(parent)
        return
    raise _e(errno.EEXIST)


def _sticky_allows_target(vfs: "Vfs", caller: "Caller", d: Node, name: bytes) -> None:
    """rename(2) over an existing entry deletes it too: vfs_rename() calls
    may_delete() on the target, so a sticky directory protects it (EPERM)."""
    if caller.creds.capable(caps.CAP_FOWNER) or not d.fs.getattr(d, caller).mode & st.S_ISVTX:
        return
    try:
        target = _entry(vfs, caller, d, name)
    except FileNotFoundError:
        return
    try:
        _sticky_allows(caller, d, target)
    finally:
        target.release()


def mkdir(vfs: "Vfs", caller: "Caller", dirfd: int, path: bytes, mode: int) -> None:
    parent, name = lookup.resolve_parent_at(vfs, caller, dirfd, path)
    try:
        if name in (b".", b".."):
            raise _e(errno.EEXIST)
        want_create(vfs, caller, parent, name)
        _may_modify_dir(caller, parent)
        parent.fs.mkdir(parent, name, mode & 0o7777 & ~caller.fs.umask, caller.creds)
    finally:
        parent.release()


def mknod(vfs: "Vfs", caller: "Caller", dirfd: int, path: bytes, mode: int, rdev: int) -> None:
    kind = st.S_IFMT(mode)
    if kind in (st.S_IFCHR, st.S_IFBLK) and not caller.creds.capable(caps.CAP_MKNOD):
        raise _e(errno.EPERM)
    if kind == st.S_IFDIR or kind not in (0, st.S_IFREG, st.S_IFCHR, st.S_IFBLK, st.S_IFIFO, st.S_IFSOCK):
        raise _e(errno.EINVAL)
    parent, name = lookup.resolve_parent_at(vfs, caller, dirfd, path)
    try:
        if name in (b".", b".."):
            raise _e(errno.EEXIST)
        want_create(vfs, caller, parent, name)
        _may_modify_dir(caller, parent)
        mode = (kind or st.S_IFREG) | (mode & 0o7777 & ~caller.fs.umask)
        parent.fs.mknod(parent, name, mode, rdev, caller.creds)
    finally:
        parent.release()


def unlink(vfs: "Vfs", caller: "Caller", dirfd: int, path: bytes, rmdir: bool) -> None:
    parent, name = lookup.resolve_parent_at(vfs, caller, dirfd, path)
    try:
        if name == b".":
            raise _e(errno.EINVAL if rmdir else errno.EISDIR)
        if name == b"..":
            raise _e(errno.ENOTEMPTY if rmdir else errno.EISDIR)
        want_write(parent)          # do_unlinkat/do_rmdir: before the last name's lookup
        victim = _entry(vfs, caller, parent, name)
        try:
            if vfs.mounts_of(caller).mounted_on(victim) or victim.key == victim.mount.root_key():
                raise _e(errno.EBUSY)
            _may_modify_dir(caller, parent)
            _sticky_allows(caller, parent, victim)
            if rmdir:
                if not victim.is_dir():
                    raise _e(errno.ENOTDIR)
                _door(caller, parent)
                parent.fs.rmdir(parent, name)
            else:
                if victim.is_dir():
                    raise _e(errno.EISDIR)
                if path.endswith(b"/"):
                    raise _e(errno.ENOTDIR)
                _door(caller, parent)
                parent.fs.unlink(parent, name)
        finally:
            victim.release()
    finally:
        parent.release()


def symlink(vfs: "Vfs", caller: "Caller", target: bytes, dirfd: int, path: bytes) -> None:
    if not target:
        raise _e(errno.ENOENT)
    parent, name = lookup.resolve_parent_at(vfs, caller, dirfd, path)
    try:
        if name in (b".", b".."):
            raise _e(errno.EEXIST)
        want_create(vfs, caller, parent, name)
        _may_modify_dir(caller, parent)
        parent.fs.symlink(parent, name, target, caller.creds)
    finally:
        parent.release()


def link(vfs: "Vfs", caller: "Caller", olddirfd: int, old: bytes, newdirfd: int, new: bytes,
         flags: int) -> None:
    src = lookup.resolve_at(vfs, caller, olddirfd, old, flags, follow_default=False)
    try:
        if src.is_dir():
            raise _e(errno.EPERM)
        parent, name = lookup.resolve_parent_at(vfs, caller, newdirfd, new)
        try:
            if name in (b".", b".."):
                raise _e(errno.EEXIST)
            want_create(vfs, caller, parent, name)
            if parent.mount is not src.mount:
                raise _e(errno.EXDEV)
            _may_modify_dir(caller, parent)
            _door(caller, parent)
            parent.fs.link(src, parent, name)
        finally:
            parent.release()
    finally:
        src.release()


def rename(vfs: "Vfs", caller: "Caller", olddirfd: int, old: bytes, newdirfd: int, new: bytes,
           flags: int) -> None:
    if flags & ~7 or (flags & RENAME_EXCHANGE and flags & (RENAME_NOREPLACE | RENAME_WHITEOUT)):
        raise _e(errno.EINVAL)
    if flags & RENAME_WHITEOUT:
        raise _e(errno.EPERM)
    op, oname = lookup.resolve_parent_at(vfs, caller, olddirfd, old)
    try:
        np, nname = lookup.resolve_parent_at(vfs, caller, newdirfd, new)
        try:
            if b"." in (oname, nname) or b".." in (oname, nname):
                raise _e(errno.EBUSY if oname in (b".", b"..") else errno.EINVAL)
            if op.mount is not np.mount:
                raise _e(errno.EXDEV)
            want_write(op)
            victim = _entry(vfs, caller, op, oname)
            try:
                if vfs.mounts_of(caller).mounted_on(victim):
                    raise _e(errno.EBUSY)
                _may_modify_dir(caller, op)
                _may_modify_dir(caller, np)
                _sticky_allows(caller, op, victim)
            finally:
                victim.release()
            _sticky_allows_target(vfs, caller, np, nname)
            _door(caller, op)
            op.fs.rename(op, oname, np, nname, flags)
        finally:
            np.release()
    finally:
        op.release()


def chmod(caller: "Caller", node: Node, mode: int) -> None:
    want_write(node)                # chmod_common
    a = node.fs.getattr(node, caller)
    if caller.creds.fsuid != a.uid and not caller.creds.capable(caps.CAP_FOWNER):
        raise _e(errno.EPERM)
    _door(caller, node)
    node.fs.chmod(node, linuxmeta.chmod_mode(mode, a.gid, caller.creds), caller)


def chown(caller: "Caller", node: Node, uid: int, gid: int) -> None:
    want_write(node)                # do_fchownat, vfs_fchown
    a = node.fs.getattr(node, caller)
    c = caller.creds
    if not c.capable(caps.CAP_CHOWN):
        if uid != -1 and uid != a.uid:
            raise _e(errno.EPERM)
        if gid != -1 and (c.fsuid != a.uid or not c.in_group(gid)) and gid != a.gid:
            raise _e(errno.EPERM)
    if uid == -1 and gid == -1:
        return
    _door(caller, node)
    node.fs.chown(node, uid, gid, caller)
    keep = linuxmeta.chown_mode(a.mode)
    if keep != a.mode and not node.fs.chown_clears_set_id:
        node.fs.chmod(node, keep & 0o7777, caller)


def utimens(caller: "Caller", node: Node, atime: tuple[int, int], mtime: tuple[int, int]) -> None:
    want_write(node)                # vfs_utimes
    a = node.fs.getattr(node, caller)
    c = caller.creds
    owner = c.fsuid == a.uid or c.capable(caps.CAP_FOWNER)
    both_now = atime[1] == UTIME_NOW and mtime[1] == UTIME_NOW
    if not owner:
        if not both_now:
            raise _e(errno.EPERM)
        perm.check(c, a.mode, a.uid, a.gid, perm.MAY_WRITE)
    if atime[1] == UTIME_OMIT and mtime[1] == UTIME_OMIT:
        return
    _door(caller, node)
    node.fs.utimens(node, atime, mtime)
