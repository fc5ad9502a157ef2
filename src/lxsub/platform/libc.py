"""The host system calls Python's os module lacks, through ctypes.

Only this package talks to the host kernel in host-specific ways; the rest of
lxsub sees the small interfaces in platform/__init__.py.
"""

from __future__ import annotations

import ctypes
import errno
import os

from lxsub.abi.fcntl import AT_EMPTY_PATH, AT_FDCWD, AT_SYMLINK_NOFOLLOW
from lxsub.abi.kcmp import KCMP_FILE, KCMP_FILES
from lxsub.abi.seccomp import SECCOMP_SET_MODE_FILTER
from lxsub.abi.stat import SIZEOF_STATX, STATX_BTIME
from lxsub.platform import features
from lxsub.abi.sysno import (SYS_CLOCK_ADJTIME, SYS_KCMP, SYS_OPENAT2, SYS_PIDFD_GETFD, SYS_PIDFD_OPEN,
                             SYS_SECCOMP)

# The interpreter links libc, so its symbols are in the global namespace;
# find_library would fork ldconfig -p at every start.
_libc = ctypes.CDLL(None, use_errno=True)

_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class open_how(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def _check(ret: int) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def syscall(nr: int, *args: int) -> int:
    return _check(_syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args]))


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_libc.prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
                              ctypes.c_ulong(arg4), ctypes.c_ulong(arg5)))


_ptrace = _libc.ptrace
_ptrace.restype = ctypes.c_long
_ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]


def ptrace(request: int, pid: int, addr: int | None = 0, data=0) -> int:
    ctypes.set_errno(0)
    ret = _ptrace(request, pid, addr, data)
    if ret == -1:
        err = ctypes.get_errno()
        if err:
            raise OSError(err, os.strerror(err))
    return ret


def clock_adjtime(clockid: int, timex: bytearray) -> int:
    """The host's clock_adjtime(2) on a struct timex buffer, which it
    updates in place; returns the clock state."""
    buf = (ctypes.c_char * len(timex)).from_buffer(timex)
    return _check(_syscall(ctypes.c_long(SYS_CLOCK_ADJTIME), ctypes.c_long(clockid),
                           ctypes.c_void_p(ctypes.addressof(buf))))


def pidfd_open(pid: int) -> int:
    return syscall(SYS_PIDFD_OPEN, pid, 0)


_int3_syscall = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_long, ctypes.c_int, ctypes.c_int,
                                 ctypes.c_uint, use_errno=True)(("syscall", _libc))


_inotify_add_watch = _libc.inotify_add_watch
_inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]


def inotify_add_watch(fd: int, path: bytes, mask: int) -> int:
    """The host's inotify_add_watch(2) on our inotify descriptor `fd`."""
    return _check(_inotify_add_watch(fd, path, mask))


_inotify_rm_watch = _libc.inotify_rm_watch
_inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]


def inotify_rm_watch(fd: int, wd: int) -> None:
    """The host's inotify_rm_watch(2) on our inotify descriptor `fd`."""
    _check(_inotify_rm_watch(fd, wd))


_inotify_init1 = _libc.inotify_init1
_inotify_init1.argtypes = [ctypes.c_int]


def inotify_init1(flags: int) -> int:
    """A new host inotify instance (inotify_init1(2)) in the provider."""
    return _check(_inotify_init1(flags))


class _EpollEvent(ctypes.Structure):
    _pack_ = 1                       # struct epoll_event is packed on x86_64
    _fields_ = [("events", ctypes.c_uint32), ("data", ctypes.c_uint64)]


_epoll_ctl = _libc.epoll_ctl
_epoll_ctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.POINTER(_EpollEvent)]


def epoll_add(epfd: int, fd: int, events: int, data: int) -> None:
    """EPOLL_CTL_ADD with a data word of our choosing (Python's epoll
    stores the descriptor number there)."""
    _check(_epoll_ctl(epfd, 1, fd, ctypes.byref(_EpollEvent(events, data))))


_name_to_handle_at = _libc.name_to_handle_at
_name_to_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int),
                               ctypes.c_int]


def name_to_handle_at(path: bytes, flags: int, handle) -> int:
    """The host's name_to_handle_at(2) of `path` into `handle`, a ctypes
    buffer holding a struct file_handle; returns the host mount id."""
    mount_id = ctypes.c_int(0)
    _check(_name_to_handle_at(AT_FDCWD, path, handle, ctypes.byref(mount_id), flags))
    return mount_id.value


