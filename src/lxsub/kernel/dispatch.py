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

from lxsub.kernel import table
from lxsub.kernel.call import Blocking, Call, Native, NewFd
from lxsub.kernel.sysno import NAMES
from lxsub.platform import ptrace
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
    inst.current_task = call.task
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
    call = Call(inst, task, n.nr, n.args)
    _answer(inst, lst, n.id, _run_handler(inst, call), n.pid)


def _answer(inst: "Instance", lst: "Listener", nid: int, result, tid: int = 0) -> None:
    try:
        if isinstance(result, int):
            lst.reply(nid, result if result >= 0 else 0, result if result < 0 else 0)
        elif isinstance(result, NewFd):
            try:
                lst.reply_fd(nid, result.fd, result.cloexec, tid)
            finally:
                os.close(result.fd)
        elif isinstance(result, Blocking):
            result.still_wanted = lambda: lst.still_valid(nid)
            threading.Thread(target=_finish_blocking, args=(inst, lst, nid, result),
                             daemon=True).start()
        else:
            inst.log.warn(f"handler answered {result!r} to a notification")
            lst.reply(nid, 0, -errno.EIO)
    except OSError as e:
        # ENOENT: the caller went away (killed) before the answer arrived.
        if e.errno == errno.ENOENT:
            return
        inst.log.warn(f"reply failed: {e}")
        # Never leave a caller waiting for an answer that will not come.
        try:
            lst.reply(nid, 0, -(e.errno or errno.EIO))
        except OSError:
            pass


def _finish_blocking(inst: "Instance", lst: "Listener", nid: int, job: Blocking) -> None:
    try:
        result = job.work()
    except OSError as e:
        result = -(e.errno or errno.EIO)
    except Exception:
        inst.log.warn(f"provider bug in blocking call: {traceback.format_exc()}")
        result = -errno.EIO
    _answer(inst, lst, nid, result)


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
    else:
        inst.log.warn(f"traced handler answered {result!r}")
        inst.engine.finish_syscall(tid, regs, -errno.EIO)


# A syscall interrupted by a signal comes back with one of these and is
# restarted by the kernel with the registers it has then.
_RESTARTS = (-512, -513, -514)   # ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND


def _exit_hook(result: Native, original):
    """The syscall-exit work for a Native answer: the handler's own, and,
    when we rewrote the arguments, putting the program's own back if the
    call is to be restarted, so that the restart traps and is translated
    again instead of running with host ids."""
    on_exit = result.on_exit
    if on_exit is None and original is None:
        return None

    def hook(t: int, r: "Regs") -> None:
        value = _signed64(r.rax)
        if original is not None and value in _RESTARTS:
            r.orig_rax = original[0]
            r.set_args(*original[1])
            ptrace.set_regs(t, r)
            if on_exit is not None:
                on_exit(value)     # let it clean up; the restart starts afresh
            return
        if on_exit is not None:
            new = on_exit(value)
            if new is not None:
                r.rax = new & 0xFFFFFFFFFFFFFFFF
                ptrace.set_regs(t, r)
    return hook


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >> 63 else v
