"""<sys/socket.h>: socket addresses that name files are paths inside the instance.

bind/connect/sendto run in the provider on a copy of the caller's socket
(same open socket, so the effect is the caller's), with Unix socket paths
resolved in the instance and handed to the host as /proc/self/fd paths.
Calls that may wait (connect, sendto) finish on a worker thread.

AF_UNIX sockets are made in the instance's own network namespace
(platform/unixns.py), so abstract names are the instance's, as in a
container. Peer credentials name only the instance's processes, with
their Linux ids; a peer outside it shows as pid 0 and the overflow ids,
as across user and pid namespaces.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import fcntl as fcntl_mod
import os
import signal
import stat as st
import struct

from lxsub.abi.fcntl import AT_FDCWD, O_CLOEXEC
from lxsub.abi.limits import OVERFLOW_ID, UIO_MAXIOV
from lxsub.abi.socket import (AF_INET, AF_INET6, AF_UNIX, MSG_DONTWAIT, MSG_NOSIGNAL, MSG_PEEK, NETLINK_AUDIT,
                              SCM_CREDENTIALS, SCM_MAX_FD, SCM_RIGHTS, SO_DOMAIN, SO_PASSCRED, SO_PASSPIDFD,
                              SO_PEERCRED, SO_PEERGROUPS, SO_PEERPIDFD, SO_TYPE, SOCK_STREAM, SOL_SOCKET)
from lxsub.abi.sysno import NUMBERS, SYS_TGKILL
from lxsub.kernel import extra_filter, fanotify
from lxsub.kernel.call import Blocking, Call, Native, NewFd, NewFds
from lxsub.kernel.creds import CAP_NET_BIND_SERVICE, CAP_SETGID, CAP_SETUID, CAP_SYS_ADMIN
from lxsub.kernel.task import active_pid_ns, pid_in
from lxsub.kernel.vfs import lookup, perm
from lxsub.kernel.vfs.open import check_may_create
from lxsub.platform import bpf, features, hostfd, libc, unixns

_SUN_PATH = 108
SOCK_CLOEXEC = O_CLOEXEC
PEER_OPTIONS = (SO_PEERCRED, SO_PEERGROUPS, SO_PEERPIDFD)
_RECORDS_MAX = 4096
_c = libc._libc


def _sys(fn, *args) -> int:
    r = fn(*args)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


def _socket_netlink(c: Call):
    """socket(AF_NETLINK, ...) stops here (ptrace). The instance has no
    audit subsystem: NETLINK_AUDIT answers EPROTONOSUPPORT, as a kernel
    built without CONFIG_AUDIT does (netlink(7)), which libaudit's users
    (sudo, login, su) take as "auditing not configured" and stay quiet,
    instead of writing to the host's audit log. Other families run natively."""
    if c.int(2) == NETLINK_AUDIT:
        return -errno.EPROTONOSUPPORT
    return Native()


def _unix_addr(path: bytes) -> bytes:
    if len(path) >= _SUN_PATH:
        raise OSError(errno.ENAMETOOLONG, "socket path too long")
    return struct.pack("<H", AF_UNIX) + path + b"\0"


def _unix_path(addr: bytes) -> bytes | None:
    """The file path of an AF_UNIX address; None for abstract/unnamed ones."""
    if len(addr) < 2 or struct.unpack_from("<H", addr)[0] != AF_UNIX:
        return None
    path = addr[2:]
    if not path or path[0] == 0:
        return None
    return path.split(b"\0", 1)[0]


def _read_addr(c: Call, ptr: int, length: int) -> bytes:
    if length < 0 or length > 128:
        raise OSError(errno.EINVAL, "bad address length")
    return c.read(ptr, length)


def _is_abstract(addr: bytes) -> bool:
    return (len(addr) > 2 and struct.unpack_from("<H", addr)[0] == AF_UNIX
            and addr[2] == 0)


def _check_namespace(c: Call, local: int, addr: bytes, err: int) -> None:
    """An abstract name used through a socket of the host's namespace (one
    a host program handed in) would be the host's: refused with `err`."""
    if not _is_abstract(addr):
        return
    ns = c.inst.unix
    if not ns.available or unixns.netns_cookie(local) != ns.cookie:
        raise OSError(err, "abstract Unix socket names are the instance's")


_PORT_START = "/proc/sys/net/ipv4/ip_unprivileged_port_start"
_INET_ADDR_LEN = {AF_INET: 16, AF_INET6: 24}    # sizeof sockaddr_in, SIN6_LEN_RFC2133


def _check_privileged_port(c: Call, local: int, addr: bytes) -> None:
    """inet_bind/inet6_bind: a port below net.ipv4.ip_unprivileged_port_start
    needs CAP_NET_BIND_SERVICE (ip(7)), the instance's, not the host user's."""
    if len(addr) < 4 or c.task.creds.capable(CAP_NET_BIND_SERVICE):
        return
    family = struct.unpack_from("=H", addr)[0]
    port = struct.unpack_from(">H", addr, 2)[0]
    if len(addr) < _INET_ADDR_LEN.get(family, 1 << 16) or port == 0:
        return                                   # not inet, or the host's EINVAL
    if struct.unpack("<i", _getsockopt(local, SOL_SOCKET, SO_DOMAIN, 4))[0] != family:
        return                                   # the host's EAFNOSUPPORT/EINVAL
    try:
        with open(_PORT_START, "rb") as f:
            start = int(f.read())
    except (OSError, ValueError):
        start = 1024                             # Linux's default
    if port < start:
        raise OSError(errno.EACCES, "a privileged port needs CAP_NET_BIND_SERVICE")


