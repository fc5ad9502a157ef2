"""LxBus plumbing shared by the host API and the provider's /dev/lxbus.

A distro's bus is a private directory (mode 0700, its host user's):
`<runtime dir>/bus/<digest of the distro name>/` under the manager's
runtime directory (see lxsub/runtime.py). A *server port* is a listening
Unix SOCK_SEQPACKET socket in it, its file named by a digest of the port
name; a *message port* is one end of a connection to it. SEQPACKET keeps
message boundaries, and SCM_RIGHTS carries descriptors, natively on both
sides.

Who may use a bus: the directory lets only its owner (and root) in, and
both ends check the other's SO_PEERCRED uid, so a root process that
passes the directory's mode is still refused.

A server's file outlives a server that died or closed without removing it
(a Linux program's server port, whose close the provider does not see):
such a file has no listening socket bound to it (/proc/net/unix says), is
treated as "not registered" and is replaced by the next registration. The
check and the replacement run under an flock on `<bus>/.lock`.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import socket
import struct
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lxsub import runtime

NAME_MAX = 63            # bytes of a port name (the C struct holds 64 with the NUL)
BACKLOG = 64
_PEERCRED = struct.Struct("3i")
_SO_ACCEPTCON = 0x00010000   # /proc/net/unix Flags of a listening socket


def check_name(name: bytes) -> None:
    if not name or len(name) > NAME_MAX or b"\0" in name:
        raise OSError(errno.EINVAL, f"an LxBus port name is 1 to {NAME_MAX} bytes without NUL")


def bus_dir(distro: str) -> Path:
    """The distro's private bus directory (created, mode 0700, must be ours)."""
    bus = runtime.bus_root()
    # Short digests: the socket paths must fit in sockaddr_un (lxsub/runtime.py
    # guarantees 39 bytes below the runtime directory; this takes 35).
    return runtime.private_dir(bus / hashlib.sha256(distro.encode()).hexdigest()[:12])


def port_path(bus: Path, name: bytes) -> str:
    return str(bus / (hashlib.sha256(name).hexdigest()[:16] + ".s"))


@contextmanager
def locked(bus: Path) -> Iterator[None]:
    fd = os.open(bus / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def listening(path: str) -> bool:
    """Whether a listening Unix socket is bound at path (in our network namespace)."""
    try:
        with open("/proc/net/unix", "rb") as f:
            next(f, None)
            want = os.fsencode(path)
            for line in f:
                fields = line.split(None, 7)
                if (len(fields) == 8 and fields[7].rstrip(b"\n") == want
                        and int(fields[3], 16) & _SO_ACCEPTCON):
                    return True
    except OSError:
        return True          # cannot tell: never replace what may be alive
    return False


def instance_running(distro: str) -> bool:
    """Whether the distro's instance runs: it listens on its socket for its
    whole life (manager/daemon.py), so the socket table says, without
    asking the manager (lxbus sits below it)."""
    return listening(str(runtime.instance_socket(distro)))


def peer_uid(sock: socket.socket) -> int:
    _pid, uid, _gid = _PEERCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    return uid


def register(distro: str, name: bytes) -> tuple[socket.socket, str]:
    """A listening server port for `name` on the distro's bus, and its path.
    EADDRINUSE when a live server holds the name."""
    check_name(name)
    bus = bus_dir(distro)
    path = port_path(bus, name)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        with locked(bus):
            try:
                sock.bind(path)
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    raise
                if listening(path):
                    raise OSError(errno.EADDRINUSE, "the name is registered") from None
                os.unlink(path)          # a dead server's file
                sock.bind(path)
            sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock, path


def unregister(path: str) -> None:
    """Remove a closed server's file unless someone registered the name again."""
    bus = Path(path).parent
    try:
        with locked(bus):
            if not listening(path):
                os.unlink(path)
    except OSError:
        pass


def connect(distro: str, name: bytes, blocking: bool = True) -> socket.socket:
    """A message port connected to the server registered as `name`.
    ENOENT when none is; EACCES when its server is another host user's;
    EAGAIN (blocking=False) when its backlog is full."""
    check_name(name)
    bus = bus_dir(distro)
    path = port_path(bus, name)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        sock.setblocking(blocking)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            if isinstance(e, ConnectionRefusedError):
                unregister(path)         # a dead server's file: clear it away
            raise OSError(errno.ENOENT, "no server port of that name") from None
        sock.setblocking(True)
        if peer_uid(sock) != os.getuid():
            raise OSError(errno.EACCES, "the server port belongs to another host user")
    except BaseException:
        sock.close()
        raise
    return sock


def accept(server: socket.socket) -> socket.socket | None:
    """One connection from the server port's backlog, if it is from our
    own host user; None (connection closed) for anyone else's."""
    conn, _ = server.accept()
    conn.setblocking(True)
    if peer_uid(conn) != os.getuid():
        conn.close()
        return None
    return conn
