"""A Linux instance: one provider owning a PID space, a mount table and every
pico process started in it.

The provider is the instance's PID 1 (`/init`): the user's commands are its
children, and as host child subreaper it inherits and reaps orphans. It
implements the platform's `Kernel` interface: clone/exec/exit events keep
the process table, trapped syscalls go to the dispatcher.
"""

from __future__ import annotations

import errno
import os
import signal
import weakref
from dataclasses import dataclass
from typing import Callable

from lxsub import LINUX_RELEASE
from lxsub.abi.auxvec import AT_EXECFN, AT_SECURE
from lxsub.abi.prctl import PR_SET_CHILD_SUBREAPER
from lxsub.abi.ptrace import PTRACE_O_TRACEEXIT
from lxsub.abi.sched import (CLONE_CHILD_SETTID, CLONE_FS, CLONE_NEWIPC, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUTS,
                              CLONE_PARENT, CLONE_PARENT_SETTID, CLONE_THREAD, CLONE_VFORK, CLONE_VM)
from lxsub.abi.seccomp import SECCOMP_MODE_STRICT, SYS_SECCOMP
from lxsub.abi.signal import SI_MESGQ, SI_TKILL, SI_USER
from lxsub.abi.sysno import NUMBERS, SYS_FORK, SYS_VFORK
from lxsub.config import AutomountSection, DistroConfig
from lxsub.kernel import dispatch, fanotify, keys, table, timekeeping, timens
from lxsub.kernel.acct import accounting_of
from lxsub.kernel.syscalls import net
from lxsub.kernel.ipc import IpcNamespace
from lxsub.kernel.creds import Creds
from lxsub.kernel.exec import mapping
from lxsub.kernel.exec.plan import ExecPlan
from lxsub.kernel.fs.drvfs import AutomountSettings
from lxsub.kernel.fs.sqlitestore import volfs_store
from lxsub.kernel.fs.volfs import VolFs
from lxsub.kernel.interop import HostPrograms
from lxsub.kernel.log import Log
from lxsub.kernel.ptrace import Ptrace
from lxsub.kernel.sysctl import sysctls_of
from lxsub.kernel.task import (FsContext, PidNamespace, PidSpace, Process, Task, active_pid_ns, children_pid_ns,
                               is_pid_ns_init, new_ns_inum, pid_in, tid_in, uts_of)
from lxsub.kernel.vfs import pseudo
from lxsub.kernel.vfs.caller import Caller
from lxsub.kernel.vfs.vfs import Vfs
from lxsub.platform import launcher, libc, memory, ptrace
from lxsub.platform.engine import Engine
from lxsub.platform.notify import Listener, Notification
from lxsub.platform.ptrace import Regs
from lxsub.platform.unixns import UnixNamespace

_SYS_EXIT_GROUP = NUMBERS["exit_group"]


