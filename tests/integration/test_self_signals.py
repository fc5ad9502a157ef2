"""A signal a thread sends itself with tkill(2)/tgkill(2), as LTP signal06
sends 150000 of them: the provider translates the thread id for the host
(a ptrace stop at the seccomp filter), and the program's argument registers
must come back as they were (the x86-64 ABI changes only rax, rcx, r11).
They used to be put back at a syscall-exit stop; for a standard signal the
thread has not blocked, the kernel stops it anyway to deliver the signal
on its way back to its code, and they go back there: two ptrace round trips
per call instead of three. tests/fixtures/programs/self_signals.c, built
static, run in BusyBox."""

from __future__ import annotations

import pytest

from tests.fixtures.cbuild import PROGRAMS, gcc_static
from tests.integration.distros import describe

CALLS = 1000


@pytest.fixture(scope="module")
def report(busybox, tmp_path_factory) -> dict[str, list[int]]:
    tmp = tmp_path_factory.mktemp("self_signals")
    program = gcc_static(tmp, "self_signals", PROGRAMS / "self_signals.c").read_bytes()
    cp = busybox.lx(["--", "mkdir -p /sig && cat > /sig/s && chmod 755 /sig/s"], input=program, timeout=60)
    assert cp.returncode == 0, describe(cp)
    cp = busybox.lx(["--", f"/sig/s {CALLS}"], timeout=300)
    assert cp.returncode == 0, describe(cp)
    return {w[0]: [int(v) for v in w[1:]] for w in (line.split() for line in cp.stdout.decode().splitlines())}


def test_a_self_signal_keeps_the_argument_registers(report):
    assert report["kept"] == [2 * CALLS]
    assert report["handled"] == [2 * CALLS]


def test_a_self_signal_names_its_sender_as_linux_does(report):
    # si_pid: the caller's pid inside, si_code SI_TKILL (the host's are not shown).
    assert report["sender"] == [1, 1]


def test_a_blocked_self_signal_stays_pending(report):
    assert report["blocked"] == [1]


def test_an_ignored_self_signal_keeps_the_argument_registers(report):
    # The provider drops it (see syscalls/signal.py _discarded) and answers
    # the call itself, after pointing the arguments at host ids.
    assert report["ignored"] == [2]


def test_a_self_signal_costs_two_ptrace_stops(report):
    # Each stop is one voluntary context switch of the caller's: the
    # seccomp stop and the signal-delivery stop (no syscall-exit stop).
    # Natively it is 0; with the exit stop it was 3.
    assert report["switches"][0] < 250
