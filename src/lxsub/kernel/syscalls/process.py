"""<unistd.h>/<sys/wait.h> process calls: execve, wait, ids, groups, sessions.

Process ids are virtual: calls that name a process are translated both ways,
and whatever the host can do with the translated ids runs natively in the
caller (waiting, joining a process group) so the provider never blocks.
"""

from __future__ import annotations

import errno
import os
import struct

from lxsub.abi.fcntl import AT_EMPTY_PATH, AT_FDCWD, AT_SYMLINK_NOFOLLOW
from lxsub.abi.limits import MAX_ARG_STRLEN
from lxsub.abi.prctl import (PR_CAP_AMBIENT, PR_CAPBSET_DROP, PR_CAPBSET_READ, PR_GET_DUMPABLE, PR_GET_KEEPCAPS,
                              PR_GET_NAME, PR_GET_NO_NEW_PRIVS, PR_GET_SECCOMP, PR_GET_SECUREBITS, PR_SET_CHILD_SUBREAPER,
                              PR_SET_DUMPABLE, PR_SET_KEEPCAPS, PR_SET_NAME, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP,
                              PR_SET_SECUREBITS)
from lxsub.abi.seccomp import (BPF_MAXINSNS, SECCOMP_FILTER_FLAG_NEW_LISTENER, SECCOMP_FILTER_FLAG_TSYNC,
                               SECCOMP_MODE_FILTER, SECCOMP_MODE_STRICT, SECCOMP_SET_MODE_FILTER)
from lxsub.abi.sysno import NUMBERS, SYS_EXECVE
from lxsub.kernel import interop
from lxsub.kernel.syscalls import ptrace
from lxsub.kernel.call import Call, Native
from lxsub.kernel import creds as caps
from lxsub.kernel.creds import CAP_SYS_ADMIN
from lxsub.kernel.exec import plan as exec_plan
from lxsub.kernel.vfs import lookup
from lxsub.kernel.task import active_pid_ns, pid_in, tid_in
from lxsub.platform import bpf, landlock, memory


# -- execve -------------------------------------------------------------------

def sys_execve(c: Call):
    return _execve(c, AT_FDCWD, c.path(0), c.ptr(1), c.ptr(2), 0)


def sys_execveat(c: Call):
    flags = c.int(4)
    if flags & ~(AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW):
        raise OSError(errno.EINVAL, "bad flags")
    path = c.path_or_empty(1, flags)
    return _execve(c, c.int(0), path, c.ptr(2), c.ptr(3), flags)


def _read_argv(c: Call, addr: int) -> tuple[list[bytes], list[int]]:
    """The argv strings and where they are in the caller."""
    try:
        ptrs = memory.read_ptr_array(c.pid, addr)
        return [c.read_str(p, MAX_ARG_STRLEN) for p in ptrs], ptrs
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:    # a string past MAX_ARG_STRLEN: copy_strings' E2BIG
            raise OSError(errno.E2BIG, "argument too long") from None
        raise


def _execve(c: Call, dirfd: int, path: bytes, argv_ptr: int, envp_ptr: int, flags: int):
    argv, argv_ptrs = _read_argv(c, argv_ptr)
    inst, task = c.inst, c.task
    if not path and flags & AT_EMPTY_PATH:
        start = lookup.node_of_fd(inst.vfs, task, dirfd)
        follow = True
    elif not path:
        raise OSError(errno.ENOENT, "empty path")
    else:
        start = lookup.start_node(inst.vfs, task, dirfd, path)
        follow = not flags & AT_SYMLINK_NOFOLLOW
    try:
        p = exec_plan.plan(lookup.walker(inst.vfs, task), start, path, argv, inst.vfs.vpath_of, follow,
                           host_exec=interop.host_target(inst), fd_name=b"/dev/fd/%d" % dirfd)
    finally:
        start.release()
    host_done = None
    if isinstance(p, exec_plan.HostPlan):
        # It runs on the host; the caller executes a stand-in (kernel/interop.py).
        p, host_done = interop.run_host(c, p, envp_ptr)
    try:
        _point_registers_at(c, p, envp_ptr, c.regs.rsp,
                            rewrite_argv=p.argv is not argv or host_done is not None,
                            in_place={id(a): ptr for a, ptr in zip(argv, argv_ptrs)})
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