@dataclass
class UtsInfo:
    """A UTS namespace: the instance's own, or one a process made
    (CLONE_NEWUTS) starting as a copy of its creator's."""
    hostname: str = "localhost"
    domainname: str = "(none)"
    release: str = LINUX_RELEASE
    inum: int = 0xEFFFFFFE      # /proc/<pid>/ns/uts: PROC_UTS_INIT_INO for the instance's

    def copy(self) -> "UtsInfo":
        return UtsInfo(self.hostname, self.domainname, self.release, new_ns_inum())

    def set_name(self, attr: str, raw: bytes) -> None:
        """sethostname/setdomainname's bytes as the kernel keeps them: in a
        zeroed buffer, so the name ends at the first NUL; any other byte
        stays (surrogateescape, as every path and environment string)."""
        setattr(self, attr, raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape"))

    def name_bytes(self, attr: str) -> bytes:
        return getattr(self, attr).encode("utf-8", "surrogateescape")


def _drvfs_settings(automount: AutomountSection) -> AutomountSettings:
    """[automount] of lx.conf as DrvFs takes it: the host's / at <root>host."""
    return AutomountSettings(enabled=automount.enabled,
                             root=automount.root.rstrip("/") + "/host",
                             options=automount.options)


class Instance:
    def __init__(self, name: str, rootfs: str, config: DistroConfig | None = None,
                 log: Log | None = None, default_user: str | None = None,
                 meta_db: str | None = None) -> None:
        self.name = name
        self.rootfs = os.path.realpath(rootfs)
        self.config = config or DistroConfig()
        self.log = log or Log(None)
        self._scratch: str | None = None
        # Host doors: who may use DrvFs and interop; lxsub's own storage,
        # which DrvFs never shows (kernel/doors.py, kernel/fs/sealed.py).
        from lxsub.kernel.doors import make_doors
        from lxsub.kernel.fs.sealed import Storage
        self.drvfs_door, self.interop_door = make_doors(self, default_user)
        self.storage = Storage(self)
        self.uts = UtsInfo(self.config.network.hostname or name)
        # Its IPC namespace (System V objects, POSIX message queues), and
        # those its programs made (each freed with its last task).
        self.ipc = IpcNamespace()
        self.ipc_namespaces: weakref.WeakSet[IpcNamespace] = weakref.WeakSet()
        self.pids = PidSpace()
        self.volfs = VolFs(self.rootfs, volfs_store(meta_db, self.rootfs))
        self.vfs = Vfs(self.volfs, "rootfs")
        self.vfs.loops.host_pids = lambda: list(self.pids.processes_by_host)
        self.vfs.loops.log = self.log.warn
        self.init = Process(pid=1, host_pid=os.getpid(), parent=None)
        self.pids.add_process(self.init)
        self.engine = Engine(self)
        self.ptrace = Ptrace(self)     # Linux tracers inside the instance (kernel/ptrace.py)
        self.accounting = accounting_of(self)   # BSD process accounting (kernel/acct.py)
        # Orphans of the instance come to /init (us), as on Linux, not to the host's init.
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1)
        self.filter_prog = table.seccomp_program()
        self.unix = UnixNamespace()
        # Pico processes between fork and first exec: host pid -> the pipe
        # on which they report their seccomp listener.
        self.launches: dict[int, int] = {}
        # Processes whose exit someone waits for (a client's session leader).
        self.exit_watchers: dict[Process, Callable[[int], None]] = {}
        # A session's leading process getting Ctrl-Z: its client suspends too.
        self.stop_watchers: dict[Process, Callable[[int], None]] = {}
        self.host_programs = HostPrograms()    # interop's running host programs
        self._ending = False
        from lxsub.kernel.fs import mounts as default_mounts
        default_mounts.mount_defaults(self, _drvfs_settings(self.config.automount),
                                      tmp=self.config.automount.tmp)

    # -- starting processes -------------------------------------------------

    def root_context(self, cwd: str = "/") -> FsContext:
        # Paths are bytes in Linux: a --cd that is not UTF-8 arrives as a
        # surrogateescape string (lxsub/wire.py, wire_bytes).
        cwd_node = self.vfs.resolve(cwd.encode("utf-8", "surrogateescape"), Caller(Creds()))
        if not cwd_node.is_dir():
            cwd_node.release()
            raise OSError(errno.ENOTDIR, "not a directory")
        return FsContext(self.vfs.mounts.root_mount.root(), cwd_node)

    def spawn(self, path: bytes, argv: list[bytes], envp: list[bytes], creds: Creds,
              fs: FsContext, setup: launcher.ChildSetup) -> Process:
        """Start a command as a child of /init. `path` is an instance path
        already checked to be executable (see kernel/exec/plan.py)."""
        # The provider blocks SIGCHLD for its signalfd; the program must not inherit that.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, []) - {signal.SIGCHLD}
        host_pid, report = launcher.spawn(self.filter_prog, path, argv, envp, setup, mask)
        vpid = self.pids.allocate()
        proc = Process(vpid, host_pid, self.init, exe=path.decode(errors="replace"),
                       comm=os.path.basename(path.decode(errors="replace"))[:15])
        self.init.children.add(proc)
        self.pids.add_process(proc)
        task = Task(vpid, host_pid, proc, creds, fs.attach())
        self.pids.add_task(task)
        self.launches[host_pid] = report
        self.engine.known.add(host_pid)
        return proc

    def run(self, main: Process) -> int:
        """Serve the instance until `main` exits; then end it. Returns the
        wait status of `main` (the in-process way, e.g. an installer's)."""
        status: list[int] = []

        def main_exited(s: int) -> None:
            status.append(s)
            self.end()

        self.exit_watchers[main] = main_exited
        self.serve()
        return status[0]

    def serve(self) -> None:
        """Serve events until the instance has ended and every process is gone."""
        from lxsub.kernel import workers
        pool = workers.start(self)
        try:
            self.engine.run()
        finally:
            if pool is not None:
                pool.stop()
            self.cleanup()

    # -- Kernel interface: the platform's events ------------------------------

    def on_notification(self, listener: Listener, n: Notification) -> None:
        if pseudo.WRITES_PENDING:
            pseudo.apply_pending_writes()
        task = self.pids.tasks_by_host.get(n.pid)
        if task is None:
            # Not a thread of the instance, or one that has ended since
            # (its exit handled while a worker passed its call on).
            listener.reply_unless_gone(n.id, 0, -errno.ENOSYS)
            return
        dispatch.serve_notification(self, listener, task, n)

    def on_trace_stop(self, tid: int, regs: Regs) -> None:
        if pseudo.WRITES_PENDING:
            pseudo.apply_pending_writes()
        task = self.pids.tasks_by_host.get(tid)
        if task is None:
            self.engine.finish_syscall(tid, regs, -errno.ENOSYS)
            return
        report = self.launches.pop(tid, None)
        if report is not None:
            self._adopt_listener(tid, report)
        if not self._provider_traces(task, regs.orig_rax):
            self._own_filter_traced(tid, task, regs)
            return
        dispatch.serve_trace_stop(self, task, regs)

    @staticmethod
    def _provider_traces(task: Task, nr: int) -> bool:
        """Whether a filter of the provider's traces nr in this process:
        the instance's, or an extra one it may have been given
        (kernel/extra_filter.py)."""
        proc = task.process
        return (table.traced_by_provider(nr) or (proc.creds_filter and nr in net.CREDS_FILTER_TRACES)
                or (proc.access_filter and nr in fanotify.ACCESS_FILTER_TRACES)
                or (proc.group_filter and nr in fanotify.GROUP_FILTER_TRACES))

    def _own_filter_traced(self, tid: int, task: Task, regs: Regs) -> None:
        """SECCOMP_RET_TRACE from a filter of the program's own: a
        PTRACE_EVENT_SECCOMP stop for a Linux tracer that set
        PTRACE_O_TRACESECCOMP, else ENOSYS (seccomp(2))."""
        if not (self.ptrace.links and self.ptrace.on_seccomp(task)):
            self.engine.finish_syscall(tid, regs, -errno.ENOSYS)

    def _adopt_listener(self, tid: int, report: int) -> None:
        fd = launcher.take_listener(tid, report)
        if fd is not None:          # None: the platform answers without one
            self.engine.add_listener(fd)

    def on_clone(self, tid: int, child: int, event: int, regs: Regs) -> None:
        parent = self.pids.tasks_by_host.get(tid)
        if parent is None:
            self.engine.resume(tid)
            return
        flags = self._clone_flags(event, regs)
        task = self._new_task(parent, child, flags)
        ns = task.process.pid_ns
        if ns is not None and not ns.open_to_new():
            # A fork into a namespace whose init is gone: Linux fails it
            # (ENOMEM); the host made the child, which must not run there.
            os.kill(child, signal.SIGKILL)
        # The parent is told the child's id in its own namespace, the child
        # (CLONE_CHILD_SETTID) its id in its own (pid_vnr).
        vid = tid_in(task, active_pid_ns(parent))
        own_vid = tid_in(task, active_pid_ns(task))
        if not flags & CLONE_THREAD:
            # Forked before the instance's clock was set: its vDSO may be the host's.
            timekeeping.patch_new_image(self, child)
        # A CLONE_VM child (vfork) shares its parent's memory: and its time namespace.
        timens.on_fork(self, parent, task, bool(flags & (CLONE_THREAD | CLONE_VM)))
        self.log.syscall(parent.tid, f"clone event {event} flags={flags:#x} -> {task.tid} (host {child})")

        # A clone the provider let run with rewritten arguments has its own
        # exit work (dispatch._exit_hook): it runs after the pid is fixed.
        previous = self.engine.exit_hooks.get(tid)

        def fix_parent(ptid: int, r: Regs) -> None:
            if r.rax == child:
                r.rax = vid
                ptrace.set_regs(ptid, r)
            if previous is not None:
                previous(ptid, r)

        if flags & CLONE_PARENT_SETTID:
            # Now, while both are stopped: a thread that runs first may exit
            # and clear this same word (glibc's pd->tid, CLONE_CHILD_CLEARTID)
            # before its parent's syscall exit; writing it then would leave
            # pthread_join waiting for a thread that is gone.
            self._poke_tid(tid, regs.rdx, vid)
        settid = regs.r10 if flags & CLONE_CHILD_SETTID else 0
        self.engine.exit_hooks[tid] = fix_parent
        if self.ptrace.links:
            # A Linux tracer's clone event: the parent stays stopped (engine hold).
            self.ptrace.on_clone(parent, task, event, flags)
        self.engine.resume(tid)

        def before_start() -> None:
            if settid:
                self._poke_tid(child, settid, own_vid)
            if is_pid_ns_init(task.process) and task.tid == task.process.pid:
                self._make_host_reaper(task)
            if self.accounting.on:
                # Its parent may have forked before it was asked for exit stops.
                self.set_host_events(task)
            if self.ptrace.links:
                self.ptrace.child_first_stop(task)
        self.engine.task_known(child, before_start)

    def _make_host_reaper(self, task: Task) -> None:
        """A PID namespace's init reaps the orphans of its namespace
        (find_child_reaper): the host reparents them to it if it is a
        child subreaper there, which only the process itself can ask for,
        so the call runs inside it, at its first stop, before it runs."""
        from lxsub.platform.inject import SysCall

        def asked(result: int) -> None:
            if result != 0:
                self.log.warn(f"pid {task.pid}: its namespace's orphans go to /init ({result})")
        self.engine.inject(task.host_tid, SysCall(NUMBERS["prctl"], (PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)),
                           asked, lambda: None)

    def host_events(self, task: Task) -> int:
        """The stops beyond the provider's own the host must report for
        `task`: those its Linux tracer asked for (kernel/ptrace.py) and its
        exit while the instance accounts processes (kernel/acct.py)."""
        link = self.ptrace.link_of(task)
        events = link.host_events if link is not None else 0
        return events | (PTRACE_O_TRACEEXIT if self.accounting.on else 0)

    def set_host_events(self, task: Task) -> None:
        """Ask the host for host_events(task) now: `task` is stopped."""
        try:
            ptrace.set_options(task.host_tid, self.host_events(task))
        except OSError:
            pass                  # gone meanwhile

    def _clone_flags(self, event: int, regs: Regs) -> int:
        # The event says little: clone(2) with exit signal SIGCHLD and no
        # CLONE_VFORK reports PTRACE_EVENT_FORK too (kernel_clone), so only
        # fork(2) and vfork(2) themselves have fixed flags.
        if regs.orig_rax == SYS_FORK:
            return signal.SIGCHLD
        if regs.orig_rax == SYS_VFORK:
            return CLONE_VM | CLONE_VFORK | signal.SIGCHLD
        return regs.rdi

    def _poke_tid(self, tid: int, addr: int, value: int) -> None:
        try:
            memory.write(tid, addr, value.to_bytes(4, "little", signed=True))
        except OSError:
            pass

    def _new_task(self, parent: Task, host_tid: int, flags: int) -> Task:
        sysctls_of(self).flush_writes()     # a pid just written to ns_last_pid
        vid = self.pids.allocate()
        fs = parent.fs if flags & CLONE_FS else parent.fs.copy()
        if flags & CLONE_THREAD:
            proc = parent.process
            numbers = self.pids.numbers_below(proc.pid_ns)
        else:
            pp = parent.process.parent if flags & CLONE_PARENT else parent.process
            src = parent.process
            # copy_pid_ns: a new namespace below where its children go.
            pid_ns = children_pid_ns(parent)
            if parent.clone_new_ns & CLONE_NEWPID:
                pid_ns = PidNamespace(pid_ns)
            numbers = self.pids.numbers_below(pid_ns)
            proc = Process(vid, host_tid, pp, exe=src.exe, comm=src.comm, auxv=src.auxv,
                           oom_score_adj=src.oom_score_adj,
                           oom_score_adj_min=src.oom_score_adj_min, image=src.image,
                           creds_filter=src.creds_filter, access_filter=src.access_filter,
                           group_filter=src.group_filter,
                           timens_filter=src.timens_filter, pid_ns=pid_ns, ns_pids=numbers)
            self.vfs.images.started(proc.image)     # a fork runs its parent's image too
            if pp is not None:
                pp.children.add(proc)
            self.pids.add_process(proc)
        task = Task(vid, host_tid, proc, parent.creds.copy(), fs.attach(),
                    no_new_privs=parent.no_new_privs, seccomp_mode=parent.seccomp_mode,
                    seccomp_filters=parent.seccomp_filters, landlock=parent.landlock,
                    uts=uts_of(self, parent).copy() if parent.clone_new_ns & CLONE_NEWUTS else parent.uts,
                    ns_tids=numbers)
        self.enter_ipc(task, self.new_ipc() if parent.clone_new_ns & CLONE_NEWIPC else parent.ipc)
        if parent.clone_new_ns & CLONE_NEWNS:
            self.vfs.new_namespace(fs, new_ns_inum())      # fs is the child's own (no CLONE_FS)
        parent.clone_new_ns = 0
        keys.service(self).clone_creds(task.creds, bool(flags & CLONE_THREAD))
        self.pids.add_task(task)
        return task

    def on_exec(self, tid: int, former_tid: int) -> None:
        task = self.pids.tasks_by_host.get(former_tid) or self.pids.tasks_by_host.get(tid)
        if task is None:
            return
        proc = task.process
        former_vtid = task.tid
        if former_tid != tid:
            # A non-leader thread exec'd: it takes over the leader's host tid.
            leader = proc.threads.get(tid)
            if leader is not None and leader is not task:
                self._drop_task(leader)
            self.pids.remove_task(task)
            task.host_tid = tid
            task.tid = proc.pid
            task.ns_tids = proc.ns_pids
            self.pids.add_task(task)
        for other in list(proc.threads.values()):
            if other is not task:
                self._drop_task(other)
        dispatch.drop_lost_fd(task)
        timekeeping.patch_new_image(self, tid)    # a fresh vDSO reads the host's clocks
        timens.patch_if_shifted(task)
        plan = task.exec_state
        task.exec_state = None
        proc.auxv = None                 # the host's is right until a mapping patches it

        def tell_tracer() -> None:
            if self.ptrace.links:
                self.ptrace.on_exec(task, former_vtid)
        if isinstance(plan, ExecPlan):
            self._finish_exec(tid, task, plan, tell_tracer)
        else:
            tell_tracer()

    def _exec_creds(self, task: Task, plan: ExecPlan, auxv: mapping.StackAuxv | None) -> None:
        """The new program's credentials, dumpability and AT_SECURE (execve(2)).
        no_new_privs (the program's own) makes the set-ID bits not count."""
        if task.no_new_privs:
            secure = task.creds.after_exec(None, None)
        else:
            secure = task.creds.after_exec(plan.set_uid, plan.set_gid)
        keys.service(self).exec_creds(task.creds)
        c = task.creds
        # begin_new_exec: dumpable again unless the ids differ (suid_dumpable 0).
        task.process.dumpable = int(c.euid == c.ruid and c.egid == c.rgid)
        if secure:
            self._set_at_secure(task.host_tid, auxv)

    def _set_at_secure(self, tid: int, auxv: mapping.StackAuxv | None) -> None:
        """AT_SECURE = 1 in the new program's auxiliary vector, before its
        loader reads it: the host kernel set it from the host's ids."""
        try:
            if auxv is not None and auxv.set(tid, AT_SECURE, 1):
                return
        except OSError:
            pass
        # A program whose secure state cannot be set must not run with it unset.
        self.log.warn(f"tid {tid}: AT_SECURE not found on the new stack; killed")
        os.kill(tid, signal.SIGKILL)

    def _finish_exec(self, tid: int, task: Task, plan: ExecPlan, then: Callable[[], None]) -> None:
        """The new image's state; `then` once the program is in place (a
        dynamic one is mapped first, by calls injected into it)."""
        proc = task.process
        try:
            s = os.stat(f"/proc/{tid}/exe")
            same = (s.st_dev, s.st_ino) == plan.identity
        except OSError:
            same = False
        plan.close_loader()
        if not same:
            plan.close()
            # Another thread rewrote the path we placed in its memory: refuse
            # to let it run whatever it swapped in.
            self.log.warn(f"pid {proc.pid}: exec target changed under us; killed")
            os.kill(tid, signal.SIGKILL)
            return
        proc.forget_memory()        # the old address space is gone
        self.vfs.images.ended(proc.image)
        proc.image = plan.image
        self.vfs.images.started(proc.image)
        proc.exe = plan.exe
        proc.comm = plan.comm
        try:
            # The new stack (the stop is at the exec event, rsp at argc).
            auxv: mapping.StackAuxv | None = mapping.StackAuxv(tid, ptrace.get_regs(tid, Regs()).rsp)
        except OSError:
            auxv = None
        self._fix_execfn(tid, plan, auxv)
        self._exec_creds(task, plan, auxv)
        if plan.via_loader and auxv is None:
            plan.close()               # gone already, or the loader would run argv[0]
            os.kill(tid, signal.SIGKILL)
        elif plan.via_loader and auxv is not None:
            self._map_program(tid, task, plan, auxv, then)
        else:
            plan.close()
            then()

    def _map_program(self, tid: int, task: Task, plan: ExecPlan, auxv: mapping.StackAuxv,
                     then: Callable[[], None]) -> None:
        """Map a dynamic program into its new process as binfmt_elf would,
        with calls run inside it (one stop), and make the auxv describe it
        (the host kernel mapped only the loader it was given)."""
        assert plan.program is not None
        mapper = mapping.ProgramMapping(plan.program, f"/proc/{os.getpid()}/fd/{plan.program_fd}".encode(),
                                        mapping.randomizes(tid))
        try:
            task.process.auxv = mapper.patch_auxv(tid, auxv, plan.loader_entry)
        except OSError:
            plan.close()
            os.kill(tid, signal.SIGKILL)       # the loader would run argv[0]
            return

        # A Linux tracer finds the thread stopped at its exec with the
        # program in place: the run ends at a stop. Others go on without one.
        traced = self.ptrace.link_of(task) is not None

        def mapped(error: int) -> None:
            plan.close()
            if error:
                # Past exec's point of no return: the process cannot go on.
                self.log.warn(f"pid {task.process.pid}: cannot map {plan.exe}: "
                              f"{os.strerror(error)}; killed")
                os.kill(tid, signal.SIGKILL)
                return
            if traced:
                self.engine.exits_unreported.add(tid)
            then()
        self.engine.run_code(tid, mapper.steps(), mapped, gone=plan.close, stop_at_end=traced)

    def _fix_execfn(self, tid: int, plan: ExecPlan, auxv: mapping.StackAuxv | None) -> None:
        """getauxval(AT_EXECFN) names the program, not the provider's descriptor."""
        name = plan.exe.encode()
        at = auxv.get(AT_EXECFN) if auxv is not None else 0
        if not at or not plan.execfn_room or len(name) > plan.execfn_room:
            return
        try:
            memory.write(tid, at, name.ljust(plan.execfn_room + 1, b"\0"))
        except OSError:
            pass

    def on_exit(self, tid: int, status: int) -> None:
        task = self.pids.tasks_by_host.get(tid)
        if task is None:
            return
        proc = task.process
        self._drop_task(task)
        self.accounting.task_gone(task)
        if self.ptrace.links or self.ptrace.tracers:
            self.ptrace.on_exit(task, status, thread=task.tid != proc.pid)
        if proc.threads:
            return  # the process lives on in its other threads
        proc.exit_ruid = task.creds.ruid
        proc.exit_creds = task.creds
        # acct_process: before the children go to their new reaper, while
        # the host still has the process's times.
        self.accounting.process_ended(proc, status, task.creds.ruid, task.creds.rgid)
        self._process_exited(proc, status)

    def _drop_task(self, task: Task) -> None:
        dispatch.drop_lost_fd(task)
        self.pids.remove_task(task)
        task.fs.detach()
        self.enter_ipc(task, None)

    # -- IPC namespaces -------------------------------------------------------

    def new_ipc(self) -> IpcNamespace:
        """An empty IPC namespace (create_ipc_ns), ended with the instance
        if no task left it before."""
        ns = IpcNamespace(new_ns_inum())
        self.ipc_namespaces.add(ns)
        return ns

    def enter_ipc(self, task: Task, ns: IpcNamespace | None) -> None:
        """Move a task to an IPC namespace (None: the instance's own). The
        namespace it leaves is freed, every object in it removed, when that
        task was its last (put_ipc_ns)."""
        if ns is self.ipc:
            ns = None
        if ns is not None:
            ns.enter()
        old, task.ipc = task.ipc, ns
        if old is not None:
            old.leave()

    def _process_exited(self, proc: Process, status: int) -> None:
        proc.exited = True
        self.vfs.images.ended(proc.image)
        proc.image = None
        proc.close_pidfd()
        if proc.pid_ns is not None and proc.pid_ns.init is proc:
            self._end_pid_ns(proc.pid_ns)
        reaper = self._new_reaper(proc)
        for child in list(proc.children):
            child.parent = reaper
            reaper.children.add(child)
        proc.children.clear()
        report = self.launches.pop(proc.host_pid, None)
        if report is not None:
            os.close(report)
        self.stop_watchers.pop(proc, None)
        watcher = self.exit_watchers.pop(proc, None)
        if watcher is not None:
            watcher(status)
        if proc.parent is self.init or proc.parent is None:
            if proc.parent is not None:
                proc.parent.children.discard(proc)
            self.pids.forget_process(proc)
        else:
            self.pids.zombies_by_host[proc.host_pid] = proc

    @staticmethod
    def _end_pid_ns(ns: PidNamespace) -> None:
        """A PID namespace's init has exited (zap_pid_ns_processes): every
        other process in it and below it is killed, and none may enter."""
        ns.ended = True
        for other in list(ns.processes.values()):
            if other is not ns.init and not other.exited:
                try:
                    os.kill(other.host_pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def _new_reaper(self, proc: Process) -> Process:
        """Where an exiting process's children go (kernel/exit.c
        find_new_reaper): the nearest living ancestor that is a child
        subreaper or the init of its PID namespace, else /init. The host
        reparents the same way: the flag is set on the host process too
        (_make_host_reaper for a namespace's init)."""
        up = proc.parent
        while up is not None and up is not self.init:
            if (up.child_subreaper or is_pid_ns_init(up)) and not up.exited:
                return up
            up = up.parent
        return self.init

    def reaped(self, host_pid: int, ns: PidNamespace | None = None) -> int | None:
        """A parent's wait returned host_pid: forget it; return its pid in
        the waiter's namespace ns."""
        proc = self.pids.zombies_by_host.pop(host_pid, None)
        if proc is None:
            return self.pid_of_host(host_pid, ns)
        if proc.parent is not None:
            proc.parent.children.discard(proc)
        self.pids.forget_process(proc)
        return pid_in(proc, ns)

    def pid_of_host(self, host_pid: int, ns: PidNamespace | None = None) -> int | None:
        """A host pid as a caller in ns names it (None: none of the
        instance's processes; 0: one outside ns)."""
        proc = self.pids.processes_by_host.get(host_pid) or self.pids.zombies_by_host.get(host_pid)
        if proc is not None:
            return pid_in(proc, ns)
        task = self.pids.tasks_by_host.get(host_pid)
        return tid_in(task, ns) if task is not None else None

    def on_signal(self, tid: int, sig: int) -> int:
        if sig == signal.SIGSYS and self._strict_mode_violated(tid):
            return 0
        if self.ptrace.links:
            task = self.pids.tasks_by_host.get(tid)
            if task is not None and self.ptrace.link_of(task) is not None:
                # A Linux tracer's signal-delivery stop: it says what is delivered.
                self._translate_siginfo(tid, sig)
                self.ptrace.on_signal(task, sig)
                return 0
        if self._suspends_session(tid, sig):
            return 0
        self._translate_siginfo(tid, sig)
        return sig

    def on_syscall_stop(self, tid: int) -> None:
        self.ptrace.on_syscall_stop(tid)

    def on_group_stop(self, tid: int, sig: int) -> bool:
        task = self.pids.tasks_by_host.get(tid) if self.ptrace.links else None
        return task is not None and self.ptrace.on_group_stop(task, sig)

    def on_trace_event(self, tid: int, event: int) -> bool:
        if event == ptrace.EVENT_EXIT and self.accounting.on:
            self._account_exit_stop(tid)
        task = self.pids.tasks_by_host.get(tid) if self.ptrace.links else None
        return task is not None and self.ptrace.on_event(task, event)

    def _account_exit_stop(self, tid: int) -> None:
        task = self.pids.tasks_by_host.get(tid)
        if task is None:
            return
        try:
            status = ptrace.event_msg(tid)
            regs = ptrace.get_regs(tid, Regs())
        except OSError:
            return                # killed meanwhile: its end is recorded when reported
        # The whole process ends with a fatal signal or exit_group; its other
        # threads, killed for it, may skip the stop (a SIGKILL is pending).
        whole = os.WIFSIGNALED(status) or regs.orig_rax == _SYS_EXIT_GROUP
        self.accounting.exit_stop(task, status, whole)

    def _suspends_session(self, tid: int, sig: int) -> bool:
        """A job-control stop signal for a session lx started, which Linux
        would discard: the session's process group has no parent in the
        session (it is orphaned, signal(7)), so SIGTSTP, SIGTTIN and SIGTTOU
        at their default action do nothing. The host shell's job control
        takes it instead: the whole group stops (SIGSTOP) and its client is
        told, which stops lx until `fg` continues both."""
        if sig not in (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU):
            return False
        proc = self.pids.processes_by_host.get(tid)      # the leader's main thread only
        watcher = self.stop_watchers.get(proc) if proc is not None else None
        if watcher is None or not _default_action(tid, sig):
            return False
        libc.kill_group_or_process(proc.host_pid, signal.SIGSTOP)
        watcher(sig)
        return True

    def _strict_mode_violated(self, tid: int) -> bool:
        """A thread in seccomp strict mode made a call it forbids: the
        filter that stands for strict mode (syscalls/process.py
        _enter_strict) sent SIGSYS, and Linux kills the thread with SIGKILL
        (__secure_computing_strict). The host's SIGKILL takes the whole
        thread group, where Linux ends the thread."""
        task = self.pids.tasks_by_host.get(tid)
        if task is None or task.seccomp_mode != SECCOMP_MODE_STRICT:
            return False
        try:
            if ptrace.get_siginfo(tid).si_code != SYS_SECCOMP:
                return False              # a SIGSYS someone sent: delivered as any signal
        except OSError:
            return False
        os.kill(tid, signal.SIGKILL)
        return True

    def _translate_siginfo(self, tid: int, sig: int) -> None:
        try:
            info = ptrace.get_siginfo(tid)
        except OSError:
            return
        receiver = self.pids.tasks_by_host.get(tid)
        if self._provider_sent_child_info(tid, info) or self.translate_sender(info, active_pid_ns(receiver)):
            try:
                ptrace.set_siginfo(tid, info)
            except OSError:
                pass

    def _provider_sent_child_info(self, tid: int, info: ptrace.SigInfo) -> bool:
        """A Linux tracer's SIGCHLD (kernel/ptrace.py sends it): what
        Linux's would say (CLD_TRAPPED, the tracee...)."""
        if not (self.ptrace.tracers and info.si_signo == signal.SIGCHLD and info.si_code == SI_USER
                and info.si_pid == os.getpid()):
            return False
        task = self.pids.tasks_by_host.get(tid)
        return task is not None and self.ptrace.fill_child_info(task.process, info)

    def translate_sender(self, info: ptrace.SigInfo, ns: PidNamespace | None = None) -> bool:
        """Make si_pid/si_uid of a signal sent by a process the view of the
        sender from the receiver's namespace ns (0 when the sender is
        outside it); False when there is nothing to change."""
        # The kernel fills in the sender for kill/tkill, a message queue's
        # notification and SIGCHLD; sigqueue's siginfo is the sender's own
        # (glibc writes its getpid()/getuid(), virtual already).
        if not (info.si_code in (SI_USER, SI_TKILL, SI_MESGQ) or info.si_signo == signal.SIGCHLD):
            return False
        if info.si_pid <= 0:
            return False
        # The pid the sender had when it sent it, as Linux's si_pid: it may
        # have exited, and been reaped, since.
        sender = self.pids.processes_by_host.get(info.si_pid) or self.pids.zombies_by_host.get(info.si_pid)
        info.si_pid = pid_in(sender, ns) if sender is not None else self.pids.vpid_or_zero(info.si_pid)
        info.si_uid = self.ruid_of(sender) if sender is not None else 0
        return True

    def ruid_of(self, proc: Process) -> int:
        """A process's real uid, a zombie's as it was when it exited."""
        if proc.threads:
            return next(iter(proc.threads.values())).creds.ruid
        return proc.exit_ruid

    def on_idle(self) -> bool:
        return self._ending and not self.pids.tasks_by_host

    # -- ending ---------------------------------------------------------------

    @property
    def ending(self) -> bool:
        return self._ending

    def end(self) -> None:
        """End the instance: every process in it is killed, daemons included."""
        self._ending = True
        for tid in list(self.pids.tasks_by_host):
            try:
                os.kill(tid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def signal_group(self, proc: Process, sig: int) -> None:
        """Forward a signal a client received to its command's process group."""
        if not proc.exited:
            libc.kill_group_or_process(proc.host_pid, sig)

    def scratch_dir(self) -> str:
        """Where pseudo directories are materialized: memory, removed at the end."""
        if self._scratch is None:
            import tempfile
            base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
            self._scratch = tempfile.mkdtemp(prefix=f"lxsub-{self.name}-", dir=base)
        return self._scratch

    def cleanup(self) -> None:
        self.vfs.loops.close()         # loop devices' data still in their views
        for ns in (self.ipc, *self.ipc_namespaces):
            ns.close()                 # SysV objects and message queues end with their instance
        self.volfs.remove_staging()
        self.volfs.linux.store.close()
        self.storage.close()
        if self._scratch is not None:
            import shutil
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def process_of_vpid(self, vpid: int) -> Process | None:
        return self.pids.processes_by_vid.get(vpid)


def _default_action(tid: int, sig: int) -> bool:
    """Whether tid's process neither catches nor ignores sig (proc(5): SigIgn, SigCgt)."""
    bit = 1 << (sig - 1)
    try:
        with open(f"/proc/{tid}/status") as f:
            for line in f:
                if line.startswith(("SigIgn:", "SigCgt:")) and int(line.split()[1], 16) & bit:
                    return False
    except OSError:
        return False
    return True
