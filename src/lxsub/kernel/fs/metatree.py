"""A host tree with a Linux view (VolFs, TmpFs, DrvFs): the file system side
of kernel/fs/linuxmeta.py, written once.

Attributes come from `self.linux` (a LinuxMeta over the file system's
store); new files get their record from the directory they are made in
(new_meta: setgid directories); removals tell the store which inodes lost
their last name.
"""

from __future__ import annotations

import errno
import os
import stat as st
from typing import TYPE_CHECKING

from lxsub.abi.fcntl import RENAME_EXCHANGE
from lxsub.kernel.fs.hostfs import HostTree
from lxsub.kernel.fs.linuxmeta import HostFile, LinuxMeta, lost_a_name, shown_size
from lxsub.kernel.fs.lxattr import LxMeta
from lxsub.kernel.vfs.node import Node
from lxsub.kernel.vfs.stat import LinuxStat

if TYPE_CHECKING:
    from lxsub.kernel.vfs.caller import Caller


class MetaTree(HostTree):
    linux: LinuxMeta
    chown_clears_set_id = True      # LinuxMeta.chown: one record write

    # -- the Linux view -----------------------------------------------------------

    def host_file(self, node: Node, s: os.stat_result | None = None) -> HostFile:
        return HostFile(node.fd, b"", s or node.host_st or os.stat(node.fd))

    def meta(self, node: Node, s: os.stat_result | None = None) -> LxMeta:
        return self.linux.get(self.host_file(node, s))

    def getattr(self, node: Node, caller: "Caller") -> LinuxStat:
        s = self.fresh_stat(node)
        m = self.linux.get(HostFile(node.fd, b"", s), caller.creds)       # every stat: kept short
        out = LinuxStat.from_host(s, m.mode, m.uid, m.gid, m.rdev)
        out.size = shown_size(m, s)
        return out

    def chmod(self, node: Node, mode: int, caller: "Caller") -> None:
        self.linux.chmod(self.host_file(node, self.fresh_stat(node)), mode, caller.creds)

    def chown(self, node: Node, uid: int, gid: int, caller: "Caller") -> None:
        self.linux.chown(self.host_file(node, self.fresh_stat(node)), uid, gid, caller.creds)

    # -- new files: born with the view of their directory --------------------------

    def host_mode(self, mode: int) -> int:
        return self.linux.host_mode(mode)

    def new_meta(self, parent: Node, mode: int, rdev: int, creds) -> LxMeta:
        return self.linux.new(self.host_file(parent), mode, rdev, creds)

    def after_create_fd(self, fd: int, parent: Node, mode: int, creds) -> None:
        if not self.linux.keeps(mode):
            return
        f = HostFile.of_fd(fd, os.fstat(fd))
        self.linux.store.reborn(f.st)
        self.linux.store.save(f, self.new_meta(parent, mode, 0, creds))

    def after_create_name(self, parent: Node, name: bytes, mode: int, rdev: int, creds) -> None:
        if not self.linux.keeps(mode):
            return
        f = HostFile.in_dir(parent.fd, name)
        if st.S_ISFIFO(mode) or st.S_ISSOCK(mode):
            # bind(2) made the socket with the provider's umask: the host
            # file takes the Linux permissions as the other types do.
            os.chmod(name, self.host_mode(mode), dir_fd=parent.fd)
        self.linux.store.reborn(f.st)
        self.linux.store.save(f, self.new_meta(parent, mode, rdev, creds))

    def make_device(self, parent: Node, name: bytes, mode: int, rdev: int) -> None:
        """Device nodes are empty regular host files (lxattr.host_type_for)."""
        if not self.linux.keeps(mode):
            raise OSError(errno.EPERM, "no Linux metadata here for device nodes")
        os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600,
                         dir_fd=parent.fd))

    def symlink(self, parent: Node, name: bytes, target: bytes, creds) -> None:
        super().symlink(parent, name, target, creds)
        self.after_create_name(parent, name, st.S_IFLNK | 0o777, 0, creds)

    # -- removals: the store forgets inodes that lost their last name ---------------

    def _doomed(self, parent: Node, name: bytes) -> os.stat_result | None:
        """The host stat of an entry about to go, if the store wants to know."""
        if not self.linux.store.tracks_inodes():
            return None
        try:
            return os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
        except OSError:
            return None

    def _gone(self, s: os.stat_result | None, kept: int | None = None) -> None:
        if s is not None and s.st_ino != kept:
            lost_a_name(self.linux.store, s)

    def unlink(self, parent: Node, name: bytes) -> None:
        s = self._doomed(parent, name)
        super().unlink(parent, name)
        self._gone(s)

    def rmdir(self, parent: Node, name: bytes) -> None:
        s = self._doomed(parent, name)
        super().rmdir(parent, name)
        self._gone(s)

    def rename(self, oldp: Node, old: bytes, newp: Node, new: bytes, flags: int = 0) -> None:
        if flags & RENAME_EXCHANGE:          # both stay
            super().rename(oldp, old, newp, new, flags)
            return
        victim = self._doomed(newp, new)
        src = self._doomed(oldp, old) if victim is not None else None
        super().rename(oldp, old, newp, new, flags)
        self._gone(victim, src.st_ino if src is not None else None)