def _point_registers_at(c: Call, p: exec_plan.ExecPlan, envp_ptr: int, sp: int,
                        rewrite_argv: bool, in_place: dict[int, int]) -> None:
    """Point execve at our host path and the planned argv; what it needs in
    memory goes below sp. The caller's own argument strings (in_place: id
    of the string read -> its address) are used where they are: only what
    the plan added and the pointer table go below the stack pointer, whose
    mapping a remote write does not grow (a Linux-sized command line would
    not fit there). By identity, not value: what the plan made (the
    loader's program path) is always ours, never memory another thread of
    the caller could change."""
    regs = c.regs
    assert regs is not None
    host_path = f"/proc/{os.getpid()}/fd/{p.host_fd}".encode()
    # The kernel copies this string to the new stack for AT_EXECFN; leading
    # slashes make room to put the program's own path there after the exec.
    host_path = b"/" * max(0, len(p.exe.encode()) - len(host_path)) + host_path
    p.execfn_room = len(host_path)
    host_path += b"\0"
    if rewrite_argv:
        new = [a for a in p.argv if id(a) not in in_place]
        addrs = memory.write_below_sp(c.pid, sp, [host_path] + [a + b"\0" for a in new])
        placed = iter(addrs[1:])
        table = b"".join(struct.pack("<Q", in_place[id(a)] if id(a) in in_place else next(placed))
                         for a in p.argv) + bytes(8)
        (argv_addr,) = memory.write_below_sp(c.pid, addrs[0], [table])
        path_addr = addrs[0]
    else:
        (path_addr,) = memory.write_below_sp(c.pid, sp, [host_path])
        argv_addr = regs.rsi if regs.orig_rax == SYS_EXECVE else regs.rdx
    regs.orig_rax = SYS_EXECVE
    regs.set_args(path_addr, argv_addr, envp_ptr)


# -- ids ----------------------------------------------------------------------

def sys_getpid(c: Call) -> int:
    return pid_in(c.task.process, active_pid_ns(c.task))


def sys_gettid(c: Call) -> int:
    return tid_in(c.task, active_pid_ns(c.task))


def sys_getppid(c: Call) -> int:
    """The parent's pid in the caller's namespace: 0 for a namespace's
    init, whose parent is outside it."""
    parent = c.task.process.parent
    return pid_in(parent, active_pid_ns(c.task)) if parent is not None else 0


def sys_set_tid_address(c: Call):
    tid = tid_in(c.task, active_pid_ns(c.task))
    return Native(on_exit=lambda _r: tid)


def _host_pid_or_esrch(c: Call, vpid: int) -> int:
    if vpid == 0:
        return c.task.host_pid
    host = c.inst.pids.host_pid_in(active_pid_ns(c.task), vpid)
    if host is None:
        raise OSError(errno.ESRCH, "no such process")
    return host


def sys_getpgid(c: Call) -> int:
    return c.inst.pids.group_in(os.getpgid(_host_pid_or_esrch(c, c.int(0))), active_pid_ns(c.task))


def sys_getpgrp(c: Call) -> int:
    return c.inst.pids.group_in(os.getpgid(c.task.host_pid), active_pid_ns(c.task))


def sys_getsid(c: Call) -> int:
    return c.inst.pids.group_in(os.getsid(_host_pid_or_esrch(c, c.int(0))), active_pid_ns(c.task))


def sys_setpgid(c: Call):
    pid, pgid = c.int(0), c.int(1)
    if pid < 0 or pgid < 0:
        raise OSError(errno.EINVAL, "negative id")
    host_pid = 0 if pid == 0 else _host_pid_or_esrch(c, pid)
    host_pgid = 0 if pgid == 0 else c.inst.pids.group_host_in(active_pid_ns(c.task), pgid)
    if host_pgid is None:
        raise OSError(errno.EPERM, "no such process group")
    c.set_arg(0, host_pid)
    c.set_arg(1, host_pgid)
    return Native()


