"""The instance's System V IPC objects (svipc(7)): which host objects are
its own and under which keys (kernel/syscalls/ipc.py says why the instance
keeps its own table rather than an IPC namespace)."""

from __future__ import annotations

import threading

from lxsub.abi.ipc import IPC_PRIVATE, IPC_RMID
from lxsub.abi.sysno import NUMBERS
from lxsub.platform import libc

SHM, SEM, MSG = "shm", "sem", "msg"
_CTL_NR = {SHM: NUMBERS["shmctl"], SEM: NUMBERS["semctl"], MSG: NUMBERS["msgctl"]}


class IpcSpace:
    """The instance's SysV objects: per kind, key -> id and the set of ids."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.keys: dict[str, dict[int, int]] = {SHM: {}, SEM: {}, MSG: {}}
        self.ids: dict[str, set[int]] = {SHM: set(), SEM: set(), MSG: set()}

    def add(self, kind: str, key: int, ident: int) -> None:
        with self.lock:
            self.ids[kind].add(ident)
            if key != IPC_PRIVATE:
                self.keys[kind][key] = ident

    def key_of(self, kind: str, ident: int) -> int | None:
        """The key the instance made object `ident` under (None: private)."""
        with self.lock:
            for key, i in self.keys[kind].items():
                if i == ident:
                    return key
        return None

    def drop(self, kind: str, ident: int) -> None:
        with self.lock:
            self.ids[kind].discard(ident)
            for key, i in list(self.keys[kind].items()):
                if i == ident:
                    del self.keys[kind][key]

    def remove_all(self) -> None:
        """IPC_RMID of every object the instance made (its end)."""
        with self.lock:
            for kind, ids in self.ids.items():
                for ident in ids:
                    try:
                        libc.syscall(_CTL_NR[kind], ident, IPC_RMID, 0)
                    except OSError:
                        pass                 # removed on the host meanwhile
                ids.clear()
                self.keys[kind].clear()
