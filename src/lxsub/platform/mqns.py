"""An instance's own POSIX message queues: a helper in a private IPC namespace.

Linux keeps message queues per IPC namespace (mq_overview(7): each IPC
namespace has its own mqueue file system, ipc/mqueue.c finds a name in
`current->nsproxy->ipc_ns`). A pico process stays in the host's IPC
namespace (joining another needs CAP_SYS_ADMIN over it), so its
`mq_open`/`mq_unlink` are made by a helper process, forked by the provider
into a new user and IPC namespace, which answers with the queue's
descriptor (SCM_RIGHTS). Everything after the open (`mq_timedsend`,
`mq_timedreceive`, `mq_notify`, `mq_getsetattr`) works on that descriptor
natively, whatever namespace the caller is in. No host process finds the
instance's queues by name, the instance finds none of the host's, and the
namespace, with every queue in it, is freed when the helper and the last
descriptor of the instance are gone.

The helper is root-equivalent in its namespace (it passes every permission
check there); the Linux owners, modes and limits are the provider's
(kernel/mqueue.py).
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import struct
import threading

from lxsub.abi.prctl import PR_SET_NAME, PR_SET_PDEATHSIG
from lxsub.abi.sched import CLONE_NEWIPC, CLONE_NEWUSER
from lxsub.abi.sysno import NUMBERS
from lxsub.platform import hostfd
from lxsub.platform.unixns import fork_helper, helper_reply, stop_helper, unshare_as_self

# op (0 open, 1 unlink), oflag, mode, attr given, mq_maxmsg, mq_msgsize; the name follows
_REQ = struct.Struct("<BiIBqq")
OPEN, UNLINK = 0, 1
# mq_overview(7): the limits of a namespace, read by the helper in its own.
_LIMITS = ("queues_max", "msg_max", "msgsize_max")


def _mq_call(op: int, oflag: int, mode: int, has_attr: int, maxmsg: int, msgsize: int,
             name: bytes) -> int:
    """The raw mq_open(2)/mq_unlink(2) system calls (the name without glibc's '/')."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    cname = ctypes.create_string_buffer(name)
    if op == UNLINK:
        r = libc.syscall(ctypes.c_long(NUMBERS["mq_unlink"]), cname)
    else:
        attr = (ctypes.c_long * 8)(0, maxmsg, msgsize, 0)        # struct mq_attr
        r = libc.syscall(ctypes.c_long(NUMBERS["mq_open"]), cname, ctypes.c_long(oflag),
                         ctypes.c_long(mode), attr if has_attr else None)
    if r < 0:
        raise OSError(ctypes.get_errno(), "mq")
    return r


def _limits() -> bytes:
    values = []
    for name in _LIMITS:
        with open(f"/proc/sys/fs/mqueue/{name}", "rb") as f:
            values.append(f.read().strip())
    return b" ".join(values)


def _serve(sock: socket.socket) -> None:
    """The helper's loop: one request, one answer; ends with the provider."""
    code = 1
    try:
        keep = sock.fileno()                  # none of the provider's descriptors
        hostfd.close_fds_except(keep)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        libc.prctl(PR_SET_NAME, ctypes.c_char_p(b"lx-mqueues"), 0, 0, 0)
        unshare_as_self(CLONE_NEWUSER | CLONE_NEWIPC)
        os.umask(0)                           # the provider applies the caller's
        sock.send(b"ready " + _limits())
        while True:
            req = sock.recv(_REQ.size + 4096)
            if len(req) < _REQ.size:
                break
            op, oflag, mode, has_attr, maxmsg, msgsize = _REQ.unpack_from(req)
            try:
                r = _mq_call(op, oflag, mode, has_attr, maxmsg, msgsize, req[_REQ.size:])
            except OSError as e:
                sock.send(b"err %d" % (e.errno or errno.EINVAL))
                continue
            if op == UNLINK:
                sock.send(b"ok")
                continue
            try:
                socket.send_fds(sock, [b"ok"], [r])
            finally:
                os.close(r)
        code = 0
    except BaseException:
        pass
    finally:
        os._exit(code)


class MqueueNamespace:
    """The helper as the provider sees it, started at the first use.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.helper_pid = 0
        self._limits: tuple[int, int, int] = (0, 0, 0)

    def _ensure(self) -> socket.socket:
        if self._sock is None:
            self.helper_pid, parent = fork_helper(_serve)
            ready = parent.recv(256).split()
            if len(ready) != 4 or ready[0] != b"ready":
                parent.close()
                self.close()
                raise OSError(errno.ENOSYS, "no private IPC namespace for message queues")
            self._limits = tuple(int(v) for v in ready[1:])     # type: ignore[assignment]
            self._sock = parent
        return self._sock

    def limits(self) -> tuple[int, int, int]:
        """The namespace's queues_max, msg_max and msgsize_max."""
        with self._lock:
            self._ensure()
            return self._limits

    def open(self, name: bytes, oflag: int, mode: int, attr: tuple[int, int] | None) -> int:
        """mq_open(2) in the namespace: a provider-side descriptor."""
        with self._lock:
            sock = self._ensure()
            maxmsg, msgsize = attr or (0, 0)
            sock.send(_REQ.pack(OPEN, oflag, mode, attr is not None, maxmsg, msgsize) + name)
            msg, fds, _, _ = socket.recv_fds(sock, 64, 1)
        return helper_reply(msg, fds, 1, OSError(errno.ENOMEM, "the mqueue helper has gone"))[0]

    def unlink(self, name: bytes) -> None:
        with self._lock:
            sock = self._ensure()
            sock.send(_REQ.pack(UNLINK, 0, 0, 0, 0, 0) + name)
            msg = sock.recv(64)
        helper_reply(msg, [], 0, OSError(errno.ENOMEM, "the mqueue helper has gone"))

    def close(self) -> None:
        """The helper ends: with it its namespace and, once no descriptor
        holds one, every queue in it."""
        stop_helper(self._sock, self.helper_pid)
        self._sock, self.helper_pid = None, 0
