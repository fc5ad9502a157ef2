"""/proc/<pid> and /proc/<pid>/task/<tid>: a pico process's directory
(ProcessDir; its files' contents in task_files.py) and /init's (InitDir)."""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

from lxsub.kernel.fs.procfs.ns import ns_entries
from lxsub.kernel.fs.procfs.procmap import MapsFile
from lxsub.kernel.fs.procfs.task_files import TaskFiles, _main_thread, _need, _net_entries
from lxsub.kernel.vfs.pseudo import Dir, Entry, File, HostFile, HostOpen, Link, read_host

if TYPE_CHECKING:
    from lxsub.kernel.fs.procfs import ProcFs
    from lxsub.kernel.task import Process, Task

# Per-process files passed through from the host as they are (numbers only).
_PID_HOST = {"statm": 0o444, "limits": 0o444, "io": 0o400, "personality": 0o400,
             "oom_score": 0o444, "schedstat": 0o444, "wchan": 0o444, "auxv": 0o400}
# ... of which these need the right to inspect the process (ptrace read).
_PID_INSPECT = ("io", "personality", "auxv", "wchan")


def process_of_dir(inst, fd: int) -> "Process | None":
    """The process whose /proc/<pid> directory the provider-side descriptor
    fd is (as opened by a program), or None."""
    try:
        node = inst.vfs.node_for_host_fd(fd, os.fstat(fd))
    except OSError:
        return None
    e = node.obj if node is not None else None
    if isinstance(e, ProcessDir) and e.thread is None:
        return e.proc
    if isinstance(e, InitDir) and e.path == "/1":
        return inst.init
    return None


