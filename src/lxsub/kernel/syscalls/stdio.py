"""<stdio.h>: rename, renameat, renameat2."""

from __future__ import annotations

from lxsub.abi.fcntl import AT_FDCWD
from lxsub.kernel.call import Call
from lxsub.kernel.vfs import ops


def sys_rename(c: Call) -> int:
    ops.rename(c.inst.vfs, c.task, AT_FDCWD, c.path(0), AT_FDCWD, c.path(1), 0)
    return 0


def sys_renameat(c: Call) -> int:
    ops.rename(c.inst.vfs, c.task, c.int(0), c.path(1), c.int(2), c.path(3), 0)
    return 0


def sys_renameat2(c: Call) -> int:
    ops.rename(c.inst.vfs, c.task, c.int(0), c.path(1), c.int(2), c.path(3), c.uint(4))
    return 0
