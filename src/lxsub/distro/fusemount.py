"""`lx --mount NAME DIR`: a distro's files on the host, Linux metadata intact.

WSL 1 users broke their distros by editing VolFs files with host tools (the
host knows nothing of the metadata kept in extended attributes); WSL later
added `\\\\wsl$` for this.  Here a FUSE file system shows the distro's tree
at DIR the way the instance sees it:

* owners, groups and modes (setuid, sticky...) and device numbers come from
  the VolFs attribute `user.lxsub.meta`; a file without it shows as the
  instance shows it: root's, with the host's mode;
* the host user who mounts acts as Linux root does inside (as it is: root
  inside the instance is that host user outside): every file can be read and
  written, chmod and chown change the attribute (the host mode only as far
  as VolFs needs: owner read/write always, see lxattr.host_mode_for);
* new files, directories, device nodes get the Linux owner asked for with
  `-u USER` (the distro's /etc/passwd: its uid and primary gid), by default
  root:root, as a Linux root creating them would; a setgid directory gives
  its group, as on Linux; FIFOs and symbolic links carry no attribute on
  the host and show as root's (as inside);
* rename, unlink, mkdir, rmdir, symlink, link, truncate, utimens work on the
  host tree directly; names are passed through byte for byte.

The mount is `nosuid,nodev` (a setuid-root file of the distro must not make
a host root, a device node must not open a host device) and only the
mounting host user can enter it (no `allow_other`).  Symbolic links are
shown as they are: a host program following an absolute link reaches the
*host's* path, as through any mounted disk.

The command returns once the mount is ready, like mount(8) and sshfs: a
background process serves it until `lx --umount DIR` (or `fusermount3 -u
DIR`); when that process dies, fusermount3's `auto_unmount` removes the
mount, so a dead server never leaves a stale mount behind.

Mechanics: fusepy (PyPI `fusepy`, Debian `python3-fusepy`) over libfuse2.
libfuse2 would open /dev/fuse itself and only ask the setuid `fusermount`
when mount(2) is refused, which fails where /dev/fuse is 0600 (containers).
So lx always runs `fusermount3` (Debian package fuse3) to mount, receives
the /dev/fuse descriptor over the socket in `_FUSE_COMMFD`, and gives it to
libfuse2 (`fuse_kern_chan_new` + `fuse_new` + `fuse_loop_mt`) in place of
fusepy's `fuse_main_real`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lxsub.abi.fcntl import RESOLVE_BENEATH, RESOLVE_NO_SYMLINKS
from lxsub.errors import (EXIT_CANTCREAT, EXIT_NOINPUT, EXIT_NOUSER, EXIT_OSFILE,
                          EXIT_TEMPFAIL, LxError)
from lxsub.kernel.creds import Creds
from lxsub.kernel.fs import lxattr
from lxsub.kernel.fs.linuxmeta import (HostFile, LinuxMeta, XattrStore, lost_a_name,
                                       shown_size)
from lxsub.kernel.fs.sqlitestore import SqliteStore
from lxsub.kernel.fs.lxattr import LxMeta

FS_TYPE = "fuse.lxsub"
_ENC = "latin-1"     # fusepy decodes names with this: bytes <-> str one to one
_READY = b"R"
_READY_TIMEOUT = 30.0

# -- what the host needs ------------------------------------------------------


def _unavailable(what: str, fix: str) -> LxError:
    return LxError(f"cannot mount: {what}; {fix}", EXIT_OSFILE)


def load_fusepy():
    """The fusepy module (PyPI names it `fuse`, Debian `fusepy`), or a clear error."""
    mod = None
    for name in ("fuse", "fusepy"):
        try:
            candidate = __import__(name)
        except ImportError:
            continue
        except OSError:  # fusepy found, libfuse2 not ("Unable to find libfuse")
            raise _unavailable("fusepy cannot find libfuse2 (libfuse.so.2)",
                               "install it: apt-get install libfuse2") from None
        if hasattr(candidate, "FUSE") and hasattr(candidate, "Operations"):
            mod = candidate
            break
    if mod is None:
        raise _unavailable("the Python package fusepy is not installed", _fusepy_fix())
    return mod


def _fusepy_fix() -> str:
    """A command that installs fusepy for the Python running lx: pip into
    a virtualenv; Debian's package for the system Python, whose pip refuses
    (PEP 668). lxsub itself is on no package index: 'lxsub[mount]' would fail."""
    python = sys.executable or "python3"
    if sys.prefix != sys.base_prefix:
        return f"install it: {python} -m pip install fusepy"
    return (f"install it: apt-get install python3-fusepy (Debian, Ubuntu), "
            f"or {python} -m pip install --user fusepy")


def find_fusermount() -> str:
    for name in ("fusermount3", "fusermount"):
        path = shutil.which(name) or shutil.which(name, path="/usr/bin:/bin")
        if path:
            return path
    raise _unavailable("fusermount3 is not installed", "install it: apt-get install fuse3")


def check_host() -> tuple[object, str]:
    """(fusepy module, fusermount path), or an LxError naming what is missing."""
    fusepy = load_fusepy()
    if not os.path.exists("/dev/fuse"):
        raise _unavailable("/dev/fuse does not exist (no FUSE in this kernel or container)",
                           "load it with 'modprobe fuse' or give the container /dev/fuse")
    fusermount = find_fusermount()
    if os.geteuid() != 0:
        # fusermount3 opens /dev/fuse with the user's own rights (it may be
        # kept to a group); desktops make it 0666, containers often 0600.
        if not os.access("/dev/fuse", os.R_OK | os.W_OK):
            mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
            raise _unavailable(f"/dev/fuse (mode {mode:04o}) is not readable and writable by this user",
                               "as root: chmod 0666 /dev/fuse (as udev does on desktops)")
        st = os.stat(fusermount)
        if not (st.st_mode & stat.S_ISUID and st.st_uid == 0):
            raise _unavailable(f"{fusermount} is not setuid root, so an ordinary user cannot mount",
                               f"as root: chmod u+s {fusermount} (package fuse3 installs it so)")
    return fusepy, fusermount


# -- the file system ------------------------------------------------------------


def _ops_base():
    return load_fusepy().Operations


class _Dir:
    """An O_PATH descriptor of a path's parent directory, found inside the root
    without following any symbolic link (a program inside the instance that
    swaps a directory for a link cannot send us outside)."""

    __slots__ = ("fd", "name")

    def __init__(self, root_fd: int, path: str) -> None:
        raw = path.encode(_ENC).strip(b"/")
        head, _, name = raw.rpartition(b"/")
        self.name = name or b"."
        self.fd = _open_beneath(root_fd, head, os.O_PATH | os.O_DIRECTORY) if head else os.dup(root_fd)

    def proc(self) -> bytes:
        return b"/proc/self/fd/%d/%s" % (self.fd, self.name)

    def file(self) -> HostFile:
        """The entry itself, as the metadata store sees it."""
        return HostFile.in_dir(self.fd, self.name)

    def __enter__(self) -> "_Dir":
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)


def _open_beneath(root_fd: int, rel: bytes, flags: int, mode: int = 0) -> int:
    from lxsub.platform import libc

    flags |= os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        return libc.openat2(root_fd, rel, flags, mode,
                            RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)
    except OSError as e:
        if e.errno != errno.ENOSYS:
            raise
    # Linux < 5.6: one component at a time, never following a link.
    parts = [p for p in rel.split(b"/") if p not in (b"", b".")]
    if b".." in parts:
        raise OSError(errno.EXDEV, "'..' in a mount path")
    fd = os.dup(root_fd)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return os.open(parts[-1] if parts else b".", flags, mode, dir_fd=fd)
    finally:
        os.close(fd)


def make_operations(rootfs: str | os.PathLike, owner: tuple[int, int] = (0, 0),
                    meta_db: str | None = None):
    """The fusepy Operations object serving `rootfs` (new files: owner uid,
    gid), with the distro's metadata store (`meta_db`: its SQLite database,
    else the xattrs)."""
    Operations = _ops_base()

    class VolFsOperations(Operations):
        use_ns = True

        def __init__(self) -> None:
            self.root_fd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            # New files are the -u user's; the mounting user acts as root
            # (capabilities: a setgid file in a setgid directory keeps its bit).
            uid, gid = owner
            self.creator = Creds(uid, uid, uid, uid, gid, gid, gid, gid)
            self.linux = LinuxMeta(SqliteStore(meta_db, tree=rootfs) if meta_db else XattrStore())
            self.on_ready = None

        # -- reading the Linux view

        def _attrs(self, f: HostFile) -> dict:
            s, meta = f.st, self.linux.get(f)
            device = stat.S_ISCHR(meta.mode) or stat.S_ISBLK(meta.mode)
            return {
                "st_mode": meta.mode, "st_ino": s.st_ino, "st_nlink": s.st_nlink,
                "st_uid": meta.uid, "st_gid": meta.gid, "st_rdev": meta.rdev,
                "st_size": shown_size(meta, s),
                "st_blocks": 0 if device else s.st_blocks, "st_blksize": s.st_blksize,
                "st_atime": s.st_atime_ns, "st_mtime": s.st_mtime_ns, "st_ctime": s.st_ctime_ns,
            }

        def getattr(self, path, fh=None):
            if fh is not None:
                return self._attrs(HostFile.of_fd(fh))
            with _Dir(self.root_fd, path) as d:
                return self._attrs(d.file())

        def _current(self, d: _Dir) -> tuple[os.stat_result, LxMeta]:
            f = d.file()
            return f.st, self.linux.get(f)

        def access(self, path, amode):
            # The mounting user is root inside: anything goes, but executing
            # needs an x bit somewhere, as for Linux root.
            with _Dir(self.root_fd, path) as d:
                _, meta = self._current(d)
            if amode & os.X_OK and not stat.S_ISDIR(meta.mode) and not meta.mode & 0o111:
                raise OSError(errno.EACCES, "not executable")
            return 0

        def readlink(self, path):
            with _Dir(self.root_fd, path) as d:
                return os.readlink(d.name, dir_fd=d.fd).decode(_ENC)

        def readdir(self, path, fh):
            fd = _open_beneath(self.root_fd, path.encode(_ENC).strip(b"/") or b".",
                               os.O_RDONLY | os.O_DIRECTORY)
            try:
                names = os.listdir(fd)
            finally:
                os.close(fd)
            return [".", ".."] + [n.decode(_ENC) if isinstance(n, bytes) else
                                  os.fsencode(n).decode(_ENC) for n in names]

        def statfs(self, path):
            v = os.statvfs(f"/proc/self/fd/{self.root_fd}")
            return {k: getattr(v, k) for k in (
                "f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                "f_files", "f_ffree", "f_favail", "f_namemax")}

        # -- metadata changes: the attribute, not the host owner

        def chmod(self, path, mode):
            # FIFOs, sockets: no record on the host, the host mode is all they have.
            with _Dir(self.root_fd, path) as d:
                self.linux.chmod(d.file(), mode)
            return 0

        def chown(self, path, uid, gid):
            # Nothing kept for host symlinks, FIFOs, sockets (no user xattrs).
            with _Dir(self.root_fd, path) as d:
                self.linux.chown(d.file(), uid, gid)
            return 0

        def utimens(self, path, times=None):
            with _Dir(self.root_fd, path) as d:
                os.utime(d.name, ns=times, dir_fd=d.fd, follow_symlinks=False)
            return 0

        def truncate(self, path, length, fh=None):
            if fh is not None:
                os.ftruncate(fh, length)
                return 0
            with _Dir(self.root_fd, path) as d:
                fd = os.open(d.name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d.fd)
            try:
                os.ftruncate(fd, length)
            finally:
                os.close(fd)
            return 0

        # -- new names

        def _new_meta(self, d: _Dir, mode: int, rdev: int = 0) -> LxMeta:
            """The view of a new file in d's directory (setgid directories
            give their group: linuxmeta.new_meta)."""
            return self.linux.new(HostFile.of_fd(d.fd), mode, rdev, self.creator)

        def _record(self, fd: int, meta: LxMeta) -> None:
            """A new file's host bits (past the umask) and record."""
            os.fchmod(fd, self.linux.host_mode(meta.mode))
            self.linux.store.save(HostFile.of_fd(fd), meta)

        def _record_named(self, d: _Dir, meta: LxMeta) -> None:
            """A new symlink's or FIFO's record, where the store keeps one
            (SQLite; the host allows no user.* attribute on them)."""
            if self.linux.store.keeps(meta.mode):
                self.linux.store.save(d.file(), meta)

        def create(self, path, mode, fi=None):
            with _Dir(self.root_fd, path) as d:
                meta = self._new_meta(d, stat.S_IFREG | (mode & 0o7777))
                fd = os.open(d.name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                             self.linux.host_mode(meta.mode), dir_fd=d.fd)
            try:
                self._record(fd, meta)
            except OSError:
                os.close(fd)
                raise
            return fd

        def mkdir(self, path, mode):
            with _Dir(self.root_fd, path) as d:
                meta = self._new_meta(d, stat.S_IFDIR | (mode & 0o7777))
                os.mkdir(d.name, self.linux.host_mode(meta.mode), dir_fd=d.fd)
                fd = os.open(d.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                             dir_fd=d.fd)
                try:
                    self._record(fd, meta)
                finally:
                    os.close(fd)
            return 0

        def mknod(self, path, mode, dev):
            with _Dir(self.root_fd, path) as d:
                if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISREG(mode):
                    # Device nodes are empty regular host files; the record says what they are.
                    meta = self._new_meta(d, mode, dev)
                    fd = os.open(d.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                                 os.O_CLOEXEC, 0o600, dir_fd=d.fd)
                    try:
                        self._record(fd, meta)
                    finally:
                        os.close(fd)
                elif stat.S_ISFIFO(mode):
                    meta = self._new_meta(d, mode)
                    os.mkfifo(d.name, self.linux.host_mode(mode), dir_fd=d.fd)
                    self._record_named(d, meta)
                else:
                    raise OSError(errno.EPERM, "sockets are made by bind()")
            return 0

        def symlink(self, target, source):
            # fusepy: symlink(link name, link target)
            with _Dir(self.root_fd, target) as d:
                meta = self._new_meta(d, stat.S_IFLNK | 0o777)
                os.symlink(source.encode(_ENC), d.name, dir_fd=d.fd)
                self._record_named(d, meta)
            return 0

        def link(self, target, source):
            # fusepy: link(new name, existing name); the inode keeps its attribute
            with _Dir(self.root_fd, source) as old, _Dir(self.root_fd, target) as new:
                os.link(old.name, new.name, src_dir_fd=old.fd, dst_dir_fd=new.fd,
                        follow_symlinks=False)
            return 0

        def rename(self, old, new):
            with _Dir(self.root_fd, old) as a, _Dir(self.root_fd, new) as b:
                victim, moved = self._doomed(b), self._doomed(a)
                os.rename(a.name, b.name, src_dir_fd=a.fd, dst_dir_fd=b.fd)
                if moved is None or victim is None or victim.st_ino != moved.st_ino:
                    self._gone(victim)
            return 0

        def unlink(self, path):
            with _Dir(self.root_fd, path) as d:
                s = self._doomed(d)
                os.unlink(d.name, dir_fd=d.fd)
                self._gone(s)
            return 0

        def rmdir(self, path):
            with _Dir(self.root_fd, path) as d:
                s = self._doomed(d)
                os.rmdir(d.name, dir_fd=d.fd)
                self._gone(s)
            return 0

        # A store that keys by inode number hears of every inode's end
        # (linuxmeta's contract: forget), as VolFs tells it (metatree.py).
        def _doomed(self, d: _Dir) -> os.stat_result | None:
            if not self.linux.store.tracks_inodes():
                return None
            try:
                return os.stat(d.name, dir_fd=d.fd, follow_symlinks=False)
            except OSError:
                return None

        def _gone(self, s: os.stat_result | None) -> None:
            lost_a_name(self.linux.store, s)

        # -- data: host descriptors

        def open(self, path, flags):
            with _Dir(self.root_fd, path) as d:
                s, meta = self._current(d)
                if stat.S_ISCHR(meta.mode) or stat.S_ISBLK(meta.mode):
                    raise OSError(errno.EACCES, "device nodes do not open on the host")
                keep = flags & (os.O_ACCMODE | os.O_APPEND | os.O_TRUNC | os.O_SYNC | os.O_DSYNC)
                return os.open(d.name, keep | os.O_NOFOLLOW | os.O_CLOEXEC,
                               dir_fd=d.fd)

        def read(self, path, size, offset, fh):
            return os.pread(fh, size, offset)

        def write(self, path, data, offset, fh):
            return os.pwrite(fh, data, offset)

        def flush(self, path, fh):
            return 0

        def fsync(self, path, datasync, fh):
            (os.fdatasync if datasync else os.fsync)(fh)
            return 0

        def release(self, path, fh):
            os.close(fh)
            return 0

        # -- extended attributes: the user's own, never VolFs's

        def getxattr(self, path, name, position=0):
            if name.startswith(lxattr.RESERVED_PREFIX):
                raise OSError(errno.ENODATA, "reserved")
            with _Dir(self.root_fd, path) as d:
                return os.getxattr(d.proc(), name, follow_symlinks=False)

        def listxattr(self, path):
            with _Dir(self.root_fd, path) as d:
                names = os.listxattr(d.proc(), follow_symlinks=False)
            return [n for n in names if not n.startswith(lxattr.RESERVED_PREFIX)]

        def setxattr(self, path, name, value, options, position=0):
            if name.startswith(lxattr.RESERVED_PREFIX):
                raise OSError(errno.EPERM, "reserved for lxsub")
            with _Dir(self.root_fd, path) as d:
                os.setxattr(d.proc(), name, value, options, follow_symlinks=False)
            return 0

        def removexattr(self, path, name):
            if name.startswith(lxattr.RESERVED_PREFIX):
                raise OSError(errno.EPERM, "reserved for lxsub")
            with _Dir(self.root_fd, path) as d:
                os.removexattr(d.proc(), name, follow_symlinks=False)
            return 0

        def init(self, path):
            if self.on_ready is not None:
                self.on_ready()

        def destroy(self, path):
            self.linux.store.close()
            return 0

    return VolFsOperations()


