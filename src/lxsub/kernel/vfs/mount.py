"""Mount namespaces: which file system answers below which directory.

A mount point is a directory (or, for bind mounts, a file) identified as
Linux does with (vfsmount, dentry) pairs: the mount it was reached in and
its Node key (device and inode on the host, or the pseudo file's key). So a
path walk crosses into a mount however the directory was reached
(symlinks, `..`, dirfds), a mount stacked on another one covers its root,
and a bind mount of a directory onto itself does not loop.

A MountTable is one mount namespace (Linux's struct mnt_namespace): the
instance starts with one (Vfs.mounts), and unshare/clone(CLONE_NEWNS) give
a task's fs context (vfs/caller.py FsContext.mounts) a copy of its own
(copy(): every mount cloned, as copy_mnt_ns does), in which mounts and
umounts are not seen by the other, but for propagation between shared
mounts (vfs/propagation.py). A path walk asks the table of the caller's
namespace; a Node's mount is a mount of one table. /proc/<pid>/mounts,
mountinfo and df render from the process's table:

    for m in table.mounts:                  # in mount order, the root mount first
        m.id, m.parent_id, m.path, m.root_path, m.fs.fstype, m.source,
        m.options, m.device()            # (major, minor) for mountinfo
"""

from __future__ import annotations

import errno
import itertools
import os
import weakref
from dataclasses import dataclass, field

from lxsub.kernel.vfs import propagation
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

