"""System V IPC (shm, sem, msg) keys, ids and permissions of the instance's own.

On the host, SysV IPC objects live in the host's IPC namespace, found by a
key anyone may know and an id anyone may guess (svipc(7)). Joining a
private IPC namespace needs CAP_SYS_ADMIN in the joiner's own user
namespace (ipc/namespace.c ipcns_install), which a pico process of an
unprivileged host user lacks without changing its user namespace. So the
instance keeps its own key table: an object it asks for by key is made on
the host as IPC_PRIVATE (no host process finds it by key) with mode 0600
(its host user's), and remembered under the key with its Linux owner,
creator and mode (kernel/ipc.py), under an id of the instance's own (its
get call answers that id, not the host's); every call that names an
object by id stops (ptrace, where the id is in the caller's own register,
which no other thread can change) and is refused as a nonexistent id
(EINVAL) unless the id is one of the instance's, then checked with the
caller's Linux credentials as ipc/util.c does and pointed at the host
object. IPC_SET is done by the provider
(the host object keeps its host owner); IPC_STAT shows the Linux view.
The objects are removed when the instance ends.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import struct

from lxsub.abi.ipc import (GETALL, GETNCNT, GETPID, GETVAL, GETZCNT, IPC_CREAT, IPC_EXCL, IPC_INFO, IPC_PRIVATE,
                           IPC_RMID, IPC_SET, IPC_STAT, MSG_INFO, MSG_STAT, MSG_STAT_ANY, SEM_INFO, SEM_STAT,
                           SEM_STAT_ANY, SETALL, SETVAL, SHM_EXEC, SHM_HUGETLB, SHM_INFO, SHM_LOCK, SHM_RDONLY, SHM_STAT,
                           SHM_STAT_ANY, SHM_UNLOCK)
from lxsub.abi.limits import PAGE_SIZE
from lxsub.abi.sysno import NUMBERS
from lxsub.kernel.call import Call, Native
from lxsub.kernel.creds import CAP_IPC_LOCK, CAP_SYS_RESOURCE
from lxsub.kernel.ipc import (HOST_MODE, MODE_BITS, MSG, S_IRUGO, S_IWUGO, S_IXUGO, SEM, SHM, IpcObject, IpcSpace,
                              index_of, ipcperms, may_control, seq_of)
from lxsub.kernel.sysctl import read_host, sysctls_of
from lxsub.kernel.task import active_pid_ns, ipc_of
from lxsub.kernel.timekeeping import instance_seconds
from lxsub.platform import libc

# ctl commands on the whole table rather than an object (their first
# argument is ignored), and those whose first argument is an index in it
# (ipcs's fallback when /proc/sysvipc is missing).
_INFO_COMMANDS = {SHM: SHM_INFO, SEM: SEM_INFO, MSG: MSG_INFO}
_STAT_COMMANDS = {SHM: (SHM_STAT, SHM_STAT_ANY), SEM: (SEM_STAT, SEM_STAT_ANY), MSG: (MSG_STAT, MSG_STAT_ANY)}
_STAT_ANY = (SHM_STAT_ANY, SEM_STAT_ANY, MSG_STAT_ANY)
# sizeof struct shminfo64 (nine unsigned longs), struct seminfo (ten ints),
# struct msginfo (seven ints and a short); struct shm_info (an int, then
# five unsigned longs).
_INFO_SIZE = {SHM: 72, SEM: 40, MSG: 32}
_SHM_INFO = struct.Struct("<i4xQQQQQ")
# What each ctl command needs (ipc/shm.c, sem.c, msg.c): a permission for
# ipcperms, or "owner" (ipcctl_obtain_check). The kinds' own commands share
# numbers (semctl's GETPID and GETVAL are shmctl's SHM_LOCK and SHM_UNLOCK,
# which need no permission, only ownership or CAP_IPC_LOCK).
_COMMON_NEEDS = {IPC_STAT: S_IRUGO, IPC_SET: "owner", IPC_RMID: "owner"}
_NEEDS = {SHM: _COMMON_NEEDS, MSG: _COMMON_NEEDS,
          SEM: {**_COMMON_NEEDS, GETPID: S_IRUGO, GETVAL: S_IRUGO, GETALL: S_IRUGO, GETNCNT: S_IRUGO,
                GETZCNT: S_IRUGO, SETVAL: S_IWUGO, SETALL: S_IWUGO}}
# Where each ctl call's struct buffer is: shmctl(id, cmd, buf), msgctl(id,
# cmd, buf), semctl(id, semnum, cmd, arg) with arg.buf.
_BUF_ARG = {SHM: 2, MSG: 2, SEM: 3}
_CMD_ARG = {SHM: 1, MSG: 1, SEM: 2}
# struct ipc64_perm (x86_64): key, uid, gid, cuid, cgid, mode, then seq.
_PERM = struct.Struct("<iIIIII")
# The pids in shmid64_ds (shm_cpid, shm_lpid) and msqid64_ds (msg_lspid, msg_lrpid).
_PIDS = {SHM: (80, 84), MSG: (96, 100), SEM: ()}
# The times: shm_atime/dtime/ctime, msg_stime/rtime/ctime, sem_otime/ctime.
_TIMES = {SHM: (56, 64, 72), MSG: (48, 56, 64), SEM: (48, 64)}
_DS_SIZE = {SHM: 112, MSG: 120, SEM: 104}
_MSG_QBYTES = 88
_CTL_NR = {SHM: NUMBERS["shmctl"], SEM: NUMBERS["semctl"], MSG: NUMBERS["msgctl"]}


def _space(c: Call) -> IpcSpace:
    """The SysV objects of the caller's IPC namespace."""
    return ipc_of(c.inst, c.task).sysv