class ProcessDir(TaskFiles, Dir):
    """/proc/<pid> (thread None) or /proc/<pid>/task/<tid> of a pico process."""

    def __init__(self, fs: ProcFs, path: str, proc: "Process", thread: "Task | None") -> None:
        super().__init__(path, None, 0o555)
        self.fs = fs
        self.proc = proc
        self.thread = thread
        host = thread.host_tid if thread else proc.host_pid
        self.hp = f"/proc/{proc.host_pid}/task/{host}" if thread else f"/proc/{host}"
        self.owner_of = self._owner

    @property
    def key(self) -> str:
        """Another process given the same pid later has another directory
        (proc's inodes are made per pid, fs/proc/base.c proc_pid_make_inode):
        st_ino tells a reopened /proc/<pid> from the one a program kept."""
        return f"{self.path}#{self.hp}"

    def _task(self):
        return _need(self.thread or _main_thread(self.proc))

    def _mounts(self):
        """The mount namespace of the process (of the thread: tasks of one
        process may be in different ones)."""
        return self.fs.inst.vfs.mounts_of(self._task())

    def _owner(self) -> tuple[int, int]:
        task = self.thread or _main_thread(self.proc)
        c = task.creds if task is not None else self.proc.exit_creds   # a zombie's
        if c is None:
            raise OSError(errno.ENOENT, "process is gone")
        return c.euid, c.egid

    def children(self, task) -> dict[str, Entry]:
        p, proc, fs, inst, hp = self.path, self.proc, self.fs, self.fs.inst, self.hp

        def mine(e: Entry) -> Entry:
            e.owner_of = self._owner
            return e
        entries: dict[str, Entry] = {
            "exe": Link(p + "/exe", lambda t: self._inspect(t) or proc.exe, magic=True),
            "cwd": Link(p + "/cwd", lambda t: self._inspect(t) or inst.vfs.vpath_of(self._task().fs.cwd),
                        magic=True),
            "root": Link(p + "/root",
                         lambda t: self._inspect(t) or inst.vfs.vpath_of(self._task().fs.root), magic=True),
            "cmdline": File(p + "/cmdline", lambda t: self._cmdline()),
            "comm": File(p + "/comm", lambda t: proc.comm.encode() + b"\n",
                         write=self._set_comm, mode=0o444),
            "stat": File(p + "/stat", lambda t: self._stat(t)),
            "status": File(p + "/status", lambda t: self._status(t)),
            "maps": MapsFile(p + "/maps", lambda t: self._inspect(t) or self._maps("maps"), hp,
                             inst.vfs),
            "smaps": File(p + "/smaps", lambda t: self._inspect(t) or self._maps("smaps")),
            "smaps_rollup": File(p + "/smaps_rollup",
                                 lambda t: self._inspect(t) or self._maps("smaps_rollup")),
            "environ": File(p + "/environ", lambda t: self._inspect(t) or read_host(hp + "/environ"),
                            mode=0o400),
            "oom_score_adj": File(p + "/oom_score_adj", lambda t: b"%d\n" % proc.oom_score_adj,
                                  write=self._set_oom_score_adj, mode=0o444),
            "timens_offsets": File(p + "/timens_offsets", lambda t: _timens().offsets_text(self._task()),
                                   write=lambda t, data: _timens().write_offsets(t, self._task(), data)),
            "mounts": File(p + "/mounts", lambda t: fs.mounts_text(self._mounts())),
            "mountinfo": File(p + "/mountinfo", lambda t: fs.mountinfo_text(self._mounts())),
            "cgroup": File(p + "/cgroup", lambda t: b"0::/\n"),
            "fd": Dir(p + "/fd", lambda t: self._inspect(t) or self._fds(), 0o500),
            "fdinfo": Dir(p + "/fdinfo", lambda t: self._inspect(t) or self._fdinfos(), 0o500),
            "net": Dir(p + "/net", lambda t: _net_entries(p + "/net")),
            "ns": Dir(p + "/ns", lambda t: ns_entries(fs, p + "/ns", self._inspect, self._task), 0o511),
            "mem": HostOpen(p + "/mem", lambda t, flags: self._open_mem(t, flags, hp + "/mem")),
            "pagemap": HostOpen(p + "/pagemap", lambda t, flags: self._open_pagemap(t, hp + "/pagemap"),
                                mode=0o400),
        }
        for name, mode in _PID_HOST.items():
            entries[name] = HostFile(f"{p}/{name}", f"{hp}/{name}", mode)
            if name in _PID_INSPECT:
                entries[name].read = lambda t, h=f"{hp}/{name}": self._inspect(t) or read_host(h)
        # A dynamic program's auxv as its exec patched it (kernel/exec/mapping.py).
        entries["auxv"].read = lambda t, h=f"{hp}/auxv": self._inspect(t) or proc.auxv or read_host(h)
        if self.thread is None:
            entries["task"] = Dir(p + "/task", lambda t: self._threads())
        else:
            entries["children"] = File(p + "/children", lambda t: self._children())
        for e in entries.values():
            mine(e)
        return dict(sorted(entries.items()))

    # -- contents -------------------------------------------------------------

    def _inspect(self, t) -> None:
        """Linux lets a process look into another's memory map, environment,
        descriptors and links only if it could ptrace it for reading (same
        fsuid/fsgid as all of its ids, and dumpable; or CAP_SYS_PTRACE)."""
        if t is None or t.process is self.proc:
            return None
        if t.creds.may_ptrace_read(self._task().creds, self.proc.dumpable):
            return None
        raise OSError(errno.EACCES, "permission denied")

    def _open_mem(self, t: "Task | None", flags: int, host: str) -> int:
        """/proc/<pid>/mem (fs/proc/base.c mem_open): PTRACE_MODE_ATTACH by
        the instance's credentials and yama (kernel/ptrace.py may_attach),
        the process itself always; then the host's file, whose reads and
        writes go through read-only text as a debugger's must."""
        if t is not None and t.process is not self.proc and \
                not self.fs.inst.ptrace.may_attach(t, self._task()):
            raise OSError(errno.EACCES, "permission denied")
        return os.open(host, (flags & os.O_ACCMODE) | os.O_CLOEXEC)

    def _open_pagemap(self, t: "Task | None", host: str) -> int:
        """/proc/<pid>/pagemap (fs/proc/task_mmu.c pagemap_open): PTRACE_MODE_READ
        by the instance's credentials, then the host's file, read-only. Its
        entries are the host's: page frame numbers are zero unless the host
        user has CAP_SYS_ADMIN on the host (pagemap_read), as for any of
        its processes."""
        self._inspect(t)
        return os.open(host, os.O_RDONLY | os.O_CLOEXEC)

    def _is_caller(self, t: "Task | None") -> bool:
        """Whether this is the task reading the file (t): it is running (in
        the system call the provider is answering), whatever the host says."""
        return (self.thread or _main_thread(self.proc)) is t

    def _threads(self) -> dict[str, Entry]:
        out = {}
        for th in sorted(list(self.proc.threads.values()), key=lambda th: th.tid):
            out[str(th.tid)] = ProcessDir(self.fs, f"{self.path}/task/{th.tid}", self.proc, th)
        return out


