"""<unistd.h>/<sys/wait.h> process calls: execve, wait, ids, groups, sessions.

Process ids are virtual: calls that name a process are translated both ways,
and whatever the host can do with the translated ids runs natively in the
caller (waiting, joining a process group) so the provider never blocks.
"""

from __future__ import annotations

import errno
import os
import struct

from lxsub.kernel import interop
from lxsub.kernel.call import Call, Native
from lxsub.kernel.exec import plan as exec_plan
from lxsub.kernel.vfs import lookup
from lxsub.kernel.vfs.lookup import AT_EMPTY_PATH, AT_FDCWD, AT_SYMLINK_NOFOLLOW
from lxsub.platform import memory

SYS_EXECVE = 59
MAX_ARG_STRLEN = 131072


# -- execve -------------------------------------------------------------------

def sys_execve(c: Call):
    return _execve(c, AT_FDCWD, c.path(0), c.ptr(1), c.ptr(2), 0)


def sys_execveat(c: Call):
    flags = c.int(4)
    if flags & ~(AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW):
        raise OSError(errno.EINVAL, "bad flags")
    path = c.path(1) if c.ptr(1) else b""
    return _execve(c, c.int(0), path, c.ptr(2), c.ptr(3), flags)


def _read_argv(c: Call, addr: int) -> list[bytes]:
    return [c.read_str(p, MAX_ARG_STRLEN) for p in memory.read_ptr_array(c.pid, addr)]


def _execve(c: Call, dirfd: int, path: bytes, argv_ptr: int, envp_ptr: int, flags: int):
    argv = _read_argv(c, argv_ptr)
    inst, task = c.inst, c.task
    if not path and flags & AT_EMPTY_PATH:
        start = lookup.node_of_fd(inst, task, dirfd)
        path = b"."
        follow = True
    else:
        start = lookup.start_node(inst, task, dirfd, path)
        follow = not flags & AT_SYMLINK_NOFOLLOW
    try:
        p = exec_plan.plan(lookup.walker(inst, task), start, path, argv, inst.vpath_of, follow,
                           host_exec=interop.host_target(inst))
    finally:
        start.release()
    host_done = None
    if isinstance(p, exec_plan.HostPlan):
        # It runs on the host; the caller executes a stand-in (kernel/interop.py).
        p, host_done = interop.run_host(c, p, envp_ptr)
    try:
        _point_registers_at(c, p, envp_ptr, rewrite_argv=p.argv is not argv or host_done is not None)
    except BaseException:
        p.close()
        if host_done is not None:
            host_done(-1)          # the host program is not left running
        raise
    task.exec_state = p

    def failed(result: int) -> None:
        # Still here: the host execve failed (E2BIG, ENOMEM...).
        if task.exec_state is p:
            task.exec_state = None
        p.close()
        if host_done is not None:
            host_done(result)
        return None
    return Native(on_exit=failed)


def _point_registers_at(c: Call, p: exec_plan.ExecPlan, envp_ptr: int, rewrite_argv: bool) -> None:
    regs = c.regs
    assert regs is not None
    host_path = f"/proc/{os.getpid()}/fd/{p.host_fd}".encode()
    # The kernel copies this string to the new stack for AT_EXECFN; leading
    # slashes make room to put the program's own path there after the exec.
    host_path = b"/" * max(0, len(p.exe.encode()) - len(host_path)) + host_path
    p.execfn_room = len(host_path)
    host_path += b"\0"
    if rewrite_argv:
        strings = [a + b"\0" for a in p.argv]
        addrs = memory.write_below_sp(c.pid, regs.rsp, [host_path] + strings)
        table = b"".join(struct.pack("<Q", a) for a in addrs[1:]) + bytes(8)
        (argv_addr,) = memory.write_below_sp(c.pid, addrs[0], [table])
        path_addr = addrs[0]
    else:
        (path_addr,) = memory.write_below_sp(c.pid, regs.rsp, [host_path])
        argv_addr = regs.rsi if regs.orig_rax == SYS_EXECVE else regs.rdx
    regs.orig_rax = SYS_EXECVE
    regs.set_args(path_addr, argv_addr, envp_ptr)


# -- ids ----------------------------------------------------------------------

def sys_getpid(c: Call) -> int:
    return c.task.pid


def sys_gettid(c: Call) -> int:
    return c.task.tid


def sys_getppid(c: Call) -> int:
    parent = c.task.process.parent
    return parent.pid if parent is not None else 0


