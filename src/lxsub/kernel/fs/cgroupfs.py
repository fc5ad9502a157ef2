"""CgroupFs: a cgroup2 view at /sys/fs/cgroup of the instance's own cgroup.

The instance is one cgroup, the root of its cgroup namespace (as a
container's is): every process of the instance is in it, so
`/proc/<pid>/cgroup` reads `0::/`. Its files are computed for the instance:
`cgroup.procs` lists its pids, `pids.current` counts its tasks,
`memory.current` sums their resident memory, `cpu.stat` their CPU time.
Limits are the ones the host puts on the provider (cgroup v2 or v1: the
tightest on the way up its hierarchy), since they bound the instance too;
"max" where the host sets none. Read-only: no child cgroups, no moving
processes (mkdir and writes give EROFS).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from lxsub.abi.magic import CGROUP2_SUPER_MAGIC
from lxsub.kernel.vfs.pseudo import Dir, File, PseudoFs, StaticDir, read_host

if TYPE_CHECKING:
    from lxsub.kernel.task import Process

# v1 reports "no limit" as the largest page-aligned signed 64-bit number.
_V1_UNLIMITED = 1 << 62
_HZ = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
CONTROLLERS = ("cpuset", "cpu", "memory", "pids")


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


class HostCgroups:
    """Where the host keeps the provider's cgroups, v2 and v1."""

    def __init__(self) -> None:
        self.v2: str | None = None              # directory of our cgroup2 cgroup
        self.v2_root: str | None = None
        self.v1: dict[str, tuple[str, str]] = {}   # controller -> (mount root, our dir)
        mounts: dict[str, str] = {}            # "cgroup2" or a controller -> mount point
        try:
            with open("/proc/self/mountinfo") as f:
                for line in f:
                    left, _, right = line.partition(" - ")
                    fields, rfields = left.split(), right.split()
                    if len(fields) < 5 or len(rfields) < 3 or fields[3] != "/":
                        continue
                    point = fields[4].replace("\\040", " ")
                    if rfields[0] == "cgroup2":
                        mounts.setdefault("cgroup2", point)
                    elif rfields[0] == "cgroup":
                        for opt in rfields[2].split(","):
                            mounts.setdefault(opt, point)
        except OSError:
            return
        for line in (_read("/proc/self/cgroup") or "").splitlines():
            parts = line.split(":", 2)
            if len(parts) != 3:
                continue
            _, ctrls, path = parts
            if ctrls == "" and "cgroup2" in mounts:
                self.v2_root = mounts["cgroup2"]
                self.v2 = os.path.normpath(self.v2_root + "/" + path)
            for c in ctrls.split(","):
                if c in mounts:
                    self.v1[c] = (mounts[c], os.path.normpath(mounts[c] + "/" + path))

    def _up(self, start: str, root: str):
        d = start
        while True:
            yield d
            if d == root or not d.startswith(root):
                return
            d = os.path.dirname(d)

    def _v2_values(self, name: str) -> list[str]:
        if self.v2 is None or self.v2_root is None:
            return []
        return [v for d in self._up(self.v2, self.v2_root)
                if (v := _read(os.path.join(d, name))) is not None]

    def _v1_values(self, ctrl: str, name: str) -> list[str]:
        if ctrl not in self.v1:
            return []
        root, ours = self.v1[ctrl]
        return [v for d in self._up(ours, root) if (v := _read(os.path.join(d, name))) is not None]

    def tightest(self, v2_name: str, v1_ctrl: str, v1_name: str) -> str:
        """The smallest limit among our cgroup and its ancestors, or "max"."""
        limits = []
        for v in self._v2_values(v2_name):
            if v.isdigit():
                limits.append(int(v))
        for v in self._v1_values(v1_ctrl, v1_name):
            if v.isdigit() and int(v) < _V1_UNLIMITED:
                limits.append(int(v))
        return str(min(limits)) if limits else "max"

    def cpu_max(self) -> str:
        """cpu.max: the quota/period with the smallest share of a CPU."""
        best: tuple[int, int] | None = None
        for v in self._v2_values("cpu.max"):
            quota, _, period = v.partition(" ")
            if quota.isdigit() and period.isdigit():
                best = min(best or (1 << 62, 1), (int(quota), int(period)),
                           key=lambda qp: qp[0] / qp[1])
        if "cpu" in self.v1:
            root, ours = self.v1["cpu"]
            for d in self._up(ours, root):
                quota = _read(os.path.join(d, "cpu.cfs_quota_us"))
                period = _read(os.path.join(d, "cpu.cfs_period_us"))
                if quota and period and quota.isdigit() and period.isdigit():
                    best = min(best or (1 << 62, 1), (int(quota), int(period)),
                               key=lambda qp: qp[0] / qp[1])
        if best is None:
            period = None
            for v in self._v2_values("cpu.max"):
                period = v.partition(" ")[2]
                break
            if period is None and "cpu" in self.v1:
                period = _read(os.path.join(self.v1["cpu"][1], "cpu.cfs_period_us"))
            return f"max {period or 100000}"
        return f"{best[0]} {best[1]}"

    def cpu_weight(self) -> str:
        vals = self._v2_values("cpu.weight")
        if vals:
            return vals[0]
        shares = self._v1_values("cpu", "cpu.shares")
        if shares and shares[0].isdigit():
            # the kernel's own v1 <-> v2 conversion (cgroup v2 docs)
            return str(max(1, min(10000, 1 + (int(shares[0]) - 2) * 9999 // 262142)))
        return "100"


class CgroupFs(PseudoFs):
    fstype = "cgroup2"
    magic = CGROUP2_SUPER_MAGIC
    mount_options = "ro,nosuid,nodev,noexec,relatime"

    def __init__(self, inst) -> None:
        super().__init__(inst)
        self.host = HostCgroups()
        root = StaticDir("/", 0o555)
        files = {
            "cgroup.controllers": lambda t: " ".join(CONTROLLERS) + "\n",
            "cgroup.subtree_control": lambda t: "\n",
            "cgroup.type": lambda t: "domain\n",
            "cgroup.procs": lambda t: "".join(f"{p.pid}\n" for p in self._processes()),
            "cgroup.threads": lambda t: "".join(f"{tid}\n" for tid in self._tids()),
            "cgroup.events": lambda t: "populated 1\nfrozen 0\n",
            "cgroup.freeze": lambda t: "0\n",
            "cgroup.max.depth": lambda t: "max\n",
            "cgroup.max.descendants": lambda t: "max\n",
            "cgroup.stat": lambda t: "nr_descendants 0\nnr_dying_descendants 0\n",
            "cpu.max": lambda t: self.host.cpu_max() + "\n",
            "cpu.weight": lambda t: self.host.cpu_weight() + "\n",
            "cpu.stat": lambda t: self._cpu_stat(),
            "cpuset.cpus.effective": lambda t: _cpu_list(sorted(os.sched_getaffinity(0))) + "\n",
            "cpuset.mems.effective": lambda t: self._mems(),
            "memory.current": lambda t: f"{self._memory_current()}\n",
            "memory.max": lambda t: self.host.tightest("memory.max", "memory",
                                                       "memory.limit_in_bytes") + "\n",
            # v1 has no counterpart of these two (its soft limit and
            # memory+swap limit mean other things): v2 only.
            "memory.high": lambda t: self.host.tightest("memory.high", "", "") + "\n",
            "memory.swap.max": lambda t: self.host.tightest("memory.swap.max", "", "") + "\n",
            "pids.current": lambda t: f"{len(self._tids())}\n",
            "pids.max": lambda t: self.host.tightest("pids.max", "pids", "pids.max") + "\n",
        }
        for name, fn in files.items():
            root.add(File("/" + name, lambda t, fn=fn: fn(t).encode()))
        self._root = root

    def root_entry(self) -> Dir:
        return self._root

    # -- the instance's numbers -------------------------------------------------

    def _processes(self) -> list["Process"]:
        procs = self.inst.pids.processes_by_vid
        return [procs[v] for v in sorted(procs) if not procs[v].exited]

    def _tids(self) -> list[int]:
        tids = [1]                       # /init's one thread
        for p in self._processes():
            if not p.is_init():
                tids.extend(t.tid for t in list(p.threads.values()))
        return sorted(tids)

    def _live(self):
        """(process, host /proc stat fields after the name) of each pico process."""
        for p in self._processes():
            if p.is_init():
                continue
            try:
                raw = read_host(f"/proc/{p.host_pid}/stat").decode()
            except OSError:
                continue
            yield p, raw.rpartition(")")[2].split()

    def _cpu_stat(self) -> str:
        user = system = 0
        for _p, f in self._live():
            user += int(f[11]) + int(f[13])      # utime + cutime
            system += int(f[12]) + int(f[14])    # stime + cstime
        user_us, system_us = user * 1_000_000 // _HZ, system * 1_000_000 // _HZ
        return (f"usage_usec {user_us + system_us}\nuser_usec {user_us}\n"
                f"system_usec {system_us}\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n")

    def _memory_current(self) -> int:
        total = 0
        for p in self._processes():
            if p.is_init():
                continue
            try:
                total += int(read_host(f"/proc/{p.host_pid}/statm").split()[1]) * _PAGE
            except (OSError, IndexError, ValueError):
                continue
        return total

    def _mems(self) -> str:
        online = _read("/sys/devices/system/node/online")
        return (online or "0") + "\n"


def _cpu_list(cpus: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5" (the kernel's cpu list format)."""
    out, i = [], 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        out.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return ",".join(out)
