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

import errno
import os
import time
import uuid
import weakref
from typing import TYPE_CHECKING

from lxsub.kernel.creds import CAP_SYS_RESOURCE, Creds
from lxsub.kernel.task import PID_MAX
from lxsub.kernel.vfs.caller import Caller
from lxsub.kernel.vfs.node import Node
from lxsub.kernel.vfs.pseudo import (
    Dir, Entry, File, HostDir, HostFile, Link, PseudoFs, StaticDir, read_host,
)

if TYPE_CHECKING:
    from lxsub.kernel.task import Process, Task
    from lxsub.kernel.vfs.mount import Mount

PROC_SUPER_MAGIC = 0x9FA0
HZ = os.sysconf("SC_CLK_TCK")
# Host-wide files the instance shares as they are: its CPUs, memory, devices.
_PASSTHROUGH = ("meminfo", "cpuinfo", "swaps", "partitions", "diskstats", "vmstat", "zoneinfo",
                "interrupts", "softirqs", "crypto", "devices", "misc", "buddyinfo", "pagetypeinfo",
                # The host kernel's build options: native calls meet that kernel.
                "config.gz")
# /proc/sys/kernel files that are the host's and mean the same inside.
_SYS_KERNEL_HOST = ("ngroups_max", "cap_last_cap", "threads-max", "overflowuid", "overflowgid",
                    "shmmax", "shmall", "shmmni", "msgmax", "msgmnb", "msgmni", "sem",
                    "randomize_va_space", "sched_child_runs_first", "pty/max", "pty/nr",
                    "random/entropy_avail", "random/poolsize", "random/write_wakeup_threshold",
                    "random/urandom_min_reseed_secs", "keys/maxkeys", "keys/maxbytes")
_SYS_FS = ("file-max", "file-nr", "nr_open", "pipe-max-size", "pipe-user-pages-hard",
           "pipe-user-pages-soft", "aio-max-nr", "aio-nr", "dentry-state", "inode-nr",
           "inode-state", "overflowuid", "overflowgid", "lease-break-time", "leases-enable",
           "inotify", "epoll", "mqueue", "protected_symlinks", "protected_hardlinks",
           "protected_fifos", "protected_regular", "suid_dumpable")
# Per-process files passed through from the host as they are (numbers only).
_PID_HOST = {"statm": 0o444, "limits": 0o444, "io": 0o400, "personality": 0o400,
             "oom_score": 0o444, "schedstat": 0o444, "wchan": 0o444, "auxv": 0o400}
# ... of which these need the right to inspect the process (ptrace read).
_PID_INSPECT = ("io", "personality", "auxv", "wchan")
_ESCAPES = str.maketrans({" ": "\\040", "\t": "\\011", "\n": "\\012", "\\": "\\134"})


class Boot:
    """When the instance "booted": the first time anyone asked (its default
    /proc is mounted when it starts). Uptime, boot time, process start
    times and the boot id are the instance's, whichever /proc shows them."""

    def __init__(self) -> None:
        self.mono = time.monotonic()
        self.wall = time.time()
        host_up = read_host("/proc/uptime").split()
        self.jiffies = int(float(host_up[0]) * HZ)     # host uptime then, in ticks
        self.idle = float(host_up[1])
        self.boot_id = str(uuid.uuid4())

    def uptime(self) -> float:
        return time.monotonic() - self.mono


_boots: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def boot_of(inst) -> Boot:
    boot = _boots.get(inst)
    if boot is None:
        boot = _boots[inst] = Boot()
    return boot


def task_count(inst) -> int:
    """Threads of the instance, /init included (sysinfo's procs, pids.current)."""
    return 1 + sum(len(p.threads) for p in list(inst.pids.processes_by_vid.values())
                   if not p.exited and not p.is_init())


