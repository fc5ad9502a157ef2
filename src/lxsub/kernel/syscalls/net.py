"""<sys/socket.h>: socket addresses that name files are paths inside the instance.

bind/connect/sendto run in the provider on a copy of the caller's socket
(same open socket, so the effect is the caller's), with Unix socket paths
resolved in the instance and handed to the host as /proc/self/fd paths.
Calls that may wait (connect, sendto) finish on a worker thread.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat as st
import struct

from lxsub.kernel.call import Blocking, Call, Native
from lxsub.kernel.vfs import lookup, perm
from lxsub.kernel.vfs.lookup import AT_FDCWD
from lxsub.kernel.vfs.open import check_may_create
from lxsub.platform import libc

AF_UNIX = 1
AF_NETLINK = 16
NETLINK_AUDIT = 9
_SUN_PATH = 108
_c = libc._libc


def _sys(fn, *args) -> int:
    r = fn(*args)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


def sys_socket(c: Call):
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


def sys_bind(c: Call) -> int:
    addr = _read_addr(c, c.ptr(1), c.int(2))
    path = _unix_path(addr)
    local = lookup.copy_fd(c.task, c.int(0))
    try:
        if path is None:
            return _sys(_c.bind, local, addr, len(addr))
        return _bind_unix(c, local, path)
    finally:
        os.close(local)


def _bind_unix(c: Call, local: int, path: bytes) -> int:
    parent, name = lookup.resolve_parent_at(c.inst, c.task, AT_FDCWD, path)
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
    node = lookup.resolve_at(c.inst, c.task, AT_FDCWD, path)
    a = node.fs.getattr(node)
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
    except BaseException:
        os.close(local)
        raise

    def work() -> int:
        try:
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

    def work() -> int:
        try:
            return _sys(_c.sendto, local, data, len(data), flags, addr, len(addr))
        finally:
            os.close(local)
            if node is not None:
                node.release()
    return Blocking(work)
