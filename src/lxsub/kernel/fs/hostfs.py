"""File systems backed by a host directory (VolFs, DrvFs): the shared walk and I/O.

Every operation is relative to a provider-side descriptor: lookups are
`openat(dir, name, O_PATH|O_NOFOLLOW)`, entry operations the `*at` calls on
the parent's descriptor, attribute operations go through the descriptor
itself (or its /proc/self/fd magic link where the host has no *at form).
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat as st

from lxsub.abi.fcntl import AT_EMPTY_PATH
from lxsub.abi.sysno import SYS_RENAMEAT2
from lxsub.kernel.vfs.filesystem import CLAIM_BY_ROOT, FileSystem
from lxsub.kernel.vfs.node import Node
from lxsub.kernel.vfs.stat import LinuxStat
from lxsub.platform import libc

O_PATH_NOFOLLOW = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC

# Flags we pass to the host when opening; the rest are the provider's business.
def renameat2(olddirfd: int, old: bytes, newdirfd: int, new: bytes, flags: int = 0) -> None:
    """rename(2) between directory descriptors, with renameat2's flags."""
    if not flags:
        os.rename(old, new, src_dir_fd=olddirfd, dst_dir_fd=newdirfd)
        return
    # The buffers must outlive the call: a temporary's address is freed
    # memory by the time the syscall runs (both names became the last).
    old_buf, new_buf = ctypes.create_string_buffer(old), ctypes.create_string_buffer(new)
    libc.syscall(SYS_RENAMEAT2, olddirfd, ctypes.addressof(old_buf),
                 newdirfd, ctypes.addressof(new_buf), flags)


_HOST_OPEN_FLAGS = (os.O_ACCMODE | os.O_APPEND | os.O_NONBLOCK | os.O_DIRECTORY | os.O_TRUNC
                    | os.O_NOATIME | os.O_DSYNC | os.O_SYNC | os.O_DIRECT | os.O_PATH
                    | os.O_NOCTTY | 0o40000 | os.O_LARGEFILE)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def path_below(host: str, base: str) -> str:
    """`host` (a descriptor's host path, maybe " (deleted)") relative to the
    host directory `base` as "/..." ("/" for base itself or outside it)."""
    if host.endswith(" (deleted)"):
        host = host[: -len(" (deleted)")]
    if host == base:
        return "/"
    prefix = base.rstrip("/") + "/"
    if not host.startswith(prefix):
        return "/"
    return "/" + host[len(prefix):]