class ProcFs(PseudoFs):
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
                if os.stat("/proc/" + name).st_mode & 0o004:
                    static.add(HostFile("/" + name, "/proc/" + name))
            except OSError:
                continue
        static.add(self._sys_tree())
        return static

    def _sys_tree(self) -> StaticDir:
        inst = self.inst
        sys_ = StaticDir("/sys")
        kernel = sys_.add(StaticDir("/sys/kernel"))

        def set_uts(attr: str):
            def write(t, data: bytes) -> None:
                from lxsub.kernel.creds import CAP_SYS_ADMIN
                if t is not None and t.creds.capable(CAP_SYS_ADMIN):
                    setattr(inst.uts, attr, data.decode(errors="replace").strip()[:64])
            return write
        kernel.add(File("/sys/kernel/hostname", lambda t: inst.uts.hostname.encode() + b"\n",
                        write=set_uts("hostname"), mode=0o444))
        kernel.add(File("/sys/kernel/domainname", lambda t: inst.uts.domainname.encode() + b"\n",
                        write=set_uts("domainname"), mode=0o444))
        kernel.add(File("/sys/kernel/osrelease", lambda t: inst.uts.release.encode() + b"\n"))
        kernel.add(File("/sys/kernel/ostype", lambda t: b"Linux\n"))
        kernel.add(File("/sys/kernel/version", lambda t: os.uname().version.encode() + b"\n"))
        kernel.add(File("/sys/kernel/pid_max", lambda t: f"{PID_MAX}\n".encode()))
        kernel.add(File("/sys/kernel/ns_last_pid", lambda t: f"{self._last_pid()}\n".encode()))
        random = kernel.add(StaticDir("/sys/kernel/random"))
        random.add(File("/sys/kernel/random/boot_id", lambda t: self.boot_id.encode() + b"\n"))
        random.add(File("/sys/kernel/random/uuid", lambda t: str(uuid.uuid4()).encode() + b"\n"))
        for name in _SYS_KERNEL_HOST:
            host = "/proc/sys/kernel/" + name
            if not os.path.exists(host) or not os.stat(host).st_mode & 0o004:
                continue
            parent = kernel
            if "/" in name:
                sub = name.split("/")[0]
                parent = kernel.entries.get(sub) or kernel.add(StaticDir("/sys/kernel/" + sub))
            parent.add(HostFile("/sys/kernel/" + name, host))
        sys_.add(HostDir("/sys/fs", "/proc/sys/fs", keep=lambda n: n in _SYS_FS))
        for sub in ("vm", "net"):
            if os.path.isdir("/proc/sys/" + sub):
                sys_.add(HostDir("/sys/" + sub, "/proc/sys/" + sub, views=_SYSCTL_VIEWS))
        return sys_

    def process_dir(self, proc: "Process", thread: "Task | None" = None,
                    path: str | None = None) -> "Dir":
        if path is None:
            path = f"/{proc.pid}"
        if proc.is_init():
            return InitDir(self, path)
        return ProcessDir(self, path, proc, thread)

    # -- system-wide contents ---------------------------------------------------

    def _last_pid(self) -> int:
        nxt = getattr(self.inst.pids, "_next", 2)
        return nxt - 1 if nxt > 2 else PID_MAX - 1

    def _tasks(self):
        for proc in list(self.inst.pids.processes_by_vid.values()):
            if proc.exited or proc.is_init():
                continue
            for task in list(proc.threads.values()):
                yield proc, task

    def _task_states(self, caller: "Task | None") -> list[str]:
        """The state letter of each instance task (and S for /init); the
        caller is running."""
        states = ["S"]
        for proc, task in self._tasks():
            if task is caller:
                states.append("R")
                continue
            try:
                raw = read_host(f"/proc/{proc.host_pid}/task/{task.host_tid}/stat")
                states.append(raw.rpartition(b")")[2].split()[0].decode())
            except (OSError, IndexError):
                continue
        return states

    def _uptime(self, t) -> bytes:
        up = time.monotonic() - self.start_mono
        try:
            idle = max(0.0, float(read_host("/proc/uptime").split()[1]) - self.start_idle)
        except (OSError, IndexError, ValueError):
            idle = 0.0
        return f"{up:.2f} {idle:.2f}\n".encode()

    def _loadavg(self, t) -> bytes:
        loads = read_host("/proc/loadavg").decode().split()[:3]
        states = self._task_states(t)
        running = sum(1 for s in states if s == "R")
        return f"{' '.join(loads)} {running}/{len(states)} {self._last_pid()}\n".encode()

    def _stat(self, t) -> bytes:
        states = None
        lines = []
        for line in read_host("/proc/stat").decode().splitlines():
            key = line.split(" ", 1)[0]
            if key == "btime":
                line = f"btime {int(self.start_wall)}"
            elif key == "processes":
                line = f"processes {self._last_pid()}"
            elif key in ("procs_running", "procs_blocked"):
                states = states or self._task_states(t)
                want = "R" if key == "procs_running" else "D"
                line = f"{key} {sum(1 for s in states if s == want)}"
            lines.append(line)
        return ("\n".join(lines) + "\n").encode()

    def _version(self) -> bytes:
        host = os.uname()
        return f"Linux version {self.inst.uts.release} (lxsub) {host.version}\n".encode()

    def mounts_text(self) -> bytes:
        lines = [f"{_esc(m.source)} {_esc(m.path)} {m.fs.fstype} {m.options} 0 0"
                 for m in self.inst.vfs.mounts.mounts]
        return ("\n".join(lines) + "\n").encode()

    def mountinfo_text(self) -> bytes:
        lines = []
        for m in self.inst.vfs.mounts.mounts:
            parent = m.parent.id if m.parent is not None else 1
            dev = _mount_dev(m)
            opts = m.options.split(",")
            mount_opts = ",".join(o for o in opts if o in _PER_MOUNT) or "rw"
            super_opts = "ro" if "ro" in opts else "rw"
            extra = [o for o in opts if o not in _PER_MOUNT and o not in ("rw", "ro")]
            if extra:
                super_opts += "," + ",".join(extra)
            lines.append(f"{m.id} {parent} {os.major(dev)}:{os.minor(dev)} {_esc(_mount_root(m))} "
                         f"{_esc(m.path)} "
                         f"{mount_opts} - {m.fs.fstype} {_esc(m.source)} {super_opts}")
        return ("\n".join(lines) + "\n").encode()

    # -- magic links ---------------------------------------------------------

    def follow_magic(self, node: Node, caller) -> Node | None:
        e = node.obj
        if isinstance(e, FdLink):
            return e.open_target(self.inst)
        return None


