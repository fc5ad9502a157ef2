"""Running a list of syscalls inside a new process with one stop.

platform/inject.py runs one call per ptrace stop (a single step over a
`syscall` instruction), a stop costing the provider a wake-up and a few
ptrace requests. The calls that map a dynamic program at its exec
(kernel/exec/mapping.py) are known all at once, so they are run as CRIU's
parasite or proot's loader run theirs: by a small position-independent
piece of code of the provider's (CODE, assembled from SOURCE) that issues
them one after another from a table and then stops with `int3`.

At the exec event (the new image's first instruction not run yet) the
code is written over the instructions at rip, through /proc/<pid>/mem
as a debugger writes a breakpoint (the text page becomes a private copy,
4 KiB per process, as under gdb), and the table below the red zone of the
new stack. At the `int3` stop the provider puts back the instructions
and the registers (rax 0: execve's result); the code has wiped the table.
Only the first and last stop are the provider's: the calls themselves are
native, or trapped by the instance's filter and let through (the engine
knows the thread is running its code: `answer_if_injected`).

A table row is eight words: nr, six arguments, flags (KEEP_RESULT: the
result is kept, a descriptor; KEPT_ARG0/KEPT_ARG4: that argument is the
kept one; FILL: not a call but memset(arg0, arg2, arg1), the bss tail).
A call failing (-4095..-1) stops the run there: r12 then counts the rows
left, rax holds the error.

What the program could see of it is put back: a signal that arrives is
kept and sent again afterwards (platform/inject.py); the int3's SIGTRAP
is forced (it unblocks a blocked SIGTRAP and resets an ignored one to
SIG_DFL, kernel/signal.c force_sig_info_to_task), so the code first saves
SIGTRAP's action and the signal mask in two slots the provider reads at
the end, and what the trap changed is set back.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from lxsub.abi.sysno import NUMBERS
from lxsub.abi.ptrace import PTRACE_SETSIGMASK
from lxsub.platform import affinity, inject, libc, memory, ptrace
from lxsub.platform.inject import RED_ZONE, Scratch, SysCall
from lxsub.platform.ptrace import Regs, SigInfo

if TYPE_CHECKING:
    from lxsub.platform.engine import Engine

SOURCE = """\
    .intel_syntax noprefix
    # rbx: the table, r12: its rows, r14: the bytes to wipe at the end
    mov r15, rbx
    mov r13, -1
1:  test r12, r12
    jz 4f
    mov rax, [r15]
    mov rdi, [r15+8]
    mov rsi, [r15+16]
    mov rdx, [r15+24]
    mov r10, [r15+32]
    mov r8, [r15+40]
    mov r9, [r15+48]
    mov rbp, [r15+56]
    test ebp, 2
    cmovnz r8, r13
    test ebp, 4
    cmovnz rdi, r13
    test ebp, 8
    jnz 3f
    syscall
    cmp rax, -4095
    jae 5f
    test ebp, 1
    cmovnz r13, rax
2:  add r15, 64
    dec r12
    jmp 1b
3:  mov rcx, rsi
    mov eax, edx
    rep stosb
    jmp 2b
4:  mov rdi, rbx
    mov rcx, r14
    xor eax, eax
    rep stosb
