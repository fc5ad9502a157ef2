"""The instance's POSIX message queues (mq_overview(7)): its own namespace.

The queues live in a private IPC namespace of the instance's
(platform/mqns.py), where the helper that opens them passes every check;
what Linux checks with the caller's credentials is checked here, with the
instance's Linux ids, as ipc/mqueue.c does:

- an existing queue is opened per `inode_permission` on its owner, group
  and mode (MAY_READ/MAY_WRITE by the access mode), O_CREAT|O_EXCL on it is
  EEXIST, an access mode of 3 EINVAL (prepare_open);
- a new queue belongs to the caller's fsuid and fsgid, its mode masked by
  the caller's umask; past the namespace's `queues_max`, or with an
  mq_attr above `msg_max`/`msgsize_max`, only CAP_SYS_RESOURCE creates it
  (mqueue_create_attr, mq_attr_ok);
- mq_unlink removes from the sticky world-writable mqueue root: only the
  queue's owner, the root directory's (root), or CAP_FOWNER (may_delete,
  check_sticky).

The queues' owners and modes are kept by name; a name is only ever made or
removed through here, so the table is the namespace's list of queues.
"""

from __future__ import annotations

import errno
import threading
from dataclasses import dataclass

from lxsub.abi.fcntl import O_ACCMODE, O_CREAT, O_EXCL, O_RDONLY, O_RDWR, O_WRONLY
from lxsub.kernel.creds import CAP_FOWNER, CAP_SYS_RESOURCE, Creds
from lxsub.kernel.vfs.perm import MAY_READ, MAY_WRITE, check
from lxsub.platform.mqns import MqueueNamespace

_WANT = {O_RDONLY: MAY_READ, O_WRONLY: MAY_WRITE, O_RDWR: MAY_READ | MAY_WRITE}
MQUEUE_ROOT_UID = 0        # the mqueue root (mode 01777) is root's in every namespace


@dataclass(slots=True)
class Queue:
    uid: int
    gid: int
    mode: int


class MqueueSpace:
    """The instance's message queues by name (without glibc's leading '/')."""

    def __init__(self) -> None:
        self.ns = MqueueNamespace()
        self.queues: dict[bytes, Queue] = {}
        self._lock = threading.Lock()

    def open(self, creds: Creds, umask: int, name: bytes, oflag: int, mode: int,
             attr: tuple[int, int] | None) -> int:
        """mq_open(2): a provider-side descriptor of the queue."""
        with self._lock:
            queue = self.queues.get(name)
            if queue is not None:
                if oflag & O_CREAT and oflag & O_EXCL:
                    raise OSError(errno.EEXIST, "queue exists")
                want = _WANT.get(oflag & O_ACCMODE)
                if want is None:
                    raise OSError(errno.EINVAL, "bad access mode")
                check(creds, queue.mode, queue.uid, queue.gid, want)
                return self.ns.open(name, oflag & ~(O_CREAT | O_EXCL), 0, None)
            mode = mode & ~umask & 0o7777
            if oflag & O_CREAT:
                self._may_create(creds, attr)
            fd = self.ns.open(name, oflag, mode, attr)
            if oflag & O_CREAT:
                self.queues[name] = Queue(creds.fsuid, creds.fsgid, mode)
            return fd

    def _may_create(self, creds: Creds, attr: tuple[int, int] | None) -> None:
        """The namespace's limits, which its helper (capable there) would
        pass: mqueue_create_attr's queues_max, mq_attr_ok's msg_max and
        msgsize_max (ENOSPC, EINVAL) unless CAP_SYS_RESOURCE."""
        if creds.capable(CAP_SYS_RESOURCE):
            return
        queues_max, msg_max, msgsize_max = self.ns.limits()
        if attr is not None and attr[0] > 0 and attr[1] > 0 \
                and (attr[0] > msg_max or attr[1] > msgsize_max):
            raise OSError(errno.EINVAL, "mq_attr above the namespace's limits")
        if len(self.queues) >= queues_max:
            raise OSError(errno.ENOSPC, "too many message queues")

    def unlink(self, creds: Creds, name: bytes) -> None:
        """mq_unlink(2)."""
        with self._lock:
            queue = self.queues.get(name)
            if queue is not None and creds.fsuid not in (queue.uid, MQUEUE_ROOT_UID) \
                    and not creds.capable(CAP_FOWNER):
                raise OSError(errno.EPERM, "sticky mqueue root: not the queue's owner")
            self.ns.unlink(name)           # names the table lacks: the kernel's answer
            self.queues.pop(name, None)

    def close(self) -> None:
        """The namespace ends, every queue with it (once no descriptor holds one)."""
        with self._lock:
            self.ns.close()
            self.queues.clear()
