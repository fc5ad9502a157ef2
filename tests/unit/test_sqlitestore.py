"""The SQLite metadata store: its choice, its users, reconciliation after a
crash, unlinked open files (kernel/fs/sqlitestore.py). The file system
without user xattrs it is for is tested in tests/integration/test_metastore.py."""

from __future__ import annotations

import os
import stat as st
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from lxsub.distro.exporter import export_tarball
from lxsub.distro.importer import import_tarball
from lxsub.errors import LxError
from lxsub.kernel.creds import Creds
from lxsub.kernel.fs.linuxmeta import HostFile
from lxsub.kernel.fs.lxattr import LxMeta, read_meta_path
from lxsub.kernel.fs.sqlitestore import SqliteStore, meta_db_path, wants_sqlite
from lxsub.kernel.fs.volfs import VolFs
from lxsub.kernel.vfs.mount import MountTable
from lxsub.state import Registry
from tests.fixtures.metastore import db_inos, tree_inos
from tests.unit.test_importer import _member, write_tar

ALICE = Creds.for_user(1000, 1000, [1000])
SRC = str(Path(__file__).resolve().parents[2] / "src")


def _opened_and_killed(db: Path, tree: Path) -> None:
    """A process that opens the store for `tree` and dies without closing it
    (as a provider killed with SIGKILL)."""
    code = ("import os, sys; from lxsub.kernel.fs.sqlitestore import SqliteStore; "
            f"SqliteStore({str(db)!r}, tree={str(tree)!r}); os._exit(0)")
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, PYTHONPATH=SRC))


# -- the choice ------------------------------------------------------------------------

def test_the_switch_and_the_probe_choose_the_store(tmp_path, monkeypatch):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        monkeypatch.delenv("LX_METASTORE", raising=False)
        assert wants_sqlite(fd) is False             # ext4 here takes user xattrs
        assert os.listdir(tmp_path) == []            # the probe's scratch file is gone
        monkeypatch.setenv("LX_METASTORE", "sqlite")
        assert wants_sqlite(fd) is True
        monkeypatch.setenv("LX_METASTORE", "xattr")
        assert wants_sqlite(fd) is False
        monkeypatch.setenv("LX_METASTORE", "sqlight")
        with pytest.raises(LxError, match="LX_METASTORE='sqlight' is not a metadata store"):
            wants_sqlite(fd)
    finally:
        os.close(fd)


def test_an_import_with_the_switch_keeps_everything_in_the_database(tmp_path, monkeypatch, lx_home):
    """Owners of symlinks and FIFOs too (the xattr store cannot keep them),
    nothing in xattrs, the database recorded in the registry, and an export
    that gives the same members back."""
    monkeypatch.setenv("LX_METASTORE", "sqlite")
    D, F = tarfile.DIRTYPE, tarfile.REGTYPE
    tar = write_tar(tmp_path / "in.tar", [
        (_member("./", D, 0o755), None),
        (_member("./etc/", D, 0o755), None),
        (_member("./etc/shadow", F, 0o640, 0, 42), b"root:*:1::::::\n"),
        (_member("./usr/bin/passwd", F, 0o4755), b"#!/bin/sh\n"),
        (_member("./home/alice/", D, 0o2750, 1000, 1000), None),
        (_member("./home/alice/link", tarfile.SYMTYPE, 0o777, 1000, 1000, linkname="x"), None),
        (_member("./home/alice/fifo", tarfile.FIFOTYPE, 0o620, 1000, 5), None),
        (_member("./dev/null", tarfile.CHRTYPE, 0o666, devmajor=1, devminor=3), None),
        (_member("./etc/shadow2", tarfile.LNKTYPE, 0o640, 0, 42, linkname="etc/shadow"), None),
    ])
    registry = Registry(lx_home)
    distro = import_tarball(registry, "db", tmp_path / "d", tar)
    rootfs = Path(distro.rootfs)
    assert distro.meta_db == str(meta_db_path(rootfs)) and Path(distro.meta_db).is_file()
    assert read_meta_path(str(rootfs / "etc/shadow")) is None        # not in the xattr
    assert db_inos(Path(distro.meta_db)) == tree_inos(rootfs)
    store = SqliteStore(distro.meta_db, tree=rootfs)
    try:
        def view(rel: str) -> LxMeta:
            return store.load(HostFile.in_dir(os.open(rootfs, os.O_PATH), os.fsencode(rel)))
        assert view("etc/shadow") == LxMeta(st.S_IFREG | 0o640, 0, 42, 0)
        assert view("usr/bin/passwd") == LxMeta(st.S_IFREG | 0o4755, 0, 0, 0)
        assert view("home/alice/link") == LxMeta(st.S_IFLNK | 0o777, 1000, 1000, 0)
        assert view("home/alice/fifo") == LxMeta(st.S_IFIFO | 0o620, 1000, 5, 0)
        assert view("dev/null") == LxMeta(st.S_IFCHR | 0o666, 0, 0, os.makedev(1, 3))
    finally:
        store.close()
    export_tarball(registry.get("db"), tmp_path / "out.tar")
    with tarfile.open(tmp_path / "out.tar") as t:
        got = {m.name.lstrip("./"): (m.type, m.mode, m.uid, m.gid) for m in t.getmembers()}
    assert got["home/alice/link"] == (tarfile.SYMTYPE, 0o777, 1000, 1000)
    assert got["home/alice/fifo"] == (tarfile.FIFOTYPE, 0o620, 1000, 5)
    assert got["usr/bin/passwd"] == (tarfile.REGTYPE, 0o4755, 0, 0)
    assert got["dev/null"][:2] == (tarfile.CHRTYPE, 0o666)
    registry.unregister("db")
    assert not os.path.exists(distro.meta_db)                       # goes with the distro


