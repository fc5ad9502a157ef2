"""Copying another process's descriptor into the provider, closing our own.

With pidfd_getfd(2) (Linux 5.6) the copy is the very open file. Without
it, a tracee stopped at one of the ptrace platform's stops sends the
descriptor itself (the platform registers that way with
`set_stopped_sender`); any other process's descriptor is reopened through
/proc/<pid>/fd/<n> with the flags its fdinfo shows: the same file, but a
new open file description (its own offset), or an O_PATH descriptor of it
where the file cannot be opened again (sockets, anonymous inodes).
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Callable

from lxsub.platform import features, libc

# (host tid, descriptor) -> a copy, or None when tid is not at such a stop.
StoppedSender = Callable[[int, int], "int | None"]
_stopped_sender: StoppedSender | None = None

_O_PATH = 0o10000000
# What a reopen keeps of the original's status flags (fcntl F_GETFL).
_KEEP = os.O_ACCMODE | os.O_APPEND | os.O_NONBLOCK | os.O_DIRECT | os.O_NOATIME | os.O_SYNC | os.O_DSYNC


# (host pid, descriptor) -> whether it is the platform's own, not the program's.
_hidden_check: Callable[[int, int], bool] | None = None


def set_hidden_check(check: Callable[[int, int], bool] | None) -> None:
    global _hidden_check
    _hidden_check = check


def is_hidden(host_pid: int, fd: int) -> bool:
    """Whether descriptor fd of host_pid is the platform's (the ptrace
    platform's channel), which /proc/<pid>/fd must not show."""
    return _hidden_check is not None and _hidden_check(host_pid, fd)


def set_stopped_sender(sender: StoppedSender | None) -> None:
    global _stopped_sender
    _stopped_sender = sender


def take_fd(host_pid: int, host_tid: int, fd: int, pidfd: Callable[[], int]) -> int:
    """A provider-side copy of descriptor fd of process host_pid (thread
    host_tid); `pidfd` gives the process's pidfd when pidfd_getfd is there.
    The platform's own descriptor is nobody's to copy: EBADF, as for a
    number not open."""
    if is_hidden(host_pid, fd):
        raise OSError(errno.EBADF, "bad file descriptor")
    if features.has("pidfd_getfd"):
        return libc.pidfd_getfd(pidfd(), fd)
    if _stopped_sender is not None:
        got = _stopped_sender(host_tid, fd)
        if got is not None:
            return got
    return reopen(host_pid, fd)


def reopen(host_pid: int, fd: int) -> int:
    """Open the file behind /proc/<pid>/fd/<fd> again (EBADF if no such descriptor)."""
    path = f"/proc/{host_pid}/fd/{fd}"
    try:
        flags = fdinfo_flags(host_pid, fd)
        if flags & _O_PATH:
            return os.open(path, _O_PATH | os.O_CLOEXEC)
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise OSError(errno.EBADF, "bad file descriptor") from None
    want = (flags & _KEEP) | os.O_CLOEXEC | os.O_NOCTTY
    if stat.S_ISFIFO(mode):
        want |= os.O_NONBLOCK      # never wait here for the other end
    try:
        new = os.open(path, want)
    except OSError as e:
        if e.errno not in (errno.ENXIO, errno.EACCES, errno.EPERM, errno.EOPNOTSUPP, errno.ENODEV):
            raise
        return os.open(path, _O_PATH | os.O_CLOEXEC)
    if stat.S_ISFIFO(mode) and not flags & os.O_NONBLOCK:
        os.set_blocking(new, True)
    return new


def fdinfo_flags(host_pid: int, fd: int) -> int:
    """The status flags (and O_CLOEXEC) of a process's descriptor, octal in
    its fdinfo (the kernel's own format: only OSError, if it has no such
    descriptor, is for callers to expect)."""
    with open(f"/proc/{host_pid}/fdinfo/{fd}", "rb") as f:
        for line in f:
            if line.startswith(b"flags:"):
                return int(line.split()[1], 8)
    return 0


def close_fds_except(keep: int, low: int = 3) -> None:
    """Close every descriptor from `low` up but `keep` (-1: none kept):
    close_range(2) where the kernel has it (Python's closerange uses it),
    else one by one from /proc/self/fd rather than 65536 closes."""
    if features.has("close_range"):
        if keep >= low:
            os.closerange(low, keep)
            os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
        else:
            os.closerange(low, os.sysconf("SC_OPEN_MAX"))
        return
    for name in os.listdir("/proc/self/fd"):
        n = int(name)
        if n >= low and n != keep:
            try:
                os.close(n)
            except OSError:
                pass      # the listing's own descriptor, already closed


def socket_inode(host_pid: int, fd: int) -> int | None:
    """The inode of descriptor `fd` of a host process when it is a socket
    (its /proc link reads socket:[INODE]), else None."""
    try:
        link = os.readlink(f"/proc/{host_pid}/fd/{fd}")
    except OSError:
        return None
    return socket_inode_of_link(link)


def socket_inode_of_link(link: str) -> int | None:
    """The inode a /proc/<pid>/fd link names when it is a socket's."""
    if not (link.startswith("socket:[") and link.endswith("]")):
        return None
    return int(link[len("socket:["):-1])
