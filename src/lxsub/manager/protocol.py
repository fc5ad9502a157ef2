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
import json
import os
import socket
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VERSION = 1
MAX_MESSAGE = 64 * 1024
MAX_FDS = 8

# Error codes of replies (code -> meaning), part of the published schema.
ERROR_CODES = {
    "bad-request": "not a JSON object, a missing or mistyped field, or descriptors it does not take",
    "too-large": f"the message is larger than {MAX_MESSAGE} bytes",
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


@dataclass(frozen=True)
class Message:
    op: str
    path: str                    # "client -> manager", ...
    summary: str
    fields: dict[str, str] = field(default_factory=dict)   # name -> type (see check_type)
    fds: str = ""                 # what descriptors come with it, if any
    reply: str = ""


# What of the client's environment a command sees (the rest is a login environment).
PASSED_ENV = ("TERM", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "COLORTERM", "TZ")
# What else the client sends for interop: its PATH (appended, translated, to
# the Linux PATH with [interop] appendHostPath) and LXENV with the variables
# it names (see kernel/interop.py).
INTEROP_ENV = ("PATH", "LXENV")


def launch_env(environ) -> dict[str, str]:
    """The `env` of a launch: PASSED_ENV, INTEROP_ENV and what LXENV names."""
    names = set(PASSED_ENV) | set(INTEROP_ENV)
    for item in environ.get("LXENV", "").split(":"):
        name = item.partition("/")[0]
        if name:
            names.add(name)
    return {k: v for k, v in environ.items() if k in names}


TTY_FIELDS = "{stdin: bool, stdout: bool, stderr: bool, rows: int, cols: int}"
LAUNCH_FIELDS = {
    "distro": "str?", "argv": "[str]", "mode": "exec|shell|login", "user": "str?",
    "cwd": "str?", "env": "{str: str}", "tty": f"{TTY_FIELDS}?",
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
                  "started the instance); later {ok, event: 'exit', status} (status as lx exits: 128+N for signal N)"),
    Message("signal", "client -> instance", "Deliver a signal the client got to its command's "
            "process group (SIGINT, SIGTERM, SIGHUP, SIGQUIT). The client resizes a pty "
            "itself, on the master it holds.", {"signal": "int"}, reply="none"),
    Message("terminate", "client -> manager", "End a distro's instance now (every process killed).",
            {"distro": "str"}, reply="{ok, ended: bool}"),
    Message("shutdown", "client -> manager", "End every instance, then the manager.",
            reply="{ok}"),
    Message("session", "manager -> instance", "Take over a client's launch.",
            {**LAUNCH_FIELDS, "default_user": "str?"},
            fds="the client's connection, stdin, stdout, stderr", reply="{ok} or an error"),
    Message("info", "manager -> instance", "The instance's state for status and reattaching.",
            reply="{ok, distro, pid, clients, processes, started, state}"),
    Message("end", "manager -> instance", "End the instance now.", reply="{ok}"),
]

OPS = {m.op: m for m in SCHEMA}


# -- sending and receiving ----------------------------------------------------------

def send(sock: socket.socket, message: dict[str, Any], fds: list[int] | tuple[int, ...] = ()) -> None:
    data = json.dumps(message, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        raise ValueError("message too large")
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.sendall(data)


def receive(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """One message and its descriptors; (None, []) at end of stream.

    Raises ProtocolError for what is not a JSON object or too large; the
    descriptors of a refused message are closed.
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
        try:
            message = json.loads(data.decode())
        except (UnicodeDecodeError, ValueError):
            raise ProtocolError("bad-request", "not a JSON message") from None
        if not isinstance(message, dict):
            raise ProtocolError("bad-request", "a message is a JSON object")
    except ProtocolError:
        close_all(received)
        raise
    return message, received


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


# -- checking requests against the schema ---------------------------------------------

def check_request(message: dict[str, Any], allowed: set[str], nfds: int = 0) -> Message:
    """The schema entry of a valid request; ProtocolError otherwise."""
    if message.get("v") != VERSION:
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


def check_type(value: Any, kind: str) -> bool:
    """Whether value matches a schema type: str, int, bool, [T], {str: T},
    a|b|c (one of these strings), {a: T, ...} (an object), T? (or null)."""
    kind = kind.strip()
    if kind.endswith("?"):
        return value is None or check_type(value, kind[:-1])
    if kind == "str":
        return isinstance(value, str) and "\0" not in value and len(value) <= 4096
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool) and -2**31 <= value < 2**31
    if kind == "bool":
        return isinstance(value, bool)
    if kind.startswith("["):
        return (isinstance(value, list) and len(value) <= 4096
                and all(check_type(v, kind[1:-1]) for v in value))
    if kind.startswith("{str:"):
        return (isinstance(value, dict) and len(value) <= 256
                and all(check_type(k, "str") and check_type(v, kind[5:-1]) for k, v in value.items()))
    if kind.startswith("{"):
        fields = dict(part.split(":") for part in kind[1:-1].split(","))
        return (isinstance(value, dict) and set(value) == {k.strip() for k in fields}
                and all(check_type(value[k.strip()], t) for k, t in fields.items()))
    if "|" in kind:
        return value in kind.split("|")
    raise ValueError(f"unknown schema type {kind!r}")


# -- the published page ----------------------------------------------------------------

DOC = Path(__file__).resolve().parents[3] / "docs" / "PROTOCOL.md"


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
        "Types: `str`, `int`, `bool`, `[T]` (list), `{str: T}` (map), `a|b` (one of), "
        "`T?` (or null).",
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
        DOC.write_text(render_doc())
        print(f"wrote {DOC}")
        return 0
    sys.stdout.write(render_doc())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