def _get(kind: str, flags_arg: int):
    def handler(c: Call):
        """shmget/semget/msgget(key, ..., flags) (a ptrace stop)."""
        sp = _space(c)
        key, flags = c.int(0), c.int(flags_arg)
        size = c.args[1] if kind != MSG else 0
        creds = c.task.creds
        if key != IPC_PRIVATE:
            found = sp.by_key(kind, key)
            if found is not None:
                # ipc/util.c ipcget_public, ipc_check_perms, *_more_checks
                ident, obj = found
                if flags & IPC_CREAT and flags & IPC_EXCL:
                    raise OSError(errno.EEXIST, "key exists")
                if not ipcperms(creds, obj, flags):
                    raise OSError(errno.EACCES, "permission denied")
                if kind == SHM and size > obj.size or kind == SEM and c.int(1) > obj.size:
                    raise OSError(errno.EINVAL, "larger than the existing object")
                return ident
            if not flags & IPC_CREAT:
                raise OSError(errno.ENOENT, "no object for this key")
            c.set_arg(0, IPC_PRIVATE)            # made private on the host
        _check_new(c, kind, size, flags)
        # The host object is the host user's alone; who inside may use it
        # is the instance's business (ipcperms on the Linux mode).
        c.set_arg(flags_arg, (flags & ~MODE_BITS) | HOST_MODE)
        obj = IpcObject(key, creds.euid, creds.egid, creds.euid, creds.egid, flags & MODE_BITS,
                        c.int(1) if kind == SEM else size, c.task.process.pid)

        def record(result: int):
            return sp.add(kind, result, obj) if result >= 0 else None     # the instance's id
        return Native(on_exit=record)
    return handler


# The instance's limits on the number of objects of a kind (kernel/sysctl.py).
_COUNT_LIMIT = {SHM: "kernel/shmmni", MSG: "kernel/msgmni"}


def _check_new(c: Call, kind: str, size: int, flags: int) -> None:
    """The checks on a new object, in ipc/shm.c newseg's order, with the
    limits the instance may set for itself in /proc/sys/kernel: shmmax
    (EINVAL), SHM_HUGETLB's lock (EPERM), then ipc/util.c ipc_addid's
    shmmni and msgmni (ENOSPC). The host's limits apply beneath."""
    sysctls = sysctls_of(c.inst)
    sysctls.flush_writes()                  # a *_next_id just written
    if kind == SHM and size > sysctls.value("kernel/shmmax"):
        raise OSError(errno.EINVAL, "larger than shmmax")
    if kind == SHM and flags & SHM_HUGETLB:
        _check_hugetlb_lock(c, size)
    limit = _COUNT_LIMIT.get(kind)
    if limit is not None and _space(c).count(kind) >= sysctls.value(limit):
        raise OSError(errno.ENOSPC, f"{limit} objects in use")


