"""The host side of LxBus: server ports and message ports on a distro's bus.

    server = lxbus.register_server("deb", "demo")    # before or while it runs
    port = server.accept()                            # a Linux program connected
    port.send(b"hello", fds=[w])                      # bytes and descriptors
    data, fds = port.recv()

    port = lxbus.connect("deb", "svc", wait=5)        # a Linux program's server

A bus belongs to a registered distro, under the manager's runtime
directory of this LX_HOME, so the API runs as the distro's own host user
with the same LX_HOME (and XDG_RUNTIME_DIR) as `lx`. Registering a server
does not need a running instance: the server waits until a Linux program
of the distro (started with `lx -d NAME ...`, which starts the instance)
connects. Connecting needs a Linux program that registered the name, hence
a running instance; `wait=` gives it time to come up.

Every failure is an `LxBusError` (an OSError with the errno) whose message
names the distro and the port; `NoSuchServer` (ENOENT) when no server holds
the name.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from typing import Iterable

from lxsub.errors import EXIT_UNAVAILABLE, LxError
from lxsub.lxbus import bus

MAX_MESSAGE = 1 << 18     # the largest message recv() takes (SEQPACKET: one send)
MAX_FDS = 64              # descriptors per message (the kernel's SCM_MAX_FD is 253)


class LxBusError(OSError):
    """An LxBus operation failed; str() is the whole explanation."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(err, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class NoSuchServer(LxBusError):
    """No server port of that name is registered on the distro's bus."""


def _name_bytes(name: str | bytes) -> bytes:
    return name.encode() if isinstance(name, str) else bytes(name)


def _check_distro(distro: str) -> None:
    from lxsub.state import Registry, lx_home
    try:
        Registry(lx_home()).get(distro)
    except LxError as e:      # no such distro (or an unreadable registry)
        if e.exit_code == EXIT_UNAVAILABLE:
            raise LxBusError(errno.ENOENT, f"lxbus: {e.message}") from None
        raise LxBusError(errno.EACCES, f"lxbus: cannot reach the bus of distro {distro!r}: "
                         f"{e.message}") from None
    except OSError as e:      # another user's LX_HOME
        raise LxBusError(e.errno or errno.EACCES, f"lxbus: cannot reach the bus of distro "
                         f"{distro!r}: cannot read its registry in {lx_home()}: "
                         f"{e.strerror}") from None


def _fail(e: OSError, distro: str, name: bytes, doing: str) -> LxBusError:
    shown = name.decode(errors="replace")
    err = e.errno or errno.EIO
    if err == errno.ENOENT:
        try:
            running = bus.instance_running(distro)
        except (OSError, LxError):
            running = None
        hint = {True: "no Linux program of it has registered that name",
                False: "its instance is not running, so no Linux program serves it",
                None: "no Linux program of it has registered that name"}[running]
        return NoSuchServer(err, f"lxbus: no server port {shown!r} on distro {distro!r} ({hint})")
    if err == errno.EADDRINUSE:
        return LxBusError(err, f"lxbus: port {shown!r} on distro {distro!r} is already "
                               "registered by a running server")
    if err == errno.EACCES:
        return LxBusError(err, f"lxbus: port {shown!r} on distro {distro!r} belongs to "
                               "another host user")
    if err == errno.EINVAL:
        return LxBusError(err, f"lxbus: bad port name {shown!r}: {e.strerror}")
    return LxBusError(err, f"lxbus: cannot {doing} port {shown!r} on distro {distro!r}: "
                           f"{os.strerror(err)}")


def _lx_error(e: LxError, distro: str) -> LxBusError:
    # The runtime directory is not ours (another host user's LX_HOME), or cannot be made.
    return LxBusError(errno.EACCES, f"lxbus: cannot reach the bus of distro {distro!r}: {e.message}")


