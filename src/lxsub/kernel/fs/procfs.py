"""ProcFs: the instance's own /proc — its processes only, with virtual PIDs.

Per-process files are the host's (/proc/<host pid>/...) with every id,
path and credential rewritten to what the instance sees; system-wide files
are computed for the instance (uptime since it started, its hostname).
"""

from __future__ import annotations

import errno
import os
import time
from typing import TYPE_CHECKING

from lxsub.kernel.vfs.node import Node
from lxsub.kernel.vfs.pseudo import Dir, File, Link, PseudoFs, StaticDir

if TYPE_CHECKING:
    from lxsub.kernel.task import Process, Task

PROC_SUPER_MAGIC = 0x9FA0
HZ = os.sysconf("SC_CLK_TCK")
_PASSTHROUGH = ("meminfo", "cpuinfo", "loadavg", "version", "filesystems", "swaps",
                "partitions", "diskstats", "vmstat", "zoneinfo", "interrupts", "softirqs",
                "crypto", "devices", "misc", "buddyinfo", "kallsyms_not")


def _read_host(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise OSError(e.errno or errno.ENOENT, "gone") from None


class ProcFs(PseudoFs):
    fstype = "proc"
    magic = PROC_SUPER_MAGIC

    def __init__(self, inst) -> None:
        super().__init__(inst)
        self.start_mono = time.monotonic()
        self.start_wall = time.time()
        self.start_jiffies = int(float(_read_host("/proc/uptime").split()[0]) * HZ)
        self._root = self._build_root()

    def root_entry(self) -> Dir:
        return self._root

    # -- the tree ---------------------------------------------------------------

    def _build_root(self) -> Dir:
        static = StaticDir("/")
        static.add(Link("/self", lambda t: str(t.pid)))
        static.add(Link("/thread-self", lambda t: f"{t.pid}/task/{t.tid}"))
        static.add(Link("/mounts", lambda t: "self/mounts"))
        static.add(File("/uptime", self._uptime))
        static.add(File("/stat", self._stat))
        static.add(File("/cmdline", lambda t: b"BOOT_IMAGE=/lxsub\n"))
        for name in _PASSTHROUGH:
            if os.path.exists("/proc/" + name):
                static.add(File("/" + name, lambda t, n=name: _read_host("/proc/" + n)))
        static.add(self._sys_tree())
        inst = self.inst

        def children(task: "Task") -> dict:
            out = dict(static.entries)
            for proc in list(inst.pids.processes_by_vid.values()):
                if not proc.exited:
                    out[str(proc.pid)] = self._process_dir(f"/{proc.pid}", proc, None)
            return out
        return Dir("/", children)

    def _sys_tree(self) -> StaticDir:
        inst = self.inst
        sys_ = StaticDir("/sys")
        kernel = sys_.add(StaticDir("/sys/kernel"))
        kernel.add(File("/sys/kernel/hostname", lambda t: inst.uts.hostname.encode() + b"\n",
                        write=lambda t, d: setattr(inst.uts, "hostname", d.decode().strip())))
        kernel.add(File("/sys/kernel/domainname", lambda t: inst.uts.domainname.encode() + b"\n"))
        kernel.add(File("/sys/kernel/osrelease", lambda t: inst.uts.release.encode() + b"\n"))
        kernel.add(File("/sys/kernel/ostype", lambda t: b"Linux\n"))
        kernel.add(File("/sys/kernel/pid_max", lambda t: b"4194304\n"))
        for name in ("ngroups_max", "random/boot_id", "random/uuid", "cap_last_cap", "threads-max"):
            p = "/proc/sys/kernel/" + name
            if os.path.exists(p):
                if "/" in name:
                    d = kernel.entries.get("random") or kernel.add(StaticDir("/sys/kernel/random"))
                    d.add(File("/sys/kernel/" + name, lambda t, p=p: _read_host(p)))
                else:
                    kernel.add(File("/sys/kernel/" + name, lambda t, p=p: _read_host(p)))
        fs = sys_.add(StaticDir("/sys/fs"))
        for name in ("file-max", "nr_open", "pipe-max-size"):
            p = "/proc/sys/fs/" + name
            if os.path.exists(p):
                fs.add(File("/sys/fs/" + name, lambda t, p=p: _read_host(p)))
        vm = sys_.add(StaticDir("/sys/vm"))
        for name in ("overcommit_memory", "max_map_count", "mmap_min_addr"):
            p = "/proc/sys/vm/" + name
            if os.path.exists(p):
                vm.add(File("/sys/vm/" + name, lambda t, p=p: _read_host(p)))
        return sys_

    def _process_dir(self, path: str, proc: "Process", thread: "Task | None") -> Dir:
        host = thread.host_tid if thread else proc.host_pid
        hp = f"/proc/{proc.host_pid}/task/{host}" if thread else f"/proc/{host}"
        inst = self.inst
        main = (lambda: thread) if thread else (lambda: _main_thread(proc))
        if proc.is_init():
            return self._init_dir(path)
        entries = {
            "exe": Link(path + "/exe", lambda t: proc.exe),
            "cwd": Link(path + "/cwd", lambda t: inst.vpath_of(_need(main()).fs.cwd)),
            "root": Link(path + "/root", lambda t: inst.vpath_of(_need(main()).fs.root)),
            "cmdline": File(path + "/cmdline", lambda t: self._cmdline(proc, hp)),
            "comm": File(path + "/comm", lambda t: proc.comm.encode() + b"\n",
                         write=lambda t, d: setattr(proc, "comm", d.decode(errors="replace").strip()[:15])),
            "stat": File(path + "/stat", lambda t: self._pid_stat(proc, thread, hp)),
            "status": File(path + "/status", lambda t: self._pid_status(proc, thread, hp)),
            "maps": File(path + "/maps", lambda t: self._maps(hp)),
            "environ": File(path + "/environ", lambda t: _read_host(hp + "/environ"), mode=0o400),
            "limits": File(path + "/limits", lambda t: _read_host(hp + "/limits")),
            "statm": File(path + "/statm", lambda t: _read_host(hp + "/statm")),
            "mounts": File(path + "/mounts", lambda t: self._mounts()),
            "fd": Dir(path + "/fd", lambda t: self._fds(path + "/fd", proc, hp), 0o500),
        }
        if thread is None:
            entries["task"] = Dir(path + "/task", lambda t: {
                str(th.tid): self._process_dir(f"{path}/task/{th.tid}", proc, th)
                for th in list(proc.threads.values())})
        return Dir(path, lambda t: entries)

    def _init_dir(self, path: str) -> Dir:
        entries = {
            "exe": Link(path + "/exe", lambda t: "/init"),
            "cwd": Link(path + "/cwd", lambda t: "/"),
            "root": Link(path + "/root", lambda t: "/"),
            "cmdline": File(path + "/cmdline", lambda t: b"/init\0"),
            "comm": File(path + "/comm", lambda t: b"init\n"),
            "stat": File(path + "/stat", lambda t: self._init_stat()),
            "status": File(path + "/status", lambda t: self._init_status()),
            "fd": Dir(path + "/fd", lambda t: {}, 0o500),
            "maps": File(path + "/maps", lambda t: b""),
            "environ": File(path + "/environ", lambda t: b"", mode=0o400),
            "mounts": File(path + "/mounts", lambda t: self._mounts()),
            "task": Dir(path + "/task", lambda t: {"1": Dir(path + "/task/1", lambda t: {})}),
        }
        return Dir(path, lambda t: entries)

    # -- contents ---------------------------------------------------------------

    def _uptime(self, t) -> bytes:
        up = time.monotonic() - self.start_mono
        return f"{up:.2f} {up * os.cpu_count():.2f}\n".encode()

    def _stat(self, t) -> bytes:
        lines = []
        for line in _read_host("/proc/stat").decode().splitlines():
            if line.startswith("btime "):
                line = f"btime {int(self.start_wall)}"
            elif line.startswith("processes "):
                line = f"processes {len(self.inst.pids.processes_by_vid)}"
            lines.append(line)
        return ("\n".join(lines) + "\n").encode()

    def _cmdline(self, proc: "Process", hp: str) -> bytes:
        raw = _read_host(hp + "/cmdline")
        if proc.argv_skip and raw:
            words = raw.split(b"\0")
            # ld.so --argv0 ARGV0 PROGRAM ARGS...: show ARGV0 ARGS...
            if len(words) >= 4 and words[1] == b"--argv0":
                raw = b"\0".join([words[2]] + words[4:])
        return raw

    def _pid_stat(self, proc: "Process", thread, hp: str) -> bytes:
        raw = _read_host(hp + "/stat").decode()
        head, _, rest = raw.rpartition(")")
        f = rest.split()
        pids = self.inst.pids
        f[1] = str(proc.parent.pid if proc.parent else 0)
        f[2] = str(pids.group_to_virtual(int(f[2])))
        f[3] = str(pids.group_to_virtual(int(f[3])))
        tpgid = int(f[5])
        f[5] = str(pids.group_to_virtual(tpgid) if tpgid > 0 else tpgid)
        f[19] = str(max(0, int(f[19]) - self.start_jiffies))
        vid = thread.tid if thread else proc.pid
        return f"{vid} ({proc.comm}) {' '.join(f)}\n".encode()

    def _pid_status(self, proc: "Process", thread, hp: str) -> bytes:
        task = thread or _main_thread(proc)
        c = task.creds if task else None
        pids = self.inst.pids
        out = []
        for line in _read_host(hp + "/status").decode().splitlines():
            key, _, val = line.partition(":")
            if key == "Name":
                val = "\t" + proc.comm
            elif key in ("Tgid", "NStgid"):
                val = f"\t{proc.pid}"
            elif key in ("Pid", "NSpid"):
                val = f"\t{thread.tid if thread else proc.pid}"
            elif key == "PPid":
                val = f"\t{proc.parent.pid if proc.parent else 0}"
            elif key == "TracerPid":
                val = "\t0"
            elif key == "NSpgid":
                val = f"\t{pids.group_to_virtual(int(val.split()[-1]))}"
            elif key == "NSsid":
                val = f"\t{pids.group_to_virtual(int(val.split()[-1]))}"
            elif key == "Uid" and c:
                val = f"\t{c.ruid}\t{c.euid}\t{c.suid}\t{c.fsuid}"
            elif key == "Gid" and c:
                val = f"\t{c.rgid}\t{c.egid}\t{c.sgid}\t{c.fsgid}"
            elif key == "Groups" and c:
                val = "\t" + " ".join(str(g) for g in c.groups) + " "
            elif key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb") and c:
                v = {"CapInh": c.cap_inheritable, "CapPrm": c.cap_permitted,
                     "CapEff": c.cap_effective, "CapBnd": (1 << 41) - 1, "CapAmb": 0}[key]
                val = f"\t{v:016x}"
            elif key in ("Seccomp", "Seccomp_filters", "NoNewPrivs"):
                val = "\t0"
            elif key == "Umask" and task:
                val = f"\t{task.fs.umask:04o}"
            out.append(f"{key}:{val}")
        return ("\n".join(out) + "\n").encode()

    def _maps(self, hp: str) -> bytes:
        root = self.inst.rootfs
        text = _read_host(hp + "/maps").decode(errors="surrogateescape")
        return text.replace(" " + root + "/", " /").encode(errors="surrogateescape")

    def _mounts(self) -> bytes:
        lines = [f"{m.source} {m.path} {m.fs.fstype} {m.options} 0 0" for m in self.inst.mounts.mounts]
        return ("\n".join(lines) + "\n").encode()

    def _fds(self, path: str, proc: "Process", hp: str) -> dict:
        try:
            names = os.listdir(hp + "/fd")
        except OSError:
            return {}
        out = {}
        for n in names:
            out[n] = FdLink(f"{path}/{n}", proc, int(n), self)
        return out

    def _init_stat(self) -> bytes:
        # state ppid pgrp session tty tpgid flags, 8 fault/time counters,
        # cutime cstime priority nice threads itreal starttime, then zeros.
        fields = ["S", "0", "1", "1", "0", "-1", "4194560"] + ["0"] * 8 \
            + ["0", "0", "20", "0", "1", "0", "0"] + ["0"] * 30
        return f"1 (init) {' '.join(fields)}\n".encode()

    def _init_status(self) -> bytes:
        return (b"Name:\tinit\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t1\nNgid:\t0\nPid:\t1\n"
                b"PPid:\t0\nTracerPid:\t0\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nThreads:\t1\n")

    # -- magic links ---------------------------------------------------------

    def follow_magic(self, node: Node) -> Node | None:
        e = node.obj
        if isinstance(e, FdLink):
            return e.open_target(self.inst)
        return None


class FdLink(Link):
    """/proc/<pid>/fd/N: reads as the file's path, opens the file itself."""

    def __init__(self, path: str, proc: "Process", fd: int, fs: ProcFs) -> None:
        super().__init__(path, self._target)
        self.proc = proc
        self.fd = fd
        self.fs = fs

    def _target(self, t) -> str:
        host = os.readlink(f"/proc/{self.proc.host_pid}/fd/{self.fd}")
        return self.fs.inst.host_to_vpath(host)

    def open_target(self, inst) -> Node:
        try:
            fd = os.open(f"/proc/{self.proc.host_pid}/fd/{self.fd}", os.O_PATH | os.O_CLOEXEC)
        except OSError:
            raise OSError(errno.ENOENT, "no such file descriptor") from None
        s = os.fstat(fd)
        node = inst.node_for_host_fd(fd, s)
        if node is None:
            node = Node(inst.anon_mount, fd, s)
        return node


def _main_thread(proc: "Process"):
    return proc.threads.get(proc.host_pid) or next(iter(proc.threads.values()), None)


def _need(task):
    if task is None:
        raise OSError(errno.ENOENT, "process is gone")
    return task
