"""<signal.h>: sending signals by virtual PID; only instance processes are reachable.

The signal itself is sent natively by the caller (so the receiver sees the
sender's identity, translated at delivery); the provider translates the
target, refuses anything outside the instance with ESRCH, and applies
Linux's permission rule with the instance's credentials (the host would
only see that every pico process runs as the same host user):
kernel/signal.c check_kill_permission.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct


from typing import TYPE_CHECKING

from lxsub.abi.signal import IGNORED_BY_DEFAULT, NSIG as _NSIG, SI_TKILL, SIGCONT, SIGKILL, SIGSTOP
from lxsub.abi.sysno import SYS_KILL, SYS_PROCESS_MADVISE, SYS_PROCESS_MRELEASE, SYS_RT_SIGQUEUEINFO
from lxsub.kernel import fanotify
from lxsub.kernel.call import Call, Native
from lxsub.kernel.creds import Creds, may_signal
from lxsub.kernel.task import active_pid_ns, is_pid_ns_init, ns_within, pid_in
from lxsub.platform import hostproc, memory
from lxsub.platform.ptrace import SigInfo

if TYPE_CHECKING:
    from lxsub.kernel.task import Process, Task


def _check_signal(sig: int) -> None:
    if not 0 <= sig < _NSIG:
        raise OSError(errno.EINVAL, "bad signal")


def _may_send(c: Call, target: "Task | None", sig: int) -> bool:
    """check_kill_permission: the sender's own thread group, the
    kill_ok_by_cred rule (creds.may_signal), or SIGCONT within the
    sender's session."""
    if target is None or target.process is c.task.process:
        return True
    if may_signal(c.task.creds, target.creds):
        return True
    if sig == SIGCONT:
        try:
            return os.getsid(target.host_tid) == os.getsid(c.task.host_tid)
        except OSError:
            return False
    return False


def _leader(proc: "Process") -> "Task | None":
    """The task a signal to the process is checked against (its leader)."""
    for task in proc.threads.values():
        if task.tid == proc.pid:
            return task
    return next(iter(proc.threads.values()), None)


def _check_permission(c: Call, target: "Task | None", sig: int) -> None:
    if not _may_send(c, target, sig):
        raise OSError(errno.EPERM, "operation not permitted")


def _discarded(c: Call, target: "Task | None", sig: int) -> bool:
    """kernel/signal.c prepare_signal, sig_ignored(): a signal its target
    ignores (SIG_IGN, or a default action of nothing) and has not blocked
    is dropped when it is sent, so it never ends a call of the target's.
    Linux keeps it for a traced task, for the tracer, and every pico
    process is the provider's tracee: sent natively, it would end the
    target's rt_sigtimedwait or epoll_wait with EINTR. So the provider drops
    it, unless a tracer inside the instance traces the target. A signal
    the target is waiting for in rt_sigtimedwait counts as blocked if it
    was blocked before the wait (the kernel's real_blocked). The init of
    a PID namespace ignores every signal it has no handler for, and
    SIGKILL and SIGSTOP from inside its namespace (sig_task_ignored,
    SIGNAL_UNKILLABLE): only an ancestor's process forces those."""
    return _verdict(c, target, sig)[0]


def _verdict(c: Call, target: "Task | None", sig: int) -> tuple[bool, dict[str, int] | None]:
    """(whether `sig` is dropped as _discarded says, the target's signal
    masks when they were read)."""
    if _unkillable(c, target, sig):
        return True, None
    masks = _masks_for(c, target, sig)
    return masks is not None and _ignored_by(target, sig, masks), masks


def _unkillable(c: Call, target: "Task | None", sig: int) -> bool:
    """SIGKILL or SIGSTOP for a PID namespace's init from inside it."""
    return (target is not None and sig in (SIGKILL, SIGSTOP) and is_pid_ns_init(target.process)
            and ns_within(active_pid_ns(c.task), target.process.pid_ns))


