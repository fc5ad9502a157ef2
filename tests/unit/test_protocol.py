"""The manager protocol's schema checks and its published page."""

from __future__ import annotations

import socket

import pytest

from lxsub.manager import protocol
from lxsub.manager.protocol import ProtocolError, check_request, check_type

LAUNCH = {"v": 1, "op": "launch", "distro": None, "argv": ["ls", "-l"], "mode": "exec",
          "user": None, "cwd": "/tmp", "env": {"TERM": "xterm"}, "tty": None}


def test_page_is_fresh():
    assert protocol.DOC.read_text() == protocol.render_doc(), \
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
