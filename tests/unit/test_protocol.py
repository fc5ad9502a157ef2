"""The manager protocol's schema checks and its published page."""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path

import pytest

from lxsub.manager import protocol
from lxsub.manager.protocol import ProtocolError, check_request, check_type

LAUNCH = {"v": 1, "op": "launch", "distro": None, "argv": ["ls", "-l"], "mode": "exec",
          "user": None, "cwd": "/tmp", "env": {"TERM": "xterm"}, "tty": None}


def test_page_is_fresh():
    assert Path(protocol.DOC).read_text() == protocol.render_doc(), \
        "docs/PROTOCOL.md is stale: run python3 -m lxsub.manager.protocol --write"


@pytest.mark.parametrize("value,kind,ok", [
    ("a", "str", True), ("a\0b", "str", False), (1, "str", False), (None, "str?", True),
    (3, "int", True), (True, "int", False), (2**40, "int", False), (False, "bool", True),
    (["a", "b"], "[str]", True), (["a", 1], "[str]", False), ({"a": "b"}, "{str: str}", True),
    ({"a": 1}, "{str: str}", False), ("exec", "exec|shell", True), ("sh", "exec|shell", False),
    ({"rows": 1, "cols": 2}, "{rows: int, cols: int}", True),
    ({"rows": 1}, "{rows: int, cols: int}", False),
])
def test_types(value, kind, ok):
    assert check_type(value, kind) is ok


def test_a_valid_launch_passes():
    assert check_request(LAUNCH, {"launch"}, nfds=3).op == "launch"


@pytest.mark.parametrize("change,code", [
    ({"v": 2}, "version"), ({"op": "nope"}, "unknown-op"), ({"argv": "ls"}, "bad-request"),
    ({"mode": "run"}, "bad-request"), ({"surprise": 1}, "bad-request"),
])
def test_bad_requests_are_named(change, code):
    with pytest.raises(ProtocolError) as e:
        check_request({**LAUNCH, **change}, {"launch"}, nfds=3)
    assert e.value.code == code and e.value.message


def test_descriptor_count_is_checked():
    with pytest.raises(ProtocolError) as e:
        check_request(LAUNCH, {"launch"}, nfds=0)
    assert e.value.code == "bad-request"


def test_messages_and_descriptors_round_trip():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    r, w = __import__("os").pipe()
    with a, b:
        protocol.send(a, {"op": "x", "n": 1}, [r])
        message, fds = protocol.receive(b)
        assert message == {"op": "x", "n": 1} and len(fds) == 1
        protocol.close_all(fds + [r, w])
        a.send(b"[1, 2]")
        with pytest.raises(ProtocolError):
            protocol.receive(b)
        a.send(b"x" * (protocol.MAX_MESSAGE + 10))
        with pytest.raises(ProtocolError) as e:
            protocol.receive(b)
        assert e.value.code == "too-large"
        a.close()
        assert protocol.receive(b) == (None, [])


# -- issue 18: any bytes, typed requests, Linux-sized messages --------------------------

def _pair():
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


@pytest.mark.parametrize("data", [
    b"[" * 60000, b'{"a":' * 13000, b"\xff\xfe", b"", b"[1]", b'"x"', b"{", b"null",
])
def test_any_bytes_give_a_protocol_error(data):
    a, b = _pair()
    with a, b:
        a.send(data or b"\0")
        with pytest.raises(ProtocolError) as e:
            protocol.receive(b)
        assert e.value.code == "bad-request"


def test_version_true_is_not_one():
    with pytest.raises(ProtocolError) as e:
        check_request({**LAUNCH, "v": True}, {"launch"}, nfds=3)
    assert e.value.code == "version"


def test_lone_surrogates_that_stand_for_no_bytes_are_refused():
    assert check_type("A\udcff", "str") and protocol.wire_bytes("A\udcff") == b"A\xff"
    assert not check_type("\ud800", "str") and not check_type(["\udfff"], "[arg]")
    assert protocol.wire_str(b"A\xff\xfeB") == "A\udcff\udcfeB"


def test_a_linux_sized_message_travels_as_a_sealed_body():
    argv = ["x" * (protocol.limits.MAX_ARG_STRLEN - 1)] * 12      # 1.5 MiB
    a, b = _pair()
    r, w = os.pipe()
    with a, b:
        protocol.send(a, {**LAUNCH, "argv": argv}, [r])
        message, fds = protocol.receive(b)
        assert message["argv"] == argv and len(fds) == 1
        protocol.close_all(fds + [r, w])


