"""The `lx` side of the manager protocol: find (or start) the manager, ask it.

Kept light on purpose: `lx` imports this and the terminal code only, never
the kernel, so starting a command costs a connection, not a provider.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator

import lxsub
from lxsub.errors import EXIT_OSFILE, EXIT_SOFTWARE, EXIT_UNAVAILABLE, LxError
from lxsub.manager import paths, protocol
from lxsub.manager.protocol import ProtocolError

START_TIMEOUT = 20.0


class ManagerGone(LxError):
    """The manager closed the connection without answering."""


def connect(start: bool = True) -> socket.socket | None:
    """A connection to the manager; started first when it is not running
    (None when it is not running and start is False).

    Many `lx` may find no manager at the same moment (a job array's tasks
    starting together): they queue on an flock of the runtime directory's
    start.lock, and whoever holds it looks again and, only if no manager
    answers still, starts one and waits until it listens. So one manager
    is started, and nobody decides by whether a socket file exists (a
    killed manager's file stays behind; the lock dies with its holder)."""
    path = str(paths.manager_socket())
    sock = _connect(path)
    if sock is not None or not start:
        return sock
    deadline = time.monotonic() + START_TIMEOUT
    with _start_lock(deadline):
        while True:
            sock = _connect(path)
            if sock is not None:
                return sock
            if time.monotonic() > deadline:
                raise LxError(f"the lx manager did not start (see {paths.runtime_dir()} and "
                              "$LX_HOME/manager.log)", EXIT_UNAVAILABLE)
            if not _start_manager():
                time.sleep(0.05)   # a manager that is exiting still holds its lock


def _connect(path: str) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.connect(path)
        return sock
    except (FileNotFoundError, ConnectionRefusedError):
        # No file, or a file no socket listens on (its manager was killed).
        sock.close()
        return None


@contextmanager
def _start_lock(deadline: float) -> Iterator[None]:
    """The right to start the manager (flock(2) on start.lock, released when
    we are done or die). Polled, so that a holder that hangs (stopped) costs
    the others an error at the deadline, not a hang."""
    fd = os.open(paths.start_lock(), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LxError(f"another lx has been starting the manager for {START_TIMEOUT:g} s "
                                  f"and holds {paths.start_lock()}; see $LX_HOME/manager.log",
                                  EXIT_UNAVAILABLE) from None
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)


def _start_manager() -> bool:
    """Start the manager detached from us; True once it listens, False if it
    exited at once because another manager holds the manager lock."""
    import subprocess      # only to start the manager: not on a launch's path
    python = manager_interpreter()
    ready_r, ready_w = os.pipe()
    try:
        proc = subprocess.Popen(
            [python, "-m", "lxsub.manager.daemon", "--ready-fd", str(ready_w)],
            pass_fds=(ready_w,), start_new_session=True, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd="/", env=_manager_env())
    finally:
        os.close(ready_w)
    with os.fdopen(ready_r, "rb") as ready:
        is_ready = ready.read(1) == b"1"
    if is_ready:
        proc.stderr.close()
        return True
    # It exited without getting ready: another manager has the lock (one
    # that is exiting: the caller tries again), or it failed.
    err = proc.stderr.read().decode(errors="replace").strip()
    proc.stderr.close()
    code = proc.wait()
    if code != 0:
        raise LxError(err.splitlines()[-1].removeprefix("lx: ") if err else
                      f"the lx manager failed to start (exit status {code})", code or EXIT_SOFTWARE)
    return False


def manager_interpreter() -> str:
    """The Python that runs the manager: ours, once checked that this user may
    execute it again.  A Python under a directory the user cannot search (a
    pyenv build under a 0700 /root, started by a tool that had the rights)
    runs this client but cannot start a second interpreter."""
    tried = []
    for candidate in (sys.executable, getattr(sys, "_base_executable", ""),
                      os.path.realpath(sys.executable) if sys.executable else ""):
        if not candidate or candidate in tried:
            continue
        tried.append(candidate)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    where = " or ".join(tried) or "its path is unknown"
    raise LxError(f"cannot start the lx manager: this Python ({where}) cannot be executed "
                  f"again by uid {os.getuid()} (is a directory above it private?); run lx "
                  "with a Python this user can execute, e.g. /usr/bin/python3 -m lxsub",
                  EXIT_OSFILE)


def _manager_env() -> dict[str, str]:
    """Our environment, with our own lxsub first on the path: the manager
    runs the same code as the client that starts it."""
    env = dict(os.environ)
    here = os.path.dirname(os.path.dirname(os.path.abspath(lxsub.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    return env


def request(op: str, start: bool = True, **fields: Any) -> dict[str, Any] | None:
    """One request and its reply; LxError for an error reply. None when the
    manager is not running and start is False."""
    sock = connect(start)
    if sock is None:
        return None
    with sock:
        protocol.send(sock, {"v": protocol.VERSION, "op": op, **fields})
        reply, fds = _receive(sock)
        protocol.close_all(fds)
    return reply


def running_distros() -> set[str]:
    """Distros with a running instance (asks the manager only if it runs)."""
    reply = request("status", start=False)
    return {i["distro"] for i in reply["instances"]} if reply else set()


def shutdown() -> bool:
    """Ask the manager to end every instance and itself; returns once it
    has exited (False when it was not running)."""
    sock = connect(start=False)
    if sock is None:
        return False
    with sock:
        protocol.send(sock, {"v": protocol.VERSION, "op": "shutdown"})
        _receive(sock)
        sock.settimeout(START_TIMEOUT)
        try:
            while sock.recv(protocol.MAX_MESSAGE):   # its exit closes our connection
                pass
        except OSError:
            pass
    return True


def _receive(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    try:
        reply, fds = protocol.receive(sock)
    except ProtocolError as e:
        raise LxError(f"bad reply from the lx manager: {e.message}", EXIT_SOFTWARE) from None
    if reply is None:
        raise ManagerGone("the lx manager closed the connection; see $LX_HOME/manager.log",
                      EXIT_SOFTWARE)
    check_reply(reply)
    return reply, fds


def check_reply(reply: dict[str, Any]) -> None:
    if reply.get("ok"):
        return
    err = reply.get("error") or {}
    raise LxError(str(err.get("message", "the lx manager refused")), int(err.get("exit", EXIT_SOFTWARE)))


def launch(message: dict[str, Any], stdio: tuple[int, int, int]) -> tuple[socket.socket, dict, list[int]]:
    """Send a launch; returns the connection (now the instance's), the
    'started' event and its descriptors (the pty master)."""
    for attempt in range(2):
        sock = connect()
        protocol.send(sock, {"v": protocol.VERSION, "op": "launch", **message}, stdio)
        try:
            reply, fds = _receive(sock)
            return sock, reply, fds
        except ManagerGone:
            sock.close()
            # The manager may have been exiting (idle) as we connected: once more.
            if attempt:
                raise
    raise AssertionError("unreachable")
