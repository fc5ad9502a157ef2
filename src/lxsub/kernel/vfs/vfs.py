"""The instance's VFS: its mount table, the anonymous mount, and the two
translations every syscall that names a file needs: a host descriptor to
the file (Node) it is in the instance, and a Node to its instance path.

Linux keeps the same knowledge in fs/namespace.c (the mount tree), fs/dcache.c
(d_path: a dentry and vfsmount to a path) and fs/anon_inodes.c (files of no
mounted file system). Syscall handlers reach it as `call.inst.vfs`; the
functions of kernel/vfs/ (lookup, open, ops, fdview) take it, never the
instance.

File systems tell the Vfs what it needs through FileSystem's declarations
(kernel/vfs/filesystem.py): `host_claim` and `node_from_host` for host
descriptors, `path_in_mount` for paths.
"""

from __future__ import annotations

import errno
import os
import stat as st
import weakref

from lxsub.kernel.fs.anon import HostObjectFs
from lxsub.kernel.fs.devfs import PtyOwners
from lxsub.kernel.fs.devices import OpenedDevices
from lxsub.kernel.fs.loopdev import LoopDevices
from lxsub.kernel.vfs.images import RunningImages
from lxsub.kernel.vfs.filesystem import CLAIM_BY_ROOT, CLAIM_OWN, CLAIM_REST, FileSystem
from lxsub.kernel.vfs.mount import Mount, MountTable, rebased
from lxsub.kernel.vfs.caller import Caller, FsContext
from lxsub.kernel.vfs.node import Node
from lxsub.kernel.vfs.path import Walker

