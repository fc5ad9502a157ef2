"""The manager's wire protocol: one JSON object per SOCK_SEQPACKET message.

Every message is a UTF-8 JSON object of at most MAX_MESSAGE bytes; file
descriptors ride along as SCM_RIGHTS. Requests carry the protocol version
`v` and an `op`; replies carry `ok`, and errors a code, a message and the
exit status `lx` should give. SCHEMA below is the published schema:
`python3 -m lxsub.manager.protocol --write` makes docs/PROTOCOL.md from it
(a test fails when that page is stale).

Seqpacket keeps message boundaries and ties descriptors to their message,
so there is no framing to get wrong and a peer cannot desynchronise us.
"""

from __future__ import annotations

import array
import fcntl
import json
import os
import signal
import socket
import struct
import sys
from types import MappingProxyType
from typing import Any, Callable, Mapping, NamedTuple

from lxsub.errors import EXIT_CANNOT_EXEC
from lxsub.kernel.exec import limits
from lxsub.wire import INTEROP_ENV, PASSED_ENV, wire_bytes, wire_str  # noqa: F401 (part of the protocol)

VERSION = 1
MAX_MESSAGE = 64 * 1024
MAX_FDS = 8
# A larger message (a Linux-sized command line: 2 MiB of argv and
# environment, up to 6 JSON characters a byte) travels as a body: a sealed
# memfd sent with a frame {"body": size} as its first descriptor.
MAX_BODY = 16 * 1024 * 1024
BODY = "body"
MAX_ARGS = limits.total_limit() // limits.POINTER    # strings in argv or env
_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE

# Error codes of replies (code -> meaning), part of the published schema.
ERROR_CODES = {
    "bad-request": "not a JSON object, a missing or mistyped field, or descriptors it does not take",
    "too-large": f"the message is larger than {MAX_MESSAGE} bytes (or its body than {MAX_BODY})",
    "version": "the client speaks another protocol version (run 'lx --shutdown' after an upgrade)",
    "unknown-op": "no such operation",
    "no-distro": "the distro is not registered",
    "busy": "the distro is being installed or removed, or its files are missing",
    "bad-config": "the distro's /etc/lx.conf has a bad line (the message names file, line and key)",
    "cannot-run": "the command cannot be started (no such user, program or directory)",
    "ending": "the instance is ending and takes no new sessions",
    "failed": "the manager or the instance failed; the message says how",
}


class ProtocolError(Exception):
    """A request we refuse; becomes an error reply."""

    def __init__(self, code: str, message: str, exit_code: int = 70) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.exit_code = exit_code


# The request types are named tuples, not dataclasses: `dataclasses` imports
# `inspect`, and this module is on every `lx` launch's path.
class Message(NamedTuple):
    op: str
    path: str                    # "client -> manager", ...
    summary: str
    fields: Mapping[str, str] = MappingProxyType({})   # name -> type (see check_type)
    fds: str = ""                 # what descriptors come with it, if any
    reply: str = ""


def launch_env(environ) -> dict[str, str]:
    """The `env` of a launch: PASSED_ENV, INTEROP_ENV and what LXENV names
    (as wire strings: bytes that are not UTF-8 stay bytes)."""
    names = set(PASSED_ENV) | set(INTEROP_ENV)
    for item in environ.get("LXENV", "").split(":"):
        name = item.partition("/")[0]
        if name:
            names.add(name)
    return {wire_str(k): wire_str(v) for k, v in environ.items() if k in names}


# What a client may forward to its command's process group (SIGCONT: lx continued after a stop).
CLIENT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGTSTP,
                  signal.SIGCONT)
TTY_FIELDS = "{stdin: bool, stdout: bool, stderr: bool, rows: int, cols: int}"
LAUNCH_FIELDS = {
    "distro": "str?", "argv": "[arg]", "mode": "exec|shell|login", "user": "str?",
    "cwd": "str?", "host_cwd": "str?", "env": "{str: arg}", "tty": f"{TTY_FIELDS}?",
}

