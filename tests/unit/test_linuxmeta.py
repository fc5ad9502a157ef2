"""The Linux view over a host tree (kernel/fs/linuxmeta.py), against its
stores: VolFs (the user.lxsub.meta attribute, and memory for FIFOs), TmpFs
(memory) and VolFs over a SQLite database (for hosts without user xattrs).
Each test drives the real file system over real host files."""

from __future__ import annotations

import os
import stat as st

import pytest

from lxsub.kernel.creds import Creds
from lxsub.kernel.fs import linuxmeta
from lxsub.kernel.fs.linuxmeta import ByType, HostFile, MemoryStore, XattrStore
from lxsub.kernel.fs.sqlitestore import SqliteStore
from lxsub.kernel.fs.lxattr import LxMeta
from lxsub.kernel.fs.tmpfs import TmpFs
from lxsub.kernel.fs.volfs import VolFs
from lxsub.kernel.vfs.caller import Caller
from lxsub.kernel.vfs.mount import MountTable

ROOT = Creds()
AS_ROOT = Caller(ROOT)      # file system operations done for root
STAFF = 50
ALICE = Creds.for_user(1000, 1000)                  # not in group 50
BOB = Creds.for_user(1001, 1001, groups=(STAFF,))   # in group 50


class _Host:
    """What TmpFs asks of its instance: where to fall back if the host has
    no private tmpfs for us, and a log for saying so."""

    def __init__(self, scratch: str) -> None:
        self._scratch = scratch
        self.log = self

    def once(self, key: str, msg: str) -> None:
        pass

    def scratch_dir(self) -> str:
        return self._scratch


@pytest.fixture(params=["volfs", "tmpfs", "volfs-sqlite"])
def tree(request, tmp_path):
    if request.param == "tmpfs":
        fs = TmpFs(_Host(str(tmp_path)), "size=1m,mode=755")
    else:
        (tmp_path / "root").mkdir()
        store = SqliteStore(tmp_path / "meta.db") if request.param == "volfs-sqlite" else None
        fs = VolFs(str(tmp_path / "root"), store)
    mounts = MountTable(fs, request.param)
    root = mounts.root_mount.root()
    yield fs, root
    root.release()
    if request.param == "tmpfs":
        fs.unmounted()
    else:
        fs.remove_staging()


def attr(fs, parent, name: bytes):
    node = fs.lookup(parent, name, AS_ROOT)
    try:
        return fs.getattr(node, AS_ROOT)
    finally:
        node.release()


def change(fs, parent, name: bytes, op) -> None:
    node = fs.lookup(parent, name, AS_ROOT)
    try:
        op(node)
    finally:
        node.release()


def make_file(fs, parent, name: bytes, mode: int, creds: Creds) -> None:
    os.close(fs.create(parent, name, os.O_WRONLY, mode, creds))


def setgid_dir(fs, root, name: bytes = b"shared") -> object:
    """A directory of group 50, setgid, writable by all; its node."""
    fs.mkdir(root, name, 0o777, ROOT)
    change(fs, root, name, lambda n: fs.chown(n, 0, STAFF, AS_ROOT))
    change(fs, root, name, lambda n: fs.chmod(n, 0o2777, AS_ROOT))
    return fs.lookup(root, name, AS_ROOT)


def test_setgid_directory_gives_its_group(tree):
    fs, root = tree
    shared = setgid_dir(fs, root)
    try:
        fs.mkdir(shared, b"sub", 0o755, ALICE)
        make_file(fs, shared, b"file", 0o644, ALICE)
        sub, f = attr(fs, shared, b"sub"), attr(fs, shared, b"file")
    finally:
        shared.release()
    # inode_init_owner: the directory's group; new directories stay setgid.
    assert (sub.uid, sub.gid) == (1000, STAFF)
    assert sub.mode == st.S_IFDIR | st.S_ISGID | 0o755
    assert (f.uid, f.gid, f.mode) == (1000, STAFF, st.S_IFREG | 0o644)
    make_file(fs, root, b"plain", 0o644, ALICE)
    assert attr(fs, root, b"plain").gid == 1000