class Port:
    """A message port: one end of a connection. Messages keep their
    boundaries; each carries bytes (at least one) and maybe descriptors."""

    def __init__(self, sock: socket.socket, distro: str, name: bytes) -> None:
        self.sock = sock
        self.distro = distro
        self.name = name

    def fileno(self) -> int:
        return self.sock.fileno()

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def send(self, data: bytes, fds: Iterable[int] = ()) -> None:
        """Send one message; the descriptors are duplicated into the receiver
        (ours stay open)."""
        data = bytes(data)
        if not data:
            raise ValueError("an LxBus message has at least one byte (an empty one reads as the end)")
        fds = [int(f) for f in fds]
        try:
            sent = socket.send_fds(self.sock, [data], fds) if fds else self.sock.send(data)
        except OSError as e:
            raise _fail(e, self.distro, self.name, "send on") from None
        if sent != len(data):      # SEQPACKET sends whole messages or fails
            raise LxBusError(errno.EMSGSIZE, "lxbus: message cut short")

    def recv(self) -> tuple[bytes, list[int]]:
        """The next message and the descriptors it carried (now ours to close).
        (b'', []) once the other side has closed its port."""
        try:
            data, fds, flags, _ = socket.recv_fds(self.sock, MAX_MESSAGE, MAX_FDS)
        except OSError as e:
            if isinstance(e, (socket.timeout, BlockingIOError)):
                raise
            if e.errno == errno.ECONNRESET:
                return b"", []
            raise _fail(e, self.distro, self.name, "receive on") from None
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            for fd in fds:
                os.close(fd)
            raise LxBusError(errno.EMSGSIZE, f"lxbus: a message on port "
                             f"{self.name.decode(errors='replace')!r} was larger than "
                             f"{MAX_MESSAGE} bytes or carried more than {MAX_FDS} descriptors")
        return data, fds

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Port":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<lxbus.Port {self.name.decode(errors='replace')!r} of {self.distro!r}>"


class Server:
    """A registered server port; closing it unregisters the name."""

    def __init__(self, sock: socket.socket, path: str, distro: str, name: bytes) -> None:
        self.sock = sock
        self.path = path
        self.distro = distro
        self.name = name

    def fileno(self) -> int:
        return self.sock.fileno()

    def accept(self, timeout: float | None = None) -> Port:
        """Wait for a connection (from a Linux program of the distro, or a
        host process of the same user); other users' connections are closed
        unseen. socket.timeout (TimeoutError) after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                raise TimeoutError(f"lxbus: no connection to port "
                                   f"{self.name.decode(errors='replace')!r} within {timeout} s")
            try:
                conn = bus.accept(self.sock)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as e:
                raise _fail(e, self.distro, self.name, "accept on") from None
            if conn is not None:
                return Port(conn, self.distro, self.name)

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self.sock.close()
            bus.unregister(self.path)

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<lxbus.Server {self.name.decode(errors='replace')!r} of {self.distro!r}>"


def register_server(distro: str, name: str | bytes) -> Server:
    """Register `name` as a server port on the distro's bus."""
    raw = _name_bytes(name)
    _check_distro(distro)
    try:
        sock, path = bus.register(distro, raw)
    except LxError as e:
        raise _lx_error(e, distro) from None
    except OSError as e:
        raise _fail(e, distro, raw, "register") from None
    sock.setblocking(False)
    return Server(sock, path, distro, raw)


def connect(distro: str, name: str | bytes, wait: float = 0.0) -> Port:
    """A message port to the server registered as `name` on the distro's
    bus; waits up to `wait` seconds for the name to be registered."""
    raw = _name_bytes(name)
    _check_distro(distro)
    deadline = time.monotonic() + wait
    while True:
        try:
            return Port(bus.connect(distro, raw), distro, raw)
        except LxError as e:
            raise _lx_error(e, distro) from None
        except OSError as e:
            if e.errno == errno.ENOENT and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            raise _fail(e, distro, raw, "connect to") from None
