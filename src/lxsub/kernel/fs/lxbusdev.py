"""The LxBus device driver: /dev/lxbus and its server ports (docs/LXBUS.md,
examples/lxbus.h).

/dev/lxbus is a misc device (major 10) with no host device behind it: it
opens as a read-only reopen of one sealed, empty memfd of the provider, so
that its ioctls (which trap) can tell it by identity. A server port is a
host listening AF_UNIX SOCK_SEQPACKET socket (lxbus/bus.py).

Its requests trap by user-notify (kernel/table.py takes REQUESTS from here)
and reach the open file's own ioctl (kernel/syscalls/ioctl.py): the device's
(LxBusDevice.ioctl: register a server, connect) or a host socket's
(port_ioctl: wait for a connection). The answer is a new descriptor (a
server port or a message port) installed in the caller; waiting for a
connection and connecting finish on a worker thread, so the provider's loop
never waits for a peer.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import socket
import stat as st
import struct
import threading
import time
from typing import TYPE_CHECKING

from lxsub.kernel.call import Blocking, NewFd
from lxsub.kernel.fs import devices
from lxsub.kernel.vfs.pseudo import Device

if TYPE_CHECKING:
    from lxsub.kernel.call import Call


def _IOW(kind: str, nr: int, size: int) -> int:
    return (1 << 30) | (size << 16) | (ord(kind) << 8) | nr


# struct lxbus_name { char name[64]; uint32_t flags; uint32_t reserved; }
LXBUS_NAME = struct.Struct("<64sII")
LXBUS_CLOEXEC = 1
LXBUS_REGISTER_SERVER = _IOW("L", 0xB1, LXBUS_NAME.size)     # 0x40484cb1
LXBUS_CONNECT = _IOW("L", 0xB2, LXBUS_NAME.size)             # 0x40484cb2
LXBUS_WAIT_FOR_CONNECTION = _IOW("L", 0xB3, 4)               # 0x40044cb3 (uint32_t flags)
REQUESTS = (LXBUS_REGISTER_SERVER, LXBUS_CONNECT, LXBUS_WAIT_FOR_CONNECTION)
_POLL_MS = 200           # how often a waiting worker checks that its caller still waits

RDEV = devices.LXBUS_RDEV

# -- the device's open file: one sealed, empty memfd ------------------------------

_object_fd: int | None = None
_object_id: tuple[int, int] | None = None


def _object() -> int:
    global _object_fd, _object_id
    if _object_fd is None:
        fd = os.memfd_create("lxbus", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK
                    | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
        s = os.fstat(fd)
        _object_fd, _object_id = fd, (s.st_dev, s.st_ino)
    return _object_fd


def open_device() -> int:
    """A new open file of /dev/lxbus (whatever node of major 10, minor 250 opened it)."""
    return os.open(f"/proc/self/fd/{_object()}", os.O_RDONLY | os.O_CLOEXEC)


def is_device(s: os.stat_result) -> bool:
    """Whether a host object (its fstat) is an open /dev/lxbus."""
    return _object_id is not None and (s.st_dev, s.st_ino) == _object_id


class LxBusDevice(Device):
    """/dev/lxbus in DevFs: any user of the instance may open it."""

    def __init__(self, path: str) -> None:
        super().__init__(path, st.S_IFCHR, RDEV, 0o666)

    def ioctl(self, c: "Call", cmd: int, fd: int):
        if cmd not in (LXBUS_REGISTER_SERVER, LXBUS_CONNECT):
            raise OSError(errno.ENOTTY, "not an LxBus device request")
        return device_ioctl(c, cmd)


def host_object_ioctl(c: "Call", cmd: int, fd: int, s: os.stat_result):
    """The ioctl of a host object (no file system of the instance claims it):
    /dev/lxbus's memfd where no DevFs is mounted, or a server port."""
    if is_device(s):
        if cmd not in (LXBUS_REGISTER_SERVER, LXBUS_CONNECT):
            raise OSError(errno.ENOTTY, "not an LxBus device request")
        return device_ioctl(c, cmd)
    if st.S_ISSOCK(s.st_mode) and cmd == LXBUS_WAIT_FOR_CONNECTION:
        return _wait_for_connection(c, os.dup(fd))      # the wait owns its copy
    raise OSError(errno.ENOTTY, "inappropriate ioctl for device")


# -- register a server, connect ------------------------------------------------------

