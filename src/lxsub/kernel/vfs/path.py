"""Path walk inside the instance: symlinks, `..` and mounts never leave its root.

Each step opens the next component relative to the previous one's
provider-side descriptor (O_PATH|O_NOFOLLOW), so what a program does to the
tree meanwhile can only change which file inside the instance is found.
Symlinks are read and walked by us, absolute ones from the caller's root;
`..` at the caller's root stays there, and at a mount's root it climbs to
the directory the mount covers.
"""

from __future__ import annotations

import errno
import os
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lxsub.abi.fcntl import RESOLVE_BENEATH, RESOLVE_NO_SYMLINKS
from lxsub.abi.limits import MAXSYMLINKS, NAME_MAX, PATH_MAX
from lxsub.kernel.vfs import perm
from lxsub.kernel.vfs.node import Node
from lxsub.platform import libc

if TYPE_CHECKING:
    from lxsub.kernel.creds import Creds
    from lxsub.kernel.vfs.caller import Caller
    from lxsub.kernel.vfs.mount import MountTable


def _err(code: int) -> OSError:
    import os
    return OSError(code, os.strerror(code))


@dataclass
class Walker:
    """Resolves paths for one caller: the mount table, the root the walk
    may not climb above, and who walks (its credentials are checked, and
    pseudo file systems answer for it)."""
    mounts: "MountTable"
    root: Node
    caller: "Caller"

    @property
    def creds(self) -> "Creds":
        return self.caller.creds

    def resolve(self, start: Node, path: bytes, follow: bool = True) -> Node:
        """The file `path` names; the caller owns the returned Node."""
        if not path:
            raise _err(errno.ENOENT)
        if len(path) >= PATH_MAX:
            raise _err(errno.ENAMETOOLONG)
        # "dir/", "dir/." and "dir/..": the last name must be a directory, and
        # a symlink there is followed whatever the caller asked.
        must_dir = path.endswith(b"/") or path.rsplit(b"/", 1)[-1] in (b".", b"..")
        node = self._fast_walk(path, follow or must_dir) if path[:1] == b"/" else None
        if node is None:
            node = self._walk(start, path, follow or must_dir)
        if must_dir and not node.is_dir():
            node.release()
            raise _err(errno.ENOTDIR)
        return node

    def resolve_parent(self, start: Node, path: bytes) -> tuple[Node, bytes]:
        """The directory that holds (or would hold) `path`'s last component."""
        if not path:
            raise _err(errno.ENOENT)
        if len(path) >= PATH_MAX:
            raise _err(errno.ENAMETOOLONG)
        stripped = path.rstrip(b"/")
        if not stripped:                     # "/" itself
            return self.root.dup(), b"."
        head, _, name = stripped.rpartition(b"/")
        if len(name) > NAME_MAX:
            raise _err(errno.ENAMETOOLONG)
        if head == b"" and stripped.startswith(b"/"):
            parent = self.root.dup()
        elif not head:
            parent = start.dup()
        else:
            parent = self._walk(start, head, True)
        if not parent.is_dir():
            parent.release()
            raise _err(errno.ENOTDIR)
        return parent, name

    # -- the walk -----------------------------------------------------------

    def _fast_walk(self, path: bytes, follow: bool) -> Node | None:
        """One openat2 for an absolute path when nothing in it needs us: no
        symlink (the kernel refuses them here), no `..`, no mount on the
        way (then the path as written is the path walked), no permission
        checks to make. None means: take the component-by-component walk."""
        mounts = self.mounts
        root = mounts.root_mount
        if (b"/.." in path or perm.needs_checks(self.caller.creds)
                or self.root.key != root.root_key()):
            return None
        plain = path
        if b"//" in path or b"/./" in path or path.endswith((b"/.", b"/")):
            plain = b"/" + b"/".join(c for c in path.split(b"/") if c and c != b".")
        if mounts.may_cross_mount(plain):
            return None
        flags = os.O_PATH | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
        try:
            fd = libc.openat2(root.root_node.fd, path.lstrip(b"/") or b".", flags, 0,
                              RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG):
                raise
            return None          # ELOOP: a symlink on the way; EXDEV, EAGAIN...
        return Node(root, fd, os.fstat(fd))

    def _walk(self, start: Node, path: bytes, follow_last: bool) -> Node:
        cur = self.root.dup() if path.startswith(b"/") else start.dup()
        todo = deque(c for c in path.split(b"/") if c and c != b".")
        links = 0
        try:
            while todo:
                name = todo.popleft()
                if name == b"..":
                    cur = self._up(cur)
                    continue
                if len(name) > NAME_MAX:
                    raise _err(errno.ENAMETOOLONG)
                self._check_search(cur)
                nxt = self._down(cur, name)
                if nxt.is_symlink() and (todo or follow_last):
                    magic = nxt.fs.follow_magic(nxt, self.caller)
                    if magic is not None:          # /proc/<pid>/fd/N and friends
                        nxt.release()
                        nxt = magic
                        if todo and not nxt.is_dir():
                            nxt.release()
                            raise _err(errno.ENOTDIR)
                        cur.release()
                        cur = nxt
                        continue
                    links += 1
                    if links > MAXSYMLINKS:
                        nxt.release()
                        raise _err(errno.ELOOP)
                    target = nxt.fs.readlink(nxt, self.caller)
                    nxt.release()
                    if not target:
                        raise _err(errno.ENOENT)
                    todo.extendleft(reversed([c for c in target.split(b"/") if c and c != b"."]))
                    if target.startswith(b"/"):
                        cur.release()
                        cur = self.root.dup()
                    continue
                if todo and not nxt.is_dir():
                    nxt.release()
                    raise _err(errno.ENOTDIR)
                cur.release()
                cur = nxt
            return cur
        except BaseException:
            cur.release()
            raise

    def _check_search(self, d: Node) -> None:
        if not d.is_dir():
            raise _err(errno.ENOTDIR)
        door = d.fs.door
        if door is not None:          # DrvFs: only for the users holding its door
            door.check(self.caller.creds)
        if perm.needs_checks(self.caller.creds):
            a = d.fs.getattr(d, self.caller)
            perm.check(self.caller.creds, a.mode, a.uid, a.gid, perm.MAY_EXEC)

    def _down(self, cur: Node, name: bytes) -> Node:
        nxt = cur.fs.lookup(cur, name, self.caller)
        # A mount on the directory, or a stack of them: go to the top one's root.
        while True:
            m = self.mounts.mounted_on(nxt)
            if m is None:
                return nxt
            nxt.release()
            nxt = m.root()

    def _up(self, cur: Node) -> Node:
        while True:
            if cur.key == self.root.key:
                return cur                     # `..` of the caller's root is itself
            m = cur.mount
            if m.parent is None and cur.key == m.root_key():
                return cur                     # nor can a chroot'ed caller whose cwd
                                               # lies outside its root climb past "/"
            if m.parent is not None and cur.key == m.root_key():
                assert m.mountpoint is not None
                cur.release()
                cur = m.mountpoint.dup()       # climb out of the mount, then `..`
                continue
            up = cur.fs.parent_of(cur, self.caller)
            cur.release()
            return up