# -- users and reconciliation --------------------------------------------------------------

def _tree_with_records(tmp_path: Path) -> tuple[Path, Path]:
    tree, db = tmp_path / "root", tmp_path / "meta.sqlite"
    tree.mkdir()
    (tree / "kept").write_text("x")
    (tree / "doomed").write_text("y")
    store = SqliteStore(db, tree=tree)
    for name in (b"", b"kept", b"doomed"):
        f = HostFile.in_dir(os.open(tree, os.O_PATH), name) if name else HostFile.of_fd(
            os.open(tree, os.O_PATH))
        kind = st.S_IFDIR if not name else st.S_IFREG
        store.save(f, LxMeta(kind | 0o750, 1000, 1000, 0))
    store.close()
    return tree, db


def test_a_killed_user_is_reconciled_by_the_next(tmp_path):
    """Killed mid-work: a record whose file went (dropped: a reused inode
    number would inherit it where there are no birth times), a file without
    record (given the default record, root's)."""
    tree, db = _tree_with_records(tmp_path)
    _opened_and_killed(db, tree)
    doomed = os.stat(tree / "doomed").st_ino
    (tree / "host-made").write_text("z")            # first: ext4 would give it doomed's number
    os.unlink(tree / "doomed")                      # while the killed one had it
    assert doomed in db_inos(db) and db_inos(db) != tree_inos(tree)

    store = SqliteStore(db, tree=tree)
    try:
        assert store.reconciled == (1, 1)
        assert db_inos(db) == tree_inos(tree)
        made = HostFile.in_dir(os.open(tree, os.O_PATH), b"host-made")
        assert store.load(made) == LxMeta(made.st.st_mode, 0, 0, 0)
        kept = HostFile.in_dir(os.open(tree, os.O_PATH), b"kept")
        assert store.load(kept) == LxMeta(st.S_IFREG | 0o750, 1000, 1000, 0)
    finally:
        store.close()


def test_a_clean_close_needs_no_reconciliation_and_a_live_user_is_not_reconciled(tmp_path):
    tree, db = _tree_with_records(tmp_path)
    (tree / "host-made").write_text("z")
    first = SqliteStore(db, tree=tree)             # the last one closed cleanly
    assert first.reconciled is None
    _opened_and_killed(db, tree)
    second = SqliteStore(db, tree=tree)            # first is alive: no walk under its feet
    assert second.reconciled is None
    second.close()
    first.close()
    third = SqliteStore(db, tree=tree)             # alone, and the killed one's row is there
    try:
        assert third.reconciled == (0, 1)
    finally:
        third.close()


def test_a_lost_database_is_made_again_from_the_tree(tmp_path):
    tree, db = _tree_with_records(tmp_path)
    os.unlink(db)
    store = SqliteStore(db, tree=tree)
    try:
        assert store.reconciled == (0, 3) and db_inos(db) == tree_inos(tree)
    finally:
        store.close()


def test_an_unlinked_open_file_keeps_its_record_until_its_number_is_reused(tmp_path):
    (tmp_path / "root").mkdir()
    store = SqliteStore(tmp_path / "meta.sqlite", tree=tmp_path / "root")
    fs = VolFs(str(tmp_path / "root"), store)
    root = MountTable(fs, "volfs").root_mount.root()
    try:
        fd = fs.create(root, b"f", os.O_RDWR, 0o640, ALICE)
        fs.unlink(root, b"f")
        assert os.fstat(fd).st_nlink == 0
        ino = os.fstat(fd).st_ino
        assert ino not in db_inos(tmp_path / "meta.sqlite")      # nothing left for a crash
        assert store.load(HostFile.of_fd(fd)) == LxMeta(st.S_IFREG | 0o640, 1000, 1000, 0)
        store.reborn(os.fstat(fd))                                 # the number is someone else's
        assert store.load(HostFile.of_fd(fd)) is None
        os.close(fd)
    finally:
        root.release()
        fs.remove_staging()
        store.close()


