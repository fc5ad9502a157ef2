"""Drives one pico process through the engine and injects calls into it
(tests/integration/test_inject.py runs it in a process of its own: the
engine pins its CPU and takes SIGCHLD).

    python3 -m tests.integration.inject.driver SCENARIO step|syscall PROGRAM

The program is started under a filter that traps getppid and seccomp
(RET_TRACE, as the instance's table does for seccomp); at getppid's exit
the scenario injects its calls. Prints one JSON line: the results, what
the program printed, how it ended.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import sys

from lxsub.abi.sysno import NUMBERS
from lxsub.platform import bpf, launcher
from lxsub.platform.engine import Engine
from lxsub.platform.inject import Scratch, SysCall

SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1


def getuid_eperm_filter() -> SysCall:
    """seccomp(SET_MODE_FILTER, TSYNC, prog): getuid answers EPERM."""
    prog = bpf.build_filter({NUMBERS["getuid"]: bpf.errno_action(1)}, bpf.RET_ALLOW)
    fprog = struct.pack("<HxxxxxxQ", len(prog) // 8, 0)
    return SysCall(NUMBERS["seccomp"], (SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, Scratch(0)),
                   fprog + prog, pointers=((8, len(fprog)),))


def nanosleep(seconds: float) -> SysCall:
    ts = struct.pack("<qq", int(seconds), int(seconds % 1 * 1e9))
    return SysCall(NUMBERS["nanosleep"], (Scratch(0), 0), ts)


class Scenario:
    def __init__(self, name: str, mode: str) -> None:
        self.name = name
        self.stepping = mode == "step"
        self.results: list[int] = []
        self.events: list[str] = []
        self.calls: list[SysCall] = {
            "calls": [SysCall(NUMBERS["getpid"]), getuid_eperm_filter()],
            "signal": [nanosleep(0.4), SysCall(NUMBERS["getpid"])],
            "killed": [nanosleep(10)],
        }[name]

    def next_call(self, result: int):
        self.results.append(result)
        return self.calls[len(self.results)] if len(self.results) < len(self.calls) else None


class ProbeKernel:
    """The Kernel interface, just enough for one process."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.engine = Engine(self)
        self.status: int | None = None
        self.pid = 0

    def start(self, program: str) -> None:
        actions = {NUMBERS["getppid"]: bpf.RET_TRACE,
                   NUMBERS["seccomp"]: bpf.ByArgs((bpf.ArgRule(0, "eq", 1, bpf.RET_TRACE),), bpf.RET_ALLOW)}
        prog = bpf.build_filter(actions, bpf.RET_ALLOW)
        r, w = os.pipe()
        self.pid, report = launcher.spawn(prog, program.encode(), [program.encode()], [],
                                          launcher.ChildSetup(stdio=(0, w, 2)), set())
        os.close(w)
        self.report: int | None = report
        self.out = r
        self.engine.known.add(self.pid)

    def on_trace_stop(self, tid, regs) -> None:
        if self.report is not None:      # the filter is in place (no notify rows:
            os.close(self.report)          # its listener went with the native execve)
            self.report = None
        if regs.orig_rax == NUMBERS["getppid"]:
            self.engine.run_natively(tid, None, self.inject_at_exit)
        else:
            self.scenario.events.append(f"trace stop {regs.orig_rax}")
            self.engine.resume(tid)

    def inject_at_exit(self, tid, regs) -> None:
        sc = self.scenario
        self.engine.inject(tid, sc.calls[0], sc.next_call, lambda: sc.events.append("done"),
                           lambda: sc.events.append("gone"), stepping=sc.stepping)
        if sc.name == "signal":
            self.engine.call_later(0.1, lambda: os.kill(tid, signal.SIGUSR1))
        elif sc.name == "killed":
            self.engine.call_later(0.1, lambda: os.kill(tid, signal.SIGKILL))

    def on_notification(self, listener, n) -> None:
        listener.reply(n.id, 0, 0, 1)

    def on_clone(self, tid, child, event, regs) -> None:
        self.engine.resume(tid)

    def on_exec(self, tid, former_tid) -> None:
        pass

    def on_exit(self, tid, status) -> None:
        if tid == self.pid:
            self.status = status

    def on_signal(self, tid, sig) -> int:
        return sig

    def on_idle(self) -> bool:
        return self.status is not None

    def on_syscall_stop(self, tid) -> None:
        pass

    def on_group_stop(self, tid, sig) -> bool:
        return False

    def on_trace_event(self, tid, event) -> bool:
        return False


def main() -> None:
    scenario = Scenario(sys.argv[1], sys.argv[2])
    k = ProbeKernel(scenario)
    k.start(sys.argv[3])
    k.engine.run()
    out = b""
    while chunk := os.read(k.out, 4096):
        out += chunk
    status = k.status or 0
    print(json.dumps({"pid": k.pid, "results": scenario.results, "events": scenario.events,
                      "output": out.decode(), "driver": os.getpid(),
                      "signaled": os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0,
                      "injections_left": len(k.engine.injections)}))


if __name__ == "__main__":
    main()
