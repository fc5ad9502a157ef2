"""Extra seccomp filters for one process, injected by the provider and
inherited by its children: SCM_CREDENTIALS' recvmsg stops
(syscalls/net.py), FAN_ACCESS_PERM's read stops and a fanotify group
holder's socket and splice stops (kernel/fanotify.py), a time namespace's
clock stops (kernel/timens.py).

The kernel runs every filter of a process and takes the strictest action,
so an extra filter only adds stops to the instance filter's answers. Each
process gets each filter at most once: a flag on its Process
(`creds_filter`, `access_filter`, `group_filter`, `timens_filter`) says it has it or that it
is on its way; a failed injection or the thread's end clears it, so a later
call may try again."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Callable

from lxsub.abi.seccomp import SECCOMP_FILTER_FLAG_TSYNC, SECCOMP_SET_MODE_FILTER
from lxsub.abi.sysno import NUMBERS
from lxsub.platform import bpf
from lxsub.platform.inject import Scratch, SysCall

if TYPE_CHECKING:
    from lxsub.kernel.instance import Instance
    from lxsub.kernel.task import Process


def seccomp_call(actions: dict, default: int = bpf.RET_ALLOW) -> SysCall:
    """seccomp(SECCOMP_SET_MODE_FILTER, TSYNC, &prog) of the filter that
    `actions` (syscall number: action or ByArgs) describe; TSYNC puts it on
    every thread of the process."""
    prog = bpf.build_filter(actions, default)
    fprog = struct.pack("<H6xQ", len(prog) // 8, 0)
    return SysCall(NUMBERS["seccomp"], (SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, Scratch(0)),
                   fprog + prog, pointers=((8, len(fprog)),))


def inject(inst: "Instance", proc: "Process", tid: int, flag: str, call: SysCall, what: str) -> None:
    """Inject `call` into thread `tid` of `proc`, now stopped, whose `flag`
    the caller has set."""
    def installed(result: int) -> None:
        if result != 0:                # < 0: errno; > 0: a thread TSYNC could not reach
            setattr(proc, flag, False)
            inst.log.warn(f"pid {proc.pid}: no {what} filter (seccomp: {result})")

    def gone() -> None:
        setattr(proc, flag, False)
    inst.engine.inject(tid, call, installed, lambda: None, gone)


def give(inst: "Instance", task, flag: str, call: SysCall, what: str) -> None:
    """Inject `call` into the process of `task`, which runs or waits in a
    call the provider serves, at the stop an interrupt brings: before it
    runs on from that call. Once per process (`flag`)."""
    proc = task.process
    if getattr(proc, flag):
        return
    setattr(proc, flag, True)

    def at_stop(tid: int, regs) -> None:
        if tid in inst.engine.injections:
            # The call's own answer is being injected (the ptrace platform
            # hands descriptors over by an injected recvmsg): after it.
            if not inst.engine.interrupt(tid, at_stop):
                setattr(proc, flag, False)
            return
        inject(inst, proc, tid, flag, call, what)
    if not inst.engine.interrupt(task.host_tid, at_stop):
        setattr(proc, flag, False)


def give_to_holders(inst: "Instance", holds: Callable[["Process"], bool], flag: str, call: SysCall,
                    what: str) -> None:
    """Every process of the instance for which `holds` is true and that
    lacks the filter gets it, at the stop an interrupt of one of its
    threads brings."""
    for proc in list(inst.pids.processes_by_host.values()):
        if getattr(proc, flag) or not proc.threads or not holds(proc):
            continue
        tid = next(iter(proc.threads))
        setattr(proc, flag, True)
        if not inst.engine.interrupt(tid, lambda tid, regs, proc=proc: inject(inst, proc, tid, flag, call, what)):
            setattr(proc, flag, False)
