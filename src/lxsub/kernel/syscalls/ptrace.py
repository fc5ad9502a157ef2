"""ptrace(2) for a Linux tracer in the instance (the links and stops are
kernel/ptrace.py's), and the part of wait4(2) that reports its tracees.

Requests name tracees by virtual tid; only tasks of the instance can be
found (ESRCH otherwise, as for a pid of another PID namespace), and /init,
the provider, is never one."""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import struct
from typing import TYPE_CHECKING

from lxsub.abi import ptrace as pt
from lxsub.abi.signal import NSIG
from lxsub.abi.sysno import NUMBERS, SYS_TGKILL
from lxsub.kernel import ptrace as kptrace
from lxsub.kernel.call import Call, Native
from lxsub.kernel.task import active_pid_ns
from lxsub.platform import libc, memory
from lxsub.platform.bpf import AUDIT_ARCH_X86_64
from lxsub.platform import ptrace as host

if TYPE_CHECKING:
    from lxsub.kernel.ptrace import Link
    from lxsub.kernel.task import Task

_RESTARTS = {pt.PTRACE_CONT: None, pt.PTRACE_SYSCALL: host.PTRACE_SYSCALL,
             pt.PTRACE_SINGLESTEP: host.PTRACE_SINGLESTEP}
_NT_PRSTATUS = 1
_REGSET_MAX = 1 << 16          # larger than any x86_64 regset (XSTATE is a few KB)
_SIGINFO_SIZE = 128
_FPREGS_SIZE = 512
_USER_SIZE = 928               # sizeof(struct user), x86_64
SYS_PAUSE = NUMBERS["pause"]


def sys_ptrace(c: Call) -> int:
    request, pid, addr, data = c.long(0), c.int(1), c.ptr(2), c.ptr(3)
    space = c.inst.ptrace
    if request == pt.PTRACE_TRACEME:
        return _traceme(c, space)
    ns = active_pid_ns(c.task)
    target = c.inst.pids.task_in(ns, pid) if pid > 0 else None
    if pid == 1 and ns is None and request in (pt.PTRACE_ATTACH, pt.PTRACE_SEIZE):
        # /init is the provider: it exists, and may not be traced.
        raise OSError(errno.EPERM, "not permitted")
    if target is None:
        raise OSError(errno.ESRCH, "no such process")
    if request in (pt.PTRACE_ATTACH, pt.PTRACE_SEIZE):
        return _attach(c, space, target, request == pt.PTRACE_SEIZE, addr, data)
    link = space.link_of(target)
    if link is None or link.tracer is not c.task.process:
        raise OSError(errno.ESRCH, "not traced by the caller")
    if request == pt.PTRACE_KILL:
        _tgkill(target, signal.SIGKILL)
        return 0
    if request == pt.PTRACE_INTERRUPT:
        return _interrupt(c, space, link)
    if link.stop is None:
        # ptrace_check_attach: every other request needs the tracee stopped.
        raise OSError(errno.ESRCH, "tracee is not stopped")
    return _stopped_request(c, space, link, request, addr, data)


def _traceme(c: Call, space) -> int:
    """ptrace_traceme: the parent becomes the tracer; EPERM if traced
    already. /init is the provider: it traces nobody the Linux way."""
    task = c.task
    parent = task.process.parent
    if space.link_of(task) is not None or parent is None or parent.is_init() \
            or space.scope == kptrace.YAMA_SCOPE_NO_ATTACH:
        raise OSError(errno.EPERM, "not permitted")
    space.link(task, parent, seized=False)
    return 0


def _attach(c: Call, space, target: "Task", seize: bool, addr: int, data: int) -> int:
    """ptrace_attach: SEIZE's addr must be 0 and its options known (EIO); the caller's own thread group, a traced task or one the
    access rules refuse: EPERM. ATTACH sends SIGSTOP."""
    if seize and addr:
        raise OSError(errno.EIO, "addr must be 0")
    if seize and data & ~pt.PTRACE_O_MASK:
        raise OSError(errno.EIO, "unknown options")
    if seize:
        _check_suspend_seccomp(data)
    if target.process is c.task.process:
        raise OSError(errno.EPERM, "not permitted")
    if space.link_of(target) is not None or not space.may_attach(c.task, target):
        raise OSError(errno.EPERM, "not permitted")
    link = space.link(target, c.task.process, seize, data if seize else 0)
    if not seize:
        _tgkill(target, signal.SIGSTOP)
    if c.inst.engine.trap_group_stopped(target.host_tid):
        # ptrace_attach of a stopped task: it is in a ptrace stop (a
        # group-stop its tracer's wait reports) when ATTACH returns.
        event = pt.PTRACE_EVENT_STOP << 16 if seize else 0
        link.stop, link.report = kptrace.GROUP_STOP, event | signal.SIGSTOP << 8 | 0x7F
    return 0


