"""The files of /proc/<pid> (and /proc/<pid>/task/<tid>): stat, status,
cmdline, maps, fd, fdinfo, children, comm, oom_score_adj, net; mounts and
mountinfo (ProcFs mixes MountFiles in, ProcessDir TaskFiles)."""

from __future__ import annotations

import errno
import os
import stat as st
from typing import TYPE_CHECKING

from lxsub.kernel import fanotify
from lxsub.kernel.creds import CAP_SYS_RESOURCE, Creds
from lxsub.kernel.vfs.caller import Caller
from lxsub.kernel.vfs.node import Node
from lxsub.kernel.vfs.pseudo import Entry, File, HostFile, Link, read_host
from lxsub.platform import hostfd

if TYPE_CHECKING:
    from lxsub.kernel.fs.procfs import ProcFs
    from lxsub.kernel.task import Process, Task
    from lxsub.kernel.vfs.mount import Mount, MountTable

_ESCAPES = str.maketrans({" ": "\\040", "\t": "\\011", "\n": "\\012", "\\": "\\134"})


class MountFiles:
    """/proc/<pid>/mounts and mountinfo: the mount table of the process's
    namespace (`table`; None: the instance's first), for a ProcFs."""

    def mounts_text(self, table: "MountTable | None" = None) -> bytes:
        lines = [f"{_esc(m.source)} {_esc(m.path)} {m.fs.fstype} {m.options} 0 0"
                 for m in (table or self.inst.vfs.mounts).mounts]
        return ("\n".join(lines) + "\n").encode()

    def mountinfo_text(self, table: "MountTable | None" = None) -> bytes:
        lines = []
        for m in (table or self.inst.vfs.mounts).mounts:
            parent = m.parent.id if m.parent is not None else 1
            dev = _mount_dev(m)
            opts = m.options.split(",")
            mount_opts = ",".join(o for o in opts if o in _PER_MOUNT) or "rw"
            super_opts = "ro" if "ro" in opts else "rw"
            extra = [o for o in opts if o not in _PER_MOUNT and o not in ("rw", "ro")]
            if extra:
                super_opts += "," + ",".join(extra)
            lines.append(f"{m.id} {parent} {os.major(dev)}:{os.minor(dev)} {_esc(_mount_root(m))} "
                         f"{_esc(m.path)} {mount_opts}{_propagation(m)} - "
                         f"{m.fs.fstype} {_esc(m.source)} {super_opts}")
        return ("\n".join(lines) + "\n").encode()


_PER_MOUNT = ("rw", "ro", "nosuid", "nodev", "noexec", "relatime", "noatime", "nodiratime",
              "strictatime", "sync", "dirsync", "mand")


def _propagation(m: "Mount") -> str:
    """mountinfo's optional fields (show_mountinfo): shared:N, master:N,
    unbindable, each after a space."""
    out = ""
    if m.group:
        out += f" shared:{m.group}"
    if m.master:
        out += f" master:{m.master}"
    if m.unbindable:
        out += " unbindable"
    return out


def mounts_of_process(inst, proc: "Process") -> "MountTable":
    """The mount namespace a process is in (its main thread's)."""
    return inst.vfs.mounts_of(_main_thread(proc))


def _esc(s: str) -> str:
    return s.translate(_ESCAPES)


def _mount_root(m: "Mount") -> str:
    """Which directory of its file system a mount shows ("/" but for bind
    mounts of a subdirectory)."""
    node, fs = m.root_node, m.fs
    if node is None:
        return "/"
    if node.obj is not None and isinstance(getattr(node.obj, "path", None), str):
        return node.obj.path
    host_root = fs.host_root
    if node.fd is None or not host_root:
        return "/"
    try:
        host = os.readlink(f"/proc/self/fd/{node.fd}")
    except OSError:
        return "/"
    if host.startswith(host_root.rstrip("/") + "/"):
        return "/" + host[len(host_root):].lstrip("/")
    return "/"


def _mount_dev(m: "Mount") -> int:
    if m.fs.dev:
        return m.fs.dev
    try:
        # The device is no one's view: asked as the provider itself.
        return m.fs.getattr(m.root_node, Caller(Creds())).dev
    except (OSError, AttributeError, AssertionError):
        return 0


