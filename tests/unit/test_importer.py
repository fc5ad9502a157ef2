"""Importing and exporting rootfs tarballs: metadata, safety, clean failure."""

from __future__ import annotations

import errno
import gzip
import io
import os
import stat
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from lxsub.distro.exporter import export_tarball
from lxsub.distro.importer import import_tarball
from lxsub.errors import EXIT_CANTCREAT, EXIT_DATAERR, EXIT_NOINPUT, EXIT_USAGE, LxError
from lxsub.kernel.fs.lxattr import XATTR_NAME, LxMeta, linux_view, read_meta_path
from lxsub.state import Registry

T0 = 1_500_000_000  # an arbitrary, recognisable mtime


# -- building archives --


def _member(name: str, type_: bytes, mode: int, uid: int = 0, gid: int = 0, **extra) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.mtime = extra.pop("mtime", T0)
    for key, value in extra.items():
        setattr(info, key, value)
    return info


def write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w") -> Path:
    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def rich_members() -> list[tuple[tarfile.TarInfo, bytes | None]]:
    D, F = tarfile.DIRTYPE, tarfile.REGTYPE
    return [
        (_member("./", D, 0o755, mtime=T0 + 1), None),
        (_member("./etc/", D, 0o755), None),
        (_member("./etc/passwd", F, 0o644), b"root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n"),
        (_member("./etc/group", F, 0o644), b"root:x:0:\ndisk:x:6:\nalice:x:1000:\n"),
        (_member("./etc/localtime", tarfile.SYMTYPE, 0o777, linkname="/usr/share/zoneinfo/UTC"), None),
        (_member("./home/", D, 0o755), None),
        (_member("./home/alice/", D, 0o700, 1000, 1000, mtime=T0 + 100), None),
        (_member("./home/alice/notes.txt", F, 0o640, 1000, 1000, mtime=T0 + 50), b"hello\n"),
        (_member("./bin/", D, 0o755), None),
        (_member("./bin/su", F, 0o4755, mtime=T0 + 7), b"\x7fELF fake su"),
        (_member("./bin/su-again", tarfile.LNKTYPE, 0o4755, linkname="./bin/su"), None),
        (_member("./usr/bin/wall", F, 0o2755, 0, 5), b"wall"),
        (_member("./dev/", D, 0o755), None),
        (_member("./dev/null", tarfile.CHRTYPE, 0o666, devmajor=1, devminor=3), None),
        (_member("./dev/sda", tarfile.BLKTYPE, 0o660, 0, 6, devmajor=8, devminor=0), None),
        (_member("./dev/initctl", tarfile.FIFOTYPE, 0o600), None),
        (_member("./tmp/", D, 0o1777, mtime=T0 + 3), None),
        (_member("./var/tmp/", D, 0o1777), None),
    ]


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    home = tmp_path / "lxhome"
    monkeypatch.setenv("LX_HOME", str(home))
    return Registry(home)


@pytest.fixture
def rich_tar(tmp_path: Path) -> Path:
    return write_tar(tmp_path / "rich.tar", rich_members())


def meta(rootfs: Path, rel: str) -> LxMeta | None:
    return read_meta_path(str(rootfs / rel))


def assert_import_fails(registry: Registry, target: Path, source, code: int) -> LxError:
    with pytest.raises(LxError) as info:
        import_tarball(registry, "evil", target, source)
    assert info.value.exit_code == code, info.value.message
    assert not target.exists(), "a failed import must remove what it created"
    assert registry.list() == []
    return info.value


# -- metadata --


