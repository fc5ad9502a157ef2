"""dispatch: a trapped call goes to its table row's handler by number, and
what the handler does becomes the call's result or errno."""

from __future__ import annotations

import errno
import os
from types import SimpleNamespace

import pytest

from lxsub.abi.sysno import NUMBERS
from lxsub.kernel import dispatch, table
from lxsub.kernel.call import Call
from lxsub.kernel.creds import Creds
from lxsub.kernel.log import Log
from lxsub.kernel.task import FsContext, Process, Task


@pytest.fixture
def inst(tmp_path):
    # No file systems: a handler that gets as far as the VFS is a test failure.
    return SimpleNamespace(log=Log(str(tmp_path / "provider.log")), vfs=None)


def _task(creds: Creds) -> Task:
    """A task whose 'host' side is this test process (memory reads are real)."""
    proc = Process(2, os.getpid(), None)
    return Task(2, os.getpid(), proc, creds, FsContext(None, None))


def _run(inst, name_or_nr, args=(), creds: Creds | None = None):
    nr = NUMBERS[name_or_nr] if isinstance(name_or_nr, str) else name_or_nr
    task = _task(creds or Creds.for_user(1000, 1000))
    return dispatch._run_handler(inst, Call(inst, task, nr, tuple(args) + (0,) * (6 - len(args))))


def _log(inst) -> str:
    with open(inst.log.path) as f:
        return f.read()


def test_a_call_reaches_its_handler_by_number(inst):
    assert _run(inst, "getuid", creds=Creds.for_user(1234, 55)) == 1234
    assert _run(inst, "getegid", creds=Creds.for_user(1234, 55)) == 55


def test_an_unknown_number_is_enosys_and_logged_once(inst):
    assert _run(inst, 1000) == -errno.ENOSYS
    assert _run(inst, 1000) == -errno.ENOSYS
    assert _log(inst).count("unimplemented syscall syscall 1000 (1000): ENOSYS") == 1


def test_a_call_the_table_runs_natively_has_no_handler_here(inst):
    """write(2) never traps; reaching dispatch anyway, it must not run anything.
    (read(2) has a handler: the reads a FAN_ACCESS_PERM filter stops.)"""
    assert table.BY_NR[NUMBERS["write"]].handler is None
    assert _run(inst, "write", (0, 0, 1)) == -errno.ENOSYS
    assert "unimplemented syscall write (1)" in _log(inst)


def test_a_handlers_oserror_is_its_errno(inst):
    """setuid(0) by an unprivileged user: EPERM (setuid(2))."""
    assert _run(inst, "setuid", (0,)) == -errno.EPERM


def test_a_bad_pointer_is_efault(inst):
    """unlink(2) of a path at an unmapped address: EFAULT, as
    strncpy_from_user() says."""
    assert _run(inst, "unlink", (16,)) == -errno.EFAULT


def test_a_provider_bug_is_eio_and_logged_not_a_crash(inst, monkeypatch):
    def broken(c: Call) -> int:
        raise KeyError("a provider bug")
    nr = NUMBERS["getuid"]
    monkeypatch.setitem(table.BY_NR, nr, table.notify("getuid", broken))
    assert _run(inst, "getuid") == -errno.EIO
    assert "provider bug in getuid" in _log(inst) and "KeyError" in _log(inst)


def test_an_oserror_without_errno_is_eio(inst, monkeypatch):
    def vague(c: Call) -> int:
        raise OSError("no errno")
    monkeypatch.setitem(table.BY_NR, NUMBERS["getuid"], table.notify("getuid", vague))
    assert _run(inst, "getuid") == -errno.EIO
