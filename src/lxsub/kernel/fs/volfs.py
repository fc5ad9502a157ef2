"""VolFs: the distro's own tree, with full Linux metadata in host xattrs.

Owners, modes (setuid, sticky...), device numbers live in one attribute per
file (see lxattr.py); the host file keeps the host user's ownership.
"""

from __future__ import annotations

import errno
import os
import stat as st

from lxsub.kernel.fs import lxattr
from lxsub.kernel.fs.hostfs import HostFs, fd_path
from lxsub.kernel.fs.lxattr import LxMeta
from lxsub.kernel.vfs.node import Node
from lxsub.kernel.vfs.stat import LinuxStat

EXT4_MAGIC = 0xEF53


class VolFs(HostFs):
    fstype = "lxfs"
    magic = EXT4_MAGIC

    # -- the Linux view -----------------------------------------------------

    def meta(self, node: Node, host: os.stat_result | None = None) -> LxMeta:
        s = host or node.host_st or os.stat(node.fd)
        found = None if st.S_ISLNK(s.st_mode) else lxattr.read_meta_fd(node.fd)
        if found is not None:
            return found
        return LxMeta(s.st_mode, 0, 0, 0)

    def getattr(self, node: Node) -> LinuxStat:
        s = self.fresh_stat(node)
        m = self.meta(node, s)
        size = 0 if st.S_ISCHR(m.mode) or st.S_ISBLK(m.mode) else s.st_size
        out = LinuxStat.from_host(s, m.mode, m.uid, m.gid, m.rdev)
        out.size = size
        return out

    def linux_mode(self, node: Node) -> int:
        return self.meta(node).mode

    # -- changing it ------------------------------------------------------------

    def chmod(self, node: Node, mode: int) -> None:
        m = self.meta(node, self.fresh_stat(node))
        if st.S_ISLNK(m.mode):
            raise OSError(errno.EOPNOTSUPP, "symlinks have no mode")
        new = LxMeta(st.S_IFMT(m.mode) | (mode & 0o7777), m.uid, m.gid, m.rdev)
        os.chmod(fd_path(node.fd), lxattr.host_mode_for(new.mode))
        lxattr.write_meta_fd(node.fd, new)

    def chown(self, node: Node, uid: int, gid: int) -> None:
        m = self.meta(node, self.fresh_stat(node))
        if st.S_ISLNK(m.mode):
            return  # host symlinks carry no user xattrs: they stay root's
        new = LxMeta(m.mode, m.uid if uid < 0 else uid, m.gid if gid < 0 else gid, m.rdev)
        lxattr.write_meta_fd(node.fd, new)

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

    def after_create_name(self, parent: Node, name: bytes, mode: int, rdev: int, creds) -> None:
        path = fd_path(parent.fd).encode() + b"/" + name
        lxattr.write_meta_path(path, self._new_meta(parent, mode, rdev, creds), follow=False)

    def make_device(self, parent: Node, name: bytes, mode: int, rdev: int) -> None:
        os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600,
                         dir_fd=parent.fd))

    def device_of(self, node: Node) -> tuple[int, int] | None:
        """(type bits, rdev) when the node is a Linux device node."""
        m = self.meta(node)
        if st.S_ISCHR(m.mode) or st.S_ISBLK(m.mode):
            return st.S_IFMT(m.mode), m.rdev
        return None