def test_import_records_linux_metadata(registry: Registry, rich_tar: Path, tmp_path: Path) -> None:
    distro = import_tarball(registry, "rich", tmp_path / "d", rich_tar)
    root = distro.rootfs
    assert root == tmp_path / "d" / "rootfs"

    assert meta(root, "home/alice") == LxMeta(stat.S_IFDIR | 0o700, 1000, 1000)
    assert meta(root, "home/alice/notes.txt") == LxMeta(stat.S_IFREG | 0o640, 1000, 1000)
    assert meta(root, "bin/su") == LxMeta(stat.S_IFREG | 0o4755, 0, 0)
    assert meta(root, "usr/bin/wall") == LxMeta(stat.S_IFREG | 0o2755, 0, 5)
    assert meta(root, "dev/null") == LxMeta(stat.S_IFCHR | 0o666, 0, 0, os.makedev(1, 3))
    assert meta(root, "dev/sda") == LxMeta(stat.S_IFBLK | 0o660, 0, 6, os.makedev(8, 0))
    assert meta(root, "tmp") == LxMeta(stat.S_IFDIR | 0o1777, 0, 0)
    assert meta(root, ".") == LxMeta(stat.S_IFDIR | 0o755, 0, 0)
    # Parents the archive never listed are made like tar makes them.
    assert meta(root, "usr") == LxMeta(stat.S_IFDIR | 0o755, 0, 0)


def test_import_host_types_and_modes(registry: Registry, rich_tar: Path, tmp_path: Path) -> None:
    root = import_tarball(registry, "rich", tmp_path / "d", rich_tar).rootfs

    def host(rel: str) -> os.stat_result:
        return os.lstat(root / rel)

    # Devices are plain empty host files: nothing privileged was needed.
    for dev in ("dev/null", "dev/sda"):
        assert stat.S_ISREG(host(dev).st_mode) and host(dev).st_size == 0
    assert stat.S_ISFIFO(host("dev/initctl").st_mode)
    assert stat.S_ISLNK(host("etc/localtime").st_mode)
    assert os.readlink(root / "etc/localtime") == "/usr/share/zoneinfo/UTC"
    assert host("bin/su-again").st_ino == host("bin/su").st_ino
    assert (root / "bin/su").read_bytes() == b"\x7fELF fake su"
    # No setuid/sticky on the host, and the owner can always use the file.
    assert stat.S_IMODE(host("bin/su").st_mode) == 0o755
    assert stat.S_IMODE(host("home/alice/notes.txt").st_mode) == 0o640
    assert stat.S_IMODE(host("tmp").st_mode) == 0o777
    assert stat.S_IMODE(host("home/alice").st_mode) == 0o700
    assert stat.S_IMODE(host("dev/null").st_mode) == 0o666


def test_import_sets_times_directories_last(registry: Registry, rich_tar: Path, tmp_path: Path) -> None:
    root = import_tarball(registry, "rich", tmp_path / "d", rich_tar).rootfs
    assert os.lstat(root / "home/alice/notes.txt").st_mtime == T0 + 50
    assert os.lstat(root / "bin/su").st_mtime == T0 + 7
    assert os.lstat(root / "etc/localtime").st_mtime == T0
    # Directory times survive the creation of their contents.
    assert os.stat(root / "home/alice").st_mtime == T0 + 100
    assert os.stat(root).st_mtime == T0 + 1
    assert os.stat(root / "tmp").st_mtime == T0 + 3


def test_import_keeps_nanosecond_pax_times(registry: Registry, tmp_path: Path) -> None:
    info = _member("f", tarfile.REGTYPE, 0o644)
    info.pax_headers = {"mtime": "1500000000.123456789", "atime": "1400000000.5"}
    tar = write_tar(tmp_path / "t.tar", [(info, b"x")])
    root = import_tarball(registry, "ns", tmp_path / "d", tar).rootfs
    st = os.lstat(root / "f")
    assert st.st_mtime_ns == 1_500_000_000_123_456_789
    assert st.st_atime_ns == 1_400_000_000_500_000_000


