"""Import a root file system tarball as a VolFs tree and register it.

Everything runs as the unprivileged host user: nothing is chowned and no
device node is made on the host. The Linux view of each member (type, mode
with setuid/setgid/sticky, owner, device number) goes into the VolFs
extended attribute (see kernel/fs/lxattr.py), or, where the file system
takes no user xattrs (NFS, Lustre, GPFS homes) or LX_METASTORE=sqlite asks,
into the distro's SQLite database beside the rootfs (kernel/fs/sqlitestore.py,
`choose_meta_db`); device nodes become empty regular files that carry it.

The archive is read as a stream ('r|*'), so a pipe on stdin works and the
compression (none, gzip, xz, bzip2) is recognised from the content.

Hostile archives are expected. A member name may not contain '..'; a
leading '/' is stripped as GNU tar does, which keeps the member inside the
rootfs. Every member is created relative to a descriptor of its parent
directory, and each parent is opened with O_NOFOLLOW, so no member can be
written through a symlink, however the archive orders its entries.

An import that fails or is interrupted removes everything it created and
registers nothing; the registry entry is the very last step.
"""

from __future__ import annotations

import contextlib
import errno
import io
import lzma
import os
import stat
import sys
import tarfile
import time
import zlib
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Iterator

from lxsub.errors import EXIT_CANTCREAT, EXIT_DATAERR, EXIT_NOINPUT, EXIT_USAGE, LxError
from lxsub.kernel.fs import lxattr
from lxsub.kernel.fs.linuxmeta import HostFile
from lxsub.kernel.fs.lxattr import LxMeta
from lxsub.kernel.fs.sqlitestore import SqliteStore, meta_db_path, remove_db, wants_sqlite
from lxsub.state import Distro, Registry

if TYPE_CHECKING:
    from lxsub.distro.progress import Progress

ROOTFS_DIR = "rootfs"

# Mount points the kernel needs, created when the archive lacks them.
MOUNT_POINTS: tuple[tuple[str, int], ...] = (
    ("proc", 0o555),
    ("sys", 0o555),
    ("dev", 0o755),
    ("dev/pts", 0o755),
    ("dev/shm", 0o1777),
    ("tmp", 0o1777),
    ("run", 0o755),
    ("mnt", 0o755),
)

_COPY_CHUNK = 1 << 20
_MAX_ID = 2**32 - 2  # (uid_t)-1 means "no change" to chown, so it is not a real id
_DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# What the archive's read side can raise for bad or truncated input.
_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError)


class _BadArchive(Exception):
    """The archive itself is at fault (corrupt, truncated or hostile)."""


def import_tarball(
    registry: Registry,
    name: str,
    target_dir: str | Path,
    source: str | Path | BinaryIO,
    progress: "Progress | None" = None,
) -> Distro:
    """Extract `source` into `target_dir`/rootfs and register it as `name`.

    `source` is a path, '-' for stdin, or a readable binary file object.
    The tree is built in a temporary directory next to rootfs while the
    distro is registered as Installing (see Registry.creating).
    """
    registry.check_new_name(name)  # checked again, under the lock, when registering
    label = _source_label(source)
    target = Path(target_dir).expanduser().resolve()
    _check_target(target)
    with _open_source(source) as stream:
        total = _stream_size(stream)
        with registry.creating(name, target / ROOTFS_DIR, action="import", source="import") as work:
            meta_db = choose_meta_db(registry, name, work, target / ROOTFS_DIR)
            reader = stream
            if progress is not None:
                task = progress.task(f"Importing {name}", total=total, unit="bytes")
                reader = _CountingReader(stream, task.advance)
            writer = RootfsWriter(work, meta_db)
            try:
                writer.add_archive(reader, label)
                writer.finish()
            finally:
                writer.close()
            os.sync()  # the data must be on disk before the registry points at it
    return registry.get(name)


def _stream_size(stream: BinaryIO) -> int | None:
    try:
        st = os.fstat(stream.fileno())
    except (OSError, AttributeError, ValueError, io.UnsupportedOperation):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) and st.st_size else None


