"""Host mechanics for provider workers: several processes serving one
set of seccomp listeners (kernel/workers.py says what they serve).

Any holder of a listener descriptor may receive a notification and answer
it; the kernel hands each notification to exactly one SECCOMP_IOCTL_NOTIF_RECV.
A worker gives each listener a thread of its own that waits in RECV itself:
RECV cannot be non-blocking, and a receiver that waited in poll or epoll
first would need a lock to be sure the notification it saw is still there
when it asks (another worker may take it between the two), which cost
four host calls per call (the lock's two record-lock calls, the epoll
wait, the probing poll). A thread waiting in RECV wakes for a
notification it gets, for one another receiver took first (then it waits
again: since Linux 6.6 every waiting RECV is woken for each notification,
before that a semaphore woke one), or when the filter has no process
left: newer kernels (6.18 here) wake RECV then and it fails with ENOENT;
older ones keep it waiting, so the worker's main thread, which watches
each listener for EPOLLHUP, interrupts it with a signal. Python runs one
thread at a time, so a worker serves one call at a time whatever its
number of threads; the threads only let it wait on every listener at once.

The epochs are counters in a shared anonymous mapping: the provider bumps
them before it changes state a worker may hold a copy of; a worker compares
them with the values its copy was taken at.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import select
import signal
import socket
import stat
import struct
import threading
from typing import Callable

from lxsub.platform import affinity, libc
from lxsub.platform.notify import Listener, Notification

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
RECEIVER_NAME = b"lx-recv"
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


_INTERRUPT = signal.SIGUSR1


class _Receiver:
    """One listener's thread in a worker: RECV, then serve, until told to stop."""

    def __init__(self, fd: int, provider_fd: int, serve: Callable[[Notification, Listener, int], None],
                 turn: threading.Lock, failed: Callable[[BaseException], None]) -> None:
        self.fd = fd
        self.provider_fd = provider_fd
        self.listener = Listener(fd)
        self.stopping = False
        self.in_recv = False
        self._serve = serve
        self._turn = turn
        self._failed = failed
        self._thread = threading.Thread(target=self._run, name=f"recv-{fd}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        libc._libc.prctl(_PR_SET_NAME, RECEIVER_NAME, 0, 0, 0)    # for ps -L, top -H
        while not self.stopping:
            self.in_recv = True
            try:
                n = self.listener.receive()
            except InterruptedError:
                continue           # told to stop, or a stray signal
            except OSError as e:
                if e.errno == errno.ENOENT and not self._hung_up():
                    continue       # its caller went away, or another receiver took it
                return             # no process left on the filter
            finally:
                self.in_recv = False
            # Whatever happens next, a received notification is served or
            # passed on: a call nobody answers would never return.
            with self._turn:
                try:
                    self._serve(n, self.listener, self.provider_fd)
                except BaseException as e:
                    # The worker ends (and the provider forks another): a
                    # listener nobody here receives from any more would
                    # leave its callers to the other workers, or to none.
                    self._failed(e)
                    return

    def _hung_up(self) -> bool:
        ready = select.poll()
        ready.register(self.fd, 0)
        return any(ev & (select.POLLHUP | select.POLLERR) for _, ev in ready.poll(0))

    def stop(self) -> None:
        """Stop the thread once its current call, if any, is answered or passed on."""
        self.stopping = True
        while self._thread.is_alive():
            # Only a waiting RECV is interrupted: a signal elsewhere could
            # end another host call of the call being served with EINTR.
            if self.in_recv:
                try:
                    signal.pthread_kill(self._thread.ident, _INTERRUPT)
                except ProcessLookupError:
                    break          # it has just ended
            self._thread.join(0.005)


class Receivers:
    """A worker's side: a receiving thread per listener (see the module's
    docstring), and an epoll set over its control socket and the listeners'
    ends, for the worker's main thread. `turn` is held while a call is
    served and while the main thread reads the control socket: one at a time."""

    def __init__(self, control: int, serve: Callable[[Notification, Listener, int], None]) -> None:
        self.failure: BaseException | None = None
        # The interrupting signal only has to end a waiting RECV with EINTR:
        # a handler that does nothing, installed without SA_RESTART.
        signal.signal(_INTERRUPT, lambda *_: None)
        self.control = control
        self.turn = threading.Lock()
        self.epoll = select.epoll()
        self.epoll.register(control, select.EPOLLIN)
        self.receivers: dict[int, _Receiver] = {}
        self._serve = serve
        self._woken = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.epoll.register(self._woken, select.EPOLLIN)

    def add(self, fd: int, provider_fd: int) -> None:
        self.epoll.register(fd, 0)          # only its end: EPOLLHUP and EPOLLERR are always reported
        self.receivers[fd] = _Receiver(fd, provider_fd, self._serve, self.turn, self._thread_failed)

    def _thread_failed(self, e: BaseException) -> None:
        self.failure = e
        self.wake_main()

    def drop(self, fd: int) -> None:
        r = self.receivers.pop(fd, None)
        if r is not None:
            r.stop()
            self.epoll.unregister(fd)
            os.close(fd)

    def wait(self) -> list[int]:
        """The control socket, if it has something to say, and the
        listeners whose every process is gone; empty when `wake_main` was
        called."""
        while True:
            try:
                fds = [fd for fd, _ in self.epoll.poll()]
                break
            except InterruptedError:
                continue
        if self._woken in fds:
            os.eventfd_read(self._woken)
            fds.remove(self._woken)
        return fds

    def wake_main(self) -> None:
        """From a receiving thread: make the main thread's `wait` return."""
        os.eventfd_write(self._woken, 1)

    def stop(self) -> None:
        for fd in list(self.receivers):
            self.drop(fd)


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
