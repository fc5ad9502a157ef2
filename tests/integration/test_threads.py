"""Threads that end before their creator returns from clone(2): their
CLONE_PARENT_SETTID word is the one CLONE_CHILD_CLEARTID clears at exit, so
the provider must put the virtual tid there before either runs on; written
at the parent's syscall exit it came after the clear now and then and left
pthread_join waiting forever (LTP keyctl02 hung this way).
tests/fixtures/programs/short_threads.c, built static, run in BusyBox."""

from __future__ import annotations

from tests.fixtures.cbuild import PROGRAMS, gcc_static
from tests.integration.distros import describe


def test_threads_that_end_at_once_are_joined(busybox, tmp_path):
    program = gcc_static(tmp_path, "short_threads", PROGRAMS / "short_threads.c").read_bytes()
    cp = busybox.lx(["--", "mkdir -p /threads && cat > /threads/t && chmod 755 /threads/t"],
                    input=program, timeout=60)
    assert cp.returncode == 0, describe(cp)
    cp = busybox.lx(["--", "/threads/t 1500"], timeout=120)
    assert cp.returncode == 0 and cp.stdout.decode().split() == ["joined", "6000"], describe(cp)
