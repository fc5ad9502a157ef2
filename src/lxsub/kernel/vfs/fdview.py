"""The Linux view of any descriptor a program holds: instance files through
their file system, host-only objects (pipes, sockets, memfds) as they are,
with host owners mapped into the instance."""

from __future__ import annotations

import os
import stat as st
from typing import TYPE_CHECKING

from lxsub.abi.limits import OVERFLOW_ID
from lxsub.kernel.vfs import lookup
from lxsub.kernel.vfs.node import Node
from lxsub.kernel.vfs.stat import LinuxStat

if TYPE_CHECKING:
    from lxsub.kernel.vfs.vfs import Vfs
    from lxsub.kernel.vfs.caller import Caller

_HOST_UID = os.getuid()
_HOST_GID = os.getgid()


def node_or_none(vfs: "Vfs", local: int, s: os.stat_result, caller: "Caller | None" = None) -> Node | None:
    """A Node for a provider-side fd if it is a file of a mounted file
    system (on a mount of the caller's namespace if it is in one)."""
    if st.S_ISFIFO(s.st_mode) or st.S_ISSOCK(s.st_mode):
        return None          # pipes and sockets: only named ones live in file systems
    try:
        host = os.readlink(f"/proc/self/fd/{local}")
    except OSError:
        return None
    if not host.startswith("/"):
        return None          # anon_inode:..., pipe:[...], socket:[...]
    return vfs.node_for_host_fd(local, s, host, vfs.mounts_of(caller))


def stat_of_fd(vfs: "Vfs", caller: "Caller", fd: int) -> LinuxStat:
    return stat_and_mount_of_fd(vfs, caller, fd)[0]


def stat_and_mount_of_fd(vfs: "Vfs", caller: "Caller", fd: int) -> tuple[LinuxStat, int]:
    """fstat of a caller's descriptor, and the id of the mount its file is on (0: none)."""
    local = lookup.copy_fd(caller, fd)
    try:
        s = os.fstat(local)
        node = node_or_none(vfs, local, s, caller)
        if node is not None:
            return node.fs.getattr(node, caller), node.mount.id
        return host_object_stat(caller, s), 0
    finally:
        os.close(local)


def host_object_stat(caller: "Caller", s: os.stat_result) -> LinuxStat:
    return LinuxStat.from_host(s, s.st_mode, map_host_uid(caller, s.st_uid),
                               map_host_gid(caller, s.st_gid), s.st_rdev)


def map_host_uid(caller: "Caller", uid: int) -> int:
    if uid == _HOST_UID:
        return caller.creds.fsuid
    return 0 if uid == 0 else OVERFLOW_ID


def map_host_gid(caller: "Caller", gid: int) -> int:
    if gid == _HOST_GID:
        return caller.creds.fsgid
    return 0 if gid == 0 else OVERFLOW_ID