def _landlock_domain(c: Call, addr: bytes):
    """The domain helper (platform/landlock.py) that binds or connects a
    socket for a Landlock-restricted thread, so that its rules on ports
    hold (LANDLOCK_ACCESS_NET_BIND_TCP, _CONNECT_TCP) and its scope on
    abstract Unix names (a connect: the helper made the thread's Unix
    sockets, see sys_socket); None for an unrestricted one, and for Unix
    paths, which the provider resolves (Landlock does not scope them)."""
    if c.task.landlock is None or len(addr) < 2:
        return None
    if struct.unpack_from("=H", addr)[0] == AF_UNIX and not _is_abstract(addr):
        return None
    return c.task.landlock


def sys_bind(c: Call) -> int:
    addr = _read_addr(c, c.ptr(1), c.int(2))
    path = _unix_path(addr)
    local = lookup.copy_fd(c.task, c.int(0))
    try:
        if path is None:
            _check_namespace(c, local, addr, errno.EACCES)
            _check_privileged_port(c, local, addr)
            domain = _landlock_domain(c, addr)
            if domain is not None:
                return domain.bind(local, addr)
            return _sys(_c.bind, local, addr, len(addr))
        return _bind_unix(c, local, path)
    finally:
        os.close(local)


def _bind_unix(c: Call, local: int, path: bytes) -> int:
    parent, name = lookup.resolve_parent_at(c.inst.vfs, c.task, AT_FDCWD, path)
    try:
        check_may_create(c.task, parent)
        try:
            _bind_as_given(c, local, parent.fd, name, path)
        except OSError as e:
            raise OSError(errno.EADDRINUSE if e.errno == errno.EEXIST else e.errno, e.strerror)
        mode = st.S_IFSOCK | (0o777 & ~c.task.fs.umask)
        parent.fs.after_create_name(parent, name, mode, 0, c.task.creds)
        made = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
        _remember(c.inst.unix.bound, (made.st_dev, made.st_ino), path)
        _remember(c.inst.unix.socket_of_file, (made.st_dev, made.st_ino), os.fstat(local).st_ino)
        return 0
    finally:
        parent.release()


def _bind_as_given(c: Call, local: int, parent: int, name: bytes, path: bytes) -> None:
    """Bind `local` to `name` in directory `parent`, under the program's own
    `path` where the socket helper can lay it out (platform/unixns.py
    bind_path): the address its peers see from accept, recvfrom, recvmsg
    and getpeername, all native, is then the instance path (unix(7)).
    Else, or where the helper may not create there (a host root provider
    in another user's DrvFs directory), through the provider's
    /proc/self/fd name."""
    ns = c.inst.unix
    if ns.available and ns.binds and unixns.bindable_as_given(path):
        try:
            return ns.bind_path(local, parent, path)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EPERM):
                raise
    host = _unix_addr(f"/proc/self/fd/{parent}/".encode() + name)
    _sys(_c.bind, local, host, len(host))


def _remember(records: dict, key: int, value) -> None:
    if len(records) >= _RECORDS_MAX:
        del records[next(iter(records))]
    records[key] = value


def _sockname(c: Call, peer: bool) -> int:
    """getsockname(2)/getpeername(2): a Unix socket bound in the instance
    shows the path its program gave to bind (unix(7)), not the host's
    /proc/self/fd name the provider bound it with; found by the socket
    file it is bound to (sock_diag), which an accepted socket shares with
    its listener. Other addresses are the host's, unchanged."""
    addr_at, len_at = c.ptr(1), c.ptr(2)
    room = struct.unpack("<i", c.read(len_at, 4))[0]
    if room < 0:
        raise OSError(errno.EINVAL, "bad address length")
    local = lookup.copy_fd(c.task, c.int(0))
    try:
        buf = ctypes.create_string_buffer(128)
        length = ctypes.c_uint(128)
        _sys(_c.getpeername if peer else _c.getsockname, local, buf, ctypes.byref(length))
        addr = buf.raw[:length.value]
        if _unix_path(addr) is not None and c.inst.unix.available:
            ns = c.inst.unix
            ino = os.fstat(local).st_ino
            if peer:
                ino = ns.peer_inode(ino)
            file = ns.bound_file(ino) if ino else None
            path = ns.bound.get(file) if file else None
            if path is not None:
                addr = struct.pack("<H", AF_UNIX) + path + b"\0"
    finally:
        os.close(local)
    c.write(addr_at, addr[:room])
    c.write(len_at, struct.pack("<i", len(addr)))
    return 0


def sys_getsockname(c: Call) -> int:
    return _sockname(c, peer=False)


def sys_getpeername(c: Call) -> int:
    return _sockname(c, peer=True)