_open_by_handle_at = _libc.open_by_handle_at
_open_by_handle_at.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]


def open_by_handle_at(mount_fd: int, handle, flags: int) -> int:
    """The host's open_by_handle_at(2): `handle` a ctypes buffer holding a
    struct file_handle; a new descriptor."""
    return _check(_open_by_handle_at(mount_fd, handle, flags))


def same_open_file(fd1: int, fd2: int) -> bool:
    """Whether two of our descriptors share one open file description
    (kcmp(2) KCMP_FILE)."""
    pid = os.getpid()
    return syscall(SYS_KCMP, pid, pid, KCMP_FILE, fd1, fd2) == 0


def same_fd_table(tid1: int, tid2: int) -> bool:
    """Whether two host threads share one descriptor table (kcmp(2)
    KCMP_FILES; either gone: False)."""
    try:
        return syscall(SYS_KCMP, tid1, tid2, KCMP_FILES, 0, 0) == 0
    except OSError:
        return False


def pidfd_getfd(pidfd: int, targetfd: int) -> int:
    # On every call that names a descriptor: a fixed prototype, no wrapping.
    return _check(_int3_syscall(SYS_PIDFD_GETFD, pidfd, targetfd, 0))


# openat2 is on every path lookup: a prototype with fixed argument types and
# one open_how per (flags, mode, resolve) keep ctypes' per-call work small.
_openat2 = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_long, ctypes.c_int, ctypes.c_char_p,
                            ctypes.c_void_p, ctypes.c_size_t, use_errno=True)(("syscall", _libc))
_HOWS: dict[tuple[int, int, int], tuple[open_how, int]] = {}
_HOW_SIZE = ctypes.sizeof(open_how)


def _openat2_syscall(dirfd: int, path: bytes, flags: int, mode: int = 0, resolve: int = 0) -> int:
    key = (flags, mode, resolve)
    how = _HOWS.get(key)
    if how is None:
        h = open_how(flags, mode, resolve)
        how = _HOWS[key] = (h, ctypes.addressof(h))
    return _check(_openat2(SYS_OPENAT2, dirfd, path, how[1], _HOW_SIZE))


def _no_openat2(dirfd: int, path: bytes, flags: int, mode: int = 0, resolve: int = 0) -> int:
    raise OSError(errno.ENOSYS, "openat2 is not available (Linux 5.6)")


# Every caller has a fallback for ENOSYS (a walk one component at a time).
openat2 = _openat2_syscall if features.has("openat2") else _no_openat2


def seccomp_set_filter(flags: int, prog_bytes: bytes) -> int:
    """Install a BPF filter on the calling thread; returns the listener fd if asked."""
    class sock_fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    buf = ctypes.create_string_buffer(prog_bytes, len(prog_bytes))
    prog = sock_fprog(len(prog_bytes) // 8, ctypes.addressof(buf))
    return _check(_syscall(ctypes.c_long(SYS_SECCOMP), ctypes.c_long(SECCOMP_SET_MODE_FILTER),
                           ctypes.c_long(flags), ctypes.byref(prog)))


def kill_group_or_process(pid: int, sig: int) -> None:
    """Signal pid's process group (it leads one), else pid alone; gone is fine."""
    try:
        os.killpg(pid, sig)
    except OSError:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


_STX_BTIME_OFFSET = 80     # struct statx: stx_btime (tv_sec s64, tv_nsec u32)


def birth_time_ns(dir_fd: int, name: bytes = b"") -> int:
    """statx(2) stx_btime of name in dir_fd (of dir_fd itself, O_PATH ones
    too, when name is empty); 0 where the host file system keeps none."""
    buf = ctypes.create_string_buffer(SIZEOF_STATX)
    flags = AT_SYMLINK_NOFOLLOW | (0 if name else AT_EMPTY_PATH)
    _check(_libc.statx(dir_fd, name, flags, STATX_BTIME, buf))
    mask = int.from_bytes(buf.raw[0:4], "little")
    if not mask & STATX_BTIME:
        return 0
    sec = int.from_bytes(buf.raw[_STX_BTIME_OFFSET:_STX_BTIME_OFFSET + 8], "little", signed=True)
    nsec = int.from_bytes(buf.raw[_STX_BTIME_OFFSET + 8:_STX_BTIME_OFFSET + 12], "little")
    return sec * 1_000_000_000 + nsec