def sys_set_tid_address(c: Call):
    tid = c.task.tid
    return Native(on_exit=lambda _r: tid)


def _host_pid_or_esrch(c: Call, vpid: int) -> int:
    if vpid == 0:
        return c.task.host_pid
    host = c.inst.pids.host_of_vpid(vpid)
    if host is None:
        raise OSError(errno.ESRCH, "no such process")
    return host


def sys_getpgid(c: Call) -> int:
    return c.inst.pids.group_to_virtual(os.getpgid(_host_pid_or_esrch(c, c.int(0))))


def sys_getpgrp(c: Call) -> int:
    return c.inst.pids.group_to_virtual(os.getpgid(c.task.host_pid))


def sys_getsid(c: Call) -> int:
    return c.inst.pids.group_to_virtual(os.getsid(_host_pid_or_esrch(c, c.int(0))))


def sys_setpgid(c: Call):
    pid, pgid = c.int(0), c.int(1)
    if pid < 0 or pgid < 0:
        raise OSError(errno.EINVAL, "negative id")
    host_pid = 0 if pid == 0 else _host_pid_or_esrch(c, pid)
    host_pgid = 0 if pgid == 0 else c.inst.pids.group_to_host(pgid)
    if host_pgid is None:
        raise OSError(errno.EPERM, "no such process group")
    c.set_arg(0, host_pid)
    c.set_arg(1, host_pgid)
    return Native()


def sys_setsid(c: Call):
    pids = c.inst.pids
    return Native(on_exit=lambda r: pids.group_to_virtual(r) if r > 0 else None)


# -- waiting ----------------------------------------------------------------------

def _wait_target_to_host(c: Call, pid: int) -> int:
    if pid in (-1, 0):
        return pid
    if pid < -1:
        host = c.inst.pids.group_to_host(-pid)
        if host is None:
            raise OSError(errno.ECHILD, "no such child")
        return -host
    host = c.inst.pids.host_of_vpid(pid)
    if host is None:
        raise OSError(errno.ECHILD, "no such child")
    return host


def sys_wait4(c: Call):
    c.set_arg(0, _wait_target_to_host(c, c.int(0)))
    inst = c.inst

    def translate(result: int):
        if result > 0:
            return inst.reaped(result) or result
        return None
    return Native(on_exit=translate)


P_PID, P_PGID = 1, 2
_WNOWAIT = 0x01000000


def sys_waitid(c: Call):
    idtype, ident, infop, options = c.int(0), c.int(1), c.ptr(2), c.int(3)
    if idtype == P_PID:
        c.set_arg(1, _wait_target_to_host(c, ident))
    elif idtype == P_PGID and ident > 0:
        c.set_arg(1, -_wait_target_to_host(c, -ident))
    inst, pid = c.inst, c.pid

    def translate(result: int):
        # siginfo_t: si_pid at 16, si_uid at 20 (the child's, as waitid(2) says).
        if result == 0 and infop:
            raw = memory.read(pid, infop + 16, 4)
            host = struct.unpack("<i", raw)[0]
            if host > 0:
                child = inst.pids.zombies_by_host.get(host) or inst.pids.processes_by_host.get(host)
                uid = inst.ruid_of(child) if child is not None else 0
                v = inst.reaped(host) if not options & _WNOWAIT else inst.pids.vpid_of_host(host)
                memory.write(pid, infop + 16, struct.pack("<iI", v or host, uid))
        return None
    return Native(on_exit=translate)


# -- prctl ----------------------------------------------------------------------

PR_GET_DUMPABLE, PR_SET_DUMPABLE = 3, 4
PR_SET_NAME, PR_GET_NAME = 15, 16


def sys_prctl(c: Call) -> int:
    option = c.int(0)
    proc = c.task.process
    if option == PR_SET_NAME:
        proc.comm = c.read_str(c.ptr(1), 4096)[:15].decode(errors="replace")
        return 0
    if option == PR_GET_NAME:
        c.write(c.ptr(1), proc.comm.encode()[:15] + b"\0")
        return 0
    if option == PR_GET_DUMPABLE:
        return proc.dumpable
    if option == PR_SET_DUMPABLE:
        if c.args[1] not in (0, 1):
            raise OSError(errno.EINVAL, "bad value")
        # Kept in the provider only: a non-dumpable pico process would shut
        # the provider out of its memory.
        proc.dumpable = c.args[1]
        return 0
    raise OSError(errno.EINVAL, "unexpected prctl option")
