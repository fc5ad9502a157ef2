"""/proc/<pid>/ns: the instance's namespaces, as a container's root sees them.

An instance is one set of namespaces of its own (its PID space, its host
and domain names, its mounts, its IPC keys...); its processes may make
UTS, IPC and PID namespaces of their own (kernel/syscalls/nsproxy.py).
Each /proc/<pid>/ns/<type> reads as `type:[inode]`: the instance's inode
of the type, or that of the process's own UTS, IPC or PID namespace.
Opening one gives a namespace file (nsfs) whose ioctl(2)s answer as
Linux's ns_ioctl (fs/nsfs.c) does inside a container: every namespace is
owned by the instance's user namespace, whose own owner and parent are
outside it (EPERM), as is the parent of its PID namespace; a PID
namespace a program made has the one it was made in as parent; the other
types have no parent (EINVAL). Nothing of the host's namespaces is
handed out.
"""

from __future__ import annotations

import errno
import os
import stat as st
from typing import TYPE_CHECKING

from lxsub.abi.sched import (CLONE_NEWCGROUP, CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWTIME,
                              CLONE_NEWUSER, CLONE_NEWUTS)
from lxsub.kernel.task import active_pid_ns, children_pid_ns, ipc_of, ns_within, pid_in, tid_in, uts_of
from lxsub.kernel.vfs.pseudo import File, Link

if TYPE_CHECKING:
    from lxsub.kernel.call import Call

# include/uapi/linux/nsfs.h: _IO(NSIO, 0x1..0x4), NSIO 0xb7
NS_GET_USERNS, NS_GET_PARENT, NS_GET_NSTYPE, NS_GET_OWNER_UID = 0xB701, 0xB702, 0xB703, 0xB704
# _IOR(NSIO, 0x6..0x9, int): a pid between a PID namespace's numbers and the caller's
NS_GET_PID_FROM_PIDNS, NS_GET_TGID_FROM_PIDNS = 0x8004B706, 0x8004B707
NS_GET_PID_IN_PIDNS, NS_GET_TGID_IN_PIDNS = 0x8004B708, 0x8004B709
_PID_REQUESTS = (NS_GET_PID_FROM_PIDNS, NS_GET_TGID_FROM_PIDNS, NS_GET_PID_IN_PIDNS, NS_GET_TGID_IN_PIDNS)
REQUESTS = (NS_GET_USERNS, NS_GET_PARENT, NS_GET_NSTYPE, NS_GET_OWNER_UID, *_PID_REQUESTS)

# name: (type, inode). The instance is the root of each of its namespaces:
# the inodes Linux gives its initial ones (include/linux/proc_ns.h), and
# the next free ones for the mount and network namespaces.
TYPES = {
    "cgroup": (CLONE_NEWCGROUP, 0xEFFFFFFB), "ipc": (CLONE_NEWIPC, 0xEFFFFFFF),
    "mnt": (CLONE_NEWNS, 0xF0000000), "net": (CLONE_NEWNET, 0xF0000001),
    "pid": (CLONE_NEWPID, 0xEFFFFFFC), "pid_for_children": (CLONE_NEWPID, 0xEFFFFFFC),
    "time": (CLONE_NEWTIME, 0xEFFFFFFA), "time_for_children": (CLONE_NEWTIME, 0xEFFFFFFA),
    "user": (CLONE_NEWUSER, 0xEFFFFFFD), "uts": (CLONE_NEWUTS, 0xEFFFFFFE),
}
_NAME_OF_TYPE = {"pid_for_children": "pid", "time_for_children": "time"}
# The types of which an instance has several: a task's namespace of each
# (None: the instance's own), by link name.
_OBJECT_OF = {"uts": uts_of, "ipc": ipc_of,
              "pid": lambda inst, task: active_pid_ns(task),
              "pid_for_children": lambda inst, task: children_pid_ns(task) if task is not None else None}
OVERFLOW_UID = 65534     # /proc/sys/kernel/overflowuid: an owner not mapped inside


