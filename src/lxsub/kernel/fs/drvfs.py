"""DrvFs: host directories mounted inside the instance (by default the host's
`/` at /mnt/host), like WSL's /mnt/c.

Host rules apply. Every lookup and open is the provider's own `openat`
on the host, as the host user, so root inside can read or write only what
the host user can; the Linux-view checks (kernel/vfs/perm.py) come on top
for non-root users inside.

The walk stays in the mount: each step is `openat(dir, name,
O_PATH|O_NOFOLLOW)` from the previous directory, symlinks are read and
followed by the provider (an absolute target is taken from the caller's
root, as for any bind mount: `/etc/x` means the instance's /etc/x), `..` at
the mount's root climbs to the directory the mount covers, and `..` below
it must land under the mount's host root (a directory moved out of it by a
host program cannot be used to step outside). Host pseudo file systems
(/proc, /sys, debugfs, cgroup...) are not entered: they are the host's
processes and kernel, not files (EACCES).

Owners: a file of the host user shows as owned by the caller (or by
`uid=`/`gid=` from the mount options), a file of host root as root's, any
other host user's as 65534 (nobody). chmod and chown are EPERM unless the
mount has the `metadata` option; then the Linux owner, group and mode are
kept in the `user.lxsub.meta` extended attribute as on VolFs, and chmod's
permission bits also go to the host file when the host allows it.

Host doors (kernel/doors.py): only the Linux users `[automount] users`
names may use a DrvFs mount; for the others every lookup, open, creation,
removal and change below its root is EACCES, whatever their capabilities.
Lookups are checked by the walk (kernel/vfs/path.py, which knows whose walk
it is); operations on a resolved file or directory here, with the caller's
credentials (or the current syscall's caller).

lxsub's own storage (kernel/fs/sealed.py) is never shown: a host directory
that is one of it is replaced in the walk by an empty, dead directory that
every operation refuses (EACCES), root included.

No caching: every stat, lookup and open asks the host, so a host program's
changes are seen at once and the instance's are on the host at once.

Deletion: the host is Linux, so host deletion semantics are Linux's. A file
deleted (by the host or inside) while open stays readable and writable
through its open descriptors until the last one closes; a directory removed
by the host while it is a process's cwd leaves that cwd deleted (`getcwd`
still names it; creating files in it fails with ENOENT). Unlike on Windows'
DrvFs, an open file does not block its deletion or renaming.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat as st
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lxsub.abi import magic
from lxsub.abi.limits import OVERFLOW_ID
from lxsub.kernel.fs.hostfs import fd_path
from lxsub.kernel.fs.linuxmeta import HostFile, LinuxMeta, NoStore, XattrStore, xattr_capable
from lxsub.kernel.fs.lxattr import LxMeta
from lxsub.kernel.fs.metatree import MetaTree
from lxsub.kernel.vfs.filesystem import CLAIM_REST
from lxsub.kernel.vfs.mount import anon_dev
from lxsub.kernel.vfs.node import Node
from lxsub.kernel.vfs.stat import LinuxStat

if TYPE_CHECKING:
    from lxsub.kernel.instance import Instance

_HOST_UID = os.getuid()
_HOST_GID = os.getgid()

# Host file systems that are the host's kernel and processes, not files.
_PSEUDO_MAGICS = {
    magic.PROC_SUPER_MAGIC, magic.SYSFS_MAGIC, magic.DEBUGFS_MAGIC, magic.TRACEFS_MAGIC,
    magic.SECURITYFS_MAGIC, magic.BPF_FS_MAGIC, magic.CGROUP_SUPER_MAGIC, magic.CGROUP2_SUPER_MAGIC,
    magic.CONFIGFS_MAGIC, magic.EFIVARFS_MAGIC, magic.PSTOREFS_MAGIC, magic.FUSECTL_SUPER_MAGIC,
    magic.BINFMTFS_MAGIC, magic.NSFS_MAGIC, magic.SELINUX_MAGIC, magic.SMACK_MAGIC,
}

_libc = ctypes.CDLL(None, use_errno=True)
_STATFS_SIZE = 120


def host_statfs(fd: int) -> bytes:
    """The host's struct statfs for a descriptor (O_PATH ones too)."""
    buf = ctypes.create_string_buffer(_STATFS_SIZE)
    if _libc.fstatfs(fd, buf) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return buf.raw