def _check_hugetlb_lock(c: Call, size: int) -> None:
    """fs/hugetlbfs hugetlb_file_setup: a caller without CAP_IPC_LOCK,
    outside vm.hugetlb_shm_group, locks the segment's pages against its
    RLIMIT_MEMLOCK (mm/mlock.c user_shm_lock), else EPERM. The host asks
    the host user's capabilities, which are not the caller's Linux ones.
    (Only this segment's pages count here, not the user's other locked
    segments.)"""
    creds = c.task.creds
    if creds.capable(CAP_IPC_LOCK) or creds.in_group(read_host("vm/hugetlb_shm_group")):
        return
    limit = resource.prlimit(c.task.host_pid, resource.RLIMIT_MEMLOCK)[0]
    pages = (size + PAGE_SIZE - 1) // PAGE_SIZE
    if limit != resource.RLIM_INFINITY and pages > limit // PAGE_SIZE:
        raise OSError(errno.EPERM, "RLIMIT_MEMLOCK too low for SHM_HUGETLB")


def _object(c: Call, kind: str) -> IpcObject:
    """The object the call's id names; the call will name its host object."""
    obj = _space(c).get(kind, c.int(0))
    if obj is None:
        raise OSError(errno.EINVAL, "no such IPC object in this instance")
    c.set_arg(0, obj.host_id)
    return obj


def _check(c: Call, obj: IpcObject, flag: int) -> None:
    if not ipcperms(c.task.creds, obj, flag):
        raise OSError(errno.EACCES, "permission denied")


def sys_shmat(c: Call):
    """shmat(id, addr, flags): read, and write unless SHM_RDONLY, and
    execute with SHM_EXEC (ipc/shm.c do_shmat)."""
    obj = _object(c, SHM)
    flags = c.int(2)
    _check(c, obj, (S_IRUGO if flags & SHM_RDONLY else S_IRUGO | S_IWUGO)
           | (S_IXUGO if flags & SHM_EXEC else 0))
    return Native()


def sys_msgsnd(c: Call):
    # ksys_msgsnd() reads msgp->mtype before it looks at anything else: a bad
    # msgp is EFAULT whatever the id (msgsnd(2)).
    c.read(c.ptr(1), 8)
    _check(c, _object(c, MSG), S_IWUGO)
    return Native()


def sys_msgrcv(c: Call):
    _check(c, _object(c, MSG), S_IRUGO)
    return Native()


_SEMBUF = struct.Struct("<HhH")
_SEMOPM = 500               # ipc/sem.c: more operations are E2BIG before anything is read


def sys_semop(c: Call):
    """semop/semtimedop(id, sops, nsops): writing if any operation alters
    a value, else reading (ipc/sem.c do_semtimedop). The operations are
    the caller's memory, read once here; the kernel reads them again."""
    nsops = c.args[2]
    if not 1 <= nsops <= _SEMOPM:
        return Native()                      # EINVAL or E2BIG from the kernel
    raw = c.read(c.ptr(1), nsops * _SEMBUF.size)
    obj = _object(c, SEM)
    alter = any(op for _, op, _ in _SEMBUF.iter_unpack(raw))
    _check(c, obj, S_IWUGO if alter else S_IRUGO)
    return Native()


def sys_semtimedop(c: Call):
    # ksys_semtimedop() copies the timeout in before do_semtimedop() looks at
    # nsops or the id: a bad timeout pointer is EFAULT (semop(2)).
    if c.ptr(3):
        c.read(c.ptr(3), 16)
    return sys_semop(c)


def _ctl(kind: str):
    def handler(c: Call):
        """shmctl/semctl/msgctl naming an object by id (a ptrace stop)."""
        cmd = c.int(_CMD_ARG[kind]) & 0xFF                # without IPC_64
        if cmd in (IPC_INFO, _INFO_COMMANDS[kind]):
            return _info(c, kind, cmd)
        if cmd in _STAT_COMMANDS[kind]:
            return _stat_at_index(c, kind, cmd)
        obj = _object(c, kind)
        ident, creds = c.int(0), c.task.creds
        need = _NEEDS[kind].get(cmd)
        if cmd == IPC_SET:
            return _ipc_set(c, kind, obj)
        if need == "owner" and not may_control(creds, obj):
            raise OSError(errno.EPERM, "not the object's owner or creator")
        if isinstance(need, int):
            _check(c, obj, need)
        if kind == SHM and cmd in (SHM_LOCK, SHM_UNLOCK) and not creds.capable(CAP_IPC_LOCK) \
                and creds.euid not in (obj.uid, obj.cuid):
            raise OSError(errno.EPERM, "SHM_LOCK: not the owner")      # ipc/shm.c shmctl_do_lock
        if cmd == IPC_STAT:
            return Native(on_exit=lambda result: _show(c, kind, ident, obj, result))
        if cmd == GETPID and kind == SEM:
            return Native(on_exit=lambda result: _virtual_pid(c, result) if result > 0 else None)
        if cmd == IPC_RMID:
            return Native(on_exit=lambda result: _space(c).drop(kind, ident) if result >= 0 else None)
        return Native()
    return handler