# The /proc/<pid>/ns/mnt inode of the instance's first mount namespace
# (kernel/fs/procfs/ns.py); the copies get new ones (task.new_ns_inum).
INITIAL_MNT_INUM = 0xF0000000


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
    table: "MountTable | None" = None   # the namespace it is in (mnt_ns); None once unmounted
    # Propagation (Linux's mnt_group_id, mnt_master, MNT_UNBINDABLE): its
    # shared peer group (0: not shared), the group it is a slave of (0:
    # none), whether it may not be bound (vfs/propagation.py).
    group: int = 0
    master: int = 0
    unbindable: bool = False

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
    """A mount namespace: its mounts, in mount order, the root one first."""

    def __init__(self, root_fs: FileSystem, source: str) -> None:
        root = Mount(root_fs, source)
        root.root_node = root_fs.root(root)
        self._start(root, weakref.WeakSet(), INITIAL_MNT_INUM)

    def _start(self, root: Mount, family: "weakref.WeakSet[MountTable]", inum: int) -> None:
        self.root_mount = root
        root.table = self
        self.mounts: list[Mount] = [root]
        self._by_point: dict[tuple, Mount] = {}
        self._paths: tuple[frozenset[bytes], list[bytes]] | None = None
        # Bumped by every change, for what others derive from the table (Vfs).
        self.generation = 0
        self.inum = inum                   # /proc/<pid>/ns/mnt's inode number
        # The tables copied from one another (the instance's namespaces): a
        # file system is unmounted when no mount of any of them shows it.
        self.family = family
        family.add(self)
        self.users = 0                     # fs contexts in it (the first table: not counted)
        self.initial = inum == INITIAL_MNT_INUM

    def copy(self, inum: int) -> "tuple[MountTable, dict[int, Mount]]":
        """A new namespace with a clone of each mount (copy_tree for
        copy_mnt_ns): same file system, root and place, a new id; a shared
        clone is a peer of its original, a slave's clone a slave of the
        same master. Returns it and the clones by id() of their original
        (to move a fs context's root and cwd into it)."""
        clones: dict[int, Mount] = {}
        for m in self.mounts:
            c = Mount(m.fs, m.source, m.options, path=m.path, root_path=m.root_path,
                      read_only=m.read_only, group=m.group, master=m.master, unbindable=m.unbindable)
            c.root_node = rebased(m.root_node, c)
            clones[id(m)] = c
        # Parents after: since a pivot_root a parent may come after its child.
        for m in self.mounts[1:]:
            c = clones[id(m)]
            c.parent = clones[id(m.parent)]
            c.mountpoint = rebased(m.mountpoint, c.parent)
        new = MountTable.__new__(MountTable)
        new._start(clones[id(self.root_mount)], self.family, inum)
        for m in self.mounts[1:]:
            c = clones[id(m)]
            c.table = new
            new.mounts.append(c)
            if c.mountpoint is not None:
                new._by_point[_point(c.mountpoint)] = c
        return new, clones

    def enter(self) -> None:
        if self.users <= 0 and not self.initial and self.root_mount.root_node.fd is None:
            # Joined again (setns through a kept /proc/<pid>/ns/mnt) after
            # its last user left: its root again, without the mounts.
            self.root_mount.root_node = self.root_mount.fs.root(self.root_mount)
        self.users += 1

    def leave(self) -> None:
        """A fs context left it; with the last one every mount in it goes
        (put_mnt_ns), but for the instance's first namespace."""
        self.users -= 1
        if self.users <= 0 and not self.initial:
            self.close()

    def mount(self, fs: FileSystem, at: Node, path: str, source: str, options: str = "rw",
              root: Node | None = None, root_path: str = "/") -> Mount:
        """Mount fs on `at` (the table keeps its own reference). `root`, for a
        bind mount, is the file of fs that becomes the mount's root (copied;
        the caller keeps its Node); else the file system's own root."""
        m = Mount(fs, source, options, root_path=root_path)
        if root is None:
            m.root_node = fs.root(m)
        else:
            m.root_node = rebased(root, m)
        return self.attach(m, at, path)

    def attach(self, m: Mount, at: Node, path: str) -> Mount:
        """Put the mount `m` of no table (new, or detached: open_tree) on
        `at` (the table keeps its own reference to it)."""
        m.parent, m.mountpoint, m.path, m.table = at.mount, at.dup(), path, self
        self.mounts.append(m)
        self._paths = None
        self.generation += 1
        self._by_point[_point(at)] = m
        return m

    def tuck(self, m: Mount, top: Mount) -> None:
        """move_mount's MOVE_MOUNT_BENEATH: `m` goes where `top` is mounted,
        and `top` onto m's root, so that an umount of `top` uncovers `m`."""
        assert top.mountpoint is not None and top.parent is not None
        point = top.mountpoint
        del self._by_point[_point(point)]
        self.attach(m, point, top.path)
        point.release()
        top.parent, top.mountpoint = m, m.root()
        self._by_point[_point(top.mountpoint)] = top

    def umount(self, m: Mount) -> None:
        """Take m out of the table (its children must be gone first)."""
        self.mounts.remove(m)
        propagation.leave_group(self, m)
        m.table = None
        self._paths = None
        self.generation += 1
        if m.mountpoint is not None:
            key = _point(m.mountpoint)
            if self._by_point.get(key) is m:
                del self._by_point[key]
        fs = m.fs
        if not any(other.fs is fs for t in list(self.family) for other in t.mounts):
            fs.unmounted()

    def close(self) -> None:
        """The instance or the namespace ends: unmount everything but the
        root (freeing what the file systems hold, e.g. a TmpFs's memory
        once no descriptor is open)."""
        for m in reversed(self.mounts[1:]):
            self.umount(m)
            for node in (m.root_node, m.mountpoint):
                if node is not None:
                    node.release()
        if not self.initial:
            self.root_mount.root_node.release()

    def pivot(self, new: Mount, root: Mount, put_old: Node, put_old_path: str) -> None:
        """pivot_root's move (the caller checked it may be made): `new`
        takes the place of `root`, whose mount point `root` leaves for the
        directory `put_old` (at `put_old_path` before the move). The paths
        of every mount are those of the namespace after the move."""
        rel = {id(m): _below(m.path, m.parent.path) for m in self.mounts if m.parent is not None}
        rel[id(root)] = _below(put_old_path, put_old.mount.path)
        rel[id(new)] = _below(root.path, root.parent.path)
        for m in (new, root):
            if self._by_point.get(_point(m.mountpoint)) is m:
                del self._by_point[_point(m.mountpoint)]
        assert new.mountpoint is not None
        left = new.mountpoint
        new.parent, new.mountpoint, root.parent, root.mountpoint = \
            root.parent, root.mountpoint, put_old.mount, put_old.dup()
        left.release()
        for m in (new, root):
            self._by_point[_point(m.mountpoint)] = m
        self._set_paths(self.root_mount, rel)
        self._paths = None
        self.generation += 1

    def _set_paths(self, m: Mount, rel: dict[int, str]) -> None:
        for c in self.children(m):
            c.path = m.path.rstrip("/") + rel[id(c)] or "/"
            self._set_paths(c, rel)

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

    def mounted_at(self, parent: Mount, key: tuple) -> Mount | None:
        """The mount on the file `key` (a Node's key) of mount `parent`."""
        return self._by_point.get((id(parent), key))

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


def _below(path: str, base: str) -> str:
    """`path` relative to the mount path `base` ("" or "/..."), as a mount
    below it is placed."""
    base = base.rstrip("/")
    return path[len(base):] if path.startswith(base) else path


def rebased(node: Node, mount: Mount) -> Node:
    """A copy of `node` as the same file seen in `mount` (a clone of its mount)."""
    copy = node.dup()
    copy.mount = mount
    return copy


def _point(node: Node) -> tuple:
    return (id(node.mount), node.key)
