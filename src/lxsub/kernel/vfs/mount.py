"""The instance's mount table: which file system answers below which directory.

Mount points are directories identified by their Node key (device and inode
on the host), as the Linux VFS does with dentries, so a path walk crosses
into a mount however the directory was reached (symlinks, `..`, dirfds).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from lxsub.kernel.vfs.filesystem import FileSystem
from lxsub.kernel.vfs.node import Node

_ids = itertools.count(21)


@dataclass(eq=False)
class Mount:
    fs: FileSystem
    source: str
    options: str = "rw"
    parent: "Mount | None" = None
    mountpoint: Node | None = None      # the covered directory, in the parent mount
    path: str = "/"                     # where it is, for /proc/mounts
    id: int = field(default_factory=lambda: next(_ids))
    root_node: Node | None = None

    def root(self) -> Node:
        assert self.root_node is not None
        return self.root_node.dup()

    def root_key(self) -> tuple:
        assert self.root_node is not None
        return self.root_node.key


class MountTable:
    def __init__(self, root_fs: FileSystem, source: str) -> None:
        self.root_mount = Mount(root_fs, source)
        self.root_mount.root_node = root_fs.root(self.root_mount)
        self.mounts: list[Mount] = [self.root_mount]
        self._by_point: dict[tuple, Mount] = {}
        self._paths: list[bytes] | None = None

    def mount(self, fs: FileSystem, at: Node, path: str, source: str, options: str = "rw") -> Mount:
        """Mount fs on the directory `at` (the table keeps its own reference)."""
        m = Mount(fs, source, options, parent=at.mount, mountpoint=at.dup(), path=path)
        m.root_node = fs.root(m)
        self.mounts.append(m)
        self._paths = None
        self._by_point[at.key] = m
        return m

    def umount(self, m: Mount) -> None:
        self.mounts.remove(m)
        self._paths = None
        if m.mountpoint is not None and self._by_point.get(m.mountpoint.key) is m:
            del self._by_point[m.mountpoint.key]
            # a mount stacked earlier on the same point shows again
            for other in reversed(self.mounts):
                if other.mountpoint is not None and other.mountpoint.key == m.mountpoint.key:
                    self._by_point[m.mountpoint.key] = other
                    break

    def mounted_on(self, node: Node) -> Mount | None:
        return self._by_point.get(node.key) if self._by_point else None

    def other_mount_paths(self) -> list[bytes]:
        """Where mounts other than the root one are, as written in the table."""
        if self._paths is None:
            self._paths = [m.path.encode() for m in self.mounts if m is not self.root_mount]
        return self._paths