def _check_suspend_seccomp(options: int) -> None:
    """PTRACE_O_SUSPEND_SECCOMP (ptrace_setoptions): EPERM for a tracer
    that is under seccomp itself, which every pico process is."""
    if options & pt.PTRACE_O_SUSPEND_SECCOMP:
        raise OSError(errno.EPERM, "tracer is under seccomp")


def _tgkill(task: "Task", sig: int) -> None:
    try:
        libc.syscall(SYS_TGKILL, task.host_pid, task.host_tid, sig)
    except OSError:
        pass


def _interrupt(c: Call, space, link: "Link") -> int:
    """PTRACE_INTERRUPT (seized tracees only): a running tracee stops with
    PTRACE_EVENT_STOP."""
    if not link.seized:
        raise OSError(errno.EIO, "not seized")
    if link.stop is None:
        status = (signal.SIGTRAP | pt.PTRACE_EVENT_STOP << 8) << 8 | 0x7F

        def at_stop(tid: int, regs) -> None:
            if link.stop is None and space.link_of(link.tracee) is link:
                space.stop(link, kptrace.EVENT_STOP, status)
        c.inst.engine.interrupt(link.tracee.host_tid, at_stop)
    return 0


def _stopped_request(c: Call, space, link: "Link", request: int, addr: int, data: int) -> int:
    tid = link.tracee.host_tid
    if request in _RESTARTS:
        return _restart(c, link, _RESTARTS[request], data)
    if request == pt.PTRACE_DETACH:
        _check_sig(data)
        link.report = None
        space.unlink(link, data)
        return 0
    if request in (pt.PTRACE_PEEKTEXT, pt.PTRACE_PEEKDATA):
        c.write(data, _forced(tid, addr, 8))
        return 0
    if request in (pt.PTRACE_POKETEXT, pt.PTRACE_POKEDATA):
        _forced(tid, addr, 8, struct.pack("<Q", data))
        return 0
    if request == pt.PTRACE_PEEKUSR:
        c.write(data, struct.pack("<Q", _peek_user(space, link, addr)))
        return 0
    if request == pt.PTRACE_POKEUSR:
        return _poke_user(space, link, addr, data)
    if request == pt.PTRACE_GETREGS:
        c.write(data, bytes(space.regs_view(link)))
        return 0
    if request == pt.PTRACE_SETREGS:
        space.set_regs(link, host.Regs.from_buffer_copy(c.read(data, ctypes.sizeof(host.Regs))))
        return 0
    if request in (pt.PTRACE_GETFPREGS, pt.PTRACE_SETFPREGS):
        return _pass_buffer(c, tid, request, 0, data, _FPREGS_SIZE, request == pt.PTRACE_GETFPREGS)
    if request in (pt.PTRACE_GETREGSET, pt.PTRACE_SETREGSET):
        return _regset(c, space, link, request, addr, data)
    if request in (pt.PTRACE_GETSIGINFO, pt.PTRACE_SETSIGINFO):
        if link.stop == kptrace.GROUP_STOP and not link.seized:
            # A group-stop of a tracee that was not seized has no siginfo
            # (ptrace_stop without one: ptrace_getsiginfo's EINVAL).
            raise OSError(errno.EINVAL, "group-stop")
        return _pass_buffer(c, tid, request, 0, data, _SIGINFO_SIZE, request == pt.PTRACE_GETSIGINFO)
    if request == pt.PTRACE_PEEKSIGINFO:
        return _peek_siginfo(c, tid, addr, data)
    if request in (pt.PTRACE_GETSIGMASK, pt.PTRACE_SETSIGMASK):
        if addr != 8:
            raise OSError(errno.EINVAL, "sigset size must be 8")
        return _pass_buffer(c, tid, request, 8, data, 8, request == pt.PTRACE_GETSIGMASK)
    if request == pt.PTRACE_GETEVENTMSG:
        c.write(data, struct.pack("<Q", link.event_msg))
        return 0
    if request == pt.PTRACE_SETOPTIONS:
        if data & ~pt.PTRACE_O_MASK:
            raise OSError(errno.EINVAL, "unknown options")
        _check_suspend_seccomp(data)
        space.set_options(link, data)
        return 0
    if request == pt.PTRACE_GET_SYSCALL_INFO:
        return _syscall_info(c, space, link, addr, data)
    if request == pt.PTRACE_LISTEN:
        return _listen(space, link)
    raise OSError(errno.EIO, "unsupported request")