def sys_setsid(c: Call):
    pids, ns = c.inst.pids, active_pid_ns(c.task)
    return Native(on_exit=lambda r: pids.group_in(r, ns) if r > 0 else None)


# -- waiting ----------------------------------------------------------------------

def _wait_target_to_host(c: Call, pid: int) -> int:
    if pid in (-1, 0):
        return pid
    if pid < -1:
        host = c.inst.pids.group_host_in(active_pid_ns(c.task), -pid)
        if host is None:
            raise OSError(errno.ECHILD, "no such child")
        return -host
    host = c.inst.pids.host_pid_in(active_pid_ns(c.task), pid)
    if host is None:
        raise OSError(errno.ECHILD, "no such child")
    return host


_WAIT4_OPTIONS = 0x1 | 0x2 | 0x8 | 0x20000000 | 0x40000000 | 0x80000000   # WNOHANG...__WCLONE
INT_MIN = -(1 << 31)


def sys_wait4(c: Call):
    # kernel/exit.c kernel_wait4: bad options, then "-INT_MIN is not
    # defined" (ESRCH), before any child is looked for (ECHILD).
    if c.uint(2) & ~_WAIT4_OPTIONS:
        raise OSError(errno.EINVAL, "bad options")
    if c.int(0) == INT_MIN:
        raise OSError(errno.ESRCH, "no such process group")
    if c.inst.ptrace.tracers and c.task.process in c.inst.ptrace.tracers:
        traced = ptrace.traced_wait4(c, c.int(0), c.uint(2), _wait_target_to_host)
        if traced is not None:
            return traced
    c.set_arg(0, _wait_target_to_host(c, c.int(0)))
    inst, ns = c.inst, active_pid_ns(c.task)

    def translate(result: int):
        if result > 0:
            return inst.reaped(result, ns) or result
        return None
    return Native(on_exit=translate)


P_PID, P_PGID = 1, 2
_WNOWAIT = 0x01000000


def sys_waitid(c: Call):
    if c.inst.ptrace.tracers and c.task.process in c.inst.ptrace.tracers:
        traced = ptrace.traced_waitid(c, lambda: _plain_waitid(c))
        if traced is not None:
            return traced
    return _plain_waitid(c)


def _plain_waitid(c: Call):
    idtype, ident, infop, options = c.int(0), c.int(1), c.ptr(2), c.int(3)
    if idtype == P_PID:
        c.set_arg(1, _wait_target_to_host(c, ident))
    elif idtype == P_PGID and ident > 0:
        c.set_arg(1, -_wait_target_to_host(c, -ident))
    inst, pid, ns = c.inst, c.pid, active_pid_ns(c.task)

    def translate(result: int):
        # siginfo_t: si_pid at 16, si_uid at 20 (the child's, as waitid(2) says).
        if result == 0 and infop:
            raw = memory.read(pid, infop + 16, 4)
            host = struct.unpack("<i", raw)[0]
            if host > 0:
                child = inst.pids.zombies_by_host.get(host) or inst.pids.processes_by_host.get(host)
                uid = inst.ruid_of(child) if child is not None else 0
                v = inst.reaped(host, ns) if not options & _WNOWAIT else inst.pid_of_host(host, ns)
                memory.write(pid, infop + 16, struct.pack("<iI", v or host, uid))
        return None
    return Native(on_exit=translate)


# -- prctl ----------------------------------------------------------------------



