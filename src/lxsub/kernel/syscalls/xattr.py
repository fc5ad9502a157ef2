"""<sys/xattr.h>: extended attributes, minus the ones VolFs keeps for itself."""

from __future__ import annotations

import errno
import os
import stat as st

from lxsub.abi.fcntl import AT_EMPTY_PATH, AT_FDCWD, AT_SYMLINK_NOFOLLOW
from lxsub.kernel import creds as caps
from lxsub.kernel.call import Call
from lxsub.kernel.fs.lxattr import RESERVED_PREFIX
from lxsub.kernel.vfs import lookup
from lxsub.kernel.vfs.mount import want_write

XATTR_SIZE_MAX = 65536
XATTR_CREATE, XATTR_REPLACE = 1, 2
POSIX_ACLS = ("system.posix_acl_access", "system.posix_acl_default")


def _node(c: Call, kind: str):
    if kind == "f":
        # A socket or pipe too: its attributes are the host object's, as
        # Linux's sockfs and pipefs inodes have them (fgetxattr(2)).
        return lookup.node_of_open_fd(c.inst.vfs, c.task, c.int(0), host_objects=True)
    flags = AT_SYMLINK_NOFOLLOW if kind == "l" else 0
    return lookup.resolve_at(c.inst.vfs, c.task, AT_FDCWD, c.path(0), flags)


def _host_target(node, name: str | None = None) -> str:
    if node.fd is None:
        raise OSError(errno.EOPNOTSUPP, "no extended attributes here")
    if name in POSIX_ACLS and not node.fs.host_acls:
        raise OSError(errno.EOPNOTSUPP, "no POSIX ACLs on this file system")
    return f"/proc/self/fd/{node.fd}"


def _user_permission(c: Call, node, name: str, write: bool) -> None:
    """fs/xattr.c xattr_permission: user.* attributes belong to regular
    files and directories only (EPERM to set, ENODATA to read on others,
    where VolFs keeps devices, FIFOs and sockets as plain host files); on a
    sticky directory only its owner (or CAP_FOWNER) sets them."""
    if name.startswith("trusted.") and node.mount is c.inst.vfs.anon_mount:
        # A pipe or socket: the host would judge trusted.* by the host
        # user's CAP_SYS_ADMIN; pipefs and sockfs keep none for the capable.
        if not c.task.creds.capable(caps.CAP_SYS_ADMIN):
            raise OSError(errno.EPERM if write else errno.ENODATA, "trusted attributes need CAP_SYS_ADMIN")
        raise OSError(errno.EOPNOTSUPP, "no trusted attributes on this object")
    if not name.startswith("user."):
        return
    a = node.fs.getattr(node, c.task)
    if not (st.S_ISREG(a.mode) or st.S_ISDIR(a.mode)):
        raise OSError(errno.EPERM if write else errno.ENODATA, "user attributes on a special file")
    if write and st.S_ISDIR(a.mode) and a.mode & st.S_ISVTX and c.task.creds.fsuid != a.uid \
            and not c.task.creds.capable(caps.CAP_FOWNER):
        raise OSError(errno.EPERM, "user attributes on another's sticky directory")


def _shown(node, name: str) -> bool:
    return not name.startswith(RESERVED_PREFIX) and (node.fs.host_acls or name not in POSIX_ACLS)


def _name(c: Call, addr: int) -> str:
    """import_xattr_name: an empty name or one longer than XATTR_NAME_MAX
    (255) is ERANGE."""
    try:
        name = c.read_str(addr, 256).decode("utf-8", "surrogateescape")
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise OSError(errno.ERANGE, "name longer than 255 bytes") from None
        raise
    if not name:
        raise OSError(errno.ERANGE, "empty name")
    return name


def _get(c: Call, kind: str) -> int:
    return _get_from(c, lambda: _node(c, kind), c.ptr(1), c.ptr(2), c.long(3))


def _get_from(c: Call, node_of, name_addr: int, value: int, size: int) -> int:
    name = _name(c, name_addr)
    if name.startswith(RESERVED_PREFIX):
        raise OSError(errno.ENODATA, "no such attribute")
    node = node_of()
    try:
        _user_permission(c, node, name, write=False)
        data = os.getxattr(_host_target(node, name), name)
    finally:
        node.release()
    return _copy_out(c, value, size, data)


def _copy_out(c: Call, addr: int, size: int, data: bytes) -> int:
    """The xattr calls' answer: the size alone when asked with size 0."""
    if size == 0:
        return len(data)
    if size < len(data):
        raise OSError(errno.ERANGE, "buffer too small")
    c.write(addr, data)
    return len(data)


def _set(c: Call, kind: str) -> int:
    return _set_on(c, lambda: _node(c, kind), c.ptr(1), c.ptr(2), c.long(3), c.int(4))


