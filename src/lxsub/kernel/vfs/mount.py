"""The instance's mount table: which file system answers below which directory.

A mount point is a directory (or, for bind mounts, a file) identified as
Linux does with (vfsmount, dentry) pairs: the mount it was reached in and
its Node key (device and inode on the host, or the pseudo file's key). So a
path walk crosses into a mount however the directory was reached
(symlinks, `..`, dirfds), a mount stacked on another one covers its root,
and a bind mount of a directory onto itself does not loop.

This table is the instance's only mount namespace. /proc/mounts,
/proc/<pid>/mountinfo and df render from it:

    for m in inst.vfs.mounts.mounts:        # in mount order, the root mount first
        m.id, m.parent_id, m.path, m.root_path, m.fs.fstype, m.source,
        m.options, m.device()            # (major, minor) for mountinfo
"""

from __future__ import annotations

import errno
import itertools
import os
from dataclasses import dataclass, field

from lxsub.kernel.vfs.filesystem import FileSystem
from lxsub.kernel.vfs.node import Node

# Device numbers of the file systems the instance makes up (pseudo file
# systems, DrvFs's views of host file systems): anonymous ones (major 0, as
# Linux gives proc, sysfs, 9p), from a range far above the small minors the
# host's own anonymous devices take (its tmpfs mounts show here as they are),
# so that no two mounts share an st_dev.
_ANON_MINOR_BASE = 1 << 18
_anon_minors = itertools.count(_ANON_MINOR_BASE)


def anon_dev() -> int:
    """A new anonymous device number for a made-up file system."""
    return os.makedev(0, next(_anon_minors))

_ids = itertools.count(21)


def want_write(node: Node) -> None:
    """Linux's mnt_want_write: nothing in a read-only mount may change
    (EROFS), whatever the caller's rights; each change asks before it is
    made."""
    m = node.mount
    if m is not None and m.read_only:
        raise OSError(errno.EROFS, "read-only file system")


@dataclass(eq=False)
class Mount:
    fs: FileSystem
    source: str
    options: str = "rw"
    parent: "Mount | None" = None
    mountpoint: Node | None = None      # the covered file, in the parent mount
    path: str = "/"                     # where it is, from the instance root
    id: int = field(default_factory=lambda: next(_ids))
    root_node: Node | None = None
    root_path: str = "/"                # its root inside the file system (bind mounts)
    read_only: bool = False             # MS_RDONLY: want_write() refuses changes (EROFS)

    def root(self) -> Node:
        assert self.root_node is not None
        return self.root_node.dup()

    def root_key(self) -> tuple:
        assert self.root_node is not None
        return self.root_node.key

    @property
    def parent_id(self) -> int:
        """The parent's id; the root mount is its own parent, as in mountinfo."""
        return self.parent.id if self.parent is not None else self.id

    def device(self) -> tuple[int, int]:
        """(major, minor) of the file system, as stat shows its files."""
        node = self.root_node
        if node is not None and node.host_st is not None:
            dev = node.host_st.st_dev
        else:
            dev = self.fs.dev
        return os.major(dev), os.minor(dev)


class MountTable:
    def __init__(self, root_fs: FileSystem, source: str) -> None:
        self.root_mount = Mount(root_fs, source)
        self.root_mount.root_node = root_fs.root(self.root_mount)
        self.mounts: list[Mount] = [self.root_mount]
        self._by_point: dict[tuple, Mount] = {}
        self._paths: tuple[frozenset[bytes], list[bytes]] | None = None
        # Bumped by every change, for what others derive from the table (Vfs).
        self.generation = 0

    def mount(self, fs: FileSystem, at: Node, path: str, source: str, options: str = "rw",
              root: Node | None = None, root_path: str = "/") -> Mount:
        """Mount fs on `at` (the table keeps its own reference). `root`, for a
        bind mount, is the file of fs that becomes the mount's root (copied;
        the caller keeps its Node); else the file system's own root."""
        m = Mount(fs, source, options, parent=at.mount, mountpoint=at.dup(), path=path,
                  root_path=root_path)
        if root is None:
            m.root_node = fs.root(m)
        else:
            r = root.dup()
            r.mount = m
            m.root_node = r
        self.mounts.append(m)
        self._paths = None
        self.generation += 1
        self._by_point[_point(at)] = m
        return m

    def umount(self, m: Mount) -> None:
        """Take m out of the table (its children must be gone first)."""
        self.mounts.remove(m)
        self._paths = None
        self.generation += 1
        if m.mountpoint is not None:
            key = _point(m.mountpoint)
            if self._by_point.get(key) is m:
                del self._by_point[key]
        fs = m.fs
        if not any(other.fs is fs for other in self.mounts):
            fs.unmounted()

    def close(self) -> None:
        """The instance ends: unmount everything (freeing what the file
        systems hold, e.g. a TmpFs's memory once no descriptor is open)."""
        for m in reversed(self.mounts[1:]):
            self.umount(m)
            for node in (m.root_node, m.mountpoint):
                if node is not None:
                    node.release()

    def children(self, m: Mount) -> list[Mount]:
        return [c for c in self.mounts if c.parent is m]

    def descendants(self, m: Mount) -> list[Mount]:
        """Every mount below m, deepest first (the order to unmount them)."""
        out: list[Mount] = []
        for c in self.children(m):
            out.extend(self.descendants(c))
            out.append(c)
        return out

    def mount_of_root(self, node: Node) -> Mount | None:
        """The mount whose root `node` is (None if it is not a mount's root)."""
        m = node.mount
        if m.root_node is not None and node.key == m.root_key():
            return m
        return None

    def mounted_on(self, node: Node) -> Mount | None:
        return self._by_point.get(_point(node)) if self._by_point else None

    def may_cross_mount(self, plain: bytes) -> bool:
        """Whether the normalised absolute path `plain` ends on or passes
        through a mount other than the root one, as written in the table."""
        if self._paths is None:
            paths = [m.path.encode() for m in self.mounts if m is not self.root_mount]
            self._paths = (frozenset(p.split(b"/", 2)[1] for p in paths), paths)
        tops, paths = self._paths
        if plain[1:].split(b"/", 1)[0] not in tops:
            return False
        for p in paths:
            if plain.startswith(p) and (len(plain) == len(p) or plain[len(p)] == 0x2F):
                return True
        return False


def _point(node: Node) -> tuple:
    return (id(node.mount), node.key)