SCHEMA: list[Message] = [
    Message("hello", "client -> manager", "Is the manager there, and which version?",
            reply="{ok, v, pid}"),
    Message("status", "client -> manager", "The manager, the default distro, the running instances.",
            reply="{ok, manager: {pid, started, socket, lx_home}, default: str?, "
                  "instances: [{distro, pid, clients, processes, started, state}]}"),
    Message("launch", "client -> manager",
            "Run a command in a distro's instance (created if not running). On success the "
            "manager hands the connection to the instance, which answers from then on. "
            "`env`: the client's " + ", ".join(PASSED_ENV) + ", and for interop its PATH, "
            "LXENV and the variables LXENV names.",
            LAUNCH_FIELDS, fds="the client's stdin, stdout, stderr",
            reply="{ok, event: 'started', pid, pty: bool, warnings: [str]} with the pty master as "
                  "descriptor when pty (warnings: what /etc/lx.conf got wrong, to the client that "
                  "started the instance); later {ok, event: 'exit', status} (status as lx exits: "
                  "128+N for signal N), {ok, event: 'stopped', signal} when the command's leading "
                  "process stops (the client stops too, then sends SIGCONT), or {ok, event: 'ended', "
                  "reason: terminate|shutdown|signal} when the instance is ended under it"),
    Message("signal", "client -> instance", "Deliver a signal the client got to its command's "
            "process group (SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGTSTP; SIGCONT once it was "
            "continued after a stop). The client resizes a pty itself, on the master it holds.",
            {"signal": "int"}, reply="none"),
    Message("terminate", "client -> manager", "End a distro's instance now (every process killed).",
            {"distro": "str"}, reply="{ok, ended: bool}"),
    Message("shutdown", "client -> manager", "End every instance, then the manager.",
            reply="{ok}"),
    Message("session", "manager -> instance", "Take over a client's launch.",
            {**LAUNCH_FIELDS, "default_user": "str?"},
            fds="the client's connection, stdin, stdout, stderr", reply="{ok} or an error"),
    Message("info", "manager -> instance", "The instance's state for status and reattaching.",
            reply="{ok, distro, pid, clients, processes, started, state}"),
    Message("end", "manager -> instance", "End the instance now; its clients are told the reason.",
            {"reason": "terminate|shutdown?"}, reply="{ok}"),
]

OPS = {m.op: m for m in SCHEMA}


class LaunchRequest(NamedTuple):
    """A `launch` (or the `session` the manager makes of it), typed and
    checked beyond the schema: window size in range, Linux's E2BIG."""

    distro: str | None
    argv: list[str]
    mode: str
    user: str | None
    cwd: str | None
    host_cwd: str | None
    env: dict[str, str]
    tty: dict[str, Any] | None
    default_user: str | None = None

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> "LaunchRequest":
        """From a message check_request has accepted."""
        req = cls(**{k: message.get(k) for k in LAUNCH_FIELDS},
                  default_user=message.get("default_user"))
        if req.tty is not None and not all(0 <= req.tty[k] <= 0xFFFF for k in ("rows", "cols")):
            raise ProtocolError("bad-request", "launch: tty rows and cols are 0..65535")
        req.check_size()
        return req

    def check_size(self) -> None:
        """ProtocolError(cannot-run) when Linux would refuse this command line (E2BIG)."""
        try:
            limits.check([wire_bytes(a) for a in self.argv],
                         [wire_bytes(f"{k}={v}") for k, v in self.env.items()])
        except OSError as e:
            raise ProtocolError("cannot-run", f"argument list too long: {e.strerror} (E2BIG)",
                                EXIT_CANNOT_EXEC) from None

    def session(self, distro: str, default_user: str | None) -> dict[str, Any]:
        """The `session` message handing this launch to an instance."""
        fields = {k: getattr(self, k) for k in LAUNCH_FIELDS}
        return {**fields, "op": "session", "distro": distro, "default_user": default_user}


class TerminateRequest(NamedTuple):
    """`terminate`: end a distro's instance now."""
    distro: str

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> "TerminateRequest":
        return cls(message["distro"])


class EndRequest(NamedTuple):
    """`end`: the manager ends an instance (lx --terminate or --shutdown)."""
    reason: str

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> "EndRequest":
        return cls(message.get("reason") or "terminate")


class SignalRequest(NamedTuple):
    """`signal`: a signal the client got, for its command's process group."""
    signal: int

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> "SignalRequest":
        return cls(message["signal"])


# The typed request of each operation that carries fields (the others: None).
REQUEST_TYPES: dict[str, Any] = {
    "launch": LaunchRequest, "session": LaunchRequest, "terminate": TerminateRequest,
    "end": EndRequest, "signal": SignalRequest,
}
Request = LaunchRequest | TerminateRequest | EndRequest | SignalRequest | None


