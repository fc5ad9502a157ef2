"""<sys/stat.h>, <sys/statfs.h> and friends: the stat family, readlink, access."""

from __future__ import annotations

import errno
import os
import stat as st
import struct

from lxsub.abi.fcntl import (AT_EACCESS, AT_EMPTY_PATH, AT_FDCWD, AT_NO_AUTOMOUNT, AT_STATX_SYNC_TYPE,
                              AT_SYMLINK_NOFOLLOW, UTIME_NOW, UTIME_OMIT)
from lxsub.abi.magic import ANON_INODE_FS_MAGIC, PIPEFS_MAGIC, SOCKFS_MAGIC
from lxsub.abi.stat import STATX_MNT_ID_UNIQUE, STATX__RESERVED
from lxsub.kernel import fanotify
from lxsub.kernel.call import Call
from lxsub.kernel.vfs import fdview, lookup, perm, statmount
from lxsub.kernel.vfs.mount import want_write
from lxsub.kernel.vfs.stat import LinuxStat

_STATFS = struct.Struct("<qqQQQQQiiqqq4q")


def _stat_at(c: Call, dirfd: int, path: bytes, flags: int) -> LinuxStat:
    return _stat_and_mount_at(c, dirfd, path, flags)[0]


def _stat_and_mount_at(c: Call, dirfd: int, path: bytes, flags: int) -> tuple[LinuxStat, int]:
    """The file's attributes and the id of the mount it is on (0 for a host
    object: a pipe, a socket)."""
    if not path and flags & AT_EMPTY_PATH and dirfd != AT_FDCWD:
        return _stat_and_mount_of_fd(c, dirfd)
    node = lookup.resolve_at(c.inst.vfs, c.task, dirfd, path, flags)
    try:
        return node.fs.getattr(node, c.task), node.mount.id
    finally:
        node.release()


def _stat_and_mount_of_fd(c: Call, fd: int) -> tuple[LinuxStat, int]:
    found = fdview.stat_and_mount_of_fd(c.inst.vfs, c.task, fd)
    if fanotify.is_group_fd(c.inst, c.task, fd):
        # A fanotify group's descriptor is a socket here; in Linux its
        # file is on the anonymous inode (anon_inode_getfile).
        return fdview.host_object_stat(c.task, fanotify.anon_inode_stat()), 0
    return found


def sys_stat(c: Call) -> int:
    c.write(c.ptr(1), _stat_at(c, AT_FDCWD, c.path(0), 0).pack_stat())
    return 0


def sys_lstat(c: Call) -> int:
    c.write(c.ptr(1), _stat_at(c, AT_FDCWD, c.path(0), AT_SYMLINK_NOFOLLOW).pack_stat())
    return 0


def sys_fstat(c: Call) -> int:
    c.write(c.ptr(1), _stat_and_mount_of_fd(c, c.int(0))[0].pack_stat())
    return 0


def sys_newfstatat(c: Call) -> int:
    flags = c.int(3)
    path = c.path_or_empty(1, flags)
    # vfs_fstatat: an empty or NULL path with AT_EMPTY_PATH and a descriptor
    # is vfs_fstat, whatever the other flags; otherwise vfs_statx refuses a
    # flag beyond these (both sync types together are not EINVAL, unlike
    # statx(2)'s do_statx).
    empty_at_fd = not path and flags & AT_EMPTY_PATH and c.int(0) >= 0
    if not empty_at_fd and flags & ~(AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT | AT_STATX_SYNC_TYPE):
        raise OSError(errno.EINVAL, "bad fstatat flags")
    c.write(c.ptr(2), _stat_at(c, c.int(0), path, flags).pack_stat())
    return 0


