"""Linux metadata in one SQLite database per distro, for host file systems
without user xattrs (NFS, Lustre, GPFS, BeeGFS homes; issue 17).

The store follows kernel/fs/linuxmeta.py's contract: records keyed by the
host inode, every file type kept (symlinks, FIFOs and sockets too, which
the xattr store cannot hold), each `save` one committed transaction.

Where it is chosen: at `lx --install`/`--import` (`choose_meta_db`), when a
user.* setxattr on a scratch file under the new rootfs fails, or when
`LX_METASTORE=sqlite` asks for it. The distro's registry entry then names
the database (`Distro.meta_db`, `meta_db_path`: beside the rootfs), and
VolFs, `lx --mount` and `lx --export` open that one.

Crash consistency. A new file gets its record before its name (VolFs:
O_TMPFILE or the staging directory, linuxmeta's contract), so a provider
killed at any point leaves at worst records whose inode never got a name or
lost it (a kill between unlink and `forget`) and, from host tools, files
without records. Each process that opens the store for a tree writes a row
in `openers` and deletes it when it closes; a process that opens the store
while no one else has it (an flock on `<db>.users`) and finds rows left
behind knows someone was killed, and reconciles: records whose inode is no
longer in the tree are dropped (else a reused inode number would inherit
them where the host keeps no birth time, e.g. NFSv3), and files without a
record get one saying what the file shows anyway (root's, the host mode:
`root_owned`), so the tree and the table agree again.

The tree also changes without us on FUSE and NFS: an open file that loses
its last name there is kept under a hidden one (.fuse_hidden*, .nfs*) and
deleted at its last close, with nothing said to the store. What the store
sees is a removal that left the inode other names (linuxmeta's
`maybe_gone`: dpkg replacing a running program it has a backup link of);
such inodes go into the table `unsure`, out again when they lose their
last name before us, and an opener alone that finds any left reconciles
as after a crash. A reconcile at every start would be the simpler rule,
but it walks the whole tree: 1.3 s for Debian's minbase (8,700 files) on
a bindfs mount, against 0.1 s on ext4, and so on with the tree's size.

Journal: WAL with synchronous=NORMAL: readers never wait for the writer,
a commit is an append to the -wal file with no fsync (measured: 31 us per
record on ext4 and 0.5 ms on a FUSE mount, against 3-6 ms for the rollback
journal's two fsyncs per commit). A kill -9 loses no committed transaction;
a power cut may lose the last ones, never the database's consistency. WAL's
index is shared memory (an mmap of the -shm file), coherent between the
processes of one host, not between hosts on a network file system
(https://www.sqlite.org/wal.html). lxsub runs a distro on one host at a
time; the store checks it: where the database is not on a local file
system, a second user from another host is refused (`openers` rows carry
the host name) rather than corrupting the database.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import socket
from pathlib import Path
from typing import Callable

from lxsub.kernel.fs.linuxmeta import HostFile, MetaStore, _right_type, root_owned
from lxsub.kernel.fs.lxattr import LxMeta

ENV_SWITCH = "LX_METASTORE"          # "sqlite": always; "xattr": never; unset/"auto": probe
_PROBE_ATTR = "user.lxsub.probe"
# File systems of one host (statfs f_type): every user of a database there is
# on this host. ext2/3/4, xfs, btrfs, tmpfs, zfs, f2fs, bcachefs.
_LOCAL_FS = frozenset((0xEF53, 0x58465342, 0x9123683E, 0x01021994, 0x2FC12FC1,
                       0xF2F52010, 0xCA451A4E))
_UNLINKED_MAX = 4096                 # records of unlinked, maybe still open, inodes
_libc = ctypes.CDLL(None, use_errno=True)


# -- choosing the store ---------------------------------------------------------------

def meta_db_path(rootfs: str | os.PathLike) -> Path:
    """The database of the distro whose tree is `rootfs`: beside it, on the
    same file system, outside what the instance sees."""
    rootfs = Path(rootfs)
    return rootfs.parent / f"{rootfs.name}.lxmeta.sqlite"


def user_xattrs_work(dir_fd: int) -> bool:
    """Whether the file system of `dir_fd` takes user.* attributes: a
    setxattr on a scratch file made there (xattr(7): ENOTSUP/EOPNOTSUPP
    where the file system or its mount refuses them)."""
    name = f".lxsub-xattr-probe-{os.getpid()}"
    fd = os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        os.setxattr(fd, _PROBE_ATTR, b"1")
        return True
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return False
        raise
    finally:
        os.close(fd)
        os.unlink(name, dir_fd=dir_fd)


def wants_sqlite(dir_fd: int) -> bool:
    """The store for a new tree at `dir_fd`: LX_METASTORE decides if set,
    else the file system (no user xattrs: SQLite)."""
    switch = os.environ.get(ENV_SWITCH, "").strip().lower()
    if switch == "sqlite":
        return True
    if switch == "xattr":
        return False
    if switch not in ("", "auto"):
        from lxsub.errors import EXIT_USAGE, LxError
        raise LxError(f"{ENV_SWITCH}={switch!r} is not a metadata store: use sqlite, xattr "
                      "or auto", EXIT_USAGE)
    return not user_xattrs_work(dir_fd)


def volfs_store(meta_db: str | os.PathLike | None, rootfs: str) -> MetaStore | None:
    """VolFs's store for a distro: its SQLite database joined for `rootfs`
    (reconciled there after a crash), or None for VolFs's default (xattrs)."""
    return SqliteStore(meta_db, tree=rootfs) if meta_db else None


