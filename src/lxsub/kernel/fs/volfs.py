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
from typing import Callable

from lxsub.abi.fcntl import RENAME_NOREPLACE
from lxsub.abi.magic import EXT4_SUPER_MAGIC as EXT4_MAGIC
from lxsub.kernel.fs.hostfs import _HOST_OPEN_FLAGS, HostFs, fd_path, renameat2
from lxsub.kernel.fs.linuxmeta import (ByType, HostFile, LinuxMeta, MemoryStore, MetaStore,
                                       XattrStore)
from lxsub.kernel.fs.lxattr import LxMeta
from lxsub.kernel.fs.metatree import MetaTree
from lxsub.kernel.vfs.filesystem import NotCurrent
from lxsub.kernel.vfs.node import Node

# Creation flags, and O_NOFOLLOW, which a reopen through /proc/self/fd/N
# (a symlink) must not carry.
_NOT_REOPENED = os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
_names = itertools.count()


class WatchedMemoryStore(MemoryStore):
    """MemoryStore that says when its records are about to change (workers'
    copies of them are then out of date: VolFs.watch_memory). Most calls
    change nothing here (root's plain records are not kept; an inode
    forgotten or born again usually had none): those say nothing."""

    changing: Callable[[], None] | None = None

    def save(self, f: HostFile, meta: LxMeta) -> None:
        if self.changing is not None and (f.key in self._records or meta != self._plain(f)):
            self.changing()
        super().save(f, meta)

    def forget(self, s: os.stat_result) -> None:
        self._drop(s)
        super().forget(s)

    def reborn(self, s: os.stat_result) -> None:
        self._drop(s)
        super().reborn(s)

    def _drop(self, s: os.stat_result) -> None:
        if self.changing is not None and (s.st_dev, s.st_ino) in self._records:
            self.changing()


class _CurrentOnly(MetaStore):
    """A worker's view of the provider's records in memory: readable while
    they are provably the provider's current ones; else NotCurrent."""

    def __init__(self, records: MemoryStore, still_current: Callable[[], bool]) -> None:
        self.records = records
        self.still_current = still_current

    def keeps(self, mode: int) -> bool:
        return self.records.keeps(mode)

    def load(self, f: HostFile) -> LxMeta | None:
        if not self.still_current():
            raise NotCurrent("the provider changed its records")
        return self.records.load(f)

    def save(self, f: HostFile, meta: LxMeta) -> None:
        raise NotCurrent("a worker changes no records")

    def forget(self, s: os.stat_result) -> None:
        raise NotCurrent("a worker changes no records")

    def reborn(self, s: os.stat_result) -> None:
        raise NotCurrent("a worker changes no records")