def test_setgid_file_of_a_group_not_ours_loses_the_bit(tree):
    fs, root = tree
    shared = setgid_dir(fs, root)
    try:
        make_file(fs, shared, b"alice", 0o2755, ALICE)   # not in group 50
        make_file(fs, shared, b"bob", 0o2755, BOB)       # in group 50
        alice, bob = attr(fs, shared, b"alice"), attr(fs, shared, b"bob")
    finally:
        shared.release()
    # mode_strip_sgid (Linux inode_init_owner): no setgid file of group 50
    # made by a non-member without CAP_FSETID.
    assert alice.mode == st.S_IFREG | 0o755 and alice.gid == STAFF
    assert bob.mode == st.S_IFREG | st.S_ISGID | 0o755


def test_chmod_clears_setgid_for_a_non_member(tree):
    fs, root = tree
    make_file(fs, root, b"f", 0o644, ROOT)
    change(fs, root, b"f", lambda n: fs.chown(n, 1000, STAFF, AS_ROOT))
    for creds, want in ((ALICE, 0o755), (BOB, 0o2755), (ROOT, 0o2755)):
        mode = linuxmeta.chmod_mode(0o2755, attr(fs, root, b"f").gid, creds)
        change(fs, root, b"f", lambda n: fs.chmod(n, mode, AS_ROOT))
        assert attr(fs, root, b"f").mode == st.S_IFREG | want, creds


def test_chown_clears_set_id_bits(tree):
    fs, root = tree
    cases = ((b"exec", st.S_IFREG, 0o6755, 0o0755),      # both go
             (b"locking", st.S_IFREG, 0o6745, 0o2745),   # setgid without g+x stays
             (b"dir", st.S_IFDIR, 0o2775, 0o2775))       # directories keep theirs
    for name, kind, mode, after in cases:
        if kind == st.S_IFDIR:
            fs.mkdir(root, name, 0o755, ROOT)
        else:
            make_file(fs, root, name, 0o644, ROOT)
        change(fs, root, name, lambda n: fs.chmod(n, mode, AS_ROOT))
        assert fs.chown_clears_set_id
        change(fs, root, name, lambda n: fs.chown(n, 1000, -1, AS_ROOT))
        a = attr(fs, root, name)
        assert (a.mode, a.uid, a.gid) == (kind | after, 1000, 0), name


def test_device_nodes_and_fifos(tree):
    fs, root = tree
    rdev = os.makedev(1, 3)
    fs.mknod(root, b"null", st.S_IFCHR | 0o666, rdev, ROOT)
    fs.mknod(root, b"fifo", st.S_IFIFO | 0o640, 0, ALICE)
    null, fifo = attr(fs, root, b"null"), attr(fs, root, b"fifo")
    assert (null.mode, null.rdev, null.size) == (st.S_IFCHR | 0o666, rdev, 0)
    assert st.S_ISREG(os.stat(b"null", dir_fd=root.fd).st_mode)   # an empty host file
    assert (fifo.mode, fifo.uid, fifo.gid, fifo.rdev) == (st.S_IFIFO | 0o640, 1000, 1000, 0)
    # A record follows the inode: a new name does not lose it.
    fs.rename(root, b"fifo", root, b"pipe")
    assert attr(fs, root, b"pipe").uid == 1000
    change(fs, root, b"pipe", lambda n: fs.chown(n, 1001, 1001, AS_ROOT))
    assert (attr(fs, root, b"pipe").uid, attr(fs, root, b"pipe").gid) == (1001, 1001)


