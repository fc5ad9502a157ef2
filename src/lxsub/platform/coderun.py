"""Running a list of syscalls inside a new process, without a stop of its own.

platform/inject.py runs one call per ptrace stop (a single step over a
`syscall` instruction), a stop costing the provider a wake-up and a few
ptrace requests. The calls that map a dynamic program at its exec
(kernel/exec/mapping.py) are known all at once, so they are run as CRIU's
parasite or proot's loader run theirs: by a small position-independent
piece of code of the provider's (CODE, assembled from SOURCE) that issues
them one after another from a table.

At the exec event (the new image's first instruction not run yet) the
code is written over the instructions at rip, through /proc/<pid>/mem
as a debugger writes a breakpoint (the text page becomes a private copy,
4 KiB per process, as under gdb), and the table below the red zone of the
new stack, followed by a signal frame that holds the exec's registers.
The calls are native, or trapped by the instance's filter and let
through (the engine knows the thread is running its code:
`answer_if_injected`). The code wipes the table, then ends in one of
two ways:
- without a stop, for a thread no Linux tracer watches: its last call is
  rt_sigreturn over the frame, with COOKIE as first argument, a call the
  instance's filter hands to the provider (kernel/table.py). At that
  notification the provider puts the instructions back and lets the call
  run: the kernel restores every register from the frame, and the thread
  goes on at its loader's entry as if nothing had run. The frame's signal
  mask is the thread's own (the code's first call writes it there), its
  FPU state the initial one, as after an exec. The frame stays below the
  stack, as a handled signal's does;
- with a stop, for a thread a Linux tracer must find stopped at its exec
  event with the program in place: `int3`. The provider puts back the
  instructions and the registers (rax 0: execve's result). That SIGTRAP
  is forced (it unblocks a blocked SIGTRAP and resets an ignored one to
  SIG_DFL, kernel/signal.c force_sig_info_to_task), so the code first
  saves SIGTRAP's action in a slot the provider reads, and what the trap
  changed is set back.

A table row is eight words: nr, six arguments, flags (KEEP_RESULT: the
result is kept, a descriptor; KEPT_ARG0/KEPT_ARG4: that argument is the
kept one; FILL: not a call but memset(arg0, arg2, arg1), the bss tail).
A call failing (-4095..-1) ends the run there with `int3`: r12 then
counts the rows left, rax holds the error.

A signal that arrives meanwhile is kept and sent again afterwards
(platform/inject.py).
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
    # rbx: the table, r12: its rows, r14: the bytes to wipe at the end,
    # then the signal frame (rt_sigreturn reads it at rsp - 8)
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
    # rdi: the frame; its first word (pretcode) 0: end without a stop
    cmp qword ptr [rdi], 0
    jne 5f
    lea rsp, [rdi+8]
    mov eax, 15
    movabs rdi, 0x70616d627573786c
    syscall
5:  int3
"""

CODE = bytes.fromhex(
    "4989df49c7c5ffffffff4d85e47461498b07498b7f08498b7710498b57184d8b57204d8b47284d8b4f30"
    "498b6f38f7c5020000004d0f45c5f7c504000000490f45fdf7c508000000751d0f05483d01f0ffff7341"
    "f7c5010000004c0f45e84983c74049ffcceba34889f189d0f3aaebee4889df4c89f131c0f3aa48833f00"
    "7515488d6708b80f00000048bf6c787375626d61700f05cc")
# rt_sigreturn's first argument in the code's last call (it takes none):
# the instance's filter hands the provider only that one.
COOKIE = int.from_bytes(b"lxsubmap", "little")


def is_last_call(nr: int, first_arg: int) -> bool:
    """Whether a trapped call is the code's last (its rt_sigreturn)."""
    return nr == _SYS_RT_SIGRETURN and first_arg == COOKIE

