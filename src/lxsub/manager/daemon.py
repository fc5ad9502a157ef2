"""The manager: one per host user and LX_HOME, started on demand by `lx`.

Like WSL's LxssManager it brokers launches: it finds (or forks) the
instance of a distro and hands the client's connection and stdio over to
it; from then on the client and the instance talk directly, so a manager
that dies does not take running sessions with it. A restarted manager finds
the running instances again by their sockets. It exits after
`[manager] idle_timeout` seconds with no instance and no client.

One thread, one selector; a request never takes the manager down: a bad
one gets an error reply, an unexpected failure is logged and answered with
`failed`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import selectors
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass

from lxsub.errors import LxError
from lxsub.manager import paths, protocol
from lxsub.manager.protocol import ProtocolError
from lxsub.platform import features, hostfd
from lxsub.config import load_distro_config, load_host_config
from lxsub.state import Distro, Registry, check_launchable, lx_home

MAX_CLIENTS = 256       # connections served at once; more wait in the backlog or are refused
ASK_TIMEOUT = 15.0      # seconds an instance has to answer the manager
END_TIMEOUT = 10.0      # seconds an ending instance has before SIGKILL


@dataclass
class ManagerSettings:
    idle_timeout: float                  # [manager] idle_timeout
    instance_idle_timeout: float         # [instance] idle_timeout


@dataclass
class InstanceRef:
    distro: str
    pid: int
    ctl: socket.socket           # our connection to the instance's socket
    child: bool                  # forked by this manager (else found again after a restart)


class Manager:
    def __init__(self, listener: socket.socket, settings: ManagerSettings) -> None:
        self.listener = listener
        self.settings = settings
        self.started = time.time()
        self.selector = selectors.DefaultSelector()
        self.clients: dict[int, socket.socket] = {}
        self.instances: dict[str, InstanceRef] = {}
        self.children: dict[int, str] = {}      # instance processes we forked: pid -> distro
        self.idle_since = time.monotonic()
        self.stopping = False
        self.selector.register(listener, selectors.EVENT_READ, self._accept)
        # The operations clients may ask for (protocol.SCHEMA, "client -> manager").
        self.handlers: dict[str, protocol.Handler] = {
            "hello": self._op_hello, "status": self._op_status, "launch": self._op_launch,
            "terminate": self._op_terminate, "shutdown": self._op_shutdown}

    # -- the loop -----------------------------------------------------------------

    def serve(self) -> None:
        self._find_running_instances()
        while not self.stopping:
            for key, _ in self.selector.select(timeout=1.0):
                key.data(key.fileobj)
            self._reap_children()
            if self._idle_for() >= self.settings.idle_timeout:
                break

    def _idle_for(self) -> float:
        if self.clients or self.instances:
            self.idle_since = time.monotonic()
            return 0.0
        return time.monotonic() - self.idle_since

    def _reap_children(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            distro = self.children.pop(pid, None)
            if distro is not None:
                _log(f"instance {distro} ({pid}) ended: {_describe_status(status)}")

    # -- clients --------------------------------------------------------------------

    def _accept(self, _sock) -> None:
        try:
            conn = protocol.accept_own_user(self.listener)
        except OSError as e:
            # Out of descriptors (EMFILE, ENFILE, ENOBUFS): the pending
            # connection waits in the backlog until a client goes.
            _log_rarely(f"cannot accept a client: {e.strerror}")
            time.sleep(0.05)
            return
        if conn is None:
            return
        if len(self.clients) >= MAX_CLIENTS:
            _log_rarely(f"connections refused: {MAX_CLIENTS} clients connected")
            conn.close()
            return
        self.clients[conn.fileno()] = conn
        self.selector.register(conn, selectors.EVENT_READ, self._on_client)

    def _on_client(self, conn: socket.socket) -> None:
        protocol.serve_request(conn, self.handlers, self._send, self._drop_client, "manager")

    def _drop_client(self, conn: socket.socket) -> None:
        if self.clients.pop(conn.fileno(), None) is not None:
            self.selector.unregister(conn)
        conn.close()

    @staticmethod
    def _send(conn: socket.socket, reply: dict) -> bool:
        """Reply without waiting: a client that does not read its replies
        must not hold up the others (False: it is to be dropped)."""
        try:
            protocol.send(conn, reply, wait=False)
            return True
        except BlockingIOError:
            _log_rarely("dropped clients that do not read their replies")
            return False
        except (OSError, ProtocolError):
            return False

    # -- operations ---------------------------------------------------------------------

    def _op_hello(self, _conn, _request: None, _fds) -> dict:
        return {"ok": True, "v": protocol.VERSION, "pid": os.getpid()}

    def _op_status(self, _conn, _request: None, _fds) -> dict:
        instances = []
        for ref in list(self.instances.values()):
            reply = self._ask(ref, {"op": "info"})
            if reply.get("ok"):
                instances.append({k: reply[k] for k in
                                  ("distro", "pid", "clients", "processes", "started", "state")})
        try:
            default = Registry(lx_home()).default().name
        except LxError:
            default = None
        manager = {"pid": os.getpid(), "started": self.started,
                   "socket": str(paths.manager_socket()), "lx_home": str(lx_home())}
        # Instances are forked from the manager: its environment
        # (LX_PLATFORM, LX_HIDE_FEATURES) and kernel are theirs.
        return {"ok": True, "manager": manager, "default": default, "instances": instances,
                "platform": features.report()}

    def _op_terminate(self, _conn, request: protocol.TerminateRequest, _fds) -> dict:
        ref = self.instances.get(request.distro)
        if ref is None:
            return {"ok": True, "ended": False}
        self._end_instance(ref, "terminate")
        return {"ok": True, "ended": True}

    def _op_shutdown(self, _conn, _request: None, _fds) -> dict:
        for ref in list(self.instances.values()):
            self._end_instance(ref, "shutdown")
        self.stopping = True
        return {"ok": True}

    def _op_launch(self, conn: socket.socket, launch: protocol.LaunchRequest,
                   fds: protocol.Descriptors) -> dict:
        distro = _launchable(launch.distro)
        session = launch.session(distro.name, distro.default_user)
        for _attempt in range(3):
            ref = self.instances.get(distro.name) or self._start_instance(distro)
            reply = self._ask(ref, session, [conn.fileno(), *fds])
            if reply.get("ok"):
                raise protocol.Handed()   # our copies of the descriptors are closed
            if reply.get("error", {}).get("code") != "ending":
                err = reply.get("error", {})
                raise ProtocolError(err.get("code", "failed"), err.get("message", "instance failed"),
                                    err.get("exit", 70))
            self._wait_gone(ref)
        raise ProtocolError("failed", f"the instance of '{distro.name}' keeps ending; retry")

    # -- instances --------------------------------------------------------------------------

    def _start_instance(self, distro: Distro) -> InstanceRef:
        from lxsub.manager import instance_host    # the kernel: imported once, before forks
        path = paths.instance_socket(distro.name)
        _unlink(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        listener.bind(str(path))
        listener.listen(64)
        try:
            config = load_distro_config(distro.rootfs, lenient=True)
        except LxError as e:          # a bad /etc/lx.conf: the client is told where
            listener.close()
            raise ProtocolError("bad-config", e.message, e.exit_code) from None
        pid = os.fork()
        if pid == 0:   # pragma: no cover - the instance process
            code = 70
            try:
                self._forget_in_child(keep=listener.fileno())
                code = instance_host.run(distro.name, str(distro.rootfs), listener,
                                         self.settings.instance_idle_timeout, config,
                                         distro.default_user, distro.meta_db)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        listener.close()
        self.children[pid] = distro.name
        _log(f"instance {distro.name} ({pid}) started")
        ctl = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ctl.connect(str(path))
        return self._add_instance(InstanceRef(distro.name, pid, ctl, child=True))

    def _forget_in_child(self, keep: int) -> None:
        """The instance process keeps nothing of the manager's: not its
        sockets, nor the stdio of a client whose launch is in flight (which
        would keep that client's pipes open as long as the instance runs)."""
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        hostfd.close_fds_except(keep)

    def _add_instance(self, ref: InstanceRef) -> InstanceRef:
        self.instances[ref.distro] = ref
        self.selector.register(ref.ctl, selectors.EVENT_READ, lambda _s: self._instance_gone(ref))
        return ref

    def _instance_gone(self, ref: InstanceRef) -> None:
        """The instance closed its end (it never speaks unasked): it has ended."""
        if self.instances.get(ref.distro) is ref:
            del self.instances[ref.distro]
        try:
            self.selector.unregister(ref.ctl)
        except (KeyError, ValueError):
            pass
        ref.ctl.close()
        _unlink(paths.instance_socket(ref.distro))
        if not ref.child:       # not ours to reap: its status is its own parent's
            _log(f"instance {ref.distro} ({ref.pid}) ended (started by an earlier manager)")

    def _ask(self, ref: InstanceRef, message: dict, fds: list[int] | tuple[int, ...] = ()) -> dict:
        try:
            ref.ctl.settimeout(ASK_TIMEOUT)
            protocol.send(ref.ctl, {"v": protocol.VERSION, **message}, fds)
            reply, extra = protocol.receive(ref.ctl)
            protocol.close_all(extra)
            if reply is None:          # it closed its end without a word
                return self._ended_meanwhile(ref) or self._failed(ref, "closed the connection")
        except (BrokenPipeError, ConnectionResetError):
            return self._ended_meanwhile(ref) or self._failed(ref, "closed the connection")
        except (OSError, ProtocolError) as e:
            reply = None
            _log(f"instance {ref.distro} ({ref.pid}) did not answer: {e}")
        if reply is None:
            self._kill(ref, "it did not answer the manager")
            self._instance_gone(ref)
            return self._failed(ref, "did not answer")
        return reply

    @staticmethod
    def _failed(ref: InstanceRef, what: str) -> dict:
        _log(f"instance {ref.distro} ({ref.pid}) failed: {what}")
        log = lx_home() / "manager.log"
        return {"ok": False, "error": {"code": "failed", "exit": 70,
                                       "message": f"the instance of '{ref.distro}' failed "
                                                  f"(see {log})"}}

    def _ended_meanwhile(self, ref: InstanceRef) -> dict | None:
        """The instance closed its end as we asked: it ended (idle) before
        reading the request, which it answers "ending" when it did read it
        (InstanceHost.refuse_pending). An "ending" answer, so the launch
        goes to a new instance; None (a failure) if it did not end cleanly."""
        self._instance_gone(ref)
        ending = {"ok": False, "error": {"code": "ending", "message": "ended"}}
        if not ref.child:
            return ending
        deadline = time.monotonic() + END_TIMEOUT
        while True:
            try:
                pid, status = os.waitpid(ref.pid, os.WNOHANG)
            except ChildProcessError:      # already reaped: its end was logged
                return ending
            if pid:
                break
            if time.monotonic() > deadline:
                self._kill(ref, f"it did not end within {END_TIMEOUT:g} s")
                return None
            time.sleep(0.01)
        self.children.pop(pid, None)
        _log(f"instance {ref.distro} ({pid}) ended: {_describe_status(status)}")
        return ending if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 else None

    def _end_instance(self, ref: InstanceRef, reason: str) -> None:
        self._ask(ref, {"op": "end", "reason": reason})
        self._wait_gone(ref)

    def _wait_gone(self, ref: InstanceRef) -> None:
        """Wait until an ending instance has closed its socket; kill it if it hangs."""
        if ref.ctl.fileno() < 0:
            return
        ref.ctl.settimeout(END_TIMEOUT)
        try:
            while ref.ctl.recv(protocol.MAX_MESSAGE):
                pass
        except OSError:
            self._kill(ref, f"it did not end within {END_TIMEOUT:g} s")
        self._instance_gone(ref)
        self._reap_children()

    @staticmethod
    def _kill(ref: InstanceRef, cause: str) -> None:
        _log(f"killing instance {ref.distro} ({ref.pid}): {cause}")
        try:
            os.kill(ref.pid, signal.SIGKILL)
        except OSError:
            pass

    def _find_running_instances(self) -> None:
        """After a restart: the instances of the manager that died still run."""
        for path in sorted(paths.instances_dir().glob("*.sock")):
            ctl = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                ctl.settimeout(ASK_TIMEOUT)
                ctl.connect(str(path))
                protocol.send(ctl, {"v": protocol.VERSION, "op": "info"})
                reply, extra = protocol.receive(ctl)
                protocol.close_all(extra)
            except (OSError, ProtocolError):
                reply = None
            if not reply or not reply.get("ok") or reply.get("state") != "Running":
                ctl.close()
                if not reply:
                    _unlink(path)
                continue
            self._add_instance(InstanceRef(reply["distro"], reply["pid"], ctl, child=False))


def _launchable(name: str | None) -> Distro:
    registry = Registry(lx_home())
    try:
        distro = registry.get(name) if name else registry.default()
    except LxError as e:
        raise ProtocolError("no-distro", e.message, e.exit_code) from None
    try:
        check_launchable(distro)
    except LxError as e:
        raise ProtocolError("busy", e.message, e.exit_code) from None
    return distro


def _describe_status(status: int) -> str:
    """A wait status as manager.log says it (why an instance ended)."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"killed by {name}"
    code = os.WEXITSTATUS(status)
    return "exit status 0" if code == 0 else f"exit status {code} (failed: see above)"


def _unlink(path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# -- starting ---------------------------------------------------------------------------------

def _take_lock() -> int | None:
    """The manager's lock: held for its whole life, so only one runs per LX_HOME."""
    fd = os.open(paths.manager_lock(), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            return None
        raise
    return fd


def _listen() -> socket.socket:
    path = paths.manager_socket()
    _unlink(path)        # a dead manager's; we hold the lock
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.bind(str(path))
    os.chmod(path, 0o600)
    sock.listen(64)
    sock.setblocking(False)
    return sock


def _log(line: str) -> None:
    """One line in manager.log (our stderr), with the time."""
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}", file=sys.stderr, flush=True)


_rare: dict[str, list[float]] = {}     # what -> [last logged, count since]
RARE_EVERY = 10.0


def _log_rarely(what: str) -> None:
    """Count an event a hostile client can repeat at will; one line per
    RARE_EVERY seconds at most, so that it cannot flood manager.log."""
    seen = _rare.setdefault(what, [0.0, 0])
    seen[1] += 1
    now = time.monotonic()
    if now - seen[0] >= RARE_EVERY:
        _log(f"{what}: {seen[1]}")
        seen[0], seen[1] = now, 0


def _log_to_file() -> None:
    home = lx_home()
    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(home / "manager.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.close(null)


def main(argv: list[str]) -> int:
    """`python3 -m lxsub.manager.daemon [--ready-fd N]`, normally run by `lx`."""
    ready = int(argv[argv.index("--ready-fd") + 1]) if "--ready-fd" in argv else None
    os.chdir("/")
    lock = _take_lock()
    if lock is None:
        return 0          # another manager runs; the client will find it
    try:
        host = load_host_config()
        settings = ManagerSettings(host.manager_idle_timeout, host.instance_idle_timeout)
    except LxError as e:
        print(f"lx: {e.message}", file=sys.stderr)
        return e.exit_code
    listener = _listen()
    _log_to_file()
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} manager {os.getpid()} listening on "
          f"{paths.manager_socket()}", flush=True)
    if ready is not None:
        try:
            os.write(ready, b"1")
        except BrokenPipeError:
            pass           # the lx that started us is gone; others will come
        os.close(ready)
    manager = Manager(listener, settings)
    signal.signal(signal.SIGTERM, lambda *_: setattr(manager, "stopping", True))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        manager.serve()
    finally:
        _unlink(paths.manager_socket())
        os.close(lock)
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # Exit at once: the connections close when the process is gone, so a
    # client waiting for that (lx --shutdown) does not see a manager still
    # tearing its interpreter down.
    os._exit(code)
