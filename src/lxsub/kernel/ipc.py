"""The instance's System V IPC objects (svipc(7)): which host objects are
its own, under which keys, and their Linux owners and modes
(kernel/syscalls/ipc.py says why the instance keeps its own table rather
than an IPC namespace).

Every object is the host user's on the host (mode 0600); who of the
instance may use it is decided here, as ipc/util.c does with the caller's
Linux credentials: `ipcperms` for using it, `ipcctl_obtain_check` for
IPC_SET and IPC_RMID.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from lxsub.abi.ipc import IPC_PRIVATE, IPC_RMID
from lxsub.abi.sysno import NUMBERS
from lxsub.kernel.creds import CAP_IPC_OWNER, CAP_SYS_ADMIN, Creds
from lxsub.platform import libc

SHM, SEM, MSG = "shm", "sem", "msg"
KINDS = (SHM, SEM, MSG)
_CTL_NR = {SHM: NUMBERS["shmctl"], SEM: NUMBERS["semctl"], MSG: NUMBERS["msgctl"]}
S_IRUGO, S_IWUGO, S_IXUGO = 0o444, 0o222, 0o111
MODE_BITS = 0o777          # S_IRWXUGO: what ipc_perm.mode holds of a get's flags
HOST_MODE = 0o600          # the host object: its host user's only


@dataclass(slots=True)
class IpcObject:
    """struct kern_ipc_perm as the instance sees it, and what the get
    calls compare (shm_segsz, sem_nsems) and IPC_STAT shows (the creator)."""
    key: int
    uid: int
    gid: int
    cuid: int
    cgid: int
    mode: int
    size: int              # shm: segment size; sem: number of semaphores; msg: 0
    cpid: int              # the creator's pid in the instance


def _index_mask() -> int:
    """ipc/util.h: an id is seq << IPCMNI_SHIFT | index, the shift 15, or
    24 when the host booted with ipcmni_extend."""
    try:
        with open("/proc/cmdline", "rb") as f:
            extended = b"ipcmni_extend" in f.read().split()
    except OSError:
        extended = False
    return (1 << (24 if extended else 15)) - 1


_INDEX_MASK = _index_mask()


def index_of(ident: int) -> int:
    """ipcid_to_idx(): an object's index in its kind's table."""
    return ident & _INDEX_MASK


def ipcperms(creds: Creds, obj: IpcObject, flag: int) -> bool:
    """ipc/util.c ipcperms(): the owner's or creator's bits for the
    effective uid, the group's for the owner's or creator's group, else
    the others'; CAP_IPC_OWNER passes everything."""
    requested = (flag >> 6 | flag >> 3 | flag) & 0o7
    granted = obj.mode
    if creds.euid in (obj.cuid, obj.uid):
        granted >>= 6
    elif creds.in_group(obj.cgid) or creds.in_group(obj.gid):
        granted >>= 3
    return not requested & ~granted & 0o7 or creds.capable(CAP_IPC_OWNER)


def may_control(creds: Creds, obj: IpcObject) -> bool:
    """ipc/util.c ipcctl_obtain_check(): IPC_SET and IPC_RMID are for the
    owner, the creator, or CAP_SYS_ADMIN."""
    return creds.euid in (obj.cuid, obj.uid) or creds.capable(CAP_SYS_ADMIN)


class IpcSpace:
    """The instance's SysV objects: per kind, key -> id and id -> object."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.keys: dict[str, dict[int, int]] = {k: {} for k in KINDS}
        self.objects: dict[str, dict[int, IpcObject]] = {k: {} for k in KINDS}

    def add(self, kind: str, ident: int, obj: IpcObject) -> None:
        with self.lock:
            self.objects[kind][ident] = obj
            if obj.key != IPC_PRIVATE:
                self.keys[kind][obj.key] = ident

    def by_key(self, kind: str, key: int) -> tuple[int, IpcObject] | None:
        with self.lock:
            ident = self.keys[kind].get(key)
            return (ident, self.objects[kind][ident]) if ident is not None else None

    def count(self, kind: str) -> int:
        return len(self.objects[kind])

    def get(self, kind: str, ident: int) -> IpcObject | None:
        return self.objects[kind].get(ident)

    def listing(self, kind: str) -> list[tuple[int, IpcObject]]:
        """The instance's objects of one kind, by id (/proc/sysvipc)."""
        with self.lock:
            return sorted(self.objects[kind].items())

    def host_rows(self, kind: str) -> list[tuple[IpcObject, list[str]]]:
        """The columns of the host's /proc/sysvipc/<kind> row of each of the
        instance's objects, by id: what the kernel keeps of them (sizes,
        message and semaphore counts, times, rss), which the instance's
        table does not."""
        objects = dict(self.listing(kind))
        if not objects:
            return []
        with open(f"/proc/sysvipc/{kind}", "rb") as f:
            lines = f.read().decode().splitlines()[1:]
        rows = []
        for line in lines:
            fields = line.split()
            obj = objects.get(int(fields[1])) if len(fields) > 2 else None
            if obj is not None:
                rows.append((obj, fields))
        return rows

    def max_index(self, kind: str) -> int:
        """ipc/util.h ipc_get_maxidx() of the instance's objects: the highest
        index in use, -1 for none (the *_INFO commands' result)."""
        with self.lock:
            return max((index_of(ident) for ident in self.objects[kind]), default=-1)

    def at_index(self, kind: str, index: int) -> tuple[int, IpcObject] | None:
        """The object at a table index (the *_STAT commands' argument)."""
        with self.lock:
            for ident, obj in self.objects[kind].items():
                if index_of(ident) == index:
                    return ident, obj
        return None

    def drop(self, kind: str, ident: int) -> None:
        with self.lock:
            obj = self.objects[kind].pop(ident, None)
            if obj is not None and self.keys[kind].get(obj.key) == ident:
                del self.keys[kind][obj.key]

    def remove_all(self) -> None:
        """IPC_RMID of every object the instance made (its end)."""
        with self.lock:
            for kind, objects in self.objects.items():
                for ident in objects:
                    try:
                        libc.syscall(_CTL_NR[kind], ident, IPC_RMID, 0)
                    except OSError:
                        pass                 # removed on the host meanwhile
                objects.clear()
                self.keys[kind].clear()