class VolFs(MetaTree, HostFs):
    fstype = "lxfs"
    magic = EXT4_MAGIC

    def __init__(self, host_root: str, store: MetaStore | None = None) -> None:
        super().__init__(host_root)
        # By default regular files, directories, device nodes: the attribute
        # (cached by host ctime); sockets, FIFOs, symlinks: memory, by inode
        # and birth time (see above).
        self._memory = WatchedMemoryStore(check_birth=True) if store is None else None
        self.linux = LinuxMeta(store or ByType(XattrStore(cache=True), self._memory))
        self._staging = _open_staging(host_root)    # O_PATH dir, or None: in-place temp names

    # -- provider workers (kernel/workers.py) ----------------------------------------

    def worker_copy(self, still_current: Callable[[], bool]) -> bool:
        """The attribute is read afresh from the host (a cached copy could
        miss the provider's change within one ctime tick); the records in
        memory count only while still_current(). An SQLite store stays the
        provider's: its connection does not survive a fork (sqlite3)."""
        if self._memory is None:
            return False
        self.linux.store = ByType(XattrStore(), _CurrentOnly(self._memory, still_current))
        return True

    def watch_memory(self, changing: Callable[[], None]) -> None:
        if self._memory is not None:
            self._memory.changing = changing

    # -- new objects, born with their metadata ------------------------------------

    def mknod(self, parent: Node, name: bytes, mode: int, rdev: int, creds) -> None:
        kind = st.S_IFMT(mode)
        if kind in (st.S_IFIFO, st.S_IFSOCK):
            super().mknod(parent, name, mode, rdev, creds)     # no attribute: nothing to wait for
            return
        if kind == 0:
            mode |= st.S_IFREG
        meta = self.new_meta(parent, mode, rdev, creds)

        def make(where: int, tmp: bytes) -> None:
            # Device nodes are regular files on the host (see lxattr.host_type_for).
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC,
                             self.host_mode(meta.mode) if kind == st.S_IFREG else 0o600,
                             dir_fd=where))
        self._born(parent, name, meta, make)

    def create(self, parent: Node, name: bytes, flags: int, mode: int, creds) -> int:
        meta = self.new_meta(parent, st.S_IFREG | mode, 0, creds)
        # Unnamed in the staging directory when there is one: giving the
        # attribute is an IN_ATTRIB on the file's directory, whose watchers
        # (inotify(7)) must see only the IN_CREATE of the link, as in Linux.
        for where in dict.fromkeys((self._staging, parent.fd)):
            if where is None:
                continue
            try:
                fd = os.open(fd_path(where), os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC,
                             self.host_mode(meta.mode))
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    raise
                break
            born = None
            try:
                born = os.fstat(fd)
                self.linux.store.reborn(born)
                self.linux.store.save(HostFile.of_fd(fd, born), meta)
                os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=parent.fd, follow_symlinks=True)
            except BaseException as e:
                # No name (EEXIST: another creator was first): the inode
                # ends at this close, and its record with it.
                if born is not None:
                    self.linux.store.forget(born)
                os.close(fd)
                if isinstance(e, OSError) and e.errno == errno.EXDEV:   # staging: another mount
                    continue
                raise
            return _open_as_asked(fd, born, parent, name, flags)
        return self._create_staged(parent, name, flags, meta)   # no O_TMPFILE here

    def _create_staged(self, parent: Node, name: bytes, flags: int, meta: LxMeta) -> int:
        def make(where: int, tmp: bytes) -> None:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC,
                             self.host_mode(meta.mode), dir_fd=where))
        self._born(parent, name, meta, make)
        host_flags = (flags & _HOST_OPEN_FLAGS & ~os.O_TRUNC) | os.O_NOFOLLOW | os.O_CLOEXEC
        return os.open(name, host_flags, dir_fd=parent.fd)

    def mkdir(self, parent: Node, name: bytes, mode: int, creds) -> None:
        meta = self.new_meta(parent, st.S_IFDIR | mode, 0, creds)
        self._born(parent, name, meta,
                   lambda where, tmp: os.mkdir(tmp, self.host_mode(meta.mode), dir_fd=where))

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
        f = None
        try:
            f = HostFile.in_dir(where, tmp)
            self.linux.store.reborn(f.st)
            self.linux.store.save(f, meta)
            try:
                renameat2(where, tmp, parent.fd, name, RENAME_NOREPLACE)
            except OSError as e:
                # rename(2): EINVAL, "flags contains flags not supported by
                # the file system": NFS, FUSE (no user xattrs there either).
                if e.errno != errno.EINVAL:
                    raise
                self._place_without_noreplace(where, tmp, f, parent, name, meta)
        except BaseException:
            # Not placed (EEXIST: mkdir(2) of a name that is taken): the
            # object goes, and its record with it.
            if _remove_quietly(where, tmp) and f is not None:
                self.linux.store.forget(f.st)
            raise

    def _place_without_noreplace(self, where: int, tmp: bytes, f: HostFile, parent: Node,
                                 name: bytes, meta: LxMeta) -> None:
        """Give the new object its name with mkdir's and mknod's EEXIST
        kept: a file by link(2) (EEXIST if taken; the record is the
        inode's), a directory made again in place and given its record
        (a crash between leaves it recordless: the store's reconciliation
        gives it the default)."""
        if not st.S_ISDIR(f.st.st_mode):
            os.link(tmp, name, src_dir_fd=where, dst_dir_fd=parent.fd, follow_symlinks=False)
            _remove_quietly(where, tmp)
            return
        os.rmdir(tmp, dir_fd=where)
        self.linux.store.forget(f.st)
        os.mkdir(name, self.host_mode(meta.mode), dir_fd=parent.fd)
        made = HostFile.in_dir(parent.fd, name)
        self.linux.store.reborn(made.st)
        self.linux.store.save(made, meta)


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


def _remove_quietly(dir_fd: int, name: bytes) -> bool:
    """Remove `name` if it is there; whether it was."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except IsADirectoryError:
        try:
            os.rmdir(name, dir_fd=dir_fd)
        except OSError:
            return False
    except OSError:
        return False
    return True