def _masks_for(c: Call, target: "Task | None", sig: int) -> dict[str, int] | None:
    """The target's signal masks when whether `sig` is dropped depends on
    them (see _discarded); None when it is sent as it is."""
    if target is None or sig in (0, SIGKILL, SIGSTOP, SIGCONT) or c.inst.ptrace.link_of(target):
        return None
    return hostproc.handling_masks(target.host_tid, sig)


def _ignored_by(target: "Task", sig: int, masks: dict[str, int]) -> bool:
    bit = 1 << (sig - 1)
    if (masks["SigBlk"] | target.real_blocked) & bit:
        return False
    if masks["SigIgn"] & bit:
        return True
    init = is_pid_ns_init(target.process)
    return (init or sig in IGNORED_BY_DEFAULT) and not masks["SigCgt"] & bit


# The kernel's SIGRTMIN (glibc's is 34: it keeps two): a real-time signal
# may not be queued (EAGAIN past RLIMIT_SIGPENDING); a standard one always
# is, or is pending already.
_FIRST_RT_SIGNAL = 32


def _thread_signal(c: Call, target: "Task | None", sig: int) -> Native | int:
    """Send `sig` to the thread `target` natively (the arguments already
    point at its host ids), or drop it (0) as _discarded says."""
    dropped, masks = _verdict(c, target, sig)
    if dropped:
        return 0
    return Native(stops_caller=masks is not None and target is c.task
                  and sig < _FIRST_RT_SIGNAL and not masks["SigBlk"] & (1 << (sig - 1)))


def sys_kill(c: Call):
    pid, sig = c.int(0), c.int(1)
    _check_signal(sig)
    pids, ns = c.inst.pids, active_pid_ns(c.task)
    if pid == 1 and ns is None:
        # /init takes no signals it has not asked for, after the permission
        # check against its (root's) credentials, as for any process.
        if not may_signal(c.task.creds, Creds()):
            raise OSError(errno.EPERM, "operation not permitted")
        return 0
    if pid == -1:
        return _kill_each(c, sig, _others(c))
    if pid > 0:
        host = pids.host_pid_in(ns, pid)
        if host is not None:
            leader = _leader(pids.process_in(ns, pid))
            _check_permission(c, leader, sig)
            if _discarded(c, leader, sig):
                return 0
    else:
        host = pids.group_host_in(ns, -pid) if pid < -1 else os.getpgid(c.task.host_tid)
        if host is None:
            raise OSError(errno.ESRCH, "no such process")
        members = _group(c, host)
        if not all(_may_send(c, _leader(p), sig) for p in members):
            return _kill_each(c, sig, members)
        host = -host if pid < -1 else 0
    if host is None:
        raise OSError(errno.ESRCH, "no such process")
    c.set_arg(0, host)
    return Native()


def _others(c: Call) -> list["Process"]:
    """kill(-1): every process of the caller's namespace (and below) but
    its init and the caller."""
    ns = active_pid_ns(c.task)
    return [p for p in c.inst.pids.visible(ns)
            if not (p.is_init() or p is c.task.process or p.exited or pid_in(p, ns) == 1)]


def _group(c: Call, host_pgid: int) -> list["Process"]:
    out = []
    for p in c.inst.pids.visible(active_pid_ns(c.task)):
        if p.exited or p.is_init():
            continue
        try:
            if os.getpgid(p.host_pid) == host_pgid:
                out.append(p)
        except OSError:
            pass
    return out


def _kill_each(c: Call, sig: int, procs: list["Process"]) -> int:
    """Signal each process the caller may signal, from the provider: as
    Linux's group kill, success if one was signalled, else EPERM if one
    was refused, else ESRCH."""
    hit = refused = 0
    for proc in procs:
        if not _may_send(c, _leader(proc), sig):
            refused += 1
            continue
        try:
            if sig:
                os.kill(proc.host_pid, sig)
            hit += 1
        except OSError:
            pass
    if hit:
        return 0
    raise OSError(errno.EPERM if refused else errno.ESRCH, "no process signalled")


def _thread(c: Call, vtid: int, sig: int) -> int:
    task = c.inst.pids.task_in(active_pid_ns(c.task), vtid) if vtid > 0 else None
    host = task.host_tid if task is not None else None
    if host is None or vtid <= 0:
        raise OSError(errno.ESRCH if vtid > 0 else errno.EINVAL, "no such thread")
    _check_permission(c, c.inst.pids.tasks_by_host.get(host), sig)
    return host


