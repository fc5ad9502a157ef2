"""ProcFs: the instance's own /proc — its processes only, with virtual PIDs.

Per-process files are the host's (/proc/<host pid>/...) with every id,
path and credential rewritten to what the instance sees; system-wide files
are computed for the instance (uptime and boot time since it started, its
hostname, its mount table, its process counts) or are the host's where the
instance shares the host's (CPUs, memory, kernel tunables).

/init (PID 1) is the provider itself: it shows as a process of its own,
without the host details of the Python process behind it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from lxsub.abi.magic import PROC_SUPER_MAGIC
from lxsub.kernel import keys
from lxsub.kernel.fs.procfs import sysvipc
from lxsub.kernel.fs.procfs.ns import NsLink
from lxsub.kernel.fs.procfs.sys import SysTree
from lxsub.kernel.fs.procfs.task import InitDir, ProcessDir, process_of_dir
from lxsub.kernel.fs.procfs.task_files import FdLink, MountFiles
from lxsub.kernel.fs.procfs.tasks import ProcRoot
from lxsub.kernel.fs.procfs.tasks_files import (_PASSTHROUGH, HZ, Boot, TasksFiles, _cgroups,
                                                _filesystems, boot_of,
                                                task_count)
from lxsub.kernel.vfs.node import Node
from lxsub.kernel.vfs.pseudo import Dir, File, HostFile, Link, PseudoFs, StaticDir

if TYPE_CHECKING:
    from lxsub.kernel.task import Process, Task

__all__ = ["PROC_SUPER_MAGIC", "HZ", "Boot", "FdLink", "InitDir", "ProcFs", "ProcRoot", "ProcessDir",
           "boot_of", "process_of_dir", "task_count"]



class ProcFs(TasksFiles, MountFiles, SysTree, PseudoFs):
    fstype = "proc"
    magic = PROC_SUPER_MAGIC
    mount_options = "rw,nosuid,nodev,noexec,relatime"

    def __init__(self, inst) -> None:
        super().__init__(inst)
        boot = self.boot = boot_of(inst)
        self.start_mono, self.start_wall = boot.mono, boot.wall
        self.start_jiffies, self.start_idle, self.boot_id = boot.jiffies, boot.idle, boot.boot_id
        self._static = self._build_static()
        self._root = ProcRoot(self)

    def root_entry(self) -> Dir:
        return self._root

    # -- the tree ---------------------------------------------------------------

    def _build_static(self) -> StaticDir:
        static = StaticDir("/")
        static.add(Link("/self", lambda t: str(t.pid)))
        static.add(Link("/thread-self", lambda t: f"{t.pid}/task/{t.tid}"))
        static.add(Link("/mounts", lambda t: "self/mounts"))
        static.add(Link("/net", lambda t: "self/net"))
        static.add(File("/uptime", self._uptime))
        static.add(File("/stat", self._stat))
        static.add(File("/loadavg", self._loadavg))
        static.add(File("/version", lambda t: self._version()))
        static.add(File("/filesystems", lambda t: _filesystems()))
        static.add(File("/cgroups", lambda t: _cgroups()))
        static.add(File("/cmdline", lambda t: b"BOOT_IMAGE=/lxsub init=/init\n"))
        for name in _PASSTHROUGH:         # those any host user may read
            try:
                if name == "partitions":
                    static.add(File("/partitions", lambda t: self._partitions()))
                elif os.stat("/proc/" + name).st_mode & 0o004:
                    static.add(HostFile("/" + name, "/proc/" + name))
            except OSError:
                continue
        static.add(self._sys_tree())
        for entry in (*keys.proc_entries(self.inst), *sysvipc.proc_entries(self.inst)):
            static.add(entry)
        return static

    def _partitions(self) -> bytes:
        """The host's disks (the instance's files are on them), less the
        host's loop devices, and the instance's own loop devices."""
        from lxsub.kernel.fs import loopdev
        try:
            with open("/proc/partitions") as f:
                host = f.read().splitlines()
        except OSError:
            host = []
        head = host[:2] if host else ["major minor  #blocks  name", ""]
        rows = [r for r in host[2:] if r.split() and r.split()[0] != str(loopdev.LOOP_MAJOR)]
        rows += loopdev.partitions_lines(self.inst.vfs.loops)
        return ("\n".join(head + rows) + "\n").encode()

    def process_dir(self, proc: "Process", thread: "Task | None" = None,
                    path: str | None = None) -> "Dir":
        if path is None:
            path = f"/{proc.pid}"
        if proc.is_init():
            return InitDir(self, path)
        return ProcessDir(self, path, proc, thread)

    # -- magic links ---------------------------------------------------------

    def cant_mount(self, node: Node) -> bool:
        """A /proc/<pid>/fd/N link itself (reached through an O_PATH|O_NOFOLLOW
        descriptor of it) is no mount point: Linux d80b065bb172 marks these
        dentries dont_mount, so a mount there is ENOENT."""
        return isinstance(node.obj, FdLink)

    def follow_magic(self, node: Node, caller) -> Node | None:
        e = node.obj
        if isinstance(e, FdLink):
            return e.open_target(self.inst)
        if isinstance(e, NsLink):
            return e.open_target(self.inst, caller)
        return None