def test_import_adds_missing_mount_points(registry: Registry, tmp_path: Path) -> None:
    tar = write_tar(tmp_path / "t.tar", [
        (_member("etc/hostname", tarfile.REGTYPE, 0o644), b"box\n"),
        (_member("tmp/", tarfile.DIRTYPE, 0o700, 5, 5), None),  # the archive's own wins
    ])
    root = import_tarball(registry, "m", tmp_path / "d", tar).rootfs
    for rel in ("proc", "sys", "dev", "dev/pts", "run", "mnt"):
        assert stat.S_ISDIR(os.lstat(root / rel).st_mode), rel
        assert meta(root, rel).uid == 0 and stat.S_ISDIR(meta(root, rel).mode), rel
    assert meta(root, "dev/shm") == LxMeta(stat.S_IFDIR | 0o1777, 0, 0)
    assert meta(root, "tmp") == LxMeta(stat.S_IFDIR | 0o700, 5, 5)


def test_import_leaves_a_symlinked_mount_point_alone(registry: Registry, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    tar = write_tar(tmp_path / "t.tar", [
        (_member("dev", tarfile.SYMTYPE, 0o777, linkname=str(outside)), None),
    ])
    root = import_tarball(registry, "m", tmp_path / "d", tar).rootfs
    assert os.path.islink(root / "dev")
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("compression", ["", "gz", "xz", "bz2"])
def test_import_detects_compression(registry: Registry, tmp_path: Path, compression: str) -> None:
    tar = write_tar(tmp_path / "t.tar", rich_members(), mode=f"w:{compression}")
    root = import_tarball(registry, "c", tmp_path / "d", tar).rootfs
    assert meta(root, "bin/su") == LxMeta(stat.S_IFREG | 0o4755, 0, 0)


def test_import_from_stdin_pipe(registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_tar(tmp_path / "t.tgz", rich_members(), mode="w:gz").read_bytes()
    read_fd, write_fd = os.pipe()

    def feed() -> None:
        with os.fdopen(write_fd, "wb") as w:
            w.write(data)

    writer = threading.Thread(target=feed)
    writer.start()
    with os.fdopen(read_fd, "rb") as pipe:  # not seekable, like a real stdin
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(pipe))
        distro = import_tarball(registry, "piped", tmp_path / "d", "-")
    writer.join()
    assert meta(distro.rootfs, "dev/null") == LxMeta(stat.S_IFCHR | 0o666, 0, 0, os.makedev(1, 3))


def test_import_registers_and_first_becomes_default(registry: Registry, rich_tar: Path, tmp_path: Path) -> None:
    import_tarball(registry, "one", tmp_path / "d1", rich_tar)
    import_tarball(registry, "two", tmp_path / "d2", rich_tar)
    assert [d.name for d in registry.list()] == ["one", "two"]
    assert registry.default().name == "one"
    assert registry.get("two").rootfs == tmp_path / "d2" / "rootfs"


def test_import_into_existing_empty_directory(registry: Registry, rich_tar: Path, tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    assert import_tarball(registry, "x", tmp_path / "d", rich_tar).rootfs.is_dir()


def test_later_member_replaces_earlier(registry: Registry, tmp_path: Path) -> None:
    tar = write_tar(tmp_path / "t.tar", [
        (_member("a", tarfile.SYMTYPE, 0o777, linkname="/etc/passwd"), None),
        (_member("a", tarfile.REGTYPE, 0o600, 7, 7), b"now a file"),
    ])
    root = import_tarball(registry, "r", tmp_path / "d", tar).rootfs
    assert (root / "a").read_bytes() == b"now a file"
    assert meta(root, "a") == LxMeta(stat.S_IFREG | 0o600, 7, 7)


def test_leading_slash_is_stripped_like_gnu_tar(registry: Registry, tmp_path: Path) -> None:
    escape = tmp_path / "abs-escape"
    tar = write_tar(tmp_path / "t.tar", [(_member(f"/{escape}/file", tarfile.REGTYPE, 0o644), b"x")])
    root = import_tarball(registry, "s", tmp_path / "d", tar).rootfs
    assert not escape.exists()
    assert (root / str(escape).lstrip("/") / "file").read_bytes() == b"x"


# -- hostile and broken archives --


def test_rejects_dotdot(registry: Registry, tmp_path: Path) -> None:
    tar = write_tar(tmp_path / "t.tar", [
        (_member("ok", tarfile.REGTYPE, 0o644), b"fine"),
        (_member("../evil", tarfile.REGTYPE, 0o644), b"bad"),
    ])
    err = assert_import_fails(registry, tmp_path / "d", tar, EXIT_DATAERR)
    assert "'../evil'" in err.message and str(tar) in err.message
    assert not (tmp_path / "evil").exists()


def test_rejects_dotdot_inside_path(registry: Registry, tmp_path: Path) -> None:
    tar = write_tar(tmp_path / "t.tar", [(_member("a/../../evil", tarfile.REGTYPE, 0o644), b"bad")])
    assert_import_fails(registry, tmp_path / "d", tar, EXIT_DATAERR)
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize("second", [
    (tarfile.REGTYPE, "link/pwned"),
    (tarfile.DIRTYPE, "link/newdir"),
    (tarfile.SYMTYPE, "link/sym"),
    (tarfile.FIFOTYPE, "link/fifo"),
])
def test_rejects_writing_through_symlink(registry: Registry, tmp_path: Path, second) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    type_, name = second
    tar = write_tar(tmp_path / "t.tar", [
        (_member("link", tarfile.SYMTYPE, 0o777, linkname=str(outside)), None),
        (_member(name, type_, 0o644, linkname="x"), b"pwned" if type_ == tarfile.REGTYPE else None),
    ])
    err = assert_import_fails(registry, tmp_path / "d", tar, EXIT_DATAERR)
    assert "symlink" in err.message
    assert list(outside.iterdir()) == []


def test_rejects_relative_symlink_escape(registry: Registry, tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    tar = write_tar(tmp_path / "t.tar", [
        (_member("up", tarfile.SYMTYPE, 0o777, linkname="../../outside"), None),
        (_member("up/pwned", tarfile.REGTYPE, 0o644), b"x"),
    ])
    assert_import_fails(registry, tmp_path / "d", tar, EXIT_DATAERR)
    assert list((tmp_path / "outside").iterdir()) == []


def test_hardlink_cannot_reach_outside(registry: Registry, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("host secret")
    tar = write_tar(tmp_path / "t.tar", [
        (_member("steal", tarfile.LNKTYPE, 0o644, linkname="../secret"), None),
    ])
    assert_import_fails(registry, tmp_path / "d", tar, EXIT_DATAERR)
    assert os.stat(secret).st_nlink == 1


def test_hardlink_through_symlink_is_rejected(registry: Registry, tmp_path: Path) -> None:
    secret_dir = tmp_path / "host"
    secret_dir.mkdir()
    (secret_dir / "secret").write_text("host secret")
    tar = write_tar(tmp_path / "t.tar", [
        (_member("h", tarfile.SYMTYPE, 0o777, linkname=str(secret_dir)), None),
        (_member("steal", tarfile.LNKTYPE, 0o644, linkname="h/secret"), None),
    ])
    assert_import_fails(registry, tmp_path / "d", tar, EXIT_DATAERR)
    assert os.stat(secret_dir / "secret").st_nlink == 1


def test_hardlink_to_missing_member(registry: Registry, tmp_path: Path) -> None:
    tar = write_tar(tmp_path / "t.tar", [(_member("x", tarfile.LNKTYPE, 0o644, linkname="nowhere"), None)])
    assert_import_fails(registry, tmp_path / "d", tar, EXIT_DATAERR)


def test_file_cannot_replace_non_empty_directory(registry: Registry, tmp_path: Path) -> None:
    tar = write_tar(tmp_path / "t.tar", [
        (_member("d/f", tarfile.REGTYPE, 0o644), b"x"),
        (_member("d", tarfile.REGTYPE, 0o644), b"y"),
    ])
    assert_import_fails(registry, tmp_path / "d", tar, EXIT_DATAERR)


def test_corrupt_gzip(registry: Registry, tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + b"\xff" * 4096)
    err = assert_import_fails(registry, tmp_path / "d", bad, EXIT_DATAERR)
    assert str(bad) in err.message


def test_truncated_gzip(registry: Registry, tmp_path: Path) -> None:
    big = [(_member("big", tarfile.REGTYPE, 0o644), os.urandom(200_000))]
    data = write_tar(tmp_path / "t.tgz", big, mode="w:gz").read_bytes()
    cut = tmp_path / "cut.tgz"
    cut.write_bytes(data[: len(data) // 2])
    assert_import_fails(registry, tmp_path / "d", cut, EXIT_DATAERR)


def test_truncated_plain_tar(registry: Registry, tmp_path: Path) -> None:
    data = write_tar(tmp_path / "t.tar", [(_member("big", tarfile.REGTYPE, 0o644), b"z" * 100_000)]).read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[:50_000])
    assert_import_fails(registry, tmp_path / "d", cut, EXIT_DATAERR)


@pytest.mark.parametrize("content", [b"", b"this is not a tarball at all\n" * 40])
def test_not_a_tarball(registry: Registry, tmp_path: Path, content: bytes) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(content)
    err = assert_import_fails(registry, tmp_path / "d", junk, EXIT_DATAERR)
    assert str(junk) in err.message


def test_missing_tarball(registry: Registry, tmp_path: Path) -> None:
    err = assert_import_fails(registry, tmp_path / "d", tmp_path / "nope.tar", EXIT_NOINPUT)
    assert "nope.tar" in err.message


def test_non_empty_target_is_left_alone(registry: Registry, rich_tar: Path, tmp_path: Path) -> None:
    target = tmp_path / "d"
    target.mkdir()
    (target / "precious").write_text("keep me")
    with pytest.raises(LxError) as info:
        import_tarball(registry, "x", target, rich_tar)
    assert info.value.exit_code == EXIT_CANTCREAT
    assert os.listdir(target) == ["precious"]
    assert registry.list() == []


def test_failure_keeps_a_preexisting_empty_target(registry: Registry, tmp_path: Path) -> None:
    target = tmp_path / "d"
    target.mkdir()
    tar = write_tar(tmp_path / "t.tar", [(_member("../x", tarfile.REGTYPE, 0o644), b"")])
    with pytest.raises(LxError):
        import_tarball(registry, "x", target, tar)
    assert target.is_dir() and os.listdir(target) == []


def test_duplicate_name_fails_before_extracting(registry: Registry, rich_tar: Path, tmp_path: Path) -> None:
    import_tarball(registry, "dup", tmp_path / "d1", rich_tar)
    with pytest.raises(LxError) as info:
        import_tarball(registry, "dup", tmp_path / "d2", rich_tar)
    assert info.value.exit_code == EXIT_CANTCREAT
    assert not (tmp_path / "d2").exists()
    assert registry.get("dup").rootfs == tmp_path / "d1" / "rootfs"


def test_invalid_name(registry: Registry, rich_tar: Path, tmp_path: Path) -> None:
    with pytest.raises(LxError) as info:
        import_tarball(registry, "no/slash", tmp_path / "d", rich_tar)
    assert info.value.exit_code == EXIT_USAGE
    assert not (tmp_path / "d").exists()


class _InterruptingReader(io.RawIOBase):
    """A stream that delivers some of an archive, then the user presses Ctrl-C."""

    def __init__(self, data: bytes, after: int) -> None:
        self.data, self.pos, self.after = data, 0, after

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        if self.pos >= self.after:
            raise KeyboardInterrupt
        n = min(len(buf), self.after - self.pos, 4096)
        buf[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


def test_interrupt_leaves_nothing(registry: Registry, tmp_path: Path) -> None:
    members = rich_members() + [(_member("big", tarfile.REGTYPE, 0o644), b"b" * 300_000)]
    data = write_tar(tmp_path / "t.tar", members).read_bytes()
    with pytest.raises(KeyboardInterrupt):
        import_tarball(registry, "int", tmp_path / "d", _InterruptingReader(data, len(data) - 100_000))
    assert not (tmp_path / "d").exists()
    assert registry.list() == []


def test_host_write_failure_is_a_clear_error(registry: Registry, rich_tar: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write

    def disk_full(fd, data):
        if len(data) > 5:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", disk_full)
    err = assert_import_fails(registry, tmp_path / "d", rich_tar, EXIT_CANTCREAT)
    assert "No space left" in err.message


def test_no_xattr_support_is_a_clear_error(registry: Registry, rich_tar: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def no_xattrs(*args, **kwargs):
        raise OSError(errno.ENOTSUP, os.strerror(errno.ENOTSUP))

    monkeypatch.setattr(os, "setxattr", no_xattrs)
    monkeypatch.setenv("LX_METASTORE", "xattr")      # asked for xattrs where there are none
    err = assert_import_fails(registry, tmp_path / "d", rich_tar, EXIT_CANTCREAT)
    assert "extended attributes" in err.message and "LX_METASTORE" in err.message


def test_no_xattr_support_chooses_the_sqlite_store(registry: Registry, rich_tar: Path,
                                                   tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe's setxattr fails: the distro's metadata goes to its database."""
    def no_xattrs(*args, **kwargs):
        raise OSError(errno.ENOTSUP, os.strerror(errno.ENOTSUP))

    monkeypatch.setattr(os, "setxattr", no_xattrs)
    monkeypatch.delenv("LX_METASTORE", raising=False)
    distro = import_tarball(registry, "nox", tmp_path / "d", rich_tar)
    assert distro.meta_db == str(tmp_path / "d" / "rootfs.lxmeta.sqlite")
    assert registry.get("nox").meta_db == distro.meta_db


# -- export and round trip --


def snapshot(root: Path) -> dict[str, tuple]:
    """Everything the Linux view depends on, per path."""
    tree: dict[str, tuple] = {}
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [""] + dirnames + filenames:
            path = os.path.join(dirpath, name) if name else dirpath
            rel = os.path.relpath(path, root)
            if name == "" and rel != ".":
                continue
            st = os.lstat(path)
            kind = stat.S_IFMT(st.st_mode)
            link_group = None
            if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
                link_group = inodes.setdefault(st.st_ino, rel)
            tree[rel] = (
                kind,
                stat.S_IMODE(st.st_mode),
                linux_view(st, read_meta_path(path)),
                st.st_mtime_ns,
                os.readlink(path) if stat.S_ISLNK(st.st_mode) else None,
                open(path, "rb").read() if stat.S_ISREG(st.st_mode) else None,
                link_group,
            )
    return tree


def test_round_trip_is_identical(registry: Registry, rich_tar: Path, tmp_path: Path) -> None:
    first = import_tarball(registry, "a", tmp_path / "a", rich_tar)
    # Sub-second times and a name that is not UTF-8 must survive too.
    os.utime(first.rootfs / "bin/su", ns=(1, 1_600_000_000_987_654_321), follow_symlinks=False)
    (first.rootfs / "bin").joinpath(os.fsdecode(b"caf\xe9")).write_bytes(b"latin-1 name")
    exported = tmp_path / "a.tar.xz"
    export_tarball(first, exported)
    second = import_tarball(registry, "b", tmp_path / "b", exported)
    assert snapshot(second.rootfs) == snapshot(first.rootfs)


def test_export_to_stdout_and_back(registry: Registry, rich_tar: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    first = import_tarball(registry, "a", tmp_path / "a", rich_tar)
    out = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(out))
    export_tarball(first, "-")
    data = out.getvalue()
    assert data[257:262] == b"ustar"  # uncompressed when writing to a stream
    second = import_tarball(registry, "b", tmp_path / "b", io.BytesIO(data))
    assert snapshot(second.rootfs) == snapshot(first.rootfs)


def test_export_members_carry_linux_metadata(registry: Registry, rich_tar: Path, tmp_path: Path) -> None:
    distro = import_tarball(registry, "a", tmp_path / "a", rich_tar)
    out = tmp_path / "out.tar.gz"
    export_tarball(distro, out)
    assert gzip.open(out).read(1)  # the suffix chose gzip
    with tarfile.open(out) as tar:
        members = {m.name: m for m in tar.getmembers()}
    su = members["./bin/su"]
    assert (su.mode, su.uid, su.uname) == (0o4755, 0, "root")
    alice = members["./home/alice"]
    assert alice.isdir() and (alice.mode, alice.uid, alice.gid) == (0o700, 1000, 1000)
    assert (alice.uname, alice.gname) == ("alice", "alice")
    null = members["./dev/null"]
    assert null.ischr() and (null.devmajor, null.devminor) == (1, 3)
    sda = members["./dev/sda"]
    assert sda.isblk() and (sda.devmajor, sda.devminor, sda.gname) == (8, 0, "disk")
    assert members["./dev/initctl"].isfifo()
    assert members["./tmp"].mode == 0o1777
    links = {members["./bin/su"].type, members["./bin/su-again"].type}
    assert links == {tarfile.REGTYPE, tarfile.LNKTYPE}
    assert members["./etc/localtime"].linkname == "/usr/share/zoneinfo/UTC"


def test_export_defaults_for_files_without_metadata(registry: Registry, rich_tar: Path, tmp_path: Path) -> None:
    distro = import_tarball(registry, "a", tmp_path / "a", rich_tar)
    host_made = distro.rootfs / "etc/host-made"
    host_made.write_text("made by a host tool")
    os.chmod(host_made, 0o604)
    assert XATTR_NAME not in os.listxattr(host_made)
    out = tmp_path / "out.tar"
    export_tarball(distro, out)
    with tarfile.open(out) as tar:
        member = tar.getmember("./etc/host-made")
    assert (member.mode, member.uid, member.gid) == (0o604, 0, 0)


def test_export_does_not_follow_a_symlinked_etc(registry: Registry, tmp_path: Path) -> None:
    host_etc = tmp_path / "host-etc"
    host_etc.mkdir()
    (host_etc / "passwd").write_text("hostonly:x:0:0::/:/bin/sh\n")
    tar = write_tar(tmp_path / "t.tar", [
        (_member("etc", tarfile.SYMTYPE, 0o777, linkname=str(host_etc)), None),
        (_member("f", tarfile.REGTYPE, 0o644), b""),
    ])
    distro = import_tarball(registry, "a", tmp_path / "a", tar)
    out = tmp_path / "out.tar"
    export_tarball(distro, out)
    with tarfile.open(out) as tar_in:
        assert tar_in.getmember("./f").uname == ""
        assert "./etc/passwd" not in tar_in.getnames()


def test_failed_export_leaves_no_partial_file(registry: Registry, rich_tar: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    distro = import_tarball(registry, "a", tmp_path / "a", rich_tar)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    real_addfile = tarfile.TarFile.addfile
    calls = []

    def failing_addfile(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_addfile(self, *args, **kwargs)

    monkeypatch.setattr(tarfile.TarFile, "addfile", failing_addfile)
    with pytest.raises(LxError) as info:
        export_tarball(distro, out_dir / "x.tar.gz")
    assert info.value.exit_code == EXIT_CANTCREAT and "No space left" in info.value.message
    assert os.listdir(out_dir) == []


# -- RootfsWriter: several archives into one tree (the installer's .deb unpacking) --


def test_rootfs_writer_merges_archives_with_renames(tmp_path: Path) -> None:
    from lxsub.distro.importer import RootfsWriter
    from lxsub.distro.installer import merged_usr

    D, F = tarfile.DIRTYPE, tarfile.REGTYPE
    one = write_tar(tmp_path / "one.tar", [
        (_member("./", D, 0o755), None),
        (_member("./bin/", D, 0o755), None),
        (_member("./bin/bash", F, 0o755), b"bash"),
        (_member("./bin/rbash", tarfile.LNKTYPE, 0o755, linkname="./bin/bash"), None),
    ])
    two = write_tar(tmp_path / "two.tar", [
        (_member("./usr/bin/passwd", F, 0o4755, 0, 0), b"passwd"),
        (_member("./var/mail/", D, 0o2775, 0, 8), None),
    ])
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    writer = RootfsWriter(rootfs)
    try:
        writer.make_directory("usr", LxMeta(stat.S_IFDIR | 0o755, 0, 0))
        writer.make_directory("usr/bin", LxMeta(stat.S_IFDIR | 0o755, 0, 0))
        writer.make_symlink("bin", "usr/bin")
        for tar in (one, two):
            with open(tar, "rb") as f:
                writer.add_archive(f, tar.name, rename=merged_usr)
        writer.finish()
    finally:
        writer.close()
    assert os.readlink(rootfs / "bin") == "usr/bin"
    assert (rootfs / "usr/bin/bash").read_bytes() == b"bash"
    assert os.stat(rootfs / "usr/bin/rbash").st_ino == os.stat(rootfs / "usr/bin/bash").st_ino
    assert read_meta_path(str(rootfs / "usr/bin/passwd")) == LxMeta(stat.S_IFREG | 0o4755, 0, 0)
    assert read_meta_path(str(rootfs / "var/mail")) == LxMeta(stat.S_IFDIR | 0o2775, 0, 8)
    assert (rootfs / "proc").is_dir() and (rootfs / "tmp").is_dir()  # mount points added


def test_busybox_entries_layout(tmp_path: Path) -> None:
    from lxsub.distro.importer import RootfsWriter
    from lxsub.distro.installer import (BUSYBOX_ACCOUNTS, BUSYBOX_GROUPS, busybox_entries,
                                        busybox_etc, write_entries)

    etc = busybox_etc(BUSYBOX_ACCOUNTS, BUSYBOX_GROUPS, "bb")
    entries = busybox_entries(b"\x7fELF", ["bin/sh", "usr/bin/env", "sbin/x/y"], etc,
                              dirs={"home/u": (0o750, 1000, 1000)}, mtime=T0, files_mtime=T0 + 1)
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    writer = RootfsWriter(rootfs)
    try:
        write_entries(entries, writer)
        writer.finish()
    finally:
        writer.close()
    assert os.readlink(rootfs / "bin/sh") == "/bin/busybox"
    assert os.readlink(rootfs / "sbin/x/y") == "/bin/busybox"  # parents made
    assert os.stat(rootfs / "bin/busybox").st_mtime == T0
    assert read_meta_path(str(rootfs / "tmp")) == LxMeta(stat.S_IFDIR | 0o1777, 0, 0)
    assert read_meta_path(str(rootfs / "root")) == LxMeta(stat.S_IFDIR | 0o700, 0, 0)
    assert read_meta_path(str(rootfs / "home/u")) == LxMeta(stat.S_IFDIR | 0o750, 1000, 1000)
    assert read_meta_path(str(rootfs / "etc/shadow")) == LxMeta(stat.S_IFREG | 0o600, 0, 0)
    assert (rootfs / "etc/passwd").read_text().startswith("root:x:0:0:root:/root:/bin/sh\n")
    assert "nogroup:x:65534:" in (rootfs / "etc/group").read_text()
    assert (rootfs / "etc/hostname").read_text() == "bb\n"


def test_second_stage_script_installs_core_packages_first(tmp_path: Path) -> None:
    from lxsub.distro.installer import second_stage_script

    names = ["base-passwd", "base-files", "dpkg", "libc6", "perl-base", "mawk", "debconf", "bash"]
    packages = [(n, "1:2.0" if n == "dpkg" else "1.0", "amd64") for n in names]
    debs = [tmp_path / f"{n}_1.0_amd64.deb" for n in names]
    script = second_stage_script(packages, debs)
    order = [script.index(f"--install {n}_1.0_amd64.deb") for n in names[:-1]]
    assert order == sorted(order)
    assert "Version: %s" in script and "1:2.0 > /var/lib/dpkg/status" in script
    assert script.index("--unpack base-passwd_1.0_amd64.deb") > order[-1]
    assert "dpkg --configure -a" in script and "set -e" in script