def _resolve_socket_file(c: Call, path: bytes):
    node = lookup.resolve_at(c.inst.vfs, c.task, AT_FDCWD, path)
    a = node.fs.getattr(node, c.task)
    if not st.S_ISSOCK(a.mode):
        node.release()
        raise OSError(errno.ECONNREFUSED, "not a socket")
    if perm.needs_checks(c.task.creds):
        try:
            perm.check(c.task.creds, a.mode, a.uid, a.gid, perm.MAY_WRITE)
        except OSError:
            node.release()
            raise
    return node


def sys_connect(c: Call):
    """connect(2): a Unix path resolved in the instance, an abstract name
    only through a socket of the instance's namespace; the provider
    connects a copy of the socket. For a Landlock-restricted thread its
    domain's helper connects to an abstract name: the kernel's
    LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET check (security/landlock/task.c)
    compares the connecting domain with the one the server's socket was
    made in, and a restricted server's socket was made by its helper
    (sys_socket)."""
    addr = _read_addr(c, c.ptr(1), c.int(2))
    path = _unix_path(addr)
    local = lookup.copy_fd(c.task, c.int(0))
    node = None
    try:
        if path is not None:
            node = _resolve_socket_file(c, path)
            addr = _unix_addr(f"/proc/self/fd/{node.fd}".encode())
        else:
            _check_namespace(c, local, addr, errno.ECONNREFUSED)
    except BaseException:
        os.close(local)
        raise
    task = c.task
    domain = _landlock_domain(c, addr)

    def work() -> int:
        try:
            # Before the connection exists: its server may ask at once.
            made_by(c.inst, task, local)
            if domain is not None:
                return domain.connect(local, addr)
            return _sys(_c.connect, local, addr, len(addr))
        finally:
            os.close(local)
            if node is not None:
                node.release()
    return Blocking(work)


def sys_sendto(c: Call):
    """Only sendto with an address traps (see the table)."""
    length = c.long(2)
    if length < 0:
        raise OSError(errno.EINVAL, "bad length")
    data = c.read(c.ptr(1), min(length, 1 << 20))
    addr = _read_addr(c, c.ptr(4), c.int(5))
    path = _unix_path(addr)
    flags = c.int(3)
    node = _resolve_socket_file(c, path) if path is not None else None
    if node is not None:
        addr = _unix_addr(f"/proc/self/fd/{node.fd}".encode())
    local = lookup.copy_fd(c.task, c.int(0))
    try:
        _check_namespace(c, local, addr, errno.ECONNREFUSED)
    except BaseException:
        os.close(local)
        if node is not None:
            node.release()
        raise
    task = c.task

    def work() -> int:
        try:
            return _sent(task, flags, _c.sendto(local, data, len(data), flags | MSG_NOSIGNAL,
                                                addr, len(addr)))
        finally:
            os.close(local)
            if node is not None:
                node.release()
    return Blocking(work)


# -- sendmsg, sendmmsg: done by the provider --------------------------------------
#
# A message's destination (msg_name) and descriptors (SCM_RIGHTS) are in the
# caller's memory, where the filter cannot read them and where another
# thread may change them after the provider looked: letting the host run
# the call after a check would let the host kernel resolve a host socket
# path. So the provider sends every message itself, from its copies of the
# socket, the data and the descriptors, with Unix socket paths resolved in
# the instance as for connect.

_MSGHDR = struct.Struct("<QI4xQQQQi4x")      # struct msghdr (x86_64)
_MMSGHDR_SIZE = _MSGHDR.size + 8             # + unsigned msg_len, padding
_IOVEC = struct.Struct("<QQ")
_CMSGHDR = struct.Struct("<Qii")
_SOCKADDR_STORAGE = 128
_OPTMEM_MAX = 131072                         # /proc/sys/net/core/optmem_max
_SEND_MAX = 1 << 20                          # one call's data, as sendto's


