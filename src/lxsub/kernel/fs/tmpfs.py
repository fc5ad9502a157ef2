"""TmpFs: in-memory file systems (/dev/shm, /run, /tmp on request, `mount -t tmpfs`).

Each TmpFs is a real host tmpfs of its own, made for the instance: a short
helper process forked by the provider enters a new user and mount namespace
(an unprivileged user may mount tmpfs there), creates a *detached* tmpfs
mount with the asked `size=` and `nr_inodes=` (fsopen/fsconfig/fsmount:
no mount point, nothing in any directory tree), hands its root directory
back over a socket and exits. From then on the provider walks it like any
host tree, and programs use its files natively:

- size limits are the host kernel's own: a `write` past the limit is short
  or ENOSPC, `fallocate` is ENOSPC, a page fault on a shared mapping past it
  is SIGBUS; `ftruncate` grows a file sparsely without error, as Linux's
  tmpfs does. No accounting in the provider, nothing to race.
- `mmap(MAP_SHARED)` of its files is shared between processes (POSIX shared
  memory, multiprocessing).
- nothing touches a disk; no host path names it, so no host program finds
  it by walking directories; and it is freed by the host kernel when the
  last descriptor on it closes: when the instance ends (the provider and
  its processes exit) or when it is unmounted and no file of it is open.

The Linux view (owner, group, mode bits, device numbers; all file types)
lives in the provider's memory, by inode number, since the file system
lives no longer than the provider. Host files keep the owner's rw bits so
the provider can always open them (as on VolFs).

Fallback: if the host refuses user namespaces, a TmpFs is a directory
under the instance's scratch directory in the host's /dev/shm (memory, and
removed when the instance ends), and its `size=` is *not* enforced (the
limit is the host /dev/shm's); the provider logs that once.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import stat as st
import tempfile
from typing import TYPE_CHECKING

from lxsub.abi.magic import TMPFS_MAGIC
from lxsub.abi.sched import CLONE_NEWNS, CLONE_NEWUSER
from lxsub.abi.sysno import NUMBERS, SYS_FSCONFIG, SYS_FSMOUNT, SYS_FSOPEN
from lxsub.kernel.fs.hostfs import fd_path
from lxsub.kernel.fs.linuxmeta import HostFile, LinuxMeta, MemoryStore
from lxsub.kernel.fs.lxattr import LxMeta
from lxsub.kernel.fs.metatree import MetaTree
from lxsub.kernel.vfs.filesystem import CLAIM_OWN
from lxsub.kernel.vfs.node import Node
from lxsub.platform import features

if TYPE_CHECKING:
    from lxsub.kernel.instance import Instance


_FSOPEN_CLOEXEC = 1
_FSCONFIG_SET_STRING = 1
_FSCONFIG_CMD_CREATE = 6
_FSMOUNT_CLOEXEC = 1

# Options passed to the host's tmpfs; the rest are the Linux view's.
_HOST_OPTIONS = ("size", "nr_inodes", "nr_blocks", "huge")
_VIEW_OPTIONS = ("mode", "uid", "gid")
_IGNORED = {"rw", "nosuid", "nodev", "noexec", "relatime", "noatime", "strictatime",
            "nodiratime", "defaults", "inode64", "inode32", "lazytime", "sync", "async",
            "suid", "dev", "exec", "atime", "diratime", "silent"}


def parse_options(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """`size=10m,mode=1777,uid=0` -> (host options, view options); EINVAL
    for an option tmpfs does not have."""
    host: dict[str, str] = {}
    view: dict[str, str] = {}
    for item in (p.strip() for p in text.split(",")):
        if not item or item in _IGNORED:
            continue
        key, eq, value = item.partition("=")
        if key in _HOST_OPTIONS and eq:
            host[key] = value
        elif key in _VIEW_OPTIONS and eq:
            try:
                int(value, 8 if key == "mode" else 10)
            except ValueError:
                raise OSError(errno.EINVAL, f"tmpfs: bad value for {key}") from None
            view[key] = value
        else:
            raise OSError(errno.EINVAL, f"tmpfs: unknown option {item}")
    return host, view


# -- the host tmpfs ------------------------------------------------------------

def _sys(libc, nr: int, *args) -> int:
    r = libc.syscall(ctypes.c_long(nr), *args)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


def _child_make_tmpfs(sock: socket.socket, options: dict[str, str]) -> None:
    """In the forked helper: never returns."""
    code = 1
    try:
        from lxsub.platform.unixns import unshare_as_self
        unshare_as_self(CLONE_NEWUSER | CLONE_NEWNS)
        libc = ctypes.CDLL(None, use_errno=True)
        opts = dict(options)
        opts["mode"] = "700"     # the host directory: the Linux mode is kept by the provider
        root = _new_tmpfs(libc, opts) if features.has("fsopen") else _mounted_tmpfs(libc, opts)
        socket.send_fds(sock, [b"ok"], [root])
        code = 0
    except OSError as e:
        try:
            sock.send(b"err %d" % (e.errno or errno.EINVAL))
        except OSError:
            pass
    except BaseException:
        pass
    finally:
        os._exit(code)


def _mounted_tmpfs(libc, opts: dict[str, str]) -> int:
    """Before fsopen (Linux 5.2): mount(2) on a directory of the helper's
    own mount namespace; the open root keeps the mount when that namespace
    goes with the helper."""
    target = next((d for d in (b"/tmp", b"/mnt", b"/var/tmp") if os.path.isdir(d)), b"/tmp")
    data = ",".join(f"{k}={v}" for k, v in opts.items()).encode()
    _sys(libc, NUMBERS["mount"], ctypes.c_char_p(b"tmpfs"), ctypes.c_char_p(target),
         ctypes.c_char_p(b"tmpfs"), ctypes.c_ulong(0), ctypes.c_char_p(data))
    return os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _new_tmpfs(libc, opts: dict[str, str]) -> int:
    """A detached tmpfs (fsopen, fsconfig, fsmount): its root directory."""
    fs = _sys(libc, SYS_FSOPEN, ctypes.c_char_p(b"tmpfs"), ctypes.c_long(_FSOPEN_CLOEXEC))
    for key, value in opts.items():
        _sys(libc, SYS_FSCONFIG, ctypes.c_long(fs), ctypes.c_long(_FSCONFIG_SET_STRING),
             ctypes.c_char_p(key.encode()), ctypes.c_char_p(value.encode()), ctypes.c_long(0))
    _sys(libc, SYS_FSCONFIG, ctypes.c_long(fs), ctypes.c_long(_FSCONFIG_CMD_CREATE),
         ctypes.c_void_p(0), ctypes.c_void_p(0), ctypes.c_long(0))
    mnt = _sys(libc, SYS_FSMOUNT, ctypes.c_long(fs), ctypes.c_long(_FSMOUNT_CLOEXEC),
               ctypes.c_long(0))
    return os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=mnt)


def host_tmpfs(options: dict[str, str]) -> int:
    """A directory descriptor on the root of a new detached host tmpfs."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        pid = os.fork()
        if pid == 0:
            parent.close()
            _child_make_tmpfs(child, options)
        child.close()
        try:
            msg, fds, _, _ = socket.recv_fds(parent, 64, 1)
        finally:
            os.waitpid(pid, 0)
    finally:
        parent.close()
        if child.fileno() >= 0:
            child.close()
    from lxsub.platform.unixns import helper_reply
    return helper_reply(msg, fds, 1, OSError(errno.ENOSYS, "tmpfs helper failed"))[0]


