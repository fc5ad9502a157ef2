"""/proc's root directory: the static files, then one directory per
instance process (and any thread's by lookup)."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from lxsub.kernel.vfs.pseudo import Dir, Entry

if TYPE_CHECKING:
    from lxsub.kernel.fs.procfs import ProcFs


class ProcRoot(Dir):
    """/proc: the static files, then a directory per instance process in
    ascending pid order; /proc/<tid> of any thread can be looked up too."""

    def __init__(self, fs: ProcFs) -> None:
        super().__init__("/")
        self.fs = fs

    def children(self, task) -> dict[str, Entry]:
        out = dict(self.fs._static.entries)
        pids = self.fs.inst.pids
        procs = pids.processes_by_vid
        for vid in sorted(procs):
            proc = procs[vid]
            if _shown(pids, proc):
                out[str(vid)] = self.fs.process_dir(proc)
        return out

    def lookup(self, task, name: str) -> Entry:
        if name.isdigit() and name[0] != "0":
            vid = int(name)
            pids = self.fs.inst.pids
            proc = pids.processes_by_vid.get(vid)
            if proc is not None and _shown(pids, proc):
                return self.fs.process_dir(proc)
            thread = pids.tasks_by_vid.get(vid)
            if thread is not None and not thread.process.exited:
                return self.fs.process_dir(thread.process, thread, f"/{vid}")
            raise OSError(errno.ENOENT, "no such process")
        entry = self.fs._static.entries.get(name)
        if entry is None:
            raise OSError(errno.ENOENT, "no such file or directory")
        return entry


def _shown(pids, proc) -> bool:
    """A living process, or a zombie: an exited process its parent has not
    yet waited for keeps its /proc/<pid> (state Z in stat and status) until
    it is reaped (proc(5))."""
    return not proc.exited or pids.zombies_by_host.get(proc.host_pid) is proc