class _Message:
    """One message read from the caller, ready for the host's sendmsg."""

    def __init__(self) -> None:
        self.name = b""
        self.data = b""
        self.control = b""
        self.fds: list[int] = []        # provider copies of SCM_RIGHTS descriptors
        self.node = None                # the instance's socket file named, held
        self.creds: tuple[int, int, int] | None = None   # SCM_CREDENTIALS given, checked

    def release(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []
        if self.node is not None:
            self.node.release()
            self.node = None


def _read_message(c: Call, at: int, local: int, stream: bool) -> _Message:
    """struct msghdr at `at`, read as ___sys_sendmsg copies it
    (net/socket.c): name clamped to sockaddr_storage, at most UIO_MAXIOV
    iovecs, control data up to optmem_max."""
    name_at, namelen, iov_at, iovlen, ctl_at, ctllen, _ = _MSGHDR.unpack(c.read(at, _MSGHDR.size))
    if iovlen > UIO_MAXIOV:
        raise OSError(errno.EMSGSIZE, "too many iovecs")
    if ctllen > _OPTMEM_MAX:
        raise OSError(errno.ENOBUFS, "control data too long")
    msg = _Message()
    try:
        if name_at and namelen:
            msg.name = _destination(c, local, c.read(name_at, min(namelen, _SOCKADDR_STORAGE)), msg)
        msg.data = _read_iov(c, iov_at, iovlen, stream)
        if ctllen:
            msg.control = _translate_control(c, c.read(ctl_at, ctllen), msg)
    except BaseException:
        msg.release()
        raise
    return msg


def _destination(c: Call, local: int, addr: bytes, msg: _Message) -> bytes:
    """The host's form of a destination address: a Unix socket path is the
    instance's file (held in `msg`), an abstract name the instance's."""
    path = _unix_path(addr)
    if path is None:
        _check_namespace(c, local, addr, errno.ECONNREFUSED)
        return addr
    msg.node = _resolve_socket_file(c, path)
    return _unix_addr(f"/proc/self/fd/{msg.node.fd}".encode())


def _read_iov(c: Call, at: int, count: int, stream: bool) -> bytes:
    vecs = [_IOVEC.unpack_from(c.read(at, _IOVEC.size * count), i * _IOVEC.size)
            for i in range(count)] if count else []
    total = 0
    for _, length in vecs:
        if length >> 63:
            raise OSError(errno.EINVAL, "bad iovec length")
        total += length
    if total > _SEND_MAX and not stream:
        # A datagram goes whole or not at all; none this large fits a socket buffer.
        raise OSError(errno.EMSGSIZE, "message too long")
    parts, left = [], _SEND_MAX          # a stream takes a short write, as send(2) may
    for base, length in vecs:
        n = min(length, left)
        if n:
            parts.append(c.read(base, n))
            left -= n
    return b"".join(parts)


def _translate_control(c: Call, raw: bytes, msg: _Message) -> bytes:
    """Control messages for the host: SCM_RIGHTS with the provider's copies
    of the caller's descriptors, SCM_CREDENTIALS checked in the instance's
    ids and sent as the provider's (the host kernel checks them against
    its sender). Others go as they are. Walked as __scm_send does."""
    out, off = [], 0
    while off + _CMSGHDR.size <= len(raw):
        length, level, kind = _CMSGHDR.unpack_from(raw, off)
        if length < _CMSGHDR.size or off + length > len(raw):
            raise OSError(errno.EINVAL, "bad control message length")
        body = raw[off + _CMSGHDR.size:off + length]
        if level == SOL_SOCKET and kind == SCM_RIGHTS:
            body = _copy_rights(c, body, msg)
        elif level == SOL_SOCKET and kind == SCM_CREDENTIALS:
            body = _check_credentials(c, body, msg)
        cmsg = _CMSGHDR.pack(_CMSGHDR.size + len(body), level, kind) + body
        out.append(cmsg + b"\0" * (-len(cmsg) % 8))
        off += (length + 7) & ~7
    return b"".join(out)


def _copy_rights(c: Call, body: bytes, msg: _Message) -> bytes:
    count = len(body) // 4
    if not count or count > SCM_MAX_FD:
        raise OSError(errno.EINVAL, "bad SCM_RIGHTS count")
    for fd in struct.unpack(f"<{count}i", body[:count * 4]):
        msg.fds.append(lookup.copy_fd(c.task, fd))
    return struct.pack(f"<{count}i", *msg.fds[-count:])


def _check_credentials(c: Call, body: bytes, msg: _Message) -> bytes:
    """unix(7) SCM_CREDENTIALS, net/core/scm.c scm_check_creds with the
    instance's view: the pid is the sender's own (virtual) unless it has
    CAP_SYS_ADMIN, and must exist (ESRCH); the uid its real, effective or
    saved one unless CAP_SETUID; the gid likewise with CAP_SETGID."""
    if len(body) != 12:
        raise OSError(errno.EINVAL, "bad SCM_CREDENTIALS length")
    pid, uid, gid = struct.unpack("<iII", body)
    cr = c.task.creds
    if uid == 0xFFFFFFFF or gid == 0xFFFFFFFF:
        raise OSError(errno.EINVAL, "invalid id")
    ns = active_pid_ns(c.task)
    if not ((pid == pid_in(c.task.process, ns) or cr.capable(CAP_SYS_ADMIN))
            and (uid in (cr.ruid, cr.euid, cr.suid) or cr.capable(CAP_SETUID))
            and (gid in (cr.rgid, cr.egid, cr.sgid) or cr.capable(CAP_SETGID))):
        raise OSError(errno.EPERM, "not the sender's credentials")
    sender = c.inst.pids.process_in(ns, pid)
    if sender is None:
        raise OSError(errno.ESRCH, "no such process")
    msg.creds = (sender.pid, uid, gid)     # the instance's number: each receiver sees its own
    return struct.pack("<iII", os.getpid(), os.getuid(), os.getgid())


class _MsgHdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("namelen", ctypes.c_uint),
                ("iov", ctypes.c_void_p), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_char_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_char_p), ("len", ctypes.c_size_t)]