_PER_MOUNT = ("rw", "ro", "nosuid", "nodev", "noexec", "relatime", "noatime", "nodiratime",
              "strictatime", "sync", "dirsync", "mand")


def _esc(s: str) -> str:
    return s.translate(_ESCAPES)


def _mount_root(m: "Mount") -> str:
    """Which directory of its file system a mount shows ("/" but for bind
    mounts of a subdirectory)."""
    node, fs = m.root_node, m.fs
    if node is None:
        return "/"
    if node.obj is not None and isinstance(getattr(node.obj, "path", None), str):
        return node.obj.path
    host_root = fs.host_root
    if node.fd is None or not host_root:
        return "/"
    try:
        host = os.readlink(f"/proc/self/fd/{node.fd}")
    except OSError:
        return "/"
    if host.startswith(host_root.rstrip("/") + "/"):
        return "/" + host[len(host_root):].lstrip("/")
    return "/"


def _ping_group_range(host: bytes) -> bytes:
    """net.ipv4.ping_group_range in the instance's groups: the host's range
    is in host gids, and every pico process has the host user's, so either
    every Linux group may open ICMP datagram sockets or none (icmp(7))."""
    try:
        low, high = (int(x) for x in host.split())
    except ValueError:
        return host
    return b"0\t2147483647\n" if low <= os.getgid() <= high else b"1\t0\n"


_SYSCTL_VIEWS = {"/proc/sys/net/ipv4/ping_group_range": _ping_group_range}


def _mount_dev(m: "Mount") -> int:
    if m.fs.dev:
        return m.fs.dev
    try:
        # The device is no one's view: asked as the provider itself.
        return m.fs.getattr(m.root_node, Caller(Creds())).dev
    except (OSError, AttributeError, AssertionError):
        return 0


def _filesystems() -> bytes:
    """The file system types lxsub has, as /proc/filesystems lists them."""
    from lxsub.kernel.fs.registry import FS_TYPES
    return "".join(f"{'nodev' if t.nodev else ''}\t{t.name}\n" for t in FS_TYPES).encode()


def _cgroups() -> bytes:
    """/proc/cgroups: the controllers, all on the cgroup2 hierarchy (0)."""
    from lxsub.kernel.fs.cgroupfs import CONTROLLERS
    rows = "".join(f"{c}\t0\t1\t1\n" for c in CONTROLLERS)
    return ("#subsys_name\thierarchy\tnum_cgroups\tenabled\n" + rows).encode()


