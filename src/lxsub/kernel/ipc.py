"""The instance's System V IPC objects (svipc(7)): which host objects are
its own, under which keys and ids, and their Linux owners and modes
(kernel/syscalls/ipc.py says why the instance keeps its own table rather
than an IPC namespace).

The ids are the instance's, made as ipc/util.c ipc_idr_alloc makes them in
an IPC namespace of its own (the lowest free index, a sequence number that
grows when an index is used again, or the id /proc/sys/kernel/*_next_id
asks for), each standing for its host object's id: the host's ids say
nothing about the host's other objects to the instance, and the ones it
asks for are its own.

Every object is the host user's on the host (mode 0600); who of the
instance may use it is decided here, as ipc/util.c does with the caller's
Linux credentials: `ipcperms` for using it, `ipcctl_obtain_check` for
IPC_SET and IPC_RMID.
"""

from __future__ import annotations

import heapq
import threading
from dataclasses import dataclass

from lxsub.abi.ipc import IPC_PRIVATE, IPC_RMID
from lxsub.abi.sysno import NUMBERS
from lxsub.kernel.creds import CAP_IPC_OWNER, CAP_SYS_ADMIN, Creds
from lxsub.kernel.mqueue import MqueueSpace
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
    host_id: int = -1      # the host object's id


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
_SEQ_SHIFT = _INDEX_MASK.bit_length()              # ipcmni_seq_shift()
_SEQ_MAX = ((1 << 31) - 1) >> _SEQ_SHIFT             # ipcid_seq_max()


def index_of(ident: int) -> int:
    """ipcid_to_idx(): an object's index in its kind's table."""
    return ident & _INDEX_MASK


def seq_of(ident: int) -> int:
    """ipcid_to_seqx(): an id's sequence number (ipc_perm.__seq)."""
    return ident >> _SEQ_SHIFT


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
    """The SysV objects of one IPC namespace: per kind, key -> id and id -> object."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.keys: dict[str, dict[int, int]] = {k: {} for k in KINDS}
        self.objects: dict[str, dict[int, IpcObject]] = {k: {} for k in KINDS}   # by the instance's id
        # /proc/sys/kernel/{shm,sem,msg}_next_id: the id the next object
        # gets (-1: the next free one); ipc_ids' seq and last_idx.
        self.next_id: dict[str, int] = {k: -1 for k in KINDS}
        self._seq: dict[str, int] = {k: 0 for k in KINDS}
        self._last_idx: dict[str, int] = {k: -1 for k in KINDS}
        self._indices = {k: _Indices() for k in KINDS}

    def add(self, kind: str, host_id: int, obj: IpcObject) -> int:
        """Record the host object made for obj; its id in the instance."""
        with self.lock:
            ident = self._new_id(kind)
            obj.host_id = host_id
            self.objects[kind][ident] = obj
            if obj.key != IPC_PRIVATE:
                self.keys[kind][obj.key] = ident
            return ident

    def _new_id(self, kind: str) -> int:
        """ipc/util.c ipc_idr_alloc: next_id's index (or the first free one
        above it) and sequence number, once; else the lowest free index,
        the sequence number growing when the index is not past the last."""
        indices = self._indices[kind]
        wanted = self.next_id[kind]
        if wanted >= 0:
            self.next_id[kind] = -1
            return seq_of(wanted) << _SEQ_SHIFT | indices.take_from(index_of(wanted))
        index = indices.take_lowest()
        if index <= self._last_idx[kind]:
            self._seq[kind] = (self._seq[kind] + 1) % _SEQ_MAX
        self._last_idx[kind] = index
        return self._seq[kind] << _SEQ_SHIFT | index

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

    def host_rows(self, kind: str) -> list[tuple[int, IpcObject, list[str]]]:
        """(id, object, the columns of the host's /proc/sysvipc/<kind> row)
        of each of the instance's objects, by id: what the kernel keeps of
        them (sizes, message and semaphore counts, times, rss), which the
        instance's table does not."""
        objects = {obj.host_id: (ident, obj) for ident, obj in self.listing(kind)}
        if not objects:
            return []
        with open(f"/proc/sysvipc/{kind}", "rb") as f:
            lines = f.read().decode().splitlines()[1:]
        rows = []
        for line in lines:
            fields = line.split()
            found = objects.get(int(fields[1])) if len(fields) > 2 else None
            if found is not None:
                rows.append((*found, fields))
        return sorted(rows, key=lambda row: row[0])

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
            if obj is not None:
                self._indices[kind].free(index_of(ident))
            if obj is not None and self.keys[kind].get(obj.key) == ident:
                del self.keys[kind][obj.key]

    def remove_all(self) -> None:
        """IPC_RMID of every object the instance made (its end)."""
        with self.lock:
            for kind, objects in self.objects.items():
                for obj in objects.values():
                    try:
                        libc.syscall(_CTL_NR[kind], obj.host_id, IPC_RMID, 0)
                    except OSError:
                        pass                 # removed on the host meanwhile
                objects.clear()
                self._indices[kind] = _Indices()
                self.keys[kind].clear()


# /proc/<pid>/ns/ipc of the instance's own IPC namespace (PROC_IPC_INIT_INO).
INSTANCE_IPC_INUM = 0xEFFFFFFF


class IpcNamespace:
    """An IPC namespace (ipc/namespace.c): its System V objects and its
    POSIX message queues. The instance has one; clone/unshare(CLONE_NEWIPC)
    make new ones, empty, which live while a task is in them: when the last
    leaves, every object in it is removed (free_ipc_ns). (An open
    /proc/<pid>/ns/ipc file does not keep one alive here: the provider is
    not told when a program closes it; joining it then finds it empty.)"""

    def __init__(self, inum: int = INSTANCE_IPC_INUM) -> None:
        self.inum = inum
        self.sysv = IpcSpace()
        self.mqueues = MqueueSpace()
        self._tasks = 0
        self._lock = threading.Lock()

    def enter(self) -> None:
        with self._lock:
            self._tasks += 1

    def leave(self) -> None:
        with self._lock:
            self._tasks -= 1
            last = self._tasks == 0
        if last:
            self.close()

    def close(self) -> None:
        """Every object of the namespace removed; it may be used again, empty."""
        self.sysv.remove_all()
        self.mqueues.close()


class _Indices:
    """The table indices in use (idr_alloc's lowest free one, in
    logarithmic time: a program may make tens of thousands of objects)."""

    def __init__(self) -> None:
        self.used: set[int] = set()
        self._freed: list[int] = []      # a heap of free indices below _top
        self._top = 0                    # every index from here up is free

    def take_lowest(self) -> int:
        while self._freed:
            index = heapq.heappop(self._freed)
            if index not in self.used:   # else taken by a *_next_id meanwhile
                return self._take(index)
        return self._take(self._top)

    def take_from(self, start: int) -> int:
        """The lowest free index from start (a *_next_id's)."""
        index = start
        while index in self.used:
            index += 1
        return self._take(index)

    def _take(self, index: int) -> int:
        for below in range(self._top, index):
            heapq.heappush(self._freed, below)
        self._top = max(self._top, index + 1)
        self.used.add(index)
        return index

    def free(self, index: int) -> None:
        self.used.discard(index)
        heapq.heappush(self._freed, index)