def _host_sendmsg(task, sock: int, msg: _Message, flags: int, inst) -> int:
    """The host's sendmsg of `msg` from the provider. Its receiver sees the
    provider's pid in SCM_CREDENTIALS: once credentials are wanted in the
    instance, who it is really from is recorded for the receiving socket
    first (taken back if the send fails)."""
    iov = _IoVec(msg.data, len(msg.data))
    hdr = _MsgHdr(msg.name or None, len(msg.name), ctypes.cast(ctypes.byref(iov), ctypes.c_void_p),
                  1, msg.control or None, len(msg.control), 0)
    ns = inst.unix
    queue = _record_sent_creds(task, sock, msg, ns) if ns.passcred else None
    if ns.passcred and msg.fds and _passes_passcred_socket(msg):
        receiver = _receiver_inode(sock, msg, ns)
        if receiver is not None:
            _give_creds_filter_to_holders(inst, receiver)
    if msg.fds and fanotify.any_group(inst, msg.fds):
        # Whoever receives a fanotify group needs the group filter too.
        receiver = _receiver_inode(sock, msg, ns)
        if receiver is not None:
            fanotify.give_group_filter_to_holders(inst, lambda proc: _holds_socket(proc.host_pid, receiver))
    try:
        return _sent(task, flags, _c.sendmsg(sock, ctypes.byref(hdr), flags | MSG_NOSIGNAL))
    except OSError:
        if queue:
            queue.pop()
        raise


def _sent(task, flags: int, r: int) -> int:
    """A send's result for the caller: on a stream its peer has shut, the
    kernel sends SIGPIPE to the sending thread unless MSG_NOSIGNAL
    (send(2)); the sender was the provider, so the caller gets it here."""
    if r >= 0:
        return r
    e = ctypes.get_errno()
    if e == errno.EPIPE and not flags & MSG_NOSIGNAL:
        try:
            libc.syscall(SYS_TGKILL, task.host_pid, task.host_tid, signal.SIGPIPE)
        except OSError:
            pass                         # the caller has gone meanwhile
    raise OSError(e, os.strerror(e))


def _is_stream(local: int) -> bool:
    return struct.unpack("<i", _getsockopt(local, SOL_SOCKET, SO_TYPE, 4))[0] == SOCK_STREAM


def sys_sendmsg(c: Call):
    """sendmsg(2), done by the provider (see above): at once when the
    socket takes the message without waiting (a hand-off to a worker
    thread would cost more than the send), else on a worker thread."""
    local = lookup.copy_fd(c.task, c.int(0))
    try:
        msg = _read_message(c, c.ptr(1), local, _is_stream(local))
    except BaseException:
        os.close(local)
        raise
    flags, task = c.int(2), c.task
    waits = not (flags & MSG_DONTWAIT or fcntl_mod.fcntl(local, fcntl_mod.F_GETFL) & os.O_NONBLOCK)
    try:
        sent = _host_sendmsg(task, local, msg, flags | MSG_DONTWAIT, c.inst)
    except BlockingIOError:
        if not waits:
            msg.release()
            os.close(local)
            raise
        sent = 0
    except BaseException:
        msg.release()
        os.close(local)
        raise
    if sent == len(msg.data) or not waits:
        msg.release()
        os.close(local)
        return sent
    # A stream that took part of it: the rest waits, as a blocking send would.
    msg.data, msg.control = msg.data[sent:], (msg.control if not sent else b"")

    def work() -> int:
        try:
            return sent + _host_sendmsg(task, local, msg, flags, c.inst)
        except OSError:
            if sent:
                return sent
            raise
        finally:
            msg.release()
            os.close(local)
    return Blocking(work)


def sys_sendmmsg(c: Call):
    """sendmmsg(2): the messages in order until one fails; the count sent,
    or the first one's error (net/socket.c __sys_sendmmsg). All are read
    and resolved here (the instance's tree is walked on this thread); a
    message that cannot be read ends the list there, as a failed send."""
    vlen = min(c.uint(2), UIO_MAXIOV)
    at, flags, task = c.ptr(1), c.int(3), c.task
    local = lookup.copy_fd(c.task, c.int(0))
    msgs: list[_Message] = []
    failed: OSError | None = None
    try:
        stream = _is_stream(local)
        for i in range(vlen):
            try:
                msgs.append(_read_message(c, at + i * _MMSGHDR_SIZE, local, stream))
            except OSError as e:
                failed = e
                break
    except BaseException:
        os.close(local)
        raise

    def work() -> int:
        sent = 0
        try:
            for i, msg in enumerate(msgs):
                n = _host_sendmsg(task, local, msg, flags, c.inst)
                c.write(at + i * _MMSGHDR_SIZE + _MSGHDR.size, struct.pack("<I", n))
                sent += 1
            if failed is not None and not sent:
                raise failed
            return sent
        except OSError:
            if sent:
                return sent
            raise
        finally:
            for msg in msgs:
                msg.release()
            os.close(local)
    return Blocking(work)


# -- sockets of the instance's namespace -----------------------------------------

def sys_socket(c: Call):
    """AF_UNIX (a notification): made in the instance's network namespace;
    AF_NETLINK (a ptrace stop): see _socket_netlink."""
    family, type_, proto = c.int(0), c.int(1), c.int(2)
    if family != AF_UNIX:
        return _socket_netlink(c)
    ns = _namespace(c)
    if c.task.landlock is not None:
        return NewFd(_socket_in_domain(c.task.landlock, ns, family, type_, proto),
                     bool(type_ & SOCK_CLOEXEC))
    return NewFd(ns.socket(family, type_, proto), bool(type_ & SOCK_CLOEXEC))