class _CountingReader(io.RawIOBase):
    """Passes reads through, reporting how many bytes went by."""

    def __init__(self, stream: BinaryIO, report) -> None:
        self.stream = stream
        self.report = report

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        data = self.stream.read(len(buf))
        n = len(data)
        buf[:n] = data
        if n:
            self.report(n)
        return n


def choose_meta_db(registry: Registry, name: str, work: Path, rootfs: Path) -> Path | None:
    """The metadata store of distro `name`, whose tree is built in `work`
    and will be `rootfs`: None for the xattrs, else the SQLite database
    (sqlitestore.wants_sqlite: LX_METASTORE, or no user xattrs there),
    recorded in the registry at once so that an interrupted run's clean-up
    removes it too."""
    fd = os.open(work, _DIR_OPEN)
    try:
        sqlite = wants_sqlite(fd)
    except OSError as e:
        raise LxError(f"cannot write in {work.parent}: {e.strerror}", EXIT_CANTCREAT) from e
    finally:
        os.close(fd)
    if not sqlite:
        return None
    db = meta_db_path(rootfs)
    remove_db(db)       # a leftover of a rootfs that no longer exists (checked by creating)
    registry.update(name, meta_db=str(db))
    return db


class RootfsWriter:
    """A VolFs tree under construction: archives are extracted into it one
    after another (a tarball, or the data of each .deb of a distro).

    `rename` maps a member's path components to where they go (e.g. /bin to
    /usr/bin on a merged-/usr system); hard link targets are mapped the same.
    `meta_db`: the distro's SQLite metadata store (choose_meta_db), or None
    for the xattrs.
    """

    def __init__(self, rootfs: Path, meta_db: Path | str | None = None) -> None:
        self.rootfs = Path(rootfs)
        self.root_fd = os.open(self.rootfs, _DIR_OPEN)
        try:
            records = _Records(meta_db)
            try:
                if meta_db is None:
                    _check_xattr_support(self.root_fd, self.rootfs)
                else:
                    records.on_fd(self.root_fd, LxMeta(stat.S_IFDIR | 0o755, 0, 0))
            except BaseException:
                records.close()
                raise
        except BaseException:
            os.close(self.root_fd)
            raise
        self.tree = _Tree(self.root_fd, records)

    def add_archive(self, stream: BinaryIO, label: str, rename=None) -> int:
        """Extract one tar stream; returns the number of members."""
        try:
            return _extract_members(self.tree, stream, rename)
        except _BadArchive as e:
            raise LxError(f"cannot import {label}: {e}", EXIT_DATAERR) from None
        except OSError as e:  # the host side: disk full, quota, permissions
            raise LxError(f"cannot import {label} into {self.rootfs}: {e}", EXIT_CANTCREAT) from e

    def make_directory(self, path: str, meta: LxMeta, times: tuple[int, int] | None = None) -> None:
        parts = _member_parts(path)
        self.tree.make_directory(parts, meta, times or _now_ns())

    def make_file(self, path: str, meta: LxMeta, data: bytes,
                  times: tuple[int, int] | None = None) -> None:
        self.tree.make_file(_member_parts(path), meta, times or _now_ns(), _Bytes(data))

    def make_symlink(self, path: str, target: str, times: tuple[int, int] | None = None) -> None:
        # Root's, as a member of an archive: in the SQLite store every file has its record.
        self.tree.make_symlink(_member_parts(path), target, times or _now_ns(),
                               LxMeta(stat.S_IFLNK | 0o777, 0, 0))

    def remove(self, path: str) -> None:
        """Remove a file or an empty directory, and its record: a record
        must not outlive its file (a reused inode number would inherit it)."""
        self.tree.remove(_member_parts(path))

    def finish(self) -> None:
        """Add missing mount points and set the directory times."""
        try:
            _add_mount_points(self.tree)
            self.tree.apply_directory_times()
        except OSError as e:
            raise LxError(f"cannot finish {self.rootfs}: {e}", EXIT_CANTCREAT) from e

    def close(self) -> None:
        self.tree.close()
        self.tree.records.close()
        os.close(self.root_fd)


