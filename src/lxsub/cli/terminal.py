"""The client's terminal during a session.

When some of lx's stdio are terminals, the instance gives the command a pty
in their place and lx relays: its terminal goes raw (the pty does the line
editing, echo and Ctrl-C/Ctrl-Z, inside the instance's session), keys go
to the pty master, output comes back, and a window resize is set on the
master, which makes the kernel send SIGWINCH inside. Without terminals the
command uses lx's own descriptors and lx only waits, forwarding the signals
it gets (SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGTSTP) to the command's
process group.

As `ssh` without -t, lx takes its terminal's input (raw mode, a pty) only
when its output goes to a terminal too: in `lx -- seq 3 | cat` the next
command of the pipeline writes to the same terminal, which must keep its
usual output processing (a raw terminal prints a staircase).

Job control: when the command's leading process stops (Ctrl-Z in the pty,
or the SIGTSTP lx forwards), the instance says so and lx stops itself the
same way, its terminal given back in its own mode, so that the host shell
takes over; `fg` continues lx, which continues the command.
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

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGTSTP)
ENDED = {"terminate": "lx --terminate ended the instance", "shutdown": "lx --shutdown ended the instance",
         "signal": "the instance was ended by a signal"}
EXIT_ENDED = 128 + signal.SIGKILL    # the command was killed, as its status would say
DRAIN_QUIET = 0.05     # seconds without output after the exit before we stop reading
DRAIN_MAX = 1.0        # ... however much a background job still writes


def describe() -> dict[str, Any] | None:
    """Which of our stdio are terminals (None: none), and the window size.

    stdin counts only when we are in its foreground: a background `lx` must
    not take the terminal's input (or be stopped making it raw).
    """
    which = {"stdin": _foreground_tty(0), "stdout": os.isatty(1), "stderr": os.isatty(2)}
    if which["stdin"] and not which["stdout"]:
        # ssh without -t: no pty, the terminal keeps its mode (see above).
        return None
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
    mode = _TerminalMode(bool(tty and tty["stdin"]))
    try:
        if master is None:
            return _wait_exit(conn)
        mode.take()
        out = 1 if tty and tty["stdout"] else 2 if tty and tty["stderr"] else 0
        return _relay(conn, master, 0 if mode.raw else None, out, mode)
    finally:
        mode.give_back()
        for s, h in forward.items():
            signal.signal(s, h)
        signal.signal(signal.SIGWINCH, resize)
        if master is not None:
            os.close(master)
        conn.close()


class _TerminalMode:
    """lx's terminal in raw mode while it relays keys to the pty."""

    def __init__(self, raw: bool) -> None:
        self.raw = raw
        self.saved: list | None = None

    def take(self) -> None:
        if self.raw and self.saved is None and _foreground_tty(0):
            self.saved = termios.tcgetattr(0)
            ttymod.setraw(0, termios.TCSANOW)

    def give_back(self) -> None:
        if self.saved is not None:
            try:
                termios.tcsetattr(0, termios.TCSADRAIN, self.saved)
            except termios.error:
                pass
            self.saved = None


def _suspend(conn: socket.socket, sig: int, mode: _TerminalMode | None, master: int | None) -> None:
    """The command stopped: stop lx too (its shell takes the terminal back);
    when lx is continued, continue the command."""
    if mode is not None:
        mode.give_back()
    stop = sig if sig in (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU) else signal.SIGSTOP
    previous = signal.signal(stop, signal.SIG_DFL) if stop != signal.SIGSTOP else None
    try:
        os.kill(os.getpid(), stop)        # returns once lx is continued (SIGCONT)
    finally:
        if previous is not None:
            signal.signal(stop, previous)
    if mode is not None:
        mode.take()
    if master is not None:
        _copy_size(master)
    _send_signal(conn, signal.SIGCONT)


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
        status = _exit_event(conn, None, None)
        if status is not None:
            return status


def _exit_event(conn: socket.socket, mode: _TerminalMode | None, master: int | None) -> int | None:
    """Handle the instance's next event; the exit status when it is the exit."""
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
    event = message.get("event")
    if event == "exit":
        return int(message["status"])
    if event == "stopped":
        _suspend(conn, int(message.get("signal", signal.SIGTSTP)), mode, master)
    elif event == "ended":
        if mode is not None:
            mode.give_back()
        raise LxError(ENDED.get(message.get("reason"), "the instance was ended")
                      + "; the command was killed", EXIT_ENDED)
    return None


def _relay(conn: socket.socket, master: int, stdin: int | None, out: int,
           mode: _TerminalMode) -> int:
    poller = select.poll()
    poller.register(conn, select.POLLIN)
    poller.register(master, select.POLLIN)
    if stdin is not None:
        poller.register(stdin, select.POLLIN)
    while True:
        for fd, _ in poller.poll():
            if fd == conn.fileno():
                status = _exit_event(conn, mode, master)
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
