"""VolFs: the distro's own tree, with full Linux metadata in host xattrs.

Owners, modes (setuid, sticky...), device numbers live in one attribute per
file (see lxattr.py); the host file keeps the host user's ownership.

A new object never exists under its name without its attribute, whenever
the provider dies: a file is made unnamed (O_TMPFILE), given its attribute
and then linked into place; a directory or device node is made in a
staging directory beside the rootfs (emptied when an instance starts),
given its attribute and renamed into place (RENAME_NOREPLACE keeps
mkdir's EEXIST). In Linux a new inode is born with its owner and mode.

Sockets, FIFOs and symlinks cannot carry user.* attributes on the host
(xattr(7)), so what the instance gives them (a socket bind() made as a user,
a FIFO's mode, an lchown) is kept in the provider for the instance's life,
keyed by inode and checked by birth time; after a restart they show as
root's with the host's mode, as files a host tool made.
"""

from __future__ import annotations

import errno
import itertools
import os
import shutil
import stat as st

from lxsub.kernel.fs import lxattr
from lxsub.kernel.fs.hostfs import _HOST_OPEN_FLAGS, HostFs, fd_path, renameat2
from lxsub.kernel.fs.lxattr import LxMeta
from lxsub.kernel.vfs.node import Node
from lxsub.kernel.vfs.stat import LinuxStat
from lxsub.platform import libc

EXT4_MAGIC = 0xEF53
_META_CACHE_MAX = 65536
RENAME_NOREPLACE = 1
# Creation flags, and O_NOFOLLOW, which a reopen through /proc/self/fd/N
# (a symlink) must not carry.
_NOT_REOPENED = os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
_names = itertools.count()


