"""acct(2): the instance's process accounting file (kernel/acct.py)."""

from __future__ import annotations

import errno
import os
import stat

from lxsub.abi.fcntl import AT_FDCWD
from lxsub.kernel.acct import accounting_of
from lxsub.kernel.call import Call
from lxsub.kernel.creds import CAP_SYS_PACCT
from lxsub.kernel.vfs.open import open_at

O_LARGEFILE = 0o100000


def sys_acct(c: Call) -> int:
    """kernel/acct.c: CAP_SYS_PACCT first (EPERM, a NULL name too); NULL
    stops accounting; else the file is opened as filp_open(name,
    O_WRONLY|O_APPEND|O_LARGEFILE) would (its errors: EISDIR, EACCES,
    ENOENT, ELOOP...), and must be a regular file (EACCES)."""
    if not c.task.creds.capable(CAP_SYS_PACCT):
        raise OSError(errno.EPERM, "CAP_SYS_PACCT needed")
    accounting = accounting_of(c.inst)
    if not c.args[0]:
        if accounting.on:
            accounting.switch_to(-1)
            _ask_exit_stops(c)
        return 0
    # O_NONBLOCK: a FIFO is refused without waiting for a reader (ENXIO
    # with none, where Linux would wait and then refuse it with EACCES).
    flags = os.O_WRONLY | os.O_APPEND | O_LARGEFILE | os.O_NONBLOCK
    fd = open_at(c.inst.vfs, c.task, AT_FDCWD, c.path(0), flags, 0)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EACCES, "not a regular file")
    was_on = accounting.on
    accounting.switch_to(fd)
    if not was_on:
        _ask_exit_stops(c)
    return 0


def _ask_exit_stops(c: Call) -> None:
    """Accounting went on or off: every task of the instance gets its exit
    stop asked for (or no longer) of the host (Instance.host_events). The
    caller is stopped at this call (acct is traced); the others are at the
    stop an interrupt brings, which a blocked call restarts from."""
    inst = c.inst
    for task in list(inst.pids.tasks_by_host.values()):
        if task is c.task:
            inst.set_host_events(task)
        else:
            inst.engine.interrupt(task.host_tid, lambda tid, regs, t=task: inst.set_host_events(t))
