"""mq_open(2) and mq_unlink(2): names in the message queue namespace of
the caller's IPC namespace (kernel/mqueue.py). The other mq_* calls work natively on the
descriptor mq_open gave."""

from __future__ import annotations

import struct

from lxsub.abi.fcntl import O_CLOEXEC
from lxsub.kernel.call import Call, NewFd
from lxsub.kernel.task import ipc_of

_MQ_ATTR = struct.Struct("<4q4q")      # struct mq_attr: flags, maxmsg, msgsize, curmsgs, reserved


def sys_mq_open(c: Call) -> NewFd:
    name, oflag, mode = c.path(0), c.int(1), c.uint(2) & 0xFFFF     # umode_t
    attr = None
    if c.ptr(3):
        # ipc/mqueue.c: mq_attr is copied in (EFAULT) before anything else
        # is looked at; only a creating open uses it.
        _, maxmsg, msgsize, *_ = _MQ_ATTR.unpack(c.read(c.ptr(3), _MQ_ATTR.size))
        attr = (maxmsg, msgsize)
    fd = ipc_of(c.inst, c.task).mqueues.open(c.task.creds, c.task.fs.umask, name, oflag, mode, attr)
    return NewFd(fd, bool(oflag & O_CLOEXEC))


def sys_mq_unlink(c: Call) -> int:
    ipc_of(c.inst, c.task).mqueues.unlink(c.task.creds, c.path(0))
    return 0
