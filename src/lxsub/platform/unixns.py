"""An instance's own network namespace for its Unix sockets.

Linux keeps abstract Unix socket names (`\\0name`) per network namespace
(net/unix/af_unix.c looks them up in the socket's `sock_net()`), so a
program in a container cannot reach the host's abstract sockets. lxsub
shares the host's network, but the AF_UNIX sockets of an instance are made
in a namespace of their own: a helper process, forked by the provider
into a new user and network namespace, creates them on request and hands
them over (SCM_RIGHTS). Abstract names bound, connected to or sent to on
those sockets are then the instance's alone, whatever call uses them
(`sendmsg` included, which the filter cannot read). Path names are not
namespaced (the kernel finds them by inode), and the provider resolves
those inside the instance itself.

The helper also makes the NETLINK_SOCK_DIAG socket through which the
provider asks which socket is another's peer (`peer_inode`): sock_diag
answers only about sockets of its own namespace.

And it binds sockets to paths (`bind_path`). The kernel keeps the address
string a socket was bound with and gives it back as that socket's
address to its peers: getpeername(2), accept(2), recvfrom(2) and
recvmsg(2)'s msg_name, all native (unix(7)). Bound by the provider
through its `/proc/self/fd/N/NAME`, a socket would show that name; the
helper, in a mount namespace of its own, is chrooted into an empty tmpfs
where it lays out the program's own path: its directories, then the last
one as a symlink to the real parent directory (through a bind of the
host's /proc at `/.lxfd`), so the kernel creates the socket file in the
directory the provider resolved inside the instance, under the very
string the program gave.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import fcntl
import os
import signal
import socket
import struct
import threading
from typing import Callable

from lxsub.abi.prctl import PR_SET_NAME, PR_SET_PDEATHSIG
from lxsub.abi.sched import CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWUSER
from lxsub.platform import features, hostfd

SO_NETNS_COOKIE = 71

_REQ = struct.Struct("<iiiB")         # family, type, protocol, pair
UDIAG_SHOW_VFS, UDIAG_SHOW_PEER = 0x2, 0x4        # linux/unix_diag.h
UNIX_DIAG_VFS, UNIX_DIAG_PEER = 1, 2
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000
_PROC = "/.lxfd"                       # the host's /proc inside the helper's root
_BIND = b"B"                           # a bind request: b"B" + path, with [socket, parent]


def helper_reply(msg: bytes, fds: list[int], count: int, gone: OSError) -> list[int]:
    """The descriptors a forked helper sent with "ok"; its "err ERRNO" as
    that OSError; `gone` for anything else (it died). Descriptors that come
    with a refusal are closed."""
    if msg == b"ok" and len(fds) == count:
        return fds
    for fd in fds:
        os.close(fd)
    if msg.startswith(b"err "):
        code = int(msg[4:])
        raise OSError(code, os.strerror(code))
    raise gone


def fork_helper(serve: Callable[[socket.socket], None]) -> tuple[int, socket.socket]:
    """Fork a helper that runs `serve` on its end of a new SEQPACKET pair
    (never returning); (its pid, the provider's end)."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        parent.close()
        serve(child)
    child.close()
    return pid, parent


def stop_helper(sock: socket.socket | None, pid: int) -> None:
    """End a helper fork_helper started: its socket closed, itself killed
    and reaped (0 or a pid already gone: nothing to do)."""
    if sock is not None:
        sock.close()
    if pid:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ChildProcessError, ProcessLookupError):
            pass


def unshare_as_self(flags: int) -> None:
    """In a forked helper: new namespaces (CLONE_NEWUSER among `flags`) in
    which the caller keeps its own host uid and gid (user_namespaces(7):
    an unprivileged process may map its own ids)."""
    uid, gid = os.getuid(), os.getgid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(flags) != 0:
        raise OSError(ctypes.get_errno(), "unshare")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                       ("gid_map", f"{gid} {gid} 1")):
        fd = os.open(f"/proc/self/{name}", os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)


def _serve(sock: socket.socket) -> None:
    """The helper's loop: one request, one answer; ends with the provider."""
    code = 1
    try:
        # Forked at any time: keep none of the provider's descriptors (a
        # copy of a program's pipe or socket would keep it open).
        keep = sock.fileno()
        hostfd.close_fds_except(keep)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # Not the provider's name ("lx:DISTRO"), which says "an instance".
        libc.prctl(PR_SET_NAME, ctypes.c_char_p(b"lx-unix-sockets"), 0, 0, 0)
        unshare_as_self(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS)
        can_bind = _private_root(libc)
        sock.send(b"ready bind" if can_bind else b"ready")
        while True:
            req, fds, _, _ = socket.recv_fds(sock, 256, 2)
            if req[:1] == _BIND and len(fds) == 2:
                sock.send(_bind_here(req[1:], *fds))
                continue
            for fd in fds:
                os.close(fd)
            if len(req) != _REQ.size:
                break
            family, type_, proto, pair = _REQ.unpack(req)
            try:
                if pair:
                    a, b = socket.socketpair(family, type_, proto)
                    fds = [a.detach(), b.detach()]
                else:
                    fds = [socket.socket(family, type_, proto).detach()]
            except OSError as e:
                sock.send(b"err %d" % (e.errno or errno.EINVAL))
                continue
            try:
                socket.send_fds(sock, [b"ok"], fds)
            finally:
                for fd in fds:
                    os.close(fd)
        code = 0
    except BaseException:
        pass
    finally:
        os._exit(code)