# -- the file system -------------------------------------------------------------

class TmpFs(MetaTree):
    fstype = "tmpfs"
    magic = TMPFS_MAGIC
    host_claim = CLAIM_OWN

    @property
    def mount_options(self) -> str:
        return self.options

    def __init__(self, inst: "Instance", options: str = "") -> None:
        host_opts, view = parse_options(options)
        self.inst = inst
        self.enforced = True
        try:
            dirfd = host_tmpfs(host_opts)
        except OSError as e:
            if e.errno == errno.EINVAL:
                raise                       # a bad size= and the like
            inst.log.once("tmpfs-fallback",
                          f"tmpfs: no private host tmpfs ({e.strerror}); using the host's "
                          "/dev/shm without size limits")
            self.enforced = False
            path = tempfile.mkdtemp(prefix="tmpfs-", dir=inst.scratch_dir())
            dirfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.root_fd = dirfd
        self.host_root = os.readlink(fd_path(dirfd))
        s = os.fstat(dirfd)
        self.dev = s.st_dev
        # All types, by inode; removals report every inode's end (MetaTree).
        self.linux = LinuxMeta(MemoryStore())
        mode = int(view.get("mode", "1777"), 8) & 0o7777
        self.linux.store.save(HostFile.of_fd(dirfd, s),
                              LxMeta(st.S_IFDIR | mode, int(view.get("uid", 0)),
                                     int(view.get("gid", 0))))
        self.options = _render_options(dirfd, host_opts, view)

    def unmounted(self) -> None:
        if self.root_fd is not None:
            os.close(self.root_fd)
            self.root_fd = None

    # -- which host descriptors are ours -------------------------------------

    def owns(self, s: os.stat_result, host: str) -> bool:
        if self.enforced:
            return s.st_dev == self.dev
        return host == self.host_root or host.startswith(self.host_root + "/")

    def node_from_host(self, mount, fd: int, host: str, s: os.stat_result) -> Node | None:
        return Node(mount, fd, s) if self.owns(s, host) else None


    def statfs(self, node: Node):
        return os.statvfs(fd_path(node.fd))