def sys_statx(c: Call) -> int:
    flags = c.int(2)
    path = c.path_or_empty(1, flags)
    # do_statx and vfs_statx: both sync types at once, unknown flags and the
    # reserved mask bit are EINVAL.
    if (flags & ~(AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT | AT_STATX_SYNC_TYPE)
            or flags & AT_STATX_SYNC_TYPE == AT_STATX_SYNC_TYPE or c.uint(3) & STATX__RESERVED):
        raise OSError(errno.EINVAL, "bad statx flags or mask")
    s, mnt_id = _stat_and_mount_at(c, c.int(0), path, flags)
    # stx_mnt_id: /proc/self/mountinfo's first field, or with
    # STATX_MNT_ID_UNIQUE the id statmount(2) and listmount(2) use.
    if c.uint(3) & STATX_MNT_ID_UNIQUE:
        c.write(c.ptr(4), s.pack_statx(statmount.unique_id_of(mnt_id), STATX_MNT_ID_UNIQUE))
    else:
        c.write(c.ptr(4), s.pack_statx(mnt_id))
    return 0


def sys_readlink(c: Call) -> int:
    return _readlink(c, AT_FDCWD, c.path(0), c.ptr(1), c.long(2))


def sys_readlinkat(c: Call) -> int:
    return _readlink(c, c.int(0), c.path(1), c.ptr(2), c.long(3))


def _readlink(c: Call, dirfd: int, path: bytes, buf: int, size: int) -> int:
    if size <= 0:
        raise OSError(errno.EINVAL, "bad size")
    node = lookup.resolve_at(c.inst.vfs, c.task, dirfd, path, AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH)
    try:
        # do_readlinkat: an empty path is the dirfd's own file (LOOKUP_EMPTY);
        # when that is not a symlink the answer is ENOENT, not EINVAL.
        if not path and not node.is_symlink():
            raise OSError(errno.ENOENT, "empty path names no symlink")
        target = node.fs.readlink(node, c.task)
    finally:
        node.release()
    out = target[:size]
    c.write(buf, out)
    return len(out)


def sys_access(c: Call) -> int:
    return _access(c, AT_FDCWD, c.path(0), c.int(1), 0)


def sys_faccessat(c: Call) -> int:
    return _access(c, c.int(0), c.path(1), c.int(2), 0)


def sys_faccessat2(c: Call) -> int:
    # do_faccessat checks the mode and flags before it reads the path.
    mode, flags = c.int(2), c.int(3)
    if mode & ~7:
        raise OSError(errno.EINVAL, "bad mode")
    if flags & ~(AT_EACCESS | AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH):
        raise OSError(errno.EINVAL, "bad flags")
    return _access(c, c.int(0), c.path_or_empty(1, flags), mode, flags)


def _access(c: Call, dirfd: int, path: bytes, mode: int, flags: int) -> int:
    if mode & ~7:
        raise OSError(errno.EINVAL, "bad mode")
    node = lookup.resolve_at(c.inst.vfs, c.task, dirfd, path, flags)
    try:
        a = node.fs.getattr(node, c.task)
        if mode == os.F_OK:
            return 0
        creds = c.task.creds
        if not flags & AT_EACCESS:
            creds = creds.copy()
            creds.fsuid, creds.fsgid = creds.ruid, creds.rgid
            if creds.ruid != 0:
                creds.cap_effective = 0
        # A pseudo file system refuses writes but to files that take them
        # (sysctls, oom_score_adj): those answer by their mode, as in Linux.
        if mode & os.W_OK and node.fs.read_only and getattr(node.obj, "write", None) is None:
            raise OSError(errno.EROFS, "read-only file system")
        if mode & os.W_OK and (st.S_ISREG(a.mode) or st.S_ISDIR(a.mode) or st.S_ISLNK(a.mode)):
            want_write(node)        # sb_permission / __mnt_is_readonly in do_faccessat
        want = (perm.MAY_READ if mode & os.R_OK else 0) | (perm.MAY_WRITE if mode & os.W_OK else 0) \
            | (perm.MAY_EXEC if mode & os.X_OK else 0)
        perm.check(creds, a.mode, a.uid, a.gid, want)
        return 0
    finally:
        node.release()


def _statfs_bytes(node) -> bytes:
    v = node.fs.statfs(node)
    if isinstance(v, bytes):
        return v
    return _STATFS.pack(node.fs.magic, v.f_bsize, v.f_blocks, v.f_bfree, v.f_bavail, v.f_files,
                        v.f_ffree, 0, 0, v.f_namemax, v.f_frsize, v.f_flag, 0, 0, 0, 0)