def parse_request(message: dict[str, Any], allowed: set[str], nfds: int = 0) -> tuple[str, Request]:
    """(op, its typed request) of a message; ProtocolError when the schema
    refuses it (check_request) or its type does (LaunchRequest's limits)."""
    op = check_request(message, allowed, nfds).op
    kind = REQUEST_TYPES.get(op)
    return op, kind.from_message(message) if kind is not None else None


# -- sending and receiving ----------------------------------------------------------

def send(sock: socket.socket, message: dict[str, Any], fds: list[int] | tuple[int, ...] = (),
         wait: bool = True) -> None:
    """Send one message. Larger than a frame, it goes as a body in a sealed
    memfd (see receive). wait=False: never block on a peer that does not
    read (BlockingIOError instead; the manager and instances drop it)."""
    data = json.dumps(message, separators=(",", ":")).encode()
    flags = 0 if wait else socket.MSG_DONTWAIT
    if len(data) <= MAX_MESSAGE:
        socket.send_fds(sock, [data], list(fds), flags) if fds else sock.send(data, flags)
        return
    if len(data) > MAX_BODY:
        raise ProtocolError("too-large", f"message of {len(data)} bytes, more than {MAX_BODY}")
    body = _sealed_memfd(data)
    try:
        frame = json.dumps({BODY: len(data)}).encode()
        socket.send_fds(sock, [frame], [body, *fds], flags)
    finally:
        os.close(body)


