"""DevFs: the instance's /dev, with the devices that are safe to share."""

from __future__ import annotations

import os
import stat as st

from lxsub.kernel.fs import devices
from lxsub.kernel.fs.hostfs import HostFs
from lxsub.kernel.vfs.node import Node
from lxsub.kernel.vfs.pseudo import Device, Link, PseudoFs, StaticDir

TMPFS_MAGIC = 0x01021994
DEVPTS_MAGIC = 0x1CD1

_CHAR_DEVICES = {
    "null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9),
    "tty": (5, 0), "console": (5, 1), "ptmx": (5, 2),
}
_LINKS = {
    "fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2", "core": "/proc/kcore",
}


class DevFs(PseudoFs):
    fstype = "devtmpfs"
    magic = TMPFS_MAGIC

    def __init__(self, inst) -> None:
        super().__init__(inst)
        root = StaticDir("/", 0o755)
        for name, (major, minor) in _CHAR_DEVICES.items():
            mode = 0o620 if name == "console" else 0o666
            root.add(Device("/" + name, st.S_IFCHR, os.makedev(major, minor), mode))
        for name, target in _LINKS.items():
            root.add(Link("/" + name, lambda _t, target=target: target))
        # LxBus (docs/LXBUS.md): any user of the instance may open it.
        self._lxbus = root.add(Device("/lxbus", st.S_IFCHR, devices.LXBUS_RDEV, 0o666))
        root.add(StaticDir("/pts", 0o755))
        root.add(StaticDir("/shm", 0o1777))
        root.add(StaticDir("/mqueue", 0o1777))
        self._root = root

    def root_entry(self) -> StaticDir:
        return self._root

    def node_from_host(self, mount, fd: int, host: str, s: os.stat_result) -> Node | None:
        if devices.is_lxbus(s):          # fstat and /proc/<pid>/fd show /dev/lxbus
            return Node(mount, fd, None, self._lxbus)
        return super().node_from_host(mount, fd, host, s)


class DevPts(HostFs):
    """The host's pseudo terminals: a pty opened inside is a host pty, so
    terminal programs and the user's own terminal work as they are."""
    fstype = "devpts"
    magic = DEVPTS_MAGIC
    read_only = True

    def __init__(self, inst) -> None:
        super().__init__("/dev/pts")
        self.inst = inst

    def getattr(self, node):
        from lxsub.kernel.vfs.fdview import map_host_gid, map_host_uid
        a = super().getattr(node)
        # A pty's device number is the host's (136 + N / 256, N % 256): it is
        # what opening the node reaches (kernel/fs/devices.py), and what
        # ttyname(3) and apt's pty log compare; without it the open is ENXIO.
        a.rdev = node.host_st.st_rdev
        task = self.inst.current_task
        if task is not None:
            a.uid = map_host_uid(task, a.uid)
            a.gid = a.gid if a.gid == 5 else map_host_gid(task, a.gid)   # 5: tty
        return a
