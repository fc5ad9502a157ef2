"""From a trapped syscall to its handler, and the handler's answer back.

User-notify calls are answered through the listener; ptrace-stopped calls
by rewriting the tracee's registers. A handler's OSError becomes the
syscall's errno; any other exception is a provider bug: logged, and the
program gets EIO rather than a dead provider.
"""

from __future__ import annotations

import errno
import os
import threading
import traceback
from typing import TYPE_CHECKING

from lxsub.abi.sysno import NAMES, NUMBERS
from lxsub.kernel import table
from lxsub.kernel.call import Blocking, Call, Native, NewFd, NewFds, SwapFd
from lxsub.platform import hostproc, memory, ptrace
from lxsub.platform.memory import MemoryFault

if TYPE_CHECKING:
    from lxsub.kernel.instance import Instance
    from lxsub.kernel.task import Task
    from lxsub.platform.notify import Listener, Notification
    from lxsub.platform.ptrace import Regs


def _run_handler(inst: "Instance", call: Call):
    entry = table.BY_NR.get(call.nr)
    if entry is None or entry.handler is None:
        name = NAMES.get(call.nr, f"syscall {call.nr}")
        inst.log.once(f"enosys:{call.nr}", f"unimplemented syscall {name} ({call.nr}): ENOSYS")
        return -errno.ENOSYS
    try:
        result = entry.handler(call)
    except MemoryFault:
        return -errno.EFAULT
    except OSError as e:
        return -(e.errno or errno.EIO)
    except Exception:
        inst.log.warn(f"provider bug in {entry.name}: {traceback.format_exc()}")
        return -errno.EIO
    if inst.log.trace:
        inst.log.syscall(call.task.tid, f"{entry.name}{tuple(hex(a) for a in call.args[:4])} = {result!r}")
    return result


def serve_notification(inst: "Instance", lst: "Listener", task: "Task", n: "Notification") -> None:
    if task.lost_fd is not None and _replay_lost_fd(inst, lst, task, n):
        return
    result = _run_handler(inst, Call(inst, task, n.nr, n.args))
    if not _answer(inst, lst, n.id, result, n.pid, keep_lost_fd=True):
        _remember_lost(inst, task, n, result)


def _answer(inst: "Instance", lst: "Listener", nid: int, result, tid: int = 0,
            keep_lost_fd: bool = False) -> bool:
    """Deliver a handler's result. False if the caller was no longer
    waiting for it (killed, or woken by a signal); a NewFd's descriptor
    is then left open if keep_lost_fd."""
    try:
        if isinstance(result, int):
            lst.reply(nid, result if result >= 0 else 0, result if result < 0 else 0)
        elif isinstance(result, NewFd):
            if result.last_holder and lst.last_holder_safe:   # closes the fd; a dying caller needs no replay
                lst.reply_fd_last_holder(nid, result.fd, result.cloexec, tid)
                return True
            try:
                lst.reply_fd(nid, result.fd, result.cloexec, tid)
            except OSError as e:
                if not (keep_lost_fd and e.errno == errno.ENOENT):
                    os.close(result.fd)
                raise
            os.close(result.fd)
        elif isinstance(result, NewFds):
            _answer_fds(lst, nid, result, tid)
        elif isinstance(result, SwapFd):
            _answer_swap(lst, nid, result)
        elif isinstance(result, Blocking):
            _BlockingAnswer(inst, lst, nid, tid).start(result)
        else:
            inst.log.warn(f"handler answered {result!r} to a notification")
            lst.reply(nid, 0, -errno.EIO)
    except OSError as e:
        # ENOENT: the caller went away (killed), or a signal woke it, before
        # the answer arrived.
        if e.errno == errno.ENOENT:
            return False
        inst.log.warn(f"reply failed: {e}")
        # Never leave a caller waiting for an answer that will not come.
        try:
            lst.reply(nid, 0, -(e.errno or errno.EIO))
        except OSError:
            pass
    return True


