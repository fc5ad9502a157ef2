"""Tasks, processes and the instance's PID space.

Each pico thread is a `Task`; each thread group a `Process`. Both carry a
virtual id from the instance's own PID space, in which PID 1 is `/init`:
the provider itself, which starts the user's commands and, as host child
subreaper, inherits and reaps orphans.
"""

from __future__ import annotations

import errno
import itertools
import os
from dataclasses import dataclass, field

from lxsub.kernel.creds import Creds
from lxsub.kernel.vfs.caller import Caller, FsContext

PID_MAX = 4194304


@dataclass(eq=False)
class Process:
    pid: int                   # virtual
    host_pid: int
    parent: "Process | None"
    exe: str = "/init"
    comm: str = "init"
    threads: dict[int, "Task"] = field(default_factory=dict)   # host tid -> Task
    children: set["Process"] = field(default_factory=set)
    exited: bool = False
    dumpable: int = 1
    # /proc/<pid>/oom_score_adj and the floor below which only
    # CAP_SYS_RESOURCE may go (Linux's signal->oom_score_adj{,_min}; both
    # inherited at fork).
    oom_score_adj: int = 0
    oom_score_adj_min: int = 0
    image: tuple[int, int] | None = None   # the program file it runs (kernel/vfs/images.py)
    exit_ruid: int = 0         # its real uid when its last thread exited (waitid, SIGCHLD)
    exit_creds: "Creds | None" = None   # its last thread's, as a zombie's /proc/<pid> shows them
    # prctl(2) PR_SET_CHILD_SUBREAPER (also set on the host process, which
    # the host's reparenting follows); not inherited by fork.
    child_subreaper: bool = False
    # It has the extra filter that stops recvmsg/recvmmsg (SO_PASSCRED,
    # kernel/syscalls/net.py); inherited at fork and kept across exec.
    creds_filter: bool = False
    # It has the extra filter that stops the read calls (FAN_ACCESS_PERM,
    # kernel/fanotify.py); inherited at fork and kept across exec.
    access_filter: bool = False
    # It has the extra filter that stops the socket calls, splice and
    # sendfile (it holds a fanotify group, kernel/fanotify.py); inherited
    # at fork and kept across exec.
    group_filter: bool = False
    # It has the extra filter of a time namespace's clock calls
    # (kernel/timens.py); inherited at fork and kept across exec.
    timens_filter: bool = False
    # The auxiliary vector a dynamic program's exec patched (kernel/exec/
    # mapping.py): /proc/<pid>/auxv; None: the host's is right.
    auxv: bytes | None = None
    # The PID namespace below the instance's it is in (pid_namespaces(7);
    # None: the instance's own) and its numbers in each namespace from the
    # instance's child down to that one (struct pid's numbers[1..level]):
    # `pid` is its number at level 0.
    pid_ns: "PidNamespace | None" = None
    ns_pids: tuple[int, ...] = ()
    _pidfd: int = -1
    _memfd: int = -1

    def is_init(self) -> bool:
        return self.pid == 1

    def pidfd(self) -> int:
        """A host pidfd for the process, kept while it lives (pidfd_getfd needs one)."""
        if self._pidfd < 0:
            from lxsub.platform import libc
            self._pidfd = libc.pidfd_open(self.host_pid)
        return self._pidfd

    def memfd(self) -> int:
        """/proc/<pid>/mem, open while the process keeps its address space
        (reading through it is one pread; reopened after an exec)."""
        if self._memfd < 0:
            self._memfd = os.open(f"/proc/{self.host_pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        return self._memfd

    def forget_memory(self) -> None:
        if self._memfd >= 0:
            os.close(self._memfd)
            self._memfd = -1

    def close_pidfd(self) -> None:
        self.forget_memory()
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1


@dataclass(eq=False)
class Task(Caller):
    """A program's thread; as a Caller, the one whose system call is served."""
    tid: int                   # virtual
    host_tid: int
    process: Process
    creds: Creds
    fs: FsContext
    # Set while an execve the provider started is in flight.
    exec_state: object | None = None
    # (nr, args, NewFd): a descriptor opened for a call whose answer a
    # signal kept from the caller, waiting for the call's restart (dispatch).
    lost_fd: tuple | None = None
    # What the Linux program set, not the host's: every pico process runs
    # with the host's no_new_privs and the provider's filter
    # (prctl(2) PR_SET_NO_NEW_PRIVS, seccomp(2)); both are inherited by
    # fork and clone and kept across execve, as Linux does.
    no_new_privs: bool = False
    seccomp_mode: int = 0
    seccomp_filters: int = 0
    # The Landlock domain the thread restricted itself to, as the helper
    # that does the provider's work for it in the same domain
    # (platform/landlock.py); None: not restricted. Inherited like the above.
    landlock: object = None
    # The UTS namespace (host and domain names) and the IPC namespace (SysV
    # objects, POSIX message queues) the task is in: None is the instance's
    # own; unshare/clone(CLONE_NEWUTS, CLONE_NEWIPC) give one of its own,
    # setns(2) joins another (uts_of, ipc_of). Inherited by clone.
    uts: object = None
    ipc: object = None
    # The time namespace the task is in and the one its children will be
    # in (kernel/timens.py); None: the instance's own.
    timens: object = None
    timens_for_children: object = None
    # The CLONE_NEWUTS/CLONE_NEWIPC of a clone of this task in flight: its
    # child gets new namespaces (the host runs the clone without the flags).
    clone_new_ns: int = 0
    # The signal mask before the rt_sigtimedwait it is in (Linux's
    # real_blocked): a signal blocked there is never discarded as ignored.
    real_blocked: int = 0
    # Its numbers in the namespaces below the instance's (Process.ns_pids)
    # and the PID namespace its children go into (pid_for_children; None:
    # its process's own): unshare(CLONE_NEWPID) and setns(2) change it.
    ns_tids: tuple[int, ...] = ()
    child_pid_ns: "PidNamespace | None" = None

    @property
    def task(self) -> "Task":
        return self

    def copy_fd(self, fd: int) -> int:
        """A provider-side duplicate of the thread's descriptor fd (EBADF if
        none): pidfd_getfd(2) on its process, or its fallbacks
        (platform/hostfd.py)."""
        if fd < 0:
            raise OSError(errno.EBADF, "bad file descriptor")
        from lxsub.platform import hostfd
        try:
            return hostfd.take_fd(self.host_pid, self.host_tid, fd, self.process.pidfd)
        except OSError as e:
            if e.errno == errno.ESRCH:
                raise
            raise OSError(errno.EBADF, "bad file descriptor") from None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def host_pid(self) -> int:
        return self.process.host_pid


def uts_of(inst, task) -> object:
    """The UTS namespace of a task (None: the provider's own work): its
    own if it made one, else the instance's."""
    return task.uts if task is not None and task.uts is not None else inst.uts


def ipc_of(inst, task) -> object:
    """The IPC namespace of a task (kernel/ipc.py IpcNamespace; None: the
    provider's own work): its own if it made or joined one, else the
    instance's."""
    return task.ipc if task is not None and task.ipc is not None else inst.ipc


def mnt_of(inst, task) -> object:
    """The mount namespace of a task (vfs/mount.py MountTable): its fs
    context's, else the instance's first one."""
    return inst.vfs.mounts_of(task)


# Inode numbers of the namespaces programs make (after the instance's own
# mount and network namespaces', kernel/fs/procfs/ns.py).
_NS_INUMS = itertools.count(0xF0000002)


def new_ns_inum() -> int:
    """The /proc/<pid>/ns inode number of a namespace just made (ns_alloc_inum)."""
    return next(_NS_INUMS)


class PidNamespace:
    """A PID namespace a program made (clone(2) or unshare(2) with
    CLONE_NEWPID, kernel/pid_namespace.c), below the instance's own (which
    is None wherever a namespace is named: PidSpace keeps its numbers). Its
    first process is its init, pid 1; the processes in it and below it have
    a number here besides their other levels' (Process.ns_pids)."""

    def __init__(self, parent: "PidNamespace | None") -> None:
        self.parent = parent
        self.level = parent.level + 1 if parent is not None else 1
        self.inum = new_ns_inum()
        self.processes: dict[int, Process] = {}
        self.tasks: dict[int, Task] = {}
        self.init: Process | None = None
        # Its init has exited: the rest were killed and no process may
        # enter any more (PIDNS_ADDING cleared, fork ENOMEM).
        self.ended = False
        self._next = 1

    def allocate(self) -> int:
        for _ in range(PID_MAX):
            nr = self._next
            self._next = nr + 1 if nr + 1 < PID_MAX else 2
            if nr not in self.tasks and nr not in self.processes:
                return nr
        raise OSError(errno.EAGAIN, "no free pid")

    def set_last(self, nr: int) -> None:
        self._next = nr + 1 if nr + 1 < PID_MAX else 2

    def last(self) -> int:
        return self._next - 1 if self._next > 1 else PID_MAX - 1

    def open_to_new(self) -> bool:
        """Whether a process may still enter it: no namespace on its
        chain has lost its init (alloc_pid's PIDNS_ADDING)."""
        return not any(level.ended for level in namespaces_of(self))


def ns_within(ns: "PidNamespace | None", outer: "PidNamespace | None") -> bool:
    """Whether ns is outer or a namespace below it (None: the instance's)."""
    if outer is None:
        return True
    while ns is not None and ns.level >= outer.level:
        if ns is outer:
            return True
        ns = ns.parent
    return False


def active_pid_ns(task: "Task | None") -> "PidNamespace | None":
    """The PID namespace a task sees pids in (task_active_pid_ns); None:
    the instance's (also for the provider's own work)."""
    return task.process.pid_ns if task is not None else None


def is_pid_ns_init(proc: Process) -> bool:
    """Whether proc is the init of a PID namespace a program made: the
    reaper of that namespace's orphans, which no signal at its default
    action reaches from inside (SIGNAL_UNKILLABLE)."""
    return proc.pid_ns is not None and proc.pid_ns.init is proc


def children_pid_ns(task: Task) -> "PidNamespace | None":
    """Where a task's new children go (/proc/<pid>/ns/pid_for_children)."""
    return task.child_pid_ns if task.child_pid_ns is not None else task.process.pid_ns


def pid_in(proc: Process, ns: "PidNamespace | None") -> int:
    """proc's pid as seen from ns (pid_nr_ns): 0 when it is not in ns or below."""
    if ns is None:
        return proc.pid
    return proc.ns_pids[ns.level - 1] if ns_within(proc.pid_ns, ns) else 0


def tid_in(task: Task, ns: "PidNamespace | None") -> int:
    """A thread's id as seen from ns: 0 when it is not in ns or below."""
    if ns is None:
        return task.tid
    return task.ns_tids[ns.level - 1] if ns_within(task.process.pid_ns, ns) else 0


def namespaces_of(ns: "PidNamespace | None") -> list["PidNamespace"]:
    """ns and its ancestors below the instance's, outermost first."""
    chain = []
    while ns is not None:
        chain.append(ns)
        ns = ns.parent
    return chain[::-1]


class PidSpace:
    """Virtual ids <-> host ids for one instance, and the numbers of the PID
    namespaces below its own (PidNamespace): every pid a call takes or
    gives is looked up or shown in the caller's namespace (process_in,
    task_in, pid_in, tid_in)."""

    def __init__(self) -> None:
        self._next = 2
        self.tasks_by_host: dict[int, Task] = {}
        self.tasks_by_vid: dict[int, Task] = {}
        self.processes_by_vid: dict[int, Process] = {}
        self.processes_by_host: dict[int, Process] = {}
        # Exited but not yet waited for: the parent's wait4 still names them.
        self.zombies_by_host: dict[int, Process] = {}
        # Host ids seen as process groups or sessions that are no instance
        # process (the terminal's session, a leader that has exited).
        self._alias_h2v: dict[int, int] = {}
        self._alias_v2h: dict[int, int] = {}

    def allocate(self) -> int:
        for _ in range(PID_MAX):
            vid = self._next
            self._next = vid + 1 if vid + 1 < PID_MAX else 2
            if (vid not in self.tasks_by_vid and vid not in self.processes_by_vid
                    and not self._alias_in_use(vid)):
                return vid
        raise OSError(11, "no free pid")   # EAGAIN

    def set_last(self, vid: int) -> None:
        """/proc/sys/kernel/ns_last_pid: the next pid is looked for from vid + 1."""
        self._next = vid + 1 if 2 <= vid + 1 < PID_MAX else 2

    def _alias_in_use(self, vid: int) -> bool:
        """Whether vid, the pid of a process that is gone, still names a
        process group or session of the instance's (Linux frees a pid when
        no task uses it as its pid, process group or session: the alias
        is dropped then, and the pid may be given again)."""
        host = self._alias_v2h.get(vid)
        if host is None:
            return False
        for proc in list(self.processes_by_host.values()):
            try:
                if host in (os.getpgid(proc.host_pid), os.getsid(proc.host_pid)):
                    return True
            except OSError:
                continue
        self._drop_alias(host)
        return False

    def numbers_below(self, ns: "PidNamespace | None") -> tuple[int, ...]:
        """A new task's numbers in ns and the namespaces above it (below
        the instance's), outermost first (alloc_pid)."""
        return tuple(level.allocate() for level in namespaces_of(ns))

    def add_process(self, proc: Process) -> None:
        self.processes_by_vid[proc.pid] = proc
        self.processes_by_host[proc.host_pid] = proc
        self._drop_alias(proc.host_pid)
        for ns, nr in zip(namespaces_of(proc.pid_ns), proc.ns_pids):
            ns.processes[nr] = proc
            if ns.init is None:
                ns.init = proc             # its first process (pid 1 there)

    def process_in(self, ns: "PidNamespace | None", nr: int) -> Process | None:
        """The process (or zombie) that has pid nr in ns (find_task_by_pid_ns)."""
        if ns is None:
            return self.processes_by_vid.get(nr)
        return ns.processes.get(nr)

    def task_in(self, ns: "PidNamespace | None", nr: int) -> Task | None:
        """The thread that has tid nr in ns."""
        if ns is None:
            return self.tasks_by_vid.get(nr)
        return ns.tasks.get(nr)

    def host_pid_in(self, ns: "PidNamespace | None", nr: int) -> int | None:
        proc = self.process_in(ns, nr)
        return proc.host_pid if proc is not None else None

    def visible(self, ns: "PidNamespace | None") -> list[Process]:
        """The processes a caller in ns can name (it and those below it)."""
        procs = self.processes_by_vid if ns is None else ns.processes
        return list(procs.values())

    def _drop_alias(self, host: int) -> None:
        v = self._alias_h2v.pop(host, None)
        if v is not None:
            self._alias_v2h.pop(v, None)

    def add_task(self, task: Task) -> None:
        self.tasks_by_host[task.host_tid] = task
        self.tasks_by_vid[task.tid] = task
        task.process.threads[task.host_tid] = task
        for ns, nr in zip(namespaces_of(task.process.pid_ns), task.ns_tids):
            ns.tasks[nr] = task

    def remove_task(self, task: Task) -> None:
        self.tasks_by_host.pop(task.host_tid, None)
        if self.tasks_by_vid.get(task.tid) is task:
            del self.tasks_by_vid[task.tid]
        task.process.threads.pop(task.host_tid, None)
        for ns, nr in zip(namespaces_of(task.process.pid_ns), task.ns_tids):
            if ns.tasks.get(nr) is task:
                del ns.tasks[nr]

    def forget_process(self, proc: Process) -> None:
        self.zombies_by_host.pop(proc.host_pid, None)
        if self.processes_by_vid.get(proc.pid) is proc:
            del self.processes_by_vid[proc.pid]
        if self.processes_by_host.get(proc.host_pid) is proc:
            del self.processes_by_host[proc.host_pid]
        for ns, nr in zip(namespaces_of(proc.pid_ns), proc.ns_pids):
            if ns.processes.get(nr) is proc:
                del ns.processes[nr]
        # Its pid may live on as a process group or session id.
        self._alias_h2v[proc.host_pid] = proc.pid
        self._alias_v2h[proc.pid] = proc.host_pid

    # -- translation ------------------------------------------------------

    def vpid_of_host(self, host_pid: int) -> int | None:
        proc = self.processes_by_host.get(host_pid)
        if proc is not None:
            return proc.pid
        task = self.tasks_by_host.get(host_pid)
        return task.tid if task is not None else None

    def vpid_or_zero(self, host_pid: int) -> int:
        """A host pid the host kernel recorded (SysV IPC's last sender,
        creator...) as the instance sees it: its process, or the pid it had
        here; 0 for a process outside the instance, as Linux shows a pid
        from outside the reader's PID namespace."""
        v = self.vpid_of_host(host_pid)
        return v if v is not None else self._alias_h2v.get(host_pid, 0)

    def host_of_vpid(self, vpid: int) -> int | None:
        proc = self.processes_by_vid.get(vpid)
        if proc is not None:
            return proc.host_pid
        return None

    def group_to_virtual(self, host: int) -> int:
        """A host process group or session id as the instance sees it."""
        if host <= 0:
            return host
        v = self.vpid_of_host(host)
        if v is not None:
            return v
        v = self._alias_h2v.get(host)
        if v is None:
            v = self.allocate()
            self._alias_h2v[host] = v
            self._alias_v2h[v] = host
        return v

    def group_to_host(self, vid: int) -> int | None:
        if vid <= 0:
            return vid
        host = self.host_of_vpid(vid)
        return host if host is not None else self._alias_v2h.get(vid)

    def group_in(self, host: int, ns: "PidNamespace | None") -> int:
        """A host process group or session id as a caller in ns sees it:
        its leader's pid there, 0 for a leader outside ns (pid_vnr)."""
        if ns is None:
            return self.group_to_virtual(host)
        if host <= 0:
            return host
        leader = self.processes_by_host.get(host) or self.zombies_by_host.get(host)
        return pid_in(leader, ns) if leader is not None else 0

    def group_host_in(self, ns: "PidNamespace | None", vid: int) -> int | None:
        """The host id of the process group or session vid names in ns."""
        if ns is None:
            return self.group_to_host(vid)
        return vid if vid <= 0 else self.host_pid_in(ns, vid)

    def host_of_vtid(self, vtid: int) -> int | None:
        task = self.tasks_by_vid.get(vtid)
        return task.host_tid if task is not None else None