def _socket_in_domain(domain, ns: "unixns.UnixNamespace", family: int, type_: int, proto: int) -> int:
    """A Landlock-restricted thread's Unix socket, made by its domain's
    helper in the instance's namespace: the file's credentials carry the
    domain, as LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET wants of a server's
    socket (platform/landlock.py)."""
    fds = ns.namespace_fds()
    try:
        return domain.socket(family, type_, proto, fds)
    finally:
        for fd in fds:
            os.close(fd)


def sys_socketpair(c: Call) -> NewFds:
    family, type_, proto = c.int(0), c.int(1), c.int(2)
    a, b = _namespace(c).socketpair(family, type_, proto)
    # The kernel names the pair's maker as each end's peer: the helper.
    made_by(c.inst, c.task, a)
    made_by(c.inst, c.task, b)
    return NewFds((a, b), bool(type_ & SOCK_CLOEXEC), c.ptr(3))


def _namespace(c: Call) -> "unixns.UnixNamespace":
    ns = c.inst.unix
    if not ns.available:
        c.inst.log.once("unixns", "no private network namespace for Unix sockets (user "
                        "namespaces disabled?): socket(AF_UNIX) fails with EAFNOSUPPORT")
        raise OSError(errno.EAFNOSUPPORT, "no private namespace for Unix sockets")
    return ns


def made_by(inst, task, sock: int) -> None:
    """The kernel takes a socket's peer credentials from whoever calls
    connect or socketpair, which for these sockets is the provider or its
    helper: remember the pico process they were made for (by the socket's
    inode), for the peer's SO_PEERCRED."""
    _remember(inst.unix.made_by, os.fstat(sock).st_ino, (task.process, task.creds.copy()))


def _peer(c: Call, local: int):
    """(pid, Process | None, Creds | None) of the socket's peer as the
    kernel recorded it; Process is None for one outside the instance."""
    raw = struct.unpack("<iII", _getsockopt(local, SOL_SOCKET, SO_PEERCRED, 12))
    pid = raw[0]
    if pid <= 0:
        return 0, None, None
    ns = c.inst.unix
    proc = c.inst.pids.processes_by_host.get(pid)
    if proc is None or pid in (c.inst.init.host_pid, ns.helper_pid):
        # The provider or one of its helpers (the socket helper, a Landlock
        # domain's) may have connected or made the pair for a program.
        peer = ns.peer_inode(os.fstat(local).st_ino)
        found = ns.made_by.get(peer) if peer else None
        return (pid, *found) if found else (pid, None, None)   # the ids it had, alive or not
    if proc.exited or not proc.threads:
        return pid, None, None
    return pid, proc, next(iter(proc.threads.values())).creds


def sys_getsockopt(c: Call):
    """Only the options that name the peer trap (see the table)."""
    fd, level, name, optval, optlen_at = c.int(0), c.int(1), c.int(2), c.ptr(3), c.ptr(4)
    optlen = struct.unpack("<i", c.read(optlen_at, 4))[0]
    if optlen < 0:
        raise OSError(errno.EINVAL, "bad option length")
    local = lookup.copy_fd(c.task, fd)
    try:
        if level != SOL_SOCKET or name not in PEER_OPTIONS:
            value = _getsockopt(local, level, name, optlen)
            c.write(optval, value)
            c.write(optlen_at, struct.pack("<i", len(value)))
            return 0
        raw_pid, proc, creds = _peer(c, local)
    finally:
        os.close(local)
    if name == SO_PEERCRED:
        if not raw_pid:
            value = struct.pack("<iII", 0, 0xFFFFFFFF, 0xFFFFFFFF)   # no peer
        elif proc is None:
            value = struct.pack("<iII", 0, OVERFLOW_ID, OVERFLOW_ID)
        else:
            value = struct.pack("<iII", proc.pid, creds.euid, creds.egid)
        value = value[:optlen]
    elif name == SO_PEERGROUPS:
        groups = creds.groups if proc is not None else ()
        value = struct.pack(f"<{len(groups)}I", *groups)
        if len(value) > optlen:
            c.write(optlen_at, struct.pack("<i", len(value)))
            raise OSError(errno.ERANGE, "buffer too small")
    else:                                  # SO_PEERPIDFD
        if proc is None:
            raise OSError(errno.ENODATA, "no peer process in this instance")
        if proc.exited:
            raise OSError(errno.ESRCH, "the peer has exited")
        if optlen < 4:
            raise OSError(errno.EINVAL, "bad option length")
        if not features.has("pidfd_open"):
            raise OSError(errno.ENOPROTOOPT, "no pidfds on this host (Linux 5.3)")
        c.write(optlen_at, struct.pack("<i", 4))
        return NewFds((libc.pidfd_open(proc.host_pid),), True, optval)
    c.write(optval, value)
    c.write(optlen_at, struct.pack("<i", len(value)))
    return 0


