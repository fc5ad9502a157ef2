"""Pseudo file systems (ProcFs, DevFs, SysFs): trees computed on demand.

A pseudo file is handed to a program as a host object it can use natively:
a regular file opens as a memfd holding the contents at open time, a
directory as a freshly made scratch directory with the same entry names (so
getdents64 runs on the host), a device as the host device it stands for.
"""

from __future__ import annotations

import collections
import errno
import os
import shutil
import stat as st
import tempfile
import time
from typing import TYPE_CHECKING, Any, Callable, Protocol

from lxsub.abi.fcntl import O_PATH
from lxsub.abi.statfs import (ST_MANDLOCK, ST_NOATIME, ST_NODEV, ST_NODIRATIME, ST_NOEXEC, ST_NOSUID, ST_RDONLY,
                               ST_RELATIME, ST_SYNCHRONOUS, ST_VALID)
from lxsub.kernel.fs import devices
from lxsub.kernel.vfs.filesystem import CLAIM_OWN, FileSystem
from lxsub.kernel.vfs.mount import anon_dev
from lxsub.kernel.vfs.node import Node
from lxsub.kernel.vfs.stat import LinuxStat

if TYPE_CHECKING:
    from lxsub.kernel.call import Call
    from lxsub.kernel.task import Task
    from lxsub.kernel.vfs.caller import Caller

_MAX_SCRATCH_DIRS = 256
_MAX_MEMFDS = 4096



# File systems with writes to pseudo files not yet applied (a program's
# write(2) to /proc/sys/... is in a pipe the loop drains when it gets to it).
WRITES_PENDING: set = set()


def apply_pending_writes() -> None:
    """Apply what programs have written to pseudo files so far: a later
    call must see a sysctl its caller (or another process) set before it,
    whatever order the loop learns of the two in."""
    for fs in list(WRITES_PENDING):
        fs.flush_writes()


class Entry:
    """A file of a pseudo file system; `path` inside the fs is its identity."""
    mode = st.S_IFREG | 0o444
    uid = gid = 0
    rdev = 0
    # Its inode number where it has one of its own (a namespace's, as nsfs
    # gives it); else one made from its path.
    ino: int = 0
    # (uid, gid) computed when asked, for files owned by someone that can
    # change (/proc/<pid>/... belongs to the process's effective ids).
    owner_of: Callable[[], tuple[int, int]] | None = None

    def __init__(self, path: str) -> None:
        self.path = path

    def owner(self) -> tuple[int, int]:
        return self.owner_of() if self.owner_of is not None else (self.uid, self.gid)

    @property
    def key(self) -> str:
        return self.path

    def parent_path(self) -> str:
        return os.path.dirname(self.path) if self.path != "/" else "/"

    def ioctl(self, c: "Call", cmd: int, fd: int) -> object:
        """The file's own ioctl (PseudoFs.ioctl); a driver's Device overrides it."""
        raise OSError(errno.ENOTTY, "inappropriate ioctl for device")


class File(Entry):
    def __init__(self, path: str, read: Callable[["Task"], bytes],
                 write: Callable[["Task", bytes], None] | None = None, mode: int = 0o444) -> None:
        super().__init__(path)
        self.read = read
        self.write = write
        self.mode = st.S_IFREG | (mode | (0o200 if write else 0))


class HostOpen(File):
    """A file whose opening is a host descriptor `opener(task, flags)`
    hands over (/proc/<pid>/mem: the host's, with its own semantics)."""

    def __init__(self, path: str, opener: Callable[["Task | None", int], int], mode: int = 0o600) -> None:
        super().__init__(path, lambda _t: b"", mode=mode)
        self.opener = opener


class Link(Entry):
    mode = st.S_IFLNK | 0o777

    def __init__(self, path: str, target: Callable[["Task"], str], magic: bool = False) -> None:
        super().__init__(path)
        self.target = target
        # A magic link in Linux (/proc/<pid>/exe, cwd, root: proc_pid_get_link
        # jumps to the file), read here as its path (openat2's
        # RESOLVE_NO_MAGICLINKS refuses it all the same).
        self.magic = magic


class Device(Entry):
    def __init__(self, path: str, kind: int, rdev: int, mode: int = 0o666) -> None:
        super().__init__(path)
        self.mode = kind | mode
        self.rdev = rdev