class ProcRoot(Dir):
    """/proc: the static files, then a directory per instance process in
    ascending pid order; /proc/<tid> of any thread can be looked up too."""

    def __init__(self, fs: ProcFs) -> None:
        super().__init__("/")
        self.fs = fs

    def children(self, task) -> dict[str, Entry]:
        out = dict(self.fs._static.entries)
        procs = self.fs.inst.pids.processes_by_vid
        for vid in sorted(procs):
            proc = procs[vid]
            if not proc.exited:
                out[str(vid)] = self.fs.process_dir(proc)
        return out

    def lookup(self, task, name: str) -> Entry:
        if name.isdigit() and name[0] != "0":
            vid = int(name)
            pids = self.fs.inst.pids
            proc = pids.processes_by_vid.get(vid)
            if proc is not None and not proc.exited:
                return self.fs.process_dir(proc)
            thread = pids.tasks_by_vid.get(vid)
            if thread is not None and not thread.process.exited:
                return self.fs.process_dir(thread.process, thread, f"/{vid}")
            raise OSError(errno.ENOENT, "no such process")
        entry = self.fs._static.entries.get(name)
        if entry is None:
            raise OSError(errno.ENOENT, "no such file or directory")
        return entry


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


def _main_thread(proc: "Process"):
    return proc.threads.get(proc.host_pid) or next(iter(proc.threads.values()), None)


def _need(task):
    if task is None:
        raise OSError(errno.ENOENT, "process is gone")
    return task


