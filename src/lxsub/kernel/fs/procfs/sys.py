"""/proc/sys: the instance's own kernel names (hostname, domainname,
release), pid numbers, boot id, log levels and the tunables it sets for
itself (kernel/sysctl.py); the host's tunables where the instance shares
the host's kernel (ProcFs mixes SysTree in)."""

from __future__ import annotations

import errno
import os
import uuid

from lxsub.kernel import keys
from lxsub.kernel.syscalls.klog import kernel_log
from lxsub.kernel.sysctl import KNOBS, sysctls_of
from lxsub.kernel.task import PID_MAX, active_pid_ns, ipc_of, uts_of
from lxsub.kernel.vfs.pseudo import File, HostDir, HostFile, StaticDir


# /proc/sys/kernel files that are the host's and mean the same inside.
_SYS_KERNEL_HOST = ("ngroups_max", "cap_last_cap", "threads-max", "overflowuid", "overflowgid",
                    "shmall", "msgmax", "msgmnb", "sem",
                    "randomize_va_space", "sched_child_runs_first", "pty/max", "pty/nr",
                    "random/entropy_avail", "random/poolsize", "random/write_wakeup_threshold",
                    "random/urandom_min_reseed_secs", "tainted", "core_pattern")
_SYS_FS = ("file-max", "file-nr", "nr_open", "pipe-max-size", "pipe-user-pages-hard",
           "pipe-user-pages-soft", "aio-max-nr", "aio-nr", "dentry-state", "inode-nr",
           "inode-state", "overflowuid", "overflowgid", "lease-break-time", "leases-enable",
           "inotify", "epoll", "mqueue", "protected_symlinks", "protected_hardlinks",
           "protected_fifos", "protected_regular", "suid_dumpable")


class SysTree:
    """The /proc/sys tree of a ProcFs."""

    def _sys_tree(self) -> StaticDir:
        inst = self.inst
        sys_ = StaticDir("/sys")
        kernel = sys_.add(StaticDir("/sys/kernel"))

        def set_uts(attr: str):
            def write(t, data: bytes) -> None:
                from lxsub.kernel.creds import CAP_SYS_ADMIN
                if t is not None and t.creds.capable(CAP_SYS_ADMIN):
                    # proc_dostring: the string ends at a newline or a NUL
                    uts_of(inst, t).set_name(attr, data.split(b"\n", 1)[0][:64])
            return write
        kernel.add(File("/sys/kernel/hostname", lambda t: uts_of(inst, t).name_bytes("hostname") + b"\n",
                        write=set_uts("hostname"), mode=0o444))
        kernel.add(File("/sys/kernel/domainname", lambda t: uts_of(inst, t).name_bytes("domainname") + b"\n",
                        write=set_uts("domainname"), mode=0o444))
        kernel.add(File("/sys/kernel/osrelease", lambda t: inst.uts.release.encode() + b"\n"))
        kernel.add(File("/sys/kernel/ostype", lambda t: b"Linux\n"))
        kernel.add(File("/sys/kernel/version", lambda t: os.uname().version.encode() + b"\n"))
        kernel.add(File("/sys/kernel/pid_max", lambda t: f"{PID_MAX}\n".encode()))
        kernel.add(File("/sys/kernel/ns_last_pid", lambda t: f"{self._last_pid_in(active_pid_ns(t))}\n".encode(),
                        # 0666 (pid_ns_ctl_table): anyone opens it, the write checks the writer
                        write=lambda t, data: _set_last_pid(inst, t, data), mode=0o666))
        log = kernel_log(inst)
        kernel.add(File("/sys/kernel/printk", lambda t: log.printk(),
                        write=lambda t, data: log.set_printk(data), mode=0o444))
        for kind in ("shm", "sem", "msg"):
            kernel.add(File(f"/sys/kernel/{kind}_next_id", lambda t, k=kind: b"%d\n" % ipc_of(inst, t).sysv.next_id[k],
                            write=lambda t, data, k=kind: _set_next_id(inst, t, k, data), mode=0o444))
        own = self._own_tunables()
        for name, entry in own.items():
            if name.startswith("kernel/"):
                kernel.add(entry)
        kernel.add(keys.sysctl_dir(inst))
        yama = kernel.add(StaticDir("/sys/kernel/yama"))
        yama.add(File("/sys/kernel/yama/ptrace_scope", lambda t: b"%d\n" % inst.ptrace.scope,
                      write=lambda t, data: _set_ptrace_scope(inst, t, data), mode=0o644))
        random = kernel.add(StaticDir("/sys/kernel/random"))
        random.add(File("/sys/kernel/random/boot_id", lambda t: self.boot_id.encode() + b"\n"))
        random.add(File("/sys/kernel/random/uuid", lambda t: str(uuid.uuid4()).encode() + b"\n"))
        for name in _SYS_KERNEL_HOST:
            host = "/proc/sys/kernel/" + name
            if not os.path.exists(host) or not os.stat(host).st_mode & 0o004:
                continue
            parent = kernel
            if "/" in name:
                sub = name.split("/")[0]
                parent = kernel.entries.get(sub) or kernel.add(StaticDir("/sys/kernel/" + sub))
            parent.add(HostFile("/sys/kernel/" + name, host))
        sys_.add(HostDir("/sys/fs", "/proc/sys/fs", keep=lambda n: n in _SYS_FS,
                         own={n.split("/", 1)[1]: e for n, e in own.items() if n.startswith("fs/")}))
        for sub in ("vm", "net"):
            if os.path.isdir("/proc/sys/" + sub):
                sys_.add(HostDir("/sys/" + sub, "/proc/sys/" + sub, views=_SYSCTL_VIEWS))
        return sys_

    def _own_tunables(self) -> dict:
        """The files of the tunables the instance sets for itself, by name."""
        sysctls = sysctls_of(self.inst)
        return {name: File("/sys/" + name, lambda t, n=name: sysctls.read(n),
                           write=lambda t, data, n=name: sysctls.write(t, n, data), mode=0o444)
                for name in KNOBS}


