"""The interface every file system plugin implements (VolFs, DrvFs, ProcFs...).

Operations take resolved Nodes (and a name, for operations on a directory's
entry) plus the caller's credentials; they raise OSError with a Linux errno.
Permission checks that depend on the Linux view are the VFS's job
(kernel/vfs/perm.py); plugins enforce only what is their own (read-only
pseudo files, host rights on DrvFs).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from lxsub.kernel.vfs.stat import LinuxStat

if TYPE_CHECKING:
    from lxsub.kernel.call import Call
    from lxsub.kernel.creds import Creds
    from lxsub.kernel.vfs.mount import Mount
    from lxsub.kernel.vfs.node import Node


def _nope(*_a, **_k):
    raise OSError(errno.EROFS, "read-only file system")


class FileSystem:
    fstype = "none"          # as /proc/mounts shows it
    magic = 0                # f_type of statfs(2)
    # POSIX ACLs (system.posix_acl_*): only where permissions are the host's
    # (DrvFs). Elsewhere the Linux mode lives in the provider, and a host ACL
    # would change the host file's rights instead; those file systems have
    # no ACLs, like one mounted `noacl` (acl(5)): EOPNOTSUPP, and programs
    # (cp -p, tar, rsync -A) fall back to chmod.
    host_acls = False
    # Whether a set-user-ID/set-group-ID bit makes an exec take the file's
    # owner (kernel/exec/plan.py). Not on DrvFs: its owners are the host's,
    # which mean nothing inside (host root is not the instance's root).
    set_id_bits = True
    # Whether chown() itself clears the set-id bits as chown(2) does, in the
    # same metadata write (kernel/fs/linuxmeta.py); else the VFS follows it
    # with a chmod.
    chown_clears_set_id = False
    # A host door (kernel/doors.py) the walk checks before every lookup in
    # a directory of this file system (DrvFs); None: no door.
    door = None

    def root(self, mount: "Mount") -> "Node":
        raise NotImplementedError

    # -- lookup -------------------------------------------------------------
    def lookup(self, parent: "Node", name: bytes) -> "Node":
        raise NotImplementedError

    def parent_of(self, node: "Node") -> "Node":
        raise NotImplementedError

    def readlink(self, node: "Node") -> bytes:
        raise OSError(errno.EINVAL, "not a symlink")

    def follow_magic(self, node: "Node") -> "Node | None":
        """For a magic link (/proc/<pid>/fd/N): the file it stands for."""
        return None

    def host_path(self, node: "Node") -> str | None:
        """Where the file is on the host, if it is a host file."""
        return None

    # -- attributes -----------------------------------------------------------
    def getattr(self, node: "Node") -> LinuxStat:
        raise NotImplementedError

    def statfs(self, node: "Node") -> tuple:
        raise NotImplementedError

    chmod = chown = utimens = _nope

    # -- opening --------------------------------------------------------------
    def open(self, node: "Node", flags: int, creds: "Creds") -> int:
        """A host descriptor (provider-side) for the open file."""
        raise NotImplementedError

    def create(self, parent: "Node", name: bytes, flags: int, mode: int, creds: "Creds") -> int:
        _nope()

    def ioctl(self, node: "Node", c: "Call", cmd: int) -> object:
        """A request the filter traps for the provider's own driver
        (kernel/syscalls/ioctl.py), on an open file of this file system;
        what a handler returns. None here: ENOTTY, as vfs_ioctl() answers
        for a file whose f_op has no unlocked_ioctl (ioctl(2))."""
        raise OSError(errno.ENOTTY, "inappropriate ioctl for device")

    # -- directory entries ------------------------------------------------------
    mkdir = mknod = symlink = link = unlink = rmdir = rename = _nope