KEEP_RESULT, KEPT_ARG4, KEPT_ARG0, FILL = 1, 2, 4, 8
_ROW = struct.Struct("<8Q")
_MASK64 = (1 << 64) - 1
_SYS_RT_SIGACTION, _SYS_RT_SIGPROCMASK = NUMBERS["rt_sigaction"], NUMBERS["rt_sigprocmask"]
_SYS_RT_SIGRETURN = NUMBERS["rt_sigreturn"]
_SIGACTION = struct.Struct("<QQQQ")    # the kernel's: handler, flags, restorer, mask
_SIG_IGN = 1
_SIGTRAP_BIT = 1 << (signal.SIGTRAP - 1)

# struct rt_sigframe as x86-64's rt_sigreturn reads it at rsp - 8: pretcode
# (the code's end mode here), then struct ucontext: uc_flags, uc_link,
# uc_stack (ss_sp, ss_flags, ss_size), struct sigcontext (r8..r15, rdi,
# rsi, rbp, rbx, rdx, rax, rcx, rsp, rip, eflags, cs, gs, fs, ss, err,
# trapno, oldmask, cr2, fpstate, 8 reserved), uc_sigmask.
_FRAME = struct.Struct("<QQQQiiQ" + "Q" * 18 + "HHHH" + "QQQQQ" + "8Q" + "Q")
_SIGMASK_AT = _FRAME.size - 8
_UC_SIGCONTEXT_SS, _UC_STRICT_RESTORE_SS = 2, 4
_SS_DISABLE = 2
_END_SIGRETURN, _END_STOP = 0, 1
_SLOT = _SIGACTION.size               # after the frame: SIGTRAP's action (a stop's end)