def sys_prctl(c: Call):
    option = c.int(0)
    proc = c.task.process
    if option in (PR_SET_NO_NEW_PRIVS, PR_GET_NO_NEW_PRIVS, PR_GET_SECCOMP, PR_SET_SECCOMP):
        return _prctl_privs(c, option)
    if option == PR_SET_NAME:
        proc.comm = c.read_str(c.ptr(1), 4096)[:15].decode(errors="replace")
        return 0
    if option == PR_GET_NAME:
        c.write(c.ptr(1), proc.comm.encode()[:15] + b"\0")
        return 0
    if option == PR_SET_CHILD_SUBREAPER:
        # Run on the host too (its orphans are reparented by the host);
        # the instance's getppid follows the same rule (Instance._new_reaper).
        def done(result: int) -> None:
            if result == 0:
                proc.child_subreaper = bool(c.args[1])
        return Native(done)
    if option in (PR_GET_SECUREBITS, PR_SET_SECUREBITS):
        return _prctl_securebits(c, option, c.args[1])
    if option == PR_CAP_AMBIENT:
        return _prctl_ambient(c, *c.args[1:5])
    if option in (PR_CAPBSET_READ, PR_CAPBSET_DROP):
        return _prctl_bounding_set(c, option, c.args[1])
    if option == PR_GET_KEEPCAPS:
        return int(c.task.creds.keep_caps)
    if option == PR_SET_KEEPCAPS:
        # Kept in the emulated credentials: the host's would keep nothing
        # that the provider checks (kernel/creds.py after_uid_change).
        if c.args[1] not in (0, 1):
            raise OSError(errno.EINVAL, "bad value")
        if c.task.creds.securebits & SECURE_KEEP_CAPS_LOCKED:
            raise OSError(errno.EPERM, "SECURE_KEEP_CAPS is locked")
        c.task.creds.keep_caps = bool(c.args[1])
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


# include/uapi/linux/securebits.h, as of the release lxsub reports (6.1):
# NOROOT, NO_SETUID_FIXUP, KEEP_CAPS, NO_CAP_AMBIENT_RAISE and their locks.
SECURE_KEEP_CAPS, SECURE_KEEP_CAPS_LOCKED = 1 << 4, 1 << 5
SECURE_ALL_BITS = 0x55
SECURE_ALL_LOCKS = SECURE_ALL_BITS << 1


def _prctl_securebits(c: Call, option: int, bits: int) -> int:
    """The instance's securebits (security/commoncap.c cap_task_prctl): a
    change needs CAP_SETPCAP and may not touch a locked bit, unlock a lock
    or set an unknown bit (EPERM for all). SECURE_KEEP_CAPS is keep_caps."""
    cr = c.task.creds
    old = cr.securebits | (SECURE_KEEP_CAPS if cr.keep_caps else 0)
    if option == PR_GET_SECUREBITS:
        return old
    if (((old & SECURE_ALL_LOCKS) >> 1) & (old ^ bits) or old & SECURE_ALL_LOCKS & ~bits
            or bits & ~(SECURE_ALL_LOCKS | SECURE_ALL_BITS) or not cr.capable(caps.CAP_SETPCAP)):
        raise OSError(errno.EPERM, "not permitted")
    cr.keep_caps = bool(bits & SECURE_KEEP_CAPS)
    cr.securebits = bits & ~SECURE_KEEP_CAPS
    return 0


PR_CAP_AMBIENT_IS_SET, PR_CAP_AMBIENT_RAISE, PR_CAP_AMBIENT_LOWER, PR_CAP_AMBIENT_CLEAR_ALL = 1, 2, 3, 4
SECURE_NO_CAP_AMBIENT_RAISE = 1 << 6