5:  int3
"""

CODE = bytes.fromhex(
    "4989df49c7c5ffffffff4d85e47461498b07498b7f08498b7710498b57184d8b57204d8b47284d8b4f30"
    "498b6f38f7c5020000004d0f45c5f7c504000000490f45fdf7c508000000751d0f05483d01f0ffff7326"
    "f7c5010000004c0f45e84983c74049ffcceba34889f189d0f3aaebee4889df4c89f131c0f3aacc")

KEEP_RESULT, KEPT_ARG4, KEPT_ARG0, FILL = 1, 2, 4, 8
_ROW = struct.Struct("<8Q")
_MASK64 = (1 << 64) - 1
_SYS_RT_SIGACTION, _SYS_RT_SIGPROCMASK = NUMBERS["rt_sigaction"], NUMBERS["rt_sigprocmask"]
_SIGACTION = struct.Struct("<QQQQ")    # the kernel's: handler, flags, restorer, mask
_SLOTS = _SIGACTION.size + 8          # SIGTRAP's action, then the signal mask
_SIG_IGN = 1
_SIGTRAP_BIT = 1 << (signal.SIGTRAP - 1)


class _Kept:
    def __repr__(self) -> str:
        return "KEPT"


KEPT = _Kept()     # an argument: the result a KEEP call gave (arguments 0 and 4 only)


@dataclass(frozen=True)
class Fill:
    """Not a call: `length` bytes at `addr` set to `byte` (padzero)."""
    addr: int
    length: int
    byte: int = 0


@dataclass(frozen=True)
class Keep:
    """A call whose result the later calls use (KEPT)."""
    call: SysCall


Step = SysCall | Keep | Fill


def table_size(steps: Sequence[Step]) -> int:
    """How many bytes `encode` makes of steps."""
    n = _ROW.size * len(steps)
    for s in steps:
        if not isinstance(s, Fill):
            n += -(-len((s.call if isinstance(s, Keep) else s).data) // 8) * 8
    return n


def encode(steps: Sequence[Step], at: int) -> bytes:
    """The table for `steps` as written at address `at`: the rows, then
    the calls' data (Scratch arguments point into it)."""
    rows, blob = bytearray(), bytearray()
    data_at = at + _ROW.size * len(steps)
    for step in steps:
        if isinstance(step, Fill):
            rows += _ROW.pack(0, step.addr, step.length, step.byte, 0, 0, 0, FILL)
            continue
        call, flags = (step.call, KEEP_RESULT) if isinstance(step, Keep) else (step, 0)
        here = data_at + len(blob)
        args = list(call.args) + [0] * (6 - len(call.args))
        for i, a in enumerate(args):
            if a is KEPT:
                flags |= {0: KEPT_ARG0, 4: KEPT_ARG4}[i]
                args[i] = 0
            elif isinstance(a, Scratch):
                args[i] = here + a.offset
        data = bytearray(call.data)
        for where, offset in call.pointers:
            data[where:where + 8] = (here + offset).to_bytes(8, "little")
        blob += data + bytes(-len(data) % 8)
        rows += _ROW.pack(call.nr, *(a & _MASK64 for a in args), flags)
    return bytes(rows + blob)


