"""The kernel tunables an instance sets for itself (/proc/sys).

Linux keeps these per namespace (the SysV limits per IPC namespace) or per
kernel (the pipe size ceiling); an instance is a kernel of its own to its
programs, so it starts with the host's values and root inside may change
them for the instance alone (the host's own are never written). Each one
here is honoured where lxsub does the work the tunable governs: the
provider's get calls for the SysV limits (kernel/syscalls/ipc.py), its
F_SETPIPE_SZ for pipe-max-size (kernel/syscalls/fcntl.py), inotify_init
for inotify's max_user_instances (kernel/syscalls/inotify.py), unshare's
CLONE_FILES for nr_open (kernel/syscalls/nsproxy.py). The host's
limits stay in force beneath (an instance may set a higher one, which the
host then still refuses, as it does for any of its users). pipe(2) runs
natively, so a new pipe's capacity is the host's default, not capped by
the instance's pipe-max-size for an unprivileged user as fs/pipe.c
alloc_pipe_info would.

A write to a pseudo file reaches the provider through a pipe
(kernel/vfs/pseudo.py); `value` first takes in the writes still in flight,
so that a program that writes a limit and then makes a call finds the
call following the new limit, as on Linux.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from lxsub.abi.limits import PAGE_SIZE
from lxsub.kernel.vfs import pseudo

if TYPE_CHECKING:
    from lxsub.kernel.task import Task

INT_MAX = (1 << 31) - 1
ULONG_MAX = (1 << 64) - 1
IPCMNI = 1 << 15                  # ipc/util.h: the ids' index range, the *mni ceiling
# fs/file.c sysctl_nr_open_min and _max (64-bit): a word of descriptor bits
# at least, at most INT_MAX rounded down to a whole word.
NR_OPEN_MIN = 64
NR_OPEN_MAX = INT_MAX & -64


def read_host(name: str) -> int:
    with open("/proc/sys/" + name) as f:
        return int(f.read().split()[0])


def round_pipe_size(size: int) -> int:
    """fs/pipe.c round_pipe_size(): a page at least, then the next power of
    two; 0 for a size above 2 GiB."""
    if size > 1 << 31:
        return 0
    size = max(size, PAGE_SIZE)
    return 1 << (size - 1).bit_length()


def _pipe_max_size(value: int) -> int:
    """proc_dopipe_max_size: stored rounded, EINVAL for 0 or above 2 GiB."""
    rounded = round_pipe_size(value)
    if value <= 0 or not rounded:
        raise OSError(errno.EINVAL, "not a pipe size")
    return rounded


@dataclass(frozen=True)
class Knob:
    """One integer tunable: proc_dointvec_minmax (or proc_doulongvec_minmax)
    bounds, and how a written value is stored."""
    name: str                              # its path under /proc/sys
    low: int = 0
    high: int = INT_MAX
    store: Callable[[int], int] | None = None
    # The value before any write: None for the host's; a number where the
    # instance starts as a booted kernel does, whatever the host was set to.
    initial: int | None = None

    def parse(self, data: bytes) -> int:
        words = data.split()
        try:
            value = int(words[0]) if words else None
        except ValueError:
            value = None
        if value is None or not self.low <= value <= self.high:
            raise OSError(errno.EINVAL, f"{self.name}: not a number in {self.low}..{self.high}")
        return self.store(value) if self.store else value


KNOBS = {k.name: k for k in (
    Knob("kernel/msgmni", 0, IPCMNI),
    Knob("kernel/shmmni", 0, IPCMNI),
    Knob("kernel/shmmax", 0, ULONG_MAX),
    Knob("fs/pipe-max-size", 0, INT_MAX, _pipe_max_size),
    Knob("fs/nr_open", NR_OPEN_MIN, NR_OPEN_MAX),
    Knob("fs/inotify/max_user_instances", 0, INT_MAX),
    # kernel/reboot.c C_A_D: Ctrl-Alt-Del restarts at once (1, the
    # kernel's default) or signals init (0); reboot(2)'s CAD_ON/CAD_OFF
    # set it too. The instance has no keyboard: it is state its programs read.
    Knob("kernel/ctrl-alt-del", -INT_MAX - 1, INT_MAX, initial=1),
)}


class Sysctls:
    """One instance's values of the KNOBS, each the host's until set."""

    def __init__(self) -> None:
        self._values: dict[str, int] = {}

    def flush_writes(self) -> None:
        """Take in the writes to /proc/sys still in flight (those to every
        pseudo file system: pseudo.WRITES_PENDING knows which have any)."""
        pseudo.apply_pending_writes()

    def value(self, name: str) -> int:
        self.flush_writes()
        if name not in self._values:
            initial = KNOBS[name].initial
            self._values[name] = read_host(name) if initial is None else initial
        return self._values[name]

    def set(self, name: str, value: int) -> None:
        """A value set by a call rather than a write (reboot's CAD_ON/OFF)."""
        self._values[name] = value

    def read(self, name: str) -> bytes:
        return b"%d\n" % self.value(name)

    def write(self, task: "Task | None", name: str, data: bytes) -> None:
        self._values[name] = KNOBS[name].parse(data)


def sysctls_of(inst) -> Sysctls:
    """The instance's tunables, made on first use."""
    found = getattr(inst, "sysctls", None)
    if found is None:
        found = inst.sysctls = Sysctls()
    return found
