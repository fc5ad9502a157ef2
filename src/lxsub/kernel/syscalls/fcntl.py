"""<fcntl.h>: open, openat, openat2, creat, the fcntl commands that name
PIDs and F_SETPIPE_SZ (the instance's pipe-max-size)."""

from __future__ import annotations

import errno
import fcntl as _fcntl
import os
import stat
import struct

from lxsub.abi.fcntl import (AT_FDCWD, F_CREATED_QUERY, F_GETLK, F_GETOWN, F_GETOWN_EX, F_GETPIPE_SZ, F_OFD_GETLK,
                              F_OWNER_PGRP, F_OWNER_PID, F_OWNER_TID, F_SETOWN, F_SETOWN_EX, F_SETPIPE_SZ, F_UNLCK,
                              O_CLOEXEC, O_CREAT, O_PATH, O_TMPFILE, RESOLVE_BENEATH, RESOLVE_CACHED,
                              RESOLVE_IN_ROOT)
from lxsub.abi.sysno import SYS_OPENAT
from lxsub.kernel import fanotify
from lxsub.kernel.call import Call, Native, NewFd
from lxsub.kernel.creds import CAP_SYS_RESOURCE
from lxsub.kernel.sysctl import round_pipe_size, sysctls_of
from lxsub.kernel.task import active_pid_ns
from lxsub.kernel.vfs import created, lookup
from lxsub.kernel.vfs.open import open_at
from lxsub.platform import memory

_VALID_OPEN_FLAGS = 0o37777777


def _open(c: Call, dirfd: int, path: bytes, flags: int, mode: int, resolve: int = 0):
    if flags & O_PATH and c.regs is not None:
        return _open_path_in_caller(c, dirfd, path, flags)
    fd = open_at(c.inst.vfs, c.task, dirfd, path, flags, mode, resolve)
    if isinstance(fd, int) and c.task.landlock is not None:
        _check_landlock(c.task.landlock, fd, flags)
    if isinstance(fd, int):
        permission = fanotify.raise_open(c.inst, c.task, fd)
        if permission is not None:
            return _when_permitted(permission, fd, flags)
    return opened(fd, flags)


def _when_permitted(permission: "fanotify.Permission", fd: int, flags: int):
    """do_dentry_open's fsnotify_open_perm: the open waits (on a worker)
    for the fanotify listeners' answers; FAN_DENY fails it with EPERM (a
    file O_CREAT made stays, as in Linux)."""
    from lxsub.kernel.call import Blocking

    def work():
        try:
            allowed = permission.wait(job.still_wanted)
        except BaseException:
            os.close(fd)
            raise
        if not allowed:
            os.close(fd)
            raise OSError(errno.EPERM, "denied by a fanotify listener")
        return opened(fd, flags)
    job = Blocking(work)
    return job