class ProcessDir(Dir):
    """/proc/<pid> (thread None) or /proc/<pid>/task/<tid> of a pico process."""

    def __init__(self, fs: ProcFs, path: str, proc: "Process", thread: "Task | None") -> None:
        super().__init__(path, None, 0o555)
        self.fs = fs
        self.proc = proc
        self.thread = thread
        host = thread.host_tid if thread else proc.host_pid
        self.hp = f"/proc/{proc.host_pid}/task/{host}" if thread else f"/proc/{host}"
        self.owner_of = self._owner

    def _task(self):
        return _need(self.thread or _main_thread(self.proc))

    def _owner(self) -> tuple[int, int]:
        c = self._task().creds
        return c.euid, c.egid

    def children(self, task) -> dict[str, Entry]:
        p, proc, fs, inst, hp = self.path, self.proc, self.fs, self.fs.inst, self.hp

        def mine(e: Entry) -> Entry:
            e.owner_of = self._owner
            return e
        entries: dict[str, Entry] = {
            "exe": Link(p + "/exe", lambda t: self._inspect(t) or proc.exe),
            "cwd": Link(p + "/cwd", lambda t: self._inspect(t) or inst.vfs.vpath_of(self._task().fs.cwd)),
            "root": Link(p + "/root",
                         lambda t: self._inspect(t) or inst.vfs.vpath_of(self._task().fs.root)),
            "cmdline": File(p + "/cmdline", lambda t: self._cmdline()),
            "comm": File(p + "/comm", lambda t: proc.comm.encode() + b"\n",
                         write=self._set_comm, mode=0o444),
            "stat": File(p + "/stat", lambda t: self._stat(t)),
            "status": File(p + "/status", lambda t: self._status(t)),
            "maps": File(p + "/maps", lambda t: self._inspect(t) or self._maps("maps")),
            "smaps": File(p + "/smaps", lambda t: self._inspect(t) or self._maps("smaps")),
            "smaps_rollup": File(p + "/smaps_rollup",
                                 lambda t: self._inspect(t) or self._maps("smaps_rollup")),
            "environ": File(p + "/environ", lambda t: self._inspect(t) or read_host(hp + "/environ"),
                            mode=0o400),
            "oom_score_adj": File(p + "/oom_score_adj", lambda t: b"%d\n" % proc.oom_score_adj,
                                  write=self._set_oom_score_adj, mode=0o444),
            "mounts": File(p + "/mounts", lambda t: fs.mounts_text()),
            "mountinfo": File(p + "/mountinfo", lambda t: fs.mountinfo_text()),
            "cgroup": File(p + "/cgroup", lambda t: b"0::/\n"),
            "fd": Dir(p + "/fd", lambda t: self._inspect(t) or self._fds(), 0o500),
            "fdinfo": Dir(p + "/fdinfo", lambda t: self._inspect(t) or self._fdinfos(), 0o500),
            "net": Dir(p + "/net", lambda t: _net_entries(p + "/net")),
        }
        for name, mode in _PID_HOST.items():
            entries[name] = HostFile(f"{p}/{name}", f"{hp}/{name}", mode)
            if name in _PID_INSPECT:
                entries[name].read = lambda t, h=f"{hp}/{name}": self._inspect(t) or read_host(h)
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

    def _is_caller(self, t: "Task | None") -> bool:
        """Whether this is the task reading the file (t): it is running (in
        the system call the provider is answering), whatever the host says."""
        return (self.thread or _main_thread(self.proc)) is t

    def _threads(self) -> dict[str, Entry]:
        out = {}
        for th in sorted(list(self.proc.threads.values()), key=lambda th: th.tid):
            out[str(th.tid)] = ProcessDir(self.fs, f"{self.path}/task/{th.tid}", self.proc, th)
        return out

    def _children(self) -> bytes:
        # Children are the process's (lxsub keeps no per-thread parent): the
        # main thread lists them, as Linux does when the main thread forked.
        if self.thread is not None and self.thread.tid != self.proc.pid:
            return b""
        kids = sorted(c.pid for c in list(self.proc.children) if not c.exited)
        return "".join(f"{k} " for k in kids).encode()

    def _set_comm(self, t, data: bytes) -> None:
        self.proc.comm = data.decode(errors="replace").rstrip("\n")[:15]

    def _set_oom_score_adj(self, t, data: bytes) -> None:
        """fs/proc/base.c oom_score_adj_write and __set_oom_adj: a number in
        [-1000, 1000]; going below the process's floor needs
        CAP_SYS_RESOURCE, which also moves the floor.  The host gets the
        value where it allows (a host user may only raise its own)."""
        try:
            value = int(data.strip() or b"x", 10)
        except ValueError:
            raise OSError(errno.EINVAL, "not a number") from None
        if not -1000 <= value <= 1000:
            raise OSError(errno.EINVAL, "out of range")
        proc = self.proc
        privileged = t is not None and t.creds.capable(CAP_SYS_RESOURCE)
        if value < proc.oom_score_adj_min and not privileged:
            raise OSError(errno.EACCES, "permission denied")
        if privileged:
            proc.oom_score_adj_min = value
        proc.oom_score_adj = value
        try:
            with open(self.hp + "/oom_score_adj", "wb") as f:
                f.write(b"%d" % value)
        except OSError:
            pass  # kept inside: the host refuses to lower an unprivileged user's value

    def _cmdline(self) -> bytes:
        raw = read_host(self.hp + "/cmdline")
        if self.proc.argv_skip and raw:
            words = raw.split(b"\0")
            # ld.so --argv0 ARGV0 PROGRAM ARGS...: show ARGV0 ARGS...
            if len(words) >= 4 and words[1] == b"--argv0":
                raw = b"\0".join([words[2]] + words[4:])
        return raw

    def _stat(self, t: "Task | None") -> bytes:
        raw = read_host(self.hp + "/stat").decode()
        _head, _, rest = raw.rpartition(")")
        f = rest.split()
        pids = self.fs.inst.pids
        proc = self.proc
        f[1] = str(proc.parent.pid if proc.parent else 0)
        f[2] = str(pids.group_to_virtual(int(f[2])))
        f[3] = str(pids.group_to_virtual(int(f[3])))
        tpgid = int(f[5])
        f[5] = str(pids.group_to_virtual(tpgid) if tpgid > 0 else tpgid)
        f[19] = str(max(0, int(f[19]) - self.fs.start_jiffies))
        if self._is_caller(t):
            f[0] = "R"
        vid = self.thread.tid if self.thread else proc.pid
        return f"{vid} ({proc.comm}) {' '.join(f)}\n".encode()

    def _status(self, t: "Task | None") -> bytes:
        proc, thread = self.proc, self.thread
        task = thread or _main_thread(proc)
        c = task.creds if task else None
        pids = self.fs.inst.pids
        vid = thread.tid if thread else proc.pid
        out = []
        for line in read_host(self.hp + "/status").decode().splitlines():
            key, _, val = line.partition(":")
            if key == "Name":
                val = "\t" + proc.comm
            elif key in ("Tgid", "NStgid"):
                val = f"\t{proc.pid}"
            elif key in ("Pid", "NSpid"):
                val = f"\t{vid}"
            elif key == "PPid":
                val = f"\t{proc.parent.pid if proc.parent else 0}"
            elif key in ("TracerPid", "Ngid"):
                val = "\t0"
            elif key in ("NSpgid", "NSsid"):
                val = f"\t{pids.group_to_virtual(int(val.split()[-1]))}"
            elif key == "Uid" and c:
                val = f"\t{c.ruid}\t{c.euid}\t{c.suid}\t{c.fsuid}"
            elif key == "Gid" and c:
                val = f"\t{c.rgid}\t{c.egid}\t{c.sgid}\t{c.fsgid}"
            elif key == "Groups" and c:
                val = "\t" + " ".join(str(g) for g in c.groups) + " "
            elif key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb") and c:
                v = {"CapInh": c.cap_inheritable, "CapPrm": c.cap_permitted,
                     "CapEff": c.cap_effective, "CapBnd": _cap_bound(), "CapAmb": 0}[key]
                val = f"\t{v:016x}"
            elif key in ("Seccomp", "Seccomp_filters", "NoNewPrivs"):
                # The program's own, not the host's (kernel/syscalls/process.py).
                val = "\t%d" % ({"Seccomp": task.seccomp_mode, "Seccomp_filters":
                                  task.seccomp_filters, "NoNewPrivs": int(task.no_new_privs)}
                                 [key] if task else 0)
            elif key == "Umask" and task:
                val = f"\t{task.fs.umask:04o}"
            elif key == "State" and self._is_caller(t):
                val = "\tR (running)"
            out.append(f"{key}:{val}")
        return ("\n".join(out) + "\n").encode()

    def _maps(self, name: str) -> bytes:
        """Mapped files named by their instance paths (the distro's under /,
        host files under their DrvFs mount, tmpfs files under theirs)."""
        vfs = self.fs.inst.vfs
        roots = vfs.host_roots()
        detached = vfs.detached_mounts(roots)
        out = []
        for line in read_host(f"{self.hp}/{name}").decode(errors="surrogateescape").splitlines():
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].startswith("/"):
                path = parts[5]
                deleted = path.endswith(" (deleted)")
                plain = path[: -len(" (deleted)")] if deleted else path
                major, _, minor = parts[3].partition(":")
                m = detached.get(os.makedev(int(major, 16), int(minor, 16))) if minor else None
                if m is not None:         # the path is below that file system's root
                    v = m.path.rstrip("/") + plain if plain != "/" else m.path
                else:
                    v = vfs.host_to_vpath(roots, plain)
                if v is not None:
                    line = line[: len(line) - len(path)] + v + (" (deleted)" if deleted else "")
            out.append(line)
        return ("\n".join(out) + "\n").encode(errors="surrogateescape")

    def _host_fds(self) -> list[str]:
        try:
            names = os.listdir(self.hp + "/fd")
        except OSError:
            return []
        return sorted(names, key=int)

    def _fds(self) -> dict[str, Entry]:
        return {n: FdLink(f"{self.path}/fd/{n}", self.proc, int(n), self.fs, self._owner)
                for n in self._host_fds()}

    def _fdinfos(self) -> dict[str, Entry]:
        return {n: File(f"{self.path}/fdinfo/{n}", lambda t, n=n: self._fdinfo(int(n)))
                for n in self._host_fds()}

    def _fdinfo(self, fd: int) -> bytes:
        """The host's fdinfo with ids rewritten: the mount the file is on in
        the instance, the virtual pid of a pidfd."""
        inst = self.fs.inst
        text = read_host(f"/proc/{self.proc.host_pid}/fdinfo/{fd}").decode(errors="replace")
        mnt_id = None
        try:
            local = os.open(f"/proc/{self.proc.host_pid}/fd/{fd}", os.O_PATH | os.O_CLOEXEC)
        except OSError:
            local = -1
        if local >= 0:
            try:
                mnt_id = inst.vfs.mount_id_of_host_fd(local)
            finally:
                os.close(local)
        out = []
        for line in text.splitlines():
            key, _, val = line.partition(":")
            if key == "mnt_id" and mnt_id is not None:
                val = f"\t{mnt_id}"
            elif key in ("Pid", "NSpid"):
                host = int(val.split()[-1]) if val.split() else 0
                vid = inst.pids.vpid_of_host(host) if host > 0 else host
                val = f"\t{vid if vid is not None else -1}"
            out.append(f"{key}:{val}")
        return ("\n".join(out) + "\n").encode()


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
            "stat": File(p + "/stat", lambda t: self._stat()),
            "status": File(p + "/status", lambda t: self._status()),
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
        }
        if "/task/" in p:
            entries["children"] = File(p + "/children", lambda t: self._children())
        else:
            entries["task"] = Dir(p + "/task", lambda t: {"1": InitDir(fs, p + "/task/1")})
        return dict(sorted(entries.items()))

    def _children(self) -> bytes:
        kids = sorted(c.pid for c in list(self.fs.inst.init.children) if not c.exited)
        return "".join(f"{k} " for k in kids).encode()

    def _stat(self) -> bytes:
        # state ppid pgrp session tty tpgid flags; minflt cminflt majflt
        # cmajflt utime stime cutime cstime; priority nice threads itreal
        # starttime; then vsize rss... (52 fields in all).
        fields = ["S", "0", "1", "1", "0", "-1", "4194560"] + ["0"] * 8 \
            + ["20", "0", "1", "0", "0"] + ["0"] * 30
        return f"1 (init) {' '.join(fields)}\n".encode()

    def _status(self) -> bytes:
        return (b"Name:\tinit\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t1\nNgid:\t0\nPid:\t1\n"
                b"PPid:\t0\nTracerPid:\t0\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n"
                b"NStgid:\t1\nNSpid:\t1\nNSpgid:\t1\nNSsid:\t1\nThreads:\t1\n")


