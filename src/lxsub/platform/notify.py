"""seccomp user notification: the provider answers a syscall for the caller.

The caller's thread sleeps in the kernel while the provider works; the
answer is a value or an errno, or a descriptor placed in the caller's table
(SECCOMP_IOCTL_NOTIF_ADDFD with SEND: the descriptor and the syscall's
return value in one atomic step, lowest free number, as open(2) would).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

from lxsub.abi.fcntl import O_CLOEXEC
from lxsub.abi.seccomp import SECCOMP_FILTER_FLAG_NEW_LISTENER, SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
from lxsub.platform import features, libc
from lxsub.platform.affinity import WakeHere

_RECV = 0xC0502100        # SECCOMP_IOCTL_NOTIF_RECV
_SEND = 0xC0182101        # SECCOMP_IOCTL_NOTIF_SEND
_ID_VALID = 0x40082102    # SECCOMP_IOCTL_NOTIF_ID_VALID
_ADDFD = 0x40182103       # SECCOMP_IOCTL_NOTIF_ADDFD
_SET_FLAGS = 0x40082104   # SECCOMP_IOCTL_NOTIF_SET_FLAGS

ADDFD_FLAG_SETFD = 1
ADDFD_FLAG_SEND = 2
USER_NOTIF_FLAG_CONTINUE = 1
USER_NOTIF_FD_SYNC_WAKE_UP = 1

_NOTIF = struct.Struct("<QIIiIQ6Q")   # id, pid, flags, nr, arch, ip, args
_RESP = struct.Struct("<QqiI")        # id, val, error, flags
_ADDFD_ARG = struct.Struct("<QIIII")  # id, flags, srcfd, newfd, newfd_flags
_ZERO = bytes(_NOTIF.size)


# Whether install_filter gives WAIT_KILLABLE_RECV: the filter is installed
# in each new pico process, which probes nothing itself and follows the
# provider's answer (platform/features.py; LX_NO_KILLABLE_WAIT=1 or
# LX_HIDE_FEATURES=wait_killable_recv hide it).
KILLABLE_WAIT = features.has("wait_killable_recv")
# Whether calls arrive on listeners at all (not on the ptrace platform,
# whose calls are ptrace stops only the tracer thread can answer).
LISTENERS = features.platform()[0] == "notify"


def install_filter(prog: bytes) -> int:
    """Install the filter on the calling thread; returns its listener.

    With WAIT_KILLABLE_RECV (Linux 5.19), once the provider has read a
    call only a deadly signal wakes the caller before the answer. Without
    it any signal does, and the kernel restarts a call whose work the
    provider has already done: a second mkdir fails with EEXIST, a second
    rename with ENOENT (dpkg stumbles on that). Older kernels go without;
    dispatch then repairs what it can. LX_NO_KILLABLE_WAIT=1 forces that
    path (for its tests)."""
    flags = SECCOMP_FILTER_FLAG_NEW_LISTENER
    if KILLABLE_WAIT:
        flags |= SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
    return libc.seccomp_set_filter(flags, prog)


class Notification:
    __slots__ = ("id", "pid", "nr", "args")

    def __init__(self, nid: int, pid: int, nr: int, args: tuple) -> None:
        self.id = nid
        self.pid = pid
        self.nr = nr
        self.args = args


class Listener:
    """One seccomp listener descriptor (one per filter installed)."""

    # Whether reply_fd_last_holder may be used: with WAIT_KILLABLE_RECV
    # only a deadly signal comes between its two steps.
    last_holder_safe = KILLABLE_WAIT

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buf = bytearray(_NOTIF.size)
        if features.has("sync_wake_up"):
            # Wake the provider on the caller's CPU and the caller on the
            # provider's: a trapped call then costs ~10 us instead of
            # 40-140 us of cross-CPU wake-ups (a VM pays most for those).
            # The flags go by value, not through a pointer.
            fcntl.ioctl(fd, _SET_FLAGS, USER_NOTIF_FD_SYNC_WAKE_UP)

    def receive(self) -> Notification:
        buf = self._buf
        buf[:] = _ZERO            # the kernel wants it zeroed
        fcntl.ioctl(self.fd, _RECV, buf, True)
        v = _NOTIF.unpack(buf)
        return Notification(v[0], v[1], v[3], v[6:])

    def reply(self, nid: int, val: int = 0, error: int = 0, flags: int = 0) -> None:
        # error is the negative errno, as the kernel wants it.
        fcntl.ioctl(self.fd, _SEND, bytearray(_RESP.pack(nid, val, error, flags)), True)

    def reply_unless_gone(self, nid: int, val: int = 0, error: int = 0, flags: int = 0) -> bool:
        """reply(); False if the caller is no longer waiting (ENOENT: it was
        killed, or its thread ended, since the call was received: a window
        that a call passed on by a provider worker widens)."""
        try:
            self.reply(nid, val, error, flags)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
            return False
        return True

    def reply_fd(self, nid: int, srcfd: int, cloexec: bool, tid: int = 0) -> int:
        """Install srcfd in the caller (thread `tid`, if known) and return its
        number as the syscall result.

        With WAIT_KILLABLE_RECV in two steps, ADDFD then SEND: ADDFD with
        SEND marks the call answered before the caller has installed the
        descriptor, and a signal or stop (a debugger or profiler attaching,
        SIGSTOP from a batch scheduler's suspend) that interrupts our wait
        for it makes the kernel take the descriptor back but leave the
        answer, so the caller's call returns 0 (Linux 6.18
        seccomp_notify_addfd). Without WAIT_KILLABLE_RECV the atomic SEND is
        still needed: there any signal could wake the caller between the
        two steps."""
        flags = O_CLOEXEC if cloexec else 0
        if KILLABLE_WAIT:
            number = self._add_fd(bytearray(_ADDFD_ARG.pack(nid, 0, srcfd, 0, flags)), tid)
            self.reply(nid, number, 0)
            return number
        return self._addfd_ioctl(bytearray(_ADDFD_ARG.pack(nid, ADDFD_FLAG_SEND, srcfd, 0, flags)), tid)

    def _addfd_ioctl(self, arg: bytearray, tid: int) -> int:
        if not tid:
            return fcntl.ioctl(self.fd, _ADDFD, arg, True)
        # The caller installs the descriptor itself, woken without
        # SYNC_WAKE_UP's help, then wakes us: keep both wakes on our CPU.
        with WakeHere(tid):
            return fcntl.ioctl(self.fd, _ADDFD, arg, True)

    def _add_fd(self, arg: bytearray, tid: int = 0) -> int:
        """ADDFD without SEND. An interrupted wait for the caller to install
        the descriptor leaves it either installed (the kernel returns its
        number) or taken back (EINTR, or a restart after a stop): asking
        again is always right."""
        while True:
            try:
                return self._addfd_ioctl(arg, tid)
            except InterruptedError:
                continue

    def reply_fd_last_holder(self, nid: int, srcfd: int, cloexec: bool, tid: int = 0) -> None:
        """Install srcfd in the caller (ADDFD without SEND), close it here,
        then answer with its number: the caller's close is then the file's
        last, as in Linux, so what the last close does (inotify's
        IN_CLOSE_WRITE/IN_CLOSE_NOWRITE, the release of OFD locks and
        leases, a FIFO's EOF) has happened when close(2) returns, not when
        the provider gets to its own close. srcfd is closed whatever
        happens. Only with WAIT_KILLABLE_RECV (KILLABLE_WAIT): there only a
        deadly signal can come between the two steps, and ENOENT means the
        caller is dying, with the descriptor or before it."""
        flags = O_CLOEXEC if cloexec else 0
        arg = bytearray(_ADDFD_ARG.pack(nid, 0, srcfd, 0, flags))
        try:
            number = self._add_fd(arg, tid)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return
            raise
        finally:
            os.close(srcfd)
        try:
            self.reply(nid, number, 0)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise

    def add_fd(self, nid: int, srcfd: int, cloexec: bool, newfd: int | None = None) -> int:
        flags = O_CLOEXEC if cloexec else 0
        how = ADDFD_FLAG_SETFD if newfd is not None else 0
        return self._add_fd(bytearray(_ADDFD_ARG.pack(nid, how, srcfd, newfd or 0, flags)))

    def still_valid(self, nid: int) -> bool:
        try:
            fcntl.ioctl(self.fd, _ID_VALID, struct.pack("<Q", nid))
            return True
        except OSError:
            return False
