"""The mounts every instance starts with (like WSL's init mounting /proc...)."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from lxsub.kernel.creds import Creds
from lxsub.kernel.vfs.path import Walker

if TYPE_CHECKING:
    from lxsub.kernel.instance import Instance


def mount_defaults(inst: "Instance", automount=None, tmp: bool = False) -> None:
    """`automount`: the [automount] settings of /etc/lx.conf for DrvFs
    (see drvfs.AutomountSettings; None: the defaults); `tmp`: /tmp as tmpfs."""
    for path, make, source in _defaults():
        _mount_if_dir(inst, path, make(inst), source)
    from lxsub.kernel.fs.drvfs import mount_drvfs
    from lxsub.kernel.fs.tmpfs import mount_default_tmpfs
    mount_default_tmpfs(inst, tmp)
    mount_drvfs(inst, automount)


def _defaults():
    from lxsub.kernel.fs.devfs import DevFs, DevPts
    from lxsub.kernel.fs.procfs import ProcFs
    from lxsub.kernel.fs.sysfs import SysFs
    from lxsub.kernel.fs.cgroupfs import CgroupFs
    return [
        ("/proc", ProcFs, "proc"),
        ("/dev", DevFs, "udev"),
        ("/dev/pts", DevPts, "devpts"),
        ("/sys", SysFs, "sysfs"),
        ("/sys/fs/cgroup", CgroupFs, "cgroup2"),
    ]


def _mount_if_dir(inst: "Instance", path: str, fs, source: str) -> None:
    root = inst.mounts.root_mount.root()
    try:
        at = Walker(inst.mounts, root, Creds()).resolve(root, path.encode())
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            inst.log.warn(f"{path} missing in the rootfs: not mounted")
            return
        raise
    finally:
        root.release()
    try:
        if at.is_dir():
            inst.mounts.mount(fs, at, path, source, getattr(fs, "mount_options", None) or "rw")
    finally:
        at.release()


def resolve_dir(inst: "Instance", path: str):
    """The directory at instance path `path` (walked as root), or None with a
    warning if it is missing; the caller owns the Node."""
    root = inst.mounts.root_mount.root()
    try:
        at = Walker(inst.mounts, root, Creds()).resolve(root, path.encode())
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            inst.log.warn(f"{path} missing in the rootfs: not mounted")
            return None
        raise
    finally:
        root.release()
    if not at.is_dir():
        at.release()
        inst.log.warn(f"{path} is not a directory: not mounted")
        return None
    return at