class HostTree(FileSystem):
    """The walk and I/O over a host directory. Subclasses that the instance
    finds by host path prefix are HostFs; the others (DrvFs, TmpFs) say
    themselves which host descriptors are theirs (`node_from_host`)."""
    root_fd: int | None = None     # a held directory to use instead of host_root

    def __init__(self, host_root: str) -> None:
        self.host_root = os.path.realpath(host_root)

    def root(self, mount) -> Node:
        if self.root_fd is not None:
            fd = os.open(fd_path(self.root_fd), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        else:
            fd = os.open(self.host_root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        return Node(mount, fd, os.fstat(fd))

    def lookup(self, parent: Node, name: bytes, caller) -> Node:
        fd = os.open(name, O_PATH_NOFOLLOW, dir_fd=parent.fd)
        return Node(parent.mount, fd, os.fstat(fd))

    def parent_of(self, node: Node, caller) -> Node:
        fd = os.open(b"..", os.O_PATH | os.O_CLOEXEC, dir_fd=node.fd)
        return Node(node.mount, fd, os.fstat(fd))

    def readlink(self, node: Node, caller) -> bytes:
        if not node.is_symlink():
            raise OSError(errno.EINVAL, "not a symlink")
        return os.readlink(b"", dir_fd=node.fd)

    def host_path(self, node: Node) -> str | None:
        return os.readlink(fd_path(node.fd))

    def path_in_mount(self, node: Node) -> str:
        """The node's host path below its mount's root directory (as the host
        names both now: the tree may have moved on the host)."""
        m = node.mount
        try:
            host = os.readlink(fd_path(node.fd))
            base = os.readlink(fd_path(m.root_node.fd)) if m.root_node is not None else self.host_root
        except OSError:
            return "/"
        return path_below(host, base)

    def fresh_stat(self, node: Node) -> os.stat_result:
        if node.fresh:
            node.fresh = False    # good once: a change we make next must be seen
            return node.host_st
        s = os.stat(node.fd)
        node.host_st = s
        return s

    def getattr(self, node: Node, caller) -> LinuxStat:
        s = self.fresh_stat(node)
        return LinuxStat.from_host(s, s.st_mode, 0, 0, 0)

    def statfs(self, node: Node) -> os.statvfs_result:
        return os.statvfs(fd_path(node.fd))

    # -- opening --------------------------------------------------------------

    def open(self, node: Node, flags: int, caller) -> int:
        if flags & os.O_PATH:
            return os.dup(node.fd)
        return os.open(fd_path(node.fd), (flags & _HOST_OPEN_FLAGS) | os.O_CLOEXEC)

    def create(self, parent: Node, name: bytes, flags: int, mode: int, creds) -> int:
        host_flags = (flags & _HOST_OPEN_FLAGS) | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(name, host_flags, self.host_mode(st.S_IFREG | mode), dir_fd=parent.fd)
        try:
            self.after_create_fd(fd, parent, st.S_IFREG | mode, creds)
        except BaseException:
            os.close(fd)
            os.unlink(name, dir_fd=parent.fd)
            raise
        return fd

    def open_tmpfile(self, parent: Node, flags: int, mode: int, creds) -> int:
        host_flags = (flags & _HOST_OPEN_FLAGS) | os.O_TMPFILE | os.O_CLOEXEC
        fd = os.open(fd_path(parent.fd), host_flags, self.host_mode(st.S_IFREG | mode))
        try:
            self.after_create_fd(fd, parent, st.S_IFREG | mode, creds)
        except BaseException:
            os.close(fd)
            raise
        return fd

    # -- directory entries ------------------------------------------------------

    def mkdir(self, parent: Node, name: bytes, mode: int, creds) -> None:
        os.mkdir(name, self.host_mode(st.S_IFDIR | mode), dir_fd=parent.fd)
        self.after_create_name(parent, name, st.S_IFDIR | mode, 0, creds)

    def mknod(self, parent: Node, name: bytes, mode: int, rdev: int, creds) -> None:
        kind = st.S_IFMT(mode)
        if kind == st.S_IFIFO:
            os.mkfifo(name, self.host_mode(mode), dir_fd=parent.fd)
        elif kind == st.S_IFSOCK:
            os.mknod(name, st.S_IFSOCK | self.host_mode(mode), dir_fd=parent.fd)
        elif kind in (st.S_IFREG, 0):
            mode = st.S_IFREG | (mode & 0o7777)
            os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC,
                             self.host_mode(mode), dir_fd=parent.fd))
        else:
            self.make_device(parent, name, mode, rdev)
        self.after_create_name(parent, name, mode, rdev, creds)

    def make_device(self, parent: Node, name: bytes, mode: int, rdev: int) -> None:
        raise OSError(errno.EPERM, "operation not permitted")

    def symlink(self, parent: Node, name: bytes, target: bytes, creds) -> None:
        os.symlink(target, name, dir_fd=parent.fd)

    def link(self, node: Node, parent: Node, name: bytes) -> None:
        os.link(fd_path(node.fd), name, dst_dir_fd=parent.fd, follow_symlinks=True)

    def unlink(self, parent: Node, name: bytes) -> None:
        os.unlink(name, dir_fd=parent.fd)

    def rmdir(self, parent: Node, name: bytes) -> None:
        os.rmdir(name, dir_fd=parent.fd)

    def rename(self, oldp: Node, old: bytes, newp: Node, new: bytes, flags: int = 0) -> None:
        renameat2(oldp.fd, old, newp.fd, new, flags)

    def utimens(self, node: Node, atime: tuple[int, int], mtime: tuple[int, int]) -> None:
        times = (_Timespec * 2)(_Timespec(*atime), _Timespec(*mtime))
        if libc._libc.utimensat(node.fd, b"", times, AT_EMPTY_PATH) < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))

    # -- hooks for metadata-keeping subclasses ---------------------------------

    def host_mode(self, mode: int) -> int:
        return mode & 0o7777

    def after_create_fd(self, fd: int, parent: Node, mode: int, creds) -> None:
        pass

    def after_create_name(self, parent: Node, name: bytes, mode: int, rdev: int, creds) -> None:
        pass


class HostFs(HostTree):
    """A host tree the instance recognises by its host path (VolFs, devpts)."""
    host_claim = CLAIM_BY_ROOT

    def for_bind(self, root: Node) -> "HostFs":
        # The Vfs finds HostFs files by host path: a bind mount of one is
        # the same tree from another host directory.
        import copy
        fs = copy.copy(self)
        fs.host_root = os.readlink(fd_path(root.fd))
        return fs

    def path_in_mount(self, node: Node) -> str:
        # host_root is the mount's root (a bind mount copies the file system
        # with its own, kernel/syscalls/mount.py): no second readlink.
        return path_below(self.host_path(node) or "", self.host_root)
