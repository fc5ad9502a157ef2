"""The system-wide files of /proc's root: uptime, loadavg, stat, version,
filesystems, cgroups, and those passed through from the host; when the
instance "booted" (Boot) and how many tasks it has (ProcFs mixes
TasksFiles in)."""

from __future__ import annotations

import os
import time
import uuid
import weakref
from typing import TYPE_CHECKING

from lxsub.kernel.task import PID_MAX
from lxsub.kernel.vfs.pseudo import read_host

if TYPE_CHECKING:
    from lxsub.kernel.task import Task

HZ = os.sysconf("SC_CLK_TCK")
# Host-wide files the instance shares as they are: its CPUs, memory, devices.
_PASSTHROUGH = ("meminfo", "cpuinfo", "swaps", "partitions", "diskstats", "vmstat", "zoneinfo",
                "interrupts", "softirqs", "crypto", "devices", "misc", "buddyinfo", "pagetypeinfo",
                # The host kernel's build options: native calls meet that kernel.
                "config.gz")


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


class TasksFiles:
    """The contents of /proc's system-wide files, for a ProcFs."""

    def _last_pid(self) -> int:
        nxt = getattr(self.inst.pids, "_next", 2)
        return nxt - 1 if nxt > 2 else PID_MAX - 1

    def _last_pid_in(self, ns) -> int:
        """The pid a PID namespace (None: the instance's) allocated last."""
        return self._last_pid() if ns is None else ns.last()

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


def _filesystems() -> bytes:
    """The file system types lxsub has, as /proc/filesystems lists them."""
    from lxsub.kernel.fs.registry import FS_TYPES
    return "".join(f"{'nodev' if t.nodev else ''}\t{t.name}\n" for t in FS_TYPES).encode()


def _cgroups() -> bytes:
    """/proc/cgroups: the controllers, all on the cgroup2 hierarchy (0)."""
    from lxsub.kernel.fs.cgroupfs import CONTROLLERS
    rows = "".join(f"{c}\t0\t1\t1\n" for c in CONTROLLERS)
    return ("#subsys_name\thierarchy\tnum_cgroups\tenabled\n" + rows).encode()