def sys_statfs(c: Call) -> int:
    node = lookup.resolve_at(c.inst.vfs, c.task, AT_FDCWD, c.path(0))
    try:
        c.write(c.ptr(1), _statfs_bytes(node))
    finally:
        node.release()
    return 0


def sys_fstatfs(c: Call) -> int:
    local = lookup.copy_fd(c.task, c.int(0))
    try:
        s = os.fstat(local)
        node = fdview.node_or_none(c.inst.vfs, local, s, c.task)
        if node is None:
            v = os.statvfs(f"/proc/self/fd/{local}")
            data = _STATFS.pack(_host_object_magic(c, s),
                                v.f_bsize, v.f_blocks, v.f_bfree, v.f_bavail, v.f_files,
                                v.f_ffree, 0, 0, v.f_namemax, v.f_frsize, v.f_flag, 0, 0, 0, 0)
        else:
            data = _statfs_bytes(node)
        c.write(c.ptr(1), data)
        return 0
    finally:
        os.close(local)


def _host_object_magic(c: Call, s: os.stat_result) -> int:
    if st.S_ISFIFO(s.st_mode):
        return PIPEFS_MAGIC
    if fanotify.is_group_file(c.inst, s):
        return ANON_INODE_FS_MAGIC          # a fanotify group's file in Linux
    return SOCKFS_MAGIC


# -- creating and changing ----------------------------------------------------

from lxsub.kernel.vfs import ops  # noqa: E402


def sys_mkdir(c: Call) -> int:
    ops.mkdir(c.inst.vfs, c.task, AT_FDCWD, c.path(0), c.uint(1))
    return 0


def sys_mkdirat(c: Call) -> int:
    ops.mkdir(c.inst.vfs, c.task, c.int(0), c.path(1), c.uint(2))
    return 0


def sys_mknod(c: Call) -> int:
    ops.mknod(c.inst.vfs, c.task, AT_FDCWD, c.path(0), c.uint(1), c.args[2])
    return 0


def sys_mknodat(c: Call) -> int:
    ops.mknod(c.inst.vfs, c.task, c.int(0), c.path(1), c.uint(2), c.args[3])
    return 0


def _chmod_node(c: Call, node, mode: int) -> int:
    try:
        ops.chmod(c.task, node, mode)
    finally:
        node.release()
    return 0


def sys_chmod(c: Call) -> int:
    return _chmod_node(c, lookup.resolve_at(c.inst.vfs, c.task, AT_FDCWD, c.path(0)), c.uint(1))


def sys_fchmod(c: Call) -> int:
    return _chmod_node(c, lookup.node_of_open_fd(c.inst.vfs, c.task, c.int(0)), c.uint(1))


def sys_fchmodat(c: Call) -> int:
    return _chmod_node(c, lookup.resolve_at(c.inst.vfs, c.task, c.int(0), c.path(1)), c.uint(2))


def sys_fchmodat2(c: Call) -> int:
    flags = c.int(3)
    if flags & ~(AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH):    # do_fchmodat
        raise OSError(errno.EINVAL, "bad flags")
    path = c.path_or_empty(1, flags)
    node = lookup.resolve_at(c.inst.vfs, c.task, c.int(0), path, flags)
    if node.is_symlink():
        node.release()
        raise OSError(errno.EOPNOTSUPP, "cannot chmod a symlink")
    return _chmod_node(c, node, c.uint(2))


def sys_umask(c: Call) -> int:
    old = c.task.fs.umask
    c.task.fs.umask = c.uint(0) & 0o777
    return old


_TIMESPEC2 = struct.Struct("<qqqq")
_TIMEVAL2 = struct.Struct("<qqqq")


def _now_pair() -> tuple[tuple[int, int], tuple[int, int]]:
    return (0, UTIME_NOW), (0, UTIME_NOW)