class VolFs(HostFs):
    fstype = "lxfs"
    magic = EXT4_MAGIC

    # -- the Linux view -----------------------------------------------------

    def __init__(self, host_root: str) -> None:
        super().__init__(host_root)
        # (dev, ino) -> (ctime, meta): any change of the attribute changes
        # the host ctime, so an entry with the same ctime is still true.
        self._meta_cache: dict[tuple[int, int], tuple[int, LxMeta]] = {}
        self._staging = _open_staging(host_root)    # O_PATH dir, or None: in-place temp names
        # (dev, ino) -> (birth time, meta) of sockets, FIFOs and symlinks (see above).
        self._special: dict[tuple[int, int], tuple[int, LxMeta]] = {}

    def meta(self, node: Node, host: os.stat_result | None = None) -> LxMeta:
        s = host or node.host_st or os.stat(node.fd)
        if not _keeps_meta(s.st_mode):
            return self._special_meta(node.fd, b"", s)
        key = (s.st_dev, s.st_ino)
        cached = self._meta_cache.get(key)
        if cached is not None and cached[0] == s.st_ctime_ns:
            return cached[1]
        found = lxattr.read_meta_fd(node.fd) or LxMeta(s.st_mode, 0, 0, 0)
        if len(self._meta_cache) >= _META_CACHE_MAX:
            self._meta_cache.clear()
        self._meta_cache[key] = (s.st_ctime_ns, found)
        return found

    def getattr(self, node: Node, caller) -> LinuxStat:
        s = self.fresh_stat(node)
        m = self.meta(node, s)
        size = 0 if st.S_ISCHR(m.mode) or st.S_ISBLK(m.mode) else s.st_size
        out = LinuxStat.from_host(s, m.mode, m.uid, m.gid, m.rdev)
        out.size = size
        return out

    # -- changing it ------------------------------------------------------------

    def _special_meta(self, dir_fd: int, name: bytes, s: os.stat_result) -> LxMeta:
        found = self._special.get((s.st_dev, s.st_ino))
        if found is not None and found[0] == libc.birth_time_ns(dir_fd, name):
            return found[1]
        mode = s.st_mode if not st.S_ISLNK(s.st_mode) else st.S_IFLNK | 0o777
        return LxMeta(mode, 0, 0, 0)

    def _set_special(self, dir_fd: int, name: bytes, meta: LxMeta) -> None:
        s = os.stat(name, dir_fd=dir_fd, follow_symlinks=False) if name else os.stat(dir_fd)
        key = (s.st_dev, s.st_ino)
        if meta.uid == 0 and meta.gid == 0 and meta.mode == s.st_mode:
            self._special.pop(key, None)          # what an unknown one shows anyway
        else:
            self._special[key] = (libc.birth_time_ns(dir_fd, name), meta)

    def chmod(self, node: Node, mode: int, caller) -> None:
        m = self.meta(node, self.fresh_stat(node))
        if st.S_ISLNK(m.mode):
            raise OSError(errno.EOPNOTSUPP, "symlinks have no mode")
        new = LxMeta(st.S_IFMT(m.mode) | (mode & 0o7777), m.uid, m.gid, m.rdev)
        host = lxattr.host_mode_for(new.mode)
        os.chmod(fd_path(node.fd), host)
        if _keeps_meta(m.mode):
            self._write_meta(node, new)
        else:
            self._set_special(node.fd, b"", new)

    def chown(self, node: Node, uid: int, gid: int, caller) -> None:
        m = self.meta(node, self.fresh_stat(node))
        new = LxMeta(m.mode, m.uid if uid < 0 else uid, m.gid if gid < 0 else gid, m.rdev)
        if _keeps_meta(m.mode):
            self._write_meta(node, new)
        else:
            self._set_special(node.fd, b"", new)

    def _write_meta(self, node: Node, meta: LxMeta) -> None:
        # ctime has a clock tick's grain: two changes in one tick look alike,
        # so a change of ours drops the cached copy outright.
        s = node.host_st
        if s is not None:
            self._meta_cache.pop((s.st_dev, s.st_ino), None)
        lxattr.write_meta_fd(node.fd, meta)

    def host_mode(self, mode: int) -> int:
        return lxattr.host_mode_for(mode)

    def _new_meta(self, parent: Node, mode: int, rdev: int, creds) -> LxMeta:
        pm = self.meta(parent)
        gid = creds.fsgid
        if pm.mode & st.S_ISGID:
            gid = pm.gid               # BSD group semantics of setgid directories
            if st.S_ISDIR(mode):
                mode |= st.S_ISGID
        return LxMeta(mode, creds.fsuid, gid, rdev)

    def after_create_fd(self, fd: int, parent: Node, mode: int, creds) -> None:
        os.setxattr(fd, lxattr.XATTR_NAME, self._new_meta(parent, mode, 0, creds).pack())
        self._forget_inode(os.fstat(fd))

    def after_create_name(self, parent: Node, name: bytes, mode: int, rdev: int, creds) -> None:
        if not _keeps_meta(mode):
            if not st.S_ISLNK(mode):      # the host file takes the Linux permissions as they are
                os.chmod(name, lxattr.host_mode_for(mode), dir_fd=parent.fd, follow_symlinks=True)
            self._set_special(parent.fd, name, self._new_meta(parent, mode, rdev, creds))
            return
        path = fd_path(parent.fd).encode() + b"/" + name
        lxattr.write_meta_path(path, self._new_meta(parent, mode, rdev, creds), follow=False)
        self._forget_inode(os.stat(path, follow_symlinks=False))

    def _forget_inode(self, s: os.stat_result) -> None:
        """A new file may reuse the inode number of one we had cached."""
        self._meta_cache.pop((s.st_dev, s.st_ino), None)

    def symlink(self, parent: Node, name: bytes, target: bytes, creds) -> None:
        super().symlink(parent, name, target, creds)
        self.after_create_name(parent, name, st.S_IFLNK | 0o777, 0, creds)

    def unlink(self, parent: Node, name: bytes) -> None:
        gone = None
        if self._special:
            try:
                s = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
                gone = (s.st_dev, s.st_ino) if s.st_nlink <= 1 else None
            except OSError:
                pass
        super().unlink(parent, name)
        if gone is not None:
            self._special.pop(gone, None)

    def make_device(self, parent: Node, name: bytes, mode: int, rdev: int) -> None:
        os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600,
                         dir_fd=parent.fd))

    # -- new objects, born with their metadata ------------------------------------

    def create(self, parent: Node, name: bytes, flags: int, mode: int, creds) -> int:
        meta = self._new_meta(parent, st.S_IFREG | mode, 0, creds)
        try:
            fd = os.open(fd_path(parent.fd), os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC,
                         self.host_mode(meta.mode))
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
            return self._create_staged(parent, name, flags, meta)   # no O_TMPFILE here
        try:
            os.setxattr(fd, lxattr.XATTR_NAME, meta.pack())
            os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=parent.fd, follow_symlinks=True)
            born = os.fstat(fd)
            self._forget_inode(born)
        except BaseException:
            os.close(fd)
            raise
        return _open_as_asked(fd, born, parent, name, flags)

    def _create_staged(self, parent: Node, name: bytes, flags: int, meta: LxMeta) -> int:
        def make(where: int, tmp: bytes) -> None:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC,
                             self.host_mode(meta.mode), dir_fd=where))
        self._born(parent, name, meta, make)
        host_flags = (flags & _HOST_OPEN_FLAGS & ~os.O_TRUNC) | os.O_NOFOLLOW | os.O_CLOEXEC
        return os.open(name, host_flags, dir_fd=parent.fd)

    def mkdir(self, parent: Node, name: bytes, mode: int, creds) -> None:
        meta = self._new_meta(parent, st.S_IFDIR | mode, 0, creds)
        self._born(parent, name, meta,
                   lambda where, tmp: os.mkdir(tmp, self.host_mode(meta.mode), dir_fd=where))

    def mknod(self, parent: Node, name: bytes, mode: int, rdev: int, creds) -> None:
        kind = st.S_IFMT(mode)
        if kind in (st.S_IFIFO, st.S_IFSOCK):
            super().mknod(parent, name, mode, rdev, creds)     # no attribute: nothing to wait for
            return
        if kind == 0:
            mode |= st.S_IFREG
        meta = self._new_meta(parent, mode, rdev if kind != st.S_IFREG else 0, creds)

        def make(where: int, tmp: bytes) -> None:
            # Device nodes are regular files on the host (see lxattr.host_type_for).
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC,
                             self.host_mode(meta.mode) if kind == st.S_IFREG else 0o600,
                             dir_fd=where))
        self._born(parent, name, meta, make)

    def remove_staging(self) -> None:
        """At the instance's end: the staging directory goes (it is empty
        unless a create is cut short, and the next start empties it anyway)."""
        if self._staging is None:
            return
        path = os.readlink(f"/proc/self/fd/{self._staging}")
        os.close(self._staging)
        self._staging = None
        shutil.rmtree(path, ignore_errors=True)

    def _born(self, parent: Node, name: bytes, meta: LxMeta, make) -> None:
        """make(dir_fd, tmp_name) an object away from `name`, give it its
        attribute, then rename it to `name` (EEXIST if taken)."""
        where = self._staging if self._staging is not None else parent.fd
        tmp = f".lxsub-new-{os.getpid()}-{next(_names)}".encode()
        make(where, tmp)
        path = fd_path(where).encode() + b"/" + tmp
        try:
            lxattr.write_meta_path(path, meta, follow=False)
            renameat2(where, tmp, parent.fd, name, RENAME_NOREPLACE)
        except BaseException:
            _remove_quietly(where, tmp)
            raise
        self._forget_inode(os.stat(name, dir_fd=parent.fd, follow_symlinks=False))


