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
        accounting.switch_to(-1)
        return 0
    # O_NONBLOCK: a FIFO is refused without waiting for a reader (ENXIO
    # with none, where Linux would wait and then refuse it with EACCES).
    flags = os.O_WRONLY | os.O_APPEND | O_LARGEFILE | os.O_NONBLOCK
    fd = open_at(c.inst.vfs, c.task, AT_FDCWD, c.path(0), flags, 0)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EACCES, "not a regular file")
    accounting.switch_to(fd)
    return 0