def _checkpoint_restore_value(t, data: bytes, low: int, high: int) -> int:
    """The integer written to a checkpoint/restore tunable: the writer
    needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE (EPERM,
    checkpoint_restore_ns_capable), the value low..high (EINVAL)."""
    from lxsub.kernel.creds import CAP_CHECKPOINT_RESTORE, CAP_SYS_ADMIN
    if t is not None and not (t.creds.capable(CAP_SYS_ADMIN) or t.creds.capable(CAP_CHECKPOINT_RESTORE)):
        raise OSError(errno.EPERM, "CAP_CHECKPOINT_RESTORE needed")
    try:
        value = int(data.split()[0]) if data.split() else None
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise OSError(errno.EINVAL, "out of range")
    return value


def _set_last_pid(inst, t, data: bytes) -> None:
    """kernel/pid_namespace.c pid_ns_ctl_handler: the pid the writer's
    namespace allocated last, so its next process gets the one after it."""
    value = _checkpoint_restore_value(t, data, 0, PID_MAX - 1)
    ns = active_pid_ns(t)
    (inst.pids if ns is None else ns).set_last(value)


def _set_next_id(inst, t, kind: str, data: bytes) -> None:
    """ipc/ipc_sysctl.c {shm,sem,msg}_next_id: the id the next object of
    the kind gets (-1: the next free one), used once (kernel/ipc.py)."""
    ipc_of(inst, t).sysv.next_id[kind] = _checkpoint_restore_value(t, data, -1, 0x7FFFFFFF)


def _set_ptrace_scope(inst, t, data: bytes) -> None:
    """yama_dointvec_minmax: CAP_SYS_PTRACE to change it, 0..3, and 3
    (no attach) is for good (Documentation/admin-guide/LSM/Yama.rst)."""
    from lxsub.kernel.creds import CAP_SYS_PTRACE
    if t is not None and not t.creds.capable(CAP_SYS_PTRACE):
        raise OSError(errno.EPERM, "CAP_SYS_PTRACE needed")
    try:
        value = int(data.strip() or b"x")
    except ValueError:
        raise OSError(errno.EINVAL, "not a number") from None
    if not 0 <= value <= 3:
        raise OSError(errno.EINVAL, "out of range")
    if inst.ptrace.scope == 3:
        raise OSError(errno.EPERM, "ptrace_scope 3 cannot be changed")
    inst.ptrace.scope = value


def _ping_group_range(host: bytes) -> bytes:
    """net.ipv4.ping_group_range in the instance's groups: the host's range
    is in host gids, and every pico process has the host user's, so either
    every Linux group may open ICMP datagram sockets or none (icmp(7))."""
    try:
        low, high = (int(x) for x in host.split())
    except ValueError:
        return host
    return b"0\t2147483647\n" if low <= os.getgid() <= high else b"1\t0\n"


_SYSCTL_VIEWS = {"/proc/sys/net/ipv4/ping_group_range": _ping_group_range}
