"""Export a distro's VolFs tree as a tarball: the inverse of the importer.

Members carry the Linux view of each file (lxattr.linux_view: the record in
the distro's store, the VolFs attribute or its SQLite database; root and the
host mode when a file has none), so importing the result gives the same tree. The archive is PAX, with exact nanosecond
times, so nothing is rounded on the way.

The rootfs may have been changed by hostile programs in the instance, so the
walk never follows a symlink: directories come from os.fwalk (descriptors,
no symlinks followed) and each entry is opened with O_NOFOLLOW.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Iterator

from lxsub.errors import EXIT_CANTCREAT, EXIT_UNAVAILABLE, EXIT_USAGE, LxError
from lxsub.kernel.fs import lxattr
from lxsub.kernel.fs.linuxmeta import HostFile, MetaStore, XattrStore
from lxsub.kernel.fs.sqlitestore import SqliteStore
from lxsub.state import Distro, lx_home

if TYPE_CHECKING:
    from lxsub.distro.progress import Progress

# The archive's format from the file name's suffix, as tar -a does.
_COMPRESSION_BY_SUFFIX = {
    ".tar": "",
    ".tar.gz": "gz", ".tgz": "gz",
    ".tar.xz": "xz", ".txz": "xz",
    ".tar.bz2": "bz2", ".tbz": "bz2", ".tbz2": "bz2",
    ".tar.zst": "zst", ".tzst": "zst",
}
_OPEN_ENTRY = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_DATA = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_COPY_CHUNK = 1 << 20


def export_tarball(
    distro: Distro, dest: str | Path | BinaryIO, compression: str | None = None,
    progress: "Progress | None" = None,
) -> None:
    """Write `distro`'s rootfs as a tar archive to `dest` ('-' is stdout).

    `compression` is "gz", "xz", "bz2" or "" (none); by default it follows
    the suffix of a `dest` path, and is none for streams.
    """
    rootfs = Path(distro.rootfs)
    if not rootfs.is_dir():
        raise LxError(
            f"the files of distro {distro.name!r} are missing ({rootfs}); "
            f"'lx --unregister {distro.name}' removes the entry",
            EXIT_UNAVAILABLE,
        )
    comp = compression if compression is not None else compression_for(dest)
    if comp not in ("", "gz", "xz", "bz2", "zst"):
        raise LxError(f"unknown compression {comp!r} (use gz, xz, bz2, zst or none)", EXIT_USAGE)
    zstd = _zstd_program() if comp == "zst" else None
    try:
        with _open_dest(dest) as out, _compressed(out, zstd) as raw:
            with tarfile.open(
                fileobj=raw, mode=f"w|{'' if zstd else comp}", format=tarfile.PAX_FORMAT,
                errors="surrogateescape"
            ) as archive:
                report = None
                if progress is not None:
                    task = progress.task(f"Exporting {distro.name}", total=_tree_bytes(rootfs),
                                         unit="bytes")
                    report = task.advance
                store = _store_of(distro)
                try:
                    _Writer(archive, rootfs, store, report).write_tree()
                finally:
                    store.close()
                if progress is not None:
                    task.done()         # the bar ends full, not on a spinner
    except OSError as e:
        raise LxError(f"cannot export {distro.name!r}: {e}", EXIT_CANTCREAT) from e


def compression_for(dest: str | Path | BinaryIO) -> str:
    """The compression a destination's name asks for ("" for a plain tar
    and for streams); LxError for a name that is no tar archive's."""
    if not isinstance(dest, (str, Path)) or str(dest) == "-":
        return ""
    name = Path(dest).name.lower()
    for suffix, comp in _COMPRESSION_BY_SUFFIX.items():
        if name.endswith(suffix) and len(name) > len(suffix):
            return comp
    raise LxError(f"{dest}: unknown archive type; name it .tar, .tar.gz (.tgz), .tar.xz, "
                  ".tar.bz2 or .tar.zst, or use - for a plain tar on stdout", EXIT_USAGE)


def _zstd_program() -> str:
    program = shutil.which("zstd")
    if program is None:
        raise LxError("a .tar.zst export needs the zstd program (apt-get install zstd); "
                      "or name the file .tar.xz or .tar.gz", EXIT_UNAVAILABLE)
    return program


@contextlib.contextmanager
def _compressed(out: BinaryIO, zstd: str | None) -> Iterator[BinaryIO]:
    """`out` itself, or the input of a `zstd` writing to it (tarfile has no zstd)."""
    if zstd is None:
        yield out
        return
    out.flush()
    proc = subprocess.Popen([zstd, "-q", "-c", "-T0"], stdin=subprocess.PIPE, stdout=out,
                            stderr=subprocess.PIPE)
    try:
        yield proc.stdin
    except BaseException:
        proc.kill()
        raise
    finally:
        proc.stdin.close()
        err = proc.stderr.read()
        proc.wait()
    if proc.returncode != 0:
        raise OSError(errno.EIO, f"zstd failed: {err.decode(errors='replace').strip()}")