def test_stores_keep_what_they_can(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    os.mkfifo(tmp_path / "fifo")
    fd = os.open(tmp_path, os.O_PATH)
    try:
        fifo, dir_ = HostFile.in_dir(fd, b"fifo"), HostFile.in_dir(fd, b"d")
        xattrs, memory = XattrStore(), MemoryStore(check_birth=True)
        assert not xattrs.keeps(fifo.st.st_mode) and xattrs.keeps(dir_.st.st_mode)
        both = ByType(xattrs, memory)
        both.save(fifo, LxMeta(st.S_IFIFO | 0o600, 7, 8))
        both.save(dir_, LxMeta(st.S_IFDIR | 0o700, 9, 9))
        assert memory.load(fifo) == LxMeta(st.S_IFIFO | 0o600, 7, 8)
        assert xattrs.load(dir_) == LxMeta(st.S_IFDIR | 0o700, 9, 9)
        assert memory.load(dir_) is None
        # A record of another file type is not this file's: root's, host mode.
        xattrs.save(dir_, LxMeta(st.S_IFREG | 0o644, 9, 9))
        view = linuxmeta.LinuxMeta(xattrs).get(dir_)
        assert (view.mode, view.uid) == (dir_.st.st_mode, 0)
    finally:
        os.close(fd)


def test_roots_symlinks_leave_nothing_to_track(tmp_path):
    """VolFs keeps symlinks' views in memory, but one that shows what any
    host-made symlink shows (root's) is no record: dpkg's symlinks do not
    make every later unlink stat its victim first."""
    (tmp_path / "root").mkdir()
    fs = VolFs(str(tmp_path / "root"))
    root = MountTable(fs, "volfs").root_mount.root()
    try:
        fs.symlink(root, b"by-root", b"target", ROOT)
        assert not fs.linux.store.tracks_inodes()
        fs.symlink(root, b"by-alice", b"target", ALICE)
        assert fs.linux.store.tracks_inodes()
        assert attr(fs, root, b"by-alice").uid == 1000
        fs.unlink(root, b"by-alice")
        assert not fs.linux.store.tracks_inodes()
    finally:
        root.release()
        fs.remove_staging()


def test_chmod_of_a_host_made_fifo_to_its_own_mode_sticks(tmp_path):
    """A FIFO a host tool made 0444 shows 0444; root's chmod 0444 must not
    leave the host's 0644 (the bits the provider needs) showing instead."""
    (tmp_path / "root").mkdir()
    os.mkfifo(tmp_path / "root" / "p")
    os.chmod(tmp_path / "root" / "p", 0o444)
    fs = VolFs(str(tmp_path / "root"))
    root = MountTable(fs, "volfs").root_mount.root()
    try:
        assert attr(fs, root, b"p").mode == st.S_IFIFO | 0o444
        change(fs, root, b"p", lambda n: fs.chmod(n, 0o444, AS_ROOT))
        assert attr(fs, root, b"p").mode == st.S_IFIFO | 0o444
        assert os.stat(tmp_path / "root" / "p").st_mode & 0o777 == 0o644
    finally:
        root.release()
        fs.remove_staging()


def test_sqlite_records_outlive_the_provider_and_belong_to_one_inode(tmp_path):
    """No user xattrs needed: the records are in the database, found again
    by a new provider, and not given to a new file that reuses an inode
    number (its birth time differs) or kept for a removed one."""
    (tmp_path / "root").mkdir()
    db = tmp_path / "meta.db"
    fs = VolFs(str(tmp_path / "root"), SqliteStore(db))
    root = MountTable(fs, "volfs").root_mount.root()
    fs.mknod(root, b"fifo", st.S_IFIFO | 0o640, 0, ALICE)
    fs.symlink(root, b"link", b"fifo", ALICE)
    make_file(fs, root, b"f", 0o4755, ALICE)
    root.release()
    fs.linux.store.close()
    assert not os.listxattr(tmp_path / "root" / "f")        # nothing on the host file

    fs = VolFs(str(tmp_path / "root"), SqliteStore(db))
    root = MountTable(fs, "volfs").root_mount.root()
    try:
        for name, mode in ((b"fifo", st.S_IFIFO | 0o640), (b"link", st.S_IFLNK | 0o777),
                           (b"f", st.S_IFREG | 0o4755)):
            a = attr(fs, root, name)
            assert (a.mode, a.uid, a.gid) == (mode, 1000, 1000), name
        # A host program replaces the file (ext4 hands the freed inode
        # number straight back): the new file is root's.
        os.unlink(tmp_path / "root" / "f")
        (tmp_path / "root" / "f").write_text("host made")
        os.chmod(tmp_path / "root" / "f", 0o644)
        assert (attr(fs, root, b"f").mode, attr(fs, root, b"f").uid) == (st.S_IFREG | 0o644, 0)
        fifo = os.stat(tmp_path / "root" / "fifo").st_ino
        fs.unlink(root, b"fifo")
        rows = fs.linux.store._db.execute("SELECT count(*) FROM meta WHERE ino = ?", (fifo,))
        assert rows.fetchone()[0] == 0
    finally:
        root.release()
        fs.remove_staging()
