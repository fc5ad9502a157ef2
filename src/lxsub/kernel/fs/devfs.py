"""DevFs: the instance's /dev, with the devices that are safe to share."""

from __future__ import annotations

import errno
import fcntl
import os
import stat as st
import struct

from lxsub.abi.limits import OVERFLOW_ID
from lxsub.abi.magic import DEVPTS_SUPER_MAGIC as DEVPTS_MAGIC, TMPFS_MAGIC
from lxsub.kernel.fs import devices, loopdev, lxbusdev
from lxsub.kernel.fs.hostfs import HostFs
from lxsub.kernel.fs.lxattr import LxMeta
from lxsub.kernel.vfs.node import Node
from lxsub.kernel.vfs.pseudo import Device, Link, PseudoFs, StaticDir

TTY_GID = 5            # devpts mounted gid=5,mode=620, as Debian's does: group tty
PTY_MODE = 0o620
TIOCGPTN = 0x80045430  # _IOR('T', 0x30, unsigned int): not in Python's termios

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
        root = _DevRoot(self)
        # An open device is a host device: fstat of it must be the node
        # stat gives (one file, one identity: install(1) compares them).
        self._by_rdev: dict[int, Device] = {}
        for name, (major, minor) in _CHAR_DEVICES.items():
            mode = 0o620 if name == "console" else 0o666
            dev = root.add(Device("/" + name, st.S_IFCHR, os.makedev(major, minor), mode))
            self._by_rdev.setdefault(dev.rdev, dev)
        for (major, minor), path in devices.HOST_MISC.items():
            name = os.path.basename(path)
            dev = root.add(Device("/" + name, st.S_IFCHR, os.makedev(major, minor),
                                  devices.DYNAMIC_MISC[name]))
            self._by_rdev.setdefault(dev.rdev, dev)
        for name, target in _LINKS.items():
            root.add(Link("/" + name, lambda _t, target=target: target))
        # LxBus (docs/LXBUS.md): any user of the instance may open it.
        self._lxbus = root.add(lxbusdev.LxBusDevice("/lxbus"))
        # The loop driver (kernel/fs/loopdev.py): root:disk 0660, as udev makes them.
        self._loop_control = root.add(_disk_node("/loop-control", st.S_IFCHR, loopdev.CONTROL_RDEV))
        self._loops: dict[int, Device] = {}
        root.add(StaticDir("/pts", 0o755))
        root.add(StaticDir("/shm", 0o1777))
        root.add(StaticDir("/mqueue", 0o1777))
        self._root = root

    def root_entry(self) -> StaticDir:
        return self._root

    def loop_nodes(self) -> dict[str, Device]:
        """/dev/loopN for each loop device the instance has (devtmpfs adds
        and removes them with the devices)."""
        numbers = sorted(self.inst.vfs.loops.devices)
        for n in numbers:
            if n not in self._loops:
                self._loops[n] = _disk_node(f"/loop{n}", st.S_IFBLK, os.makedev(loopdev.LOOP_MAJOR, n))
        return {f"loop{n}": self._loops[n] for n in numbers}

    def node_from_host(self, mount, fd: int, host: str, s: os.stat_result) -> Node | None:
        loops = self.inst.vfs.loops
        if loops.is_control(s):
            return Node(mount, fd, None, self._loop_control)
        dev = loops.device_of(s)
        if dev is not None:                # an open /dev/loopN: its view of the device
            return Node(mount, fd, None, self.loop_nodes().get(f"loop{dev.number}"))
        if lxbusdev.is_device(s):          # fstat and /proc/<pid>/fd show /dev/lxbus
            return Node(mount, fd, None, self._lxbus)
        if st.S_ISCHR(s.st_mode) and devices.host_path_of(st.S_IFCHR, s.st_rdev) == host:
            dev = self._by_rdev.get(s.st_rdev)
            if dev is not None:
                return Node(mount, fd, None, dev)
        return super().node_from_host(mount, fd, host, s)


class _DevRoot(StaticDir):
    """/dev: its fixed entries and the loop devices of the moment."""

    def __init__(self, devfs: DevFs) -> None:
        super().__init__("/", 0o755)
        self._devfs = devfs

    def children(self, task) -> dict:
        return {**self.entries, **self._devfs.loop_nodes()}


def _disk_node(path: str, kind: int, rdev: int) -> Device:
    node = Device(path, kind, rdev, 0o660)
    node.gid = loopdev.DISK_GID
    return node