def _sealed_memfd(data: bytes) -> int:
    fd = os.memfd_create("lx-message", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def receive(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """One message and its descriptors; (None, []) at end of stream.

    Raises ProtocolError for what is not a JSON object or too large; the
    descriptors of a refused message are closed. Whatever the bytes, only
    ProtocolError or OSError (the connection) comes out.
    """
    fds = array.array("i")
    data, ancdata, flags, _ = sock.recvmsg(MAX_MESSAGE + 1, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    received = list(fds)
    if not data and not received:
        return None, []
    try:
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(data) > MAX_MESSAGE:
            raise ProtocolError("too-large", f"message larger than {MAX_MESSAGE} bytes "
                                "(or with too many descriptors)")
        message = _parse(data)
        if set(message) == {BODY}:
            message = _parse(_read_body(message[BODY], received))
            os.close(received.pop(0))
            if BODY in message:
                raise ProtocolError("bad-request", "a message body holds another body")
    except ProtocolError:
        close_all(received)
        raise
    return message, received


def _parse(data: bytes) -> dict[str, Any]:
    try:
        message = json.loads(data.decode())
    except (UnicodeDecodeError, ValueError, RecursionError):
        # RecursionError: arrays or objects nested too deep for the parser.
        raise ProtocolError("bad-request", "not a JSON message (or nested too deep)") from None
    if not isinstance(message, dict):
        raise ProtocolError("bad-request", "a message is a JSON object")
    return message


def _read_body(size: Any, fds: list[int]) -> bytes:
    """The body a frame announces, from its first descriptor: a memfd sealed
    against writes and size changes, so that reading it can neither block
    (a pipe, a FIFO, a file on a stuck mount) nor see it change."""
    if not (isinstance(size, int) and not isinstance(size, bool) and MAX_MESSAGE < size <= MAX_BODY):
        raise ProtocolError("too-large" if isinstance(size, int) and size > MAX_BODY else "bad-request",
                            f"a message body is {MAX_MESSAGE + 1}..{MAX_BODY} bytes")
    if not fds:
        raise ProtocolError("bad-request", "a message body comes as a descriptor")
    try:
        seals = fcntl.fcntl(fds[0], fcntl.F_GET_SEALS)
        if seals & _SEALS != _SEALS or os.fstat(fds[0]).st_size != size:
            raise ProtocolError("bad-request", "a message body is a sealed memfd of its size")
        data = os.pread(fds[0], size, 0)
    except OSError:
        raise ProtocolError("bad-request", "a message body is a sealed memfd of its size") from None
    if len(data) != size:
        raise ProtocolError("bad-request", "a message body is shorter than announced")
    return data


def accept_own_user(listener: socket.socket) -> socket.socket | None:
    """The next connection if it comes from our own host user (others are
    closed unanswered); None when there is none or it was refused."""
    try:
        conn, _ = listener.accept()
    except (BlockingIOError, InterruptedError):
        return None
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _ = struct.unpack("3i", creds)
    if uid != os.getuid() or inside_an_instance(pid):
        conn.close()
        return None
    return conn


INSTANCE_NAME_PREFIX = "lx:"     # an instance's host process name (instance_host.run)


def inside_an_instance(pid: int) -> bool:
    """Whether the peer is an instance's provider, which makes the
    connections of its pico processes (kernel/syscalls/net.py), or a
    process one traces (a pico process): no request from a Linux program
    is taken, whatever path (/mnt/host, a descriptor) reached the socket.
    A pico process cannot rename its provider, and its own host name is
    never its to set (PR_SET_NAME and /proc/self/comm are the provider's)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            status = f.read()
    except OSError:
        return True                   # gone already: nobody to answer
    tracer = 0
    for line in status.splitlines():
        if line.startswith(b"TracerPid:"):
            tracer = int(line.split()[1])
    return any(_named_instance(p) for p in (pid, tracer) if p)


def _named_instance(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().startswith(INSTANCE_NAME_PREFIX)
    except OSError:
        return False


def close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def error_reply(err: ProtocolError) -> dict[str, Any]:
    return {"ok": False, "error": {"code": err.code, "message": err.message, "exit": err.exit_code}}


# -- the request loop of the manager and of an instance -------------------------------

class Handed(Exception):
    """The handler gave the connection away (the manager, a launch to an
    instance): no reply, and the server forgets it."""


class Descriptors:
    """The descriptors that came with a request. The loop closes what its
    handler did not take (take()); what it only reads (list()) is closed."""

    def __init__(self, fds: list[int]) -> None:
        self._fds = fds

    def __iter__(self):
        return iter(self._fds)

    def __len__(self) -> int:
        return len(self._fds)

    def take(self) -> list[int]:
        """The descriptors, now the handler's to close or keep."""
        fds, self._fds = self._fds, []
        return fds

    def close(self) -> None:
        close_all(self.take())


# A request's handler: (the connection, its typed request, its descriptors) -> the reply.
Handler = Callable[[socket.socket, Request, Descriptors], dict]


def serve_request(conn: socket.socket, handlers: dict[str, Handler],
                  reply: Callable[[socket.socket, dict], bool],
                  drop: Callable[[socket.socket], None], who: str) -> None:
    """Read one request from `conn` and answer it: the manager's loop for
    its clients and an instance's for the manager, written once. `reply`
    sends without waiting (False: drop the peer); a request never takes the
    server down: a bad one gets an error reply, an unexpected failure is
    logged and answered `failed`."""
    try:
        message, fds = receive(conn)
    except ProtocolError as e:
        if not reply(conn, error_reply(e)) or e.code == "too-large":
            drop(conn)
        return
    except OSError:
        message, fds = None, []
    if message is None:
        drop(conn)
        return
    held = Descriptors(fds)
    try:
        op, request = parse_request(message, set(handlers), len(fds))
        answer = handlers[op](conn, request, held)
    except Handed:
        drop(conn)
        return
    except ProtocolError as e:
        answer = error_reply(e)
    except Exception as e:     # never die of a request: log it and say so
        import traceback       # the error path only: not on every lx's start-up
        traceback.print_exc()
        answer = error_reply(ProtocolError("failed", f"{who} error: {e!r}"))
    finally:
        held.close()
    if not reply(conn, answer):
        drop(conn)


# -- checking requests against the schema ---------------------------------------------

def check_request(message: dict[str, Any], allowed: set[str], nfds: int = 0) -> Message:
    """The schema entry of a valid request; ProtocolError otherwise."""
    v = message.get("v")
    if type(v) is not int or v != VERSION:      # true == 1 in Python, not in the schema
        raise ProtocolError("version", f"protocol version {message.get('v')!r} is not "
                            f"{VERSION}; end the old manager with 'lx --shutdown'")
    op = message.get("op")
    if not isinstance(op, str) or op not in allowed:
        raise ProtocolError("unknown-op", f"unknown operation {op!r}")
    spec = OPS[op]
    for name, kind in spec.fields.items():
        if not check_type(message.get(name), kind):
            raise ProtocolError("bad-request", f"{op}: field {name!r} must be {kind}")
    unknown = set(message) - set(spec.fields) - {"v", "op"}
    if unknown:
        raise ProtocolError("bad-request", f"{op}: unknown field {sorted(unknown)[0]!r}")
    wanted = _fd_count(spec)
    if nfds != wanted:
        raise ProtocolError("bad-request", f"{op} takes {wanted} descriptors, not {nfds}")
    return spec


def _fd_count(spec: Message) -> int:
    return len(spec.fds.split(",")) if spec.fds else 0


def _is_wire(value: str) -> bool:
    """Whether a string stands for bytes (see wire_bytes)."""
    try:
        wire_bytes(value)
    except UnicodeEncodeError:
        return False
    return True


def check_type(value: Any, kind: str) -> bool:
    """Whether value matches a schema type: str, int, bool, [T], {str: T},
    a|b|c (one of these strings), {a: T, ...} (an object), T? (or null)."""
    kind = kind.strip()
    if kind.endswith("?"):
        return value is None or check_type(value, kind[:-1])
    if kind == "str":
        return isinstance(value, str) and "\0" not in value and len(value) <= 4096 and _is_wire(value)
    if kind == "arg":
        return (isinstance(value, str) and "\0" not in value and len(value) < limits.MAX_ARG_STRLEN
                and _is_wire(value))
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool) and -2**31 <= value < 2**31
    if kind == "bool":
        return isinstance(value, bool)
    if kind.startswith("["):
        most = MAX_ARGS if kind == "[arg]" else 4096
        return (isinstance(value, list) and len(value) <= most
                and all(check_type(v, kind[1:-1]) for v in value))
    if kind.startswith("{str:"):
        return (isinstance(value, dict) and len(value) <= 4096
                and all(check_type(k, "str") and check_type(v, kind[5:-1]) for k, v in value.items()))
    if kind.startswith("{"):
        fields = dict(part.split(":") for part in kind[1:-1].split(","))
        return (isinstance(value, dict) and set(value) == {k.strip() for k in fields}
                and all(check_type(value[k.strip()], t) for k, t in fields.items()))
    if "|" in kind:
        return value in kind.split("|")
    raise ValueError(f"unknown schema type {kind!r}")


# -- the published page ----------------------------------------------------------------

DOC = os.path.normpath(os.path.join(os.path.realpath(__file__), "../../../../docs/PROTOCOL.md"))


def render_doc() -> str:
    out = [
        "# The lx manager protocol",
        "",
        "<!-- generated by `python3 -m lxsub.manager.protocol --write`; do not edit -->",
        "",
        f"Version {VERSION}. `lx` talks to its manager over a Unix `SOCK_SEQPACKET` socket in "
        "a directory only its user can enter (`$XDG_RUNTIME_DIR/lxsub-*`, or `$LX_HOME/run`). "
        f"One message is one UTF-8 JSON object of at most {MAX_MESSAGE} bytes; descriptors "
        f"travel as `SCM_RIGHTS` (at most {MAX_FDS}). Every request has `\"v\": {VERSION}` and "
        "an `op`; every reply has `ok`. A refused request gets "
        "`{\"ok\": false, \"error\": {\"code\", \"message\", \"exit\"}}` and the connection stays "
        "usable, except after `too-large` or a launch handed to an instance.",
        "",
        "Types: `str` (at most 4096 characters), `arg` (a command-line string, less than "
        f"{limits.MAX_ARG_STRLEN} characters), `int`, `bool`, `[T]` (list), `{{str: T}}` (map), "
        "`a|b` (one of), `T?` (or null). Strings stand for bytes: what is not UTF-8 travels as "
        "lone surrogates U+DC80..U+DCFF (Python's surrogateescape). A message larger than "
        f"{MAX_MESSAGE} bytes (at most {MAX_BODY}) is sent as the frame `{{\"body\": SIZE}}` with "
        "a sealed memfd holding it as its first descriptor.",
        "",
        "| op | direction | fields | descriptors | reply | what |",
        "|---|---|---|---|---|---|",
    ]
    for m in SCHEMA:
        fields = ", ".join(f"`{k}`: {v}".replace("|", "\\|") for k, v in m.fields.items()) or "–"
        out.append(f"| `{m.op}` | {m.path} | {fields} | {m.fds or '–'} | {m.reply or '{ok}'} "
                   f"| {m.summary} |")
    out += ["", "## Error codes", "", "| code | meaning |", "|---|---|"]
    out += [f"| `{code}` | {meaning} |" for code, meaning in ERROR_CODES.items()]
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    if argv == ["--write"]:
        with open(DOC, "w") as f:
            f.write(render_doc())
        print(f"wrote {DOC}")
        return 0
    sys.stdout.write(render_doc())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