def _private_root(libc) -> bool:
    """In the helper: root into an empty tmpfs of its own mount namespace,
    with the host's /proc at /.lxfd (its magic links name the provider's
    directories). False where the host refuses (binds then keep the
    provider's path)."""
    try:
        for src, target, fstype, flags in ((None, "/", None, MS_REC | MS_PRIVATE),
                                           (b"tmpfs", "/tmp", b"tmpfs", 0)):
            if libc.mount(src, target.encode(), fstype, flags, None) != 0:
                return False
        os.mkdir("/tmp" + _PROC, 0o700)
        if libc.mount(b"/proc", ("/tmp" + _PROC).encode(), None, MS_BIND | MS_REC, None) != 0:
            return False
        os.chroot("/tmp")
        os.chdir("/")
        return True
    except OSError:
        return False


def _bind_here(path: bytes, sock: int, parent: int) -> bytes:
    """Bind `sock` under the string `path` in directory `parent`: the path's
    directories made in the helper's tmpfs, its last directory a symlink to
    `parent`; all of it removed again. "ok" or "err ERRNO"."""
    made: list[bytes] = []
    try:
        dirs, _, name = path.rpartition(b"/")
        parts = [p for p in dirs.split(b"/") if p]
        at = b"/" if path.startswith(b"/") else b""
        for i, part in enumerate(parts):
            at += part
            if i == len(parts) - 1:
                os.symlink(f"{_PROC}/self/fd/{parent}".encode(), at)
            else:
                os.mkdir(at, 0o700)
            made.append(at)
            at += b"/"
        if not parts:
            os.fchdir(parent)            # a bare name: the parent is the working directory
        s = socket.socket(fileno=sock)
        try:
            s.bind(path)
        finally:
            s.detach()
        return b"ok"
    except OSError as e:
        return b"err %d" % (e.errno or errno.EINVAL)
    finally:
        os.chdir("/")
        for at in reversed(made):
            (os.unlink if os.path.islink(at) else os.rmdir)(at)
        os.close(sock)
        os.close(parent)


def bindable_as_given(path: bytes) -> bool:
    """Whether `bind_path` can lay this path out: no empty, "." or ".."
    component, none naming the helper's /proc."""
    parts = path.rstrip(b"/").split(b"/")
    inner = parts[1:-1] if path.startswith(b"/") else parts[:-1]
    return all(p not in (b"", b".", b"..") for p in inner) and parts[-1] not in (b"", b".", b"..") \
        and not (path.startswith(b"/") and parts[1] == _PROC[1:].encode())


