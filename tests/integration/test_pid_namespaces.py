"""PID namespaces a program makes (kernel/task.py PidNamespace,
kernel/syscalls/nsproxy.py) and ns_last_pid in them: clone(2) and
unshare(2) with CLONE_NEWPID give the first child pid 1 in a namespace of
its own while its parent sees another number; getpid/getppid/gettid,
kill and wait take and give the caller's namespace's numbers;
/proc/<pid>/status NSpid lists each level's; /proc/<pid>/ns/pid and
NS_GET_PARENT name the namespaces; the death of a namespace's init kills
the rest; a user without CAP_SYS_ADMIN gets EPERM. The program is
tests/fixtures/programs/pid_namespaces.c, built static and run as root in
BusyBox. Before, clone and unshare with CLONE_NEWPID were EPERM for root."""

from __future__ import annotations

import errno
import signal

import pytest

from tests.fixtures.cbuild import PROGRAMS, gcc_static
from tests.integration.distros import run_probe


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> bytes:
    tmp = tmp_path_factory.mktemp("pidns")
    return gcc_static(tmp, "pidns", PROGRAMS / "pid_namespaces.c").read_bytes()


def _run(busybox, program: bytes, mode: str) -> dict[str, str]:
    return run_probe(busybox, program, "/pidns/p", mode, user="root")


def test_a_clone_in_a_new_pid_namespace_is_its_pid_1(busybox, program):
    out = _run(busybox, program, "clone")
    # the child sees itself as pid 1 with no parent; its parent sees another pid
    assert out["clone getpid"] == "1" and out["clone gettid"] == "1", out
    assert out["clone getppid"] == "0", out
    assert out["clone thread"] == "1 1", out
    assert out["clone outer-pid"] == "1", out
    # its thread had tid 2 there, so its own child is pid 3 (pids are given
    # in turn, not reused at once); it kills and waits for it by that number
    assert out["clone grandchild"] == "3 1" and out["clone forked"] == "3", out
    assert out["clone kill-inner"] == "0" and out["clone waited"] == "3 15", out
    assert out["clone waitid"] == "4 4 3", out
    # SIGKILL and a default-action SIGTERM from inside do not reach its init
    assert out["clone unkillable"] == "0 0", out
    # process groups and sessions are numbered in the caller's namespace too
    assert out["clone pgrp-outside"] == "0" and out["clone setsid"] == "1 1 1", out
    # the parent's number means nothing inside
    assert out["clone kill-outside"] == str(-errno.ESRCH), out
    # /proc/<pid>/status: its pid at each level, the instance's first
    assert out["clone nspid"] == "1 1", out
    # another namespace, whose parent is the caller's; the caller's has none it may see
    assert out["clone ns-differs"] == "1" and out["clone ns-parent"] == "1", out
    assert out["clone ns-parent-of-own"] == str(-errno.EPERM), out
    # NS_GET_PID_IN_PIDNS/NS_GET_PID_FROM_PIDNS: the child is 1 there; we are not in it
    assert out["clone ns-pids"] == f"1 1 {-errno.ESRCH}", out
    # fstat of a namespace file gives the namespace's inode (LTP ioctl_ns05)
    assert out["clone ns-ino"] == "1 1", out
    assert out["clone reaped"] == "1 7", out


def test_unshare_sends_the_next_children_to_a_new_namespace(busybox, program):
    out = _run(busybox, program, "unshare")
    assert out["unshare result"] == "0" and out["unshare same-pid"] == "1", out
    # pid_for_children is already another namespace: a second one is EINVAL
    assert out["unshare again"] == str(-errno.EINVAL), out
    assert out["unshare children-differ"] == "1", out
    assert out["unshare child"] == "1 0" and out["unshare waited"] == "1", out
    # one level further down (LTP unshare05)
    assert out["unshare nested"] == "1", out
    # once its init is gone nothing runs there: Linux's fork fails with
    # ENOMEM; the host's fork is native, so the child is killed at birth
    assert "unshare ran-in-dead-namespace" not in out, out
    assert out["unshare after-init"] in (str(-errno.ENOMEM), str(-signal.SIGKILL)), out


def test_the_death_of_a_namespaces_init_kills_the_rest(busybox, program):
    out = _run(busybox, program, "death")
    assert out["death eof"] == "0", out


def test_orphans_go_to_the_namespaces_init(busybox, program):
    """The init of a PID namespace reaps its orphans: getppid() turns 1
    and its wait(2) gets them (it is a child subreaper on the host)."""
    out = _run(busybox, program, "orphan")
    assert out["orphan ppid"] == "1", out
    assert out["orphan reaped"] == "2 3", out


def test_ns_last_pid_steers_the_next_pid_of_the_writers_namespace(busybox, program):
    out = _run(busybox, program, "lastpid")
    assert out["lastpid same"] == "1", out
    # in a namespace of its own, the next pid there follows the value written
    assert out["lastpid inner"] == "42", out
    # the file is 0666 as Linux's; the writer's CAP_CHECKPOINT_RESTORE is checked
    # (the EPERM of the write cannot come back through the pipe a pseudo-file
    # write goes into, kernel/vfs/pseudo.py: the value is not taken)
    assert out["lastpid nobody-open"] == "0" and out["lastpid nobody-steered"] == "0", out


def test_new_pid_namespaces_need_cap_sys_admin(busybox, program):
    out = _run(busybox, program, "nobody")
    assert out["nobody unshare"] == str(-errno.EPERM), out
    assert out["nobody clone"] == str(-errno.EPERM), out
