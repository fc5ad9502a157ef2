"""The client's terminal during a session.

When some of lx's stdio are terminals, the instance gives the command a pty
in their place and lx relays: its terminal goes raw (the pty does the line
editing, echo and Ctrl-C/Ctrl-Z, inside the instance's session), keys go
to the pty master, output comes back, and a window resize is set on the
master, which makes the kernel send SIGWINCH inside. Without terminals the
command uses lx's own descriptors and lx only waits, forwarding the signals
it gets (SIGINT, SIGTERM, SIGHUP, SIGQUIT) to the command's process group.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import socket
import struct
import termios
import time
import tty as ttymod
from typing import Any

from lxsub.errors import EXIT_SOFTWARE, LxError
from lxsub.manager import protocol

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
DRAIN_QUIET = 0.05     # seconds without output after the exit before we stop reading
DRAIN_MAX = 1.0        # ... however much a background job still writes


def describe() -> dict[str, Any] | None:
    """Which of our stdio are terminals (None: none), and the window size.

    stdin counts only when we are in its foreground: a background `lx` must
    not take the terminal's input (or be stopped making it raw).
    """
    which = {"stdin": _foreground_tty(0), "stdout": os.isatty(1), "stderr": os.isatty(2)}
    if not any(which.values()):
        return None
    rows, cols = window_size() or (24, 80)
    return {**which, "rows": rows, "cols": cols}


def _foreground_tty(fd: int) -> bool:
    try:
        return os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False


def window_size() -> tuple[int, int] | None:
    for fd in (0, 1, 2):
        try:
            rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
        except OSError:
            continue
        if rows and cols:
            return rows, cols
    return None


def attend(conn: socket.socket, master: int | None, tty: dict[str, Any] | None) -> int:
    """Serve a started session until its exit event; returns lx's exit status."""
    forward = {s: signal.signal(s, lambda sig, _f: _send_signal(conn, sig)) for s in FORWARDED}
    resize = signal.signal(signal.SIGWINCH, lambda *_: master is not None and _copy_size(master))
    saved = None
    try:
        if master is None:
            return _wait_exit(conn)
        if tty and tty["stdin"]:
            saved = termios.tcgetattr(0)
            ttymod.setraw(0, termios.TCSANOW)
        out = 1 if tty and tty["stdout"] else 2 if tty and tty["stderr"] else 0
        return _relay(conn, master, 0 if tty and tty["stdin"] else None, out)
    finally:
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
        for s, h in forward.items():
            signal.signal(s, h)
        signal.signal(signal.SIGWINCH, resize)
        if master is not None:
            os.close(master)
        conn.close()


def _send_signal(conn: socket.socket, sig: int) -> None:
    try:
        protocol.send(conn, {"v": protocol.VERSION, "op": "signal", "signal": int(sig)})
    except OSError:
        pass


def _copy_size(master: int) -> None:
    size = window_size()
    if size:
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))


def _wait_exit(conn: socket.socket) -> int:
    while True:
        status = _exit_event(conn)
        if status is not None:
            return status


def _exit_event(conn: socket.socket) -> int | None:
    try:
        message, fds = protocol.receive(conn)
    except InterruptedError:
        return None
    except (protocol.ProtocolError, OSError) as e:
        raise LxError(f"lost the instance: {e}", EXIT_SOFTWARE) from None
    protocol.close_all(fds)
    if message is None:
        raise LxError("the instance ended before the command did (terminated, or it failed: "
                      "see $LX_HOME/manager.log)", EXIT_SOFTWARE)
    if message.get("event") == "exit":
        return int(message["status"])
    return None


def _relay(conn: socket.socket, master: int, stdin: int | None, out: int) -> int:
    poller = select.poll()
    poller.register(conn, select.POLLIN)
    poller.register(master, select.POLLIN)
    if stdin is not None:
        poller.register(stdin, select.POLLIN)
    while True:
        for fd, _ in poller.poll():
            if fd == conn.fileno():
                status = _exit_event(conn)
                if status is not None:
                    _drain(master, out)
                    return status
            elif fd == master:
                if not _copy(master, out):
                    poller.unregister(master)
            elif not _copy(stdin, master):
                poller.unregister(stdin)


def _copy(src: int, dst: int) -> bool:
    """Move what src has to dst; False at its end (EOF, or EIO: pty closed)."""
    try:
        data = os.read(src, 65536)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EINTR):
            return True
        return False
    if not data:
        return False
    _write_all(dst, data)
    return True


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except InterruptedError:
            continue


def _drain(master: int, out: int) -> None:
    """Output the command wrote just before exiting may still be on its way."""
    poller = select.poll()
    poller.register(master, select.POLLIN)
    deadline = time.monotonic() + DRAIN_MAX
    while poller.poll(int(DRAIN_QUIET * 1000)) and time.monotonic() < deadline:
        if not _copy(master, out):
            return
