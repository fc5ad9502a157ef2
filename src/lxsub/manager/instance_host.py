"""The process that hosts one running distro: its provider, /init and sessions.

The manager forks it at the first launch into a distro. It listens on its
own socket (so a restarted manager can find it again), serves the pico
processes with the platform engine, and runs each client's command as a
session: the client's stdio (or a pty whose master goes back to the
client), its signals, its exit status. When the last client has gone and
the grace period (`[instance] idle_timeout`) has passed with none coming
back, the instance ends and every process in it is killed, daemons too.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import os
import signal
import socket
import struct
import termios
import sys
import time
import traceback

from lxsub.config import DistroConfig
from lxsub.errors import LxError
from lxsub.kernel import interop
from lxsub.kernel import session as sessions
from lxsub.kernel.instance import Instance
from lxsub.manager import protocol
from lxsub.manager.protocol import ProtocolError
from lxsub.platform.launcher import ChildSetup

MAX_PEERS = 64        # connections to the instance's socket at once (the manager needs one)


class Session:
    """One client's command: its connection and its leading process."""

    def __init__(self, conn: socket.socket, proc) -> None:
        self.conn = conn
        self.proc = proc
        self.stopped = False      # told the client its command stopped; until it continues it


class InstanceHost:
    def __init__(self, inst: Instance, listener: socket.socket, idle_timeout: float) -> None:
        self.inst = inst
        self.listener = listener
        self.idle_timeout = idle_timeout     # seconds the instance outlives its last client
        self.started = time.time()
        self.sessions: dict[int, Session] = {}        # client connection fd -> session
        self.peers: dict[int, socket.socket] = {}     # manager connections
        self._idle_since: float | None = time.monotonic()
        self.told_warnings = False
        # The operations the manager may ask for (protocol.SCHEMA, "manager -> instance").
        self.handlers: dict[str, protocol.Handler] = {
            "session": self._op_session, "info": self._op_info, "end": self._op_end}
        listener.setblocking(False)
        inst.engine.watch_fd(listener.fileno(), self._accept)

    # -- connections ------------------------------------------------------------

    def _accept(self) -> None:
        try:
            conn = protocol.accept_own_user(self.listener)
        except OSError as e:      # out of descriptors: it waits in the backlog
            self.inst.log.once(f"accept:{e.errno}",
                               f"instance socket: cannot accept: {e.strerror}")
            return
        if conn is None:
            return
        if len(self.peers) >= MAX_PEERS:
            conn.close()
            return
        self.peers[conn.fileno()] = conn
        self.inst.engine.watch_fd(conn.fileno(), lambda: self._on_manager(conn))

    def _on_manager(self, conn: socket.socket) -> None:
        protocol.serve_request(conn, self.handlers, self._reply, self._drop_peer, "instance")

    def _drop_peer(self, conn: socket.socket) -> None:
        self.inst.engine.unwatch_fd(conn.fileno())
        self.peers.pop(conn.fileno(), None)
        conn.close()

    @staticmethod
    def _reply(conn: socket.socket, reply: dict, fds: list[int] | tuple[int, ...] = ()) -> bool:
        """Send without waiting: a peer that does not read must not stop the
        instance's loop (and every program in it)."""
        try:
            protocol.send(conn, reply, fds, wait=False)
            return True
        except (OSError, ProtocolError):
            return False

    # -- manager requests -----------------------------------------------------------

    def _op_info(self, _conn, _request: None, _fds) -> dict:
        return {"ok": True, **self.info()}

    def info(self) -> dict:
        return {
            "distro": self.inst.name, "pid": os.getpid(), "clients": len(self.sessions),
            "processes": len(self.inst.pids.processes_by_vid) - 1, "started": self.started,
            "state": "Ending" if self.inst.ending else "Running",
        }

    def _op_end(self, _conn, request: protocol.EndRequest, _fds) -> dict:
        reason = request.reason
        self.end(reason, f"the manager asked (lx --{reason})")
        return {"ok": True}

    def _op_session(self, _manager, req: protocol.LaunchRequest,
                    held: protocol.Descriptors) -> dict:
        fds = held.take()
        if self.inst.ending:
            protocol.close_all(fds)
            raise ProtocolError("ending", f"the instance of '{self.inst.name}' is ending")
        try:
            conn = socket.socket(fileno=fds[0])
        except OSError:
            protocol.close_all(fds)
            raise ProtocolError("bad-request", "session: the first descriptor is not a connection")
        try:
            self._start_session(conn, req, fds[1:])
        except LxError as e:
            self._reply(conn, protocol.error_reply(ProtocolError("cannot-run", e.message, e.exit_code)))
            conn.close()
        except Exception as e:       # a session never takes the instance down: log it, say so
            traceback.print_exc()
            self._reply(conn, protocol.error_reply(ProtocolError(
                "failed", f"the instance of '{self.inst.name}' could not start the command: {e!r} "
                "(see $LX_HOME/manager.log)")))
            conn.close()
        return {"ok": True}

    # -- sessions ---------------------------------------------------------------------

    def _start_session(self, conn: socket.socket, req: protocol.LaunchRequest,
                       stdio: list[int]) -> None:
        tty = req.tty
        master, setup = None, None
        try:
            if tty is not None:
                master, setup = _pty_setup(stdio, tty)
            else:
                setup = ChildSetup(stdio=(stdio[0], stdio[1], stdio[2]), new_session=True)
            launch = sessions.Launch(req.argv, req.mode, req.user, req.cwd, req.env, req.host_cwd)
            # [user] default of /etc/lx.conf wins over the registry's, as in WSL.
            default_user = self.inst.config.user.default or req.default_user
            proc = sessions.start(self.inst, launch, default_user, setup)
        except BaseException:
            if master is not None:
                os.close(master)
            raise
        finally:
            protocol.close_all(stdio)
            if setup is not None and setup.ctty is not None:
                os.close(setup.ctty)
        session = Session(conn, proc)
        started = {"ok": True, "event": "started", "pid": proc.pid, "pty": master is not None,
                   "warnings": [] if self.told_warnings else list(self.inst.config.warnings)}
        self.told_warnings = True      # the client that started the instance hears them
        self._reply(conn, started, [master] if master is not None else [])
        if master is not None:
            os.close(master)
        self.sessions[conn.fileno()] = session
        self._idle_since = None
        self.inst.exit_watchers[proc] = lambda status: self._session_exited(session, status)
        self.inst.stop_watchers[proc] = lambda sig: self._session_stopped(session, sig)
        self.inst.engine.watch_fd(conn.fileno(), lambda: self._on_client(session))

    def _on_client(self, session: Session) -> None:
        try:
            message, fds = protocol.receive(session.conn)
        except (ProtocolError, OSError):
            message, fds = None, []
        protocol.close_all(fds)
        if message is None:
            # The client went away (killed, or its terminal closed): hang up
            # its command as a terminal would, and forget the session.
            self.inst.signal_group(session.proc, signal.SIGHUP)
            self.inst.exit_watchers.pop(session.proc, None)
            self.inst.stop_watchers.pop(session.proc, None)
            self._close_session(session)
            return
        try:
            _op, request = protocol.parse_request(message, {"signal"}, len(fds))
        except ProtocolError:
            return                  # the client only ever sends signals: nothing else is done
        assert isinstance(request, protocol.SignalRequest)
        sig = request.signal
        if sig in protocol.CLIENT_SIGNALS:
            if sig == signal.SIGCONT:
                session.stopped = False
            self.inst.signal_group(session.proc, sig)

    def _session_stopped(self, session: Session, sig: int) -> None:
        """The leading process entered a group-stop: the client stops too
        (once: a stopped process reports each signal it gets)."""
        if not session.stopped:
            session.stopped = True
            self._reply(session.conn, {"ok": True, "event": "stopped", "signal": sig})

    def _session_exited(self, session: Session, status: int) -> None:
        self._reply(session.conn, {"ok": True, "event": "exit", "status": sessions.exit_code(status)})
        self._close_session(session)

    def _close_session(self, session: Session) -> None:
        fd = session.conn.fileno()
        if self.sessions.pop(fd, None) is None:
            return
        self.inst.engine.unwatch_fd(fd)
        session.conn.close()
        if not self.sessions:
            self._idle_since = time.monotonic()
            self.inst.engine.call_later(self.idle_timeout, self._end_if_idle)

    def _end_if_idle(self) -> None:
        idle = self._idle_since
        if idle is not None and time.monotonic() - idle >= self.idle_timeout - 0.01:
            self.end("idle", f"idle: no client for {self.idle_timeout:g} s ([instance] idle_timeout)")

    # -- life -------------------------------------------------------------------------

    def boot(self) -> None:
        """Run the distro's [boot] command as root, detached from any client."""
        command = self.inst.config.boot.command
        if not command:
            return
        null = os.open("/dev/null", os.O_RDWR)
        try:
            sessions.start(self.inst, sessions.Launch([command], "shell", "root", "/", {}),
                           "root", ChildSetup(stdio=(null, null, null), new_session=True))
        except LxError as e:
            self.inst.log.warn(f"[boot] command not started: {e.message}")
        finally:
            os.close(null)

    def end(self, reason: str, cause: str | None = None) -> None:
        """End the instance; attached clients hear why (reason: terminate,
        shutdown, signal, idle) and manager.log says so (cause, in words)."""
        if self.inst.ending:
            return
        log_line(f"instance {self.inst.name} ({os.getpid()}) ending: {cause or reason}")
        for session in list(self.sessions.values()):
            self._reply(session.conn, {"ok": True, "event": "ended", "reason": reason})
            self.inst.exit_watchers.pop(session.proc, None)
            self.inst.stop_watchers.pop(session.proc, None)
            self._close_session(session)
        self.inst.end()

    def refuse_pending(self) -> None:
        """Once ended: answer what the manager sent meanwhile (a launch that
        met the idle end) "ending", so that it starts a new instance for it
        rather than take the closed connection for a failure. Nothing of
        such a request has run."""
        self.listener.close()
        for conn in list(self.peers.values()):
            conn.setblocking(False)
            while True:
                try:
                    message, fds = protocol.receive(conn)
                except (OSError, ProtocolError):
                    break
                protocol.close_all(fds)
                if message is None:
                    break
                self._reply(conn, protocol.error_reply(ProtocolError(
                    "ending", f"the instance of '{self.inst.name}' is ending")))

    def serve(self) -> None:
        if not self.sessions:
            # Started and nobody came (the manager died before handing over).
            self.inst.engine.call_later(max(self.idle_timeout, 5.0), self._end_if_idle)
        self.inst.serve()