class Dir(Entry):
    mode = st.S_IFDIR | 0o555

    def __init__(self, path: str, children: Callable[["Task"], dict[str, Entry]] | None = None,
                 mode: int = 0o555) -> None:
        super().__init__(path)
        self._children = children
        self.mode = st.S_IFDIR | mode

    def children(self, task: "Task") -> dict[str, Entry]:
        return self._children(task) if self._children else {}

    def lookup(self, task: "Task", name: str) -> Entry:
        entry = self.children(task).get(name)
        if entry is None:
            raise OSError(errno.ENOENT, "no such file or directory")
        return entry

    def child_path(self, name: str) -> str:
        return (self.path.rstrip("/") + "/" + name) if self.path != "/" else "/" + name


class StaticDir(Dir):
    """A directory whose entries are fixed when the tree is built."""

    def __init__(self, path: str, mode: int = 0o555) -> None:
        super().__init__(path, None, mode)
        self.entries: dict[str, Entry] = {}

    def add(self, entry: Entry) -> Entry:
        self.entries[os.path.basename(entry.path)] = entry
        return entry

    def children(self, task: "Task") -> dict[str, Entry]:
        return self.entries


def read_host(path: str) -> bytes:
    """A host file's contents; a file that went away reads as ENOENT."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise OSError(e.errno or errno.ENOENT, os.strerror(e.errno or errno.ENOENT)) from None


class HostFile(File):
    """A read-only file with a host file's contents, read when it is opened."""

    def __init__(self, path: str, host: str, mode: int = 0o444) -> None:
        super().__init__(path, lambda _t: read_host(host), mode=mode)
        self.host = host


class HostDir(Dir):
    """A read-only view of a host directory (sysfs, /proc/sys): its
    subdirectories and the regular files any host user may read. Host
    symlinks are left out: they lead out of what is shown (sysfs links
    point all over /sys). `keep` filters the names of this directory;
    `views` maps host file paths below it to what the instance reads
    instead (a function of the host file's contents); `own` maps paths
    below this directory ("nr_open", "inotify/max_user_instances") to the
    instance's own files that stand in for the host's (/proc/sys tunables
    the instance sets for itself)."""

    def __init__(self, path: str, host: str, keep: Callable[[str], bool] | None = None,
                 mode: int = 0o555, views: dict[str, Callable[[bytes], bytes]] | None = None,
                 own: dict[str, Entry] | None = None) -> None:
        super().__init__(path, None, mode)
        self.host = host
        self.keep = keep
        self.views = views or {}
        self.own = own or {}

    def _file(self, path: str, host: str, mode: int) -> "File":
        view = self.views.get(host)
        if view is None:
            return HostFile(path, host, mode)
        return File(path, lambda _t: view(read_host(host)), mode=mode)

    def children(self, task: "Task") -> dict[str, Entry]:
        out: dict[str, Entry] = {}
        try:
            it = os.scandir(self.host)
        except OSError:
            return out
        with it:
            for de in sorted(it, key=lambda d: d.name):
                if self.keep is not None and not self.keep(de.name):
                    continue
                try:
                    s = de.stat(follow_symlinks=False)
                except OSError:
                    continue
                child = self.child_path(de.name)
                if de.name in self.own:
                    out[de.name] = self.own[de.name]
                elif st.S_ISDIR(s.st_mode):
                    out[de.name] = self._subdir(de.name, de.path)
                elif st.S_ISREG(s.st_mode) and s.st_mode & 0o004:
                    out[de.name] = self._file(child, de.path, st.S_IMODE(s.st_mode) & 0o444)
        return out

    def lookup(self, task: "Task", name: str) -> Entry:
        if "/" in name or name in (".", "..") or (self.keep is not None and not self.keep(name)):
            raise OSError(errno.ENOENT, "no such file or directory")
        if name in self.own:
            return self.own[name]
        host = os.path.join(self.host, name)
        try:
            s = os.lstat(host)
        except OSError:
            raise OSError(errno.ENOENT, "no such file or directory") from None
        if st.S_ISDIR(s.st_mode):
            return self._subdir(name, host)
        if st.S_ISREG(s.st_mode) and s.st_mode & 0o004:
            return self._file(self.child_path(name), host, st.S_IMODE(s.st_mode) & 0o444)
        raise OSError(errno.ENOENT, "no such file or directory")

    def _subdir(self, name: str, host: str) -> "HostDir":
        """The view of the host subdirectory `name`, with the own files below it."""
        prefix = name + "/"
        own = {path[len(prefix):]: e for path, e in self.own.items() if path.startswith(prefix)}
        return HostDir(self.child_path(name), host, views=self.views, own=own)