def _open_as_asked(tmp_fd: int, born: os.stat_result, parent: Node, name: bytes,
                   flags: int) -> int:
    """The new file opened by its name with the caller's flags: the
    O_TMPFILE descriptor itself would keep its anonymous name ("/#123" in
    /proc/<pid>/fd). If the name was replaced meanwhile (by another
    process), the creator still gets the file it created, reopened."""
    want = (flags & _HOST_OPEN_FLAGS & ~_NOT_REOPENED) | os.O_CLOEXEC
    try:
        try:
            fd = os.open(name, want | os.O_NOFOLLOW, dir_fd=parent.fd)
        except OSError:
            fd = -1
        if fd >= 0:
            now = os.fstat(fd)
            if (now.st_dev, now.st_ino) == (born.st_dev, born.st_ino):
                return fd
            os.close(fd)
        return os.open(f"/proc/self/fd/{tmp_fd}", want)
    finally:
        os.close(tmp_fd)


def _open_staging(host_root: str) -> int | None:
    """The staging directory beside host_root (same file system, emptied of
    what a killed provider left), or None when there cannot be one."""
    root = os.path.abspath(host_root)
    parent, base = os.path.split(root.rstrip("/"))
    if not base:
        return None
    staging = os.path.join(parent, f".{base}.staging")
    try:
        if os.path.isdir(staging) and not os.path.islink(staging):
            shutil.rmtree(staging)
        os.mkdir(staging, 0o700)
        fd = os.open(staging, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    if os.fstat(fd).st_dev != os.stat(root).st_dev:
        os.close(fd)
        return None
    return fd


def _remove_quietly(dir_fd: int, name: bytes) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except IsADirectoryError:
        try:
            os.rmdir(name, dir_fd=dir_fd)
        except OSError:
            pass
    except OSError:
        pass


def _keeps_meta(mode: int) -> bool:
    """Linux allows user.* attributes on regular files and directories only
    (device nodes are regular files on the host): symlinks, FIFOs and sockets
    keep their host mode and show as root's."""
    return not (st.S_ISLNK(mode) or st.S_ISFIFO(mode) or st.S_ISSOCK(mode))