# -- serving a /dev/fuse descriptor with libfuse2 -------------------------------


class _FuseArgs(ctypes.Structure):
    _fields_ = [("argc", ctypes.c_int), ("argv", ctypes.POINTER(ctypes.c_char_p)),
                ("allocated", ctypes.c_int)]


class _LibfuseOnFd:
    """Stands in for fusepy's `_libfuse`: fuse_main_real serves an already
    mounted /dev/fuse descriptor instead of mounting."""

    def __init__(self, real, fd: int, options: str) -> None:
        self._real = real
        self._fd = fd
        self._options = options

    def __getattr__(self, name):
        return getattr(self._real, name)

    def fuse_main_real(self, argc, argv, ops, size, user_data):
        lib = self._real
        lib.fuse_kern_chan_new.restype = ctypes.c_void_p
        lib.fuse_kern_chan_new.argtypes = [ctypes.c_int]
        # Plain dlsym("fuse_new") finds the 2.2 compatibility version (fd, opts...).
        dlvsym = ctypes.CDLL(None).dlvsym
        dlvsym.restype = ctypes.c_void_p
        dlvsym.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
        address = dlvsym(lib._handle, b"fuse_new", b"FUSE_2.6")
        if not address:
            return 1
        fuse_new = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(_FuseArgs),
                                    ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)(address)
        lib.fuse_get_session.restype = ctypes.c_void_p
        lib.fuse_get_session.argtypes = [ctypes.c_void_p]
        for f in ("fuse_set_signal_handlers", "fuse_remove_signal_handlers"):
            getattr(lib, f).argtypes = [ctypes.c_void_p]
        lib.fuse_loop_mt.argtypes = [ctypes.c_void_p]
        lib.fuse_destroy.argtypes = [ctypes.c_void_p]

        ch = lib.fuse_kern_chan_new(self._fd)
        if not ch:
            return 1
        words = [b"lxsub"] + ([b"-o" + self._options.encode()] if self._options else [])
        arr = (ctypes.c_char_p * (len(words) + 1))(*words, None)
        args = _FuseArgs(len(words), arr, 0)
        f = fuse_new(ch, ctypes.byref(args), ctypes.cast(ops, ctypes.c_void_p), size, None)
        if not f:
            return 1
        se = lib.fuse_get_session(f)
        lib.fuse_set_signal_handlers(se)
        try:
            return lib.fuse_loop_mt(f)
        finally:
            lib.fuse_remove_signal_handlers(se)
            lib.fuse_destroy(f)


