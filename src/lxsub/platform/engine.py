"""The provider's event loop: ptrace stops and seccomp notifications.

One thread does everything of the provider's own (ptrace requests must
come from the tracer thread). It sleeps in poll() on a signalfd for
SIGCHLD and on every seccomp listener, and hands each event to the kernel
through the small `Kernel` interface below. It never blocks inside one
process's syscall: anything that would block runs natively in the pico
process itself.

With provider workers (kernel/workers.py) the workers receive from the
listeners and the loop only watches them for their end (POLLHUP); what a
worker passes on arrives through a watched descriptor. Before any event
that may change what a worker keeps a copy of, the loop calls
`before_change` (the workers' epoch); notifications of `quiet_nrs`
change none of it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import signal
import time
from typing import Callable, Protocol

from lxsub.platform import affinity, coderun, features, inject, libc, ptrace
from lxsub.platform.notify import USER_NOTIF_FLAG_CONTINUE, Listener, Notification
from lxsub.platform.ptrace import Regs

_STOP_SIGNALS = {signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU}

ExitHook = Callable[[int, Regs], None]


class Kernel(Protocol):
    """What the provider's kernel does with each kind of event."""

    def on_notification(self, listener: Listener, n: Notification) -> None: ...
    def on_trace_stop(self, tid: int, regs: Regs) -> None: ...
    def on_clone(self, tid: int, child: int, event: int, regs: Regs) -> None: ...
    def on_exec(self, tid: int, former_tid: int) -> None: ...
    def on_exit(self, tid: int, status: int) -> None: ...
    def on_signal(self, tid: int, sig: int) -> int: ...
    def on_idle(self) -> bool: ...
    def on_syscall_stop(self, tid: int) -> None: ...
    def on_group_stop(self, tid: int, sig: int) -> bool: ...
    def on_trace_event(self, tid: int, event: int) -> bool: ...


def _nothing() -> None:
    pass


class _SigSet(ctypes.Structure):
    _fields_ = [("val", ctypes.c_ulong * 16)]


def _signalfd_for_sigchld() -> int:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    mask = _SigSet()
    mask.val[0] = 1 << (signal.SIGCHLD - 1)
    fd = libc._libc.signalfd(-1, ctypes.byref(mask), os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "signalfd")
    return fd


