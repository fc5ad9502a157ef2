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

import ctypes
import errno
import os
import stat as st
import struct

from lxsub.abi.fcntl import AT_FDCWD, O_CLOEXEC
from lxsub.abi.limits import OVERFLOW_ID
from lxsub.kernel.call import Blocking, Call, Native, NewFd, NewFds
from lxsub.kernel.vfs import lookup, perm
from lxsub.kernel.vfs.open import check_may_create
from lxsub.platform import libc, unixns

AF_UNIX = 1
AF_NETLINK = 16
NETLINK_AUDIT = 9
_SUN_PATH = 108
SOCK_CLOEXEC = O_CLOEXEC
SOL_SOCKET, SO_PEERCRED, SO_PEERGROUPS, SO_PASSPIDFD, SO_PEERPIDFD = 1, 17, 59, 76, 77
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


def sys_bind(c: Call) -> int:
    addr = _read_addr(c, c.ptr(1), c.int(2))
    path = _unix_path(addr)
    local = lookup.copy_fd(c.task, c.int(0))
    try:
        if path is None:
            _check_namespace(c, local, addr, errno.EACCES)
            return _sys(_c.bind, local, addr, len(addr))
        return _bind_unix(c, local, path)
    finally:
        os.close(local)


def _bind_unix(c: Call, local: int, path: bytes) -> int:
    parent, name = lookup.resolve_parent_at(c.inst.vfs, c.task, AT_FDCWD, path)
    try:
        check_may_create(c.task, parent)
        host = _unix_addr(f"/proc/self/fd/{parent.fd}/".encode() + name)
        try:
            _sys(_c.bind, local, host, len(host))
        except OSError as e:
            raise OSError(errno.EADDRINUSE if e.errno == errno.EEXIST else e.errno, e.strerror)
        mode = st.S_IFSOCK | (0o777 & ~c.task.fs.umask)
        parent.fs.after_create_name(parent, name, mode, 0, c.task.creds)
        return 0
    finally:
        parent.release()


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

    def work() -> int:
        try:
            # Before the connection exists: its server may ask at once.
            made_by(c.inst, task, local)
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

    def work() -> int:
        try:
            return _sys(_c.sendto, local, data, len(data), flags, addr, len(addr))
        finally:
            os.close(local)
            if node is not None:
                node.release()
    return Blocking(work)


# -- sockets of the instance's namespace -----------------------------------------

def sys_socket(c: Call):
    """AF_UNIX (a notification): made in the instance's network namespace;
    AF_NETLINK (a ptrace stop): see _socket_netlink."""
    family, type_, proto = c.int(0), c.int(1), c.int(2)
    if family != AF_UNIX:
        return _socket_netlink(c)
    return NewFd(_namespace(c).socket(family, type_, proto), bool(type_ & SOCK_CLOEXEC))


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
    records = inst.unix.made_by
    if len(records) >= _RECORDS_MAX:
        del records[next(iter(records))]
    records[os.fstat(sock).st_ino] = (task.process, task.creds.copy())


def _peer(c: Call, local: int):
    """(pid, Process | None, Creds | None) of the socket's peer as the
    kernel recorded it; Process is None for one outside the instance."""
    raw = struct.unpack("<iII", _getsockopt(local, SOL_SOCKET, SO_PEERCRED, 12))
    pid = raw[0]
    if pid <= 0:
        return 0, None, None
    ns = c.inst.unix
    if pid in (c.inst.init.host_pid, ns.helper_pid):
        peer = ns.peer_inode(os.fstat(local).st_ino)
        proc, creds = ns.made_by.get(peer, (None, None)) if peer else (None, None)
        return pid, proc, creds           # as Linux, the ids it had, alive or not
    proc = c.inst.pids.processes_by_host.get(pid)
    if proc is None or proc.exited or not proc.threads:
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


def sys_setsockopt(c: Call) -> int:
    """Only SO_PASSPIDFD's number traps: with it, recvmsg would hand the
    caller a pidfd (SCM_PIDFD) of whoever sent, a host process too. It
    is refused as by a kernel without it (ENOPROTOOPT; SCM_CREDENTIALS
    remain). The same number at other levels is set as asked."""
    fd, level, name, optval, optlen = c.int(0), c.int(1), c.int(2), c.ptr(3), c.int(4)
    if level == SOL_SOCKET and name == SO_PASSPIDFD:
        raise OSError(errno.ENOPROTOOPT, "SO_PASSPIDFD is not available in an instance")
    if not 0 <= optlen <= 4096:
        raise OSError(errno.EINVAL, "bad option length")
    value = c.read(optval, optlen) if optlen else b""
    local = lookup.copy_fd(c.task, fd)
    try:
        return _sys(_c.setsockopt, local, level, name, value, len(value))
    finally:
        os.close(local)
