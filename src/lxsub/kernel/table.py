"""The syscall table: the one place that says what lxsub does with each call.

Every x86_64 syscall has one row: how it reaches the provider (`native`:
the host runs it untouched; `notify`: seccomp user-notify, the provider
answers; `trace`: a ptrace stop, the provider rewrites registers; `errno`:
the filter answers at once), its handler, its support level and a note.
The seccomp filter, the dispatcher and docs/SYSCALLS.md are all made from
this table (`python3 -m lxsub.kernel.table --markdown` prints the page,
`--write` writes it).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lxsub.abi.sched import (CLONE_NEWCGROUP, CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUSER,
                              CLONE_NEWUTS, CLONE_UNTRACED)
from lxsub.abi.resource import RLIMIT_NOFILE
from lxsub.abi.socket import AF_NETLINK, AF_UNIX, SO_PASSCRED, SO_PASSPIDFD
from lxsub.abi.sysno import NAMES, NUMBERS
from lxsub.kernel import fanotify as kfanotify
from lxsub.kernel import timekeeping
from lxsub.kernel.fs import loopdev, lxbusdev
from lxsub.kernel.fs.procfs import ns as procfs_ns
from lxsub.kernel.fs.procfs import procmap
from lxsub.kernel.syscalls import (acct, clock, crossproc, fanotify, fcntl, fhandle, identity, inotify, ioctl, ipc,
                                   keys, klog, lsm, mount, mountinfo, mqueue, net, nsproxy, pidfd_info, process,
                                   ptrace, sched, signal, stat, stdio, unistd, utsname, xattr)
from lxsub.platform import bpf, coderun
from lxsub.platform.bpf import ArgRule, ByArgs

NATIVE, NOTIFY, TRACE, ERRNO = "native", "notify", "trace", "errno"
FULL, PARTIAL, UNIMPLEMENTED, DENIED = "full", "partial", "unimplemented", "denied"

_VIA_ACTION = {NATIVE: bpf.RET_ALLOW, NOTIFY: bpf.RET_USER_NOTIF, TRACE: bpf.RET_TRACE}


@dataclass(frozen=True)
class Syscall:
    name: str
    via: str
    handler: Callable | None = None
    level: str = FULL
    note: str = ""
    err: int = 0                     # for via == ERRNO
    rules: tuple[ArgRule, ...] = ()  # argument tests that pick another action

    @property
    def nr(self) -> int:
        return NUMBERS[self.name]

    def action(self) -> bpf.Action:
        base = bpf.errno_action(self.err) if self.via == ERRNO else _VIA_ACTION[self.via]
        return ByArgs(self.rules, base) if self.rules else base


def native(name: str, note: str = "", level: str = FULL) -> Syscall:
    return Syscall(name, NATIVE, level=level, note=note)


def notify(name: str, handler: Callable, note: str = "", level: str = FULL) -> Syscall:
    return Syscall(name, NOTIFY, handler, level, note)


def trace(name: str, handler: Callable, note: str = "", level: str = FULL) -> Syscall:
    return Syscall(name, TRACE, handler, level, note)


def denied(name: str, err: int = errno.EPERM, note: str = "") -> Syscall:
    return Syscall(name, ERRNO, level=DENIED, note=note, err=err)


def unimplemented(name: str, note: str = "") -> Syscall:
    """Reaches the provider, which logs it once and answers ENOSYS."""
    return Syscall(name, NOTIFY, None, UNIMPLEMENTED, note)


def pid_arg(name: str, handler: Callable = sched.sys_pid_first, note: str = "") -> Syscall:
    """A call naming a PID in its first argument: 0 (itself) stays native."""
    rule = ArgRule(0, "eq", 0, bpf.RET_ALLOW)
    return Syscall(name, TRACE, handler, FULL, note or "PID argument translated", rules=(rule,))


def _when(index: int, values, action: int) -> tuple[ArgRule, ...]:
    return tuple(ArgRule(index, "eq", v, action) for v in values)


# prlimit64's third argument, the new limit: NULL only reads the old one.
_SETTING_LIMIT = ByArgs((ArgRule(2, "eq", 0, bpf.RET_ALLOW, wide=True),), bpf.RET_TRACE)

# The calls kernel/fanotify.py's group filter stops in a process holding a group.
_GROUP_STOPS = "stopped (ptrace) only in a process holding a fanotify group: "
_NOT_SOCK = "; ENOTSOCK for a fanotify descriptor"

_CLONE_FORBIDDEN = CLONE_NEWCGROUP | CLONE_NEWUSER | CLONE_NEWNET | CLONE_UNTRACED

def _peer_option(c) -> bool:
    return c.int(2) in net.PEER_OPTIONS          # the names the getsockopt row traps


def _pass_option(c) -> bool:
    return c.int(2) in (SO_PASSPIDFD, SO_PASSCRED)     # the names the setsockopt row traps


def _passes_creds(c) -> bool:
    return c.task.process.creds_filter           # SCM_CREDENTIALS to translate


def _has_address(c) -> bool:
    return c.ptr(4) != 0                          # the sendto row traps those


ROWS: list[Syscall] = [
    # -- I/O on descriptors the program holds: the host's own
    *(native(n) for n in (
        "write", "close", "poll", "pwrite64", "writev",
        "pipe", "pipe2", "select", "pselect6", "ppoll", "dup", "dup2", "dup3",
        "flock", "fsync", "fdatasync", "ftruncate", "getdents", "getdents64", "readahead",
        "fadvise64", "fallocate", "tee", "vmsplice", "sync_file_range",
        "pwritev", "pwritev2", "copy_file_range", "close_range",
        "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait",
        "epoll_pwait2", "eventfd", "eventfd2", "signalfd", "signalfd4", "timerfd_create",
        "timerfd_gettime",
        "inotify_rm_watch", "memfd_create", "sync", "syncfs", "io_setup", "io_destroy",
        "io_getevents", "io_submit", "io_cancel", "io_pgetevents", "userfaultfd",
        "memfd_secret")),
    Syscall("splice", NATIVE, fanotify.sys_splice, FULL, _GROUP_STOPS + "EINVAL for a fanotify descriptor "
            "(no splice_read or splice_write; Linux's wait for room in a full output pipe first is not "
            "made)"),
    Syscall("sendfile", NATIVE, fanotify.sys_sendfile, FULL, _GROUP_STOPS + "EINVAL for a fanotify "
            "descriptor"),
    Syscall("lseek", NATIVE, fanotify.sys_lseek, FULL, _GROUP_STOPS + "0 for a fanotify descriptor "
            "(noop_llseek)"),
    *(Syscall(n, NATIVE, kfanotify.sys_read_watched, FULL, "stopped (ptrace) only in a process that "
              "opened a file a fanotify group wants FAN_ACCESS_PERM for: the read waits for the answers "
              "(notify platform only)")
      for n in ("read", "pread64", "readv", "preadv", "preadv2")),
    Syscall("fcntl", NATIVE, fcntl.sys_fcntl, FULL, "F_SETOWN/F_GETOWN(_EX) trap: PIDs translated; "
            "F_GETLK/F_OFD_GETLK traced: the holder's l_pid made virtual; F_SETPIPE_SZ traps: the "
            "instance's pipe-max-size; F_CREATED_QUERY traps: VolFs's created files are marked "
            "(kernel/vfs/created.py)",
            rules=(*_when(1, (8, 9, 15, 16, fcntl.F_SETPIPE_SZ, fcntl.F_CREATED_QUERY), bpf.RET_USER_NOTIF),
                   *_when(1, (fcntl.F_GETLK, fcntl.F_OFD_GETLK), bpf.RET_TRACE))),
    Syscall("ioctl", NATIVE, ioctl.sys_ioctl, FULL,
            "terminal/socket owner and process group requests trap: PIDs translated; TIOCSTI denied; "
            "the LxBus requests of /dev/lxbus trap by notify (docs/LXBUS.md); the loop and block "
            "requests trap by notify: the instance's loop devices (/dev/loop-control, /dev/loopN); the NS_GET_* "
            "requests of namespace files answer for the instance's namespaces; PROCMAP_QUERY on "
            "/proc/<pid>/maps asks the host's and names the file by its instance path; PIDFD_GET_INFO "
            "gives the instance's pids and credentials",
            rules=(ArgRule(1, "eq", ioctl.TIOCSTI, bpf.errno_action(errno.EPERM)),
                   *_when(1, ioctl.TRAPPED, bpf.RET_TRACE),
                   *_when(1, lxbusdev.REQUESTS, bpf.RET_USER_NOTIF),
                   *_when(1, loopdev.REQUESTS, bpf.RET_USER_NOTIF),
                   *_when(1, procfs_ns.REQUESTS, bpf.RET_USER_NOTIF),
                   *_when(1, procmap.REQUESTS, bpf.RET_USER_NOTIF),
                   *_when(1, pidfd_info.REQUESTS, bpf.RET_USER_NOTIF))),
    # -- memory, time, scheduling of the caller itself
    *(native(n) for n in (
        "mmap", "mprotect", "munmap", "brk", "mremap", "msync", "mincore", "madvise",
        "mlock", "munlock", "mlockall", "munlockall", "mlock2", "remap_file_pages", "mbind", "set_mempolicy",
        "get_mempolicy", "set_mempolicy_home_node", "pkey_mprotect", "pkey_alloc", "pkey_free",
        "membarrier", "mseal", "map_shadow_stack", "cachestat",
        "nanosleep",
        "getitimer", "setitimer", "alarm", "pause",
        "timer_gettime", "timer_getoverrun", "timer_delete", "times", "getrusage",
        "sched_yield", "sched_get_priority_max", "sched_get_priority_min", "getcpu", "futex", "futex_waitv", "futex_wake", "futex_wait",
        "futex_requeue", "set_robust_list", "rseq", "arch_prctl", "getrlimit",
        "getrandom", "personality", "restart_syscall", "exit", "exit_group",
        "rt_sigaction", "rt_sigprocmask", "rt_sigpending",
        "rt_sigsuspend", "sigaltstack", "landlock_create_ruleset",
        "landlock_add_rule")),
    native("uretprobe", "the host's: only the host's uretprobe trampoline may call it (elsewhere "
           "SIGILL, as on Linux)"),
    Syscall("rt_sigreturn", NATIVE, signal.sys_rt_sigreturn, FULL, "one first argument (it takes "
            "none) traps: the end of the provider's code that maps a dynamic program at its exec "
            "(platform/coderun.py); the call then runs as asked",
            rules=(ArgRule(0, "eq", coderun.COOKIE, bpf.RET_USER_NOTIF, wide=True),)),
    trace("landlock_restrict_self", process.sys_landlock_restrict_self,
          "the program's no_new_privs or CAP_SYS_ADMIN checked (every pico process has the host's "
          "no_new_privs); the provider's opens, inet binds and connects for the restricted thread "
          "are checked by a helper in a copy of its domain (after the open: an O_CREAT or O_TRUNC "
          "it refuses has happened); its Unix sockets are made and its connects to abstract names "
          "made by the helper too, so the abstract socket scope holds (not for a send with an "
          "address)", PARTIAL),
    # A negative clockid is a CPU clock naming a pid: translated. The
    # realtime clocks are the instance's (kernel/timekeeping.py): their
    # reads and absolute times reach the provider, which runs them on the
    # host as they are until the instance's clock is set.
    Syscall("clock_gettime", NATIVE, clock.sys_clock_gettime, FULL, "CPU clocks of other processes "
            "(negative clockids) stop: the pid in them translated, outside the instance EINVAL; the "
            "realtime clocks (REALTIME, its COARSE and ALARM, TAI) trap: the instance's wall clock; "
            "in a time namespace with offsets the monotonic and boottime ones stop too",
            rules=(ArgRule(0, "any_bit", 0x80000000, bpf.RET_TRACE),
                   *_when(0, timekeeping.REALTIME_CLOCKS, bpf.RET_USER_NOTIF))),
    Syscall("clock_getres", NATIVE, clock.sys_cpu_clock, FULL, "CPU clocks of other processes "
            "(negative clockids) stop: the pid in them translated, outside the instance EINVAL",
            rules=(ArgRule(0, "any_bit", 0x80000000, bpf.RET_TRACE),)),
    Syscall("clock_nanosleep", NATIVE, clock.sys_clock_nanosleep, FULL, "CPU clocks of other "
            "processes translated as clock_gettime's; TIMER_ABSTIME on a realtime clock stops: the "
            "instance's time made the host's",
            rules=(ArgRule(0, "any_bit", 0x80000000, bpf.RET_TRACE),
                   ArgRule(1, "any_bit", clock.TIMER_ABSTIME,
                           ByArgs(_when(0, timekeeping.REALTIME_CLOCKS, bpf.RET_TRACE), bpf.RET_ALLOW)))),
    notify("gettimeofday", clock.sys_gettimeofday, "the instance's wall clock and timezone (a "
           "direct call traps; the vDSO's runs natively until the instance's clock is set)"),
    notify("time", clock.sys_time, "the instance's wall clock (as gettimeofday)"),
    Syscall("timer_settime", NATIVE, clock.sys_timer_settime, FULL, "TIMER_ABSTIME stops: the "
            "time of a realtime clock (the instance's) or of a time namespace's clock made the host's",
            rules=(ArgRule(1, "any_bit", clock.TIMER_ABSTIME, bpf.RET_TRACE),)),
    # A TFD_TIMER_CANCEL_ON_SET timer lives on the host's clock: it is
    # cancelled when the host's is set, and its time is the host's.
    Syscall("timerfd_settime", NATIVE, clock.sys_timerfd_settime, FULL, "TFD_TIMER_ABSTIME stops "
            "as timer_settime's, except with TFD_TIMER_CANCEL_ON_SET (native: the host's clock, "
            "its time and its being set)",
            rules=(ArgRule(1, "any_bit", clock.TIMER_ABSTIME,
                           ByArgs((ArgRule(1, "any_bit", clock.TFD_TIMER_CANCEL_ON_SET, bpf.RET_ALLOW),),
                                  bpf.RET_TRACE)),)),
    *(notify(n, getattr(signal, "sys_" + n), "pidfds of the instance's processes only; "
             "outside: EINVAL") for n in ("process_madvise", "process_mrelease")),
    # SysV IPC: keys and ids of the caller's IPC namespace, the provider's (kernel/syscalls/ipc.py).
    *(trace(n, getattr(ipc, "sys_" + n), "keys of the caller's IPC namespace (objects made "
            "IPC_PRIVATE on the host, its host user's); an existing key's mode checked by the "
            "instance's ids (ipcperms)") for n in ("shmget", "semget", "msgget")),
    *(trace(n, getattr(ipc, "sys_" + n), "only the ids of the caller's IPC namespace (others: EINVAL); "
            "ipcperms by the instance's ids")
      for n in ("shmat", "semop", "semtimedop", "msgsnd", "msgrcv")),
    *(trace(n, getattr(ipc, "sys_" + n), "only the ids of the caller's IPC namespace; ipcperms, IPC_SET/IPC_RMID "
            "by owner, creator or CAP_SYS_ADMIN; IPC_STAT shows Linux ids and virtual pids; "
            "IPC_INFO and *_INFO: the host's limits, the usage and highest index of the "
            "namespace's objects; *_STAT and *_STAT_ANY: an index of the namespace's table")
      for n in ("shmctl", "semctl", "msgctl")),
    native("shmdt"),
    # POSIX message queues: the caller's IPC namespace (kernel/mqueue.py).
    notify("mq_open", mqueue.sys_mq_open, "opened in the caller's IPC namespace; owner, "
           "mode and limits checked by the instance's ids"),
    notify("mq_unlink", mqueue.sys_mq_unlink, "in the caller's IPC namespace; the "
           "sticky root's rule by the instance's ids"),
    *(native(n, "on the descriptor of the instance's own queue") for n in (
        "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr")),
    native("fork", "child's pid translated at the ptrace fork event"),
    native("vfork", "child's pid translated at the ptrace vfork event"),
    Syscall("clone", NATIVE, nsproxy.sys_clone_new_ns, FULL, "new namespaces but UTS, IPC, PID and "
            "mount, and CLONE_UNTRACED denied (EPERM); CLONE_NEWUTS/CLONE_NEWIPC/CLONE_NEWPID/CLONE_NEWNS "
            "stop: UTS, IPC, PID and mount namespaces of the provider's; child tid translated (to the "
            "caller's PID namespace) in the result and in PARENT/CHILD_SETTID memory",
            rules=(ArgRule(0, "any_bit", _CLONE_FORBIDDEN, bpf.errno_action(errno.EPERM)),
                   ArgRule(0, "any_bit", CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID | CLONE_NEWNS,
                           bpf.RET_TRACE))),
    denied("clone3", errno.ENOSYS, "glibc falls back to clone, whose flags the filter can check"),
    Syscall("prctl", NATIVE, process.sys_prctl, PARTIAL,
            "PR_SET/GET_NAME, PR_SET/GET_DUMPABLE, PR_SET/GET_KEEPCAPS, PR_SET/GET_NO_NEW_PRIVS, "
            "PR_CAPBSET_READ/DROP, PR_CAP_AMBIENT, PR_SET/GET_SECUREBITS and PR_GET_SECCOMP "
            "emulated (the host's no_new_privs and filter are not the program's); "
            "PR_SET_SECCOMP checked like seccomp; PR_SET_CHILD_SUBREAPER seen for the instance's "
            "reparenting; PR_SET_MM denied",
            rules=(ArgRule(0, "eq", 35, bpf.errno_action(errno.EPERM)),
                   *_when(0, (3, 4, 7, 8, 15, 16, 21, 23, 24, 27, 28, 38, 39, 47), bpf.RET_USER_NOTIF),
                   ArgRule(0, "eq", 22, bpf.RET_TRACE), ArgRule(0, "eq", 36, bpf.RET_TRACE))),
    Syscall("seccomp", NATIVE, process.sys_seccomp, FULL,
            "filters run natively, stacked on the provider's; installing one needs the "
            "program's own no_new_privs or CAP_SYS_ADMIN (EACCES); strict mode is a filter that "
            "traps all but read, write, exit and rt_sigreturn, its SIGSYS made a SIGKILL of the "
            "whole process",
            rules=_when(0, (0, 1), bpf.RET_TRACE)),
    # -- sockets: addresses that name files are translated
    Syscall("socket", NATIVE, net.sys_socket, FULL,
            "AF_UNIX: made in the instance's own network namespace (abstract names are the "
            "instance's); AF_NETLINK stops: NETLINK_AUDIT answers EPROTONOSUPPORT (no audit "
            "subsystem)",
            rules=(ArgRule(0, "eq", AF_UNIX, bpf.RET_USER_NOTIF),
                   ArgRule(0, "eq", AF_NETLINK, bpf.RET_TRACE))),
    Syscall("socketpair", NATIVE, net.sys_socketpair, FULL, "AF_UNIX: made in the instance's "
            "own network namespace (abstract names are the instance's)",
            rules=(ArgRule(0, "eq", AF_UNIX, bpf.RET_USER_NOTIF),)),
    Syscall("getsockopt", NATIVE, fanotify.socket_call(net.sys_getsockopt, own=_peer_option), PARTIAL,
            "SO_PEERCRED, SO_PEERGROUPS, "
            "SO_PEERPIDFD trap: the peer's virtual pid and Linux ids, nobody outside the instance. "
            "Gap: the provider connects Unix sockets for programs, so when a client closes its "
            "socket before the server asks, the server sees nobody (pid 0, overflow ids)" + _NOT_SOCK,
            rules=_when(2, net.PEER_OPTIONS, bpf.RET_USER_NOTIF)),
    Syscall("setsockopt", NATIVE, fanotify.socket_call(net.sys_setsockopt, own=_pass_option,
                                                       checked_first=fanotify.bad_optlen), FULL,
            "SO_PASSPIDFD: ENOPROTOOPT (it "
            "would give pidfds of host senders); SO_PASSCRED stops and runs natively: once on, "
            "the process gets a filter of its own that stops recvmsg/recvmmsg" + _NOT_SOCK,
            rules=(ArgRule(2, "eq", SO_PASSPIDFD, bpf.RET_USER_NOTIF),
                   ArgRule(2, "eq", SO_PASSCRED, bpf.RET_TRACE))),
    *(Syscall(n, NATIVE, fanotify.socket_call(checked_first=first), FULL, _GROUP_STOPS + "ENOTSOCK for "
              "a fanotify descriptor")
      for n, first in (("listen", None), ("accept", None), ("accept4", fanotify.bad_accept4_flags),
                       ("shutdown", None), ("recvfrom", None))),
    *(Syscall(n, NATIVE, fanotify.socket_call(getattr(net, "sys_" + n), own=_passes_creds,
                                              checked_first=fanotify.bad_msg_flags(flags_at)), FULL,
              "in a process that turned SO_PASSCRED "
              "on, its own filter stops it: SCM_CREDENTIALS received show the sender's pid in "
              "the instance and Linux ids" + _NOT_SOCK) for n, flags_at in (("recvmsg", 2), ("recvmmsg", 3))),
    notify("getsockname", fanotify.socket_call(net.sys_getsockname), "a Unix socket bound in the instance shows "
           "its instance path" + _NOT_SOCK),
    notify("getpeername", fanotify.socket_call(net.sys_getpeername), "a Unix socket's peer bound in the "
           "instance shows its instance path" + _NOT_SOCK),
    # The destination and descriptors are in memory the filter cannot read
    # and another thread may change: the provider sends from its copies.
    notify("sendmsg", fanotify.socket_call(net.sys_sendmsg, checked_first=fanotify.bad_msg_flags(2)),
           "sent by the provider: AF_UNIX destinations resolved "
           "in the instance, SCM_RIGHTS from the caller's descriptors, SCM_CREDENTIALS "
           "checked in the instance's ids (unix(7))" + _NOT_SOCK),
    notify("sendmmsg", fanotify.socket_call(net.sys_sendmmsg, checked_first=fanotify.bad_msg_flags(3)),
           "as sendmsg, message by message" + _NOT_SOCK),
    notify("bind", fanotify.socket_call(net.sys_bind), "AF_UNIX paths resolved in the instance" + _NOT_SOCK),
    notify("connect", fanotify.socket_call(net.sys_connect, checked_first=fanotify.bad_address),
           "AF_UNIX paths resolved in the instance" + _NOT_SOCK),
    # The address is a pointer: all 64 bits tell whether there is one.
    Syscall("sendto", NOTIFY, fanotify.socket_call(net.sys_sendto, own=_has_address), FULL,
            "without an address native; with one "
            "resolved like connect" + _NOT_SOCK,
            rules=(ArgRule(4, "eq", 0, bpf.RET_ALLOW, wide=True),)),
    # -- paths: all resolved by the provider inside the instance
    Syscall("open", NOTIFY, fcntl.sys_open, FULL, "O_PATH opens trap by ptrace (ADDFD refuses O_PATH files)",
            rules=(ArgRule(1, "any_bit", fcntl.O_PATH, bpf.RET_TRACE),)),
    Syscall("openat", NOTIFY, fcntl.sys_openat, FULL, "O_PATH opens trap by ptrace (ADDFD refuses O_PATH files)",
            rules=(ArgRule(2, "any_bit", fcntl.O_PATH, bpf.RET_TRACE),)),
    notify("openat2", fcntl.sys_openat2, "RESOLVE_* restrictions in the provider's walk; "
           "RESOLVE_CACHED: EAGAIN; O_PATH gives a read-only descriptor", PARTIAL),
    notify("creat", fcntl.sys_creat),
    notify("stat", stat.sys_stat),
    notify("lstat", stat.sys_lstat),
    notify("fstat", stat.sys_fstat, "VolFs owners and modes"),
    notify("newfstatat", stat.sys_newfstatat),
    notify("statx", stat.sys_statx, "no birth time"),
    notify("statfs", stat.sys_statfs),
    notify("ustat", stat.sys_ustat, "the instance's mounts, by the st_dev stat gives"),
    notify("fstatfs", stat.sys_fstatfs),
    notify("readlink", stat.sys_readlink),
    notify("readlinkat", stat.sys_readlinkat),
    notify("access", stat.sys_access),
    notify("faccessat", stat.sys_faccessat),
    notify("faccessat2", stat.sys_faccessat2),
    notify("mkdir", stat.sys_mkdir),
    notify("mkdirat", stat.sys_mkdirat),
    notify("mknod", stat.sys_mknod, "device nodes kept as VolFs metadata"),
    notify("mknodat", stat.sys_mknodat, "device nodes kept as VolFs metadata"),
    notify("chmod", stat.sys_chmod),
    notify("fchmod", stat.sys_fchmod),
    notify("fchmodat", stat.sys_fchmodat),
    notify("fchmodat2", stat.sys_fchmodat2),
    notify("umask", stat.sys_umask),
    notify("utime", stat.sys_utime),
    notify("utimes", stat.sys_utimes),
    notify("futimesat", stat.sys_futimesat),
    notify("utimensat", stat.sys_utimensat),
    notify("unlink", unistd.sys_unlink),
    notify("unlinkat", unistd.sys_unlinkat),
    notify("rmdir", unistd.sys_rmdir),
    notify("link", unistd.sys_link),
    notify("linkat", unistd.sys_linkat),
    notify("symlink", unistd.sys_symlink),
    notify("symlinkat", unistd.sys_symlinkat),
    notify("rename", stdio.sys_rename),
    notify("renameat", stdio.sys_renameat),
    notify("renameat2", stdio.sys_renameat2, "RENAME_WHITEOUT: EPERM"),
    notify("chdir", unistd.sys_chdir),
    notify("fchdir", unistd.sys_fchdir),
    notify("getcwd", unistd.sys_getcwd),
    notify("chroot", unistd.sys_chroot),
    notify("chown", unistd.sys_chown),
    notify("lchown", unistd.sys_lchown, "symlinks stay owned by root (no xattrs on host symlinks)",
           PARTIAL),
    notify("fchown", unistd.sys_fchown),
    notify("fchownat", unistd.sys_fchownat),
    notify("truncate", unistd.sys_truncate),
    *(notify(n, getattr(xattr, "sys_" + n), "VolFs's own attributes are hidden")
      for n in ("getxattr", "lgetxattr", "fgetxattr", "setxattr", "lsetxattr", "fsetxattr",
                "listxattr", "llistxattr", "flistxattr", "removexattr", "lremovexattr",
                "fremovexattr", "setxattrat", "getxattrat", "listxattrat", "removexattrat")),
    # -- processes: virtual PIDs
    trace("execve", process.sys_execve, "interpreters resolved in the instance; dynamic "
          "programs run through the instance's ld.so"),
    trace("execveat", process.sys_execveat),
    trace("wait4", process.sys_wait4),
    trace("waitid", process.sys_waitid),
    notify("getpid", process.sys_getpid),
    notify("gettid", process.sys_gettid),
    notify("getppid", process.sys_getppid),
    trace("set_tid_address", process.sys_set_tid_address),
    notify("getpgid", process.sys_getpgid),
    notify("getpgrp", process.sys_getpgrp),
    notify("getsid", process.sys_getsid),
    trace("setpgid", process.sys_setpgid),
    trace("setsid", process.sys_setsid),
    trace("timer_create", signal.sys_timer_create, "SIGEV_THREAD_ID's tid translated"),
    trace("kill", signal.sys_kill, "only instance processes; kill(1) is ignored like init's"),
    trace("tkill", signal.sys_tkill),
    trace("tgkill", signal.sys_tgkill),
    trace("rt_sigqueueinfo", signal.sys_rt_sigqueueinfo),
    trace("rt_tgsigqueueinfo", signal.sys_rt_tgsigqueueinfo),
    trace("pidfd_open", signal.sys_pidfd_open),
    trace("pidfd_send_signal", signal.sys_pidfd_send_signal,
          "kill of the process a pidfd or a /proc/<pid> directory (as psmisc uses it) names; "
          "a process outside the instance: EINVAL"),
    notify("pidfd_getfd", signal.sys_pidfd_getfd, "only processes of the instance, by ptrace's "
           "rule; outside: EPERM"),
    trace("rt_sigtimedwait", signal.sys_rt_sigtimedwait, "the sender's pid and uid in the "
          "returned siginfo are translated; signalfd reads are not (partial)", PARTIAL),
    # Always stopped, for the caller's own thread too: the provider may hold a
    # thread on its CPU for a wake-up, and at a stop that is over.
    *(trace(n, sched.sys_cpu_mask, "PID argument translated; the caller's own mask, never "
            "the provider's temporary one") for n in ("sched_setaffinity", "sched_getaffinity")),
    *(pid_arg(n) for n in (
        "sched_getparam", "sched_getscheduler", "sched_rr_get_interval", "sched_getattr")),
    *(pid_arg(n, sched.sys_task_first) for n in ("migrate_pages", "move_pages")),
    # The caller's own limits are native but for setting RLIMIT_NOFILE: its
    # hard limit is bounded by the instance's fs.nr_open.
    Syscall("prlimit64", TRACE, sched.sys_prlimit64, FULL, "PID argument translated; the caller's "
            "own (pid 0) native but for a new RLIMIT_NOFILE, whose hard limit the instance's "
            "fs.nr_open bounds (EPERM)",
            rules=(ArgRule(0, "eq", 0, ByArgs((ArgRule(1, "eq", RLIMIT_NOFILE, _SETTING_LIMIT),),
                                              bpf.RET_ALLOW)),)),
    Syscall("setrlimit", NATIVE, sched.sys_setrlimit, FULL, "RLIMIT_NOFILE stops: its hard limit is "
            "bounded by the instance's fs.nr_open (EPERM)",
            rules=(ArgRule(0, "eq", RLIMIT_NOFILE, bpf.RET_TRACE),)),
    *(trace(n, sched.sys_sched_set, "PID translated; stopped for the caller itself too: "
            "Linux's CAP_SYS_NICE, owner and RLIMIT_RTPRIO checks with the instance's "
            "credentials") for n in ("sched_setparam", "sched_setscheduler", "sched_setattr")),
    pid_arg("get_robust_list", sched.sys_get_robust_list, "PID translated; EPERM unless the "
            "caller may read the target like ptrace"),
    Syscall("getpriority", TRACE, sched.sys_priority, FULL, "PIDs translated"),
    Syscall("setpriority", TRACE, sched.sys_priority, FULL, "PIDs translated"),
    Syscall("ioprio_get", TRACE, sched.sys_ioprio, FULL, "PIDs translated"),
    Syscall("ioprio_set", TRACE, sched.sys_ioprio, FULL, "PIDs translated"),
    # -- identity: emulated, root inside is not root outside
    *(notify(n, getattr(identity, "sys_" + n)) for n in (
        "getuid", "geteuid", "getgid", "getegid", "setuid", "setgid", "setreuid", "setregid",
        "setresuid", "setresgid", "getresuid", "getresgid", "setfsuid", "setfsgid",
        "getgroups", "setgroups", "capget", "capset")),
    notify("uname", utsname.sys_uname, "Linux, lxsub's release, the hostname of the caller's UTS namespace"),
    notify("sysinfo", utsname.sys_sysinfo, "uptime since the instance started, its own task count"),
    notify("sethostname", utsname.sys_sethostname, "per UTS namespace (the instance's or one its processes made)"),
    notify("setdomainname", utsname.sys_setdomainname, "per UTS namespace"),
    # -- would step around the provider or change the host
    notify("ptrace", ptrace.sys_ptrace, "emulated by the provider (kernel/ptrace.py) for tracers "
           "in the instance: TRACEME, ATTACH, SEIZE, INTERRUPT, DETACH, CONT, SYSCALL, "
           "SINGLESTEP, KILL, LISTEN, PEEK/POKE, GET/SETREGS, FPREGS, REGSET, SIGINFO, SIGMASK, "
           "SETOPTIONS, GETEVENTMSG, GET_SYSCALL_INFO; clone/exec events and auto-attach; "
           "no PEEKSIGINFO, TRACEEXIT or TRACESECCOMP events, group-stops reported only "
           "when attaching a stopped task; tasks outside the instance: ESRCH", PARTIAL),
    *(notify(n, getattr(crossproc, "sys_" + n), "processes of the instance only (ESRCH "
             "otherwise), by ptrace's attach rule (EPERM)") for n in ("process_vm_readv",
                                                                     "process_vm_writev")),
    notify("kcmp", crossproc.sys_kcmp, "processes of the instance only (ESRCH otherwise), by "
           "ptrace's read rule (EPERM)"),
    denied("io_uring_setup", errno.ENOSYS, "would bypass the filter"),
    denied("io_uring_enter", errno.ENOSYS), denied("io_uring_register", errno.ENOSYS),
    notify("name_to_handle_at", fhandle.sys_name_to_handle_at, "path resolved in the instance; the host "
           "file system's handle, the instance's mount id; pseudo files: AT_HANDLE_FID only"),
    notify("open_by_handle_at", fhandle.sys_open_by_handle_at, "CAP_DAC_READ_SEARCH inside, then the host "
           "decodes the handle, which it does only for a host user with CAP_DAC_READ_SEARCH (root; else "
           "EPERM); only the instance's own files (ESTALE), opened as open(2); O_PATH: EINVAL", PARTIAL),
    trace("unshare", nsproxy.sys_unshare, "CLONE_FILES, CLONE_FS, CLONE_SYSVSEM and the "
          "single-thread checks as Linux; CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNS, "
          "CLONE_NEWTIME: UTS, IPC, PID, mount and time namespaces of the provider's (a time "
          "namespace's offsets: the caller gets a filter stopping its monotonic and boottime clock "
          "calls; CLONE_NEWTIME by unshare only); other new namespaces: EPERM", PARTIAL),
    notify("setns", nsproxy.sys_setns, "the instance's namespaces and the UTS, IPC, PID, mount and "
           "time ones its processes made (/proc/<pid>/ns files, pidfds of its processes): the "
           "install checks, the mount namespace's root and cwd"),
    notify("mount", mount.sys_mount, "the instance's own mount table: tmpfs, proc, sysfs, devpts, "
           "bind mounts (root only); MS_RDONLY and MS_REMOUNT: read-only mounts (EROFS) the provider "
           "keeps; MS_MOVE: EINVAL", PARTIAL),
    notify("sysfs", mount.sys_sysfs, "the file system types of /proc/filesystems"),
    notify("umount2", mount.sys_umount2, "the instance's own mounts; open files do not make "
           "them busy", PARTIAL),
    notify("pivot_root", mount.sys_pivot_root, "in the caller's mount namespace (root only): "
           "new_root's mount takes the root mount's place, which moves to put_old; roots and "
           "cwds on the old root move to the new one"),
    Syscall("open_tree", TRACE, mount.sys_open_tree, PARTIAL, "an O_PATH descriptor (traps by "
            "ptrace, as O_PATH opens); OPEN_TREE_CLONE (root only): a detached bind mount of the file "
            "in the caller's namespace, without the mounts below it, its descriptor O_RDONLY",
            rules=(ArgRule(2, "any_bit", mount.OPEN_TREE_CLONE, bpf.RET_USER_NOTIF),)),
    notify("move_mount", mount.sys_move_mount, "attaches a detached mount (OPEN_TREE_CLONE) in the "
           "caller's namespace, MOVE_MOUNT_BENEATH under the top mount; moving an attached mount and "
           "MOVE_MOUNT_SET_GROUP: EINVAL", PARTIAL),
    denied("fsopen"), denied("fsconfig"),
    denied("fsmount"), denied("fspick"), denied("mount_setattr"), denied("open_tree_attr"),
    notify("statmount", mountinfo.sys_statmount, "the instance's mounts (kernel/vfs/statmount.py): "
           "unique ids are mountinfo's plus 2^31; all mounts private; no LSM options, no fs subtypes"),
    notify("listmount", mountinfo.sys_listmount, "the instance's mounts below a mount or the "
           "caller's root, in id order (LISTMOUNT_REVERSE too)"),
    denied("swapon"), denied("swapoff"), trace("acct", acct.sys_acct, "the instance's accounting file: an acct_v3 record per "
          "ended process, written at its last thread's exit stop, which the host reports while "
          "accounting is on (its times from the host)", PARTIAL),
    notify("reboot", klog.sys_reboot, "the instance is the machine: restart, halt and power-off end "
           "it, CAD_ON/CAD_OFF set its Ctrl-Alt-Del flag (/proc/sys/kernel/ctrl-alt-del); "
           "kexec and suspend EINVAL"),
    notify("settimeofday", clock.sys_settimeofday, "the instance's wall clock and timezone "
           "(CAP_SYS_TIME); the host's clock is never set"),
    notify("adjtimex", clock.sys_adjtimex, "the instance's NTP state (from the host's at first "
           "use), ADJ_SETOFFSET and leap seconds move the instance's clock; the discipline does "
           "not change its rate", PARTIAL),
    notify("clock_adjtime", clock.sys_clock_adjtime, "like adjtimex for CLOCK_REALTIME", PARTIAL),
    notify("clock_settime", clock.sys_clock_settime, "CLOCK_REALTIME: the instance's wall clock "
           "(CAP_SYS_TIME); absolute timers already armed are not moved", PARTIAL),
    denied("init_module"), denied("finit_module"),
    denied("delete_module"), denied("kexec_load"), denied("kexec_file_load"),
    denied("iopl"), denied("ioperm"), denied("quotactl"),
    notify("syslog", klog.sys_syslog, "the instance's own kernel log, empty (lxsub logs nothing "
           "there; never the host's); Linux's CAP_SYSLOG and argument checks, its console level"),
    denied("quotactl_fd"), denied("bpf"),
    notify("vhangup", ioctl.sys_vhangup, "CAP_SYS_TTY_CONFIG; without a controlling terminal "
           "nothing to do; a pty is hung up by the host's TIOCVHANGUP, which needs the host's "
           "CAP_SYS_ADMIN (else EPERM)", PARTIAL),
    denied("perf_event_open", errno.EACCES),
    notify("fanotify_init", fanotify.sys_fanotify_init, "groups kept by the provider (a host group "
           "needs the host's CAP_SYS_ADMIN); CAP_SYS_ADMIN inside; the descriptor is a stream socket "
           "the provider writes event records to; no FID/pidfd/mount-id reporting (EINVAL)", PARTIAL),
    notify("fanotify_mark", fanotify.sys_fanotify_mark, "inode, mount and filesystem marks (the "
           "last two by host device); FAN_OPEN/OPEN_EXEC/OPEN_PERM from the opens and execs the "
           "provider serves, FAN_ACCESS/MODIFY/CLOSE_* of inode marks from the host's inotify (pid: "
           "the inode's last opener); FAN_ACCESS_PERM stops the opener's reads by an extra filter "
           "(not on the ptrace platform); a read shorter than a record is cut, not EINVAL", PARTIAL),
    denied("modify_ldt", errno.EPERM), denied("lookup_dcookie"),
    *(notify(n, inotify.sys_inotify_init1, "the host's inotify instance, made in the provider "
             "and counted per user against the instance's fs.inotify.max_user_instances (EMFILE)")
      for n in ("inotify_init", "inotify_init1")),
    notify("inotify_add_watch", inotify.sys_inotify_add_watch, "path resolved in the instance; the "
           "watch is the host inode's, added through the caller's inotify descriptor"),
    # -- the key retention service (keyrings(7)), the instance's own
    notify("add_key", keys.sys_add_key, "types user, logon, keyring, big_key; others ENODEV"),
    notify("request_key", keys.sys_request_key, "no /sbin/request-key upcall: a key not found "
           "is ENOKEY (with callout info a negative key is left for 60 s, as when the upcall "
           "fails)", PARTIAL),
    # -- Linux security modules: none but "capability" in the instance
    notify("lsm_list_modules", lsm.sys_lsm_list_modules, "capability only (LSM_ID_CAPABILITY): "
           "the host's modules guard the provider, not the instance"),
    notify("lsm_get_self_attr", lsm.sys_lsm_get_self_attr, "checked like Linux; no module keeps "
           "process attributes: EOPNOTSUPP"),
    notify("lsm_set_self_attr", lsm.sys_lsm_set_self_attr, "checked like Linux; no module takes "
           "process attributes: EOPNOTSUPP"),
    notify("keyctl", keys.sys_keyctl, "instantiation by an upcall's authority (EPERM), "
           "DH/public-key operations, RESTRICT_KEYRING and WATCH_KEY (EOPNOTSUPP) aside",
           PARTIAL),
]

BY_NR: dict[int, Syscall] = {}
for _row in ROWS:
    if _row.nr in BY_NR:
        raise ValueError(f"syscall {_row.name} listed twice")
    BY_NR[_row.nr] = _row

# Why each call lxsub leaves unimplemented answers ENOSYS, as Linux does.
# arch/x86/entry/syscalls/syscall_64.tbl lists these numbers with no entry
# point (sys_ni_syscall): never implemented for x86_64, or removed.
_NI_64 = "no x86_64 entry point in Linux (syscall_64.tbl): ENOSYS there too"
_ENOSYS_WHY = {
    "uselib": "obsolete (libc5's loader, a.out only); x86_64 Linux has it only with CONFIG_USELIB, "
              "off by default, and ENOSYS otherwise",
    "_sysctl": "removed in Linux 5.5 (/proc/sys replaces it): ENOSYS there too",
    **{n: "removed in Linux 2.6 (module loading is init_module): ENOSYS there too"
       for n in ("create_module", "get_kernel_syms", "query_module")},
    "nfsservctl": "removed in Linux 3.1 (nfsd is configured through its file system): ENOSYS there too",
    **{n: _NI_64 for n in ("getpmsg", "putpmsg", "afs_syscall", "tuxcall", "security", "vserver",
                           "epoll_ctl_old", "epoll_wait_old")},
    **{n: _NI_64 + "; 64-bit programs set their TLS with arch_prctl"
       for n in ("set_thread_area", "get_thread_area")},
    **{n: "added in Linux 6.17, after the release lxsub reports (LINUX_RELEASE): ENOSYS as there"
       for n in ("file_getattr", "file_setattr")},
}
for _nr, _name in NAMES.items():
    BY_NR.setdefault(_nr, unimplemented(_name, _ENOSYS_WHY.get(_name, "")))


def traced_by_provider(nr: int) -> bool:
    """Whether a trace stop for this call may be the provider's own: its
    filter traces it (its row or one of its argument rules), or notifies
    it (a platform without seccomp notifications traces those rows, and
    USER_NOTIF outranks a program's TRACE anyway). A trace stop for any
    other call comes from a filter of the program's own
    (SECCOMP_RET_TRACE, kernel/ptrace.py). A call the provider stops only
    for some arguments counts as its own whatever they are."""
    row = BY_NR.get(nr)
    if row is None:
        return True                    # beyond the table: the provider answers ENOSYS
    ours = (bpf.RET_TRACE, bpf.RET_USER_NOTIF)
    return row.via in (TRACE, NOTIFY) or any(a in ours for rule in row.rules for a in _actions(rule.action))


def _actions(action: bpf.Action) -> list[int]:
    """Every action a rule may end in, through nested rules."""
    if isinstance(action, int):
        return [action]
    return [a for rule in action.rules for a in _actions(rule.action)] + [action.default]


def seccomp_program() -> bytes:
    actions = {nr: row.action() for nr, row in BY_NR.items()}
    return bpf.build_filter(actions, bpf.RET_USER_NOTIF)


# -- docs/SYSCALLS.md -------------------------------------------------------

_LEVELS = (FULL, PARTIAL, UNIMPLEMENTED, DENIED)
_VIAS = (NATIVE, NOTIFY, TRACE, ERRNO)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _note(row: Syscall) -> str:
    note = row.note
    if row.via == ERRNO:
        name = errno.errorcode.get(row.err, str(row.err))
        note = f"returns {name}" + (f"; {note}" if note else "")
    return note


def markdown() -> str:
    """The text of docs/SYSCALLS.md, made from BY_NR (deterministic)."""
    rows = [BY_NR[nr] for nr in sorted(BY_NR)]
    out = [
        "# Syscall table",
        "",
        "Generated from `src/lxsub/kernel/table.py` by "
        "`python3 -m lxsub.kernel.table --write`; do not edit by hand.",
        "",
        "Every x86_64 system call has one row. **via** says how the call reaches lxsub: "
        "`native` — the host kernel runs it untouched; `notify` — a seccomp user-notify "
        "event, answered by the provider; `trace` — a ptrace stop, where the provider "
        "rewrites registers; `errno` — the seccomp filter answers at once with an error. "
        "Calls with argument rules take another path for some argument values (see the "
        "note). **level** is how complete the support is: `full`, `partial`, "
        "`unimplemented` (the provider answers ENOSYS) or `denied` (refused on purpose). "
        "Calls from other ABIs (i386 `int 0x80`, x32) get ENOSYS.",
        "",
        "## Summary",
        "",
        "| level | " + " | ".join(_VIAS) + " | total |",
        "|---|" + "---:|" * (len(_VIAS) + 1),
    ]
    for level in _LEVELS:
        counts = [sum(1 for r in rows if r.level == level and r.via == v) for v in _VIAS]
        out.append(f"| {level} | " + " | ".join(map(str, counts)) + f" | {sum(counts)} |")
    totals = [sum(1 for r in rows if r.via == v) for v in _VIAS]
    out.append("| **total** | " + " | ".join(map(str, totals)) + f" | {len(rows)} |")
    out += ["", "## Calls", "", "| nr | name | via | level | note |", "|---:|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r.nr} | `{r.name}` | {r.via} | {r.level} | {_cell(_note(r))} |")
    return "\n".join(out) + "\n"


def default_output() -> Path:
    return Path(__file__).resolve().parents[3] / "docs" / "SYSCALLS.md"


def main(argv: list[str] | None = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python3 -m lxsub.kernel.table",
                                 description="Print or write docs/SYSCALLS.md.")
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--markdown", action="store_true", help="print the page to stdout")
    group.add_argument("--write", action="store_true", help="write the page to a file")
    ap.add_argument("--output", type=Path, help="with --write: where (default docs/SYSCALLS.md)")
    args = ap.parse_args(argv)
    text = markdown()
    if args.markdown:
        import sys
        sys.stdout.write(text)
        return 0
    path = args.output or default_output()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
