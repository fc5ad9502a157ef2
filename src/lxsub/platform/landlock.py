"""A program's Landlock domain, for the work the provider does for it.

landlock_restrict_self(2) runs natively: the host kernel restricts the
calling thread, and every call the thread makes itself is checked. But
some calls are the provider's work on the thread's behalf (an inet bind
or connect on a copy of its socket): the kernel checks those against the
provider's domain, which is none, so Linux's restrictions would not hold.

A domain helper is a process whose Landlock domain is built from the same
rule sets, in the same order, as the thread's: restricting itself with
each one at the moment the thread does (a rule set may change afterwards;
the domain keeps the rules it had then). The provider hands it the work
(SCM_RIGHTS for the socket) and the kernel checks it in the helper's
domain as it would in the thread's. A nested domain is a fork of its
parent's helper, restricted once more (domains stack, landlock(7)); a
helper ends when its domain is dropped (its socket closes).

The scope of LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET compares the connecting
client's domain with the one the server's socket was made in (its file's
credentials), by identity, not by rules. The helpers of nested domains
are forks of their parents' helpers, so they stand in the same relation
to each other as the domains they copy: a restricted thread's Unix
sockets are made by its helper (in a child that joins the instance's
socket namespace, platform/unixns.py) and its connects to abstract names
are made there too, so the kernel compares helper with helper as it would
thread with thread. A send with an abstract address is still the
provider's, unscoped.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import struct
import threading

from lxsub.abi.prctl import PR_SET_NAME, PR_SET_NO_NEW_PRIVS
from lxsub.abi.sysno import NUMBERS
from lxsub.platform.unixns import fork_helper, helper_reply

_FORK, _BIND, _CONNECT, _REOPEN, _SOCKET = b"F", b"B", b"C", b"O", b"S"
_ERR = struct.Struct("<i")
_SOCKET_ARGS = struct.Struct("<iii")     # family, type, protocol
_CLONE_NEWUSER, _CLONE_NEWNET = 0x10000000, 0x40000000


def _restrict(libc, ruleset: int) -> None:
    """landlock_restrict_self(ruleset, 0), with no_new_privs first (the
    helper has no CAP_SYS_ADMIN to stand in for it)."""
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    if libc.syscall(NUMBERS["landlock_restrict_self"], ruleset, 0) != 0:
        raise OSError(ctypes.get_errno(), "landlock_restrict_self")


def _do(op: bytes, fd: int, arg: bytes) -> int:
    """bind(2) or connect(2) of socket `fd` to address `arg`, or an open of
    the file `fd` with the access mode in `arg`, here, in this helper's
    domain: 0 or the errno."""
    if op == _REOPEN:
        return _reopen(fd, int(arg))
    libc = ctypes.CDLL(None, use_errno=True)
    call = libc.bind if op == _BIND else libc.connect
    buf = ctypes.create_string_buffer(arg, len(arg))
    return 0 if call(fd, buf, len(arg)) == 0 else ctypes.get_errno()


def _reopen(fd: int, access: int) -> int:
    """Open the file again through its /proc/self/fd link: Landlock's
    file_open hook checks the file's own path (the link's target) against
    the domain's rules for that access mode."""
    try:
        os.close(os.open(f"/proc/self/fd/{fd}", access | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC))
    except OSError as e:
        return e.errno or errno.EACCES
    return 0


def _serve(sock: socket.socket, ruleset: int) -> None:
    """The helper: restricted by `ruleset` (unless -1), then one answer per
    request until the provider (or the parent domain's helper) closes."""
    code = 1
    try:
        keep = {sock.fileno(), ruleset}
        for fd in range(3, max(keep) + 1):
            if fd not in keep:
                try:
                    os.close(fd)
                except OSError:
                    pass
        os.closerange(max(keep) + 1, os.sysconf("SC_OPEN_MAX"))
        # Nested helpers reap themselves; none dies with its parent (no
        # PDEATHSIG): a nested domain outlives the one it was made from.
        # Each ends when its socket closes, the provider's exit included.
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_NAME, ctypes.c_char_p(b"lx-landlock"), 0, 0, 0)
        if ruleset >= 0:
            _restrict(libc, ruleset)
            os.close(ruleset)
        sock.send(b"ready")
        _answer_requests(sock)
        code = 0
    finally:
        os._exit(code)


def _answer_requests(sock: socket.socket) -> None:
    while True:
        req, fds, _, _ = socket.recv_fds(sock, 512, 2)
        if not req:
            return
        if req[:1] == _FORK and len(fds) == 1:
            _fork_nested(sock, fds[0])
            continue
        if req[:1] == _SOCKET and len(fds) == 2:
            _make_socket(sock, fds, req[1:])
            continue
        err = _do(req[:1], fds[0], req[1:]) if len(fds) == 1 else errno.EINVAL
        for fd in fds:
            os.close(fd)
        sock.send(_ERR.pack(err))


