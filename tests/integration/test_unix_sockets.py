"""Unix sockets inside an instance, with the distro's Python: path and
abstract names work between the instance's processes, peer credentials are
the peer's virtual pid and Linux ids, pidfds from SO_PEERPIDFD work on
instance processes (issue 11, item 3; the attacks are in tests/security)."""

from __future__ import annotations

import textwrap

import pytest

from lxsub.platform import features
from tests.integration.distros import describe

pytestmark = [pytest.mark.debian]

PEERS_PY = textwrap.dedent("""\
    import os, socket, struct, sys
    SOL, CRED, PIDFD = socket.SOL_SOCKET, socket.SO_PEERCRED, 77
    srv = socket.socket(socket.AF_UNIX); srv.bind("/tmp/peers.sock"); srv.listen()
    os.chmod("/tmp/peers.sock", 0o777)          # connecting needs write permission
    ab = socket.socket(socket.AF_UNIX); ab.bind("\\0lx-peers"); ab.listen()
    child = os.fork()
    if child == 0:
        os.setgid(1000); os.setuid(1000)
        for addr in ("/tmp/peers.sock", "\\0lx-peers"):
            c = socket.socket(socket.AF_UNIX); c.connect(addr)
            pid, uid, gid = struct.unpack("3i", c.getsockopt(SOL, CRED, 12))
            print("client sees server", pid == os.getppid(), uid, gid, flush=True)
            c.recv(1)
        os._exit(0)
    for lst in (srv, ab):
        lst.settimeout(30)
        conn, _ = lst.accept()
        pid, uid, gid = struct.unpack("3i", conn.getsockopt(SOL, CRED, 12))
        print("server sees client", pid == child, uid, gid, flush=True)
        if sys.argv[1] == "pidfds":
            pidfd = struct.unpack("i", conn.getsockopt(SOL, PIDFD, 4))[0]
            os.close(pidfd)
        else:                                   # a host before Linux 5.3 has none
            try:
                conn.getsockopt(SOL, PIDFD, 4)
                print("SO_PEERPIDFD without pidfds", flush=True)
            except OSError as e:
                assert e.errno == 92, e         # ENOPROTOOPT
        conn.send(b"x")
    os.waitpid(child, 0)
    print("abstract name", ab.getsockname())
    a, b = socket.socketpair()
    pid, uid, gid = struct.unpack("3i", a.getsockopt(SOL, CRED, 12))
    print("pair", pid == os.getpid(), uid, gid)
    d1, d2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    d1.send(b"dgram"); print(d2.recv(10).decode())
    """)


def test_peer_credentials_are_the_instance_view(debian):
    # With pidfds hidden (LX_HIDE_FEATURES) SO_PEERPIDFD is ENOPROTOOPT, as on Linux < 5.3.
    pidfds = "pidfds" if features.has("pidfd_open") else "none"
    cp = debian.exe("python3", "-c", PEERS_PY, pidfds, timeout=120)
    assert cp.returncode == 0, describe(cp)
    lines = cp.stdout.decode().splitlines()
    assert sorted(lines[:4]) == sorted(["client sees server True 0 0",
                                        "server sees client True 1000 1000"] * 2), describe(cp)
    assert lines[4:] == ["abstract name b'\\x00lx-peers'", "pair True 0 0", "dgram"], describe(cp)


PIDFD_PY = textwrap.dedent("""\
    import os, signal, socket, struct, time
    a, b = socket.socketpair()
    child = os.fork()
    if child == 0:
        f = open("/etc/hostname"); a.send(str(f.fileno()).encode()); time.sleep(30); os._exit(0)
    fd = int(b.recv(10))
    pidfd = os.pidfd_open(child)
    stolen = os.fdopen(__import__("ctypes").CDLL(None).syscall(438, pidfd, fd, 0))
    print("getfd", stolen.read().strip() != "")
    libc = __import__("ctypes").CDLL(None, use_errno=True)
    rc = libc.syscall(440, pidfd, None, 0, 20, 0)                    # MADV_COLD, no ranges
    print("madvise", rc if rc == 0 else __import__("ctypes").get_errno())
    on = struct.pack("i", 1)
    try:
        a.setsockopt(socket.SOL_SOCKET, 76, on)                     # SO_PASSPIDFD
    except OSError as e:
        print("passpidfd", e.errno)
    signal.pidfd_send_signal(pidfd, signal.SIGTERM)
    print("signalled", os.waitpid(child, 0)[1] == signal.SIGTERM)
    """)


def test_pidfds_of_instance_processes_work(debian):
    """pidfd_getfd, process_madvise and pidfd_send_signal, now checked by
    the provider, still work on the instance's own processes; SO_PASSPIDFD
    is refused as by an older kernel (ENOPROTOOPT)."""
    cp = debian.exe("python3", "-c", PIDFD_PY, timeout=120)
    assert cp.returncode == 0, describe(cp)
    # process_madvise needs CAP_SYS_NICE on the host (mm/madvise.c): root's, not lxtest's
    madvise = "madvise 0" if debian.user.uid == 0 else "madvise 1"
    assert cp.stdout.decode().splitlines() == ["getfd True", madvise, "passpidfd 92",
                                               "signalled True"], describe(cp)