def _now_ns() -> tuple[int, int]:
    now = time.time_ns()
    return now, now


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def copy_to(self, fd: int) -> None:
        _write_all(fd, self.data)


# -- source and target --


def _source_label(source: str | Path | BinaryIO) -> str:
    if isinstance(source, (str, Path)):
        return "standard input" if str(source) == "-" else str(source)
    name = getattr(source, "name", None)
    return name if isinstance(name, str) else "the tarball stream"


@contextlib.contextmanager
def _open_source(source: str | Path | BinaryIO) -> Iterator[BinaryIO]:
    if not isinstance(source, (str, Path)):
        yield source
        return
    if str(source) == "-":
        if sys.stdin.isatty():
            raise LxError(
                "refusing to read a tarball from a terminal; pipe one in or name a file",
                EXIT_USAGE,
            )
        yield sys.stdin.buffer
        return
    try:
        f = open(source, "rb")
    except FileNotFoundError as e:
        raise LxError(f"tarball {source} does not exist", EXIT_NOINPUT) from e
    except IsADirectoryError as e:
        raise LxError(f"tarball {source} is a directory, not a file", EXIT_NOINPUT) from e
    except OSError as e:
        raise LxError(f"cannot open tarball {source}: {e.strerror}", EXIT_NOINPUT) from e
    with f:
        yield f


def _check_target(target: Path) -> None:
    """`target` must be new, or an empty directory."""
    if not os.path.lexists(target):
        return
    if not target.is_dir():
        raise LxError(f"{target} exists and is not a directory", EXIT_CANTCREAT)
    if any(target.iterdir()):
        raise LxError(
            f"{target} is not empty; import into a new or empty directory", EXIT_CANTCREAT
        )


# -- extraction --


def _check_xattr_support(root_fd: int, rootfs: Path) -> None:
    try:
        lxattr.write_meta_fd(root_fd, LxMeta(stat.S_IFDIR | 0o755, 0, 0))
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise LxError(
                f"the file system holding {rootfs} does not support extended attributes "
                "(user.*), which LX_METASTORE=xattr asks for; unset it to keep the Linux "
                "file metadata in a database beside the rootfs",
                EXIT_CANTCREAT,
            ) from e
        raise LxError(f"cannot write metadata in {rootfs}: {e.strerror}", EXIT_CANTCREAT) from e


def _extract_members(tree: "_Tree", stream: BinaryIO, rename=None) -> int:
    count = 0
    for member, archive in _members(stream):
        _extract_member(tree, member, archive, rename)
        count += 1
    if count == 0:
        raise _BadArchive("the archive has no members")
    return count


def _members(stream: BinaryIO) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
    try:
        archive = tarfile.open(fileobj=stream, mode="r|*", errors="surrogateescape")
    except _ARCHIVE_ERRORS as e:
        raise _BadArchive(f"not a tar archive (plain, gzip, xz or bzip2): {e}") from e
    with archive:
        while True:
            try:
                member = archive.next()
            except _ARCHIVE_ERRORS as e:
                raise _BadArchive(f"corrupt or truncated archive: {e}") from e
            if member is None:
                return
            yield member, archive


def _extract_member(tree: "_Tree", member: tarfile.TarInfo, archive: tarfile.TarFile,
                    rename=None) -> None:
    parts = _member_parts(member.name)
    if rename is not None:
        parts = rename(parts)
    if not parts:
        if not member.isdir():
            raise _BadArchive(f"member {member.name!r} would replace the root directory")
        tree.set_directory(parts, _meta_for(member), _times_ns(member))
        return
    if member.isdir():
        tree.make_directory(parts, _meta_for(member), _times_ns(member))
    elif member.issym():
        tree.make_symlink(parts, member.linkname, _times_ns(member),
                          LxMeta(stat.S_IFLNK | 0o777, *_ids_of(member)))
    elif member.islnk():
        target = _member_parts(member.linkname)
        tree.make_hardlink(parts, rename(target) if rename else target, member.name)
    elif member.isfifo():
        tree.make_fifo(parts, _meta_for(member), _times_ns(member))
    elif member.ischr() or member.isblk():
        tree.make_file(parts, _meta_for(member), _times_ns(member), None)
    else:
        # Regular files, and unknown types, which tar also extracts as files.
        tree.make_file(parts, _meta_for(member), _times_ns(member), _Data(archive, member))