# -- mounting ------------------------------------------------------------------


def _mounts() -> list[tuple[str, str, str]]:
    """(mount point, fstype, source) of every mount this process sees."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            point = left.split()[4]
            fstype, source = right.split()[:2]
            out.append((_unescape(point), fstype, _unescape(source)))
    return out


def _unescape(field: str) -> str:
    return (field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")
            .replace("\\134", "\\"))


def lx_mount_at(directory: str) -> tuple[str, str] | None:
    """(fstype, source) of the lx mount at directory, if there is one."""
    real = os.path.realpath(directory)
    for point, fstype, source in reversed(_mounts()):
        if point == real:
            return (fstype, source) if fstype == FS_TYPE else None
    return None


def _owner_of(rootfs: Path, user: str | None, distro: str) -> tuple[int, int]:
    if user is None or user in ("root", "0"):
        return 0, 0
    from lxsub.config import read_in_root

    try:
        passwd = read_in_root(rootfs, "/etc/passwd") or ""
    except Exception:
        passwd = ""
    for line in passwd.splitlines():
        f = line.split(":")
        if len(f) >= 4 and (f[0] == user or (user.isdigit() and f[2] == user)):
            try:
                return int(f[2]), int(f[3])
            except ValueError:
                break
    raise LxError(f"no user '{user}' in distro '{distro}' (see its /etc/passwd)", EXIT_NOUSER)


def _fusermount_mount(fusermount: str, directory: str, options: str) -> tuple[int, socket.socket]:
    """Mount with fusermount3; the /dev/fuse descriptor and the socket that
    keeps auto_unmount's watcher waiting (close it and the mount goes)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    env = dict(os.environ, _FUSE_COMMFD=str(theirs.fileno()))
    # With auto_unmount fusermount3 stays, waiting for the socket to close, so
    # it is not waited for, and its stderr is a file, not a pipe.
    err = tempfile.TemporaryFile()
    try:
        try:
            proc = subprocess.Popen([fusermount, "-o", options, "--", directory], env=env,
                                    pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err)
        finally:
            theirs.close()
        fds: list[int] = []
        deadline = time.monotonic() + _READY_TIMEOUT
        while time.monotonic() < deadline:
            ready, _, _ = select.select([ours], [], [], 0.1)
            if ready:
                try:
                    _, fds, _, _ = socket.recv_fds(ours, 1, 1)
                except OSError:
                    fds = []
                break
            if proc.poll() is not None:
                break
        if not fds:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            err.seek(0)
            message = err.read().decode(errors="replace").strip()
            ours.close()
            why = (message.splitlines()[-1] if message
                   else f"{fusermount} exited with {proc.returncode} without mounting")
            raise LxError(f"cannot mount at {directory}: {why}", EXIT_OSFILE)
    finally:
        err.close()
    return fds[0], ours