def test_the_journal_is_wal(tmp_path):
    store = SqliteStore(tmp_path / "meta.sqlite")
    try:
        assert store.journal == "wal" and store.local
    finally:
        store.close()


def test_a_second_host_is_refused_on_a_network_file_system(tmp_path, monkeypatch):
    """WAL's shared memory is one host's: a user on another host while one
    is live here would corrupt the database."""
    tree, db = _tree_with_records(tmp_path)
    monkeypatch.setattr("lxsub.kernel.fs.sqlitestore._LOCAL_FS", frozenset())
    first = SqliteStore(db, tree=tree)
    try:
        second = SqliteStore(db, tree=tree)            # the same host: fine
        second.close()
        first._db.execute("INSERT INTO openers (pid, host) VALUES (1, 'node17')")
        with pytest.raises(LxError, match="in use on host node17"):
            SqliteStore(db, tree=tree)
    finally:
        first.close()


def test_an_o_tmpfile_file_has_its_record_before_its_name(tmp_path):
    """open(O_TMPFILE) then linkat(2): the record is saved on the nameless
    inode and is the named file's (linuxmeta's contract)."""
    (tmp_path / "root").mkdir()
    store = SqliteStore(tmp_path / "meta.sqlite", tree=tmp_path / "root")
    fs = VolFs(str(tmp_path / "root"), store)
    root = MountTable(fs, "volfs").root_mount.root()
    try:
        fd = fs.open_tmpfile(root, os.O_RDWR, 0o640, ALICE)
        assert os.fstat(fd).st_nlink == 0
        assert store.load(HostFile.of_fd(fd)) == LxMeta(st.S_IFREG | 0o640, 1000, 1000, 0)
        os.link(f"/proc/self/fd/{fd}", "named", dst_dir_fd=root.fd, follow_symlinks=True)
        os.close(fd)
        named = HostFile.in_dir(root.fd, b"named")
        assert store.load(named) == LxMeta(st.S_IFREG | 0o640, 1000, 1000, 0)
    finally:
        root.release()
        fs.remove_staging()
        store.close()


# -- a record never outlives its file ----------------------------------------------------------

def _volfs(tmp_path: Path):
    (tmp_path / "root").mkdir(exist_ok=True)
    store = SqliteStore(tmp_path / "meta.sqlite", tree=tmp_path / "root")
    fs = VolFs(str(tmp_path / "root"), store)
    return store, fs, MountTable(fs, "volfs").root_mount.root()


def test_mkdir_of_a_taken_name_leaves_no_record(tmp_path):
    """The new directory is made and given its record away from its name;
    EEXIST takes the record with it (coreutils' `mkdir -p` meets EEXIST
    for every directory that is there)."""
    store, fs, root = _volfs(tmp_path)
    try:
        fs.mkdir(root, b"d", 0o755, ALICE)
        for _ in range(3):
            with pytest.raises(FileExistsError):
                fs.mkdir(root, b"d", 0o700, ALICE)
        with pytest.raises(FileExistsError):
            fs.mknod(root, b"d", st.S_IFREG | 0o600, 0, ALICE)
        assert db_inos(tmp_path / "meta.sqlite") == tree_inos(tmp_path / "root")
    finally:
        root.release()
        fs.remove_staging()
        store.close()


def test_an_inode_that_may_have_lost_its_last_name_unseen_is_checked_at_the_next_start(tmp_path):
    """FUSE and NFS keep an open file that loses its last name under a
    hidden one and delete it at its last close, unseen: here a host program
    stands for them. The next opener, alone, reconciles; one whose
    predecessor saw every end does not."""
    db = tmp_path / "meta.sqlite"
    store, fs, root = _volfs(tmp_path)
    try:
        for name in (b"seen", b"unseen"):
            os.close(fs.create(root, name, os.O_RDWR, 0o4750, ALICE))
            os.link(name, name + b".bak", src_dir_fd=root.fd, dst_dir_fd=root.fd)
            fs.unlink(root, name)                          # one name left
        fs.unlink(root, b"seen.bak")                       # its end, seen
        os.unlink(tmp_path / "root" / "unseen.bak")        # its end, not
        assert db_inos(db) != tree_inos(tmp_path / "root")
    finally:
        root.release()
        fs.remove_staging()
        store.close()
    again = SqliteStore(db, tree=tmp_path / "root")
    try:
        assert again.reconciled == (1, 0)
        assert db_inos(db) == tree_inos(tmp_path / "root")
    finally:
        again.close()
    third = SqliteStore(db, tree=tmp_path / "root")
    assert third.reconciled is None
    third.close()