def _listen(space, link: "Link") -> int:
    """PTRACE_LISTEN (seized tracees in a group-stop only, EIO otherwise):
    it stays stopped, as a running tracee whose SIGCONT wakes it; the real
    tracee listens the same way at the provider's level."""
    if not link.seized or link.stop != kptrace.GROUP_STOP:
        raise OSError(errno.EIO, "not in a group-stop")
    tid = link.tracee.host_tid
    link.stop = link.report = None
    engine = space.inst.engine
    engine.holds.discard(tid)
    engine.resume_modes.pop(tid, None)
    try:
        host.listen(tid)
    except OSError:
        return 0
    engine.listening.add(tid)
    return 0


def _check_sig(sig: int) -> None:
    if not 0 <= sig < NSIG:
        raise OSError(errno.EIO, "bad signal")


def _restart(c: Call, link: "Link", mode: int | None, sig: int) -> int:
    """ptrace_resume: the signal to deliver (0: none, at a signal-delivery
    stop the one that stopped it is suppressed) and how far to run."""
    _check_sig(sig)
    link.stop = None
    link.report = None
    c.inst.engine.release(link.tracee.host_tid, sig, mode)
    return 0


def _forced(tid: int, addr: int, n: int, data: bytes | None = None) -> bytes:
    """PEEK/POKE: a fault is EIO (generic_ptrace_peekdata, ptrace_writedata)."""
    try:
        return memory.access_forced(tid, addr, n, data)
    except OSError:
        raise OSError(errno.EIO, "cannot access tracee memory") from None


def _check_user_offset(addr: int) -> None:
    if addr & 7 or addr >= _USER_SIZE:
        raise OSError(errno.EIO, "bad offset in struct user")


def _peek_user(space, link: "Link", addr: int) -> int:
    """PTRACE_PEEKUSER: a register as the tracer sees it; the rest of
    struct user (debug registers) is the host's."""
    _check_user_offset(addr)
    if addr < kptrace.USER_REGS_SIZE:
        regs = bytes(space.regs_view(link))
        return struct.unpack_from("<Q", regs, addr)[0]
    return libc.ptrace(pt.PTRACE_PEEKUSR, link.tracee.host_tid, addr, 0) & 0xFFFFFFFFFFFFFFFF


def _poke_user(space, link: "Link", addr: int, value: int) -> int:
    _check_user_offset(addr)
    if addr < kptrace.USER_REGS_SIZE:
        raw = bytearray(bytes(space.regs_view(link)))
        struct.pack_into("<Q", raw, addr, value & 0xFFFFFFFFFFFFFFFF)
        space.set_regs(link, host.Regs.from_buffer_copy(bytes(raw)))
        return 0
    libc.ptrace(pt.PTRACE_POKEUSR, link.tracee.host_tid, addr, value)
    return 0


def _pass_buffer(c: Call, tid: int, request: int, addr: int, data: int, size: int,
                 out: bool) -> int:
    """A request whose data points at a fixed-size buffer: the host's on
    the real tracee, through a buffer of ours."""
    buf = ctypes.create_string_buffer(size)
    if not out:
        buf.raw = c.read(data, size)
    libc.ptrace(request, tid, addr, ctypes.addressof(buf))
    if out:
        c.write(data, buf.raw)
    return 0


_PEEKSIGINFO_ARGS = struct.Struct("<QIi")     # off, flags, nr
_PEEKSIGINFO_MAX = 1 << 12                      # one host call's buffer (pending signals are fewer)