def _answer_fds(lst: "Listener", nid: int, pair: NewFds, tid: int) -> None:
    """The descriptors go in first (ADDFD without SEND), then their
    numbers into the caller's memory, then the answer."""
    import struct
    try:
        numbers = [lst.add_fd(nid, fd, pair.cloexec) for fd in pair.fds]
    finally:
        for fd in pair.fds:
            os.close(fd)
    try:
        memory.write(tid, pair.addr, struct.pack(f"<{len(numbers)}i", *numbers))
    except OSError:                        # MemoryFault too
        lst.reply(nid, 0, -errno.EFAULT)
        return
    lst.reply(nid, 0, 0)


def _answer_swap(lst: "Listener", nid: int, swap: SwapFd) -> None:
    """The request took effect: its result is the answer even if the new
    file cannot go in (the caller keeps the one it had)."""
    try:
        lst.add_fd(nid, swap.fd, swap.cloexec, swap.number)
    except OSError as e:
        if e.errno == errno.ENOENT:       # the caller is gone
            raise
    finally:
        os.close(swap.fd)
    lst.reply(nid, swap.result, 0)


def _remember_lost(inst: "Instance", task: "Task", n: "Notification", result) -> None:
    """The call's work is done but its caller did not get the answer: the
    kernel will restart it (or fail it with EINTR), and doing it again
    would be seen (a second mkdir fails with EEXIST, a second rename with
    ENOENT). A number goes back at the stop the signal brings; a new
    descriptor, which only an answer can install, waits for the restart."""
    if isinstance(result, int):
        if result not in ptrace.RESTARTS:
            inst.engine.result_at_next_stop(n.pid, n.nr, result)
    elif isinstance(result, NewFd):
        drop_lost_fd(task)
        task.lost_fd = (n.nr, n.args, result, _path_named(task, n.nr, n.args))


# The calls whose new descriptor is the file a path names, and where it is:
# a restart names the same file only if the same string is there (ld.so
# opens each library from one buffer, so the same pointer can name another).
_PATH_ARG = {NUMBERS[name]: i for name, i in (("open", 0), ("creat", 0), ("openat", 1), ("openat2", 1))}


def _path_named(task: "Task", nr: int, args) -> bytes | None:
    i = _PATH_ARG.get(nr)
    if i is None:
        return None
    try:
        return memory.read_cstr(task.host_tid, args[i], 4096)
    except OSError:                         # MemoryFault too
        return None


def _replay_lost_fd(inst: "Instance", lst: "Listener", task: "Task", n: "Notification") -> bool:
    """Answer a restarted call with the descriptor its first run opened.
    The first later call of the same kind settles it: a different one
    means the program gave up on the first (EINTR) and the copy is closed."""
    nr, args, result, path = task.lost_fd
    if nr != n.nr:
        return False
    task.lost_fd = None
    if args != n.args or path != _path_named(task, n.nr, n.args):
        os.close(result.fd)
        return False
    if not _answer(inst, lst, n.id, result, n.pid, keep_lost_fd=True):
        task.lost_fd = (nr, args, result, path)     # lost again: keep it for the next restart
    return True


def drop_lost_fd(task: "Task") -> None:
    """Close a kept descriptor no restart will ask for (exit, exec)."""
    if task.lost_fd is not None:
        os.close(task.lost_fd[2].fd)
        task.lost_fd = None