def mount(rootfs: Path, distro: str, directory: str, user: str | None = None,
          meta_db: str | None = None) -> int:
    """Mount distro's rootfs at directory; return once it is served."""
    fusepy, fusermount = check_host()
    if not os.path.isdir(directory):
        raise LxError(f"mount point {directory} is not a directory", EXIT_NOINPUT)
    directory = os.path.realpath(directory)
    if lx_mount_at(directory):
        raise LxError(f"{directory} is already an lx mount (lx --umount {directory})", EXIT_CANTCREAT)
    if os.listdir(directory):
        raise LxError(f"mount point {directory} is not empty", EXIT_CANTCREAT)
    if not Path(rootfs).is_dir():
        raise LxError(f"the files of distro {distro!r} are missing ({rootfs})", EXIT_NOINPUT)
    owner = _owner_of(Path(rootfs), user, distro)

    options = f"rw,nosuid,nodev,fsname=lxsub:{distro},subtype=lxsub,auto_unmount"
    fuse_fd, keeper = _fusermount_mount(fusermount, directory, options)
    status_r, status_w = os.pipe()
    pid = os.fork()
    if pid == 0:   # the server
        code = 1
        try:
            os.close(status_r)
            os.setsid()
            os.chdir("/")
            null = os.open(os.devnull, os.O_RDWR)
            for n in (0, 1, 2):
                os.dup2(null, n)
            os.close(null)
            code = _serve(fusepy, rootfs, owner, fuse_fd, status_w, meta_db)
        except BaseException as e:  # noqa: BLE001 - told to the waiting parent
            try:
                os.write(status_w, f"{type(e).__name__}: {e}".encode()[:500])
            except OSError:
                pass
        finally:
            os._exit(code)
    os.close(status_w)
    os.close(fuse_fd)
    keeper.close()
    try:
        reply = _read_status(status_r, pid)
    finally:
        os.close(status_r)
    if reply != _READY:
        _unmount_quietly(fusermount, directory)
        why = reply.decode(errors="replace").strip() or "the server process exited"
        raise LxError(f"cannot serve the mount at {directory}: {why}", EXIT_OSFILE)
    return 0


