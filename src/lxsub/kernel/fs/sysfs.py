"""SysFs: a read-only /sys with what common programs probe.

The instance runs on the host's CPUs, memory and network (it shares the
host's network namespace), so these parts are the host's own files, shown
read-only and only where any host user may read them:

    /sys/devices/system/cpu     online, possible, present, cpuN/ (glibc's
                                get_nprocs, lscpu, nproc, JVMs)
    /sys/devices/system/node    NUMA nodes (libnuma)
    /sys/class/net/<iface>/     the host's interfaces (address, mtu, operstate...)
    /sys/kernel/mm/transparent_hugepage   (allocators, JVMs)
    /sys/kernel/mm/ksm          whether madvise(MADV_MERGEABLE) works
    /sys/class/dmi/id           hardware names (systemd-detect-virt, lshw)
    /sys/fs/cgroup              where CgroupFs is mounted

The instance's own loop devices (kernel/fs/loopdev.py) are under
/sys/devices/virtual/block/loopN, linked from /sys/block, /sys/class/block
and /sys/dev/block, with the attributes losetup(8) and LTP read.

Everything else is absent (ENOENT): no host block devices, buses, modules
or firmware are faked. Host symlinks are not shown (they lead all over the
host's /sys); an interface under class/net is its device's directory.
"""

from __future__ import annotations

import errno
import os
import re

from lxsub.abi.magic import SYSFS_MAGIC
from lxsub.kernel.fs import loopdev
from lxsub.kernel.vfs.pseudo import Dir, Entry, File, HostDir, Link, PseudoFs, StaticDir

# The host's memory manager, whose calls (madvise, mmap) run natively: its
# settings tell what they do (MADV_MERGEABLE works where the host has KSM,
# which /sys/kernel/mm/ksm shows: madvise(2)).
_HOST_MM = ("/kernel/mm/transparent_hugepage", "/kernel/mm/ksm")
_CPU_TOP = re.compile(r"cpu\d+|online|possible|present|offline|kernel_max|isolated|smt"
                      r"|vulnerabilities|modalias")


class SysFs(PseudoFs):
    fstype = "sysfs"
    magic = SYSFS_MAGIC
    mount_options = "ro,nosuid,nodev,noexec,relatime"

    def __init__(self, inst, host: str = "/sys") -> None:
        super().__init__(inst)
        self.host = host
        root = StaticDir("/", 0o555)
        devices = root.add(StaticDir("/devices"))
        system = devices.add(StaticDir("/devices/system"))
        virtual = devices.add(StaticDir("/devices/virtual"))
        virtual.add(Dir("/devices/virtual/block", self._loop_dirs))
        root.add(Dir("/block", lambda _t: self._loop_links("/block", "..")))
        dev = root.add(StaticDir("/dev"))
        dev.add(Dir("/dev/block", lambda _t: self._loop_links("/dev/block", "../..", by_number=True)))
        self._mirror(system, "/devices/system/cpu", keep=_CPU_TOP.fullmatch)
        self._mirror(system, "/devices/system/node")
        cls = root.add(StaticDir("/class"))
        cls.add(Dir("/class/net", self._net))
        cls.add(Dir("/class/block", lambda _t: self._loop_links("/class/block", "../..")))
        if os.path.isdir(host + "/class/dmi/id"):
            dmi = cls.add(StaticDir("/class/dmi"))
            dmi.add(HostDir("/class/dmi/id", os.path.realpath(host + "/class/dmi/id")))
        kernel = root.add(StaticDir("/kernel"))
        mm_parts = [p for p in _HOST_MM if os.path.isdir(host + p)]
        if mm_parts:
            mm = kernel.add(StaticDir("/kernel/mm"))
            for part in mm_parts:
                self._mirror(mm, part)
        fs = root.add(StaticDir("/fs"))
        fs.add(StaticDir("/fs/cgroup", 0o555))
        self._root = root

    def root_entry(self) -> Dir:
        return self._root

    def _mirror(self, parent: StaticDir, path: str, keep=None) -> None:
        if os.path.isdir(self.host + path):
            parent.add(HostDir(path, self.host + path, keep=lambda n: bool(keep(n)) if keep else True))

    # -- the instance's loop devices (kernel/fs/loopdev.py) ---------------------------

    def _loop_links(self, base: str, up: str, by_number: bool = False) -> dict[str, Entry]:
        """/sys/block/loopN, /sys/class/block/loopN, /sys/dev/block/7:N: links
        to the device's directory under /sys/devices/virtual/block."""
        loops = self.inst.vfs.loops
        out: dict[str, Entry] = {}
        for n in sorted(loops.devices):
            name = f"{loopdev.LOOP_MAJOR}:{n}" if by_number else f"loop{n}"
            target = f"{up}/devices/virtual/block/loop{n}"
            out[name] = Link(f"{base}/{name}", lambda _t, target=target: target)
        return out

    def _loop_dirs(self, _task) -> dict[str, Entry]:
        loops = self.inst.vfs.loops
        with loops.lock:
            loops.settle()
            numbers = sorted(loops.devices)
        return {f"loop{n}": self._loop_dir(n) for n in numbers}

    def _loop_dir(self, n: int) -> Dir:
        base = f"/devices/virtual/block/loop{n}"

        def attr(name: str) -> File:
            return File(f"{base}/{name}", lambda _t: self._loop_attr(n, name))

        def children(_t) -> dict[str, Entry]:
            out: dict[str, Entry] = {name: attr(name) for name in loopdev.DISK_ATTRS}
            out["queue"] = Dir(f"{base}/queue", lambda _t: {
                name: attr("queue/" + name) for name in loopdev.QUEUE_ATTRS})
            dev = self.inst.vfs.loops.devices.get(n)
            if dev is not None and dev.state != loopdev.UNBOUND:     # loop_sysfs_init at binding
                out["loop"] = Dir(f"{base}/loop", lambda _t: {
                    name: attr("loop/" + name) for name in loopdev.LOOP_ATTRS})
            return out
        return Dir(base, children)

    def _loop_attr(self, n: int, name: str) -> bytes:
        loops = self.inst.vfs.loops
        with loops.lock:
            loops.settle()
            dev = loops.devices.get(n)
            if dev is None:
                raise OSError(errno.ENOENT, "no such loop device")
            return loopdev.sysfs_attr(loops, dev, name, self.inst).encode("utf-8", "surrogateescape")

    def _net(self, _task) -> dict[str, Entry]:
        """One directory per host interface: the device directory the host's
        /sys/class/net/<iface> symlink points to."""
        out: dict[str, Entry] = {}
        base = self.host + "/class/net"
        try:
            names = sorted(os.listdir(base))
        except OSError:
            return out
        for name in names:
            real = os.path.realpath(os.path.join(base, name))
            if os.path.isdir(real) and os.path.exists(os.path.join(real, "ifindex")):
                out[name] = HostDir("/class/net/" + name, real)
        return out
