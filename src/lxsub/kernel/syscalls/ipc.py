"""System V IPC (shm, sem, msg) keys and ids of the instance's own.

On the host, SysV IPC objects live in the host's IPC namespace, found by a
key anyone may know and an id anyone may guess (svipc(7)). Joining a
private IPC namespace needs CAP_SYS_ADMIN in the joiner's own user
namespace (ipc/namespace.c ipcns_install), which a pico process of an
unprivileged host user lacks without changing its user namespace. So the
instance keeps its own key table: an object it asks for by key is made on
the host as IPC_PRIVATE (no host process finds it by key) and remembered
under the key; every call that names an object by id stops (ptrace, where
the id is in the caller's own register, which no other thread can change)
and is refused as a nonexistent id (EINVAL) unless the id is one of the
instance's. The objects are removed when the instance ends.
"""

from __future__ import annotations

import errno
import struct

from lxsub.abi.ipc import (GETPID, IPC_CREAT, IPC_EXCL, IPC_INFO, IPC_PRIVATE, IPC_RMID, IPC_STAT, MSG_INFO,
                           MSG_STAT, MSG_STAT_ANY, SEM_INFO, SEM_STAT, SEM_STAT_ANY, SHM_INFO, SHM_STAT, SHM_STAT_ANY)
from lxsub.kernel.call import Call, Native
from lxsub.kernel.ipc import MSG, SEM, SHM, IpcSpace

# ctl commands whose first argument is an index, not an id, or that sum up
# the host's table (ipcs's fallback): *_INFO, *_STAT, *_STAT_ANY. IPC_INFO
# (the limits, the same for everyone) is not among them.
_TABLE_COMMANDS = {SHM: (SHM_INFO, SHM_STAT, SHM_STAT_ANY), SEM: (SEM_INFO, SEM_STAT, SEM_STAT_ANY),
                   MSG: (MSG_INFO, MSG_STAT, MSG_STAT_ANY)}
# Where each ctl call's struct buffer is: shmctl(id, cmd, buf), msgctl(id,
# cmd, buf), semctl(id, semnum, cmd, arg) with arg.buf.
_BUF_ARG = {SHM: 2, MSG: 2, SEM: 3}


def _get(kind: str, flags_arg: int):
    def handler(c: Call):
        """shmget/semget/msgget(key, ..., flags) (a ptrace stop)."""
        sp = c.inst.ipc
        key, flags = c.int(0), c.int(flags_arg)
        if key != IPC_PRIVATE:
            ident = sp.keys[kind].get(key)
            if ident is not None:
                if flags & IPC_CREAT and flags & IPC_EXCL:
                    raise OSError(errno.EEXIST, "key exists")
                return ident
            if not flags & IPC_CREAT:
                raise OSError(errno.ENOENT, "no object for this key")
            c.set_arg(0, IPC_PRIVATE)            # made private on the host

        def record(result: int):
            if result >= 0:
                sp.add(kind, key, result)
            return None
        return Native(on_exit=record)
    return handler


def _by_id(kind: str, cmd_arg: int | None = None):
    def handler(c: Call):
        """A call naming an object by id (a ptrace stop): the instance's only."""
        sp = c.inst.ipc
        ident = c.int(0)
        cmd = c.int(cmd_arg) & 0xFF if cmd_arg is not None else None   # without IPC_64
        if cmd is not None and cmd in _TABLE_COMMANDS[kind]:
            raise OSError(errno.EINVAL, "the host's IPC tables are not the instance's")
        if cmd == IPC_INFO:
            return Native()
        if ident not in sp.ids[kind]:
            raise OSError(errno.EINVAL, "no such IPC object in this instance")
        if cmd == IPC_STAT:
            return Native(on_exit=lambda result: _show_key(c, sp, kind, ident, result))
        if kind == SEM and cmd == GETPID:
            # semctl(2) GETPID answers the host pid of the last semop: the instance's
            return Native(on_exit=lambda result: c.inst.pids.vpid_or_zero(result) if result > 0 else None)
        if cmd != IPC_RMID:
            return Native()

        def removed(result: int):
            if result >= 0:
                sp.drop(kind, ident)
            return None
        return Native(on_exit=removed)
    return handler


# Where IPC_STAT's struct (x86_64 msqid64_ds, shmid64_ds) holds the pids the
# host recorded: msg_lspid, msg_lrpid; shm_cpid, shm_lpid.
_PID_FIELDS = {MSG: 96, SHM: 80}


def _show_key(c: Call, sp: IpcSpace, kind: str, ident: int, result: int) -> None:
    """IPC_STAT's ipc64_perm starts with the object's key: the instance's key,
    not the IPC_PRIVATE (0) the host made it with (msgctl(2) msg_perm.__key);
    the last sender's and receiver's (creator's, last attacher's) pids are
    the instance's, not the host's (msgctl(2) msg_lspid, shmctl(2) shm_cpid)."""
    if result < 0:
        return None
    buf = c.ptr(_BUF_ARG[kind])
    key = sp.key_of(kind, ident)
    if key is not None:
        c.write(buf, struct.pack("<i", key))
    at = _PID_FIELDS.get(kind)
    if at is not None:
        pids = struct.unpack("<ii", c.read(buf + at, 8))
        c.write(buf + at, struct.pack("<ii", *(c.inst.pids.vpid_or_zero(p) if p > 0 else p for p in pids)))
    return None


sys_shmget, sys_semget, sys_msgget = _get(SHM, 2), _get(SEM, 2), _get(MSG, 1)
sys_shmat, sys_shmctl = _by_id(SHM), _by_id(SHM, 1)
sys_semop, sys_semctl = _by_id(SEM), _by_id(SEM, 2)
_semtimedop_by_id = _by_id(SEM)


def sys_semtimedop(c: Call):
    # ksys_semtimedop() copies the timeout in before do_semtimedop() looks at
    # nsops or the id: a bad timeout pointer is EFAULT (semop(2)).
    if c.ptr(3):
        c.read(c.ptr(3), 16)
    return _semtimedop_by_id(c)


sys_msgrcv, sys_msgctl = _by_id(MSG), _by_id(MSG, 1)
_msgsnd_by_id = _by_id(MSG)


def sys_msgsnd(c: Call):
    # ksys_msgsnd() reads msgp->mtype before it looks at anything else: a bad
    # msgp is EFAULT whatever the id (msgsnd(2)).
    c.read(c.ptr(1), 8)
    return _msgsnd_by_id(c)