def _check_landlock(domain, fd: int, flags: int) -> None:
    """A Landlock-restricted thread may open only what its domain allows
    (LANDLOCK_ACCESS_FS_READ_FILE, _WRITE_FILE, _READ_DIR): the provider
    opened the file, so the helper of the thread's domain opens it again
    to be told (platform/landlock.py). Regular files, devices and
    directories: a FIFO or socket would be opened anew, not checked. The
    check comes after the open, so an O_CREAT or O_TRUNC it refuses has
    happened already (LANDLOCK_ACCESS_FS_MAKE_REG, _TRUNCATE not held)."""
    mode = os.fstat(fd).st_mode
    if stat.S_ISDIR(mode):
        access = os.O_RDONLY | os.O_DIRECTORY
    elif stat.S_ISREG(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        access = flags & os.O_ACCMODE
    else:
        return
    if access == os.O_ACCMODE:
        return                      # 3: neither read nor write (ioctls only)
    try:
        domain.check_open(fd, access)
    except OSError:
        os.close(fd)
        raise


def opened(fd, flags: int):
    """The answer to an open: the provider's descriptor (or the job that
    will have it) handed over."""
    if isinstance(fd, int):
        # A file opened for writing is handed over as its caller's alone:
        # watchers wait for its IN_CLOSE_WRITE, lock and FIFO users for its
        # last close. Read-only opens, most of them, keep the cheaper answer
        # (their IN_CLOSE_NOWRITE may follow close(2) by the provider's close).
        return NewFd(fd, bool(flags & O_CLOEXEC), last_holder=bool(flags & os.O_ACCMODE))
    return _wrap_blocking(fd, flags)


def _open_path_in_caller(c: Call, dirfd: int, path: bytes, flags: int) -> Native:
    """O_PATH descriptors cannot be handed over by seccomp (ADDFD refuses
    them), so these opens trap by ptrace: the provider resolves the file and
    the caller opens the provider's descriptor through its /proc magic link.
    A sibling thread could rewrite that path meanwhile; the result is checked
    to be the file we resolved, and a caller that swapped it is killed."""
    return install_path_fd(c, open_at(c.inst.vfs, c.task, dirfd, path, flags, 0), flags & O_CLOEXEC)


def install_path_fd(c: Call, fd: int, cloexec: int) -> Native:
    """The traced caller opens the provider's O_PATH descriptor `fd`
    (closed here) through its magic link, as _open_path_in_caller says."""
    st = os.fstat(fd)
    regs = c.regs
    magic = f"/proc/{os.getpid()}/fd/{fd}".encode() + b"\0"
    (addr,) = memory.write_below_sp(c.pid, regs.rsp, [magic])
    regs.orig_rax = SYS_OPENAT
    regs.set_args(AT_FDCWD & 0xFFFFFFFFFFFFFFFF, addr, O_PATH | cloexec, 0)
    task, inst = c.task, c.inst

    def check(result: int):
        os.close(fd)
        if result >= 0 and not _same_file(task, result, st):
            inst.log.warn(f"pid {task.pid}: O_PATH open target changed under us; killed")
            os.kill(task.host_tid, 9)
        return None
    return Native(on_exit=check)


def _same_file(task, fd: int, want: os.stat_result) -> bool:
    try:
        local = lookup.copy_fd(task, fd)
    except OSError:
        return False
    try:
        got = os.fstat(local)
        return (got.st_dev, got.st_ino) == (want.st_dev, want.st_ino)
    finally:
        os.close(local)


def _wrap_blocking(job, flags: int):
    from lxsub.kernel.call import Blocking

    def work():
        return NewFd(job.work(), bool(flags & O_CLOEXEC))
    return Blocking(work)


def sys_open(c: Call):
    return _open(c, AT_FDCWD, c.path(0), c.uint(1), c.uint(2))


def sys_openat(c: Call):
    return _open(c, c.int(0), c.path(1), c.uint(2), c.uint(3))


def sys_creat(c: Call):
    return _open(c, AT_FDCWD, c.path(0), os.O_WRONLY | O_CREAT | os.O_TRUNC, c.uint(1))


def sys_openat2(c: Call):
    size = c.args[3]
    if size < 24:
        raise OSError(errno.EINVAL, "open_how too small")
    raw = c.read(c.ptr(2), min(size, 4096))
    flags, mode, resolve = struct.unpack_from("<QQQ", raw)
    if any(raw[24:]):
        raise OSError(errno.E2BIG, "unknown open_how fields")
    if flags & ~_VALID_OPEN_FLAGS or resolve & ~0x3F:
        raise OSError(errno.EINVAL, "bad flags")
    # build_open_flags: a mode only with O_CREAT/O_TMPFILE, and only
    # permission bits (S_IALLUGO) in it.
    if flags & O_CREAT or flags & O_TMPFILE == O_TMPFILE:
        if mode & ~0o7777:
            raise OSError(errno.EINVAL, "mode beyond S_IALLUGO")
    elif mode:
        raise OSError(errno.EINVAL, "mode without O_CREAT")
    if resolve & RESOLVE_BENEATH and resolve & RESOLVE_IN_ROOT:
        raise OSError(errno.EINVAL, "RESOLVE_BENEATH with RESOLVE_IN_ROOT")
    if resolve & RESOLVE_CACHED:
        # Every walk of the provider looks the names up on the host: never
        # only from the dentry cache (openat2(2): EAGAIN, retry without).
        raise OSError(errno.EAGAIN, "not cached")
    if flags & O_PATH:
        # openat2's flags are in memory, out of the filter's sight, so this
        # cannot be a traced O_PATH open: give a plain read-only descriptor.
        flags = (flags & ~O_PATH) | os.O_RDONLY
    return _open(c, c.int(0), c.path(1), flags, mode, resolve)


_FLOCK_L_PID = 24          # struct flock: l_type, l_whence (shorts), l_start, l_len, l_pid


def sys_fcntl(c: Call):
    """Only the commands that carry PIDs trap: the owner commands (by
    notify, done on a copy of the descriptor) and the lock tests (traced:
    a POSIX lock test must be the caller's own, see below)."""
    fd, cmd = c.int(0), c.int(1)
    if cmd in (F_GETLK, F_OFD_GETLK):
        return _lock_test(c)
    local = lookup.copy_fd(c.task, fd)
    try:
        if cmd == F_SETPIPE_SZ:
            return _set_pipe_size(c, local, c.uint(2))
        if cmd == F_CREATED_QUERY:
            return created.created(local)
        if cmd == F_GETOWN:
            kind, pid = struct.unpack("<ii", _fcntl.fcntl(local, F_GETOWN_EX, bytes(8)))
            if created.is_marked_owner(kind, pid):
                return 0                    # the mark of a created file: no owner
            return _owner_to_virtual(c, _fcntl.fcntl(local, F_GETOWN))
        if cmd == F_SETOWN:
            return _fcntl.fcntl(local, F_SETOWN, _owner_to_host(c, c.int(2)))
        if cmd == F_GETOWN_EX:
            kind, pid = struct.unpack("<ii", _fcntl.fcntl(local, F_GETOWN_EX, bytes(8)))
            if created.is_marked_owner(kind, pid):
                kind, pid = F_OWNER_PID, 0
            if kind == F_OWNER_TID:
                task = c.inst.pids.tasks_by_host.get(pid)
                vpid = task.tid if task is not None else 0
            else:
                vpid = abs(_owner_to_virtual(c, pid if kind != F_OWNER_PGRP else -pid))
            c.write(c.ptr(2), struct.pack("<ii", kind, vpid))
            return 0
        if cmd == F_SETOWN_EX:
            kind, pid = struct.unpack("<ii", c.read(c.ptr(2), 8))
            host = abs(_owner_to_host(c, -pid if kind == F_OWNER_PGRP else pid))
            if kind == F_OWNER_TID and pid:
                task = c.inst.pids.task_in(active_pid_ns(c.task), pid)
                host = task.host_tid if task is not None else _no_such(pid)
            _fcntl.fcntl(local, F_SETOWN_EX, struct.pack("<ii", kind, host))
            return 0
        raise OSError(errno.EINVAL, "unexpected fcntl command")
    finally:
        os.close(local)


def _set_pipe_size(c: Call, local: int, size: int) -> int:
    """fs/pipe.c pipe_set_size: growing a pipe beyond the instance's
    /proc/sys/fs/pipe-max-size needs CAP_SYS_RESOURCE (EPERM); the host
    then resizes it, with its own limits beneath."""
    current = _fcntl.fcntl(local, F_GETPIPE_SZ)       # EBADF: not a pipe
    rounded = round_pipe_size(size)
    if not rounded:
        raise OSError(errno.EINVAL, "pipe size too large")
    if (rounded > current and rounded > sysctls_of(c.inst).value("fs/pipe-max-size")
            and not c.task.creds.capable(CAP_SYS_RESOURCE)):
        raise OSError(errno.EPERM, "above pipe-max-size")
    return _fcntl.fcntl(local, F_SETPIPE_SZ, size)


def _lock_test(c: Call):
    """F_GETLK / F_OFD_GETLK run in the caller (its own locks never conflict
    with it, which a test from the provider would not know); the holder's
    l_pid the host wrote is then made the instance's: fcntl(2) gives 0 for
    a holder outside the caller's PID namespace, and -1 stays for OFD locks."""
    pid, addr, inst, ns = c.pid, c.ptr(2), c.inst, active_pid_ns(c.task)

    def translate(result: int):
        if result == 0 and addr:
            l_type = struct.unpack("<h", memory.read(pid, addr, 2))[0]
            host = struct.unpack("<i", memory.read(pid, addr + _FLOCK_L_PID, 4))[0]
            if l_type != F_UNLCK and host > 0:
                memory.write(pid, addr + _FLOCK_L_PID, struct.pack("<i", inst.pid_of_host(host, ns) or 0))
        return None
    return Native(on_exit=translate)


def _no_such(_pid: int) -> int:
    raise OSError(errno.ESRCH, "no such process")


def _owner_to_host(c: Call, owner: int) -> int:
    if owner == 0:
        return 0
    host = c.inst.pids.host_pid_in(active_pid_ns(c.task), abs(owner))
    if host is None:
        raise OSError(errno.ESRCH, "no such process")
    return host if owner > 0 else -host


def _owner_to_virtual(c: Call, owner: int) -> int:
    if owner == 0:
        return 0
    v = c.inst.pid_of_host(abs(owner), active_pid_ns(c.task)) or 0
    return v if owner > 0 else -v