def sys_tkill(c: Call):
    _check_signal(c.int(1))
    host = _thread(c, c.int(0), c.int(1))
    c.set_arg(0, host)
    return _thread_signal(c, c.inst.pids.tasks_by_host.get(host), c.int(1))


def _thread_in_group(c: Call, tgid: int, tid: int, sig: int) -> "Task":
    """Point (tgid, tid) arguments 0 and 1 at the host thread, and return it."""
    if tgid <= 0:
        raise OSError(errno.EINVAL, "bad tgid")
    host_tid = _thread(c, tid, sig)
    task = c.inst.pids.tasks_by_host[host_tid]
    if pid_in(task.process, active_pid_ns(c.task)) != tgid:
        raise OSError(errno.ESRCH, "no such thread in that group")
    c.set_arg(0, task.host_pid)
    c.set_arg(1, host_tid)
    return task


def sys_tgkill(c: Call):
    _check_signal(c.int(2))
    task = _thread_in_group(c, c.int(0), c.int(1), c.int(2))
    return _thread_signal(c, task, c.int(2))


SIGINFO_SIZE = 128


def sys_rt_sigqueueinfo(c: Call):
    c.read(c.ptr(2), SIGINFO_SIZE)      # copy_siginfo_from_user comes first: EFAULT
    pid, sig = c.int(0), c.int(1)
    pids, ns = c.inst.pids, active_pid_ns(c.task)
    proc = pids.process_in(ns, pid) if pid > 0 else None
    host = proc.host_pid if proc is not None else None
    if proc is None and pid > 0:
        # kill_proc_info finds any task by its pid, a thread's too, and
        # signals its thread group (rt_sigqueueinfo(2)); so does the host's.
        thread = pids.task_in(ns, pid)
        if thread is not None:
            proc, host = thread.process, thread.host_tid
    if proc is None:
        raise OSError(errno.ESRCH, "no such process")
    _check_permission(c, _leader(proc), sig)
    c.set_arg(0, host)
    return Native()


def sys_rt_tgsigqueueinfo(c: Call):
    c.read(c.ptr(3), SIGINFO_SIZE)
    _thread_in_group(c, c.int(0), c.int(1), c.int(2))
    return Native()


def sys_pidfd_open(c: Call):
    pid = c.int(0)
    host = c.inst.pids.host_pid_in(active_pid_ns(c.task), pid) if pid > 0 else None
    if host is None:
        raise OSError(errno.ESRCH if pid > 0 else errno.EINVAL, "no such process")
    c.set_arg(0, host)
    return Native()


def pidfd_host_pid(local: int) -> int | None:
    """The host pid a pidfd (a provider-side copy) names: its fdinfo's
    `Pid:` line, -1 once the process has been reaped (fs/pidfs.c); None if
    `local` is no pidfd."""
    if os.readlink(f"/proc/self/fd/{local}") != "anon_inode:[pidfd]":
        return None
    with open(f"/proc/self/fdinfo/{local}", "rb") as f:
        for line in f:
            if line.startswith(b"Pid:"):
                return int(line.split()[1])
    return -1


def process_of_pidfd(c: Call, local: int, outside: int):
    """The instance process a pidfd names. A pidfd of a process outside the
    instance (a peer's SO_PEERPIDFD, one inherited from the host) names
    nothing here: `outside` is the errno Linux gives for a process of
    another pid namespace."""
    host = pidfd_host_pid(local)
    if host is None:
        raise OSError(errno.EBADF, "not a pidfd")
    if host <= 0:
        raise OSError(errno.ESRCH, "the process has exited")
    pids = c.inst.pids
    proc = pids.processes_by_host.get(host)
    if proc is None:
        task = pids.tasks_by_host.get(host)
        proc = task.process if task is not None else None
    if proc is None or proc.exited:
        raise OSError(outside, "not a process of this instance")
    return proc