def sigreturn_frame(regs: Regs, end: int) -> bytes:
    """The frame that puts `regs` back (fpstate NULL: the initial FPU
    state; no alternate stack, as after exec); its mask is written by
    the code's first call."""
    return _FRAME.pack(
        end, _UC_SIGCONTEXT_SS | _UC_STRICT_RESTORE_SS, 0, 0, _SS_DISABLE, 0, 0,
        regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
        regs.rdi, regs.rsi, regs.rbp, regs.rbx, regs.rdx, regs.rax, regs.rcx, regs.rsp,
        regs.rip, regs.eflags, regs.cs, regs.gs, regs.fs, regs.ss,
        0, 0, 0, 0, 0, *([0] * 8), 0)


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
    engine hands it the thread's stops and lets its trapped calls run).
    `stop_at_end`: end at a ptrace stop (see the module's text)."""

    def __init__(self, engine: "Engine", tid: int, steps: Sequence[Step],
                 done: Callable[[int], None], gone: Callable[[], None] | None,
                 stop_at_end: bool = False) -> None:
        self.engine, self.tid = engine, tid
        self.steps, self.done, self.gone_hook = list(steps), done, gone
        self.stop_at_end = stop_at_end
        self.saved: Regs | None = None
        self.code_at = 0
        self.kept_code = b""
        self.mem = -1                               # its /proc/<pid>/mem
        self.frame_at = 0
        self.kept_signals: list[SigInfo] = []

    def start(self, at_exec: bool) -> None:
        """At the exec event: write the code, table and frame, run. What
        cannot be written (no room, a thread gone) ends the run with its errno."""
        tid = self.tid
        saved = self.saved = ptrace.get_regs(tid, Regs())
        saved.rax = 0                              # what execve returns
        prologue = 2 if self.stop_at_end else 1
        size = prologue * _ROW.size + table_size(self.steps)
        tail = _FRAME.size + (_SLOT if self.stop_at_end else 0)
        at = (saved.rsp - RED_ZONE - size - tail) & ~0xF
        frame = self.frame_at = at + size
        rows = _ROW.pack(_SYS_RT_SIGPROCMASK, 0, 0, frame + _SIGMASK_AT, 8, 0, 0, 0)
        if self.stop_at_end:
            rows += _ROW.pack(_SYS_RT_SIGACTION, signal.SIGTRAP, 0, frame + _FRAME.size, 8, 0, 0, 0)
        end = _END_STOP if self.stop_at_end else _END_SIGRETURN
        data = (rows + encode(self.steps, at + prologue * _ROW.size)
                + sigreturn_frame(saved, end) + bytes(tail - _FRAME.size))
        self.code_at = saved.rip
        try:
            self.mem = os.open(f"/proc/{tid}/mem", os.O_RDWR | os.O_CLOEXEC)
            self.kept_code = _swap(self.mem, self.code_at, CODE)
            memory.write(tid, at, data)
        except ProcessLookupError:
            raise
        except OSError as e:
            self._end(e.errno or errno.EFAULT)
            return
        regs = Regs.from_buffer_copy(saved)
        regs.rip, regs.rbx, regs.r12, regs.r14 = self.code_at, at, len(self.steps) + prologue, size
        regs.rsp = at - 8
        regs.orig_rax = _MASK64                    # nothing to restart
        ptrace.set_regs(tid, regs)
        self._cont()

    def on_stop(self, sig: int, event: int) -> None:
        if event == ptrace.EVENT_SECCOMP and self._at_sigreturn():
            self.on_sigreturn()                    # the ptrace platform's trap of it
        elif event == 0 and sig != ptrace.SYSCALL_STOP:
            info = ptrace.get_siginfo(self.tid)
            if sig == signal.SIGTRAP and info.si_code == _SI_KERNEL:
                regs = ptrace.get_regs(self.tid, Regs())
                if regs.rip == self.code_at + len(CODE):
                    self._finish(regs)
                    return
            self.kept_signals.append(info)         # sent again at the end
        self._cont()

    def _at_sigreturn(self) -> bool:
        regs = ptrace.get_regs(self.tid, Regs())
        return is_last_call(regs.orig_rax, regs.rdi)

    def on_sigreturn(self) -> None:
        """The code's rt_sigreturn, at its notification (the caller lets
        it run after): the instructions back, done. The registers come
        back from the frame when the call runs."""
        self._restore_code()
        self.engine.injections.pop(self.tid, None)
        self._send_kept_signals()
        self.done(0)
        if self.tid in self.engine.interrupt_hooks:
            # Its interrupt stop was taken by the run: ask again.
            try:
                ptrace.interrupt(self.tid)
            except ProcessLookupError:
                pass

    def _cont(self) -> None:
        with affinity.WakeHere(self.tid):
            ptrace.cont(self.tid, 0)

    def _finish(self, ended: Regs) -> None:
        """At the code's int3: what the trap changed set back, then _end."""
        tid = self.tid
        error = 0 if ended.r12 == 0 else -ptrace.signed64(ended.rax)
        ignored = None
        if self.stop_at_end:
            tail = _swap(self.mem, self.frame_at, bytes(_FRAME.size + _SLOT))    # wiped too
            mask = struct.unpack_from("<Q", tail, _SIGMASK_AT)[0]
            action = _SIGACTION.unpack_from(tail, _FRAME.size)
            if not error and mask & _SIGTRAP_BIT:
                _set_sigmask(tid, mask)            # the trap unblocked it
            if not error and action[0] == _SIG_IGN:
                ignored = action
        self._end(error, ignored)

    def _end(self, error: int, ignored: tuple[int, ...] | None = None) -> None:
        """Instructions and registers back, kept signals sent again, done."""
        tid = self.tid
        self._restore_code()
        assert self.saved is not None
        ptrace.set_regs(tid, self.saved)
        self.engine.injections.pop(tid, None)
        self._send_kept_signals()
        if ignored is not None:
            self._ignore_sigtrap_again(ignored)
        else:
            self.done(error)
        self.engine.injection_ended(tid)

    def _restore_code(self) -> None:
        if self.kept_code:
            _put(self.mem, self.code_at, self.kept_code)
            self.kept_code = b""
        self._close_mem()

    def _send_kept_signals(self) -> None:
        for info in self.kept_signals:
            inject._send_again(self.engine, self.tid, info)
        self.kept_signals = []

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
    if len(old) != len(data):
        raise memory.MemoryFault()
    _put(mem, at, data)
    return old


def _put(mem: int, at: int, data: bytes) -> None:
    if os.pwrite(mem, data, at) != len(data):
        raise memory.MemoryFault()


def _set_sigmask(tid: int, mask: int) -> None:
    value = ctypes.c_uint64(mask)
    libc.ptrace(PTRACE_SETSIGMASK, tid, 8, ctypes.addressof(value))