class NsFile(File):
    """An open namespace (what a /proc/<pid>/ns link opens); `obj` is the
    namespace where there can be several (UtsInfo, IpcNamespace)."""

    def __init__(self, fs, name: str, obj: object = None) -> None:
        super().__init__(f"/.ns/{name}", lambda t: b"")
        self.mode = st.S_IFREG | 0o444
        self.fs = fs
        self.name = name
        self.kind, self.inode = TYPES[name]
        self.obj = obj
        if obj is not None:
            self.inode = obj.inum
        self.ino = self.inode          # fstat's st_ino is the namespace's, as nsfs's

    def ioctl(self, c: "Call", cmd: int, fd: int) -> object:
        if cmd == NS_GET_NSTYPE:
            return self.kind
        if cmd == NS_GET_USERNS:
            if self.kind == CLONE_NEWUSER:
                raise OSError(errno.EPERM, "the owner is outside the instance")
            return open_namespace(self.fs, "user")
        if cmd == NS_GET_PARENT:
            if self.kind == CLONE_NEWPID and self.obj is not None:
                return self._pid_ns_parent(c)
            if self.kind in (CLONE_NEWUSER, CLONE_NEWPID):
                raise OSError(errno.EPERM, "the parent is outside the instance")
            raise OSError(errno.EINVAL, "not a hierarchical namespace")
        if cmd in _PID_REQUESTS:
            return self._translate_pid(c, cmd, c.int(2))
        if cmd == NS_GET_OWNER_UID:
            if self.kind != CLONE_NEWUSER:
                raise OSError(errno.EINVAL, "not a user namespace")
            c.write(c.ptr(2), OVERFLOW_UID.to_bytes(4, "little"))
            return 0
        return super().ioctl(c, cmd, fd)

    def _translate_pid(self, c: "Call", cmd: int, nr: int) -> int:
        """fs/nsfs.c: the pid (or thread group id) of the task numbered nr
        in this PID namespace as the caller sees it (*_FROM_PIDNS), or of
        the one nr names for the caller as this namespace sees it
        (*_IN_PIDNS); ESRCH for no such task or one not seen there."""
        if self.kind != CLONE_NEWPID:
            raise OSError(errno.EINVAL, "not a PID namespace")
        mine, pids = active_pid_ns(c.task), c.inst.pids
        if cmd in (NS_GET_PID_IN_PIDNS, NS_GET_TGID_IN_PIDNS):
            task, into = pids.task_in(mine, nr), self.obj
        else:
            task, into = pids.task_in(self.obj, nr), mine
        if task is None:
            raise OSError(errno.ESRCH, "no such task")
        tgid = cmd in (NS_GET_TGID_FROM_PIDNS, NS_GET_TGID_IN_PIDNS)
        seen = pid_in(task.process, into) if tgid else tid_in(task, into)
        if not seen:
            raise OSError(errno.ESRCH, "not in that namespace")
        return seen

    def _pid_ns_parent(self, c: "Call") -> object:
        """pidns_get_parent: the parent of a PID namespace a program made,
        if the caller's own namespace is it or above it (EPERM otherwise)."""
        from lxsub.kernel.call import NewFd
        parent = self.obj.parent
        if not ns_within(parent, active_pid_ns(c.task)):
            raise OSError(errno.EPERM, "the parent is outside the caller's PID namespace")
        return NewFd(self.fs.open_pseudo(NsFile(self.fs, "pid", parent)), True)


def open_namespace(fs, name: str):
    """A NewFd of the namespace file for `name`, O_RDONLY | O_CLOEXEC
    (open_related_ns)."""
    from lxsub.kernel.call import NewFd
    return NewFd(fs.open_pseudo(NsFile(fs, name)), True)


class NsLink(Link):
    """/proc/<pid>/ns/<name>: reads as `name:[inode]`, opens the namespace."""

    def __init__(self, path: str, fs, name: str, check, task_of) -> None:
        super().__init__(path, lambda t: check(t) or self._text())
        self.fs = fs
        self.name = name
        self.check = check
        self.task_of = task_of

    def _file(self) -> NsFile:
        kind = _NAME_OF_TYPE.get(self.name, self.name)
        object_of = _OBJECT_OF.get(self.name)
        obj = object_of(self.fs.inst, self.task_of()) if object_of is not None else None
        return NsFile(self.fs, kind, obj)

    def _text(self) -> str:
        f = self._file()
        return f"{f.name}:[{f.inode}]"

    def open_target(self, inst, caller):
        self.check(caller.task if caller is not None else None)
        return inst.vfs.node_or_anon(self.fs.open_pseudo(self._file()))


def ns_entries(fs, base: str, check, task_of=lambda: None) -> dict:
    """The links of a /proc/<pid>/ns directory; `check(task)` raises unless
    the task may inspect the process (PTRACE_MODE_READ, proc_ns_get_link);
    `task_of()` is the process's task (None: /init)."""
    return {name: NsLink(f"{base}/{name}", fs, name, check, task_of) for name in sorted(TYPES)}


def namespace_of_fd(inst, fd: int) -> "NsFile | None":
    """The namespace a provider-side descriptor is open on, or None."""
    try:
        node = inst.vfs.node_for_host_fd(fd, os.fstat(fd))
    except OSError:
        return None
    e = node.obj if node is not None else None
    return e if isinstance(e, NsFile) else None
