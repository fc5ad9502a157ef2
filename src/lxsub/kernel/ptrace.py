"""ptrace(2) between pico processes, emulated by the provider.

The provider is the host's tracer of every pico process, and Linux allows
only one, so a Linux tracer (strace, gdb) inside the instance is served
here: for each traced Task a `Link` holds its Linux tracer (a Process), the
options it set and the stop it is in. The real tracee is kept stopped at
the real stop of the same kind (signal delivery, syscall entry or exit,
clone or exec event) while its tracer looks at it, so its registers,
memory and siginfo are the host's own; the stop is reported through the
tracer's wait4/waitid with Linux's status words (kernel/exit.c
wait_task_stopped, ptrace(2) "Stopped states"), with a SIGCHLD.

Syscall stops: when the Linux tracer resumes with PTRACE_SYSCALL, the
provider resumes the real tracee with PTRACE_SYSCALL too (platform engine
`release(mode=...)`), so every syscall stops, native ones included. At the
exit stop of a call the provider answered itself the tracer sees the
syscall number the tracee made (the provider skips such a call by setting
orig_rax to -1).

Programs nobody traces pay nothing: the engine asks the kernel only for
tids in its `resume_modes`, and the wait calls look a tracer up in one dict.
"""

from __future__ import annotations

import os
import signal
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lxsub.abi import ptrace as pt
from lxsub.abi.sched import CLONE_UNTRACED
from lxsub.abi.signal import CLD_DUMPED, CLD_EXITED, CLD_KILLED, CLD_TRAPPED
from lxsub.abi.sysno import SYS_TGKILL
from lxsub.kernel.creds import CAP_SYS_PTRACE
from lxsub.platform import libc
from lxsub.platform import ptrace as host

if TYPE_CHECKING:
    from lxsub.kernel.instance import Instance
    from lxsub.kernel.task import Process, Task

# Where a Linux tracer's stop is (what its wait reported).
SIGNAL_STOP, SYSCALL_ENTRY, SYSCALL_EXIT, EVENT_STOP, GROUP_STOP = range(5)

# struct user (sys/user.h, x86_64): the registers, then u_debugreg at 848.
USER_REGS_SIZE = 27 * 8
USER_DEBUGREG = 848
ORIG_RAX_OFFSET = 15 * 8

# Events the provider has the host report only for a Linux tracer that asked.
_HOST_EVENTS = pt.PTRACE_O_TRACEEXIT | pt.PTRACE_O_TRACEVFORKDONE

_WALL, _WCLONE, _WNOHANG = 0x40000000, 0x80000000, 1

# yama's /proc/sys/kernel/yama/ptrace_scope (Documentation/admin-guide/LSM/Yama.rst)
YAMA_SCOPE_DISABLED, YAMA_SCOPE_RELATIONAL, YAMA_SCOPE_CAPABILITY, YAMA_SCOPE_NO_ATTACH = range(4)


@dataclass(eq=False)
class Link:
    """A traced task and what its Linux tracer set and sees."""
    tracee: "Task"
    tracer: "Process"
    seized: bool
    options: int = 0
    stop: int | None = None          # where it is held, None while running
    report: int | None = None        # a status word its tracer has not waited for yet
    event_msg: int = 0
    entry: tuple[int, tuple[int, ...]] | None = None   # (nr, args) at the syscall-entry stop
    new_child: bool = False          # auto-attached at its parent's clone event, not started yet
    host_events: int = 0             # of _HOST_EVENTS, asked of the host for it
    vfork_child: int = 0             # the vtid of its last vfork child


@dataclass(eq=False)
class Exited:
    """A traced task that ended and that its tracer has not waited for,
    when that tracer is not the parent whose own wait reports it."""
    vid: int
    status: int
    thread: bool


