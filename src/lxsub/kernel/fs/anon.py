"""Host objects with no file system of the instance: pipes, sockets, memfds,
anonymous inodes, reached through /proc/<pid>/fd/N. Opening one reopens the
object itself, as Linux's magic links do."""

from __future__ import annotations

import errno
import os

from lxsub.kernel.vfs.filesystem import FileSystem
from lxsub.kernel.vfs.node import Node
from lxsub.kernel.vfs.stat import LinuxStat

_KEEP = os.O_ACCMODE | os.O_APPEND | os.O_NONBLOCK | os.O_TRUNC | os.O_NOCTTY | os.O_PATH


class HostObjectFs(FileSystem):
    fstype = "anon_inodefs"

    def lookup(self, parent: Node, name: bytes, caller) -> Node:
        raise OSError(errno.ENOTDIR, "not a directory")

    def getattr(self, node: Node, caller) -> LinuxStat:
        # Owned by the host user: shown as the caller's (kernel/vfs/fdview.py).
        from lxsub.kernel.vfs.fdview import host_object_stat
        return host_object_stat(caller, os.fstat(node.fd))

    def open(self, node: Node, flags: int, caller) -> int:
        return os.open(f"/proc/self/fd/{node.fd}", (flags & _KEEP) | os.O_CLOEXEC)

    def statfs(self, node: Node):
        return os.statvfs(f"/proc/self/fd/{node.fd}")

    def ioctl(self, node: Node, c, cmd: int) -> object:
        # Of host objects, only the provider's LxBus ones have a trapped
        # request: the device's memfd (where no DevFs claims it) and server ports.
        from lxsub.kernel.fs import lxbusdev
        return lxbusdev.host_object_ioctl(c, cmd, node.fd, node.host_st or os.fstat(node.fd))