def _getsockopt(fd: int, level: int, name: int, size: int) -> bytes:
    buf = ctypes.create_string_buffer(max(size, 1))
    length = ctypes.c_uint(size)
    _sys(_c.getsockopt, fd, level, name, buf, ctypes.byref(length))
    return buf.raw[:length.value]


def sys_setsockopt(c: Call):
    """Only SO_PASSPIDFD's and SO_PASSCRED's numbers trap. With
    SO_PASSPIDFD, recvmsg would hand the caller a pidfd (SCM_PIDFD) of
    whoever sent, a host process too: it is refused as by a kernel
    without it (ENOPROTOOPT; SCM_CREDENTIALS remain). SO_PASSCRED stops
    (ptrace) and runs natively; once on, the process gets its received
    credentials translated (below). The same numbers at other levels are
    set as asked."""
    fd, level, name, optval, optlen = c.int(0), c.int(1), c.int(2), c.ptr(3), c.int(4)
    if level == SOL_SOCKET and name == SO_PASSPIDFD:
        raise OSError(errno.ENOPROTOOPT, "SO_PASSPIDFD is not available in an instance")
    if c.regs is not None:                 # SO_PASSCRED's number, a ptrace stop
        return _set_passcred(c) if level == SOL_SOCKET else Native()
    if not 0 <= optlen <= 4096:
        raise OSError(errno.EINVAL, "bad option length")
    value = c.read(optval, optlen) if optlen else b""
    local = lookup.copy_fd(c.task, fd)
    try:
        return _sys(_c.setsockopt, local, level, name, value, len(value))
    finally:
        os.close(local)


# -- SCM_CREDENTIALS received: the instance's view ---------------------------------
#
# The kernel writes a sender's credentials into a message received on a
# socket with SO_PASSCRED as the receiver's pid and user namespaces see
# them (net/core/scm.c scm_recv): the host's pid and the host user, which
# say nothing of the instance. Only a process that turned SO_PASSCRED on
# pays for translating them: when its setsockopt succeeds, the provider
# injects into it (platform/inject.py) a filter of its own, for all its
# threads (TSYNC; children inherit it, exec keeps it), whose only rows
# stop recvmsg and recvmmsg by ptrace (TRACE loses to the instance
# filter's USER_NOTIF, wins over its ALLOW). A process that did not ask
# but can read from such a socket (it held it already, or is sent it with
# SCM_RIGHTS) is given the filter too. Those run natively, and at
# their exit each SCM_CREDENTIALS received is rewritten: an instance
# process's host pid becomes its pid, with its real uid and gid (scm_send's
# defaults); a message the provider sent for a program (sendmsg above)
# carries the provider's pid and gets what was recorded for the receiving
# socket when it was sent; the kernel's own (pid 0) stay; anyone else is
# pid 0 with the overflow ids, as a sender outside the receiver's pid and
# user namespaces.

_SENT_CREDS_MAX = 1024
_CREDS = struct.Struct("<iII")


# The calls the filter below traces (its trace stops are the provider's).
CREDS_FILTER_TRACES = frozenset((NUMBERS["recvmsg"], NUMBERS["recvmmsg"]))


# recvmsg and recvmmsg stop (ptrace), everything else as the instance filter says.
_CREDS_FILTER = extra_filter.seccomp_call(dict.fromkeys(CREDS_FILTER_TRACES, bpf.RET_TRACE))


def _set_passcred(c: Call) -> Native:
    """setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &val, len) runs natively; if
    it succeeds with a nonzero int (sock_setsockopt: valbool), the socket
    has the option on, and the process gets the filter (once). Read from
    the call, not asked of the socket: that needs no copy of the
    descriptor, which a platform without pidfd_getfd has only as O_PATH."""
    task, fd = c.task, c.int(0)
    on = False
    if c.uint(4) >= 4:
        try:
            on = struct.unpack("<i", c.read(c.ptr(3), 4))[0] != 0
        except OSError:
            pass                           # the call itself answers EFAULT

    def done(result: int) -> None:
        if result != 0 or not on:
            return None
        c.inst.unix.passcred = True
        if not task.process.creds_filter:
            _give_creds_filter(c.inst, task)
        ino = hostfd.socket_inode(task.host_pid, fd)
        if ino is not None:
            _give_creds_filter_to_holders(c.inst, ino)
        return None
    return Native(on_exit=done)


def _give_creds_filter(inst, task) -> None:
    """Inject the filter at this syscall exit (the thread runs on after)."""
    task.process.creds_filter = True   # a second thread's setsockopt must not add another
    _inject_creds_filter(inst, task.process, task.host_tid)


def _inject_creds_filter(inst, proc, tid: int) -> None:
    extra_filter.inject(inst, proc, tid, "creds_filter", _CREDS_FILTER, "SCM_CREDENTIALS")


def _give_creds_filter_to_holders(inst, ino: int) -> None:
    """Every other process of the instance that holds socket `ino` (one it
    had before SO_PASSCRED went on, or is being sent one that has it) gets
    the filter too, at the stop an interrupt brings: the credentials it
    reads from that socket are the instance's view as well."""
    extra_filter.give_to_holders(inst, lambda proc: _holds_socket(proc.host_pid, ino), "creds_filter",
                                 _CREDS_FILTER, "SCM_CREDENTIALS")


