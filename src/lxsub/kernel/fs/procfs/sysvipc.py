"""/proc/sysvipc/{shm,sem,msg}: the System V objects of the reader's IPC
namespace only (sysvipc_proc_open: the opener's).

The host's files list every object of the host's IPC namespace; the rows
of the instance's objects (kernel/ipc.py) are taken from there, for what
the kernel keeps (sizes, counts, times, rss), and shown as the instance
sees them: its key, its Linux owner, creator and mode, pids in the
instance (0 for a process not of it), in the kernel's own columns
(ipc/shm.c sysvipc_shm_proc_show, ipc/msg.c, ipc/sem.c).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lxsub.kernel.ipc import MODE_BITS, MSG, SEM, SHM, IpcObject
from lxsub.kernel.task import ipc_of
from lxsub.kernel.timekeeping import instance_seconds
from lxsub.kernel.vfs.pseudo import File, StaticDir

if TYPE_CHECKING:
    from lxsub.kernel.instance import Instance
    from lxsub.kernel.task import Task

_HEADERS = {
    SHM: "       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid"
         "  cgid      atime      dtime      ctime                   rss                  swap\n",
    MSG: "       key      msqid perms      cbytes       qnum lspid lrpid   uid   gid  cuid  cgid"
         "      stime      rtime      ctime\n",
    SEM: "       key      semid perms      nsems   uid   gid  cuid  cgid      otime      ctime\n",
}


def _shm(inst: "Instance", ident: int, obj: IpcObject, mode: int, f: list[str]) -> str:
    lpid = _pid(inst, int(f[5]))
    return (f"{obj.key:10d} {ident:10d}  {mode:4o} {int(f[3]):21d} {obj.cpid:5d} {lpid:5d}  "
            f"{int(f[6]):5d} {obj.uid:5d} {obj.gid:5d} {obj.cuid:5d} {obj.cgid:5d} {_time(inst, f[11])} "
            f"{_time(inst, f[12])} {_time(inst, f[13])} {int(f[14]):21d} {int(f[15]):21d}\n")


def _msg(inst: "Instance", ident: int, obj: IpcObject, mode: int, f: list[str]) -> str:
    return (f"{obj.key:10d} {ident:10d}  {mode:4o}  {int(f[3]):10d} {int(f[4]):10d} "
            f"{_pid(inst, int(f[5])):5d} {_pid(inst, int(f[6])):5d} {obj.uid:5d} {obj.gid:5d} "
            f"{obj.cuid:5d} {obj.cgid:5d} {_time(inst, f[11])} {_time(inst, f[12])} {_time(inst, f[13])}\n")


def _sem(inst: "Instance", ident: int, obj: IpcObject, mode: int, f: list[str]) -> str:
    return (f"{obj.key:10d} {ident:10d}  {mode:4o} {int(f[3]):10d} {obj.uid:5d} {obj.gid:5d} "
            f"{obj.cuid:5d} {obj.cgid:5d} {_time(inst, f[8])} {_time(inst, f[9])}\n")


_ROW = {SHM: _shm, MSG: _msg, SEM: _sem}


def _time(inst: "Instance", host_sec: str) -> str:
    return f"{instance_seconds(inst, int(host_sec)):10d}"


def _pid(inst: "Instance", host_pid: int) -> int:
    return (inst.pids.vpid_of_host(host_pid) or 0) if host_pid > 0 else 0


def render(inst: "Instance", kind: str, reader: "Task | None" = None) -> bytes:
    """The file: the header, then one row per object of the reader's IPC
    namespace, by id."""
    rows = [_HEADERS[kind]]
    for ident, obj, f in ipc_of(inst, reader).sysv.host_rows(kind):
        mode = (int(f[2], 8) & ~MODE_BITS) | obj.mode       # SHM_DEST, SHM_LOCKED kept
        rows.append(_ROW[kind](inst, ident, obj, mode, f))
    return "".join(rows).encode()


def proc_entries(inst: "Instance") -> list:
    """/proc/sysvipc and its three files."""
    d = StaticDir("/sysvipc")
    for kind in (MSG, SEM, SHM):
        d.add(File(f"/sysvipc/{kind}", lambda t, k=kind: render(inst, k, t)))
    return [d]