def _fs_type(fd: int) -> int:
    return int.from_bytes(host_statfs(fd)[:8], "little", signed=True)


def _under(path: str, root: str) -> bool:
    return root == "/" and path.startswith("/") or path == root or path.startswith(root + "/")


@dataclass
class DrvFsOptions:
    metadata: bool = False
    uid: int | None = None
    gid: int | None = None

    @classmethod
    def parse(cls, text: str, log=None) -> "DrvFsOptions":
        out = cls()
        for item in (p.strip() for p in (text or "").split(",")):
            if not item or item in ("rw", "defaults", "nometadata"):
                continue
            key, eq, value = item.partition("=")
            try:
                if key == "metadata" and not eq:
                    out.metadata = True
                elif key in ("uid", "gid") and eq:
                    setattr(out, key, int(value))
                else:
                    raise ValueError(item)
            except ValueError:
                if log is not None:
                    log.warn(f"drvfs: unknown mount option {item!r} ignored")
        return out

    def render(self) -> str:
        parts = ["rw"]
        if self.metadata:
            parts.append("metadata")
        if self.uid is not None:
            parts.append(f"uid={self.uid}")
        if self.gid is not None:
            parts.append(f"gid={self.gid}")
        return ",".join(parts)


# Device numbers DrvFs gives the host file systems it shows, one per
# (mount, host file system): anonymous ones (vfs/mount.py anon_dev).
_devs_given: dict[tuple[int, int], int] = {}