def _inspect_init(t) -> None:
    """As ProcessDir._inspect for /init, which is root's with every capability."""
    from lxsub.kernel.creds import Creds
    if t is not None and not t.creds.may_ptrace_read(Creds(), True):
        raise OSError(errno.EACCES, "permission denied")


class InitDir(Dir):
    """/proc/1: /init, the provider. Its numbers are its own (it is a host
    process like the others), its files and memory the provider's business."""

    def __init__(self, fs: ProcFs, path: str) -> None:
        super().__init__(path, None, 0o555)
        self.fs = fs

    def children(self, task) -> dict[str, Entry]:
        p, fs = self.path, self.fs
        entries: dict[str, Entry] = {
            "exe": Link(p + "/exe", lambda t: "/init"),
            "cwd": Link(p + "/cwd", lambda t: "/"),
            "root": Link(p + "/root", lambda t: "/"),
            "cmdline": File(p + "/cmdline", lambda t: b"/init\0"),
            "comm": File(p + "/comm", lambda t: b"init\n"),
            "stat": File(p + "/stat", lambda t: self._stat(t)),
            "status": File(p + "/status", lambda t: self._status(t)),
            "statm": File(p + "/statm", lambda t: b"0 0 0 0 0 0 0\n"),
            "fd": Dir(p + "/fd", lambda t: {}, 0o500),
            "fdinfo": Dir(p + "/fdinfo", lambda t: {}, 0o500),
            "maps": File(p + "/maps", lambda t: b""),
            "environ": File(p + "/environ", lambda t: b"", mode=0o400),
            "limits": HostFile(p + "/limits", "/proc/self/limits"),
            "mounts": File(p + "/mounts", lambda t: fs.mounts_text()),
            "mountinfo": File(p + "/mountinfo", lambda t: fs.mountinfo_text()),
            "cgroup": File(p + "/cgroup", lambda t: b"0::/\n"),
            "net": Dir(p + "/net", lambda t: _net_entries(p + "/net")),
            "ns": Dir(p + "/ns", lambda t: ns_entries(fs, p + "/ns", _inspect_init), 0o511),
        }
        if "/task/" in p:
            entries["children"] = File(p + "/children", lambda t: self._children())
        else:
            entries["task"] = Dir(p + "/task", lambda t: {"1": InitDir(fs, p + "/task/1")})
        return dict(sorted(entries.items()))

    def _children(self) -> bytes:
        kids = sorted(c.pid for c in list(self.fs.inst.init.children) if not c.exited)
        return "".join(f"{k} " for k in kids).encode()

    def _stat(self, t: "Task | None") -> bytes:
        # state ppid pgrp session tty tpgid flags; minflt cminflt majflt
        # cmajflt utime stime cutime cstime; priority nice threads itreal
        # starttime; then vsize rss... (52 fields in all).
        fields = ["S", "0", "1", "1", "0", "-1", "4194560"] + ["0"] * 8 \
            + ["20", "0", "1", "0", "0"] + ["0"] * 30
        return f"1 (init) {' '.join(fields)}\n".encode()

    def _status(self, t: "Task | None") -> bytes:
        return (b"Name:\tinit\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t1\nNgid:\t0\nPid:\t1\n"
                b"PPid:\t0\nTracerPid:\t0\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n"
                b"NStgid:\t1\nNSpid:\t1\nNSpgid:\t1\nNSsid:\t1\nThreads:\t1\n")


def _timens():
    """kernel/timens.py (imported late: it needs kernel objects procfs is below)."""
    from lxsub.kernel import timens
    return timens