@pytest.mark.parametrize("body", ["pipe", "unsealed", "none", "wrong-size"])
def test_a_body_that_is_not_a_sealed_memfd_is_refused(body):
    a, b = _pair()
    fds = []
    if body == "pipe":
        r, w = os.pipe()     # reading it would block the manager for ever
        fds = [r]
    elif body in ("unsealed", "wrong-size"):
        fd = os.memfd_create("t", os.MFD_ALLOW_SEALING)
        os.write(fd, b"{}" * 40000)
        if body == "wrong-size":
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, protocol._SEALS)
        fds = [fd]
    with a, b:
        frame = json.dumps({"body": 100000}).encode()
        socket.send_fds(a, [frame], fds) if fds else a.send(frame)
        with pytest.raises(ProtocolError):
            protocol.receive(b)
    protocol.close_all(fds)


def test_launch_request_checks_linux_limits():
    ok = protocol.LaunchRequest.from_message({**LAUNCH, "argv": ["a" * 131071]})
    assert ok.argv == ["a" * 131071]
    assert not check_type(["a" * 131072], "[arg]")      # MAX_ARG_STRLEN, NUL included
    with pytest.raises(ProtocolError) as e:               # ~2.6 MiB in all: E2BIG
        protocol.LaunchRequest.from_message({**LAUNCH, "argv": ["a" * 131000] * 20})
    assert e.value.code == "cannot-run" and "E2BIG" in e.value.message and e.value.exit_code == 126
    with pytest.raises(ProtocolError):
        protocol.LaunchRequest.from_message(
            {**LAUNCH, "tty": {"stdin": True, "stdout": True, "stderr": True, "rows": -1, "cols": 80}})


# -- typed requests and the one request loop (protocol.serve_request) -------------------

def test_requests_are_typed():
    assert protocol.parse_request({"v": 1, "op": "terminate", "distro": "deb"}, {"terminate"}) \
        == ("terminate", protocol.TerminateRequest("deb"))
    assert protocol.parse_request({"v": 1, "op": "end", "reason": None}, {"end"}) \
        == ("end", protocol.EndRequest("terminate"))
    assert protocol.parse_request({"v": 1, "op": "signal", "signal": 2}, {"signal"}) \
        == ("signal", protocol.SignalRequest(2))
    op, launch = protocol.parse_request(LAUNCH, {"launch"}, 3)
    assert op == "launch" and isinstance(launch, protocol.LaunchRequest) and launch.argv == ["ls", "-l"]
    assert protocol.parse_request({"v": 1, "op": "hello"}, {"hello"}) == ("hello", None)
    with pytest.raises(ProtocolError) as e:
        protocol.parse_request({"v": 1, "op": "signal", "signal": "INT"}, {"signal"})
    assert e.value.code == "bad-request"


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def _serve(message: dict, handlers: dict, fds: list[int] = ()) -> tuple[dict | None, bool]:
    """(the reply, whether the peer was dropped) of one request."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    dropped = []
    try:
        protocol.send(b, message, fds)
        protocol.serve_request(a, handlers, lambda c, r: protocol.send(c, r) or True,
                               dropped.append, "test")
        b.setblocking(False)
        try:
            reply, extra = protocol.receive(b)
            protocol.close_all(extra)
        except BlockingIOError:
            reply = None
        return reply, bool(dropped)
    finally:
        a.close()
        b.close()


def test_request_loop_answers_and_owns_untaken_descriptors():
    r, w = os.pipe()
    kept: list[int] = []
    try:
        def session(_conn, req, held):
            assert isinstance(req, protocol.LaunchRequest)
            kept.extend(held.take())
            return {"ok": True}
        message = {**LAUNCH, "op": "session", "default_user": None}
        reply, dropped = _serve(message, {"session": session}, [r, r, r, r])
        assert reply == {"ok": True} and not dropped
        assert len(kept) == 4 and all(_fd_open(fd) for fd in kept)      # taken: the handler's

        seen: list[int] = []

        def launch(_conn, _req, held):
            seen.extend(held)                  # only read: the loop closes them
            raise ProtocolError("no-distro", "no such distro", 3)
        reply, dropped = _serve(LAUNCH, {"launch": launch}, [r, r, r])
        assert reply["error"] == {"code": "no-distro", "message": "no such distro", "exit": 3}
        assert len(seen) == 3 and not any(_fd_open(fd) for fd in seen)
    finally:
        protocol.close_all([r, w, *kept])


def test_request_loop_never_dies_of_a_request():
    def broken(_conn, _req, _held):
        raise KeyError("x")

    def handed(_conn, _req, _held):
        raise protocol.Handed()
    hello = {"v": 1, "op": "hello"}
    reply, dropped = _serve(hello, {"hello": broken})
    assert reply["error"]["code"] == "failed" and "test error: KeyError" in reply["error"]["message"]
    assert _serve(hello, {"hello": handed}) == (None, True)           # no reply, forgotten
    reply, _ = _serve({"v": 1, "op": "status"}, {"hello": broken})
    assert reply["error"]["code"] == "unknown-op"