SENDMSG_PY = textwrap.dedent("""\
    import array, ctypes, errno, os, socket, struct
    SOL, RIGHTS, CREDS = socket.SOL_SOCKET, socket.SCM_RIGHTS, socket.SCM_CREDENTIALS
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); srv.bind("/tmp/sendmsg.sock")
    os.chmod("/tmp/sendmsg.sock", 0o777)
    c = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    f = open("/etc/hostname")
    c.sendmsg([b"he", b"llo"], [(SOL, RIGHTS, array.array("i", [f.fileno()]))], 0,
              "/tmp/sendmsg.sock")
    msg, anc, _, _ = srv.recvmsg(100, socket.CMSG_SPACE(4))
    fd = struct.unpack("i", anc[0][2])[0]
    print(msg.decode(), os.readlink(f"/proc/self/fd/{fd}"))
    a, b = socket.socketpair()
    a.sendmsg([b"s"], [(SOL, RIGHTS, array.array("i", [f.fileno(), f.fileno()]))])
    msg, anc, _, _ = b.recvmsg(10, socket.CMSG_SPACE(8))
    print("stream", msg.decode(), len(anc[0][2]) // 4)
    try:
        c.sendmsg([b"x"], [(SOL, RIGHTS, array.array("i", [999]))], 0, "/tmp/sendmsg.sock")
    except OSError as e:
        print("bad fd", errno.errorcode[e.errno])
    def creds(pid, uid, gid):
        try:
            c.sendmsg([b"c"], [(SOL, CREDS, struct.pack("3i", pid, uid, gid))], 0,
                      "/tmp/sendmsg.sock")
            srv.recv(10)
            return "ok"
        except OSError as e:
            return errno.errorcode[e.errno]
    print("root", creds(os.getpid(), 0, 0), creds(1, 1000, 1000), creds(99999, 0, 0))
    child = os.fork()
    if child == 0:
        os.setgid(1000); os.setuid(1000)
        print("user", creds(os.getpid(), 1000, 1000), creds(os.getppid(), 1000, 1000),
              creds(os.getpid(), 0, 1000), creds(os.getpid(), 1000, 0), flush=True)
        os._exit(0)
    os.waitpid(child, 0)
    # sendmmsg: two datagrams, each to its own destination
    libc = ctypes.CDLL(None, use_errno=True)
    class Iov(ctypes.Structure):
        _fields_ = [("base", ctypes.c_char_p), ("len", ctypes.c_size_t)]
    class Hdr(ctypes.Structure):
        _fields_ = [("name", ctypes.c_char_p), ("namelen", ctypes.c_uint), ("iov", ctypes.c_void_p),
                    ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p),
                    ("controllen", ctypes.c_size_t), ("flags", ctypes.c_int), ("pad", ctypes.c_int),
                    ("len", ctypes.c_uint)]
    other = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); other.bind("\\0lx-sendmmsg")
    names = [struct.pack("H", 1) + b"/tmp/sendmsg.sock\\0", struct.pack("H", 1) + b"\\0lx-sendmmsg"]
    iovs = [Iov(b"one", 3), Iov(b"two!", 4)]
    hdrs = (Hdr * 2)(*[Hdr(n, len(n), ctypes.cast(ctypes.byref(iovs[i]), ctypes.c_void_p),
                           1, None, 0, 0, 0, 0) for i, n in enumerate(names)])
    n = libc.sendmmsg(c.fileno(), hdrs, 2, 0)
    print("sendmmsg", n, hdrs[0].len, hdrs[1].len, srv.recv(10).decode(), other.recv(10).decode())
    """)


def test_sendmsg_in_the_instance(debian):
    """sendmsg and sendmmsg, now sent by the provider (issue 11): path and
    abstract destinations of the instance, descriptors passed on datagram
    and stream sockets, and SCM_CREDENTIALS checked as unix(7) says with
    the instance's ids: a user may send only its own pid and ids, root any
    existing pid; a pid that does not exist is ESRCH."""
    cp = debian.exe("python3", "-u", "-c", SENDMSG_PY, timeout=120)
    assert cp.returncode == 0, describe(cp)
    assert cp.stdout.decode().splitlines() == [
        "hello /etc/hostname", "stream s 2", "bad fd EBADF", "root ok ok ESRCH",
        "user ok EPERM EPERM EPERM", "sendmmsg 2 3 4 one two!"], describe(cp)


NAMES_PY = textwrap.dedent("""\
    import os, socket
    os.chdir("/tmp")
    lst = socket.socket(socket.AF_UNIX); lst.bind("names.sock"); lst.listen()
    c = socket.socket(socket.AF_UNIX); c.connect("/tmp/names.sock")
    conn, _ = lst.accept()
    print(lst.getsockname(), c.getpeername(), conn.getsockname(), repr(c.getsockname()))
    d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); d.bind("/tmp/names.dgram")
    print(d.getsockname())
    """)


def test_socket_names_are_instance_paths(debian):
    """getsockname/getpeername show the path a Unix socket was bound with
    in the instance, as the program gave it (unix(7)), also for the
    accepted end, never the provider's /proc/self/fd name."""
    debian.sh("rm -f /tmp/names.sock /tmp/names.dgram")
    cp = debian.exe("python3", "-c", NAMES_PY, timeout=120)
    assert cp.returncode == 0, describe(cp)
    assert cp.stdout.decode().splitlines() == ["names.sock names.sock names.sock ''",
                                               "/tmp/names.dgram"], describe(cp)