def _set_on(c: Call, node_of, name_addr: int, value_addr: int, size: int, flags: int) -> int:
    name = _name(c, name_addr)
    if name.startswith(RESERVED_PREFIX):
        raise OSError(errno.EPERM, "reserved attribute")
    if not 0 <= size <= XATTR_SIZE_MAX:
        raise OSError(errno.E2BIG, "value too large")
    value = c.read(value_addr, size)
    node = node_of()
    try:
        want_write(node)            # path_setxattr/file_setxattr: mnt_want_write
        _user_permission(c, node, name, write=True)
        os.setxattr(_host_target(node, name), name, value, flags)
    finally:
        node.release()
    return 0


def _list(c: Call, kind: str) -> int:
    return _list_of(c, lambda: _node(c, kind), c.ptr(1), c.long(2))


def _list_of(c: Call, node_of, addr: int, size: int) -> int:
    node = node_of()
    try:
        names = [n for n in os.listxattr(_host_target(node)) if _shown(node, n)]
    finally:
        node.release()
    data = b"".join(n.encode("utf-8", "surrogateescape") + b"\0" for n in names)
    return _copy_out(c, addr, size, data)


def _remove(c: Call, kind: str) -> int:
    return _remove_from(c, lambda: _node(c, kind), c.ptr(1))


def _remove_from(c: Call, node_of, name_addr: int) -> int:
    name = _name(c, name_addr)
    if name.startswith(RESERVED_PREFIX):
        raise OSError(errno.EPERM, "reserved attribute")
    node = node_of()
    try:
        want_write(node)
        _user_permission(c, node, name, write=True)
        os.removexattr(_host_target(node, name), name)
    finally:
        node.release()
    return 0


def sys_getxattr(c): return _get(c, "p")
def sys_lgetxattr(c): return _get(c, "l")
def sys_fgetxattr(c): return _get(c, "f")
def sys_setxattr(c): return _set(c, "p")
def sys_lsetxattr(c): return _set(c, "l")
def sys_fsetxattr(c): return _set(c, "f")
def sys_listxattr(c): return _list(c, "p")
def sys_llistxattr(c): return _list(c, "l")
def sys_flistxattr(c): return _list(c, "f")
def sys_removexattr(c): return _remove(c, "p")
def sys_lremovexattr(c): return _remove(c, "l")
def sys_fremovexattr(c): return _remove(c, "f")


# -- the *xattrat calls (Linux 6.13): a dirfd, a path and AT_* flags; the
# value and its size in a struct xattr_args for the set and get calls.

XATTR_ARGS_SIZE_VER0 = 16                   # struct xattr_args: value, size, flags
PAGE_SIZE = 4096


def _node_at(c: Call):
    """The file of (dfd, path, at_flags), the first three arguments: only
    AT_SYMLINK_NOFOLLOW and AT_EMPTY_PATH (a NULL or empty path with it:
    the descriptor's own file) are known (EINVAL)."""
    at_flags = c.uint(2)
    if at_flags & ~(AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH):
        raise OSError(errno.EINVAL, "bad *xattrat flags")
    path = c.path_or_empty(1, at_flags)
    return lambda: lookup.resolve_at(c.inst.vfs, c.task, c.int(0), path, at_flags)


def _xattr_args(c: Call) -> tuple[int, int, int]:
    """copy_struct_from_user of struct xattr_args (arguments 4 and 5)."""
    usize = c.args[5]
    if usize < XATTR_ARGS_SIZE_VER0:
        raise OSError(errno.EINVAL, "xattr_args too small")
    if usize > PAGE_SIZE:
        raise OSError(errno.E2BIG, "xattr_args larger than a page")
    raw = c.read(c.ptr(4), usize)
    if any(raw[XATTR_ARGS_SIZE_VER0:]):
        raise OSError(errno.E2BIG, "unknown xattr_args fields set")
    value = int.from_bytes(raw[0:8], "little")
    return value, int.from_bytes(raw[8:12], "little"), int.from_bytes(raw[12:16], "little")


def sys_setxattrat(c: Call) -> int:
    value, size, flags = _xattr_args(c)
    if flags & ~(XATTR_CREATE | XATTR_REPLACE):
        raise OSError(errno.EINVAL, "bad setxattr flags")
    return _set_on(c, _node_at(c), c.ptr(3), value, size, flags)


def sys_getxattrat(c: Call) -> int:
    value, size, flags = _xattr_args(c)
    if flags:
        raise OSError(errno.EINVAL, "getxattrat takes no flags")
    return _get_from(c, _node_at(c), c.ptr(3), value, size)


def sys_listxattrat(c: Call) -> int:
    return _list_of(c, _node_at(c), c.ptr(3), c.args[4])


def sys_removexattrat(c: Call) -> int:
    return _remove_from(c, _node_at(c), c.ptr(3))
