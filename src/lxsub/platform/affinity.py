"""The provider's home CPU: keeping each exchange with a pico process on one CPU.

A trapped call is a ping-pong between a pico process and the provider. When
the kernel wakes one of them on another CPU, and that CPU is idle, it has
to be woken first; on a VM that is an exit to the host, tens of
microseconds, several times what the call itself costs (measured here: a
ptrace stop 90-170 us across CPUs, 9-15 us on one; an fd-installing
seccomp answer 60-120 us against 10-20 us).

So the provider's thread stays on one CPU, its home (`settle`), and every
wake-up the provider causes puts the woken thread there too (`WakeHere`):
it is pinned to the home CPU for the wake and given its own mask back right
after. A program that traps often keeps running next to the provider; one
that computes is moved off by the scheduler's load balancing as usual.
Plain seccomp answers need none of this: SYNC_WAKE_UP (notify.py) wakes
each side on the other's CPU.

A program never sees the temporary mask: children made meanwhile get their
parent's own mask (`inherit`), the calls that read or set masks are not
pinned for, and everything the provider starts on the host gets the whole
mask back (`release_child`).
"""

from __future__ import annotations

import ctypes
import os

from lxsub.platform import libc

_sched_getcpu = libc._libc.sched_getcpu
_sched_getcpu.restype = ctypes.c_int
_sched_getcpu.argtypes = []

_home: int | None = None          # the provider's CPU, once settled
_all: set[int] | None = None      # the provider's mask before that


def settle() -> int | None:
    """Pin the calling (provider) thread to the CPU it runs on. None if
    there is only one CPU to run on anyway."""
    global _home, _all
    mask = os.sched_getaffinity(0)
    cpu = _sched_getcpu()
    if len(mask) < 2 or cpu not in mask:
        return None
    os.sched_setaffinity(0, (cpu,))
    _home, _all = cpu, mask
    return cpu


def usable_cpus() -> int:
    """How many CPUs the provider may use: its mask before it settled."""
    return len(_all if _all is not None else os.sched_getaffinity(0))


def release_child() -> None:
    """In a child the provider forked, before it execs: the whole mask."""
    if _all is not None:
        os.sched_setaffinity(0, _all)


def leave_home() -> None:
    """In a provider worker (kernel/workers.py), forked from the provider:
    run on the whole mask and pin nothing: the scheduler places a worker
    where its wake-up finds room, and its SYNC_WAKE_UP answer brings the
    caller to it. Pinning callers to the provider's CPU would put every
    worker's callers on one CPU again."""
    global _home, _all
    if _all is not None:
        os.sched_setaffinity(0, _all)
    _home = _all = None


def inherit(parent: int, child: int) -> None:
    """A child forked while its parent was pinned for a wake-up inherited
    that pin: give it the parent's own mask."""
    if _home is None:
        return
    try:
        mask = os.sched_getaffinity(parent)
        if os.sched_getaffinity(child) != mask:
            os.sched_setaffinity(child, mask)
    except OSError:
        pass      # either is gone already


class WakeHere:
    """`with WakeHere(tid):` around what wakes tid (PTRACE_CONT, an ADDFD
    answer) makes it wake on the home CPU; its mask is restored on exit.
    A thread whose own mask leaves out the home CPU is left alone."""

    __slots__ = ("tid", "mask")

    def __init__(self, tid: int) -> None:
        self.tid = tid
        self.mask: set[int] | None = None

    def __enter__(self) -> "WakeHere":
        if _home is not None:
            try:
                mask = os.sched_getaffinity(self.tid)
                if _home in mask and len(mask) > 1:
                    os.sched_setaffinity(self.tid, (_home,))
                    self.mask = mask
            except OSError:
                pass
        return self

    def __exit__(self, *exc) -> None:
        if self.mask is not None:
            try:
                os.sched_setaffinity(self.tid, self.mask)
            except OSError:
                pass