class DrvFs(MetaTree):
    fstype = "drvfs"
    host_acls = True
    host_claim = CLAIM_REST
    host_view = True
    set_id_bits = False

    def __init__(self, inst: "Instance", host_root: str, options: str = "") -> None:
        super().__init__(host_root)
        self.opts = DrvFsOptions.parse(options, inst.log)
        self.options = self.opts.render()
        # Host permissions apply: chmod's bits go to the host file when the
        # host lets us; without a record a file shows its host owner.
        self.linux = LinuxMeta(XattrStore() if self.opts.metadata else NoStore(),
                               host_mode=_host_bits, host_chmod_strict=False, host_bits_kept=0o7777,
                               unknown=self._host_view)
        self.door = inst.drvfs_door          # checked by the walk, see kernel/vfs/path.py
        self.storage = inst.storage

    @property
    def mount_options(self) -> str:
        return self.options

    def root(self, mount) -> Node:
        return self._sealed(_not_pseudo(super().root(mount), "host pseudo file system"))

    # -- doors and sealed storage ------------------------------------------------

    def _caller_passes(self, creds) -> None:
        """EACCES unless the caller holds the door."""
        self.door.check(creds)

    def _sealed(self, node: Node) -> Node:
        """node, or the blank in its place if it is lxsub's own storage."""
        s = node.host_st
        if s is None or not st.S_ISDIR(s.st_mode) or not self.storage.is_sealed(s):
            return node
        real = (os.readlink(fd_path(node.fd)), s)
        node.release()
        fd, blank = self.storage.blank()
        return Node(node.mount, fd, blank, obj=real)

    def _not_blank(self, node: Node, code: int = errno.EACCES) -> None:
        if self.storage.is_blank(node.host_st):
            raise OSError(code, "lxsub's own storage is not shown")

    def check_enter(self, node: Node, creds) -> None:
        """chdir/fchdir into a directory here: search permission is the door's,
        and nobody enters sealed storage (chdir(2): EACCES, search denied)."""
        self._caller_passes(creds)
        self._not_blank(node)

    def _entry_not_sealed(self, parent: Node, name: bytes) -> None:
        """Renaming or removing a sealed directory by its name is refused too."""
        self._not_blank(parent)
        try:
            s = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
        except OSError:
            return                # the host's own error comes with the operation
        if st.S_ISDIR(s.st_mode) and self.storage.is_sealed(s):
            raise OSError(errno.EACCES, "lxsub's own storage is not shown")

    # -- the walk: stay on host files, inside the mount --------------------------

    def lookup(self, parent: Node, name: bytes, caller) -> Node:
        self._not_blank(parent)
        node = super().lookup(parent, name, caller)
        if parent.host_st is None or node.host_st.st_dev != parent.host_st.st_dev:
            node = _not_pseudo(node, "host pseudo file system: not entered")
        return self._sealed(node)

    def parent_of(self, node: Node, caller) -> Node:
        self._not_blank(node)
        up = super().parent_of(node, caller)
        if self.host_root != "/":
            try:
                where = os.readlink(fd_path(up.fd))
            except OSError:
                where = ""
            if not _under(where, self.host_root):
                up.release()
                raise OSError(errno.EACCES, "outside the mount")
        return self._sealed(up)

    def node_from_host(self, mount, fd: int, host: str, s: os.stat_result) -> Node | None:
        """Is a host descriptor a file of this mount? The Vfs asks DrvFs
        mounts last, longest host root first (kernel/vfs/vfs.py): only when
        no other file system claims it, and its path leads to it on the host."""
        if self.storage.is_blank(s):
            return Node(mount, fd, s)
        if not _under(host, self.host_root) or self.storage.under(host):
            return None
        try:
            here = os.stat(host, follow_symlinks=False)
        except OSError:
            return None
        if (here.st_dev, here.st_ino) != (s.st_dev, s.st_ino):
            return None
        return Node(mount, fd, s)

    def path_in_mount(self, node: Node) -> str:
        if self.storage.is_blank(node.host_st) and node.obj is not None:
            from lxsub.hostpath import HostMount, to_linux
            shown = to_linux(node.obj[0], [HostMount(_join_root(self.host_root, node.mount.root_path),
                                                     "/")])
            return shown or "/"
        return super().path_in_mount(node)

    def host_path(self, node: Node) -> str | None:
        if self.storage.is_blank(node.host_st):
            return None           # no host program is given lxsub's storage as its cwd
        return super().host_path(node)

    # -- attributes ----------------------------------------------------------------

    def _owner(self, s: os.stat_result, creds) -> tuple[int, int]:
        """The host user's files show as the asker's own (whoever asks, the
        provider uses them with the host user's rights), unless the uid= and
        gid= mount options name their owner. The provider asking for itself
        (creds None) sees them as root's."""
        if s.st_uid == _HOST_UID:
            uid = self.opts.uid if self.opts.uid is not None else creds.fsuid if creds else 0
        else:
            uid = 0 if s.st_uid == 0 else OVERFLOW_ID
        if s.st_gid == _HOST_GID:
            gid = self.opts.gid if self.opts.gid is not None else creds.fsgid if creds else 0
        else:
            gid = 0 if s.st_gid == 0 else OVERFLOW_ID
        return uid, gid

    def _host_view(self, f: HostFile, creds) -> LxMeta:
        """A file with no record: host type and bits, host owner as _owner maps it."""
        uid, gid = self._owner(f.st, creds)
        return LxMeta(f.st.st_mode, uid, gid, f.st.st_rdev)

    def linux_dev(self, host_dev: int) -> int:
        """Every mount has its own st_dev (stat(2)): the host tree under
        /mnt/host must not share the distro's, or `find / -xdev` walks the
        host (the rootfs and the host's / are often one host file system)."""
        key = (id(self), host_dev)
        dev = _devs_given.get(key)
        if dev is None:
            dev = _devs_given[key] = anon_dev()
        return dev

    def getattr(self, node: Node, caller) -> LinuxStat:
        if self.storage.is_blank(node.host_st):
            # An empty directory nobody may enter: d--------- root root.
            shown = node.obj[1] if node.obj is not None else node.host_st
            out = LinuxStat.from_host(shown, st.S_IFDIR, 0, 0, 0)
            out.nlink, out.size = 2, 0
            return out
        out = super().getattr(node, caller)
        out.dev = self.linux_dev(out.dev)
        return out

    def statfs(self, node: Node) -> bytes:
        return host_statfs(node.fd)

    def chmod(self, node: Node, mode: int, caller) -> None:
        # The door: checked by the VFS first (kernel/vfs/ops.py).
        self._not_blank(node, errno.EPERM)
        if not self.opts.metadata:
            raise OSError(errno.EPERM, "chmod on drvfs needs the metadata mount option")
        s = self.fresh_stat(node)
        if st.S_ISLNK(s.st_mode):
            raise OSError(errno.EOPNOTSUPP, "symlinks have no mode")
        with _refused_as_eperm(s):
            super().chmod(node, mode, caller)

    def chown(self, node: Node, uid: int, gid: int, caller) -> None:
        self._not_blank(node, errno.EPERM)
        if not self.opts.metadata:
            raise OSError(errno.EPERM, "chown on drvfs needs the metadata mount option")
        with _refused_as_eperm(self.fresh_stat(node)):
            super().chown(node, uid, gid, caller)

    def utimens(self, node: Node, atime: tuple[int, int], mtime: tuple[int, int]) -> None:
        self._not_blank(node, errno.EPERM)
        super().utimens(node, atime, mtime)

    # -- opening and directory entries: the door, never in sealed storage -------------

    def open(self, node: Node, flags: int, caller) -> int:
        if flags & os.O_PATH:
            return super().open(node, flags, caller)     # no access to the file (open(2))
        self._caller_passes(caller.creds)
        self._not_blank(node)
        return super().open(node, flags, caller)

    def create(self, parent: Node, name: bytes, flags: int, mode: int, creds) -> int:
        self._caller_passes(creds)
        self._not_blank(parent)
        return super().create(parent, name, flags, mode, creds)

    def open_tmpfile(self, parent: Node, flags: int, mode: int, creds) -> int:
        self._caller_passes(creds)
        self._not_blank(parent)
        return super().open_tmpfile(parent, flags, mode, creds)

    def mkdir(self, parent: Node, name: bytes, mode: int, creds) -> None:
        self._caller_passes(creds)
        self._not_blank(parent)
        super().mkdir(parent, name, mode, creds)

    def mknod(self, parent: Node, name: bytes, mode: int, rdev: int, creds) -> None:
        self._caller_passes(creds)
        self._not_blank(parent)
        super().mknod(parent, name, mode, rdev, creds)

    def symlink(self, parent: Node, name: bytes, target: bytes, creds) -> None:
        self._caller_passes(creds)
        self._not_blank(parent)
        super().symlink(parent, name, target, creds)

    # link, unlink, rmdir, rename: the VFS checks the door (kernel/vfs/ops.py).
    def link(self, node: Node, parent: Node, name: bytes) -> None:
        self._not_blank(node)
        self._not_blank(parent)
        super().link(node, parent, name)

    def unlink(self, parent: Node, name: bytes) -> None:
        self._entry_not_sealed(parent, name)
        super().unlink(parent, name)

    def rmdir(self, parent: Node, name: bytes) -> None:
        self._entry_not_sealed(parent, name)
        super().rmdir(parent, name)

    def rename(self, oldp: Node, old: bytes, newp: Node, new: bytes, flags: int = 0) -> None:
        self._entry_not_sealed(oldp, old)
        self._entry_not_sealed(newp, new)      # RENAME_EXCHANGE, or over an empty one
        super().rename(oldp, old, newp, new, flags)

    # -- creating --------------------------------------------------------------------

    def make_device(self, parent: Node, name: bytes, mode: int, rdev: int) -> None:
        if not self.opts.metadata:
            raise OSError(errno.EPERM, "device nodes on drvfs need the metadata mount option")
        super().make_device(parent, name, mode, rdev)