@contextlib.contextmanager
def _open_dest(dest: str | Path | BinaryIO) -> Iterator[BinaryIO]:
    if not isinstance(dest, (str, Path)):
        yield dest
        return
    if str(dest) == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    with _atomic_file(Path(dest)) as out:
        yield out


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A file that appears at `path` complete, or not at all (a killed
    export's .part file is removed by the next lx: see recover_exports)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.", suffix=".part")
    except OSError as e:
        raise LxError(f"cannot create {path}: {e.strerror}", EXIT_CANTCREAT) from e
    try:
        marker = _mark_in_progress(tmp)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    finally:
        _unmark(marker)


# -- exports in progress: $LX_HOME/exports/*.part-of, each flocked by its export ------------

def _exports_dir() -> Path:
    return lx_home() / "exports"


def _mark_in_progress(tmp: str) -> tuple[int, Path]:
    """Record where this export writes, under a lock held until it ends."""
    where = _exports_dir()
    try:
        where.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, marker = tempfile.mkstemp(dir=where, suffix=".part-of")
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, os.fsencode(os.path.abspath(tmp)))
    except OSError as e:
        raise LxError(f"cannot record the export in {where}: {e.strerror}", EXIT_CANTCREAT) from e
    return fd, Path(marker)


def _unmark(marker: tuple[int, Path]) -> None:
    fd, path = marker
    with contextlib.suppress(OSError):
        path.unlink()
    os.close(fd)