class Vfs:
    def __init__(self, root_fs: FileSystem, source: str) -> None:
        # The instance's first mount namespace (the provider's own work
        # walks it); the others are copies of it (mounts_of, new_namespace).
        self.mounts = MountTable(root_fs, source)
        # Pipes, sockets, memfds, anonymous inodes: files of no mounted file
        # system (Linux's anon_inode_mnt, pipe_mnt, sock_mnt), for stat and
        # /proc/<pid>/fd/N.
        self.anon_mount = Mount(HostObjectFs(), "anon")
        self._index: "weakref.WeakKeyDictionary[MountTable, tuple]" = weakref.WeakKeyDictionary()
        # The Linux owners of the ptys (devpts(5)): set by opening /dev/ptmx,
        # shown by every devpts mount.
        self.ptys = PtyOwners()
        # Devices opened through a node of their own (mknod on a host tree).
        self.opened_devices = OpenedDevices()
        # Mounts of no namespace (open_tree's OPEN_TREE_CLONE), each with a
        # copy of the descriptor that names it, until move_mount attaches it
        # (kernel/syscalls/mount.py).
        self.detached: list[tuple[int, Mount]] = []
        # The instance's loop devices (kernel/fs/loopdev.py).
        self.loops = LoopDevices()
        self.images = RunningImages()          # program files being run (ETXTBSY)

    # -- mount namespaces -----------------------------------------------------------

    def mounts_of(self, caller: "Caller | None") -> MountTable:
        """The mount namespace `caller` walks in: its fs context's, the
        first one for the provider's own work."""
        fs = caller.fs if caller is not None else None
        table = fs.mounts if fs is not None else None
        return table if table is not None else self.mounts

    def new_namespace(self, fs: FsContext, inum: int) -> None:
        """copy_mnt_ns: `fs` (a context of one task's) moves to a copy of
        its namespace, its root and cwd to their clones there."""
        table, clones = self.mounts_of(Caller(None, fs)).copy(inum)
        fs.set_mounts(table, _moved(fs.root, clones), _moved(fs.cwd, clones))

    def enter_namespace(self, fs: FsContext, table: MountTable) -> None:
        """mntns_install: `fs` moves to the namespace `table`, its root and
        cwd to the namespace's root."""
        table.enter()              # (revives a namespace no task was left in)
        try:
            root = table.root_mount.root()
            fs.set_mounts(table, root, root.dup())
        finally:
            table.leave()

    # -- host descriptor -> Node ---------------------------------------------------

    def _host_index(self, table: MountTable) -> tuple[list, list, list]:
        """How a host descriptor's path finds its mount in `table`, in the
        order asked: file systems that claim their own descriptors (pseudo
        files, TmpFs), then those found by host root, longest first, then
        the ones that take what no other claims (DrvFs), longest root first."""
        gen = table.generation
        index = self._index.get(table)
        if index is None or index[0] != gen:
            own, by_root, rest = [], [], []
            for m in table.mounts:
                claim, root = m.fs.host_claim, m.fs.host_root
                if claim == CLAIM_OWN:
                    own.append(m)
                elif claim == CLAIM_BY_ROOT and root is not None:
                    by_root.append((root.rstrip("/") + "/", root, m))
                elif claim == CLAIM_REST:
                    rest.append(m)
            by_root.sort(key=lambda e: -len(e[1]))
            rest.sort(key=lambda m: -len(m.fs.host_root or ""))
            index = self._index[table] = (gen, own, by_root, rest)
        return index[1:]

    def node_for_host_fd(self, fd: int, s: os.stat_result, host: str | None = None,
                         table: MountTable | None = None) -> Node | None:
        """A Node using fd (not a copy) if it is a file of a mounted file
        system: on a mount of `table` (the caller's namespace; None: the
        first), else of another namespace's (a descriptor passed from a
        process of another). `host` is fd's host path if the caller has
        read it already."""
        if host is None:
            try:
                host = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                return None
        if st.S_ISCHR(s.st_mode) or st.S_ISBLK(s.st_mode):
            node = self.opened_devices.node_of(fd, s)
            if node is not None:
                return node
        first = table if table is not None else self.mounts
        node = self._node_in(first, fd, s, host)
        if node is None:
            for other in list(first.family):
                if other is not first:
                    node = self._node_in(other, fd, s, host)
                    if node is not None:
                        break
        return node

    def _node_in(self, table: MountTable, fd: int, s: os.stat_result, host: str) -> Node | None:
        own, by_root, rest = self._host_index(table)
        for m in own:
            found = m.fs.node_from_host(m, fd, host, s)
            if found is not None:
                return found
        for prefix, root, m in by_root:
            if host.startswith(prefix) or host == root:
                return Node(m, fd, s)
        for m in rest:
            found = m.fs.node_from_host(m, fd, host, s)
            if found is not None:
                return found
        return None

    def node_of_host_fd(self, fd: int, table: MountTable | None = None) -> Node:
        """A Node owning the provider-side descriptor fd (closed if it is no
        file of the instance: ENOTDIR, or ENOENT for a directory); `table`
        as for node_for_host_fd."""
        s = os.fstat(fd)
        node = self.node_for_host_fd(fd, s, table=table)
        if node is None:
            os.close(fd)
            raise OSError(errno.ENOTDIR if not st.S_ISDIR(s.st_mode) else errno.ENOENT,
                          "not a file of this instance")
        return node

    def node_or_anon(self, fd: int, table: MountTable | None = None) -> Node:
        """A Node owning fd: its file in the instance, else the anonymous
        mount's (a magic link to a pipe or socket opens the object itself)."""
        s = os.fstat(fd)
        node = self.node_for_host_fd(fd, s, table=table)
        return node if node is not None else Node(self.anon_mount, fd, s)

    def mount_id_of_host_fd(self, fd: int, table: MountTable | None = None) -> int:
        """The mount id fdinfo's mnt_id shows for a host descriptor."""
        node = self.node_for_host_fd(fd, os.fstat(fd), table=table)
        return node.mount.id if node is not None else self.anon_mount.id

    # -- instance path <-> Node ------------------------------------------------------

    def resolve(self, path: bytes, caller: Caller, follow: bool = True) -> Node:
        """The file at the absolute instance path `path`, walked from the
        instance's root as `caller` (the provider's own lookups: a command's
        working directory, the default mounts' directories); the caller
        owns the Node."""
        root = self.mounts.root_mount.root()
        try:
            return Walker(self.mounts, root, caller).resolve(root, path, follow)
        finally:
            root.release()

    def vpath_of(self, node: Node) -> str:
        """The path of a Node inside the instance, as getcwd(2) gives it:
        its mount's path and its path below the mount's root (d_path)."""
        rel = node.fs.path_in_mount(node)
        base = node.mount.path
        if not rel or rel == "/":
            return base or "/"
        return base.rstrip("/") + "/" + rel.lstrip("/")

    # -- host paths -> instance paths (/proc/<pid>/maps, fd links) -------------------

    def host_roots(self, table: MountTable | None = None) -> list[tuple[str, Mount]]:
        """The host directory at the root of each host-backed mount of
        `table` (None: the first namespace), deepest first; only those the
        host can name by path (a private tmpfs has none)."""
        roots = []
        for m in list((table or self.mounts).mounts):
            node = m.root_node
            if node is None or node.fd is None or m.fs.host_root is None:
                continue
            try:
                path = os.readlink(f"/proc/self/fd/{node.fd}")
                a, b = os.stat(path), os.fstat(node.fd)
            except OSError:
                continue
            if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
                roots.append((path, m))
        roots.sort(key=lambda rm: len(rm[0]), reverse=True)
        return roots

    def detached_mounts(self, roots: list[tuple[str, Mount]] | None = None,
                        table: MountTable | None = None) -> dict[int, Mount]:
        """Host-backed mounts on a file system of their own that the host names
        by no path (private tmpfs): device number -> mount."""
        named = {id(m) for _, m in (self.host_roots(table) if roots is None else roots)}
        out = {}
        for m in list((table or self.mounts).mounts):
            node = m.root_node
            if node is None or node.fd is None or id(m) in named or m.fs.host_root is None:
                continue
            try:
                out[os.fstat(node.fd).st_dev] = m
            except OSError:
                continue
        return out

    @staticmethod
    def host_to_vpath(roots: list[tuple[str, Mount]], host: str) -> str | None:
        """A host path as the instance names it, through the mount whose host
        directory holds it (roots: host_roots()); None if no mount shows it."""
        for root, m in roots:
            if host == root or host.startswith(root.rstrip("/") + "/"):
                rel = host[len(root):].lstrip("/")
                base = m.path.rstrip("/")
                return (base + "/" + rel) if rel else (m.path or "/")
        return None


def _moved(node: Node, clones: dict[int, Mount]) -> Node:
    """A copy of `node` on the clone of its mount (itself where its mount
    was not cloned: lazily unmounted)."""
    clone = clones.get(id(node.mount))
    return rebased(node, clone) if clone is not None else node.dup()
