"""A resolved file: which mount it is on and the file system's handle for it.

For host-backed file systems the handle is a provider-side O_PATH
descriptor: every later step (open, stat, create in it) starts from that
descriptor, so a program renaming or re-linking things meanwhile cannot
redirect the provider outside the instance.
"""

from __future__ import annotations

import os
import stat as st
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lxsub.kernel.vfs.mount import Mount


class Node:
    __slots__ = ("mount", "fd", "host_st", "obj", "fresh", "_key")

    def __init__(self, mount: "Mount", fd: int | None = None,
                 host_st: os.stat_result | None = None, obj: Any = None) -> None:
        self.mount = mount
        self.fd = fd              # provider-side O_PATH fd (host-backed fs)
        self.host_st = host_st    # host stat taken when the node was looked up
        self.obj = obj            # the file system's own object (pseudo fs)
        # host_st was taken just now, in this syscall: no need to stat again.
        self.fresh = host_st is not None
        self._key: tuple | None = None

    @property
    def fs(self):
        return self.mount.fs

    @property
    def key(self) -> tuple:
        """Identity for mount points and root checks (it never changes)."""
        k = self._key
        if k is None:
            if self.host_st is not None:
                k = (self.host_st.st_dev, self.host_st.st_ino)
            else:
                k = (id(self.mount.fs), self.obj.key)
            self._key = k
        return k

    def mode(self) -> int:
        """Host type bits, or the pseudo file's mode."""
        if self.host_st is not None:
            return self.host_st.st_mode
        return self.obj.mode

    def is_dir(self) -> bool:
        return st.S_ISDIR(self.mode())

    def is_symlink(self) -> bool:
        return st.S_ISLNK(self.mode())

    def dup(self) -> "Node":
        fd = os.dup(self.fd) if self.fd is not None else None
        copy = Node(self.mount, fd, self.host_st, self.obj)
        copy._key = self._key
        copy.fresh = False        # a kept node (cwd, root) may be long out of date
        return copy

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __repr__(self) -> str:
        return f"Node({self.mount.fs.fstype}, fd={self.fd}, key={self.key})"
