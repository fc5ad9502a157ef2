"""Addresses of path-bound Unix sockets, as the instance names them: the
kernel gives back the string a socket was bound with (unix(7)) through
accept(2), recvfrom(2), recvmsg(2)'s msg_name and getpeername(2), which
must be the program's own path, not the provider's /proc/self/fd name
(platform/unixns.py bind_path)."""

from __future__ import annotations

import textwrap

import pytest

from tests.integration.distros import describe

pytestmark = [pytest.mark.debian]

ADDRESSES_PY = textwrap.dedent("""\
    import os, socket, tempfile
    d = tempfile.mkdtemp(dir="/tmp")
    os.chdir(d)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(d + "/srv.sock")
    srv.listen()
    cli = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    cli.bind("cli.sock")                                  # relative: kept as given
    cli.connect(d + "/srv.sock")
    conn, addr = srv.accept()
    print("accept", addr.replace(d, "D"))
    print("getpeername", cli.getpeername().replace(d, "D"))
    print("getsockname", srv.getsockname().replace(d, "D"))
    os.mkdir("sub")
    a = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.bind(d + "/sub/a.sock")
    b = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    b.bind(d + "/b.sock")
    a.sendto(b"one", d + "/b.sock")
    print("recvfrom", b.recvfrom(16)[1].replace(d, "D"))
    a.connect(d + "/b.sock")
    a.send(b"two")
    print("recvmsg", b.recvmsg(16)[3].replace(d, "D"))
    print("files", sorted(os.listdir(d)), os.listdir("sub"))
    """)


def test_peer_addresses_are_instance_paths(debian):
    cp = debian.exe("python3", "-c", ADDRESSES_PY, timeout=120)
    assert cp.returncode == 0, describe(cp)
    assert cp.stdout.decode().splitlines() == [
        "accept cli.sock", "getpeername D/srv.sock", "getsockname D/srv.sock",
        "recvfrom D/sub/a.sock", "recvmsg D/sub/a.sock",
        "files ['b.sock', 'cli.sock', 'srv.sock', 'sub'] ['a.sock']"], describe(cp)
