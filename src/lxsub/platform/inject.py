"""Running a syscall of the provider's inside a stopped tracee thread.

As a debugger's inferior call (or CRIU's parasite) does: the thread's
registers are saved, its instruction pointer is set to a `syscall`
instruction of its own (the one it has just executed, at rip-2 after a
syscall stop, else one in its vDSO), rax and the argument registers to
the call wanted, and it runs that one instruction; at the stop after it
the result is read and the next call of the injection loaded, or everything
put back: the registers exactly, and the scratch memory (below the red
zone, under the stack pointer) the arguments were written to.

The event loop never waits for the tracee: an injection is a small state
machine the engine drives with the thread's stops: PTRACE_SINGLESTEP over
the `syscall` instruction (one stop per call: the step's SIGTRAP, which is
suppressed), or, while a Linux tracer watches the thread's syscall stops,
PTRACE_SYSCALL (its entry and exit stops). What the program could see of
it is hidden:
- a signal that arrives meanwhile is taken at its delivery stop, kept
  (its siginfo too) and sent again once the registers are back; at its
  new delivery stop the kept siginfo replaces the one the resend made;
- the injected call trapped by the instance's own filter (a seccomp stop)
  is let through: the provider knows its own call by the thread.
A thread killed meanwhile ends the injection (its `gone` callback).
"""

from __future__ import annotations

import errno
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from lxsub.abi.sysno import NUMBERS
from lxsub.platform import affinity, libc, memory, ptrace
from lxsub.platform.ptrace import Regs, SigInfo

if TYPE_CHECKING:
    from lxsub.platform.engine import Engine

RED_ZONE = 128
# The call is restarted after a signal (the signal is kept, see above):
# ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK.
_RESTARTS = (-512, -513, -514, -516)
# SIGTRAP of a single step over the `syscall` (x86 user_single_step_report):
# TRAP_BRKPT, or TRAP_TRACE; a program's own int3 is SI_KERNEL, kill(2) <= 0.
_STEP_CODES = (1, 2)
SYSCALL_INSN = b"\x0f\x05"
_SYS_TGKILL = NUMBERS["tgkill"]


@dataclass(frozen=True)
class Scratch:
    """An argument that is the address of byte `offset` of the data an
    injected call was given (written below the thread's red zone)."""
    offset: int = 0


@dataclass(frozen=True)
class SysCall:
    """One injected call: its number, arguments (ints or Scratch) and the
    bytes its Scratch arguments point into; `pointers`: (where, offset)
    pairs, an 8-byte pointer to byte `offset` of the data written at byte
    `where` of it (a struct holding a pointer to more of the data)."""
    nr: int
    args: Sequence[int | Scratch] = ()
    data: bytes = b""
    pointers: Sequence[tuple[int, int]] = ()


# What to do with each result: the next call, or None when done.
NextCall = Callable[[int], "SysCall | None"]