def _main_thread(proc: "Process"):
    return proc.threads.get(proc.host_pid) or next(iter(proc.threads.values()), None)


def _need(task):
    if task is None:
        raise OSError(errno.ENOENT, "process is gone")
    return task


def mapped_name(vfs, roots, detached, host: str, dev: int | None) -> str | None:
    """The instance path of a mapped host file `host` on device `dev`
    (roots, detached: the Vfs's host_roots() and detached_mounts()); None
    if no mount shows it."""
    m = detached.get(dev) if dev is not None else None
    if m is not None:         # the path is below that file system's root
        return m.path.rstrip("/") + host if host != "/" else m.path
    return vfs.host_to_vpath(roots, host)


class TaskFiles:
    """The contents of a ProcessDir's files."""

    def _children(self) -> bytes:
        # Children are the process's (lxsub keeps no per-thread parent): the
        # main thread lists them, as Linux does when the main thread forked.
        if self.thread is not None and self.thread.tid != self.proc.pid:
            return b""
        kids = sorted(c.pid for c in list(self.proc.children) if not c.exited)
        return "".join(f"{k} " for k in kids).encode()

    def _set_comm(self, t, data: bytes) -> None:
        self.proc.comm = data.decode(errors="replace").rstrip("\n")[:15]

    def _set_oom_score_adj(self, t, data: bytes) -> None:
        """fs/proc/base.c oom_score_adj_write and __set_oom_adj: a number in
        [-1000, 1000]; going below the process's floor needs
        CAP_SYS_RESOURCE, which also moves the floor.  The host gets the
        value where it allows (a host user may only raise its own)."""
        try:
            value = int(data.strip() or b"x", 10)
        except ValueError:
            raise OSError(errno.EINVAL, "not a number") from None
        if not -1000 <= value <= 1000:
            raise OSError(errno.EINVAL, "out of range")
        proc = self.proc
        privileged = t is not None and t.creds.capable(CAP_SYS_RESOURCE)
        if value < proc.oom_score_adj_min and not privileged:
            raise OSError(errno.EACCES, "permission denied")
        if privileged:
            proc.oom_score_adj_min = value
        proc.oom_score_adj = value
        try:
            with open(self.hp + "/oom_score_adj", "wb") as f:
                f.write(b"%d" % value)
        except OSError:
            pass  # kept inside: the host refuses to lower an unprivileged user's value

    def _cmdline(self) -> bytes:
        return read_host(self.hp + "/cmdline")

    def _stat(self, t: "Task | None") -> bytes:
        raw = read_host(self.hp + "/stat").decode()
        _head, _, rest = raw.rpartition(")")
        f = rest.split()
        pids = self.fs.inst.pids
        proc = self.proc
        f[1] = str(proc.parent.pid if proc.parent else 0)
        f[2] = str(pids.group_to_virtual(int(f[2])))
        f[3] = str(pids.group_to_virtual(int(f[3])))
        tpgid = int(f[5])
        f[5] = str(pids.group_to_virtual(tpgid) if tpgid > 0 else tpgid)
        f[19] = str(max(0, int(f[19]) - self.fs.start_jiffies))
        if self._is_caller(t):
            f[0] = "R"
        vid = self.thread.tid if self.thread else proc.pid
        return f"{vid} ({proc.comm}) {' '.join(f)}\n".encode()

    def _status(self, t: "Task | None") -> bytes:
        proc, thread = self.proc, self.thread
        task = thread or _main_thread(proc)
        c = task.creds if task else proc.exit_creds     # a zombie's, as it exited
        pids = self.fs.inst.pids
        vid = thread.tid if thread else proc.pid
        out = []
        for line in read_host(self.hp + "/status").decode().splitlines():
            key, _, val = line.partition(":")
            if key == "Name":
                val = "\t" + proc.comm
            elif key == "Tgid":
                val = f"\t{proc.pid}"
            elif key == "Pid":
                val = f"\t{vid}"
            elif key == "NStgid":
                # Its pid in each namespace from /proc's (the instance's) down.
                val = "".join(f"\t{n}" for n in (proc.pid, *proc.ns_pids))
            elif key == "NSpid":
                val = "".join(f"\t{n}" for n in ((thread.tid, *thread.ns_tids) if thread else
                                                  (proc.pid, *proc.ns_pids)))
            elif key == "PPid":
                val = f"\t{proc.parent.pid if proc.parent else 0}"
            elif key == "TracerPid":
                # A Linux tracer's, not the provider (the host's tracer of all).
                val = f"\t{self.fs.inst.ptrace.tracer_pid(task) if task else 0}"
            elif key == "Ngid":
                val = "\t0"
            elif key in ("NSpgid", "NSsid"):
                val = f"\t{pids.group_to_virtual(int(val.split()[-1]))}"
            elif key == "Uid" and c:
                val = f"\t{c.ruid}\t{c.euid}\t{c.suid}\t{c.fsuid}"
            elif key == "Gid" and c:
                val = f"\t{c.rgid}\t{c.egid}\t{c.sgid}\t{c.fsgid}"
            elif key == "Groups" and c:
                val = "\t" + " ".join(str(g) for g in c.groups) + " "
            elif key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb") and c:
                v = {"CapInh": c.cap_inheritable, "CapPrm": c.cap_permitted,
                     "CapEff": c.cap_effective, "CapBnd": c.cap_bset & _cap_bound(),
                     "CapAmb": c.cap_ambient}[key]
                val = f"\t{v:016x}"
            elif key in ("Seccomp", "Seccomp_filters", "NoNewPrivs"):
                # The program's own, not the host's (kernel/syscalls/process.py).
                val = "\t%d" % ({"Seccomp": task.seccomp_mode, "Seccomp_filters":
                                  task.seccomp_filters, "NoNewPrivs": int(task.no_new_privs)}
                                 [key] if task else 0)
            elif key == "Umask" and task:
                val = f"\t{task.fs.umask:04o}"
            elif key == "State" and self._is_caller(t):
                val = "\tR (running)"
            out.append(f"{key}:{val}")
        return ("\n".join(out) + "\n").encode()

    def _maps(self, name: str) -> bytes:
        """Mapped files named by their instance paths (the distro's under /,
        host files under their DrvFs mount, tmpfs files under theirs)."""
        vfs = self.fs.inst.vfs
        table = mounts_of_process(self.fs.inst, self.proc)
        roots = vfs.host_roots(table)
        detached = vfs.detached_mounts(roots, table)
        out = []
        for line in read_host(f"{self.hp}/{name}").decode(errors="surrogateescape").splitlines():
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].startswith("/"):
                path = parts[5]
                deleted = path.endswith(" (deleted)")
                plain = path[: -len(" (deleted)")] if deleted else path
                major, _, minor = parts[3].partition(":")
                dev = os.makedev(int(major, 16), int(minor, 16)) if minor else None
                v = mapped_name(vfs, roots, detached, plain, dev)
                if v is not None:
                    line = line[: len(line) - len(path)] + v + (" (deleted)" if deleted else "")
            out.append(line)
        return ("\n".join(out) + "\n").encode(errors="surrogateescape")

    def _host_fds(self) -> list[str]:
        try:
            names = os.listdir(self.hp + "/fd")
        except OSError:
            return []
        host_pid = self.proc.host_pid
        return sorted((n for n in names if not hostfd.is_hidden(host_pid, int(n))), key=int)

    def _fds(self) -> dict[str, Entry]:
        return {n: FdLink(f"{self.path}/fd/{n}", self.proc, int(n), self.fs, self._owner)
                for n in self._host_fds()}

    def _fdinfos(self) -> dict[str, Entry]:
        return {n: File(f"{self.path}/fdinfo/{n}", lambda t, n=n: self._fdinfo(int(n)))
                for n in self._host_fds()}

    def _fdinfo(self, fd: int) -> bytes:
        """The host's fdinfo with ids rewritten: the mount the file is on in
        the instance, the virtual pid of a pidfd."""
        inst = self.fs.inst
        text = read_host(f"/proc/{self.proc.host_pid}/fdinfo/{fd}").decode(errors="replace")
        mnt_id = None
        try:
            local = os.open(f"/proc/{self.proc.host_pid}/fd/{fd}", os.O_PATH | os.O_CLOEXEC)
        except OSError:
            local = -1
        if local >= 0:
            try:
                mnt_id = inst.vfs.mount_id_of_host_fd(local, mounts_of_process(inst, self.proc))
            finally:
                os.close(local)
        out = []
        for line in text.splitlines():
            key, _, val = line.partition(":")
            if key == "mnt_id" and mnt_id is not None:
                val = f"\t{mnt_id}"
            elif key in ("Pid", "NSpid"):
                host = int(val.split()[-1]) if val.split() else 0
                vid = inst.pids.vpid_of_host(host) if host > 0 else host
                val = f"\t{vid if vid is not None else -1}"
            out.append(f"{key}:{val}")
        return ("\n".join(out) + "\n").encode()