class CodeRun:
    """The run under way in one thread (in engine.injections[tid], so the
    engine hands it the thread's stops and lets its trapped calls run)."""

    def __init__(self, engine: "Engine", tid: int, steps: Sequence[Step],
                 done: Callable[[int], None], gone: Callable[[], None] | None) -> None:
        self.engine, self.tid = engine, tid
        self.steps, self.done, self.gone_hook = list(steps), done, gone
        self.saved: Regs | None = None
        self.code_at = 0
        self.kept_code = b""
        self.mem = -1                               # its /proc/<pid>/mem
        self.table: tuple[int, int] = (0, 0)        # where and how long, slots included
        self.kept_signals: list[SigInfo] = []

    def start(self, at_exec: bool) -> None:
        """At the exec event: write the code and table, run. What cannot
        be written (no room, a thread gone) ends the run with its errno."""
        tid = self.tid
        saved = self.saved = ptrace.get_regs(tid, Regs())
        saved.rax = 0                              # what execve returns
        size = 2 * _ROW.size + table_size(self.steps)
        at = (saved.rsp - RED_ZONE - size - _SLOTS) & ~0xF
        slots = at + size
        table = (_ROW.pack(_SYS_RT_SIGACTION, signal.SIGTRAP, 0, slots, 8, 0, 0, 0)
                 + _ROW.pack(_SYS_RT_SIGPROCMASK, 0, 0, slots + _SIGACTION.size, 8, 0, 0, 0)
                 + encode(self.steps, at + 2 * _ROW.size))
        self.table = (at, size + _SLOTS)
        self.code_at = saved.rip
        try:
            self.mem = os.open(f"/proc/{tid}/mem", os.O_RDWR | os.O_CLOEXEC)
            self.kept_code = _swap(self.mem, self.code_at, CODE)
            memory.write(tid, at, table + bytes(_SLOTS))
        except ProcessLookupError:
            raise
        except OSError as e:
            self._end(e.errno or errno.EFAULT)
            return
        regs = Regs.from_buffer_copy(saved)
        regs.rip, regs.rbx, regs.r12, regs.r14 = self.code_at, at, len(self.steps) + 2, size
        regs.rsp = at - 8
        regs.orig_rax = _MASK64                    # nothing to restart
        ptrace.set_regs(tid, regs)
        self._cont()

    def on_stop(self, sig: int, event: int) -> None:
        if event == 0 and sig != ptrace.SYSCALL_STOP:
            info = ptrace.get_siginfo(self.tid)
            if sig == signal.SIGTRAP and info.si_code == _SI_KERNEL:
                regs = ptrace.get_regs(self.tid, Regs())
                if regs.rip == self.code_at + len(CODE):
                    self._finish(regs)
                    return
            self.kept_signals.append(info)         # sent again at the end
        self._cont()

    def _cont(self) -> None:
        with affinity.WakeHere(self.tid):
            ptrace.cont(self.tid, 0)

    def _finish(self, ended: Regs) -> None:
        """At the code's int3: what the trap changed set back, then _end."""
        tid = self.tid
        error = 0 if ended.r12 == 0 else -ptrace.signed64(ended.rax)
        at, size = self.table
        slots = _swap(self.mem, at + size - _SLOTS, bytes(_SLOTS))
        action = _SIGACTION.unpack_from(slots)
        mask = struct.unpack_from("<Q", slots, _SIGACTION.size)[0]
        if not error and mask & _SIGTRAP_BIT:
            _set_sigmask(tid, mask)                # the trap unblocked it
        self._end(error, ignored=action if not error and action[0] == _SIG_IGN else None)

    def _end(self, error: int, ignored: tuple[int, ...] | None = None) -> None:
        """Instructions and registers back, kept signals sent again, done."""
        tid = self.tid
        if self.kept_code:
            _swap(self.mem, self.code_at, self.kept_code)
        self._close_mem()
        assert self.saved is not None
        ptrace.set_regs(tid, self.saved)
        self.engine.injections.pop(tid, None)
        for info in self.kept_signals:
            inject._send_again(self.engine, tid, info)
        if ignored is not None:
            self._ignore_sigtrap_again(ignored)
        else:
            self.done(error)
        self.engine.injection_ended(tid)

    def _ignore_sigtrap_again(self, action: tuple[int, ...]) -> None:
        """The trap reset an ignored SIGTRAP to SIG_DFL: one injected
        rt_sigaction puts the action back (rare: inherited SIG_IGN)."""
        call = SysCall(_SYS_RT_SIGACTION, (signal.SIGTRAP, Scratch(0), 0, 8), _SIGACTION.pack(*action))
        # Not single-stepped: a step's SIGTRAP is forced too.
        self.engine.inject(self.tid, call, lambda _r: None, lambda: self.done(0), self.gone_hook,
                           insn_at=inject.vdso_syscall_insn(self.tid), stepping=False)

    def _close_mem(self) -> None:
        if self.mem >= 0:
            os.close(self.mem)
            self.mem = -1

    def on_gone(self) -> None:
        self._close_mem()
        if self.gone_hook is not None:
            self.gone_hook()


_SI_KERNEL = 0x80        # int3's SIGTRAP (do_int3_user)


def _swap(mem: int, at: int, data: bytes) -> bytes:
    """Write `data` at `at` through a /proc/<pid>/mem descriptor (FOLL_FORCE,
    as a debugger writes into read-only text); returns what was there."""
    old = os.pread(mem, len(data), at)
    if len(old) != len(data) or os.pwrite(mem, data, at) != len(data):
        raise memory.MemoryFault()
    return old


def _set_sigmask(tid: int, mask: int) -> None:
    value = ctypes.c_uint64(mask)
    libc.ptrace(PTRACE_SETSIGMASK, tid, 8, ctypes.addressof(value))