def _virtual_pid(c: Call, host_pid: int) -> int:
    """A pid an object recorded, as the instance numbers it (0: none of its)."""
    if host_pid <= 0:
        return host_pid
    return c.inst.pid_of_host(host_pid, active_pid_ns(c.task)) or 0


def _show(c: Call, kind: str, ident: int, obj: IpcObject, result: int) -> None:
    """IPC_STAT's result in the caller's buffer, in the Linux view."""
    if result < 0:
        return None
    buf = c.ptr(_BUF_ARG[kind])
    c.write(buf, _linux_view(c, kind, ident, obj, c.read(buf, _DS_SIZE[kind])))
    return None


def _linux_view(c: Call, kind: str, ident: int, obj: IpcObject, host_ds: bytes) -> bytes:
    """A host *id64_ds as the instance sees it: the key the object was made
    with (the host's is IPC_PRIVATE: msgctl(2) msg_perm.__key), its Linux
    owner, creator and mode (the host's state bits, SHM_DEST and
    SHM_LOCKED, kept), its id's sequence number (__seq), the creator's and
    last users' pids in the instance, its times on the instance's clock."""
    ds = bytearray(host_ds)
    host_mode = struct.unpack_from("<I", ds, 20)[0]
    _PERM.pack_into(ds, 0, obj.key, obj.uid, obj.gid, obj.cuid, obj.cgid, (host_mode & ~MODE_BITS) | obj.mode)
    struct.pack_into("<H", ds, _PERM.size, seq_of(ident) & 0xFFFF)
    for i, off in enumerate(_PIDS[kind]):
        host = struct.unpack_from("<i", ds, off)[0]
        pid = obj.cpid if kind == SHM and i == 0 else _virtual_pid(c, host)
        struct.pack_into("<i", ds, off, pid)
    for off in _TIMES[kind]:
        struct.pack_into("<q", ds, off, instance_seconds(c.inst, struct.unpack_from("<q", ds, off)[0]))
    return bytes(ds)


def _host_ctl(kind: str, ident: int, cmd: int, size: int) -> bytes:
    """The provider's own ctl call on a host object or table, into its own
    buffer (the objects are its host user's, mode 0600)."""
    buf = ctypes.create_string_buffer(size)
    libc.syscall(_CTL_NR[kind], ident, *((0,) if kind == SEM else ()), cmd, ctypes.addressof(buf))
    return buf.raw


def _info(c: Call, kind: str, cmd: int) -> int:
    """IPC_INFO and SHM_INFO/SEM_INFO/MSG_INFO (ipc/shm.c shmctl_ipc_info,
    shmctl_shm_info; ipc/sem.c semctl_info; ipc/msg.c msgctl_info): the
    limits are the host's but those the instance set for itself; the usage is the
    instance's own objects, not the host's; the result is the highest
    index in use (ipc_get_maxidx), 0 for none."""
    if cmd == IPC_INFO:
        info = _limits(c.inst, kind)
    elif kind == SHM:
        info = _shm_info(c)
    else:
        info = bytearray(_limits(c.inst, kind))
        rows = _space(c).host_rows(kind)
        if kind == SEM:
            # seminfo.semusz: the sets; semaem: their semaphores (used_sems).
            struct.pack_into("<i", info, 28, len(rows))
            struct.pack_into("<i", info, 36, min(sum(int(f[3]) for _, _, f in rows), 0x7FFFFFFF))
        else:
            # msginfo.msgpool: the queues; msgmap: their messages; msgtql: their bytes.
            struct.pack_into("<ii", info, 0, len(rows), min(sum(int(f[4]) for _, _, f in rows), 0x7FFFFFFF))
            struct.pack_into("<i", info, 24, min(sum(int(f[3]) for _, _, f in rows), 0x7FFFFFFF))
        info = bytes(info)
    c.write(c.ptr(_BUF_ARG[kind]), info)
    return max(_space(c).max_index(kind), 0)


