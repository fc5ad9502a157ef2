"""One trapped system call as a handler sees it: arguments, memory, caller.

Handlers are platform-neutral: they decode arguments with the helpers here,
work on the kernel's objects and return a value, a `NewFd`, a `Native`
(let the host run the call, maybe with other arguments) or a `Blocking`
(finish on a worker thread), or raise OSError with a Linux errno.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from lxsub.abi.fcntl import AT_EMPTY_PATH
from lxsub.platform import memory

if TYPE_CHECKING:
    from lxsub.kernel.instance import Instance
    from lxsub.kernel.task import Task
    from lxsub.platform.ptrace import Regs


@dataclass(slots=True)
class NewFd:
    """Install this provider-side descriptor in the caller and return its number.
    The provider's copy is closed afterwards, or, with `last_holder`, before
    the answer wakes the caller (one more wake-up): the caller's close is
    then the file's last, and what the last close does (inotify's
    IN_CLOSE_WRITE, OFD locks and leases released, a FIFO writer's EOF)
    has happened when its close(2) returns."""
    fd: int
    cloexec: bool
    last_holder: bool = False


@dataclass(slots=True)
class NewFds:
    """Install provider-side descriptors in the caller, write their numbers
    as ints at `addr` in its memory (socketpair's array, SO_PEERPIDFD's
    value) and return 0. The provider's copies are closed afterwards."""
    fds: tuple[int, ...]
    cloexec: bool
    addr: int


@dataclass(slots=True)
class SwapFd:
    """Answer `result`, having first put this provider-side descriptor in
    the caller at its descriptor number `number` in place of the file there
    (dup2's way: seccomp's ADDFD with SETFD). A driver brings a caller's
    open file up to date this way (kernel/fs/loopioctl.py). The provider's
    copy is closed afterwards; where the platform cannot install it, the
    result alone is answered."""
    fd: int
    number: int
    cloexec: bool
    result: int


@dataclass(slots=True)
class Native:
    """Run the syscall on the host (in the caller) with the registers as
    modified in `call.regs`; `on_exit(result) -> new result | None`.
    `own_cpu_mask`: the call reads or sets CPU masks, so the caller must
    run it with its own (the platform may move threads for a wake-up)."""
    on_exit: Callable[[int], int | None] | None = None
    own_cpu_mask: bool = False


@dataclass(slots=True)
class Blocking:
    """Finish on a worker thread; `work()` returns what a handler would.
    A notification's dispatcher sets `still_wanted()`: False once the
    caller has gone or a signal interrupted the call (long waits poll it
    and give up)."""
    work: Callable[[], object]
    still_wanted: Callable[[], bool] | None = None


def _signed(v: int, bits: int) -> int:
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >> (bits - 1) else v


class Call:
    __slots__ = ("inst", "task", "nr", "args", "regs")

    def __init__(self, inst: "Instance", task: "Task", nr: int, args: tuple,
                 regs: "Regs | None" = None) -> None:
        self.inst = inst
        self.task = task
        self.nr = nr
        self.args = args
        self.regs = regs

    # -- arguments ----------------------------------------------------------
    def int(self, i: int) -> int:
        """A C `int` argument (fds, flags, pids): low 32 bits, signed."""
        v = self.args[i] & 0xFFFFFFFF          # _signed(v, 32), inline: several per call
        return v - 0x100000000 if v & 0x80000000 else v

    def uint(self, i: int) -> int:
        return self.args[i] & 0xFFFFFFFF

    def long(self, i: int) -> int:
        return _signed(self.args[i], 64)

    def ptr(self, i: int) -> int:
        return self.args[i]

    # -- caller memory ---------------------------------------------------------
    @property
    def pid(self) -> int:
        return self.task.host_tid

    def read(self, addr: int, n: int) -> bytes:
        return memory.read(self.task.host_tid, addr, n)

    def read_str(self, addr: int, limit: int = 4096) -> bytes:
        return memory.read_cstr(self.task.host_tid, addr, limit)

    def path(self, i: int) -> bytes:
        try:
            name = memory.read_cstr_fd(self.task.process.memfd(), self.args[i], 4096)
        except memory.MemoryFault:
            # /proc/<pid>/mem may name an address space that an exec replaced.
            return memory.read_cstr(self.task.host_tid, self.args[i], 4096)
        if not name:
            # /proc/<pid>/mem reads through PROT_NONE pages (FOLL_FORCE) and
            # finds zeros there; Linux's strncpy_from_user faults: EFAULT,
            # not the ENOENT of an empty name. Checked the way the program
            # itself could read it, only for empty names (off the hot path).
            memory.read_cstr(self.task.host_tid, self.args[i], 1)
        return name

    def path_or_empty(self, i: int, flags: int) -> bytes:
        """The path of an *at() call that may be NULL with AT_EMPTY_PATH
        (Linux 6.11+, getname_maybe_null); NULL otherwise is EFAULT."""
        if not self.args[i] and flags & AT_EMPTY_PATH:
            return b""
        return self.path(i)

    def write(self, addr: int, data: bytes) -> None:
        memory.write(self.task.host_tid, addr, data)

    def set_arg(self, i: int, value: int) -> None:
        assert self.regs is not None, "only traced syscalls can change arguments"
        self.regs.set_args(*[value if j == i else a for j, a in enumerate(self.regs.args())])
