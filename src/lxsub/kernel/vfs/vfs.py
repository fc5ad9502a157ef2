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

from lxsub.kernel.fs.anon import HostObjectFs
from lxsub.kernel.fs.devfs import PtyOwners
from lxsub.kernel.fs.devices import OpenedDevices
from lxsub.kernel.fs.loopdev import LoopDevices
from lxsub.kernel.vfs.images import RunningImages
from lxsub.kernel.vfs.filesystem import CLAIM_BY_ROOT, CLAIM_OWN, CLAIM_REST, FileSystem
from lxsub.kernel.vfs.mount import Mount, MountTable
from lxsub.kernel.vfs.caller import Caller
from lxsub.kernel.vfs.node import Node
from lxsub.kernel.vfs.path import Walker

class Vfs:
    def __init__(self, root_fs: FileSystem, source: str) -> None:
        self.mounts = MountTable(root_fs, source)
        # Pipes, sockets, memfds, anonymous inodes: files of no mounted file
        # system (Linux's anon_inode_mnt, pipe_mnt, sock_mnt), for stat and
        # /proc/<pid>/fd/N.
        self.anon_mount = Mount(HostObjectFs(), "anon")
        self._index: tuple[int, list, list, list] | None = None
        # The Linux owners of the ptys (devpts(5)): set by opening /dev/ptmx,
        # shown by every devpts mount.
        self.ptys = PtyOwners()
        # Devices opened through a node of their own (mknod on a host tree).
        self.opened_devices = OpenedDevices()
        # The instance's loop devices (kernel/fs/loopdev.py).
        self.loops = LoopDevices()
        self.images = RunningImages()          # program files being run (ETXTBSY)

    # -- host descriptor -> Node ---------------------------------------------------

    def _host_index(self) -> tuple[list, list, list]:
        """How a host descriptor's path finds its mount, in the order asked:
        file systems that claim their own descriptors (pseudo files, TmpFs),
        then those found by host root, longest first, then the ones that take
        what no other claims (DrvFs), longest root first."""
        gen = self.mounts.generation
        if self._index is None or self._index[0] != gen:
            own, by_root, rest = [], [], []
            for m in self.mounts.mounts:
                claim, root = m.fs.host_claim, m.fs.host_root
                if claim == CLAIM_OWN:
                    own.append(m)
                elif claim == CLAIM_BY_ROOT and root is not None:
                    by_root.append((root.rstrip("/") + "/", root, m))
                elif claim == CLAIM_REST:
                    rest.append(m)
            by_root.sort(key=lambda e: -len(e[1]))
            rest.sort(key=lambda m: -len(m.fs.host_root or ""))
            self._index = (gen, own, by_root, rest)
        return self._index[1:]

    def node_for_host_fd(self, fd: int, s: os.stat_result, host: str | None = None) -> Node | None:
        """A Node using fd (not a copy) if it is a file of a mounted file
        system. `host` is fd's host path if the caller has read it already."""
        if host is None:
            try:
                host = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                return None
        if st.S_ISCHR(s.st_mode) or st.S_ISBLK(s.st_mode):
            node = self.opened_devices.node_of(fd, s)
            if node is not None:
                return node
        own, by_root, rest = self._host_index()
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

    def node_of_host_fd(self, fd: int) -> Node:
        """A Node owning the provider-side descriptor fd (closed if it is no
        file of the instance: ENOTDIR, or ENOENT for a directory)."""
        s = os.fstat(fd)
        node = self.node_for_host_fd(fd, s)
        if node is None:
            os.close(fd)
            raise OSError(errno.ENOTDIR if not st.S_ISDIR(s.st_mode) else errno.ENOENT,
                          "not a file of this instance")
        return node

    def node_or_anon(self, fd: int) -> Node:
        """A Node owning fd: its file in the instance, else the anonymous
        mount's (a magic link to a pipe or socket opens the object itself)."""
        s = os.fstat(fd)
        node = self.node_for_host_fd(fd, s)
        return node if node is not None else Node(self.anon_mount, fd, s)

    def mount_id_of_host_fd(self, fd: int) -> int:
        """The mount id fdinfo's mnt_id shows for a host descriptor."""
        node = self.node_for_host_fd(fd, os.fstat(fd))
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

    def host_roots(self) -> list[tuple[str, Mount]]:
        """The host directory at the root of each host-backed mount, deepest
        first; only those the host can name by path (a private tmpfs has none)."""
        roots = []
        for m in list(self.mounts.mounts):
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

    def detached_mounts(self, roots: list[tuple[str, Mount]] | None = None) -> dict[int, Mount]:
        """Host-backed mounts on a file system of their own that the host names
        by no path (private tmpfs): device number -> mount."""
        named = {id(m) for _, m in (self.host_roots() if roots is None else roots)}
        out = {}
        for m in list(self.mounts.mounts):
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