@dataclass
class _Tracer:
    links: list[Link] = field(default_factory=list)
    exited: list[Exited] = field(default_factory=list)
    waiting: set["Task"] = field(default_factory=set)   # threads blocked in a wait
    # What the SIGCHLD sent last says (si_code, si_pid, si_uid, si_status):
    # the provider's kill(2) cannot, it is written in at the delivery stop.
    child_info: tuple[int, int, int, int] | None = None


class Ptrace:
    """The instance's ptrace links."""

    def __init__(self, inst: "Instance") -> None:
        self.inst = inst
        self.links: dict["Task", Link] = {}
        self.tracers: dict["Process", _Tracer] = {}
        self.scope = YAMA_SCOPE_RELATIONAL     # Debian's default

    # -- looking up --------------------------------------------------------------

    def link_of(self, task: "Task") -> Link | None:
        return self.links.get(task) if self.links else None

    def tracer_of(self, proc: "Process") -> _Tracer | None:
        return self.tracers.get(proc) if self.tracers else None

    def tracer_pid(self, task: "Task") -> int:
        """/proc/<pid>/status TracerPid."""
        link = self.link_of(task)
        return link.tracer.pid if link is not None else 0

    def is_stopped(self, task: "Task") -> bool:
        """/proc/<pid>/stat state 't' (tracing stop)."""
        link = self.link_of(task)
        return link is not None and link.stop is not None

    # -- attaching ------------------------------------------------------------

    def may_attach(self, tracer: "Task", target: "Task") -> bool:
        """ptrace_attach's checks after the thread group one:
        __ptrace_may_access(PTRACE_MODE_ATTACH_REALCREDS) with the
        instance's credentials, then yama_ptrace_access_check."""
        c = tracer.creds
        if not c.may_ptrace_read(target.creds, bool(target.process.dumpable), realcreds=True):
            return False
        if self.scope == YAMA_SCOPE_DISABLED:
            return True
        if self.scope == YAMA_SCOPE_RELATIONAL:
            return c.capable(CAP_SYS_PTRACE) or _is_ancestor(tracer.process, target.process)
        if self.scope == YAMA_SCOPE_CAPABILITY:
            return c.capable(CAP_SYS_PTRACE)
        return False

    def link(self, tracee: "Task", tracer: "Process", seized: bool, options: int = 0,
             host_events: int = 0) -> Link:
        """`host_events`: what the host reports for the tracee already (a
        child has its parent's options there)."""
        link = Link(tracee, tracer, seized, host_events=host_events)
        self.links[tracee] = link
        self.tracers.setdefault(tracer, _Tracer()).links.append(link)
        self.set_options(link, options)
        return link

    def unlink(self, link: Link, sig: int = 0) -> None:
        """PTRACE_DETACH, or the tracer's end: the tracee runs on."""
        self.set_options(link, 0)
        self.links.pop(link.tracee, None)
        tr = self.tracers.get(link.tracer)
        if tr is not None and link in tr.links:
            tr.links.remove(link)
            if not tr.links and not tr.exited:
                del self.tracers[link.tracer]
        if link.stop == GROUP_STOP and not sig:
            # Detached in a group-stop, it stays stopped (ptrace(2) PTRACE_DETACH).
            link.stop = None
            self.inst.engine.holds.discard(link.tracee.host_tid)
            try:
                host.listen(link.tracee.host_tid)
                self.inst.engine.listening.add(link.tracee.host_tid)
            except OSError:
                pass
        elif link.stop is not None:
            link.stop = None
            self.inst.engine.release(link.tracee.host_tid, sig)
        else:
            self.inst.engine.resume_modes.pop(link.tracee.host_tid, None)

    # -- stops of traced tasks ------------------------------------------------

    def stop(self, link: Link, where: int, status: int) -> None:
        """Hold the real tracee and tell its tracer (wait, SIGCHLD)."""
        link.stop = where
        link.report = status
        self.inst.engine.hold(link.tracee.host_tid)
        self._notify(link.tracer, (CLD_TRAPPED, link.tracee, status >> 8 & 0x7F))

    def _notify(self, tracer: "Process", why: tuple[int, "Task", int]) -> None:
        """do_notify_parent_cldstop (or do_notify_parent) for the tracer:
        SIGCHLD saying `why` (si_code, the tracee, si_status), and a thread
        of it blocked in wait4 is woken to look again (its wait restarts
        and traps, kernel/syscalls/process.py)."""
        tr = self.tracers.get(tracer)
        if tr is not None:
            code, tracee, status = why
            tr.child_info = (code, tracee.tid, tracee.creds.ruid, status)
        try:
            os.kill(tracer.host_pid, signal.SIGCHLD)
        except ProcessLookupError:
            return
        if tr is None:
            return
        for task in list(tr.waiting):
            self.inst.engine.interrupt(task.host_tid, lambda tid, regs: None)
        tr.waiting.clear()

    def fill_child_info(self, proc: "Process", info: host.SigInfo) -> bool:
        """At a delivery stop of a tracer's SIGCHLD the provider sent:
        write in what it says (False if the provider sent none)."""
        tr = self.tracers.get(proc) if self.tracers else None
        if tr is None or tr.child_info is None:
            return False
        info.si_code, info.si_pid, info.si_uid, status = tr.child_info
        tr.child_info = None
        struct.pack_into("<i", info.rest, 0, status)          # si_status
        return True

    def on_signal(self, task: "Task", sig: int) -> bool:
        """A signal-delivery stop of the real tracee: True if a Linux tracer
        takes it (it then decides, at its restart, what is delivered)."""
        link = self.link_of(task)
        if link is None:
            return False
        self.stop(link, SIGNAL_STOP, sig << 8 | 0x7F)
        return True

    def on_syscall_stop(self, tid: int) -> None:
        task = self.inst.pids.tasks_by_host.get(tid)
        link = self.link_of(task) if task is not None else None
        if link is None:
            self.inst.engine.resume_modes.pop(tid, None)
            return
        try:
            op = host.syscall_stop_op(tid)
            regs = host.get_regs(tid, host.Regs())
        except OSError:
            return
        good = 0x80 if link.options & pt.PTRACE_O_TRACESYSGOOD else 0
        status = (signal.SIGTRAP | good) << 8 | 0x7F
        if op == host.SYSCALL_INFO_ENTRY:
            link.entry = (regs.orig_rax, regs.args())
            self.stop(link, SYSCALL_ENTRY, status)
        else:
            self.stop(link, SYSCALL_EXIT, status)

    def on_group_stop(self, task: "Task", sig: int) -> bool:
        """The real tracee is in a group-stop: its tracer sees one (ptrace(2)
        "Group-stop"), PTRACE_EVENT_STOP in the status when seized; True if
        held for it."""
        link = self.link_of(task)
        if link is None:
            return False
        event = pt.PTRACE_EVENT_STOP << 16 if link.seized else 0
        self.stop(link, GROUP_STOP, event | sig << 8 | 0x7F)
        return True

    def on_event(self, task: "Task", event: int) -> bool:
        """PTRACE_EVENT_EXIT (its message the exit status) or
        PTRACE_EVENT_VFORK_DONE (the child's pid), if the tracer asked."""
        link = self.link_of(task)
        if link is None or not link.options & (1 << event):
            return False
        msg = host.event_msg(task.host_tid)
        if event == pt.PTRACE_EVENT_VFORK_DONE:
            msg = link.vfork_child
        link.event_msg = msg
        self.stop(link, EVENT_STOP, (signal.SIGTRAP | event << 8) << 8 | 0x7F)
        return True

    def on_seccomp(self, task: "Task") -> bool:
        """PTRACE_EVENT_SECCOMP (message: the filter's SECCOMP_RET_DATA),
        if the tracer asked; the call then goes on as the tracer leaves it
        (the host runs the filters again, as Linux)."""
        link = self.link_of(task)
        if link is None or not link.options & pt.PTRACE_O_TRACESECCOMP:
            return False
        link.event_msg = host.event_msg(task.host_tid)
        self.stop(link, EVENT_STOP, (signal.SIGTRAP | pt.PTRACE_EVENT_SECCOMP << 8) << 8 | 0x7F)
        return True

    def set_options(self, link: Link, options: int) -> None:
        """The events the host must report for the tracer's options
        (TRACEEXIT, TRACEVFORKDONE: the provider does not ask for them
        otherwise); set at once if the tracee is stopped, else at the stop
        an interrupt brings."""
        link.options = options
        extra = options & _HOST_EVENTS
        tid = link.tracee.host_tid
        if link.host_events == extra:
            return
        link.host_events = extra

        def apply(tid: int, regs=None) -> None:
            self.inst.set_host_events(link.tracee)     # with the events others ask for
        if link.stop is not None:
            apply(tid)
        else:
            self.inst.engine.interrupt(tid, apply)

    def on_clone(self, parent: "Task", child: "Task", event: int, flags: int) -> bool:
        """The parent's fork/vfork/clone event: the child is traced too when
        the tracer asked (PTRACE_O_TRACE{FORK,VFORK,CLONE}) and the parent
        stops with the event; True if the parent is held."""
        link = self.link_of(parent)
        if link is None:
            return False
        if event == pt.PTRACE_EVENT_VFORK:
            link.vfork_child = child.tid       # VFORK_DONE's message, once it may be gone
        if not link.options & (1 << event):
            return False
        if flags & CLONE_UNTRACED:
            return False
        self.link(child, link.tracer, link.seized, link.options, link.host_events).new_child = True
        link.event_msg = child.tid
        self.stop(link, EVENT_STOP, (signal.SIGTRAP | event << 8) << 8 | 0x7F)
        return True

    def child_first_stop(self, child: "Task") -> bool:
        """An auto-attached child starts in a stop its tracer sees: SIGSTOP,
        or PTRACE_EVENT_STOP when seized (ptrace(2) "automatically attached")."""
        link = self.link_of(child)
        if link is None or not link.new_child:
            return False
        link.new_child = False
        if link.seized:
            self.stop(link, EVENT_STOP, (signal.SIGTRAP | pt.PTRACE_EVENT_STOP << 8) << 8 | 0x7F)
        else:
            self.stop(link, SIGNAL_STOP, signal.SIGSTOP << 8 | 0x7F)
        return True

    def on_exec(self, task: "Task", former_vtid: int) -> bool:
        """A traced task's exec: PTRACE_EVENT_EXEC with TRACEEXEC; a
        SIGTRAP after it for a tracer that neither seized nor asked
        (ptrace(2) "execve(2) under ptrace")."""
        link = self.link_of(task)
        if link is None:
            return False
        if link.options & pt.PTRACE_O_TRACEEXEC:
            link.event_msg = former_vtid
            self.stop(link, EVENT_STOP, (signal.SIGTRAP | pt.PTRACE_EVENT_EXEC << 8) << 8 | 0x7F)
            return True
        if not link.seized:
            libc.syscall(SYS_TGKILL, task.host_pid, task.host_tid, signal.SIGTRAP)
        return False

    def on_exit(self, task: "Task", status: int, thread: bool) -> None:
        """A traced task ended: its tracer's wait reports it, unless the
        tracer is the parent whose own (host) wait does. A tracer's end
        lets its tracees go."""
        link = self.links.pop(task, None)
        if link is not None:
            self.inst.engine.holds.discard(task.host_tid)
            tr = self.tracers.get(link.tracer)
            if tr is not None:
                if link in tr.links:
                    tr.links.remove(link)
                if thread or task.process.parent is not link.tracer:
                    tr.exited.append(Exited(task.tid, status, thread))
                    code, value = _child_end(status)
                    self._notify(link.tracer, (code, task, value))
                elif not tr.links and not tr.exited:
                    del self.tracers[link.tracer]
        proc = task.process
        if not proc.threads and proc in self.tracers:
            for other in list(self.tracers[proc].links):
                if other.options & pt.PTRACE_O_EXITKILL:
                    try:
                        os.kill(other.tracee.host_tid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.unlink(other)
            self.tracers.pop(proc, None)

    # -- the tracer's wait ----------------------------------------------------

    def take_report(self, proc: "Process", pid: int, options: int, consume: bool,
                    pgid_of=None, exits: bool = True) -> tuple[int, int, int] | None:
        """A stop or exit (if `exits`) of a tracee of proc matching wait's
        pid and options: (vpid, status, uid), marked waited for unless not
        consume."""
        tr = self.tracers.get(proc)
        if tr is None:
            return None
        for link in tr.links:
            t = link.tracee
            if link.report is None or not _matches(t.tid, t.pid, t.tid != t.pid, pid, options, pgid_of):
                continue
            status = link.report
            if consume:
                link.report = None
            return t.tid, status, t.creds.ruid
        for ex in tr.exited if exits else ():
            if _matches(ex.vid, ex.vid, ex.thread, pid, options, pgid_of):
                if consume:
                    tr.exited.remove(ex)
                    if not tr.links and not tr.exited:
                        del self.tracers[proc]
                return ex.vid, ex.status, 0
        return None

    def has_tracees(self, proc: "Process", pid: int, options: int, pgid_of=None) -> bool:
        tr = self.tracers.get(proc)
        return tr is not None and any(
            _matches(link.tracee.tid, link.tracee.pid, link.tracee.tid != link.tracee.pid,
                     pid, options, pgid_of) for link in tr.links)

    def waiting(self, task: "Task", on: bool) -> None:
        tr = self.tracers.get(task.process)
        if tr is not None:
            (tr.waiting.add if on else tr.waiting.discard)(task)

    # -- registers as the tracer sees them --------------------------------------

    def regs_view(self, link: Link) -> host.Regs:
        """The tracee's registers; at a syscall-exit stop orig_rax and the
        arguments are the ones the tracee made the call with, not what the
        provider wrote to skip or translate it."""
        regs = host.get_regs(link.tracee.host_tid, host.Regs())
        if link.stop == SYSCALL_EXIT and link.entry is not None:
            regs.orig_rax = link.entry[0]
            regs.set_args(*link.entry[1])
        return regs

    def set_regs(self, link: Link, new: host.Regs) -> None:
        tid = link.tracee.host_tid
        if link.stop == SYSCALL_EXIT and link.entry is not None:
            real = host.get_regs(tid, host.Regs())
            if new.orig_rax == link.entry[0]:
                new.orig_rax = real.orig_rax
        host.set_regs(tid, new)


def _matches(vid: int, tgid: int, thread: bool, pid: int, options: int, pgid_of) -> bool:
    """wait's pid argument and __WALL/__WCLONE (kernel/exit.c eligible_pid,
    eligible_child): a thread is a "clone" child (its exit signal is not
    SIGCHLD)."""
    if not options & _WALL and bool(options & _WCLONE) != thread:
        return False
    if pid == -1:
        return True
    if pid > 0:
        return vid == pid
    if pgid_of is None:
        return False
    group = pgid_of(tgid)          # virtual, as wait's -pgid is
    return group is not None and group == (-pid if pid < -1 else pgid_of(None))


def _is_ancestor(anc: "Process", proc: "Process") -> bool:
    """yama's task_is_descendant: proc is anc or below it."""
    p = proc
    while p is not None:
        if p is anc:
            return True
        p = p.parent
    return False


def _child_end(status: int) -> tuple[int, int]:
    """A wait status as SIGCHLD's si_code and si_status."""
    if os.WIFEXITED(status):
        return CLD_EXITED, os.WEXITSTATUS(status)
    return (CLD_DUMPED if os.WCOREDUMP(status) else CLD_KILLED), os.WTERMSIG(status)