def recover_exports() -> list[str]:
    """Remove the .part files of exports that were killed (their marker's
    lock is free), as an interrupted import is cleaned up; one message each."""
    messages = []
    try:
        markers = sorted(_exports_dir().glob("*.part-of"))
    except OSError:
        return messages
    for marker in markers:
        try:
            fd = os.open(marker, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue                         # that export is still running
        try:
            part = Path(os.fsdecode(os.read(fd, 1 << 16)))
            # Only ever a file named like ours: a marker names nothing else.
            if part.name.startswith(".") and part.name.endswith(".part"):
                with contextlib.suppress(FileNotFoundError):
                    part.unlink()
                    messages.append(f"an earlier export was interrupted; its partial file "
                                    f"{part} was removed")
            marker.unlink()
        except OSError:
            pass
        finally:
            os.close(fd)
    return messages


def _note(message: str) -> None:
    print(f"lx: export: {message}", file=sys.stderr)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _tree_bytes(rootfs: Path) -> int:
    """Bytes of regular files under rootfs (for the progress bar's total)."""
    total = 0
    for dirpath, _dirs, files in os.walk(rootfs):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                if stat.S_ISREG(st.st_mode):
                    total += st.st_size
    return total


def _store_of(distro: Distro) -> MetaStore:
    """The distro's metadata store (joined: reconciled first if its last
    user was killed, so the archive has no record of a vanished file)."""
    if distro.meta_db:
        return SqliteStore(distro.meta_db, tree=distro.rootfs)
    return XattrStore()


class _Writer:
    def __init__(self, archive: tarfile.TarFile, rootfs: Path, store: MetaStore,
                 report=None) -> None:
        self.store = store
        self.report = report
        self.archive = archive
        self.rootfs = rootfs
        self.users = _id_names(rootfs, "passwd")
        self.groups = _id_names(rootfs, "group")
        self.first_link: dict[tuple[int, int], str] = {}

    def write_tree(self) -> None:
        for dirpath, dirnames, filenames, dir_fd in os.fwalk(self.rootfs):
            dirnames.sort()  # a stable archive: same tree, same member order
            rel = os.path.relpath(dirpath, self.rootfs)
            prefix = "./" if rel == "." else f"./{rel}/"
            if rel == ".":
                self._write_dir_itself(dir_fd, "./")
            # fwalk lists symlinks to directories among dirnames but does not
            # descend into them; they are written here, as entries.
            for name in sorted(filenames + dirnames):
                self._write_entry(dir_fd, name, prefix + name)

    def _write_dir_itself(self, dir_fd: int, arcname: str) -> None:
        fd = os.open(".", _OPEN_ENTRY, dir_fd=dir_fd)
        try:
            self.archive.addfile(self._tarinfo(fd, arcname, os.fstat(fd)))
        finally:
            os.close(fd)

    def _write_entry(self, dir_fd: int, name: str, arcname: str) -> None:
        try:
            fd = os.open(name, _OPEN_ENTRY, dir_fd=dir_fd)
        except FileNotFoundError:
            return  # removed while we walked
        try:
            st = os.fstat(fd)
            if stat.S_ISSOCK(st.st_mode):
                # A socket is no file: tar skips it with a note, and so do we.
                _note(f"{arcname}: socket ignored")
                return
            info = self._tarinfo(fd, arcname, st)
            if info.isreg():
                self._add_file(dir_fd, name, info, st)
            else:
                if info.issym():
                    info.linkname = os.readlink(name, dir_fd=dir_fd)
                self.archive.addfile(info)
        finally:
            os.close(fd)

    def _add_file(self, dir_fd: int, name: str, info: tarfile.TarInfo, st: os.stat_result) -> None:
        fd = os.open(name, _OPEN_DATA, dir_fd=dir_fd)
        try:
            now = os.fstat(fd)
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                return  # replaced while we walked; skip rather than mix two files
            info.size = now.st_size
            with os.fdopen(os.dup(fd), "rb") as data:
                self.archive.addfile(info, _Exact(data, info.size, self.report))
        finally:
            os.close(fd)

    def _tarinfo(self, fd: int, arcname: str, st: os.stat_result) -> tarfile.TarInfo:
        mode, uid, gid, rdev = _linux_view(st, self.store.load(HostFile.of_fd(fd, st)))
        info = tarfile.TarInfo(arcname)
        info.mode = stat.S_IMODE(mode)
        info.uid, info.gid = uid, gid
        info.uname = self.users.get(uid, "")
        info.gname = self.groups.get(gid, "")
        info.mtime = st.st_mtime_ns // 1_000_000_000
        info.pax_headers = {
            "mtime": _exact_seconds(st.st_mtime_ns),
            "atime": _exact_seconds(st.st_atime_ns),
        }
        info.type = _tar_type(mode)
        if info.ischr() or info.isblk():
            info.devmajor, info.devminor = os.major(rdev), os.minor(rdev)
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            self._maybe_hardlink(info, st)
        return info

    def _maybe_hardlink(self, info: tarfile.TarInfo, st: os.stat_result) -> None:
        key = (st.st_dev, st.st_ino)
        first = self.first_link.get(key)
        if first is None:
            self.first_link[key] = info.name
            return
        info.type = tarfile.LNKTYPE
        info.linkname = first
        info.devmajor = info.devminor = 0


class _Exact:
    """Exactly `size` bytes of a file that may shrink or grow while it is read.

    tarfile trusts the size in the header; if the file changes underneath,
    pad or cut so the archive stays well formed.
    """

    def __init__(self, data: BinaryIO, size: int, report=None) -> None:
        self.data = data
        self.left = size
        self.report = report

    def read(self, n: int = -1) -> bytes:
        # tarfile needs full reads: it takes a short one for a truncated file.
        if n < 0 or n > self.left:
            n = self.left
        chunks, want = [], n
        while want:
            chunk = self.data.read(want)
            if not chunk:
                chunks.append(bytes(want))
                break
            chunks.append(chunk)
            want -= len(chunk)
        self.left -= n
        if self.report is not None and n:
            self.report(n)
        return b"".join(chunks)


def _linux_view(st: os.stat_result, meta: lxattr.LxMeta | None) -> tuple[int, int, int, int]:
    mode, uid, gid, rdev = lxattr.linux_view(st, meta)
    if lxattr.host_type_for(mode) != stat.S_IFMT(st.st_mode):
        # The attribute disagrees with what is on disk (e.g. a host tool
        # replaced the file): the host's type decides what can be archived.
        mode = stat.S_IFMT(st.st_mode) | stat.S_IMODE(mode)
    return mode, uid, gid, rdev


def _tar_type(mode: int) -> bytes:
    kinds = {
        stat.S_IFDIR: tarfile.DIRTYPE,
        stat.S_IFLNK: tarfile.SYMTYPE,
        stat.S_IFCHR: tarfile.CHRTYPE,
        stat.S_IFBLK: tarfile.BLKTYPE,
        stat.S_IFIFO: tarfile.FIFOTYPE,
    }
    return kinds.get(stat.S_IFMT(mode), tarfile.REGTYPE)


def _exact_seconds(ns: int) -> str:
    sign = "-" if ns < 0 else ""
    sec, frac = divmod(abs(ns), 1_000_000_000)
    return f"{sign}{sec}.{frac:09d}"


def _id_names(rootfs: Path, table: str) -> dict[int, str]:
    """uid/gid -> name from the distro's /etc/passwd or /etc/group, read safely."""
    text = _read_inside(rootfs, ["etc", table])
    names: dict[int, str] = {}
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[2].isdigit():
            names.setdefault(int(fields[2]), fields[0])
    return names


def _read_inside(rootfs: Path, parts: list[str]) -> str:
    # The distro may have made /etc or the file a symlink to a host path:
    # never follow one, and read nothing rather than a host file.
    try:
        fd = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        for part in parts[:-1]:
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = child
        file_fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    except OSError:
        return ""
    finally:
        os.close(fd)
    with os.fdopen(file_fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return ""
        return f.read(1 << 22).decode("utf-8", "replace")


__all__ = ["export_tarball"]