class Injection:
    """The injection under way in one thread (engine.injections[tid])."""

    def __init__(self, engine: "Engine", tid: int, first: SysCall, after: NextCall,
                 done: Callable[[], None], gone: Callable[[], None] | None,
                 at: int | None, stepping: bool = False) -> None:
        self.engine, self.tid = engine, tid
        self.stepping = stepping
        self.call, self.after, self.done, self.gone_hook = first, after, done, gone
        self.insn_at = at                 # the `syscall` instruction to run
        self.saved: Regs | None = None
        self.saved_mem: tuple[int, bytes] | None = None
        self.in_call = False
        self.kept_signals: list[SigInfo] = []

    # -- starting -----------------------------------------------------------------

    def start(self, at_exec: bool) -> None:
        """Called by the engine instead of letting the thread run on. At a
        syscall-exit stop: go. At a PTRACE_EVENT_EXEC stop execve's return
        value is still to be written: first run to its exit (stop or step)."""
        if at_exec:
            self._step()
        else:
            self._start_at_syscall_exit()

    def _start_at_syscall_exit(self) -> None:
        self.saved = ptrace.get_regs(self.tid, Regs())
        if self.insn_at is None:
            self.insn_at = syscall_insn_before(self.tid, self.saved.rip)
        self._load(self.call)

    # -- the stops ------------------------------------------------------------------

    def on_stop(self, sig: int, event: int) -> None:
        if sig == ptrace.SYSCALL_STOP:
            self._on_syscall_stop()
        elif event == ptrace.EVENT_SECCOMP or event == ptrace.EVENT_STOP:
            # Our own call trapped by the instance's filter: let it run.
            # (A group-stop or PTRACE_INTERRUPT waits for the end: the
            # engine runs a pending interrupt hook then.)
            self._step()
        elif event == 0:
            info = ptrace.get_siginfo(self.tid)
            if self.stepping and sig == signal.SIGTRAP and info.si_code in _STEP_CODES:
                self._on_step()
                return
            # A signal-delivery stop: keep the signal for later.
            self.kept_signals.append(info)
            self._step()
        else:
            self._step()

    def _on_syscall_stop(self) -> None:
        op = ptrace.syscall_stop_op(self.tid)
        if op == ptrace.SYSCALL_INFO_ENTRY:
            self.in_call = self.saved is not None
            self._step()
        elif self.saved is None:
            self._start_at_syscall_exit()   # execve's own exit, after the exec event
        elif self.in_call:
            self._call_returned()
        else:
            self._step()

    def _on_step(self) -> None:
        """Stepping: the thread has run one instruction (the `syscall`), or
        (first) returned from execve."""
        if self.saved is None:
            self._start_at_syscall_exit()
        elif self.in_call:
            self._call_returned()
        else:
            self._step()

    def _call_returned(self) -> None:
        result = ptrace.signed64(ptrace.get_regs(self.tid, Regs()).rax)
        if result in _RESTARTS:
            self._step()       # a signal came: its delivery stop, then the restart
            return
        self.in_call = False
        self._load(self.after(result))

    def _step(self) -> None:
        # On the provider's CPU, as the engine's own restarts: a stop is
        # 9-15 us there, several times that across CPUs (affinity.py).
        with affinity.WakeHere(self.tid):
            if self.stepping:
                ptrace.restart(ptrace.PTRACE_SINGLESTEP, self.tid, 0)
            else:
                ptrace.cont_to_syscall_exit(self.tid, 0)

    # -- one call ---------------------------------------------------------------------

    def _load(self, call: SysCall | None) -> None:
        """Run `call` (from a syscall-exit stop); None: put everything back."""
        while call is not None:
            try:
                at = self._write_data(call)
                break
            except memory.MemoryFault:
                call = self.after(-errno.EFAULT)     # no room under the stack
        if call is None:
            self._finish()
            return
        assert self.saved is not None and self.insn_at is not None
        regs = Regs.from_buffer_copy(self.saved)
        regs.rip = self.insn_at
        regs.rax = call.nr
        regs.orig_rax = 0xFFFFFFFFFFFFFFFF     # no syscall to restart if a signal comes first
        regs.set_args(*(at + a.offset if isinstance(a, Scratch) else a for a in call.args))
        ptrace.set_regs(self.tid, regs)
        self.in_call = self.stepping       # stepping: the next stop is after it
        self._step()

    def _write_data(self, call: SysCall) -> int:
        """Put a call's data below the red zone (saving what was there)."""
        assert self.saved is not None
        self._restore_memory()
        if not call.data:
            return 0
        at = (self.saved.rsp - RED_ZONE - len(call.data)) & ~0xF
        data = bytearray(call.data)
        for where, offset in call.pointers:
            data[where:where + 8] = (at + offset).to_bytes(8, "little")
        self.saved_mem = (at, memory.read(self.tid, at, len(data)))
        memory.write(self.tid, at, bytes(data))
        return at

    def _restore_memory(self) -> None:
        if self.saved_mem is not None:
            at, data = self.saved_mem
            self.saved_mem = None
            memory.write(self.tid, at, data)

    def _finish(self) -> None:
        assert self.saved is not None
        self._restore_memory()
        ptrace.set_regs(self.tid, self.saved)
        self.engine.injections.pop(self.tid, None)
        for info in self.kept_signals:
            _send_again(self.engine, self.tid, info)
        self.done()
        self.engine.injection_ended(self.tid)

    def on_gone(self) -> None:
        if self.gone_hook is not None:
            self.gone_hook()


def _send_again(engine: "Engine", tid: int, info: SigInfo) -> None:
    """Make a kept signal pending again; its delivery stop gets `info` back."""
    try:
        tgid = _tgid(tid)
        libc.syscall(_SYS_TGKILL, tgid, tid, info.si_signo)
    except OSError:
        return
    engine.resent_signals.setdefault(tid, []).append(info)


def _tgid(tid: int) -> int:
    with open(f"/proc/{tid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"Tgid:"):
                return int(line.split()[1])
    raise OSError(errno.ESRCH, "no such thread")


def restore_siginfo(engine: "Engine", tid: int, sig: int) -> None:
    """At tid's signal-delivery stop for `sig`: if it is a signal an
    injection kept and sent again, give it its first siginfo back."""
    kept = engine.resent_signals.get(tid)
    if not kept:
        return
    for i, info in enumerate(kept):
        if info.si_signo == sig:
            del kept[i]
            if not kept:
                del engine.resent_signals[tid]
            ptrace.set_siginfo(tid, info)
            return


# -- where a `syscall` instruction is ------------------------------------------------

_vdso_offset: list[int] = []     # the host's vDSO is the same for every process


def syscall_insn_before(tid: int, rip: int) -> int:
    """After a syscall stop: the instruction the thread just executed, if
    it was `syscall`; else one in its vDSO."""
    try:
        if memory.read(tid, rip - 2, 2) == SYSCALL_INSN:
            return rip - 2
    except OSError:
        pass
    return vdso_syscall_insn(tid)


def vdso_syscall_insn(tid: int, base: int = 0) -> int:
    """The address of a `syscall` instruction in tid's vDSO (its fallback
    paths make real calls; the bytes 0f 05 are run from there and the
    thread never goes past them: its exit stop comes first). `base`: the
    vDSO's address if known (AT_SYSINFO_EHDR), once its offset is."""
    if base and _vdso_offset:
        return base + _vdso_offset[0]
    start, end = _vdso_range(tid)
    if not _vdso_offset:
        image = memory.read(tid, start, end - start)
        at = image.find(SYSCALL_INSN)
        if at < 0:
            raise OSError(errno.ENOEXEC, "no syscall instruction in the vDSO")
        _vdso_offset.append(at)
    return start + _vdso_offset[0]


def _vdso_range(tid: int) -> tuple[int, int]:
    with open(f"/proc/{tid}/maps", "rb") as f:
        for line in f:
            if line.rstrip().endswith(b"[vdso]"):
                lo, hi = line.split()[0].split(b"-")
                return int(lo, 16), int(hi, 16)
    raise OSError(errno.ENOEXEC, "no vDSO")
