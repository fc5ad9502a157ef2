"""The mounts every instance starts with (like WSL's init mounting /proc...)."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from lxsub.kernel.creds import Creds
from lxsub.kernel.vfs.caller import Caller
from lxsub.kernel.vfs.path import Walker

if TYPE_CHECKING:
    from lxsub.kernel.instance import Instance
    from lxsub.kernel.vfs.node import Node


# (where, file system type in kernel/fs/registry.py, source shown in /proc/mounts)
DEFAULT_MOUNTS = (
    ("/proc", "proc", "proc"),
    ("/dev", "devtmpfs", "udev"),
    ("/dev/pts", "devpts", "devpts"),
    ("/sys", "sysfs", "sysfs"),
    ("/sys/fs/cgroup", "cgroup2", "cgroup2"),
)


def mount_defaults(inst: "Instance", automount=None, tmp: bool = False) -> None:
    """`automount`: the [automount] settings of /etc/lx.conf for DrvFs
    (see drvfs.AutomountSettings; None: the defaults); `tmp`: /tmp as tmpfs."""
    from lxsub.kernel.fs import registry
    for path, fstype, source in DEFAULT_MOUNTS:
        at = resolve_dir(inst, path)
        if at is None:
            continue
        try:
            fs = registry.make(inst, fstype, source)
            inst.vfs.mounts.mount(fs, at, path, source, fs.mount_options)
        finally:
            at.release()
    from lxsub.kernel.fs.drvfs import mount_drvfs
    from lxsub.kernel.fs.tmpfs import mount_default_tmpfs
    mount_default_tmpfs(inst, tmp)
    mount_drvfs(inst, automount)


def resolve_dir(inst: "Instance", path: str):
    """The directory at instance path `path` (walked as root), or None with a
    warning if it is missing; the caller owns the Node."""
    try:
        at = inst.vfs.resolve(path.encode(), Caller(Creds()))
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            inst.log.warn(f"{path} missing in the rootfs: not mounted")
            return None
        raise
    if not at.is_dir():
        at.release()
        inst.log.warn(f"{path} is not a directory: not mounted")
        return None
    return at


def make_dirs(inst: "Instance", path: str) -> "Node":
    """The directory at absolute instance path `path`, made (0755, root's)
    where missing, as root walks it; the caller owns the Node."""
    parts = [p for p in path.split("/") if p and p != "."]
    if ".." in parts or not path.startswith("/"):
        raise OSError(errno.EINVAL, f"{path}: not an absolute path without '..'")
    creds = Creds()
    root = inst.vfs.mounts.root_mount.root()
    walker = Walker(inst.vfs.mounts, root, Caller(creds))
    cur = root.dup()
    try:
        for name in (p.encode() for p in parts):
            try:
                nxt = walker.resolve(cur, name)
            except FileNotFoundError:
                cur.fs.mkdir(cur, name, 0o755, creds)
                nxt = walker.resolve(cur, name)
            cur.release()
            cur = nxt
            if not cur.is_dir():
                raise OSError(errno.ENOTDIR, f"{path}: not a directory")
        out, cur = cur, None
        return out
    finally:
        if cur is not None:
            cur.release()
        root.release()