def _render_options(dirfd: int, host: dict[str, str], view: dict[str, str]) -> str:
    """As Linux shows them in /proc/mounts: the size in kilobytes."""
    parts = ["rw"]
    v = os.statvfs(fd_path(dirfd))
    parts.append(f"size={v.f_blocks * v.f_frsize // 1024}k")
    if "nr_inodes" in host:
        parts.append(f"nr_inodes={v.f_files}")
    mode = int(view.get("mode", "1777"), 8) & 0o7777
    if mode != 0o1777:
        parts.append(f"mode={mode:o}")
    for key in ("uid", "gid"):
        if key in view and int(view[key]) != 0:
            parts.append(f"{key}={int(view[key])}")
    return ",".join(parts)


def mount_tmpfs(inst: "Instance", path: str, options: str = "", source: str = "tmpfs",
                fs: TmpFs | None = None):
    """Mount a new TmpFs at an existing directory `path` of the instance."""
    from lxsub.kernel.fs.mounts import resolve_dir
    at = resolve_dir(inst, path)
    if at is None:
        return None
    try:
        if fs is None:
            from lxsub.kernel.fs import registry
            fs = registry.make(inst, "tmpfs", source, options)
        return inst.vfs.mounts.mount(fs, at, path, source, fs.mount_options)
    finally:
        at.release()


# Like a Linux system's: /dev/shm the kernel's default half of memory; /run
# systemd's 20% with the /run/lock that Debian expects (/var/lock links to it).
DEFAULT_TMPFS = (
    ("/dev/shm", "size=50%,mode=1777", ()),
    ("/run", "size=20%,mode=755", (("lock", 0o1777),)),
)
TMP_OPTIONS = "size=50%,mode=1777"


def mount_default_tmpfs(inst: "Instance", tmp: bool = False) -> None:
    """/dev/shm and /run; /tmp too when asked (the lead wires that to lx.conf)."""
    from lxsub.kernel.creds import Creds
    from lxsub.kernel.vfs.caller import Caller
    todo = list(DEFAULT_TMPFS)
    if tmp:
        todo.append(("/tmp", TMP_OPTIONS, ()))
    for path, options, subdirs in todo:
        m = mount_tmpfs(inst, path, options)
        if m is None:
            continue
        root = m.root()
        try:
            for name, mode in subdirs:
                m.fs.mkdir(root, name.encode(), mode, Creds())
                own = Caller(Creds())            # the provider's own work
                sub = m.fs.lookup(root, name.encode(), own)
                try:
                    m.fs.chmod(sub, mode, own)      # mkdir had no umask, but be exact
                finally:
                    sub.release()
        finally:
            root.release()
