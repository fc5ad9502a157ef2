"""fs/fhandle.c: name_to_handle_at, with the path resolved in the instance.

The handle of a host-backed file is the host file system's own (the host
encodes it for the provider's descriptor of the very file); the mount id
is the instance's, as /proc/<pid>/mountinfo and statx show it. Pseudo
files (procfs, sysfs) have no export operations: EOPNOTSUPP, except for a
handle only meant to identify the file (AT_HANDLE_FID), which Linux
encodes from the inode number (exportfs_encode_ino64_fid).

open_by_handle_at needs CAP_DAC_READ_SEARCH inside (EPERM), and then the
host's: the host decodes the handle with the mount descriptor's host file
system, which it does only for a host user with CAP_DAC_READ_SEARCH in the
initial user namespace (root; any other host user gets EPERM). The file
it finds must be one the instance has (a host handle can name any file
of the host file system: else ESTALE, as for a handle no file answers),
and is then opened as open(2) opens it in the instance.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import struct

from lxsub.abi.fcntl import (AT_EMPTY_PATH, AT_HANDLE_CONNECTABLE, AT_HANDLE_FID, AT_SYMLINK_FOLLOW,
                              AT_SYMLINK_NOFOLLOW, MAX_HANDLE_SZ)
import os

from lxsub.abi.fcntl import O_PATH
from lxsub.kernel.call import Call
from lxsub.kernel.creds import CAP_DAC_READ_SEARCH
from lxsub.kernel.vfs import lookup
from lxsub.kernel.vfs.node import Node
from lxsub.kernel.vfs.open import open_node
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


def sys_open_by_handle_at(c: Call):
    """fs/fhandle.c do_handle_open: the handle's header (EFAULT), the mount
    descriptor (EBADF), the right (EPERM), the handle's size (EINVAL for no
    bytes or more than MAX_HANDLE_SZ), the file (ESTALE), then the open as
    open(2)'s. O_PATH is EINVAL here: seccomp's ADDFD cannot hand such a
    descriptor over."""
    from lxsub.kernel.syscalls.fcntl import opened
    flags = c.uint(2)
    # The handle's header is copied in before the descriptor or the right
    # are looked at: a bad pointer is EFAULT whatever else is wrong (what
    # this kernel answers natively; tests/integration/test_robustness.py).
    size, kind = _HEADER.unpack(c.read(c.ptr(1), _HEADER.size))
    if flags & O_PATH:
        raise OSError(errno.EINVAL, "O_PATH descriptors cannot be handed over")
    anchor = lookup.resolve_at(c.inst.vfs, c.task, c.int(0), b"", AT_EMPTY_PATH)
    try:
        if not c.task.creds.capable(CAP_DAC_READ_SEARCH):
            raise OSError(errno.EPERM, "CAP_DAC_READ_SEARCH needed")
        if not 0 < size <= MAX_HANDLE_SZ:
            raise OSError(errno.EINVAL, "bad handle_bytes")
        handle = ctypes.create_string_buffer(_HEADER.pack(size, kind) + c.read(c.ptr(1) + _HEADER.size, size))
        if anchor.fd is None:
            raise OSError(errno.ESTALE, "no export operations")
        node = _node_of_handle(c, anchor, handle)
    finally:
        anchor.release()
    try:
        return opened(open_node(c.inst.vfs, c.task, node, flags), flags)
    finally:
        node.release()


def _node_of_handle(c: Call, anchor: Node, handle) -> Node:
    """The file of the anchor's file system the host decodes the handle
    to (exportfs_decode_fh works in the mount's super block), else ESTALE:
    also for a host file the instance has elsewhere or not at all."""
    # The host takes no O_PATH descriptor as the mount's (fdget: EBADF),
    # and the provider's descriptor of a directory (the cwd) is one.
    anchor_fd = mount_fd = anchor.fd
    if fcntl.fcntl(anchor_fd, fcntl.F_GETFL) & O_PATH:
        mount_fd = os.open(f"/proc/self/fd/{anchor_fd}", os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        fd = libc.open_by_handle_at(mount_fd, handle, O_PATH | os.O_CLOEXEC)
    finally:
        if mount_fd != anchor_fd:
            os.close(mount_fd)
    if not _inside_mount_root(fd, anchor.mount):
        os.close(fd)
        raise OSError(errno.ESTALE, "not a file below the mount's root")
    node = c.inst.vfs.node_for_host_fd(fd, os.fstat(fd), table=c.inst.vfs.mounts_of(c.task))
    if node is None:
        os.close(fd)
        raise OSError(errno.ESTALE, "not a file of this instance")
    if node.mount.fs is not anchor.mount.fs:
        node.release()
        raise OSError(errno.ESTALE, "not a file of the mount's file system")
    return node


def _inside_mount_root(fd: int, mount) -> bool:
    """Whether the host file `fd` lies below the host directory at the root
    of `mount`, by a path that leads to it. A handle names any file of the
    host file system the instance's tree is on (its root, inode 2, the
    "shocker" escape); a file that is found by no path (a handle of a
    deleted or disconnected file) is refused as well."""
    root = mount.root_node
    if root is None or root.fd is None:
        return False
    try:
        top = os.readlink(f"/proc/self/fd/{root.fd}")
        host = os.readlink(f"/proc/self/fd/{fd}")
        here, there = os.stat(host, follow_symlinks=False), os.fstat(fd)
    except OSError:
        return False
    if (here.st_dev, here.st_ino) != (there.st_dev, there.st_ino):
        return False
    return host == top or host.startswith(top.rstrip("/") + "/")