def _read_status(fd: int, pid: int) -> bytes:
    deadline = time.monotonic() + _READY_TIMEOUT
    data = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, 512)
        if not chunk:
            break
        data += chunk
        if data == _READY:
            return data
    if data != _READY:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    return data or b"the server did not start in time"


def _serve(fusepy, rootfs, owner, fuse_fd: int, status_w: int, meta_db: str | None) -> int:
    ops = make_operations(rootfs, owner, meta_db)

    def ready() -> None:
        os.write(status_w, _READY)
        os.close(status_w)

    ops.on_ready = ready
    real = fusepy._libfuse
    fusepy._libfuse = _LibfuseOnFd(
        real, fuse_fd,
        "use_ino,hard_remove,attr_timeout=0,entry_timeout=0,negative_timeout=0")
    try:
        fusepy.FUSE(ops, "(lx)", foreground=True, encoding=_ENC)
    finally:
        fusepy._libfuse = real
    return 0


def _unmount_quietly(fusermount: str, directory: str) -> None:
    subprocess.run([fusermount, "-u", "-z", "--", directory], stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def umount(directory: str, wait: float = 10.0) -> int:
    """Unmount an lx mount; return when it is gone."""
    if not os.path.isdir(directory):
        raise LxError(f"{directory} is not a directory", EXIT_NOINPUT)
    real = os.path.realpath(directory)
    if lx_mount_at(real) is None:
        raise LxError(f"{real} is not an lx mount", EXIT_NOINPUT)
    fusermount = find_fusermount()
    cp = subprocess.run([fusermount, "-u", "--", real], stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if cp.returncode != 0:
        message = cp.stderr.decode(errors="replace").strip().splitlines()
        why = message[-1] if message else f"exit {cp.returncode}"
        if "busy" in why.lower():
            raise LxError(f"{real} is busy (a program has a file or directory open in it): {why}",
                          EXIT_TEMPFAIL)
        raise LxError(f"cannot unmount {real}: {why}", EXIT_OSFILE)
    deadline = time.monotonic() + wait
    while lx_mount_at(real) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    return 0