def device_ioctl(c: "Call", cmd: int):
    raw, flags, reserved = LXBUS_NAME.unpack(c.read(c.ptr(2), LXBUS_NAME.size))
    if b"\0" not in raw or flags & ~LXBUS_CLOEXEC or reserved:
        raise OSError(errno.EINVAL, "bad struct lxbus_name")
    name = raw.split(b"\0", 1)[0]
    from lxsub.lxbus import bus
    bus.check_name(name)
    cloexec = bool(flags & LXBUS_CLOEXEC)
    distro = c.inst.name
    if cmd == LXBUS_REGISTER_SERVER:
        def register():
            sock, _path = bus.register(distro, name)
            return NewFd(sock.detach(), cloexec)
        return _blocking(c, register)
    return _connect(c, distro, name, cloexec)


def _blocking(c: "Call", work) -> Blocking:
    """Off the provider's loop (the bus lock, a peer's backlog), with
    host errors that are not Linux ones (LxError: no runtime dir) as EIO."""
    def run():
        from lxsub.errors import LxError
        try:
            return work()
        except LxError as e:
            c.inst.log.warn(f"lxbus: {e.message}")
            raise OSError(errno.EIO, e.message) from None
    return Blocking(run)


def _connect(c: "Call", distro: str, name: bytes, cloexec: bool) -> Blocking:
    from lxsub.lxbus import bus
    job: Blocking

    def work():
        while True:
            try:
                sock = bus.connect(distro, name, blocking=False)
                return NewFd(sock.detach(), cloexec)
            except BlockingIOError:          # the server's backlog is full: wait
                if job.still_wanted is not None and not job.still_wanted():
                    raise OSError(errno.EINTR, "interrupted") from None
                time.sleep(_POLL_MS / 1000)
    job = _blocking(c, work)
    return job


# -- wait for a connection on a server port -------------------------------------------

class _ServerState:
    """Per server port (by socket inode): one worker accepts at a time (the
    others would block in accept(2) once the first took the connection), and
    a connection accepted for a caller that a signal took away meanwhile is
    kept for the next wait instead of being lost."""
    __slots__ = ("lock", "users", "kept")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.kept: list[socket.socket] = []


_servers: dict[tuple[int, int], _ServerState] = {}
_servers_lock = threading.Lock()
_MAX_KEPT = 16


def _server_state(key: tuple[int, int]) -> _ServerState:
    with _servers_lock:
        state = _servers.setdefault(key, _ServerState())
        state.users += 1
        return state


def _server_done(key: tuple[int, int], state: _ServerState) -> None:
    with _servers_lock:
        state.users -= 1
        if state.users == 0 and not state.kept:
            _servers.pop(key, None)


def _wait_for_connection(c: "Call", local: int) -> Blocking:
    """Accept on the caller's server port (any listening AF_UNIX SEQPACKET
    socket it holds): a connection from our own host user becomes the result."""
    try:
        sock = socket.socket(fileno=local)
    except OSError:
        os.close(local)
        raise OSError(errno.ENOTTY, "not an LxBus server port") from None
    try:
        ok = (sock.family == socket.AF_UNIX and sock.type == socket.SOCK_SEQPACKET
              and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
        if not ok:
            raise OSError(errno.ENOTTY, "not an LxBus server port")
        (flags,) = struct.unpack("<I", c.read(c.ptr(2), 4))
        if flags & ~LXBUS_CLOEXEC:
            raise OSError(errno.EINVAL, "bad flags")
        s = os.fstat(local)
    except BaseException:
        sock.close()
        raise
    cloexec = bool(flags & LXBUS_CLOEXEC)
    log = c.inst.log
    key = (s.st_dev, s.st_ino)
    job: Blocking

    def wanted() -> bool:
        return job.still_wanted is None or job.still_wanted()

    def work():
        from lxsub.lxbus import bus
        state = _server_state(key)
        try:
            while not state.lock.acquire(timeout=_POLL_MS / 1000):
                if not wanted():
                    raise OSError(errno.EINTR, "interrupted")
            try:
                return _accept_loop(bus, state)
            finally:
                state.lock.release()
        finally:
            sock.close()
            _server_done(key, state)

    def _accept_loop(bus, state: _ServerState):
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        while True:
            if not wanted():
                raise OSError(errno.EINTR, "interrupted")
            if state.kept:
                conn = state.kept.pop(0)
            else:
                if not poller.poll(_POLL_MS):
                    continue
                try:
                    conn = bus.accept(sock)
                except (BlockingIOError, InterruptedError):
                    continue                 # the program accepted it itself
                if conn is None:
                    log.warn("lxbus: refused a connection from another host user")
                    continue
            if not wanted():                 # interrupted while we accepted
                if len(state.kept) < _MAX_KEPT:
                    state.kept.append(conn)
                else:
                    conn.close()
                raise OSError(errno.EINTR, "interrupted")
            return NewFd(conn.detach(), cloexec)
    job = Blocking(work)
    return job
