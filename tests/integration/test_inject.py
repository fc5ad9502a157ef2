"""Syscalls the provider runs inside a stopped pico process
(platform/inject.py): the results come back, the program sees nothing of
it (registers, red zone, a signal that came meanwhile with its siginfo),
the instance's filter lets the provider's own seccomp call through, and a
process killed meanwhile ends the injection cleanly.

A host C program (tests/integration/inject/probe.c) is driven by the
engine in a process of its own (inject/driver.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent / "inject"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> str:
    if shutil.which("gcc") is None:
        pytest.skip("no gcc on the host")
    out = tmp_path_factory.mktemp("inject") / "probe"
    subprocess.run(["gcc", "-O1", "-o", str(out), str(HERE / "probe.c")], check=True)
    return str(out)


@pytest.fixture(params=["step", "syscall"])
def mode(request) -> str:
    """PTRACE_SINGLESTEP over the call, or PTRACE_SYSCALL to its stops."""
    return request.param


def drive(scenario: str, mode: str, program: str) -> dict:
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}:{ROOT}")
    done = subprocess.run([sys.executable, "-m", "tests.integration.inject.driver", scenario, mode,
                           program],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def lines(out: dict) -> dict[str, list[int]]:
    return {w[0]: [int(x) for x in w[1::2]] for w in (ln.split() for ln in out["output"].splitlines())}


def test_injected_calls_return_results_and_leave_no_trace(probe, mode):
    out = drive("calls", mode, probe)
    # getpid ran in the tracee; seccomp (trapped by the filter's TRACE
    # row, let through) installed a filter for the program's threads.
    assert out["results"] == [out["pid"], 0]
    assert out["events"] == ["done"]
    seen = lines(out)
    assert seen["changed"] == [0, out["driver"]]       # registers and red zone intact
    assert seen["getuid"] == [-1, 1]                   # the injected filter: EPERM


def test_a_signal_during_an_injection_comes_afterwards_as_sent(probe, mode):
    out = drive("signal", mode, probe)
    assert out["results"] == [0, out["pid"]]           # nanosleep restarted, then getpid
    seen = lines(out)
    assert seen["changed"] == [0, out["driver"]]
    # SIGUSR1 from kill(2): si_code SI_USER (0) and the sender's pid, not
    # the resend's SI_TKILL.
    assert seen["signal"] == [10, 0, out["driver"]]


def test_a_process_killed_during_an_injection_ends_it(probe, mode):
    out = drive("killed", mode, probe)
    assert out["events"] == ["gone"]
    assert out["signaled"] == 9
    assert out["injections_left"] == 0
