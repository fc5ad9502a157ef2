"""ptrace(2) for the provider: seizing pico processes, registers, restarts.

Every process of an instance is a tracee of the provider (PTRACE_SEIZE with
EXITKILL: if the provider dies, the kernel kills the whole instance).
Syscalls the seccomp filter marks TRACE stop here so the provider can change
their registers; clone/fork/exec/exit arrive as ptrace events.
"""

from __future__ import annotations

import ctypes
import errno
import signal

from lxsub.platform import features, libc

PTRACE_PEEKDATA = 2
PTRACE_POKEDATA = 5
PTRACE_CONT = 7
PTRACE_KILL = 8
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_SYSCALL = 24
PTRACE_SINGLESTEP = 9
PTRACE_GET_SYSCALL_INFO = 0x420E
SYSCALL_INFO_ENTRY, SYSCALL_INFO_EXIT = 1, 2
PTRACE_SETOPTIONS = 0x4200
PTRACE_GETEVENTMSG = 0x4201
PTRACE_GETSIGINFO = 0x4202
PTRACE_SETSIGINFO = 0x4203
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_LISTEN = 0x4208

O_TRACESYSGOOD = 0x1
O_TRACEFORK = 0x2
O_TRACEVFORK = 0x4
O_TRACECLONE = 0x8
O_TRACEEXEC = 0x10
O_TRACESECCOMP = 0x80
O_EXITKILL = 0x100000

EVENT_FORK = 1
EVENT_VFORK = 2
EVENT_CLONE = 3
EVENT_EXEC = 4
EVENT_VFORK_DONE = 5
EVENT_EXIT = 6
EVENT_SECCOMP = 7
EVENT_STOP = 128

OPTIONS = (O_TRACESYSGOOD | O_TRACEFORK | O_TRACEVFORK | O_TRACECLONE
           | O_TRACEEXEC | O_TRACESECCOMP | O_EXITKILL)

WALL = 0x40000000

SYSCALL_STOP = signal.SIGTRAP | 0x80

# A syscall a signal interrupted returns one of these to the kernel's
# signal code, which restarts it with the registers it has then (or, for
# a handler without SA_RESTART, turns it into EINTR).
ERESTARTSYS = -512
RESTARTS = (ERESTARTSYS, -513, -514)   # and ERESTARTNOINTR, ERESTARTNOHAND


def signed64(v: int) -> int:
    """A register's value as the signed number a syscall returns."""
    return v - (1 << 64) if v >> 63 else v


class Regs(ctypes.Structure):
    """struct user_regs_struct (x86_64)."""
    _fields_ = [(n, ctypes.c_uint64) for n in (
        "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8",
        "rax", "rcx", "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags",
        "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs")]

    def args(self) -> tuple[int, int, int, int, int, int]:
        return (self.rdi, self.rsi, self.rdx, self.r10, self.r8, self.r9)

    def set_args(self, *args: int) -> None:
        for name, value in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args):
            setattr(self, name, value & 0xFFFFFFFFFFFFFFFF)


class SigInfo(ctypes.Structure):
    """The first fields of siginfo_t (128 bytes in all)."""
    _fields_ = [("si_signo", ctypes.c_int), ("si_errno", ctypes.c_int),
                ("si_code", ctypes.c_int), ("_pad0", ctypes.c_int),
                ("si_pid", ctypes.c_int), ("si_uid", ctypes.c_uint),
                ("rest", ctypes.c_byte * 104)]


def seize(pid: int) -> None:
    libc.ptrace(PTRACE_SEIZE, pid, 0, OPTIONS)


def get_regs(tid: int, regs: Regs) -> Regs:
    libc.ptrace(PTRACE_GETREGS, tid, 0, ctypes.addressof(regs))
    return regs


def set_regs(tid: int, regs: Regs) -> None:
    libc.ptrace(PTRACE_SETREGS, tid, 0, ctypes.addressof(regs))


def cont(tid: int, sig: int = 0) -> None:
    libc.ptrace(PTRACE_CONT, tid, 0, sig)


def cont_to_syscall_exit(tid: int, sig: int = 0) -> None:
    libc.ptrace(PTRACE_SYSCALL, tid, 0, sig)


def restart(request: int, tid: int, sig: int = 0) -> None:
    """PTRACE_CONT, PTRACE_SYSCALL or PTRACE_SINGLESTEP."""
    libc.ptrace(request, tid, 0, sig)


def syscall_stop_op(tid: int) -> int:
    """At a syscall stop: SYSCALL_INFO_ENTRY or SYSCALL_INFO_EXIT
    (PTRACE_GET_SYSCALL_INFO's op; only the first byte is asked for).
    Before Linux 5.3: the kernel enters every syscall with rax = -ENOSYS
    (x86-64 entry code), which an exit shows only for an unknown call."""
    if not features.has("ptrace_syscall_info"):
        regs = get_regs(tid, Regs())
        return SYSCALL_INFO_ENTRY if signed64(regs.rax) == -errno.ENOSYS else SYSCALL_INFO_EXIT
    out = ctypes.c_uint8()
    libc.ptrace(PTRACE_GET_SYSCALL_INFO, tid, 1, ctypes.addressof(out))
    return out.value


def set_options(tid: int, extra: int = 0) -> None:
    """The provider's options on a stopped tracee, plus `extra` events
    (O_TRACEEXIT, O_TRACEVFORKDONE) a Linux tracer of it asked for."""
    libc.ptrace(PTRACE_SETOPTIONS, tid, 0, OPTIONS | extra)


def listen(tid: int) -> None:
    libc.ptrace(PTRACE_LISTEN, tid, 0, 0)


def interrupt(tid: int) -> None:
    libc.ptrace(PTRACE_INTERRUPT, tid, 0, 0)


def event_msg(tid: int) -> int:
    out = ctypes.c_ulong()
    libc.ptrace(PTRACE_GETEVENTMSG, tid, 0, ctypes.addressof(out))
    return out.value


def get_siginfo(tid: int) -> SigInfo:
    info = SigInfo()
    libc.ptrace(PTRACE_GETSIGINFO, tid, 0, ctypes.addressof(info))
    return info


def set_siginfo(tid: int, info: SigInfo) -> None:
    libc.ptrace(PTRACE_SETSIGINFO, tid, 0, ctypes.addressof(info))