def _holds_socket(host_pid: int, ino: int) -> bool:
    want = f"socket:[{ino}]"
    try:
        fds = os.listdir(f"/proc/{host_pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{host_pid}/fd/{fd}") == want:
                return True
        except OSError:
            continue
    return False


def _passes_passcred_socket(msg: _Message) -> bool:
    """Whether an SCM_RIGHTS of `msg` carries a socket with SO_PASSCRED on."""
    for fd in msg.fds:
        try:
            if struct.unpack("<i", _getsockopt(fd, SOL_SOCKET, SO_PASSCRED, 4))[0]:
                return True
        except OSError:
            continue                       # not a socket
    return False


def _receiver_inode(sock: int, msg: _Message, ns: unixns.UnixNamespace) -> int | None:
    """The inode of the socket a message sent on `sock` arrives at."""
    if msg.node is not None:
        s = os.fstat(msg.node.fd)
        return ns.socket_of_file.get((s.st_dev, s.st_ino))
    return ns.peer_inode(os.fstat(sock).st_ino)


def _record_sent_creds(task, sock: int, msg: _Message, ns: unixns.UnixNamespace):
    """Who a message the provider is about to send is from, for its
    receiver; the queue it went into (None: receiver unknown)."""
    receiver = _receiver_inode(sock, msg, ns)
    if receiver is None:
        return None
    creds = msg.creds or (task.process.pid, task.creds.ruid, task.creds.rgid)
    queue = ns.sent_creds.setdefault(receiver, collections.deque(maxlen=_SENT_CREDS_MAX))
    queue.append(creds)
    return queue


def sys_recvmsg(c: Call) -> Native:
    """recvmsg(fd, msg, flags), stopped by the process's own filter: it
    runs natively; at its exit the credentials received are translated."""
    at, peek = c.ptr(1), c.int(2) & MSG_PEEK
    return Native(on_exit=lambda r: _translate_received(c, [at], peek) if r >= 0 else None)


def sys_recvmmsg(c: Call) -> Native:
    """recvmmsg(fd, msgvec, vlen, flags, timeout): likewise for the first
    `result` headers."""
    at, peek = c.ptr(1), c.int(3) & MSG_PEEK
    return Native(on_exit=lambda r: _translate_received(
        c, [at + i * _MMSGHDR_SIZE for i in range(min(r, UIO_MAXIOV))], peek) if r > 0 else None)


def _translate_received(c: Call, hdrs: list[int], peek: int) -> None:
    receiver: list[int] = []               # the socket's inode, looked up once if needed
    for at in hdrs:
        try:
            ctl_at, ctllen = _MSGHDR.unpack(c.read(at, _MSGHDR.size))[4:6]
            if not ctl_at or ctllen < _CMSGHDR.size:
                continue
            raw = c.read(ctl_at, min(ctllen, _OPTMEM_MAX))
        except OSError:
            continue                       # the program unmapped it meanwhile: its loss
        off = 0
        while off + _CMSGHDR.size <= len(raw):
            length, level, kind = _CMSGHDR.unpack_from(raw, off)
            if length < _CMSGHDR.size or off + length > len(raw):
                break
            if level == SOL_SOCKET and kind == SCM_CREDENTIALS and length >= _CMSGHDR.size + _CREDS.size:
                body = _CREDS.unpack_from(raw, off + _CMSGHDR.size)
                seen = _instance_creds(c, body, receiver, peek)
                if seen != body:
                    c.write(ctl_at + off + _CMSGHDR.size, _CREDS.pack(*seen))
            off += (length + 7) & ~7
    return None


def _instance_creds(c: Call, body: tuple[int, int, int], receiver: list[int],
                    peek: int) -> tuple[int, int, int]:
    pid = body[0]
    if pid == 0:
        return body                        # the kernel's own (netlink)
    inst = c.inst
    if pid == inst.init.host_pid:
        return _sent_by_provider(c, receiver, peek)
    proc = inst.pids.processes_by_host.get(pid)
    if proc is None:
        return 0, OVERFLOW_ID, OVERFLOW_ID
    creds = next(iter(proc.threads.values())).creds if proc.threads else proc.exit_creds
    seen = pid_in(proc, active_pid_ns(c.task))
    if creds is None:
        return seen, OVERFLOW_ID, OVERFLOW_ID
    return seen, creds.ruid, creds.rgid


def _sent_by_provider(c: Call, receiver: list[int], peek: int) -> tuple[int, int, int]:
    """The credentials recorded for the receiving socket at the provider's
    send; without a record, the provider's own: init's."""
    if not receiver:
        try:
            receiver.append(os.stat(f"/proc/{c.task.host_tid}/fd/{c.int(0)}").st_ino)
        except OSError:
            receiver.append(-1)
    queue = c.inst.unix.sent_creds.get(receiver[0])
    ns = active_pid_ns(c.task)
    if queue:
        pid, uid, gid = queue[0] if peek else queue.popleft()
        sender = c.inst.pids.process_in(None, pid)
        return (pid_in(sender, ns) if sender is not None else 0), uid, gid
    return (1 if ns is None else 0), 0, 0