def _net_entries(path: str) -> dict[str, Entry]:
    """/proc/<pid>/net: the interface tables of the host's network, which
    the instance shares (the socket tables are left out: they list every
    host process's sockets)."""
    out: dict[str, Entry] = {}
    for name in ("dev", "if_inet6", "route", "ipv6_route", "netstat", "snmp", "snmp6",
                 "sockstat", "sockstat6", "dev_mcast", "igmp", "igmp6", "arp"):
        if os.path.exists("/proc/net/" + name):
            out[name] = HostFile(f"{path}/{name}", "/proc/self/net/" + name)
    return out


_cap_bnd: int | None = None


def _cap_bound() -> int:
    """Every capability the kernel knows: CapBnd as /proc/sys/kernel/cap_last_cap says."""
    global _cap_bnd
    if _cap_bnd is None:
        try:
            last = int(read_host("/proc/sys/kernel/cap_last_cap"))
        except (OSError, ValueError):
            last = 40
        _cap_bnd = (1 << (last + 1)) - 1
    return _cap_bnd


def _open_fd_target(proc: "Process", fd: int) -> int:
    """A provider descriptor of the file behind a process's descriptor fd.
    For a device, its very open file (pidfd_getfd(2)): a device opened
    through a node of its own is known by that (OpenedDevices)."""
    local = os.open(f"/proc/{proc.host_pid}/fd/{fd}", os.O_PATH | os.O_CLOEXEC)
    kind = st.S_IFMT(os.fstat(local).st_mode)
    if kind not in (st.S_IFCHR, st.S_IFBLK):
        return local
    try:
        same = hostfd.take_fd(proc.host_pid, proc.host_pid, fd, proc.pidfd)
    except OSError:
        return local
    os.close(local)
    return same