def _host_bits(mode: int) -> int:
    """The host file's bits on DrvFs: the Linux permission bits as they are."""
    return mode & 0o777


@contextmanager
def _refused_as_eperm(s: os.stat_result):
    """chmod/chown with `metadata`: EPERM where the host keeps no record
    (symlinks, FIFOs, sockets) or refuses to write one (not its user's file)."""
    if not xattr_capable(s.st_mode):
        raise OSError(errno.EPERM, "no Linux metadata on host symlinks, FIFOs, sockets")
    try:
        yield
    except OSError as e:
        raise OSError(errno.EPERM, f"host refused the metadata: {e.strerror}") from None


# -- mounting: [automount] of /etc/lx.conf ------------------------------------------

@dataclass
class AutomountSettings:
    """The `[automount]` section of /etc/lx.conf, as plain values.

    enabled: mount DrvFs at all; root: where the host's `/` appears;
    options: DrvFs options for it (`metadata`, `uid=`, `gid=`);
    mounts: extra (host directory, instance directory, options) triples.
    """
    enabled: bool = True
    root: str = "/mnt/host"
    options: str = ""
    mounts: tuple[tuple[str, str, str], ...] = ()


def _not_pseudo(node: Node, why: str) -> Node:
    """node, unless it is on a host pseudo file system (/proc, /sys...): then
    EACCES, and the node is released."""
    try:
        if _fs_type(node.fd) in _PSEUDO_MAGICS:
            raise OSError(errno.EACCES, why)
    except BaseException:
        node.release()
        raise
    return node