def _peek_siginfo(c: Call, tid: int, addr: int, data: int) -> int:
    """PTRACE_PEEKSIGINFO (ptrace_peek_siginfo): the host's own on the
    real tracee, whose queues these are, each sender in the instance's
    view (as at a delivery); copied out as the kernel does, EFAULT only
    if not even the first one can be."""
    off, flags, nr = _PEEKSIGINFO_ARGS.unpack(c.read(addr, _PEEKSIGINFO_ARGS.size))
    if flags & ~pt.PTRACE_PEEKSIGINFO_SHARED or nr < 0:
        raise OSError(errno.EINVAL, "bad arguments")
    nr = min(nr, _PEEKSIGINFO_MAX)
    if not nr:
        return 0
    args = ctypes.create_string_buffer(_PEEKSIGINFO_ARGS.pack(off, flags, nr), _PEEKSIGINFO_ARGS.size)
    buf = ctypes.create_string_buffer(nr * _SIGINFO_SIZE)
    got = libc.ptrace(pt.PTRACE_PEEKSIGINFO, tid, ctypes.addressof(args), ctypes.addressof(buf))
    for i in range(got):
        info = host.SigInfo.from_buffer_copy(buf.raw, i * _SIGINFO_SIZE)
        c.inst.translate_sender(info)
        try:
            c.write(data + i * _SIGINFO_SIZE, bytes(info))
        except OSError:
            if i == 0:
                raise
            return i
    return got


def _regset(c: Call, space, link: "Link", request: int, note: int, iov_addr: int) -> int:
    """PTRACE_GETREGSET/SETREGSET with a struct iovec: NT_PRSTATUS is the
    registers as the tracer sees them; other sets are the host's."""
    base, length = struct.unpack("<QQ", c.read(iov_addr, 16))
    if note == _NT_PRSTATUS:
        size = min(length, ctypes.sizeof(host.Regs))
        if request == pt.PTRACE_GETREGSET:
            c.write(base, bytes(space.regs_view(link))[:size])
        else:
            raw = bytearray(bytes(space.regs_view(link)))
            raw[:size] = c.read(base, size)
            space.set_regs(link, host.Regs.from_buffer_copy(bytes(raw)))
        c.write(iov_addr + 8, struct.pack("<Q", size))
        return 0
    length = min(length, _REGSET_MAX)
    buf = ctypes.create_string_buffer(max(length, 1))
    if request == pt.PTRACE_SETREGSET:
        buf.raw = c.read(base, length).ljust(max(length, 1), b"\0")
    iov = (ctypes.c_uint64 * 2)(ctypes.addressof(buf), length)
    libc.ptrace(request, link.tracee.host_tid, note, ctypes.addressof(iov))
    if request == pt.PTRACE_GETREGSET:
        c.write(base, buf.raw[:iov[1]])
    c.write(iov_addr + 8, struct.pack("<Q", iov[1]))
    return 0


def _syscall_info(c: Call, space, link: "Link", size: int, addr: int) -> int:
    """PTRACE_GET_SYSCALL_INFO (kernel/ptrace.c ptrace_get_syscall_info):
    op, arch, ip, sp, then the entry's number and arguments or the exit's
    value; returns how many bytes the whole answer has."""
    regs = space.regs_view(link)
    head = struct.pack("<B3xIQQ", 0, AUDIT_ARCH_X86_64, regs.rip, regs.rsp)
    if link.stop == kptrace.SYSCALL_ENTRY:
        info = bytearray(head + struct.pack("<Q6Q", regs.orig_rax, *regs.args()))
        info[0] = pt.PTRACE_SYSCALL_INFO_ENTRY
    elif link.stop == kptrace.SYSCALL_EXIT:
        rval = host.signed64(regs.rax)
        info = bytearray(head + struct.pack("<qB", rval, int(-4095 <= rval < 0)))
        info[0] = pt.PTRACE_SYSCALL_INFO_EXIT
    else:
        info = bytearray(head)
    if size:
        c.write(addr, bytes(info[:size]))
    return len(info)


# -- wait4 of a tracer ------------------------------------------------------------