class FdLink(Link):
    """/proc/<pid>/fd/N: reads as the file's path, opens the file itself."""

    def __init__(self, path: str, proc: "Process", fd: int, fs: ProcFs, owner=None) -> None:
        super().__init__(path, self._target)
        self.proc = proc
        self.fd = fd
        self.fs = fs
        self.owner_of = owner

    def _target(self, t) -> str:
        inst = self.fs.inst
        host = os.readlink(f"/proc/{self.proc.host_pid}/fd/{self.fd}")
        if not host.startswith("/"):
            return fanotify.link_name(inst, host)   # pipe:[...], socket:[...], anon_inode:...
        deleted = host.endswith(" (deleted)")
        def by_path() -> str:
            plain = host[: -len(" (deleted)")] if deleted else host
            v = inst.vfs.host_to_vpath(inst.vfs.host_roots(mounts_of_process(inst, self.proc)), plain)
            return host if v is None else v + (" (deleted)" if deleted else "")
        try:
            local = _open_fd_target(self.proc, self.fd)
        except OSError:
            return by_path()
        try:
            node = inst.vfs.node_for_host_fd(local, os.fstat(local),
                                             table=mounts_of_process(inst, self.proc))
            if node is None:
                return by_path()
            path = inst.vfs.vpath_of(node)
            # A pseudo file's host object (a memfd: an open /proc file, a
            # loop device) is unlinked on the host, not in the instance.
            if deleted and node.obj is None and not path.endswith(" (deleted)"):
                path += " (deleted)"
            return path
        except OSError:
            return by_path()
        finally:
            os.close(local)

    def open_target(self, inst) -> Node:
        try:
            fd = _open_fd_target(self.proc, self.fd)
        except OSError:
            raise OSError(errno.ENOENT, "no such file descriptor") from None
        return inst.vfs.node_or_anon(fd, mounts_of_process(inst, self.proc))
