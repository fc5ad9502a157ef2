"""<signal.h>: sending signals by virtual PID; only instance processes are reachable.

The signal itself is sent natively by the caller (so the receiver sees the
sender's identity, translated at delivery); the provider only translates the
target and refuses anything outside the instance with ESRCH.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct


from lxsub.kernel.call import Call, Native
from lxsub.platform import memory
from lxsub.platform.ptrace import SigInfo

_NSIG = 65


def _check_signal(sig: int) -> None:
    if not 0 <= sig < _NSIG:
        raise OSError(errno.EINVAL, "bad signal")


def sys_kill(c: Call):
    pid, sig = c.int(0), c.int(1)
    _check_signal(sig)
    pids = c.inst.pids
    if pid == 1:
        return 0      # /init takes no signals it has not asked for
    if pid == -1:
        return _kill_all(c, sig)
    if pid > 0:
        host = pids.host_of_vpid(pid)
    elif pid < -1:
        host = pids.group_to_host(-pid)
        host = -host if host is not None else None
    else:
        host = 0
    if host is None:
        raise OSError(errno.ESRCH, "no such process")
    c.set_arg(0, host)
    return Native()


def _kill_all(c: Call, sig: int) -> int:
    """kill(-1): every instance process but init and the caller."""
    hit = 0
    for proc in list(c.inst.pids.processes_by_vid.values()):
        if proc.is_init() or proc is c.task.process or proc.exited:
            continue
        try:
            if sig:
                os.kill(proc.host_pid, sig)
            hit += 1
        except OSError:
            pass
    if not hit:
        raise OSError(errno.ESRCH, "no such process")
    return 0


def _thread(c: Call, vtid: int) -> int:
    host = c.inst.pids.host_of_vtid(vtid)
    if host is None or vtid <= 0:
        raise OSError(errno.ESRCH if vtid > 0 else errno.EINVAL, "no such thread")
    return host


def sys_tkill(c: Call):
    _check_signal(c.int(1))
    c.set_arg(0, _thread(c, c.int(0)))
    return Native()


def _thread_in_group(c: Call, tgid: int, tid: int) -> None:
    """Point (tgid, tid) arguments 0 and 1 at the host thread."""
    if tgid <= 0:
        raise OSError(errno.EINVAL, "bad tgid")
    host_tid = _thread(c, tid)
    task = c.inst.pids.tasks_by_host[host_tid]
    if task.pid != tgid:
        raise OSError(errno.ESRCH, "no such thread in that group")
    c.set_arg(0, task.host_pid)
    c.set_arg(1, host_tid)


def sys_tgkill(c: Call):
    _check_signal(c.int(2))
    _thread_in_group(c, c.int(0), c.int(1))
    return Native()


SIGINFO_SIZE = 128


def sys_rt_sigqueueinfo(c: Call):
    c.read(c.ptr(2), SIGINFO_SIZE)      # copy_siginfo_from_user comes first: EFAULT
    pid = c.int(0)
    host = c.inst.pids.host_of_vpid(pid) if pid > 0 else None
    if host is None:
        raise OSError(errno.ESRCH, "no such process")
    c.set_arg(0, host)
    return Native()


def sys_rt_tgsigqueueinfo(c: Call):
    c.read(c.ptr(3), SIGINFO_SIZE)
    _thread_in_group(c, c.int(0), c.int(1))
    return Native()


def sys_pidfd_open(c: Call):
    pid = c.int(0)
    host = c.inst.pids.host_of_vpid(pid) if pid > 0 else None
    if host is None:
        raise OSError(errno.ESRCH if pid > 0 else errno.EINVAL, "no such process")
    c.set_arg(0, host)
    return Native()


SYS_KILL, SYS_RT_SIGQUEUEINFO = 62, 129


def sys_pidfd_send_signal(c: Call):
    """A real pidfd (from pidfd_open) runs natively. A /proc/<pid> directory
    is a pidfd too on Linux (psmisc's killall signals through them), but an
    instance's /proc directory is the provider's: the call becomes kill (or
    rt_sigqueueinfo with a siginfo) of that process's host pid, sent by the
    caller itself as kill(2) is."""
    from lxsub.kernel.fs.procfs import process_of_dir
    from lxsub.kernel.vfs import lookup
    fd, sig, info, flags = c.int(0), c.int(1), c.ptr(2), c.uint(3)
    _check_signal(sig)
    local = lookup.copy_fd(c.task, fd)
    try:
        if os.readlink(f"/proc/self/fd/{local}") == "anon_inode:[pidfd]":
            return Native()
        proc = process_of_dir(c.inst, local)
    finally:
        os.close(local)
    if proc is None:
        raise OSError(errno.EBADF, "not a pidfd")
    if flags:
        raise OSError(errno.EINVAL, "bad flags")
    if proc.exited:
        raise OSError(errno.ESRCH, "no such process")
    if proc.is_init():
        return 0      # as kill(1)
    assert c.regs is not None
    c.regs.orig_rax = SYS_RT_SIGQUEUEINFO if info else SYS_KILL
    c.regs.set_args(proc.host_pid, sig, info, 0, 0, 0)
    return Native()


SIGEV_THREAD_ID = 4
_SIGEV_NOTIFY, _SIGEV_TID = 12, 16    # struct sigevent: value, signo, notify, then _tid
_SIGEVENT_SIZE = 64


def sys_timer_create(c: Call):
    """A SIGEV_THREAD_ID timer names its thread by tid (glibc's SIGEV_THREAD
    timers too: their helper thread): the program's tid is virtual, the host
    kernel wants the host tid of a thread of the caller's group, else EINVAL
    (timer_create(2), good_sigevent()). The call runs on a translated copy."""
    addr = c.ptr(1)
    if not addr:
        return Native()
    event = bytearray(c.read(addr, _SIGEVENT_SIZE))
    notify = struct.unpack_from("<i", event, _SIGEV_NOTIFY)[0]
    if notify & SIGEV_THREAD_ID:
        vtid = struct.unpack_from("<i", event, _SIGEV_TID)[0]
        task = c.inst.pids.tasks_by_vid.get(vtid)
        if task is None or task.process is not c.task.process:
            raise OSError(errno.EINVAL, "not a thread of the caller")
        struct.pack_into("<i", event, _SIGEV_TID, task.host_tid)
        assert c.regs is not None
        (copy,) = memory.write_below_sp(c.pid, c.regs.rsp, [bytes(event)])
        c.set_arg(1, copy)
    return Native()


def sys_deny(c: Call) -> int:
    """Calls that would let a program reach past the provider."""
    raise OSError(errno.EPERM, "not permitted in an lxsub instance")


def sys_rt_sigtimedwait(c: Call):
    """A signal taken with sigwaitinfo is never delivered, so it passes no
    ptrace signal stop: translate its sender in the siginfo it returns."""
    info_addr, pid, inst = c.ptr(1), c.pid, c.inst

    def translate(result: int):
        if result > 0 and info_addr:
            raw = memory.read(pid, info_addr, ctypes.sizeof(SigInfo))
            info = SigInfo.from_buffer_copy(raw)
            if inst.translate_sender(info):
                memory.write(pid, info_addr, bytes(info))
        return None
    return Native(on_exit=translate)
