"""The file system types lxsub has: one map from type name to factory.

It serves mount(2) (kernel/syscalls/mount.py), the mounts every instance
starts with (kernel/fs/mounts.py), and the lists /proc/filesystems and
sysfs(2) show, in Linux's order of registration (fs/filesystems.c keeps
the registered types in one list, register_filesystem()). A new file
system is one FsType here; what it can do beyond the basics it declares on
FileSystem (kernel/vfs/filesystem.py).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from lxsub.kernel.instance import Instance
    from lxsub.kernel.vfs.filesystem import FileSystem


@dataclass(frozen=True)
class FsType:
    name: str                                       # mount -t, /proc/filesystems
    # (instance, source, mount data) -> a new file system
    make: Callable[["Instance", str, str], "FileSystem"]
    nodev: bool = True                              # needs no block device
    # mount(2) inside the instance may make one; the others are the
    # provider's own (the rootfs; DrvFs views of host directories, which
    # /etc/lx.conf [automount] names; /dev).
    user_mountable: bool = True


def _lxfs(inst: "Instance", source: str, data: str) -> "FileSystem":
    from lxsub.kernel.fs.volfs import VolFs
    return VolFs(source)


def _drvfs(inst: "Instance", source: str, data: str) -> "FileSystem":
    from lxsub.kernel.fs.drvfs import DrvFs
    return DrvFs(inst, source, data)


def _tmpfs(inst: "Instance", source: str, data: str) -> "FileSystem":
    from lxsub.kernel.fs.tmpfs import TmpFs
    return TmpFs(inst, data)


def _proc(inst: "Instance", source: str, data: str) -> "FileSystem":
    from lxsub.kernel.fs.procfs import ProcFs
    return ProcFs(inst)


def _sysfs(inst: "Instance", source: str, data: str) -> "FileSystem":
    from lxsub.kernel.fs.sysfs import SysFs
    return SysFs(inst)


def _cgroup2(inst: "Instance", source: str, data: str) -> "FileSystem":
    from lxsub.kernel.fs.cgroupfs import CgroupFs
    return CgroupFs(inst)


def _devtmpfs(inst: "Instance", source: str, data: str) -> "FileSystem":
    from lxsub.kernel.fs.devfs import DevFs
    return DevFs(inst)


def _devpts(inst: "Instance", source: str, data: str) -> "FileSystem":
    from lxsub.kernel.fs.devfs import DevPts
    return DevPts(inst)


FS_TYPES: tuple[FsType, ...] = (
    FsType("lxfs", _lxfs, nodev=False, user_mountable=False),
    FsType("drvfs", _drvfs, user_mountable=False),
    FsType("tmpfs", _tmpfs),
    FsType("proc", _proc),
    FsType("sysfs", _sysfs),
    FsType("cgroup2", _cgroup2),
    FsType("devtmpfs", _devtmpfs, user_mountable=False),
    FsType("devpts", _devpts),
)
_BY_NAME = {t.name: t for t in FS_TYPES}


def make(inst: "Instance", fstype: str, source: str = "", data: str = "",
         by_user: bool = False) -> "FileSystem":
    """A new file system of type `fstype` for `inst` (`source`: the host
    directory of a host-backed one); ENODEV for a type lxsub does not have
    or, by_user (mount(2)), one the instance may not make: Linux's
    get_fs_type() failing."""
    t = _BY_NAME.get(fstype)
    if t is None or (by_user and not t.user_mountable):
        raise OSError(errno.ENODEV, f"unknown file system type {fstype!r}")
    return t.make(inst, source, data)