class PseudoHost(Protocol):
    """What a pseudo file system needs of the instance it serves: its event
    loop (to hear writes to pseudo files), its log, a scratch directory."""
    engine: Any
    log: Any

    def scratch_dir(self) -> str: ...


class PseudoFs(FileSystem):
    read_only = True
    host_claim = CLAIM_OWN       # its memfds and scratch directories (node_from_host)

    def __init__(self, inst: PseudoHost) -> None:
        self.inst = inst
        self.dev = anon_dev()          # one device per pseudo file system
        self.born = time.time_ns()
        self._scratch: collections.OrderedDict[str, Entry] = collections.OrderedDict()
        self._memfds: collections.OrderedDict[tuple[int, int], Entry] = collections.OrderedDict()
        self._writers: dict[int, tuple[File, "Task | None"]] = {}   # pipe -> file written

    # -- the tree ---------------------------------------------------------------

    def root_entry(self) -> Dir:
        raise NotImplementedError

    def entry_at(self, path: str, task: "Task") -> Entry:
        entry: Entry = self.root_entry()
        for name in [p for p in path.split("/") if p]:
            if not isinstance(entry, Dir):
                raise OSError(errno.ENOTDIR, "not a directory")
            entry = entry.lookup(task, name)
        return entry

    # -- FileSystem ---------------------------------------------------------------

    def root(self, mount) -> Node:
        return Node(mount, obj=self.root_entry())

    # Entries compute their contents for the caller's task (None: the
    # provider's own work), as Linux's proc files look at `current`.
    def lookup(self, parent: Node, name: bytes, caller: "Caller") -> Node:
        d = parent.obj
        if not isinstance(d, Dir):
            raise OSError(errno.ENOTDIR, "not a directory")
        return Node(parent.mount, obj=d.lookup(caller.task, name.decode("utf-8", "surrogateescape")))

    def parent_of(self, node: Node, caller: "Caller") -> Node:
        return Node(node.mount, obj=self.entry_at(node.obj.parent_path(), caller.task))

    def is_magic_link(self, node: Node) -> bool:
        return getattr(node.obj, "magic", False)

    def readlink(self, node: Node, caller: "Caller") -> bytes:
        if not isinstance(node.obj, Link):
            raise OSError(errno.EINVAL, "not a symlink")
        return node.obj.target(caller.task).encode("utf-8", "surrogateescape")

    def getattr(self, node: Node, caller: "Caller") -> LinuxStat:
        e = node.obj
        nlink = 2 if isinstance(e, Dir) else 1
        try:
            uid, gid = e.owner()
        except OSError:          # the process it belongs to is gone
            uid, gid = e.uid, e.gid
        return LinuxStat(self.dev, e.ino or _ino(e.key), nlink, e.mode, uid, gid, e.rdev, 0, 1024, 0,
                         self.born, self.born, self.born)

    def statfs(self, node: Node) -> tuple:
        import struct
        return struct.pack("<qqQQQQQiiqqq4q", self.magic, 4096, 0, 0, 0, 0, 0, 0, 0, 255,
                           4096, mount_flags(node.mount.options), 0, 0, 0, 0)

    def path_in_mount(self, node: Node) -> str:
        return node.obj.path

    def open(self, node: Node, flags: int, caller: "Caller") -> int:
        e = node.obj
        task = caller.task
        if flags & O_PATH:   # any host object of the right kind will do
            return self._open_dir(e, task) if isinstance(e, Dir) else self._open_file(e, os.O_RDONLY, task)
        if isinstance(e, Dir):
            return self._open_dir(e, task)
        if isinstance(e, Device):
            return devices.open_device(st.S_IFMT(e.mode), e.rdev, flags)
        if isinstance(e, HostOpen):
            return e.opener(task, flags)
        if isinstance(e, File):
            return self._open_file(e, flags, task)
        raise OSError(errno.ENXIO, "no such device or address")

    def _open_file(self, e: File, flags: int, task: "Task | None") -> int:
        acc = flags & os.O_ACCMODE
        if acc != os.O_RDONLY and e.write is None:
            if self.mount_options.startswith("ro"):
                raise OSError(errno.EROFS, "read-only file system")
            raise OSError(errno.EACCES, "read-only pseudo file")
        if acc != os.O_RDONLY and e.write is not None:
            return self._open_writable(e, task)
        self.flush_writes()
        data = e.read(task) if isinstance(e, File) else b""
        fd = os.memfd_create("lxsub:" + os.path.basename(e.path), os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
        self._remember_memfd(fd, e)
        # Read-only for the program: reopen through /proc as O_RDONLY.
        ro = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        os.close(fd)
        return ro

    def open_pseudo(self, e: File) -> int:
        """A read-only descriptor of a file that is in no directory (an
        open namespace), known again by node_from_host."""
        return self._open_file(e, os.O_RDONLY, None)

    def _open_writable(self, e: File, task: "Task | None") -> int:
        """Writes to a pseudo file take effect when the provider next reads
        the memfd: when the program closes it we are not told, so the write
        handler runs right away on a pipe instead (and before any later
        open of a file of this file system, so that a program reading back
        what it wrote finds it)."""
        r, w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(r, False)
        self._writers[r] = (e, task)
        WRITES_PENDING.add(self)
        self.inst.engine.watch_fd(r, lambda: self._drain_write(r))
        return w

    def _drain_write(self, r: int) -> None:
        e, task = self._writers.get(r, (None, None))
        if e is None:
            return
        while True:
            try:
                data = os.read(r, 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.inst.engine.unwatch_fd(r)
                self._writers.pop(r, None)
                os.close(r)
                return
            if e.write is not None:
                try:
                    e.write(task, data)
                except OSError:
                    pass
                except Exception as exc:     # never let a pseudo file end the provider
                    self.inst.log.warn(f"write to {e.path}: {exc!r}")

    def flush_writes(self) -> None:
        """Take in the writes to this file system's files still in flight."""
        for r in list(self._writers):
            self._drain_write(r)
        if not self._writers:
            WRITES_PENDING.discard(self)

    def _remember_memfd(self, fd: int, e: Entry) -> None:
        s = os.fstat(fd)
        self._memfds[(s.st_dev, s.st_ino)] = e
        while len(self._memfds) > _MAX_MEMFDS:
            self._memfds.popitem(last=False)

    def _open_dir(self, d: Dir, task: "Task | None") -> int:
        base = self.inst.scratch_dir()
        path = tempfile.mkdtemp(dir=base)
        children = list(d.children(task).items())
        if _listing_reversed(base):
            children.reverse()
        for name, child in children:
            _materialize(path, name, child)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._scratch[path] = d
        while len(self._scratch) > _MAX_SCRATCH_DIRS:
            old, _ = self._scratch.popitem(last=False)
            shutil.rmtree(old, ignore_errors=True)
        return fd

    def ioctl(self, node: Node, c: "Call", cmd: int) -> object:
        return node.obj.ioctl(c, cmd, node.fd)

    # -- descriptors back to entries ----------------------------------------------

    def node_from_host(self, mount, fd: int, host: str, s: os.stat_result) -> Node | None:
        e = self._scratch.get(host) or self._memfds.get((s.st_dev, s.st_ino))
        if e is None:
            return None
        return Node(mount, fd, None, e)


_ST_FLAGS = {"ro": ST_RDONLY, "nosuid": ST_NOSUID, "nodev": ST_NODEV, "noexec": ST_NOEXEC,
             "sync": ST_SYNCHRONOUS, "mand": ST_MANDLOCK, "noatime": ST_NOATIME,
             "nodiratime": ST_NODIRATIME, "relatime": ST_RELATIME}


def mount_flags(options: str) -> int:
    """statfs(2) f_flags for a mount's options (ST_VALID always set, as Linux does)."""
    flags = ST_VALID
    for opt in options.split(","):
        flags |= _ST_FLAGS.get(opt, 0)
    return flags


_reversed_by_dir: dict[str, bool] = {}


def _listing_reversed(base: str) -> bool:
    """Whether the host lists a fresh directory newest entry first (tmpfs
    before Linux 6.6 does): then entries are made in reverse, so that a
    program reading a pseudo directory sees them in the order Linux gives
    (/proc: its files, then the pids in ascending order)."""
    found = _reversed_by_dir.get(base)
    if found is None:
        probe = tempfile.mkdtemp(dir=base)
        try:
            for name in ("a", "b", "c"):
                os.mkdir(os.path.join(probe, name))
            with os.scandir(probe) as it:
                order = [e.name for e in it]
            found = order == ["c", "b", "a"]
        finally:
            shutil.rmtree(probe, ignore_errors=True)
        _reversed_by_dir[base] = found
    return found


def _ino(key: str) -> int:
    return (hash(key) & 0x7FFFFFFF) | 1


def _materialize(base: str, name: str, e: Entry) -> None:
    if "/" in name or name in (".", ".."):
        return
    p = os.path.join(base, name)
    if isinstance(e, Dir):
        os.mkdir(p)
    elif isinstance(e, Link):
        os.symlink("/", p)
    else:
        os.close(os.open(p, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