def _prctl_ambient(c: Call, op: int, cap: int, arg4: int, arg5: int) -> int:
    """PR_CAP_AMBIENT on the instance's ambient set (security/commoncap.c
    cap_task_prctl): EINVAL for unused arguments or an invalid capability,
    EPERM to raise one not both permitted and inheritable (or with
    SECURE_NO_CAP_AMBIENT_RAISE)."""
    cr = c.task.creds
    if op == PR_CAP_AMBIENT_CLEAR_ALL:
        if cap or arg4 or arg5:
            raise OSError(errno.EINVAL, "unused arguments must be 0")
        cr.cap_ambient = 0
        return 0
    if not 0 <= cap <= caps.CAP_LAST or arg4 or arg5:
        raise OSError(errno.EINVAL, "bad arguments")
    bit = 1 << cap
    if op == PR_CAP_AMBIENT_IS_SET:
        return int(bool(cr.cap_ambient & bit))
    if op == PR_CAP_AMBIENT_RAISE:
        if not (cr.cap_permitted & cr.cap_inheritable & bit) or cr.securebits & SECURE_NO_CAP_AMBIENT_RAISE:
            raise OSError(errno.EPERM, "not permitted and inheritable")
        cr.cap_ambient |= bit
        return 0
    if op == PR_CAP_AMBIENT_LOWER:
        cr.cap_ambient &= ~bit
        return 0
    raise OSError(errno.EINVAL, "bad operation")


def _prctl_bounding_set(c: Call, option: int, cap: int) -> int:
    """The bounding set is the instance's (creds.cap_bset), as root inside
    sees its own: PR_CAPBSET_READ of a valid capability (EINVAL otherwise);
    PR_CAPBSET_DROP needs CAP_SETPCAP, then a valid one
    (security/commoncap.c cap_prctl_drop)."""
    cr = c.task.creds
    valid = 0 <= cap <= caps.CAP_LAST
    if option == PR_CAPBSET_READ:
        if not valid:
            raise OSError(errno.EINVAL, "no such capability")
        return cr.cap_bset >> cap & 1
    if not cr.capable(caps.CAP_SETPCAP):
        raise OSError(errno.EPERM, "CAP_SETPCAP needed")
    if not valid:
        raise OSError(errno.EINVAL, "no such capability")
    cr.cap_bset &= ~(1 << cap)
    return 0


def _prctl_privs(c: Call, option: int):
    """no_new_privs and the seccomp mode as the program set them: every pico
    process has the host's (the provider's filter needs them), so the host
    would answer 1 and 2 to a program that set nothing (prctl(2))."""
    task = c.task
    if option == PR_SET_NO_NEW_PRIVS:
        if c.args[1] != 1 or any(c.args[2:5]):
            raise OSError(errno.EINVAL, "bad arguments")
        task.no_new_privs = True        # the host's is set already: nothing to run
        return 0
    if option == PR_GET_NO_NEW_PRIVS:
        if any(c.args[1:5]):
            raise OSError(errno.EINVAL, "bad arguments")
        return int(task.no_new_privs)
    if option == PR_GET_SECCOMP:
        return task.seccomp_mode
    mode = c.args[1]                    # PR_SET_SECCOMP, by ptrace
    if mode == SECCOMP_MODE_FILTER:
        return _install_filter(c, 0)
    if mode == SECCOMP_MODE_STRICT:
        return _enter_strict(c)
    raise OSError(errno.EINVAL, "bad seccomp mode")


def sys_seccomp(c: Call):
    """seccomp(2) SECCOMP_SET_MODE_STRICT / _FILTER (the other operations
    run natively without a stop). The program's filter is stacked on the
    provider's by the host kernel; the mode it reads back is its own."""
    if c.int(0) == SECCOMP_SET_MODE_FILTER:
        return _install_filter(c, c.args[1])
    if c.uint(1) or c.args[2]:
        raise OSError(errno.EINVAL, "SECCOMP_SET_MODE_STRICT takes no flags or arguments")
    return _enter_strict(c)


# seccomp(2): strict mode leaves a thread read(2), write(2), _exit(2) and
# sigreturn(2); any other call kills it with SIGKILL.
_STRICT_ALLOWED = tuple(NUMBERS[n] for n in ("read", "write", "exit", "rt_sigreturn"))