def _member_parts(name: str) -> list[str]:
    parts = [p for p in name.lstrip("/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _BadArchive(f"member {name!r} contains '..'; refusing to extract outside the rootfs")
    return parts


def _ids_of(member: tarfile.TarInfo) -> tuple[int, int]:
    for what, value in (("uid", member.uid), ("gid", member.gid)):
        if not 0 <= value <= _MAX_ID:
            raise _BadArchive(f"member {member.name!r} has an invalid {what} {value}")
    return member.uid, member.gid


def _meta_for(member: tarfile.TarInfo) -> LxMeta:
    _ids_of(member)
    rdev = 0
    if member.ischr() or member.isblk():
        try:
            rdev = os.makedev(member.devmajor, member.devminor)
        except (OverflowError, ValueError) as e:
            raise _BadArchive(f"member {member.name!r} has an invalid device number") from e
    return LxMeta(_linux_type(member) | (member.mode & 0o7777), member.uid, member.gid, rdev)


def _linux_type(member: tarfile.TarInfo) -> int:
    if member.isdir():
        return stat.S_IFDIR
    if member.ischr():
        return stat.S_IFCHR
    if member.isblk():
        return stat.S_IFBLK
    if member.isfifo():
        return stat.S_IFIFO
    return stat.S_IFREG


def _times_ns(member: tarfile.TarInfo) -> tuple[int, int]:
    """(atime, mtime) in ns; PAX headers keep sub-second digits a float would lose."""
    mtime = _pax_time_ns(member, "mtime")
    if mtime is None:
        mtime = int(member.mtime) * 1_000_000_000
    atime = _pax_time_ns(member, "atime")
    return (mtime if atime is None else atime), mtime


def _pax_time_ns(member: tarfile.TarInfo, key: str) -> int | None:
    raw = member.pax_headers.get(key)
    if raw is None:
        return None
    try:
        return int(Decimal(raw) * 1_000_000_000)
    except (InvalidOperation, ValueError, OverflowError):
        raise _BadArchive(f"member {member.name!r} has an invalid {key} {raw!r}") from None


class _Data:
    """A member's contents, read from the archive stream in chunks."""

    def __init__(self, archive: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        self.archive = archive
        self.member = member

    def copy_to(self, fd: int) -> None:
        source = self.archive.extractfile(self.member)
        if source is None:
            return
        while True:
            try:
                chunk = source.read(_COPY_CHUNK)
            except _ARCHIVE_ERRORS as e:
                raise _BadArchive(f"corrupt or truncated data in {self.member.name!r}: {e}") from e
            if not chunk:
                return
            _write_all(fd, chunk)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class _Records:
    """Where the members' Linux view goes: the user.lxsub.meta xattr, or the
    distro's SQLite store, in one transaction per writer (an import that
    fails is removed whole: nothing needs committing before its end)."""

    def __init__(self, meta_db: Path | str | None) -> None:
        self.db = SqliteStore(meta_db) if meta_db is not None else None
        if self.db is not None:
            self.db.begin()

    def on_fd(self, fd: int, meta: LxMeta) -> None:
        if self.db is None:
            lxattr.write_meta_fd(fd, meta)
        else:
            self.db.save(HostFile.of_fd(fd), meta)

    def in_dir(self, dir_fd: int, name: str, meta: LxMeta) -> None:
        """A symlink's or FIFO's view: only the database can hold it (the
        host allows no user.* attribute on them, xattr(7))."""
        if self.db is not None:
            self.db.save(HostFile.in_dir(dir_fd, os.fsencode(name)), meta)

    def removed(self, s: os.stat_result) -> None:
        """An entry the archive replaces is gone (its last name, or a directory)."""
        if self.db is not None and (s.st_nlink <= 1 or stat.S_ISDIR(s.st_mode)):
            self.db.forget(s)

    def close(self) -> None:
        if self.db is not None:
            self.db.commit()
            self.db.close()
            self.db = None


class _Tree:
    """The rootfs being built, reached only through directory descriptors."""

    def __init__(self, root_fd: int, records: _Records) -> None:
        self.root_fd = root_fd
        self.records = records
        self._cached: tuple[tuple[str, ...], int] | None = None
        # Directory times are set last: creating entries would change them.
        self._dir_times: dict[tuple[str, ...], tuple[int, int]] = {}

    def close(self) -> None:
        self._forget_cached()

    # -- walking --

    def parent_fd(self, parts: list[str]) -> int:
        """Descriptor of the directory that holds `parts[-1]` (owned by the tree)."""
        key = tuple(parts[:-1])
        if self._cached and self._cached[0] == key:
            return self._cached[1]
        fd = self._open_dir(list(key))
        self._forget_cached()
        self._cached = (key, fd)
        return fd

    def _forget_cached_under(self, parts: list[str]) -> None:
        # A descriptor of a removed directory would put later members into
        # a directory that no longer has a name.
        if self._cached and self._cached[0][: len(parts)] == tuple(parts):
            self._forget_cached()

    def _forget_cached(self) -> None:
        if self._cached:
            os.close(self._cached[1])
            self._cached = None

    def _open_dir(self, parts: list[str], create: bool = True) -> int:
        fd = os.dup(self.root_fd)
        try:
            for i, part in enumerate(parts):
                child = self._open_child_dir(fd, part, parts[: i + 1], create)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open_child_dir(self, parent: int, name: str, path: list[str], create: bool) -> int:
        try:
            return os.open(name, _DIR_OPEN, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise _BadArchive(f"{'/'.join(path)!r} does not exist") from None
            # Archives often omit parent directories; tar makes them as needed.
            self.mkdir(parent, name, LxMeta(stat.S_IFDIR | 0o755, 0, 0))
            return os.open(name, _DIR_OPEN, dir_fd=parent)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise _BadArchive(
                    f"{'/'.join(path)!r} is a symlink or not a directory; "
                    "refusing to extract through it"
                ) from None
            raise

    # -- making entries --

    def make_directory(self, parts: list[str], meta: LxMeta, times: tuple[int, int]) -> None:
        parent = self.parent_fd(parts)
        if not self._clear_slot(parent, parts, making_directory=True):
            self.mkdir(parent, parts[-1], meta)
        self.set_directory(parts, meta, times)

    def set_directory(self, parts: list[str], meta: LxMeta, times: tuple[int, int]) -> None:
        fd = self._open_dir(parts)
        try:
            os.fchmod(fd, lxattr.host_mode_for(meta.mode))
            self.records.on_fd(fd, meta)
        finally:
            os.close(fd)
        self._dir_times[tuple(parts)] = times

    def make_file(
        self, parts: list[str], meta: LxMeta, times: tuple[int, int], data: _Data | None
    ) -> None:
        parent = self.parent_fd(parts)
        self._clear_slot(parent, parts, making_directory=False)
        fd = os.open(parts[-1], _NEW_FILE, 0o600, dir_fd=parent)
        try:
            if data is not None:
                data.copy_to(fd)
            os.fchmod(fd, lxattr.host_mode_for(meta.mode))
            self.records.on_fd(fd, meta)
            os.utime(fd, ns=times)
        finally:
            os.close(fd)

    def make_fifo(self, parts: list[str], meta: LxMeta, times: tuple[int, int]) -> None:
        parent = self.parent_fd(parts)
        self._clear_slot(parent, parts, making_directory=False)
        os.mkfifo(parts[-1], 0o600, dir_fd=parent)
        # Linux allows no user.* attribute on a FIFO: with the xattrs only the
        # permission bits survive, in the host mode (owner: root, as lxattr
        # defaults); the SQLite store keeps its record.
        os.chmod(parts[-1], lxattr.host_mode_for(meta.mode), dir_fd=parent)
        self.records.in_dir(parent, parts[-1], meta)
        os.utime(parts[-1], ns=times, dir_fd=parent, follow_symlinks=False)

    def make_symlink(self, parts: list[str], target: str, times: tuple[int, int],
                     meta: LxMeta | None = None) -> None:
        # The target is stored verbatim: the kernel resolves it inside the
        # instance root, and the importer never follows it.
        parent = self.parent_fd(parts)
        self._clear_slot(parent, parts, making_directory=False)
        os.symlink(target, parts[-1], dir_fd=parent)
        if meta is not None:
            self.records.in_dir(parent, parts[-1], meta)
        os.utime(parts[-1], ns=times, dir_fd=parent, follow_symlinks=False)

    def make_hardlink(self, parts: list[str], target: list[str], name: str) -> None:
        if not target:
            raise _BadArchive(f"hard link {name!r} points at the root directory")
        try:
            target_parent = self._open_dir(target[:-1], create=False)
        except _BadArchive as e:
            raise _BadArchive(f"hard link {name!r} cannot point at {'/'.join(target)!r}: {e}")
        try:
            parent = self.parent_fd(parts)
            if tuple(parts) == tuple(target):
                return  # a link to itself: the file is already there
            self._clear_slot(parent, parts, making_directory=False)
            try:
                os.link(
                    target[-1], parts[-1],
                    src_dir_fd=target_parent, dst_dir_fd=parent, follow_symlinks=False,
                )
            except (FileNotFoundError, PermissionError, IsADirectoryError) as e:
                raise _BadArchive(
                    f"hard link {name!r} points at {'/'.join(target)!r}, "
                    "which is not an earlier file of the archive"
                ) from e
        finally:
            os.close(target_parent)

    def mkdir(self, parent: int, name: str, meta: LxMeta) -> None:
        os.mkdir(name, 0o700, dir_fd=parent)
        fd = os.open(name, _DIR_OPEN, dir_fd=parent)
        try:
            os.fchmod(fd, lxattr.host_mode_for(meta.mode))
            self.records.on_fd(fd, meta)
        finally:
            os.close(fd)

    def _clear_slot(self, parent: int, parts: list[str], *, making_directory: bool) -> bool:
        """Make room for a member, as tar does; True when a directory is kept."""
        try:
            st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if making_directory:
                return True
            self._forget_cached_under(parts)
            try:
                os.rmdir(parts[-1], dir_fd=parent)
            except OSError as e:
                if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    raise _BadArchive(
                        f"member {'/'.join(parts)!r} would replace a non-empty directory"
                    ) from None
                raise
            self._dir_times.pop(tuple(parts), None)
            self.records.removed(st)
            return False
        os.unlink(parts[-1], dir_fd=parent)
        self.records.removed(st)
        return False

    def remove(self, parts: list[str]) -> None:
        """What tar does to make room for a member, for nothing (gone already: nothing)."""
        self._clear_slot(self.parent_fd(parts), parts, making_directory=False)

    def exists(self, parts: list[str]) -> bool:
        try:
            os.stat(parts[-1], dir_fd=self.parent_fd(parts), follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    # -- finishing --

    def apply_directory_times(self) -> None:
        self._forget_cached()
        for parts, times in self._dir_times.items():
            fd = self._open_dir(list(parts))
            try:
                os.utime(fd, ns=times)
            finally:
                os.close(fd)


def _add_mount_points(tree: _Tree) -> None:
    for path, mode in MOUNT_POINTS:
        parts = path.split("/")
        try:
            if tree.exists(parts):
                continue
        except _BadArchive:
            continue  # e.g. /dev is a symlink: leave the distro's layout alone
        tree.mkdir(tree.parent_fd(parts), parts[-1], LxMeta(stat.S_IFDIR | mode, 0, 0))


__all__ = ["import_tarball", "RootfsWriter", "MOUNT_POINTS", "ROOTFS_DIR"]