def sys_pidfd_send_signal(c: Call):
    """A pidfd, or a /proc/<pid> directory, which is a pidfd too on Linux
    (psmisc's killall signals through them; an instance's /proc directory
    is the provider's). Either way the call becomes kill (or
    rt_sigqueueinfo with a siginfo) of that process's host pid, sent by the
    caller itself as kill(2) is, after the provider has checked the process
    is the instance's: the descriptor number is not used again, so another
    thread cannot swap in a pidfd of a host process meanwhile. Linux answers
    EINVAL for a pidfd of a process outside the caller's pid namespace
    (kernel/signal.c access_pidfd_pidns)."""
    from lxsub.kernel.fs.procfs import process_of_dir
    from lxsub.kernel.vfs import lookup
    fd, sig, info, flags = c.int(0), c.int(1), c.ptr(2), c.uint(3)
    if flags:
        raise OSError(errno.EINVAL, "bad flags")
    _check_signal(sig)
    local = lookup.copy_fd(c.task, fd)
    try:
        if pidfd_host_pid(local) is not None:
            proc = process_of_pidfd(c, local, errno.EINVAL)
        else:
            proc = process_of_dir(c.inst, local)
    finally:
        os.close(local)
    if proc is None:
        raise OSError(errno.EBADF, "not a pidfd")
    if info:
        _check_siginfo(c, info, sig, proc)
    if proc.exited:
        raise OSError(errno.ESRCH, "no such process")
    if proc.is_init():
        # check_kill_permission first (init is root's), then ignored as kill(1)
        if not may_signal(c.task.creds, Creds()):
            raise OSError(errno.EPERM, "operation not permitted")
        return 0
    _check_permission(c, _leader(proc), sig)
    assert c.regs is not None
    c.regs.orig_rax = SYS_RT_SIGQUEUEINFO if info else SYS_KILL
    c.regs.set_args(proc.host_pid, sig, info, 0, 0, 0)
    return Native()


def _check_siginfo(c: Call, info: int, sig: int, proc: "Process") -> None:
    """kernel/signal.c pidfd_send_signal with a siginfo: its si_signo must
    be the signal (EINVAL), and only the caller's own process may be sent
    a siginfo that claims to come from the kernel or tkill (EPERM)."""
    si_signo, _errno, si_code = struct.unpack("<iii", c.read(info, 12))
    if si_signo != sig:
        raise OSError(errno.EINVAL, "si_signo is not the signal")
    if proc is not c.task.process and (si_code >= 0 or si_code == SI_TKILL):
        raise OSError(errno.EPERM, "may not claim that origin")


SIGEV_THREAD_ID = 4
_SIGEV_NOTIFY, _SIGEV_TID = 12, 16    # struct sigevent: value, signo, notify, then _tid
_SIGEVENT_SIZE = 64


def sys_timer_create(c: Call):
    """A CPU clock names its process by pid (clock.translate_cpu_clock).
    A SIGEV_THREAD_ID timer names its thread by tid (glibc's SIGEV_THREAD
    timers too: their helper thread): the program's tid is virtual, the host
    kernel wants the host tid of a thread of the caller's group, else EINVAL
    (timer_create(2), good_sigevent()). The call runs on a translated copy."""
    from lxsub.kernel.syscalls.clock import translate_cpu_clock
    translate_cpu_clock(c, 0)
    addr = c.ptr(1)
    if not addr:
        return Native()
    event = bytearray(c.read(addr, _SIGEVENT_SIZE))
    notify = struct.unpack_from("<i", event, _SIGEV_NOTIFY)[0]
    if notify & SIGEV_THREAD_ID:
        vtid = struct.unpack_from("<i", event, _SIGEV_TID)[0]
        task = c.inst.pids.task_in(active_pid_ns(c.task), vtid)
        if task is None or task.process is not c.task.process:
            raise OSError(errno.EINVAL, "not a thread of the caller")
        struct.pack_into("<i", event, _SIGEV_TID, task.host_tid)
        assert c.regs is not None
        (copy,) = memory.write_below_sp(c.pid, c.regs.rsp, [bytes(event)])
        c.set_arg(1, copy)
    return Native()