def _make_socket(sock: socket.socket, ns: list[int], args: bytes) -> None:
    """A socket made in this domain, in the namespaces `ns` (a user and a
    network namespace's descriptors): a child joins them (its domain is
    this one: a fork keeps it) and sends the socket back itself."""
    pid = os.fork()
    if pid == 0:
        try:
            socket.send_fds(sock, [b"ok"], [_socket_in(ns, args)])
        except OSError as e:
            sock.send(b"err %d" % (e.errno or errno.EINVAL))
        finally:
            os._exit(0)
    for fd in ns:
        os.close(fd)
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass                   # reaped already (SIGCHLD is ignored here)


def _socket_in(ns: list[int], args: bytes) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    for fd, kind in zip(ns, (_CLONE_NEWUSER, _CLONE_NEWNET)):
        if libc.setns(fd, kind) != 0:
            raise OSError(ctypes.get_errno(), "setns")
    family, type_, proto = _SOCKET_ARGS.unpack(args)
    fd = libc.socket(family, type_, proto)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "socket")
    return fd


def _fork_nested(sock: socket.socket, ruleset: int) -> None:
    """A helper for a domain nested in this one, its socket sent back."""
    try:
        _, end = fork_helper(lambda child: _serve(child, ruleset))
    except OSError as e:
        sock.send(b"err %d" % (e.errno or errno.ENOMEM))
        return
    finally:
        os.close(ruleset)
    try:
        ready = end.recv(16)
        if ready == b"ready":
            socket.send_fds(sock, [b"ok"], [end.fileno()])
        else:
            sock.send(b"err %d" % errno.EPERM)
    finally:
        end.close()


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass      # the provider's loop reaps every child (waitpid(-1)) and got it first


class Domain:
    """One Landlock domain of the instance's threads, as its helper."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()

    @classmethod
    def restricted(cls, parent: "Domain | None", ruleset: int) -> "Domain":
        """The domain `parent` (None: no domain) restricted by `ruleset`, a
        copy of the thread's descriptor (the caller keeps and closes it)."""
        if parent is None:
            pid, end = fork_helper(lambda child: _serve(child, ruleset))
            if end.recv(16) != b"ready":
                end.close()
                os.waitpid(pid, 0)
                raise OSError(errno.EPERM, "no Landlock domain helper")
            threading.Thread(target=_reap, args=(pid,), daemon=True).start()
            return cls(end)
        with parent._lock:
            socket.send_fds(parent._sock, [_FORK], [ruleset])
            msg, fds, _, _ = socket.recv_fds(parent._sock, 64, 1)
        fd = helper_reply(msg, fds, 1, OSError(errno.ENOMEM, "the Landlock helper has gone"))[0]
        return cls(socket.socket(fileno=fd))

    def _ask(self, op: bytes, sock: int, addr: bytes) -> int:
        with self._lock:
            socket.send_fds(self._sock, [op + addr], [sock])
            reply = self._sock.recv(16)
        if len(reply) != _ERR.size:
            raise OSError(errno.ENOMEM, "the Landlock helper has gone")
        err = _ERR.unpack(reply)[0]
        if err:
            raise OSError(err, os.strerror(err))
        return 0

    def socket(self, family: int, type_: int, proto: int, ns: tuple[int, int]) -> int:
        """socket(2) as the thread would make it: its file's credentials
        carry (a copy of) the thread's domain. `ns`: descriptors of the
        user and network namespaces to make it in (kept by the caller)."""
        with self._lock:
            socket.send_fds(self._sock, [_SOCKET + _SOCKET_ARGS.pack(family, type_, proto)], list(ns))
            msg, fds, _, _ = socket.recv_fds(self._sock, 64, 1)
        return helper_reply(msg, fds, 1, OSError(errno.ENOMEM, "the Landlock helper has gone"))[0]

    def bind(self, sock: int, addr: bytes) -> int:
        """bind(2) as the thread would: checked against its domain."""
        return self._ask(_BIND, sock, addr)

    def connect(self, sock: int, addr: bytes) -> int:
        """connect(2) as the thread would; it blocks this domain's other
        requests until it completes."""
        return self._ask(_CONNECT, sock, addr)

    def check_open(self, fd: int, access: int) -> None:
        """EACCES (or the open's own error) unless the domain lets the file
        open as `fd` is be opened with the access mode `access`
        (O_RDONLY, O_WRONLY, O_RDWR, with O_DIRECTORY for a directory)."""
        self._ask(_REOPEN, fd, b"%d" % access)

    def __del__(self) -> None:
        self._sock.close()