def _net_entries(path: str) -> dict[str, Entry]:
    """/proc/<pid>/net: the interface tables of the host's network, which
    the instance shares (the socket tables are left out: they list every
    host process's sockets)."""
    out: dict[str, Entry] = {}
    for name in ("dev", "if_inet6", "route", "ipv6_route", "netstat", "snmp", "snmp6",
                 "sockstat", "sockstat6", "dev_mcast", "igmp", "igmp6", "arp"):
        if os.path.exists("/proc/net/" + name):
            out[name] = HostFile(f"{path}/{name}", "/proc/self/net/" + name)
    return out


_cap_bnd: int | None = None


def _cap_bound() -> int:
    """Every capability the kernel knows: CapBnd as /proc/sys/kernel/cap_last_cap says."""
    global _cap_bnd
    if _cap_bnd is None:
        try:
            last = int(read_host("/proc/sys/kernel/cap_last_cap"))
        except (OSError, ValueError):
            last = 40
        _cap_bnd = (1 << (last + 1)) - 1
    return _cap_bnd


class FdLink(Link):
    """/proc/<pid>/fd/N: reads as the file's path, opens the file itself."""

    def __init__(self, path: str, proc: "Process", fd: int, fs: ProcFs, owner=None) -> None:
        super().__init__(path, self._target)
        self.proc = proc
        self.fd = fd
        self.fs = fs
        self.owner_of = owner

    def _target(self, t) -> str:
        inst = self.fs.inst
        host = os.readlink(f"/proc/{self.proc.host_pid}/fd/{self.fd}")
        if not host.startswith("/"):
            return host                   # pipe:[...], socket:[...], anon_inode:...
        deleted = host.endswith(" (deleted)")
        def by_path() -> str:
            plain = host[: -len(" (deleted)")] if deleted else host
            v = inst.vfs.host_to_vpath(inst.vfs.host_roots(), plain)
            return host if v is None else v + (" (deleted)" if deleted else "")
        try:
            local = os.open(f"/proc/{self.proc.host_pid}/fd/{self.fd}", os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return by_path()
        try:
            node = inst.vfs.node_for_host_fd(local, os.fstat(local))
            if node is None:
                return by_path()
            path = inst.vfs.vpath_of(node)
            if deleted and not path.endswith(" (deleted)"):
                path += " (deleted)"
            return path
        except OSError:
            return by_path()
        finally:
            os.close(local)

    def open_target(self, inst) -> Node:
        try:
            fd = os.open(f"/proc/{self.proc.host_pid}/fd/{self.fd}", os.O_PATH | os.O_CLOEXEC)
        except OSError:
            raise OSError(errno.ENOENT, "no such file descriptor") from None
        return inst.vfs.node_or_anon(fd)