def _enter_strict(c: Call) -> Native:
    """SECCOMP_MODE_STRICT. The host refuses it to a thread that has a
    filter (the provider's), so the host installs a filter instead that
    allows those four calls and traps every other one (SECCOMP_RET_TRAP
    comes before the provider's notify and trace answers); the SIGSYS that
    brings becomes the SIGKILL of strict mode (Instance.on_signal).
    seccomp_may_assign_mode: a thread with a filter of its own cannot
    enter strict mode (EINVAL)."""
    if c.task.seccomp_mode not in (0, SECCOMP_MODE_STRICT):
        raise OSError(errno.EINVAL, "a seccomp filter is installed")
    program = bpf.allow_only(_STRICT_ALLOWED, bpf.RET_TRAP)
    regs = c.regs
    code, fprog = memory.write_below_sp(c.pid, regs.rsp, [program, bytes(16)])
    memory.write(c.pid, fprog, struct.pack("<H6xQ", len(program) // 8, code))
    regs.orig_rax = NUMBERS["seccomp"]
    regs.set_args(SECCOMP_SET_MODE_FILTER, 0, fprog)
    return _enter_mode(c, SECCOMP_MODE_STRICT, 0)


def sys_landlock_restrict_self(c: Call) -> Native:
    """security/landlock/syscalls.c: as for a seccomp filter, the thread
    needs no_new_privs or CAP_SYS_ADMIN (EPERM), its own bit, not the
    host's, which every pico process has; then the host restricts it."""
    if not (c.task.no_new_privs or c.task.creds.capable(CAP_SYS_ADMIN)):
        raise OSError(errno.EPERM, "no_new_privs unset and no CAP_SYS_ADMIN")
    task, inst = c.task, c.inst
    try:
        ruleset = lookup.copy_fd(task, c.int(0))
    except OSError:
        return Native()                  # the host's EBADF (or a -1 with flags)

    def restricted(result: int) -> None:
        # The provider's work for the thread (platform/landlock.py) is done
        # in a copy of its new domain, made now: the rule set may change
        # once the call has returned, the domain does not.
        try:
            if result == 0:
                task.landlock = landlock.Domain.restricted(task.landlock, ruleset)
        except OSError as e:
            inst.log.warn(f"no Landlock domain helper for thread {task.tid}: {e}")
        finally:
            os.close(ruleset)
        return None
    return Native(on_exit=restricted)


def _install_filter(c: Call, flags: int):
    # kernel/seccomp.c seccomp_prepare_user_filter: the struct sock_fprog
    # is read first (EFAULT), its length checked (EINVAL), then the right:
    # seccomp(2): "the caller must have the CAP_SYS_ADMIN capability in its
    # user namespace, or the thread must already have the no_new_privs bit
    # set" -- the program's own bit, not the host's.
    length = int.from_bytes(c.read(c.ptr(2), 16)[:2], "little")
    if not 0 < length <= BPF_MAXINSNS:
        raise OSError(errno.EINVAL, "bad filter length")
    if not (c.task.no_new_privs or c.task.creds.capable(CAP_SYS_ADMIN)):
        raise OSError(errno.EACCES, "no_new_privs unset and no CAP_SYS_ADMIN")
    if flags & SECCOMP_FILTER_FLAG_NEW_LISTENER:
        # A thread's filters may hold one listener (kernel/seccomp.c
        # has_duplicate_listener): the provider's has it, whatever the
        # platform. Where the provider's filter has none (the ptrace
        # platform), a program's listener would get its calls first (its
        # USER_NOTIF outranks the provider's TRACE) and let them run.
        raise OSError(errno.EBUSY, "the provider's filter holds the listener")
    return _enter_mode(c, SECCOMP_MODE_FILTER, flags)


def _enter_mode(c: Call, mode: int, flags: int) -> Native:
    task = c.task

    def done(result: int) -> None:
        if result >= 0:
            filters = task.seccomp_filters + (mode == SECCOMP_MODE_FILTER)
            threads = (task.process.threads.values() if flags & SECCOMP_FILTER_FLAG_TSYNC
                       else (task,))
            for t in list(threads):
                t.seccomp_mode, t.seccomp_filters = mode, filters
        return None
    return Native(on_exit=done)