def _pty_setup(stdio: list[int], tty: dict) -> tuple[int, ChildSetup]:
    """A pty standing in for those of the client's stdio that are terminals."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", tty["rows"], tty["cols"], 0, 0))
    which = (tty["stdin"], tty["stdout"], tty["stderr"])
    fds = tuple(slave if is_tty else fd for is_tty, fd in zip(which, stdio))
    return master, ChildSetup(stdio=fds, new_session=True, ctty=slave)


def log_line(line: str) -> None:
    """One line in manager.log (the instance's stderr is the manager's)."""
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}", file=sys.stderr, flush=True)


def set_process_name(name: str) -> None:
    """What ps shows for us (comm, 15 bytes)."""
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(name[:15])
    except OSError:
        pass


def run(name: str, rootfs: str, listener: socket.socket, idle_timeout: float,
        config: DistroConfig, default_user: str | None = None,
        meta_db: str | None = None) -> int:
    """The body of an instance process (after the manager's fork)."""
    os.setsid()
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    set_process_name(protocol.INSTANCE_NAME_PREFIX + name)   # see protocol.inside_an_instance
    try:
        inst = sessions.open_instance(name, rootfs, config, default_user, meta_db)
    except LxError as e:
        print(f"instance {name}: {e.message}", file=sys.stderr)
        return 1
    host = InstanceHost(inst, listener, idle_timeout)
    signal.signal(signal.SIGTERM, lambda *_: host.end("signal", "SIGTERM"))
    try:
        interop.install_lxpath(inst)       # /usr/local/bin/lxpath when interop is on
    except OSError as e:
        inst.log.warn(f"interop: cannot write {interop.LXPATH}: {e.strerror}")
    try:
        interop.install_lx_command(inst)   # /usr/local/bin/lx: the host's lx
    except OSError as e:
        inst.log.warn(f"interop: cannot write {interop.LX_COMMAND}: {e.strerror}")
    try:
        interop.install_host_commands_hook(inst)    # names host programs of missing commands
    except OSError as e:
        inst.log.warn(f"interop: cannot write {interop.HOST_COMMANDS_HOOK}: {e.strerror}")
    host.boot()
    # What the manager and the kernel hold now lives as long as the instance:
    # keep it out of the collector's scans, which otherwise grow with it and
    # cost every trapped call a share.
    gc.freeze()
    try:
        host.serve()
    except OSError as e:
        if e.errno != errno.EINTR:
            raise
    finally:
        host.refuse_pending()
    return 0
