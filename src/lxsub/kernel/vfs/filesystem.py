"""The interface every file system plugin implements (VolFs, DrvFs, ProcFs...).

Operations take resolved Nodes (and a name, for operations on a directory's
entry) plus who asks: the Caller (kernel/vfs/caller.py) where the answer
depends on it (lookups and contents of pseudo files, owners shown by DrvFs,
opening), its credentials where a new file takes its owner from them. They
raise OSError with a Linux errno.
Permission checks that depend on the Linux view are the VFS's job
(kernel/vfs/perm.py); plugins enforce only what is their own (read-only
pseudo files, host rights on DrvFs).
"""

from __future__ import annotations

import errno
import os
from typing import Callable, TYPE_CHECKING

from lxsub.kernel.vfs.stat import LinuxStat

if TYPE_CHECKING:
    from lxsub.kernel.call import Call
    from lxsub.kernel.creds import Creds
    from lxsub.kernel.vfs.caller import Caller
    from lxsub.kernel.vfs.mount import Mount
    from lxsub.kernel.vfs.node import Node


def _nope(*_a, **_k):
    raise OSError(errno.EROFS, "read-only file system")


# How the Vfs finds which mount a host descriptor's file is on (a program's
# fd, a /proc/<pid>/fd link; kernel/vfs/vfs.py, Vfs.node_for_host_fd):
class NotCurrent(Exception):
    """In a provider worker (kernel/workers.py): the answer needs state the
    worker has no current copy of; the provider answers the call instead."""


CLAIM_NONE = 0       # no host files of its own (the anonymous mount)
CLAIM_OWN = 1        # node_from_host says which are its own; asked first
CLAIM_BY_ROOT = 2    # every host file below host_root is its (VolFs, devpts)
CLAIM_REST = 3       # node_from_host, asked last, longest host_root first (DrvFs)


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
    # A host door (kernel/doors.py) the VFS checks before every lookup in
    # a directory of this file system and before changing its files
    # (kernel/vfs/path.py, ops.py); None: no door.
    door = None
    # The host directory its files are in, if the host names them by path.
    host_root: str | None = None
    host_claim = CLAIM_NONE
    # The options /proc/mounts shows for a mount of it (file systems with
    # options of their own, TmpFs and DrvFs, render theirs).
    mount_options = "rw"
    # st_dev of a file system the instance makes up (anon_dev); 0: its
    # files' own host device.
    dev = 0
    # Nothing in it can be written (pseudo files): access(2) W_OK is EROFS.
    read_only = False
    # Its files are the host's own, shown as they are (DrvFs): interop runs
    # them as host programs and names them by their host paths.
    host_view = False

    def root(self, mount: "Mount") -> "Node":
        raise NotImplementedError

    # -- provider workers (kernel/workers.py) ----------------------------------
    def worker_copy(self, still_current: Callable[[], bool]) -> bool:
        """In a provider worker, on its forked copy of this file system:
        make the copy answer lookups and attributes only from the host or
        from memory that `still_current()` proves unchanged since the fork,
        and say True. False (the default): its state lives in the
        provider's memory and changes there; workers pass its calls on."""
        return False

    def watch_memory(self, changing: Callable[[], None]) -> None:
        """In the provider: call changing() before any change of the
        in-memory state a worker_copy reads (only file systems whose
        worker_copy says True have such state)."""

    def unmounted(self) -> None:
        """Its last mount is gone: free what it holds."""

    def for_bind(self, root: "Node") -> "FileSystem":
        """The file system a bind mount of its file `root` shows (itself,
        but where the Vfs finds files by host root: kernel/syscalls/mount.py)."""
        return self

    def check_enter(self, node: "Node", creds: "Creds") -> None:
        """chdir(2)/chroot(2) into its directory `node`: what it refuses
        beyond the VFS's search permission (DrvFs: its door)."""

    # -- lookup -------------------------------------------------------------
    def lookup(self, parent: "Node", name: bytes, caller: "Caller") -> "Node":
        raise NotImplementedError

    def parent_of(self, node: "Node", caller: "Caller") -> "Node":
        raise NotImplementedError

    def readlink(self, node: "Node", caller: "Caller") -> bytes:
        raise OSError(errno.EINVAL, "not a symlink")

    def follow_magic(self, node: "Node", caller: "Caller") -> "Node | None":
        """For a magic link (/proc/<pid>/fd/N): the file it stands for."""
        return None

    def is_magic_link(self, node: "Node") -> bool:
        """A magic link that follow_magic does not jump through but reads
        as a path (openat2's RESOLVE_NO_MAGICLINKS refuses both)."""
        return False

    def cant_mount(self, node: "Node") -> bool:
        """Whether nothing may be mounted on the file (Linux's dont_mount()
        dentries: lock_mount() answers ENOENT)."""
        return False

    def host_path(self, node: "Node") -> str | None:
        """Where the file is on the host, if it is a host file."""
        return None

    def path_in_mount(self, node: "Node") -> str:
        """The file's path below its mount's root ("/" for the root itself):
        the Vfs prefixes the mount's path (d_path, as getcwd(2) shows it)."""
        return "/"

    def node_from_host(self, mount: "Mount", fd: int, host: str,
                       s: os.stat_result) -> "Node | None":
        """A Node (owning fd) if the host descriptor fd, at host path `host`,
        is a file of this mount (host_claim CLAIM_OWN or CLAIM_REST)."""
        return None

    # -- attributes -----------------------------------------------------------
    def getattr(self, node: "Node", caller: "Caller") -> LinuxStat:
        raise NotImplementedError

    def statfs(self, node: "Node") -> tuple:
        raise NotImplementedError

    chmod = chown = utimens = _nope

    # -- opening --------------------------------------------------------------
    def open(self, node: "Node", flags: int, caller: "Caller") -> int:
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

    def open_tmpfile(self, parent: "Node", flags: int, mode: int, creds: "Creds") -> int:
        """O_TMPFILE in the directory `parent` (open(2): EOPNOTSUPP where
        the file system has no unnamed files)."""
        raise OSError(errno.EOPNOTSUPP, "O_TMPFILE not supported here")

    # -- directory entries ------------------------------------------------------
    mkdir = mknod = symlink = link = unlink = rmdir = rename = _nope
