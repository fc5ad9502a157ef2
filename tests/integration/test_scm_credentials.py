"""SCM_CREDENTIALS received inside an instance are the instance's view
(unix(7)): the sender's pid in the instance and its Linux uid and gid,
whether it sent natively (send) or through the provider (sendmsg, with
or without credentials of its own), not the host's pid and user
(kernel/syscalls/net.py sys_recvmsg)."""

from __future__ import annotations

import textwrap

import pytest

from tests.integration.distros import describe

pytestmark = [pytest.mark.debian]

CREDS_PY = textwrap.dedent("""\
    import os, socket, struct, sys, time
    SCM_CREDENTIALS, SO_PASSCRED = 2, 16
    def creds(sock):
        data, anc, _, _ = sock.recvmsg(64, socket.CMSG_SPACE(12))
        return [struct.unpack("iII", d) for l, t, d in anc if t == SCM_CREDENTIALS]
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    if sys.argv[1] == "time":
        def loop(n):
            t = time.perf_counter()
            for _ in range(n):
                a.send(b"x")
                b.recvmsg(64, 64)
            return (time.perf_counter() - t) / n * 1e6
        loop(200)
        print("plain %.1f" % min(loop(2000) for _ in range(3)))
        b.setsockopt(socket.SOL_SOCKET, SO_PASSCRED, 1)
        loop(200)
        print("passcred %.1f" % min(loop(2000) for _ in range(3)))
        sys.exit(0)
    b.setsockopt(socket.SOL_SOCKET, SO_PASSCRED, 1)
    me = (os.getpid(), os.getuid(), os.getgid())
    print("me", *me)
    a.send(b"native")
    print("send", *creds(b)[0])
    a.sendmsg([b"provider"])
    print("sendmsg", *creds(b)[0])
    a.sendmsg([b"given"], [(socket.SOL_SOCKET, SCM_CREDENTIALS, struct.pack("iII", *me))])
    print("given", *creds(b)[0])
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        os.setgid(1000); os.setuid(1000)
        a.send(b"child")
        a.sendmsg([b"child"])
        os.read(r, 1)                       # received while the sender lives
        os._exit(0)
    print("child", child, *creds(b)[0])
    print("child", child, *creds(b)[0])
    os.write(w, b"x")
    os.waitpid(child, 0)
    """)


def test_received_credentials_are_the_instances(debian):
    cp = debian.lx(["-u", "root", "-e", "python3", "-c", CREDS_PY, "check"], timeout=120)
    assert cp.returncode == 0, describe(cp)
    lines = [line.split() for line in cp.stdout.decode().splitlines()]
    me = lines[0][1:]
    assert me[1:] == ["0", "0"], lines
    assert lines[1:4] == [["send", *me], ["sendmsg", *me], ["given", *me]], lines
    child = lines[4][1]
    assert lines[4:] == [["child", child, child, "1000", "1000"]] * 2, lines


def test_recvmsg_cost(debian):
    """What a received message costs now that recvmsg stops: printed for
    the report (send+recvmsg on a datagram socketpair, in us), and the
    credentials case must not cost more than a few stops."""
    cp = debian.exe("python3", "-c", CREDS_PY, "time", timeout=300)
    assert cp.returncode == 0, describe(cp)
    times = dict(line.split() for line in cp.stdout.decode().splitlines())
    print("recvmsg loop (us per send+recvmsg):", times)
    assert float(times["passcred"]) < 20 * max(float(times["plain"]), 50.0), times
