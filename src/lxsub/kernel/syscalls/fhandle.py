"""fs/fhandle.c: name_to_handle_at, with the path resolved in the instance.

The handle of a host-backed file is the host file system's own (the host
encodes it for the provider's descriptor of the very file); the mount id
is the instance's, as /proc/<pid>/mountinfo and statx show it. Pseudo
files (procfs, sysfs) have no export operations: EOPNOTSUPP, except for a
handle only meant to identify the file (AT_HANDLE_FID), which Linux
encodes from the inode number (exportfs_encode_ino64_fid).

open_by_handle_at stays denied: it needs CAP_DAC_READ_SEARCH in the initial
user namespace, which root inside, the host user, does not have (and a
host handle can name any file of the host file system).
"""

from __future__ import annotations

import ctypes
import errno
import struct

from lxsub.abi.fcntl import (AT_EMPTY_PATH, AT_HANDLE_CONNECTABLE, AT_HANDLE_FID, AT_SYMLINK_FOLLOW,
                              AT_SYMLINK_NOFOLLOW, MAX_HANDLE_SZ)
from lxsub.kernel.call import Call
from lxsub.kernel.vfs import lookup
from lxsub.platform import libc

_HEADER = struct.Struct("<Ii")            # struct file_handle: handle_bytes, handle_type
_FILEID_INO64_GEN = 0x81                  # include/linux/exportfs.h
_INO64_GEN = struct.Struct("<QI")


def sys_name_to_handle_at(c: Call) -> int:
    dirfd, flags = c.int(0), c.int(4)
    if flags & ~(AT_SYMLINK_FOLLOW | AT_EMPTY_PATH | AT_HANDLE_FID | AT_HANDLE_CONNECTABLE):
        raise OSError(errno.EINVAL, "bad flags")
    # A connectable handle needs the file's parent, which FID and a bare
    # descriptor (AT_EMPTY_PATH) do not promise.
    if flags & AT_HANDLE_CONNECTABLE and flags & (AT_HANDLE_FID | AT_EMPTY_PATH):
        raise OSError(errno.EINVAL, "conflicting flags")
    walk = (0 if flags & AT_SYMLINK_FOLLOW else AT_SYMLINK_NOFOLLOW) | (flags & AT_EMPTY_PATH)
    node = lookup.resolve_at(c.inst.vfs, c.task, dirfd, c.path_or_empty(1, flags), walk)
    try:
        if node.fd is None and not flags & AT_HANDLE_FID:
            raise OSError(errno.EOPNOTSUPP, "no export operations")
        capacity, _ = _HEADER.unpack(c.read(c.ptr(2), _HEADER.size))
        if capacity > MAX_HANDLE_SZ:
            raise OSError(errno.EINVAL, "handle_bytes above MAX_HANDLE_SZ")
        if node.fd is None:
            a = node.fs.getattr(node, c.task)
            needed, kind, body = _INO64_GEN.size, _FILEID_INO64_GEN, _INO64_GEN.pack(a.ino, 0)
        else:
            needed, kind, body = _host_handle(node.fd, capacity, flags & (AT_HANDLE_FID | AT_HANDLE_CONNECTABLE))
        mount_id = node.mount.id
    finally:
        node.release()
    # do_sys_name_to_handle: too small a buffer is EOVERFLOW with the size
    # needed written back and no handle; the mount id is written either way.
    overflow = needed > capacity
    c.write(c.ptr(3), struct.pack("<i", mount_id))
    c.write(c.ptr(2), _HEADER.pack(needed, kind) + (b"" if overflow else body))
    if overflow:
        raise OSError(errno.EOVERFLOW, "handle buffer too small")
    return 0


def _host_handle(fd: int, capacity: int, kind_flags: int) -> tuple[int, int, bytes]:
    """(bytes needed, handle type, handle) as the host encodes them for our
    descriptor of the file."""
    buf = ctypes.create_string_buffer(_HEADER.size + MAX_HANDLE_SZ)
    _HEADER.pack_into(buf, 0, capacity, 0)
    try:
        # Through the descriptor's magic link, not AT_EMPTY_PATH: a
        # connectable handle wants the file as reached by a path.
        libc.name_to_handle_at(f"/proc/self/fd/{fd}".encode(), AT_SYMLINK_FOLLOW | kind_flags, buf)
    except OSError as e:
        if e.errno != errno.EOVERFLOW:
            raise
    needed, kind = _HEADER.unpack_from(buf, 0)
    return needed, kind, buf.raw[_HEADER.size:_HEADER.size + needed]