def sys_pidfd_getfd(c: Call):
    """pidfd_getfd(2): a duplicate of another process's descriptor, taken
    by the provider and installed in the caller. Only a process of the
    instance, and only under ptrace's rule (PTRACE_MODE_ATTACH_REALCREDS,
    kernel/pid.c pidfd_getfd): a pidfd of a host process gives EPERM, as
    ptrace_may_access does across user namespaces."""
    from lxsub.kernel.call import NewFd
    from lxsub.kernel.vfs import lookup
    fd, target, flags = c.int(0), c.int(1), c.uint(2)
    if flags:
        raise OSError(errno.EINVAL, "bad flags")
    local = lookup.copy_fd(c.task, fd)
    try:
        proc = process_of_pidfd(c, local, errno.EPERM)
    finally:
        os.close(local)
    owner = next(iter(proc.threads.values()), None)
    if owner is None:
        raise OSError(errno.ESRCH, "the process has exited")
    if proc is not c.task.process and not c.task.creds.may_ptrace_read(
            owner.creds, bool(proc.dumpable), realcreds=True):
        raise OSError(errno.EPERM, "not permitted")
    got = lookup.copy_fd(owner, target)
    if fanotify.any_group(c.inst, [got]):
        fanotify.give_group_filter(c.inst, c.task)     # it holds the group now
    return NewFd(got, True)   # always O_CLOEXEC


def sys_process_madvise(c: Call) -> int:
    """process_madvise(2) on a pidfd: done by the provider for a process of
    the instance (EINVAL outside, as a pidfd of another pid namespace); the
    iovec names the target's memory, so it is passed on as it is."""
    from lxsub.platform import libc
    fd, iov, vlen, advice, flags = c.int(0), c.ptr(1), c.uint(2), c.int(3), c.uint(4)
    if vlen > 1024:
        raise OSError(errno.EINVAL, "too many iovecs")       # UIO_MAXIOV
    vec = c.read(iov, 16 * vlen) if vlen else b""
    with _own_pidfd(c, fd) as local:
        buf = ctypes.create_string_buffer(vec, max(len(vec), 1))
        return libc.syscall(SYS_PROCESS_MADVISE, local, ctypes.addressof(buf), vlen, advice,
                            flags)


def sys_process_mrelease(c: Call) -> int:
    from lxsub.platform import libc
    with _own_pidfd(c, c.int(0)) as local:
        return libc.syscall(SYS_PROCESS_MRELEASE, local, c.uint(1))


class _own_pidfd:
    """A provider-side copy of the caller's pidfd, checked to name a
    process of the instance."""

    def __init__(self, c: Call, fd: int) -> None:
        from lxsub.kernel.vfs import lookup
        self.local = lookup.copy_fd(c.task, fd)
        try:
            process_of_pidfd(c, self.local, errno.EINVAL)
        except BaseException:
            os.close(self.local)
            raise

    def __enter__(self) -> int:
        return self.local

    def __exit__(self, *exc) -> None:
        os.close(self.local)


def sys_rt_sigtimedwait(c: Call):
    """A signal taken with sigwaitinfo is never delivered, so it passes no
    ptrace signal stop: translate its sender in the siginfo it returns.
    While it waits, the kernel unblocks the signals waited for and keeps
    the mask it had (real_blocked), which _discarded asks."""
    info_addr, pid, inst, task = c.ptr(1), c.pid, c.inst, c.task
    task.real_blocked = hostproc.signal_masks(task.host_tid)["SigBlk"]

    def translate(result: int):
        task.real_blocked = 0
        if result > 0 and info_addr:
            raw = memory.read(pid, info_addr, ctypes.sizeof(SigInfo))
            info = SigInfo.from_buffer_copy(raw)
            if inst.translate_sender(info, active_pid_ns(task)):
                memory.write(pid, info_addr, bytes(info))
        return None
    return Native(on_exit=translate)


def sys_rt_sigreturn(c: Call):
    """Only the provider's own code traps here with its cookie, and the
    engine answers it (Engine.answer_if_injected); a program that passes
    the same first argument gets the call it asked for."""
    return Native()
