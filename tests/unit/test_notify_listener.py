"""A seccomp listener whose caller is gone: answering it is no error.

A call a provider worker passes on waits a little before the provider
answers it, and its thread may be killed meanwhile; the provider's answer
then fails with ENOENT, which once ended the whole instance (LTP's
recvmsg01 and sysctl03 under LX_WORKERS=2). A real filter, a real caller,
a real SIGKILL."""

from __future__ import annotations

import ctypes
import os
import signal
import socket

import pytest

from lxsub.abi.seccomp import SECCOMP_FILTER_FLAG_NEW_LISTENER
from lxsub.abi.sysno import NUMBERS
from lxsub.platform import bpf, libc, notify
from lxsub.platform.notify import Listener

_PR_SET_NO_NEW_PRIVS = 38


def _caller_waiting_in_getppid() -> tuple[int, int]:
    """(pid, listener fd) of a child blocked in a notified getppid()."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        try:
            ours.close()
            libc._libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
            prog = bpf.build_filter({NUMBERS["getppid"]: bpf.RET_USER_NOTIF}, bpf.RET_ALLOW)
            fd = libc.seccomp_set_filter(SECCOMP_FILTER_FLAG_NEW_LISTENER, prog)
            socket.send_fds(theirs, [b"L"], [fd])
            os.close(fd)
            ctypes.CDLL(None).getppid()     # waits for an answer that never comes
        finally:
            os._exit(0)
    theirs.close()
    _, fds, _, _ = socket.recv_fds(ours, 4, 1)
    ours.close()
    return pid, fds[0]


@pytest.fixture
def waiting_call():
    """(caller's pid, its listener, the notification it waits on)."""
    if not notify.LISTENERS:
        pytest.skip("no seccomp listeners on this platform")
    pid, fd = _caller_waiting_in_getppid()
    try:
        lst = Listener(fd)
        n = lst.receive()
        assert n.nr == NUMBERS["getppid"] and n.pid == pid
        yield pid, lst, n
    finally:
        os.close(fd)
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass          # the test reaped it


def test_reply_to_a_killed_caller_is_not_an_error(waiting_call):
    pid, lst, n = waiting_call
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert lst.reply_unless_gone(n.id, 0, 0) is False
    with pytest.raises(FileNotFoundError):
        lst.reply(n.id, 0, 0)


def test_reply_to_a_waiting_caller_is_delivered(waiting_call):
    pid, lst, n = waiting_call
    assert lst.reply_unless_gone(n.id, 0, 0) is True
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