def remove_db(db: str | os.PathLike) -> None:
    """Delete a database and the files SQLite and this store keep beside it."""
    for suffix in ("", "-wal", "-shm", "-journal", ".lock", ".users"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{os.fspath(db)}{suffix}")


def _fs_type(path: str) -> int:
    buf = ctypes.create_string_buffer(120)          # struct statfs; f_type first
    if _libc.statfs(os.fsencode(path), buf) != 0:
        return 0
    return int.from_bytes(buf.raw[:8], "little", signed=True)


# -- the store --------------------------------------------------------------------------

class SqliteStore(MetaStore):
    """Records in one SQLite database: every file type, across restarts.

    Key: (inode number, birth time): a reused inode number is another file
    wherever the host keeps birth times. Where it keeps none (0: NFSv3,
    FUSE) a record is found by inode number alone, so the file system
    reports every inode's end (`forget`; tracks_inodes is always true). No
    st_dev in the key: a file system's device number may change between
    boots; one database serves one tree. No cache of records: another
    process (the FUSE view) may write the same database.

    `tree`: the host directory whose files the records are of; given, the
    store joins its users and reconciles after a crash (module docstring).
    """

    def __init__(self, path: str | os.PathLike, tree: str | os.PathLike | None = None,
                 plain: Callable[[HostFile], LxMeta] = root_owned) -> None:
        import sqlite3      # only where a distro needs it: not on every provider's start
        self.path = os.fspath(path)
        # A database that vanished (deleted by hand) is made again and
        # reconciled: every file then shows as an imported file without a record.
        lost = tree is not None and not os.path.exists(self.path)
        self._plain = plain
        # A writer waits up to 30 s for another process's transaction rather than failing.
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                   check_same_thread=False)
        self.local = _fs_type(os.path.dirname(os.path.abspath(self.path))) in _LOCAL_FS
        self.journal = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower()
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (ino INTEGER NOT NULL, "
                         "birth INTEGER NOT NULL, mode INTEGER NOT NULL, uid INTEGER NOT NULL, "
                         "gid INTEGER NOT NULL, rdev INTEGER NOT NULL, "
                         "PRIMARY KEY (ino, birth)) WITHOUT ROWID")
        self._db.execute("CREATE TABLE IF NOT EXISTS openers (id INTEGER PRIMARY KEY, "
                         "pid INTEGER, host TEXT)")
        # Inodes that lost a name and may have lost their last one unseen (maybe_gone).
        self._db.execute("CREATE TABLE IF NOT EXISTS unsure (ino INTEGER PRIMARY KEY)")
        self._unsure: set[int] = set()      # the ones this process put there
        # Records of inodes that lost their last name (forget) and may be
        # open still: an unlinked open file keeps its owner and mode, as its
        # xattr would; dropped when the number is reused (reborn).
        self._unlinked: dict[int, tuple[int, LxMeta]] = {}
        self._users_fd = -1
        self._opener: int | None = None
        self.reconciled: tuple[int, int] | None = None     # (dropped, added) by the last reconcile
        if tree is not None:
            self._join(os.fspath(tree), lost)

    # -- MetaStore ---------------------------------------------------------------------

    def load(self, f: HostFile) -> LxMeta | None:
        birth = f.birth_ns()
        row = self._db.execute("SELECT mode, uid, gid, rdev FROM meta WHERE ino = ? AND birth = ?",
                               (f.st.st_ino, birth)).fetchone()
        if row is not None:
            return _right_type(LxMeta(*row), f.st)
        gone = self._unlinked.get(f.st.st_ino) if self._unlinked else None
        if gone is not None and gone[0] == birth:
            return _right_type(gone[1], f.st)
        return None

    def save(self, f: HostFile, meta: LxMeta) -> None:
        # One statement in autocommit mode: after a crash the old record or
        # the new one, never a mix.
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?, ?, ?, ?, ?)",
                         (f.st.st_ino, f.birth_ns(), meta.mode, meta.uid, meta.gid, meta.rdev))
        if self._unlinked:
            self._unlinked.pop(f.st.st_ino, None)

    def forget(self, s: os.stat_result) -> None:
        # The inode may stay open (unlink(2) of an open file): its record
        # leaves the database now, so a crash cannot leave it behind, and
        # stays in memory for the open file until the number is reused.
        rows = self._db.execute("DELETE FROM meta WHERE ino = ? RETURNING birth, mode, uid, gid, "
                                "rdev", (s.st_ino,)).fetchall()
        if s.st_ino in self._unsure:         # its end seen after all
            self._unsure.discard(s.st_ino)
            self._db.execute("DELETE FROM unsure WHERE ino = ?", (s.st_ino,))
        if rows:
            if len(self._unlinked) >= _UNLINKED_MAX:
                self._unlinked.pop(next(iter(self._unlinked)))
            birth, *meta = rows[-1]
            self._unlinked[s.st_ino] = (birth, LxMeta(*meta))

    def maybe_gone(self, s: os.stat_result) -> None:
        # Kept on disk: the hidden name goes at a last close that may come
        # after our own end, so the check is the next opener's.
        if s.st_ino not in self._unsure:
            self._unsure.add(s.st_ino)
            self._db.execute("INSERT OR IGNORE INTO unsure VALUES (?)", (s.st_ino,))

    def tracks_inodes(self) -> bool:
        return True

    def reborn(self, s: os.stat_result) -> None:
        if self._unlinked:
            self._unlinked.pop(s.st_ino, None)

    # -- users of the database, and reconciliation after a crash -----------------------------

    def _join(self, tree: str, lost: bool = False) -> None:
        """Register as a user of the database; reconcile with `tree` first
        if we are the only user and an earlier one never said goodbye or
        left inodes it was unsure of."""
        with self._gate():
            self._users_fd = os.open(self.path + ".users", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                                     0o600)
            try:
                fcntl.flock(self._users_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                alone = True
            except BlockingIOError:
                alone = False
            if not alone and not self.local:
                self._refuse_other_hosts()
            if alone and (lost or self._left_behind()):
                self.reconciled = self.reconcile(tree)
                self._db.execute("DELETE FROM openers")
                self._db.execute("DELETE FROM unsure")
            # Converting under the gate: no one else joins or leaves meanwhile.
            fcntl.flock(self._users_fd, fcntl.LOCK_SH)
            self._opener = self._db.execute(
                "INSERT INTO openers (pid, host) VALUES (?, ?) RETURNING id",
                (os.getpid(), socket.gethostname())).fetchone()[0]

    def _left_behind(self) -> bool:
        """An earlier user was killed (its row in openers), or left inodes
        that may be gone unseen (unsure)."""
        return self._db.execute("SELECT EXISTS (SELECT 1 FROM openers) OR "
                                "EXISTS (SELECT 1 FROM unsure)").fetchone()[0] == 1

    def _refuse_other_hosts(self) -> None:
        here = socket.gethostname()
        other = self._db.execute("SELECT host FROM openers WHERE host != ? LIMIT 1",
                                 (here,)).fetchone()
        if other is not None:
            from lxsub.errors import EXIT_TEMPFAIL, LxError
            os.close(self._users_fd)
            self._db.close()
            raise LxError(f"the distro whose Linux metadata is in {self.path} is in use on host "
                          f"{other[0]}; one host at a time can use it (end it there first)",
                          EXIT_TEMPFAIL)

    @contextlib.contextmanager
    def _gate(self):
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def close(self) -> None:
        """Leave cleanly: the next opener needs no reconciliation for us."""
        if self._db is None:
            return
        if self._opener is not None:
            with self._gate():
                self._db.execute("DELETE FROM openers WHERE id = ?", (self._opener,))
                self._opener = None
                os.close(self._users_fd)
                self._users_fd = -1
        self._db.close()
        self._db = None

    def reconcile(self, tree: str) -> tuple[int, int]:
        """Make the table and the tree agree (see the module docstring);
        returns (records dropped, records added). One transaction."""
        known: dict[int, int] = {}          # ino -> how many records
        for ino, count in self._db.execute("SELECT ino, COUNT(*) FROM meta GROUP BY ino"):
            known[ino] = count
        seen: set[int] = set()
        missing: list[tuple[int, int, int, int, int, int]] = []
        root = os.open(tree, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            self._note(HostFile.of_fd(root), known, seen, missing)
            for _dir, dirs, files, dir_fd in os.fwalk(".", dir_fd=root, follow_symlinks=False):
                for name in dirs + files:
                    try:
                        f = HostFile.in_dir(dir_fd, os.fsencode(name))
                    except FileNotFoundError:
                        continue            # gone while we walked
                    self._note(f, known, seen, missing)
        finally:
            os.close(root)
        dropped = [(ino,) for ino in known if ino not in seen]
        with self.transaction():
            self._db.executemany("DELETE FROM meta WHERE ino = ?", dropped)
            self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?, ?, ?, ?, ?)", missing)
        return sum(known[i] for (i,) in dropped), len(missing)

    def _note(self, f: HostFile, known: dict[int, int], seen: set[int], missing: list) -> None:
        ino = f.st.st_ino
        seen.add(ino)
        if ino not in known:
            known_now = self._plain(f)
            missing.append((ino, f.birth_ns(), known_now.mode, known_now.uid, known_now.gid,
                            known_now.rdev))
            known[ino] = 0

    def begin(self) -> None:
        """Saves from here to commit() are one transaction (an import's)."""
        self._db.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self._db.execute("COMMIT")

    @contextlib.contextmanager
    def transaction(self):
        """Many changes in one transaction: all or none."""
        self.begin()
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self.commit()

    def records(self) -> list[tuple[int, int, int, int, int, int]]:
        """Every record (ino, birth, mode, uid, gid, rdev): for checks and tests."""
        return self._db.execute("SELECT ino, birth, mode, uid, gid, rdev FROM meta").fetchall()

