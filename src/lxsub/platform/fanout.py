"""Host mechanics for provider workers: several processes serving one
set of seccomp listeners (kernel/workers.py says what they serve).

Any holder of a listener descriptor may receive a notification and answer
it; the kernel hands each notification to exactly one SECCOMP_IOCTL_NOTIF_RECV.
The RECV ioctl cannot be non-blocking, so a receiver that lost the race for
a notification would sleep in it until the next one on that listener,
while others wait elsewhere. Receivers therefore take a lock (a POSIX
record lock, one per pool) around "is one pending (poll, no wait)? then
RECV": under the lock a pending notification cannot vanish, and no worker
ever sleeps in RECV. Each worker waits in its own epoll set, where every
listener is added with EPOLLEXCLUSIVE: a new notification wakes one idle
worker, not all of them (epoll(7)).

The epochs are counters in a shared anonymous mapping: the provider bumps
them before it changes state a worker may hold a copy of; a worker compares
them with the values its copy was taken at.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import select
import socket
import stat
import struct

from lxsub.platform import affinity, libc
from lxsub.platform.notify import Listener, Notification

_PR_SET_PDEATHSIG = 1
_O_PATH = 0o10000000

# Shared words: 0 task epoch, 1 snapshot epoch, then per worker slot
# (served, forwarded) pairs.
_WORD = struct.Struct("<Q")
TASKS, SNAPSHOT = 0, 1
_SLOTS_AT = 2
MAX_SLOTS = 256


class Epochs:
    """Counters shared by the provider and its workers (fork keeps the mapping)."""

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, (_SLOTS_AT + 2 * MAX_SLOTS) * 8, mmap.MAP_SHARED)

    def get(self, word: int) -> int:
        return _WORD.unpack_from(self._map, word * 8)[0]

    def bump(self, word: int) -> None:
        """Only the provider bumps (one writer): no atomic add needed."""
        _WORD.pack_into(self._map, word * 8, self.get(word) + 1)

    def count(self, slot: int, forwarded: bool) -> None:
        """A worker counts the calls it answered and those it passed on."""
        word = _SLOTS_AT + 2 * slot + (1 if forwarded else 0)
        _WORD.pack_into(self._map, word * 8, self.get(word) + 1)

    def counts(self, slots: int) -> tuple[int, int]:
        """(answered by workers, passed to the provider) over all slots."""
        served = sum(self.get(_SLOTS_AT + 2 * s) for s in range(slots))
        forwarded = sum(self.get(_SLOTS_AT + 2 * s + 1) for s in range(slots))
        return served, forwarded


class ReceiveLock:
    """One pool's lock around poll-then-RECV (see the module's docstring).
    POSIX record locks belong to a process, so the one descriptor every
    worker inherits still excludes them from each other (fcntl(2))."""

    def __init__(self) -> None:
        self.fd = os.memfd_create("lxsub-recv-lock", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, 1)

    def take(self) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_EX, 1, 0)

    def give(self) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, 0)


class SharedListeners:
    """A worker's side: its epoll set over the pool's listeners and its own
    control socket."""

    def __init__(self, lock: ReceiveLock, control: int) -> None:
        self.lock = lock
        self.control = control
        self.epoll = select.epoll()
        self.epoll.register(control, select.EPOLLIN)
        self.listeners: dict[int, tuple[Listener, int]] = {}   # our fd -> (listener, provider's fd)
        self._probes: dict[int, select.poll] = {}

    def add(self, fd: int, provider_fd: int) -> None:
        self.listeners[fd] = (Listener(fd), provider_fd)
        probe = self._probes[fd] = select.poll()
        probe.register(fd, select.POLLIN)
        self.epoll.register(fd, select.EPOLLIN | select.EPOLLEXCLUSIVE)

    def drop(self, fd: int) -> None:
        if self.listeners.pop(fd, None) is not None:
            del self._probes[fd]
            self.epoll.unregister(fd)
            os.close(fd)

    def wait(self) -> list[tuple[int, bool]]:
        """(fd, ended) for the control socket and the listeners with
        something to say; `ended`: every process of its filter is gone."""
        while True:
            try:
                events = self.epoll.poll()
                break
            except InterruptedError:
                continue
        return [(fd, bool(ev & (select.EPOLLHUP | select.EPOLLERR))) for fd, ev in events]

    def receive(self, fd: int) -> Notification | None:
        """The pending notification of listener fd, if one is still pending."""
        lst = self.listeners[fd][0]
        self.lock.take()
        try:
            ready = self._probes[fd].poll(0)
            if not ready or not ready[0][1] & select.POLLIN:
                return None
            try:
                return lst.receive()
            except OSError:
                return None      # ENOENT: its caller went away between poll and RECV
        finally:
            self.lock.give()


def become_worker(keep: set[int]) -> None:
    """In a worker right after fork: die with the provider, run on every CPU
    (not pinned to the provider's home), and close what the provider held
    that has a meaning when closed (pipes, sockets, terminals, open files:
    a copy held here would keep a reader from seeing EOF or a file busy).
    O_PATH descriptors and directories (the snapshot's nodes) stay."""
    libc._libc.prctl(_PR_SET_PDEATHSIG, 9, 0, 0, 0)
    affinity.leave_home()
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd in keep or fd <= 2:
            continue
        try:
            if fcntl.fcntl(fd, fcntl.F_GETFL) & _O_PATH or stat.S_ISDIR(os.fstat(fd).st_mode):
                continue
            os.close(fd)
        except OSError:
            pass


def socket_pair() -> tuple[socket.socket, socket.socket]:
    """Provider end, worker end: datagrams with descriptors (SCM_RIGHTS)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return a, b