class Engine:
    """Owns the tracees' stops: decodes wait statuses and restarts tracees."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        affinity.settle()
        self.regs = Regs()
        self.exit_hooks: dict[int, ExitHook] = {}
        self.listeners: dict[int, Listener] = {}
        self.known: set[int] = set()          # tids the kernel has a Task for
        self.parked: dict[int, int] = {}      # stopped before their parent's clone event
        self.awaiting_first_stop: dict[int, Callable[[], object] | None] = {}
        self.sigchld_fd = _signalfd_for_sigchld()
        self.poller = select.poll()
        self.poller.register(self.sigchld_fd, select.POLLIN)
        self.extra_fds: dict[int, Callable[[], None]] = {}
        self.quiet_fds: set[int] = set()      # extra fds whose events change no kernel state
        # Called before an event that may change kernel state (kernel/workers.py).
        self.before_change: Callable[[], None] = _nothing
        self.quiet_nrs: frozenset[int] = frozenset()
        self.listeners_here = True            # False: workers receive from the listeners
        self.on_new_listener: Callable[[int], None] | None = None
        self.timers: list[tuple[float, Callable[[], None]]] = []
        # Hooks for interop (kernel/interop.py): a host child's end, the
        # signals of a parked tracee, and the stop a PTRACE_INTERRUPT brings.
        self.child_watchers: dict[int, Callable[[int], None]] = {}
        self.signal_hooks: dict[int, Callable[[int], int]] = {}
        self.interrupt_hooks: dict[int, Callable[[int, Regs], None]] = {}
        self.exec_hooks: dict[int, Callable[[int], None]] = {}
        # tid -> (syscall nr, result): answers a signal kept from their caller.
        self.lost_results: dict[int, tuple[int, int]] = {}
        # Emulated ptrace (kernel/ptrace.py): tids the kernel keeps stopped
        # for a Linux tracer (resume() leaves them until release()), and the
        # ptrace request (PTRACE_SYSCALL, PTRACE_SINGLESTEP) their Linux
        # tracer resumed them with; syscall stops of those go to the kernel.
        self.holds: set[int] = set()
        self.resume_modes: dict[int, int] = {}
        self.listening: set[int] = set()      # resting in a group-stop (PTRACE_LISTEN)
        # Syscalls of the provider's run in a tracee (platform/inject.py):
        # the one under way per tid, whether it has started, and signals
        # an injection kept and sent again (their siginfo to give back).
        self.injections: dict[int, inject.Injection | coderun.CodeRun] = {}
        self.injections_waiting: dict[int, bool] = {}    # tid -> at an exec event
        self.resent_signals: dict[int, list[ptrace.SigInfo]] = {}
        # Threads resting at a syscall-exit stop their Linux tracer has not
        # been shown (an exec whose exit stop the injected mapping ran
        # through): a PTRACE_SYSCALL resume reports it first.
        self.exits_unreported: set[int] = set()
        # The ptrace platform (platform/tracenotify.py): notify rows stop
        # by ptrace and are handed over as notifications of this listener.
        self.trace_listener = None
        if features.platform()[0] == "ptrace":
            from lxsub.platform.tracenotify import TraceListener
            self.trace_listener = TraceListener(self)

    # -- registration -----------------------------------------------------

    def add_listener(self, fd: int) -> Listener:
        lst = Listener(fd)
        self.listeners[fd] = lst
        self.poller.register(fd, select.POLLIN if self.listeners_here else 0)
        if self.on_new_listener is not None:
            self.on_new_listener(fd)
        return lst

    def receive_here(self, here: bool) -> None:
        """Receive from the listeners in this loop (True), or only watch
        them for their end while workers receive (False: POLLHUP and
        POLLERR are reported whatever the mask, poll(2))."""
        self.listeners_here = here
        for fd in self.listeners:
            self.poller.modify(fd, select.POLLIN if here else 0)

    def remove_listener(self, fd: int) -> None:
        if self.listeners.pop(fd, None) is not None:
            self.poller.unregister(fd)
            os.close(fd)

    def watch_fd(self, fd: int, callback: Callable[[], None], quiet: bool = False) -> None:
        """Call callback when fd is readable; `quiet`: its events change no
        kernel state by themselves (no before_change)."""
        self.extra_fds[fd] = callback
        if quiet:
            self.quiet_fds.add(fd)
        self.poller.register(fd, select.POLLIN)

    def unwatch_fd(self, fd: int) -> None:
        self.quiet_fds.discard(fd)
        if self.extra_fds.pop(fd, None) is not None:
            self.poller.unregister(fd)

    def watch_child(self, pid: int, on_exit: Callable[[int], None]) -> None:
        """Call on_exit(wait status) when our child (or tracee) `pid` ends.
        The loop reaps every child with waitpid(-1), so this, not a pidfd,
        is how the status of a host child is seen."""
        self.child_watchers[pid] = on_exit

    def hook_signals(self, tid: int, hook: Callable[[int], int] | None) -> None:
        """At tid's signal-delivery stops, deliver hook(sig) (0: suppress)
        instead of asking the kernel; None removes the hook."""
        if hook is None:
            self.signal_hooks.pop(tid, None)
        else:
            self.signal_hooks[tid] = hook

    def after_exec(self, tid: int, hook: Callable[[int], None]) -> None:
        """Call hook(new tid) at tid's next successful exec (its exec event,
        after the kernel's on_exec). A failed exec does not call it."""
        self.exec_hooks[tid] = hook

    def interrupt(self, tid: int, at_stop: Callable[[int, Regs], None]) -> bool:
        """PTRACE_INTERRUPT tid; at the stop it brings, call at_stop(tid,
        regs) (which may change the registers) and let it run on.
        That stop is a syscall-exit stop when PTRACE_SYSCALL is in effect
        (a blocked syscall is interrupted), a signal-delivery stop if a
        signal comes at the same time, else PTRACE_EVENT_STOP: at_stop runs
        at the first of them. False if tid is gone. An interrupt asked
        for before that stop came runs there too, first."""
        earlier = self.interrupt_hooks.get(tid)
        if earlier is not None:
            def both(t: int, regs: Regs, first=earlier, then=at_stop) -> None:
                first(t, regs)
                then(t, regs)
            at_stop = both
        self.interrupt_hooks[tid] = at_stop
        try:
            ptrace.interrupt(tid)
        except ProcessLookupError:
            self.interrupt_hooks.pop(tid, None)
            return False
        return True

    def inject(self, tid: int, first: inject.SysCall, after: inject.NextCall,
               done: Callable[[], None], gone: Callable[[], None] | None = None,
               at_exec: bool = False, insn_at: int | None = None,
               stepping: bool | None = None) -> None:
        """Run `first` inside tid, stopped now at a syscall-exit stop (in
        an exit hook) or at its exec event (`at_exec`), then the calls
        after(result) gives until it gives None; then put tid back as it
        was and call done() (which may inject again). It starts when the
        loop would let tid run on; gone() if tid dies meanwhile.
        `insn_at`: the `syscall` instruction to use (default: the one
        before rip, else the vDSO's). `stepping`: one stop per call
        (PTRACE_SINGLESTEP over the instruction) rather than two (syscall
        entry and exit); by default unless a Linux tracer watches tid's
        syscall stops, which must then come where they would."""
        if stepping is None:
            stepping = tid not in self.resume_modes
        self.injections[tid] = inject.Injection(self, tid, first, after, done, gone, insn_at,
                                                stepping)
        self.injections_waiting[tid] = at_exec

    def run_code(self, tid: int, steps: "list[coderun.Step]", done: Callable[[int], None],
                 gone: Callable[[], None] | None = None, stop_at_end: bool = False) -> None:
        """Run `steps` inside tid, stopped now at its exec event
        (platform/coderun.py); then done(errno, or 0 if all went), tid's
        registers its own again (a failed run ends at a stop, as does any
        with `stop_at_end`; done then runs there). gone() if tid dies."""
        self.injections[tid] = coderun.CodeRun(self, tid, steps, done, gone, stop_at_end)
        self.injections_waiting[tid] = True

    def answer_if_injected(self, lst: Listener, n: Notification) -> bool:
        """A notification of a call the provider injected: let it run
        (the last of a code run's ends it)."""
        if self.injections and n.pid in self.injections:
            run = self.injections[n.pid]
            if isinstance(run, coderun.CodeRun) and coderun.is_last_call(n.nr, n.args[0]):
                run.on_sigreturn()
            lst.reply_unless_gone(n.id, 0, 0, USER_NOTIF_FLAG_CONTINUE)
            return True
        return False

    def injection_ended(self, tid: int) -> None:
        """tid's registers are its own again: what its stops postponed
        (an interrupt hook) runs, and it runs on unless injected again."""
        if tid in self.injections:
            self.resume(tid)               # starts the next injection
            return
        self._interrupted(tid)
        self.resume(tid)

    def result_at_next_stop(self, tid: int, nr: int, result: int) -> None:
        """tid's trapped syscall `nr` has done its work, but a signal woke
        the caller before the answer came: the kernel will restart the
        call (done twice: EEXIST, ENOENT) or fail it with EINTR. The signal
        brings tid to a stop; there, make the call return `result`, as
        Linux does for a call that completes before its signal is handled."""
        self.lost_results[tid] = (nr, result)

    def _give_lost_result(self, tid: int) -> None:
        nr, result = self.lost_results.pop(tid)
        regs = ptrace.get_regs(tid, self.regs)
        if regs.orig_rax == nr and ptrace.signed64(regs.rax) in ptrace.RESTARTS:
            regs.rax = result & 0xFFFFFFFFFFFFFFFF
            ptrace.set_regs(tid, regs)

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        """Run callback from the loop after `delay` seconds (monotonic clock)."""
        self.timers.append((time.monotonic() + delay, callback))
        self.timers.sort(key=lambda t: t[0])

    def task_known(self, tid: int, before_start: Callable[[], object] | None = None) -> None:
        """The kernel made a Task for tid: let it run once it has stopped for
        the first time, after `before_start` (e.g. fixing its tid in memory)."""
        self.known.add(tid)
        if tid in self.parked:
            del self.parked[tid]
            self._first_run(tid, before_start)
        else:
            self.awaiting_first_stop[tid] = before_start

    def _first_run(self, tid: int, before_start: Callable[[], object] | None) -> None:
        if before_start is not None:
            before_start()
        self.resume(tid)

    # -- restarts -----------------------------------------------------------

    def resume(self, tid: int, sig: int = 0, wake_here: bool = True) -> None:
        """Let tid run on (to its syscall exit if an exit hook waits there).
        It wakes on the provider's CPU unless wake_here is False (for
        calls that read or set CPU masks: they must see the thread's own).
        A tid the kernel holds stays stopped (a Linux tracer looks at it
        as it is); else an injected one runs its injected calls first."""
        if tid in self.holds:
            return
        if self.injections and tid in self.injections:
            self._start_injection(tid)
            return
        if self.exits_unreported and tid in self.exits_unreported:
            self.exits_unreported.discard(tid)
            if self.resume_modes.get(tid) == ptrace.PTRACE_SYSCALL:
                self.kernel.on_syscall_stop(tid)
                if tid in self.holds:
                    return
        try:
            if not wake_here:
                self._cont(tid, sig)
                return
            with affinity.WakeHere(tid):
                self._cont(tid, sig)
        except ProcessLookupError:
            pass

    def _start_injection(self, tid: int) -> None:
        at_exec = self.injections_waiting.pop(tid, None)
        if at_exec is None:
            return                         # under way: its own stops drive it
        try:
            self.injections[tid].start(at_exec)
        except ProcessLookupError:
            pass

    def hold(self, tid: int) -> None:
        """Keep tid stopped where it is: resume() does nothing for it."""
        self.holds.add(tid)

    def release(self, tid: int, sig: int = 0, mode: int | None = None) -> None:
        """Let a held tid run on, delivering sig; `mode` PTRACE_SYSCALL or
        PTRACE_SINGLESTEP makes it stop again where a Linux tracer asked."""
        self.holds.discard(tid)
        if mode is None:
            self.resume_modes.pop(tid, None)
        else:
            self.resume_modes[tid] = mode
        self.resume(tid, sig)

    def trap_group_stopped(self, tid: int) -> bool:
        """Bring tid, resting in a group-stop (PTRACE_LISTEN), to a
        ptrace stop now (PTRACE_INTERRUPT, then its stop is waited for
        here) and hold it there; False if what came was another event
        (handled as usual) or tid is gone."""
        if tid not in self.listening:
            # Its group-stop may still wait behind the caller's stop (the
            # ptrace platform's calls and the stops come through the same
            # waitpid(-1), in the kernel's order).
            self._take_pending_status(tid)
        if tid not in self.listening:
            return False
        try:
            ptrace.interrupt(tid)
            _, status = os.waitpid(tid, ptrace.WALL)
        except (ProcessLookupError, ChildProcessError):
            return False
        self.listening.discard(tid)
        if os.WIFSTOPPED(status) and status >> 16 == ptrace.EVENT_STOP:
            self.holds.add(tid)
            return True
        self._on_wait_status(tid, status)
        return False

    def _take_pending_status(self, tid: int) -> None:
        try:
            got, status = os.waitpid(tid, os.WNOHANG | ptrace.WALL)
        except ChildProcessError:
            return
        if got == tid:
            self._on_wait_status(tid, status)

    def _cont(self, tid: int, sig: int) -> None:
        if self.trace_listener is not None:
            self.trace_listener.resumed(tid)
        mode = self.resume_modes.get(tid) if self.resume_modes else None
        if mode is not None and not (mode == ptrace.PTRACE_SINGLESTEP and tid in self.exit_hooks):
            ptrace.restart(mode, tid, sig)
        elif tid in self.exit_hooks:
            ptrace.cont_to_syscall_exit(tid, sig)
        else:
            ptrace.cont(tid, sig)

    def finish_syscall(self, tid: int, regs: Regs, result: int) -> None:
        """Skip the syscall at a seccomp stop and make `result` its return value."""
        regs.orig_rax = 0xFFFFFFFFFFFFFFFF
        regs.rax = result & 0xFFFFFFFFFFFFFFFF
        ptrace.set_regs(tid, regs)
        self.resume(tid)

    def run_natively(self, tid: int, regs: Regs | None, on_exit: ExitHook | None,
                     wake_here: bool = True) -> None:
        """Let the (maybe rewritten) syscall run in the tracee; see its result."""
        if regs is not None:
            ptrace.set_regs(tid, regs)
        if on_exit is not None:
            self.exit_hooks[tid] = on_exit
        self.resume(tid, wake_here=wake_here)

    def run_natively_to_stop(self, tid: int, regs: Regs, at_stop: Callable[[int, Regs], None],
                             on_exit: ExitHook | None, wake_here: bool = True) -> None:
        """run_natively for a call that makes the kernel stop tid before
        it runs its code again (a signal it sends itself: the
        signal-delivery stop comes on its way back to user mode): at_stop
        runs at that stop, and the syscall-exit stop, one more round trip,
        is not asked for. A tid held, injected into or stepped by a Linux
        tracer is resumed by others' rules: run_natively with on_exit."""
        if (tid in self.holds or (self.injections and tid in self.injections)
                or (self.resume_modes and tid in self.resume_modes)):
            self.run_natively(tid, regs, on_exit, wake_here)
            return
        ptrace.set_regs(tid, regs)
        earlier = self.interrupt_hooks.get(tid)
        if earlier is not None:
            def both(t: int, r: Regs, first=earlier, then=at_stop) -> None:
                first(t, r)
                then(t, r)
            at_stop = both
        self.interrupt_hooks[tid] = at_stop
        self.resume(tid, wake_here=wake_here)

    # -- the loop -----------------------------------------------------------

    def run(self) -> None:
        """Serve events until the kernel says there is nothing left to serve."""
        self._drain_waits()
        while True:
            self._run_due_timers()
            # After the timers: one may have ended the kernel's work (an
            # instance's grace period), and nothing else would wake poll.
            if self.kernel.on_idle():
                return
            for fd, events in self._poll():
                if fd == self.sigchld_fd:
                    self._drain_sigchld_fd()
                    self.before_change()
                    self._drain_waits()
                elif fd in self.listeners:
                    if events & select.POLLIN:
                        self._serve_notification(self.listeners[fd])
                    elif events & (select.POLLHUP | select.POLLERR):
                        # Every process of its filter is gone: a listener
                        # left in the set would wake poll forever.
                        self.remove_listener(fd)
                elif fd in self.extra_fds:
                    if fd not in self.quiet_fds:
                        self.before_change()
                    self.extra_fds[fd]()

    def _poll(self):
        timeout = None
        if self.timers:
            timeout = max(0, int((self.timers[0][0] - time.monotonic()) * 1000) + 1)
        while True:
            try:
                return self.poller.poll(timeout)
            except InterruptedError:
                continue

    def _run_due_timers(self) -> None:
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            _, callback = self.timers.pop(0)
            self.before_change()
            callback()

    def _drain_sigchld_fd(self) -> None:
        try:
            while os.read(self.sigchld_fd, 128 * 16):
                pass
        except BlockingIOError:
            pass

    def _serve_notification(self, lst: Listener) -> None:
        try:
            n = lst.receive()
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.EINTR):
                return   # the caller was interrupted (signal) before we read it
            if e.errno == errno.EBADF:
                self.remove_listener(lst.fd)
                return
            raise
        if self.answer_if_injected(lst, n):
            return
        if n.nr not in self.quiet_nrs:
            self.before_change()
        self.kernel.on_notification(lst, n)

    def _drain_waits(self) -> None:
        while True:
            try:
                tid, status = os.waitpid(-1, os.WNOHANG | ptrace.WALL)
            except ChildProcessError:
                return
            if tid == 0:
                return
            self._on_wait_status(tid, status)

    def _on_wait_status(self, tid: int, status: int) -> None:
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            self.exit_hooks.pop(tid, None)
            self.holds.discard(tid)
            self.resume_modes.pop(tid, None)
            self.listening.discard(tid)
            self.known.discard(tid)
            self.awaiting_first_stop.pop(tid, None)
            self.parked.pop(tid, None)
            self.signal_hooks.pop(tid, None)
            self.interrupt_hooks.pop(tid, None)
            self.exec_hooks.pop(tid, None)
            self.lost_results.pop(tid, None)
            self._injection_gone(tid)
            self.exits_unreported.discard(tid)
            if self.trace_listener is not None:
                self.trace_listener.forget_tid(tid)
            self.kernel.on_exit(tid, status)
            watcher = self.child_watchers.pop(tid, None)
            if watcher is not None:
                watcher(status)
            return
        if not os.WIFSTOPPED(status):
            return
        sig = (status >> 8) & 0xFF
        event = status >> 16
        try:
            self._on_stop(tid, sig, event)
        except ProcessLookupError:
            pass   # killed while we looked at it (SIGKILL from a sibling, exit_group)

    def _injection_gone(self, tid: int) -> None:
        self.resent_signals.pop(tid, None)
        self.injections_waiting.pop(tid, None)
        injection = self.injections.pop(tid, None)
        if injection is not None:
            injection.on_gone()

    def _on_stop(self, tid: int, sig: int, event: int) -> None:
        if self.injections and tid in self.injections and tid not in self.injections_waiting:
            self.injections[tid].on_stop(sig, event)
            return
        if self.listening:
            self.listening.discard(tid)
        if self.lost_results and tid in self.lost_results:
            self._give_lost_result(tid)
        if sig == ptrace.SYSCALL_STOP:
            hook = self.exit_hooks.pop(tid, None)
            if hook is not None:
                hook(tid, ptrace.get_regs(tid, self.regs))
            self._interrupted(tid)
            if self.resume_modes and tid in self.resume_modes:
                self.kernel.on_syscall_stop(tid)     # a Linux tracer's syscall stop
            self.resume(tid)
        elif event == ptrace.EVENT_SECCOMP:
            tl = self.trace_listener
            if tl is not None and tl.claims(tid):
                n = tl.notification(tid, ptrace.get_regs(tid, self.regs))
                if n.nr not in self.quiet_nrs:
                    self.before_change()
                self.kernel.on_notification(tl, n)
            else:
                regs = ptrace.get_regs(tid, self.regs)
                if tl is not None:
                    tl.at_trace_row(tid, regs)
                self.kernel.on_trace_stop(tid, regs)
        elif event in (ptrace.EVENT_FORK, ptrace.EVENT_VFORK, ptrace.EVENT_CLONE):
            child = ptrace.event_msg(tid)
            affinity.inherit(tid, child)
            self.kernel.on_clone(tid, child, event, ptrace.get_regs(tid, self.regs))
        elif event == ptrace.EVENT_EXEC:
            former = ptrace.event_msg(tid)
            if former != tid:
                self.exit_hooks.pop(former, None)
            self.exit_hooks.pop(tid, None)
            self.kernel.on_exec(tid, former)
            hook = self.exec_hooks.pop(former, None) or self.exec_hooks.pop(tid, None)
            if hook is not None:
                hook(tid)
            self.resume(tid)
        elif event == ptrace.EVENT_STOP:
            self._on_event_stop(tid, sig)
        elif event in (ptrace.EVENT_EXIT, ptrace.EVENT_VFORK_DONE):
            # Asked for by a Linux tracer of tid (kernel/ptrace.py): it may hold it.
            if not self.kernel.on_trace_event(tid, event):
                self.resume(tid)
        else:
            if self.resent_signals:
                inject.restore_siginfo(self, tid, sig)
            self._interrupted(tid)
            hook = self.signal_hooks.get(tid)
            self.resume(tid, hook(sig) if hook is not None else self.kernel.on_signal(tid, sig))

    def _interrupted(self, tid: int) -> None:
        at_stop = self.interrupt_hooks.pop(tid, None)
        if at_stop is not None:
            at_stop(tid, ptrace.get_regs(tid, self.regs))

    def _on_event_stop(self, tid: int, sig: int) -> None:
        if tid in self.interrupt_hooks and sig not in _STOP_SIGNALS:
            self._interrupted(tid)
            self.resume(tid)
        elif tid in self.awaiting_first_stop:
            self._first_run(tid, self.awaiting_first_stop.pop(tid))
        elif tid not in self.known:
            self.parked[tid] = sig     # its parent's clone event is still to come
        elif sig in _STOP_SIGNALS:
            if self.kernel.on_group_stop(tid, sig):
                return                 # a Linux tracer's group-stop: held
            ptrace.listen(tid)         # group-stop: stay stopped until SIGCONT
            self.listening.add(tid)
        else:
            self.resume(tid)