def _join_root(host_root: str, root_path: str) -> str:
    """The host directory a DrvFs mount shows: its host root plus its bind path."""
    return os.path.normpath(host_root.rstrip("/") + "/" + root_path.lstrip("/"))


def _mount_source(host: str) -> str:
    """What /proc/mounts shows as the source. Not a path with a slash: df
    would take the host's / for a device and show it instead of the
    instance's own / (both are on the same host file system), as WSL's
    `C:\\` does not either."""
    return "host" if host == "/" else "host:" + host.strip("/").replace("/", "\\")


def mount_drvfs(inst: "Instance", automount: "AutomountSettings | dict | None" = None) -> list:
    """Mount the host directories `automount` asks for (defaults: host `/`
    at /mnt/host). Missing mount points are made in the rootfs, as WSL makes
    /mnt/c. Returns the mounts made."""
    if automount is None:
        settings = AutomountSettings()
    elif isinstance(automount, dict):
        settings = AutomountSettings(**automount)
    else:
        settings = automount
    if not settings.enabled:
        return []
    from lxsub.kernel.fs import registry
    made = []
    for host, path, options in (("/", settings.root, settings.options), *settings.mounts):
        try:
            at = _make_mount_point(inst, path)
        except OSError as e:
            inst.log.warn(f"drvfs: cannot make mount point {path}: {e.strerror}; not mounted")
            continue
        try:
            fs = registry.make(inst, "drvfs", host, options)
            made.append(inst.vfs.mounts.mount(fs, at, _normal(path), _mount_source(host),
                                              fs.mount_options))
        except OSError as e:
            inst.log.warn(f"drvfs: cannot mount host {host} at {path}: {e.strerror}")
        finally:
            at.release()
    return made


def _normal(path: str) -> str:
    return "/" + "/".join(p for p in path.split("/") if p and p != ".")


def _make_mount_point(inst: "Instance", path: str) -> Node:
    from lxsub.kernel.fs.mounts import make_dirs
    if _normal(path) == "/":
        raise OSError(errno.EINVAL, "mount point must be an absolute path below /")
    return make_dirs(inst, path)