def traced_wait4(c: Call, pid: int, options: int, to_host):
    """wait4 by a process that traces: a tracee's stop or exit waiting to
    be reported is answered at once; otherwise the wait runs natively for
    real children (`to_host` translates its pid argument; a tracee's stop
    interrupts it, and it restarts and traps again) or, with none to wait
    for, sleeps in pause(2) until then. None: no tracee matches, the plain
    wait goes on."""
    inst, proc, task = c.inst, c.task.process, c.task
    space = inst.ptrace
    pgid_of = lambda tgid: _pgid(inst, task, tgid)      # noqa: E731
    report = space.take_report(proc, pid, options, consume=True, pgid_of=pgid_of)
    if report is not None:
        vid, status, _uid = report
        if c.ptr(1):
            c.write(c.ptr(1), struct.pack("<i", status))
        if c.ptr(3):
            c.write(c.ptr(3), bytes(144))     # struct rusage: the tracee's is not kept
        return vid
    if not space.has_tracees(proc, pid, options, pgid_of):
        return None
    children = _has_children(proc, pid)
    if options & kptrace._WNOHANG:
        if not children:
            return 0
        c.set_arg(0, to_host(c, pid))
        return Native(on_exit=lambda r: inst.reaped(r) or r if r > 0 else None)
    space.waiting(task, True)

    def done(result: int):
        space.waiting(task, False)
        return inst.reaped(result) or result if result > 0 else None
    if children:
        c.set_arg(0, to_host(c, pid))
    else:
        c.regs.orig_rax = SYS_PAUSE
    return Native(on_exit=done)


def _has_children(proc, pid: int) -> bool:
    if pid > 0:
        return any(ch.pid == pid for ch in proc.children)
    return bool(proc.children)


# -- waitid of a tracer -----------------------------------------------------------

_P_ALL, _P_PID, _P_PGID = 0, 1, 2
_WSTOPPED, _WEXITED, _WCONTINUED, _WNOWAIT = 2, 4, 8, 0x01000000
_CLD_EXITED, _CLD_KILLED, _CLD_DUMPED, _CLD_TRAPPED = 1, 2, 3, 4


def traced_waitid(c: Call, native):
    """waitid(2) by a process that traces: as traced_wait4, the report
    written as a siginfo_t (kernel/exit.c wait_task_stopped: CLD_TRAPPED
    and the stop's exit code; exits only with WEXITED). `native()` makes
    the plain waitid's answer for real children."""
    idtype, ident, infop, options = c.int(0), c.int(1), c.ptr(2), c.int(3)
    pid = {_P_ALL: -1, _P_PID: ident, _P_PGID: -ident if ident > 0 else 0}.get(idtype)
    if pid is None or (idtype == _P_PID and ident <= 0):
        return None
    inst, proc, task = c.inst, c.task.process, c.task
    space = inst.ptrace
    if not options & (_WEXITED | _WSTOPPED | _WCONTINUED):
        return None                       # the plain waitid's EINVAL
    pgid_of = lambda tgid: _pgid(inst, task, tgid)      # noqa: E731
    report = space.take_report(proc, pid, options, consume=not options & _WNOWAIT,
                               pgid_of=pgid_of, exits=bool(options & _WEXITED))
    if report is not None:
        vid, status, uid = report
        if os.WIFSTOPPED(status):
            code, value = _CLD_TRAPPED, (status >> 8) & 0xFFFF
        elif os.WIFEXITED(status):
            code, value = _CLD_EXITED, os.WEXITSTATUS(status)
        else:
            code = _CLD_DUMPED if os.WCOREDUMP(status) else _CLD_KILLED
            value = os.WTERMSIG(status)
        if infop:
            # siginfo_t: signo, errno, code, then (8-aligned) si_pid, si_uid, si_status
            c.write(infop, struct.pack("<iiiiiIi", signal.SIGCHLD, 0, code, 0, vid, uid, value)
                    + bytes(128 - 28))
        return 0
    if not space.has_tracees(proc, pid, options, pgid_of):
        return None
    children = _has_children(proc, pid)
    if options & kptrace._WNOHANG:
        if not children:
            if infop:
                c.write(infop, bytes(128))    # waitid(2): si_pid 0 when nothing has changed
            return 0
        return native()
    if not children:
        space.waiting(task, True)
        c.regs.orig_rax = SYS_PAUSE
        return Native(on_exit=lambda r: space.waiting(task, False))
    plain = native()
    space.waiting(task, True)
    inner = plain.on_exit

    def done(result: int):
        space.waiting(task, False)
        return inner(result) if inner is not None else None
    plain.on_exit = done
    return plain


def _pgid(inst, task, tgid):
    """The (virtual) process group of process tgid, or the caller's (None)."""
    host_pid = task.host_pid if tgid is None else inst.pids.host_of_vpid(tgid)
    try:
        return inst.pids.group_to_virtual(os.getpgid(host_pid)) if host_pid else None
    except OSError:
        return None