class _BlockingAnswer:
    """A Blocking job's answer: its result, unless a signal comes for the
    caller first. Then the caller gets ERESTARTSYS, as from an interrupted
    wait in Linux: the kernel's signal code restarts the call or fails it
    with EINTR, by the handler's SA_RESTART. (The caller's own wait cannot
    see the signal: only a deadly one wakes it once the provider has read
    the call, see notify.install_filter.) A result that comes too late is
    dropped."""

    POLL_S = 0.02

    def __init__(self, inst: "Instance", lst: "Listener", nid: int, tid: int) -> None:
        self.inst, self.lst, self.nid, self.tid = inst, lst, nid, tid
        self.lock = threading.Lock()
        self.open = True
        self.finished = threading.Event()

    def start(self, job: Blocking) -> None:
        job.still_wanted = self.wanted
        threading.Thread(target=self._work, args=(job,), daemon=True).start()
        threading.Thread(target=self._watch, daemon=True).start()

    def wanted(self) -> bool:
        return self.open and self.lst.still_valid(self.nid)

    def _close(self) -> bool:
        """Take the right to answer; False if the other side has it."""
        with self.lock:
            mine, self.open = self.open, False
        return mine

    def _work(self, job: Blocking) -> None:
        try:
            result = job.work()
        except OSError as e:
            result = -(e.errno or errno.EIO)
        except Exception:
            self.inst.log.warn(f"provider bug in blocking call: {traceback.format_exc()}")
            result = -errno.EIO
        self.finished.set()
        if not self._close():
            if isinstance(result, NewFd):
                os.close(result.fd)
            return
        if isinstance(result, NewFd):
            result = self._install(result)
        _answer(self.inst, self.lst, self.nid, result)

    def _install(self, new: NewFd) -> int:
        """Put the descriptor in the caller, and close ours, before the
        answer wakes it: off the loop our close can wait for the GIL while
        the caller goes on, and a second holder shows (a server port
        closed by the program would still be listening)."""
        try:
            return self.lst.add_fd(self.nid, new.fd, new.cloexec)
        except OSError as e:
            return -(e.errno or errno.EIO)
        finally:
            os.close(new.fd)

    def _watch(self) -> None:
        while not self.finished.wait(self.POLL_S):
            if not self.lst.still_valid(self.nid):
                self._close()             # killed, or (older kernels) interrupted
                return
            if hostproc.signal_pending(self.tid):
                if self._close():
                    _answer(self.inst, self.lst, self.nid, ptrace.ERESTARTSYS)
                return


def serve_trace_stop(inst: "Instance", task: "Task", regs: "Regs") -> None:
    original = (regs.orig_rax, regs.args())
    call = Call(inst, task, regs.orig_rax, original[1], regs)
    result = _run_handler(inst, call)
    tid = task.host_tid
    if isinstance(result, Native):
        rewritten = (regs.orig_rax, regs.args()) != original
        inst.engine.run_natively(tid, regs, _exit_hook(result, original if rewritten else None),
                                 wake_here=not result.own_cpu_mask)
    elif isinstance(result, int):
        inst.engine.finish_syscall(tid, regs, result)
    elif isinstance(result, SwapFd):          # no descriptor goes in at a ptrace stop
        os.close(result.fd)
        inst.engine.finish_syscall(tid, regs, result.result)
    else:
        inst.log.warn(f"traced handler answered {result!r}")
        inst.engine.finish_syscall(tid, regs, -errno.EIO)


def _exit_hook(result: Native, original):
    """The syscall-exit work for a Native answer: the handler's own, and,
    when we rewrote the arguments, putting the program's own back if the
    call is to be restarted, so that the restart traps and is translated
    again instead of running with host ids."""
    on_exit = result.on_exit
    if on_exit is None and original is None:
        return None

    def hook(t: int, r: "Regs") -> None:
        value = ptrace.signed64(r.rax)
        if original is not None and value in ptrace.RESTARTS:
            r.orig_rax = original[0]
            r.set_args(*original[1])
            ptrace.set_regs(t, r)
            if on_exit is not None:
                on_exit(value)     # let it clean up; the restart starts afresh
            return
        changed = False
        if original is not None and not (original[0] in _NEW_IMAGE and value == 0):
            # The x86-64 syscall ABI keeps every register but rax, rcx and
            # r11, and compilers rely on it (glibc's clock_getcpuclockid
            # reuses rdi as the clockid it returns): the program's own
            # arguments go back, not our host ids.
            r.set_args(*original[1])
            changed = True
        if on_exit is not None:
            new = on_exit(value)
            if new is not None:
                r.rax = new & 0xFFFFFFFFFFFFFFFF
                changed = True
        if changed:
            ptrace.set_regs(t, r)
    return hook


# After a successful execve the registers are the new image's.
_NEW_IMAGE = (NUMBERS["execve"], NUMBERS["execveat"])