def _utimens_node(c: Call, node, times) -> int:
    try:
        ops.utimens(c.task, node, *times)
    finally:
        node.release()
    return 0


def sys_utimensat(c: Call) -> int:
    dirfd, flags = c.int(0), c.int(3)
    if c.ptr(2):
        a_s, a_ns, m_s, m_ns = _TIMESPEC2.unpack(c.read(c.ptr(2), 32))
        for ns in (a_ns, m_ns):
            if not (0 <= ns < 10**9 or ns in (UTIME_NOW, UTIME_OMIT)):
                raise OSError(errno.EINVAL, "bad nanoseconds")
        times = ((a_s, a_ns), (m_s, m_ns))
    else:
        times = _now_pair()
    # futimens(fd, times): do_utimes_fd's fdget, EBADF for O_PATH. With
    # AT_FDCWD a NULL path is a path (do_utimes): EFAULT.
    if not c.ptr(1) and dirfd != AT_FDCWD:
        node = lookup.node_of_open_fd(c.inst.vfs, c.task, dirfd)
    else:
        node = lookup.resolve_at(c.inst.vfs, c.task, dirfd, c.path(1), flags)
    return _utimens_node(c, node, times)


def _times_from_timevals(c: Call, addr: int):
    if not addr:
        return _now_pair()
    a_s, a_us, m_s, m_us = _TIMEVAL2.unpack(c.read(addr, 32))
    if not (0 <= a_us < 10**6 and 0 <= m_us < 10**6):
        raise OSError(errno.EINVAL, "bad microseconds")
    return (a_s, a_us * 1000), (m_s, m_us * 1000)


def sys_utimes(c: Call) -> int:
    node = lookup.resolve_at(c.inst.vfs, c.task, AT_FDCWD, c.path(0))
    return _utimens_node(c, node, _times_from_timevals(c, c.ptr(1)))


def sys_futimesat(c: Call) -> int:
    node = lookup.resolve_at(c.inst.vfs, c.task, c.int(0), c.path(1))
    return _utimens_node(c, node, _times_from_timevals(c, c.ptr(2)))


def sys_utime(c: Call) -> int:
    node = lookup.resolve_at(c.inst.vfs, c.task, AT_FDCWD, c.path(0))
    if c.ptr(1):
        atime, mtime = struct.unpack("<qq", c.read(c.ptr(1), 16))
        times = ((atime, 0), (mtime, 0))
    else:
        times = _now_pair()
    return _utimens_node(c, node, times)


_USTAT = struct.Struct("<IIQ6s6s4x")   # struct ustat: f_tfree, pad, f_tinode, f_fname, f_fpack


def _new_decode_dev(dev: int) -> int:
    """The dev_t an old 32-bit device number names (Linux new_decode_dev)."""
    dev &= 0xFFFFFFFF
    return os.makedev((dev & 0xFFF00) >> 8, (dev & 0xFF) | ((dev >> 12) & 0xFFF00))


def _mounted_root_with_dev(c: Call, dev: int):
    """The root node of a mounted file system whose st_dev is `dev` (Linux
    user_get_super), or None."""
    for m in c.inst.vfs.mounts_of(c.task).mounts:
        if m.root_node is None:
            continue
        try:
            if m.fs.getattr(m.root_node, c.task).dev == dev:
                return m.root_node
        except OSError:
            continue
    return None


def sys_ustat(c: Call) -> int:
    """ustat(2): free blocks and inodes of the mounted file system `dev`
    (Linux fs/statfs.c: EINVAL when none is mounted, EFAULT on the buffer)."""
    node = _mounted_root_with_dev(c, _new_decode_dev(c.uint(0)))
    if node is None:
        raise OSError(errno.EINVAL, "no mounted file system has this device number")
    raw = _statfs_bytes(node)
    fields = _STATFS.unpack(raw[:_STATFS.size])
    bfree, ffree = fields[3], fields[6]
    # f_tfree is an int: the kernel stores the low 32 bits of f_bfree.
    c.write(c.ptr(1), _USTAT.pack(bfree & 0xFFFFFFFF, 0, ffree, b"", b""))
    return 0