class UnixNamespace:
    """The helper, as the provider sees it, started at the first use (an
    instance whose programs make no Unix socket pays nothing). `available`
    is False where the host allows no unprivileged user namespaces."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._tried = False
        self.helper_pid = 0
        self.binds = False             # bind_path works (the helper has its own root)
        self.cookie = 0
        self._diag = -1
        # socket inode -> what its maker recorded (see kernel/syscalls/net.py)
        self.made_by: dict[int, tuple] = {}
        # (st_dev, st_ino) of a socket file -> the path it was bound with,
        # as the program gave it
        self.bound: dict[int, bytes] = {}
        # SCM_CREDENTIALS (kernel/syscalls/net.py): whether a process of the
        # instance turned SO_PASSCRED on, the socket inode of each bound
        # socket file, and per receiving socket inode the credentials of
        # the messages the provider sent for programs, in order
        self.passcred = False
        self.socket_of_file: dict[tuple[int, int], int] = {}
        self.sent_creds: dict[int, collections.deque] = {}

    @property
    def available(self) -> bool:
        if not self._tried:
            self._tried = True
            try:
                self._start()
            except OSError:
                self.close()
        return self._sock is not None

    def _start(self) -> None:
        self.helper_pid, parent = fork_helper(_serve)
        self._sock = parent
        ready = parent.recv(16)
        if not ready.startswith(b"ready"):
            raise OSError(errno.ENOSYS, "no private network namespace")
        self.binds = ready == b"ready bind"
        probe = self.socket(socket.AF_UNIX, socket.SOCK_DGRAM, 0)
        try:
            self.cookie = netns_cookie(probe)
        finally:
            os.close(probe)
        self._diag = self.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                                 | socket.SOCK_NONBLOCK, 4)     # NETLINK_SOCK_DIAG

    def _ask(self, family: int, type_: int, proto: int, pair: bool) -> list[int]:
        assert self._sock is not None
        with self._lock:
            self._sock.send(_REQ.pack(family, type_, proto, int(pair)))
            msg, fds, _, _ = socket.recv_fds(self._sock, 64, 2)
        return helper_reply(msg, fds, 2 if pair else 1,
                            OSError(errno.ENOMEM, "the socket helper has gone"))

    def socket(self, family: int, type_: int, proto: int) -> int:
        return self._ask(family, type_, proto, False)[0]

    def socketpair(self, family: int, type_: int, proto: int) -> tuple[int, int]:
        a, b = self._ask(family, type_, proto, True)
        return a, b

    def bind_path(self, sock: int, parent: int, path: bytes) -> None:
        """bind(2) `sock` to `path`, whose last component is made in directory
        `parent`, keeping `path` as the address the kernel shows (above)."""
        assert self._sock is not None
        with self._lock:
            socket.send_fds(self._sock, [_BIND + path], [sock, parent])
            msg = self._sock.recv(64)
        helper_reply(msg, [], 0, OSError(errno.ENOMEM, "the socket helper has gone"))

    def peer_inode(self, ino: int) -> int | None:
        """The inode of the peer of Unix socket `ino` (sock_diag,
        UDIAG_SHOW_PEER), None if it has none or is unknown here."""
        return self._diag_attr(ino, UDIAG_SHOW_PEER, UNIX_DIAG_PEER)

    def bound_file(self, ino: int) -> tuple[int, int] | None:
        """(st_dev, st_ino) of the file Unix socket `ino` is bound to
        (UDIAG_SHOW_VFS); an accepted socket has its listener's."""
        vfs = self._diag_attr(ino, UDIAG_SHOW_VFS, UNIX_DIAG_VFS, 8)
        if vfs is None:
            return None
        file_ino, dev = vfs & 0xFFFFFFFF, vfs >> 32
        return os.makedev(dev >> 20, dev & 0xFFFFF), file_ino      # the kernel's dev_t

    def _diag_attr(self, ino: int, show: int, attr: int, size: int = 4) -> int | None:
        if self._diag < 0:
            return None
        req = struct.pack("<BBHIII2I", socket.AF_UNIX, 0, 0, 0xFFFFFFFF, ino, show,
                          0xFFFFFFFF, 0xFFFFFFFF)
        msg = struct.pack("<IHHII", 16 + len(req), 20, 1, 1, 0) + req   # SOCK_DIAG_BY_FAMILY
        with self._lock:
            os.write(self._diag, msg)
            try:          # the kernel answers within the write; never wait here
                reply = os.read(self._diag, 8192)
            except BlockingIOError:
                return None
        if len(reply) < 32 or struct.unpack_from("<H", reply, 4)[0] != 20:
            return None
        length = struct.unpack_from("<I", reply)[0]
        off = 16 + 16                             # nlmsghdr, unix_diag_msg
        while off + 4 <= length:
            alen, atype = struct.unpack_from("<HH", reply, off)
            if alen < 4:
                break
            if atype == attr and alen >= 4 + size:
                return int.from_bytes(reply[off + 4:off + 4 + size], "little")
            off += (alen + 3) & ~3
        return None

    def namespace_fds(self) -> tuple[int, int]:
        """Descriptors of the helper's user and network namespaces, for a
        process of the host user's that must make a socket there itself
        (platform/landlock.py); the caller closes them."""
        user = os.open(f"/proc/{self.helper_pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        try:
            net = os.open(f"/proc/{self.helper_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            os.close(user)
            raise
        return user, net

    def close(self) -> None:
        if self._diag >= 0:
            os.close(self._diag)
            self._diag = -1
        stop_helper(self._sock, self.helper_pid)
        self._sock, self.helper_pid = None, 0


_SIOCGSKNS = 0x894C
_NOT_OURS = -1          # no cookie is negative


def netns_cookie(fd: int) -> int:
    """The cookie of the network namespace socket `fd` lives in (Linux 5.14).
    Before: the inode of that namespace (SIOCGSKNS, Linux 4.9), tagged with
    the top bit; it needs CAP_NET_ADMIN over the namespace, which the
    provider has over the ones it made: where it is refused the socket is
    none of the instance's (_NOT_OURS)."""
    s = socket.socket(fileno=os.dup(fd))
    try:
        if features.has("so_netns_cookie"):
            return struct.unpack("<Q", s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]
        try:
            ns = fcntl.ioctl(s.fileno(), _SIOCGSKNS)
        except PermissionError:
            return _NOT_OURS
        try:
            return os.fstat(ns).st_ino | 1 << 63
        finally:
            os.close(ns)
    finally:
        s.close()