def pty_index(master_fd: int) -> int:
    """The slave number of a pty master (TIOCGPTN)."""
    return struct.unpack("I", fcntl.ioctl(master_fd, TIOCGPTN, b"\0" * 4))[0]


class PtyOwners:
    """The Linux view of the instance's ptys: owner, group and mode of each
    slave, which devpts gives the opener of /dev/ptmx (uid, group tty, 0620)
    and lets its owner and root change (grantpt(3), sshd, screen).

    Kept by host inode and checked by the slave's host ctime: a slave made
    anew for the same number is another file.
    """

    def __init__(self) -> None:
        self._by_ino: dict[int, tuple[int, LxMeta]] = {}

    def opened_master(self, master_fd: int, uid: int) -> None:
        """/dev/ptmx was opened: its new slave is the opener's (devpts(5), pty(7))."""
        try:
            self.opened(pty_index(master_fd), uid)
        except OSError:
            pass

    def opened(self, index: int, uid: int) -> None:
        s = os.stat(f"/dev/pts/{index}")
        self.set(s, LxMeta(st.S_IFCHR | PTY_MODE, uid, TTY_GID, s.st_rdev))

    def set(self, s: os.stat_result, meta: LxMeta) -> None:
        if len(self._by_ino) > 4096:      # ptys of the past: drop those that are gone
            # (devpts numbers its inodes pty index + 3)
            self._by_ino = {k: v for k, v in self._by_ino.items() if os.path.exists(f"/dev/pts/{k - 3}")}
        self._by_ino[s.st_ino] = (s.st_ctime_ns, meta)

    def view(self, s: os.stat_result) -> LxMeta | None:
        found = self._by_ino.get(s.st_ino)
        if found is not None and found[0] == s.st_ctime_ns:
            return found[1]
        return None


class DevPts(HostFs):
    """The host's pseudo terminals: a pty opened inside is a host pty, so
    terminal programs and the user's own terminal work as they are. Their
    owners and modes are the instance's (PtyOwners); a pty the instance did
    not open shows the host user as root, others' as nobody."""
    fstype = "devpts"
    magic = DEVPTS_MAGIC

    def __init__(self, inst) -> None:
        super().__init__("/dev/pts")
        self.inst = inst

    def _meta(self, s: os.stat_result) -> LxMeta:
        found = self.inst.vfs.ptys.view(s)
        if found is not None:
            return found
        if not st.S_ISCHR(s.st_mode):
            return LxMeta(s.st_mode, 0, 0, 0)      # the directory, ptmx
        uid = 0 if s.st_uid in (0, os.getuid()) else OVERFLOW_ID
        gid = s.st_gid if s.st_gid in (0, TTY_GID) else 0 if s.st_gid == os.getgid() else OVERFLOW_ID
        return LxMeta(s.st_mode, uid, gid, s.st_rdev)

    def getattr(self, node, caller):
        from lxsub.kernel.vfs.stat import LinuxStat
        s = self.fresh_stat(node)
        m = self._meta(s)
        return LinuxStat.from_host(s, m.mode, m.uid, m.gid, s.st_rdev)

    def chmod(self, node: Node, mode: int, caller) -> None:
        s = self.fresh_stat(node)
        self._change(s, lambda m: LxMeta(st.S_IFMT(m.mode) | (mode & 0o7777), m.uid, m.gid, m.rdev))

    def chown(self, node: Node, uid: int, gid: int, caller) -> None:
        s = self.fresh_stat(node)
        self._change(s, lambda m: LxMeta(m.mode, m.uid if uid < 0 else uid, m.gid if gid < 0 else gid,
                                         m.rdev))

    def _change(self, s: os.stat_result, change) -> None:
        if not st.S_ISCHR(s.st_mode):
            raise OSError(errno.EPERM, "devpts: only the terminals' attributes change")
        self.inst.vfs.ptys.set(s, change(self._meta(s)))

    def utimens(self, node: Node, atime, mtime) -> None:
        raise OSError(errno.EPERM, "devpts: times are the host's")

    def _no_entries(self, *_args, **_kw):
        # devpts has no create, mkdir, link... operations: vfs_*() give EPERM.
        raise OSError(errno.EPERM, "devpts: terminals come from /dev/ptmx")

    create = open_tmpfile = mkdir = mknod = symlink = link = unlink = rmdir = rename = _no_entries
