"""Who a VFS or file system operation is done for, passed explicitly.

Linux reads `current` (its cred, fs_struct and files) deep inside the VFS;
the provider may serve several calls at once, so nothing in the kernel may
depend on "the call being served now". A handler passes its caller down
instead: a program's thread (kernel/task.py, Task is a Caller) or the
provider working for itself or for a user it starts a command for.

    caller.creds      the credentials checks use (fsuid, groups, capabilities)
    caller.fs         root, working directory and umask (FsContext), or None
    caller.task       the Task, or None for the provider's own work
    caller.copy_fd(n) a provider-side copy of the caller's descriptor n
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lxsub.kernel.creds import Creds
    from lxsub.kernel.vfs.mount import MountTable
    from lxsub.kernel.vfs.node import Node


@dataclass
class FsContext:
    """Root, working directory and umask (Linux's fs_struct): shared by
    CLONE_FS threads. `mounts`: the mount namespace its tasks are in (None:
    the instance's first one, Vfs.mounts); root and cwd are on its mounts.
    Linux keeps the namespace in the nsproxy, but a task may change it only
    with a fs_struct of its own (CLONE_NEWNS implies CLONE_FS, setns
    refuses a shared one), so each fs context is in one."""
    root: "Node"
    cwd: "Node"
    umask: int = 0o022
    users: int = 0             # tasks sharing it; the nodes are released with the last
    mounts: "MountTable | None" = None

    def __post_init__(self) -> None:
        if self.mounts is not None:
            self.mounts.enter()

    def copy(self) -> "FsContext":
        return FsContext(self.root.dup(), self.cwd.dup(), self.umask, mounts=self.mounts)

    def set_mounts(self, table: "MountTable | None", root: "Node", cwd: "Node") -> None:
        """Move to another mount namespace (None: the first), with root and
        cwd on its mounts (the Nodes are taken)."""
        if table is not None and table.initial:
            table = None
        if table is not None:
            table.enter()
        old, self.mounts = self.mounts, table
        self.set_root(root)
        self.set_cwd(cwd)
        if old is not None:
            old.leave()

    def attach(self) -> "FsContext":
        self.users += 1
        return self

    def detach(self) -> None:
        self.users -= 1
        if self.users <= 0:
            self.release()

    def set_cwd(self, node: "Node") -> None:
        old, self.cwd = self.cwd, node
        old.release()

    def set_root(self, node: "Node") -> None:
        old, self.root = self.root, node
        old.release()

    def release(self) -> None:
        self.root.release()
        self.cwd.release()
        if self.mounts is not None:
            self.mounts.leave()
            self.mounts = None


class Caller:
    """The provider's own work (mounting, lxpath, planning a command's
    exec before its process exists): credentials, maybe a fs context, no
    descriptors. A program's calls come from a Task, a subclass."""
    creds: "Creds"
    fs: "FsContext | None"
    task = None

    def __init__(self, creds: "Creds", fs: "FsContext | None" = None) -> None:
        self.creds = creds
        self.fs = fs

    def copy_fd(self, fd: int) -> int:
        """A provider-side duplicate of the caller's descriptor fd."""
        raise OSError(errno.EBADF, "bad file descriptor")