# Where IPC_INFO's structs hold the limits the instance sets for itself:
# struct shminfo64's shmmax and shmmni, struct msginfo's msgmni.
_OWN_LIMITS = {SHM: (("<Q", 0, "kernel/shmmax"), ("<Q", 16, "kernel/shmmni")),
               MSG: (("<i", 16, "kernel/msgmni"),), SEM: ()}


def _limits(inst, kind: str) -> bytes:
    """IPC_INFO's struct: the host's limits, with the instance's own."""
    info = bytearray(_host_ctl(kind, 0, IPC_INFO, _INFO_SIZE[kind]))
    for fmt, offset, name in _OWN_LIMITS[kind]:
        struct.pack_into(fmt, info, offset, sysctls_of(inst).value(name))
    return bytes(info)


def _shm_info(c: Call) -> bytes:
    """struct shm_info: used_ids, then in pages shm_tot (the segments'
    sizes rounded up), shm_rss and shm_swp (/proc/sysvipc/shm has them in
    bytes), swap_attempts and swap_successes (always 0)."""
    rows = _space(c).host_rows(SHM)
    pages = sum((int(f[3]) + PAGE_SIZE - 1) // PAGE_SIZE for _, _, f in rows)
    rss = sum(int(f[14]) for _, _, f in rows) // PAGE_SIZE
    swap = sum(int(f[15]) for _, _, f in rows) // PAGE_SIZE
    return _SHM_INFO.pack(len(rows), pages, rss, swap, 0, 0)


def _stat_at_index(c: Call, kind: str, cmd: int) -> int:
    """SHM_STAT/SEM_STAT/MSG_STAT and their _STAT_ANY: IPC_STAT of the
    object at an index of the instance's table (EINVAL where it has none),
    read permission needed but for _STAT_ANY; the result is the object's
    id (ipc/shm.c shmctl_stat, sem.c semctl_stat, msg.c msgctl_stat)."""
    # ipc/util.c ipc_obtain_object_idr: the argument's index bits, so an id works too.
    found = _space(c).at_index(kind, index_of(c.int(0)))
    if found is None:
        raise OSError(errno.EINVAL, "no IPC object of this instance at this index")
    ident, obj = found
    if cmd not in _STAT_ANY:
        _check(c, obj, S_IRUGO)
    ds = _host_ctl(kind, obj.host_id, IPC_STAT, _DS_SIZE[kind])
    c.write(c.ptr(_BUF_ARG[kind]), _linux_view(c, kind, ident, obj, ds))
    return ident


def _ipc_set(c: Call, kind: str, obj: IpcObject) -> int:
    """IPC_SET: the new owner and mode are the instance's (the host object
    stays its host user's); the provider sets the host object so that its
    change time, and a queue's msg_qbytes, are the kernel's (ipc/*
    *ctl_down). Only the owner, the creator or CAP_SYS_ADMIN."""
    ds = bytearray(c.read(c.ptr(_BUF_ARG[kind]), _DS_SIZE[kind]))
    creds = c.task.creds
    if not may_control(creds, obj):
        raise OSError(errno.EPERM, "not the object's owner or creator")
    _, uid, gid, _, _, mode = _PERM.unpack_from(ds)
    if kind == MSG:
        qbytes = struct.unpack_from("<Q", ds, _MSG_QBYTES)[0]
        if qbytes > _msgmnb() and not creds.capable(CAP_SYS_RESOURCE):
            raise OSError(errno.EPERM, "msg_qbytes above msgmnb")
    _PERM.pack_into(ds, 0, 0, os.geteuid(), os.getegid(), 0, 0, HOST_MODE)
    host = ctypes.create_string_buffer(bytes(ds), len(ds))
    libc.syscall(_CTL_NR[kind], obj.host_id, *((0,) if kind == SEM else ()), IPC_SET, ctypes.addressof(host))
    obj.uid, obj.gid, obj.mode = uid, gid, (obj.mode & ~MODE_BITS) | (mode & MODE_BITS)
    return 0


def _msgmnb() -> int:
    """The host's msgmnb (/proc/sys/kernel/msgmnb): msg_qbytes' ceiling
    without CAP_SYS_RESOURCE, which the host applies to its objects too."""
    with open("/proc/sys/kernel/msgmnb") as f:
        return int(f.read())


sys_shmget, sys_semget, sys_msgget = _get(SHM, 2), _get(SEM, 2), _get(MSG, 1)
sys_shmctl, sys_semctl, sys_msgctl = _ctl(SHM), _ctl(SEM), _ctl(MSG)
