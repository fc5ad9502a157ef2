"""<sys/ioctl.h>: the terminal and socket requests that carry process ids,
and the LxBus requests of /dev/lxbus.

The process-id requests must run in the caller (a terminal checks that it
is the caller's controlling one), so the id is rewritten into a copy below
the caller's stack and the request runs natively; ids coming back are
translated.

The LxBus requests (docs/LXBUS.md, examples/lxbus.h) trap by user-notify:
the answer is a new descriptor (a server port or a message port) installed
in the caller; waiting for a connection and connecting finish on a worker
thread, so the provider's loop never waits for a peer.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import threading
import time

from lxsub.kernel.call import Blocking, Call, Native, NewFd
from lxsub.platform import memory

TIOCGPGRP, TIOCSPGRP, TIOCGSID = 0x540F, 0x5410, 0x5429
FIOSETOWN, SIOCSPGRP, FIOGETOWN, SIOCGPGRP = 0x8901, 0x8902, 0x8903, 0x8904
TIOCSTI = 0x5412

SETTERS = (TIOCSPGRP, FIOSETOWN, SIOCSPGRP)
GETTERS = (TIOCGPGRP, TIOCGSID, FIOGETOWN, SIOCGPGRP)
TRAPPED = SETTERS + GETTERS


def _IOW(kind: str, nr: int, size: int) -> int:
    return (1 << 30) | (size << 16) | (ord(kind) << 8) | nr


# struct lxbus_name { char name[64]; uint32_t flags; uint32_t reserved; }
LXBUS_NAME = struct.Struct("<64sII")
LXBUS_CLOEXEC = 1
LXBUS_REGISTER_SERVER = _IOW("L", 0xB1, LXBUS_NAME.size)     # 0x40484cb1
LXBUS_CONNECT = _IOW("L", 0xB2, LXBUS_NAME.size)             # 0x40484cb2
LXBUS_WAIT_FOR_CONNECTION = _IOW("L", 0xB3, 4)               # 0x40044cb3 (uint32_t flags)
LXBUS_REQUESTS = (LXBUS_REGISTER_SERVER, LXBUS_CONNECT, LXBUS_WAIT_FOR_CONNECTION)
_POLL_MS = 200           # how often a waiting worker checks that its caller still waits


def sys_ioctl(c: Call):
    cmd = c.uint(1)
    if cmd in LXBUS_REQUESTS:
        return _lxbus(c, cmd)
    if cmd in SETTERS:
        return _set_id(c, cmd)
    if cmd in GETTERS:
        return _get_id(c)
    raise OSError(errno.EINVAL, "unexpected ioctl")


def _set_id(c: Call, cmd: int) -> Native:
    vid = struct.unpack("<i", c.read(c.ptr(2), 4))[0]
    pids = c.inst.pids
    if cmd == TIOCSPGRP:
        if vid < 0:
            raise OSError(errno.EINVAL, "bad process group")
        host = pids.group_to_host(vid)
    elif vid < 0:                     # FIOSETOWN/SIOCSPGRP: negative is a group
        g = pids.group_to_host(-vid)
        host = -g if g is not None else None
    else:
        host = pids.host_of_vpid(vid) if vid else 0
    if host is None:
        raise OSError(errno.ESRCH if cmd != TIOCSPGRP else errno.EPERM, "no such process")
    regs = c.regs
    assert regs is not None
    (addr,) = memory.write_below_sp(c.pid, regs.rsp, [struct.pack("<i", host)])
    c.set_arg(2, addr)
    return Native()


def _get_id(c: Call) -> Native:
    pid, addr, pids = c.pid, c.ptr(2), c.inst.pids

    def translate(result: int):
        if result == 0:
            host = struct.unpack("<i", memory.read(pid, addr, 4))[0]
            v = pids.group_to_virtual(host) if host > 0 else -pids.group_to_virtual(-host)
            memory.write(pid, addr, struct.pack("<i", v))
        return None
    return Native(on_exit=translate)


# -- LxBus ------------------------------------------------------------------------

def _lxbus(c: Call, cmd: int):
    from lxsub.kernel.vfs import lookup
    local = lookup.copy_fd(c.task, c.int(0))
    if cmd == LXBUS_WAIT_FOR_CONNECTION:
        return _wait_for_connection(c, local)      # owns local
    try:
        _check_lxbus_device(local)
    finally:
        os.close(local)
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


def _check_lxbus_device(local: int) -> None:
    from lxsub.kernel.fs import devices
    if not devices.is_lxbus(os.fstat(local)):
        raise OSError(errno.ENOTTY, "not /dev/lxbus")


def _blocking(c: Call, work) -> Blocking:
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


def _connect(c: Call, distro: str, name: bytes, cloexec: bool) -> Blocking:
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


def _wait_for_connection(c: Call, local: int) -> Blocking:
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
        st = os.fstat(local)
    except BaseException:
        sock.close()
        raise
    cloexec = bool(flags & LXBUS_CLOEXEC)
    log = c.inst.log
    key = (st.st_dev, st.st_ino)
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
