"""The Linux view of files kept over a host tree: one implementation, pluggable stores.

VolFs, TmpFs, DrvFs (with `metadata`) and the FUSE view of a distro
(`lx --mount`) show host files with a Linux owner, group, mode (setuid,
setgid, sticky, file type) and device number that the host file does not
carry. The rules of Linux for that view are written here once:

- a new file's owner and group (Linux `inode_init_owner` and
  `mode_strip_sgid`): the creator's fsuid; the directory's group if it is
  setgid (new directories inherit the setgid bit), else the creator's
  fsgid; a group-executable setgid file made there by a non-member without
  CAP_FSETID loses S_ISGID;
- chmod(2): S_ISGID is turned off when the caller is not in the file's
  group and lacks CAP_FSETID (`chmod_mode`);
- chown(2): a non-directory loses S_ISUID, and S_ISGID when it is group
  executable (Linux `chown_common` + `notify_change`), in the same write as
  the new owner (`chown_mode`);
- device nodes are empty regular host files whose record says what they
  are (lxattr.host_type_for); their size shows as 0;
- a file with no record (made by a host tool) shows with the host's type
  and mode bits, owned by root (or as the file system decides: `unknown`).

Where the record lives is a `MetaStore`. Concrete stores:

- `XattrStore`: one `user.lxsub.meta` attribute per file (lxattr.py);
  VolFs, DrvFs `metadata`, the FUSE view. Host symlinks, FIFOs and sockets
  cannot carry user.* attributes (xattr(7)), so it keeps no record for them.
- `MemoryStore`: a dict in the provider, by inode; TmpFs (all types) and
  VolFs's symlinks, FIFOs and sockets (for the instance's life).
- `ByType`: the first of several stores that keeps a file's type (VolFs:
  xattrs, then memory).
- `NoStore`: nothing kept (DrvFs without `metadata`).
- `SqliteStore` (sqlitestore.py): one database per distro whose host file
  system takes no user xattrs; all types, persistent, reconciled after a
  crash. Chosen at install/import and recorded in the registry.

The store contract (what a new store, e.g. a transactional SQLite database
per distro for host file systems without user xattrs, must do):

- Key: the host inode. A record belongs to the inode, not to a name:
  every hard link of a file shares it, `link(2)` and `rename(2)` do not
  touch the store (the record follows the inode). A store is given a
  `HostFile`: a descriptor of the file (O_PATH ones included), or a
  directory descriptor and a name in it (for files that cannot be opened:
  FIFOs, sockets, device nodes), plus the file's host stat. Inode numbers
  are reused after a file is gone, so a store that keys by inode number
  must also check the inode's identity (`HostFile.birth_ns()`, statx
  birth time) or be told of every inode's end (`forget`); a persistent
  store keys by (inode number, birth time) and not by st_dev, which a host
  file system may change between boots.
- `load(f)`: the record, or None (no record, or one for another file type:
  the caller then shows the file as a host tool's). Called on every stat:
  it must be cheap (a cache validated by the host ctime is allowed: every
  record change of ours changes it, see XattrStore).
- `save(f, meta)`: replace the whole record at once: after a crash the
  file has the old record or the new one, never a mix (one setxattr; one
  transaction). A new file's record is saved before it gets its name where
  the file system can (VolFs: O_TMPFILE or a staging directory), so a store
  must accept a file that has no name yet (an O_TMPFILE descriptor).
- `keeps(mode)`: whether the store can hold a record for this Linux file
  type at all (`mode` is a full st_mode); callers never save one it cannot.
- `forget(s)`: the inode lost its last name (unlink, rmdir, rename over
  it). It may still be open (an unlinked open file keeps working): a store
  may keep the record until the inode number is reused with another birth
  time, or drop it (the open file then shows as a host tool's until it
  closes). `tracks_inodes()` says whether `forget` is wanted at all (it
  costs the caller a host stat before the removal).
- `maybe_gone(s)`: the inode lost a name while the host still counted
  others (st_nlink > 1 before the removal). It may be gone all the same:
  FUSE (libfuse without hard_remove) and NFS keep an open file that loses
  its last name under a hidden one (.fuse_hidden*, .nfs*: a "silly
  rename") and delete that at its last close, unseen by us. A store that
  keys by inode number checks such inodes later (SqliteStore: at its next
  start). `lost_a_name` chooses between the two.
- `reborn(s)`: a new file got this inode: drop anything cached for the
  number.
- Concurrency: one provider serves a distro at a time, but the FUSE view is
  another process writing the same records; a persistent store commits each
  `save` on its own (no long transactions) and reads what is committed.
"""

from __future__ import annotations

import errno
import os
import stat as st
from dataclasses import dataclass
from typing import Callable, Protocol

from lxsub.kernel.creds import CAP_FSETID
from lxsub.kernel.fs import lxattr
from lxsub.kernel.fs.lxattr import LxMeta
from lxsub.platform import libc

_CACHE_MAX = 65536
SET_ID = st.S_ISUID | st.S_ISGID


class CredsLike(Protocol):
    """What the rules need of the caller's credentials (kernel/creds.Creds)."""
    fsuid: int
    fsgid: int

    def in_group(self, gid: int) -> bool: ...

    def capable(self, cap: int) -> bool: ...


# -- the rules of Linux ------------------------------------------------------------

def new_meta(parent: LxMeta | None, mode: int, rdev: int, creds: CredsLike) -> LxMeta:
    """A new file's Linux view: `mode` is its full st_mode (type | bits,
    umask already applied), `parent` its directory's view."""
    gid = creds.fsgid
    if parent is not None and parent.mode & st.S_ISGID:
        # inode_init_owner: BSD group semantics of setgid directories.
        gid = parent.gid
        if st.S_ISDIR(mode):
            mode |= st.S_ISGID
        elif (mode & (st.S_ISGID | st.S_IXGRP)) == (st.S_ISGID | st.S_IXGRP) \
                and not creds.in_group(gid) and not creds.capable(CAP_FSETID):
            mode &= ~st.S_ISGID        # mode_strip_sgid: no setgid file of a group not ours
    if not (st.S_ISCHR(mode) or st.S_ISBLK(mode)):
        rdev = 0
    return LxMeta(mode, creds.fsuid, gid, rdev)


def chmod_mode(mode: int, file_gid: int, creds: CredsLike) -> int:
    """The permission bits chmod(2) sets: "If the calling process is not
    privileged (Linux: does not have the CAP_FSETID capability), and the
    group of the file does not match the effective group ID of the process
    or one of its supplementary group IDs, the S_ISGID bit will be turned
    off, but this will not cause an error to be returned." """
    mode &= 0o7777
    if mode & st.S_ISGID and not creds.in_group(file_gid) and not creds.capable(CAP_FSETID):
        mode &= ~st.S_ISGID
    return mode


def chown_mode(mode: int) -> int:
    """The st_mode after a chown(2) that changes owner or group: a
    non-directory loses S_ISUID, and S_ISGID when group-executable (without
    S_IXGRP it means mandatory locking and stays), root's chown included
    (Linux chown_common sets ATTR_KILL_SUID|ATTR_KILL_SGID, notify_change
    applies them)."""
    if st.S_ISDIR(mode) or st.S_ISLNK(mode) or not mode & SET_ID:
        return mode
    mode &= ~st.S_ISUID
    if mode & st.S_IXGRP:
        mode &= ~st.S_ISGID
    return mode


def shown_size(meta: LxMeta, s: os.stat_result) -> int:
    """Device nodes are empty host files standing for a device: size 0."""
    return 0 if st.S_ISCHR(meta.mode) or st.S_ISBLK(meta.mode) else s.st_size


def root_owned(f: "HostFile", creds: "CredsLike | None" = None) -> LxMeta:
    """A file with no record, as a host tool left it: root's, the host's mode
    (whoever asks: `creds` is the asker, for file systems whose view of a
    file without a record depends on it, DrvFs)."""
    mode = f.st.st_mode if not st.S_ISLNK(f.st.st_mode) else st.S_IFLNK | 0o777
    return LxMeta(mode, 0, 0, 0)


_NO_USER_XATTRS = frozenset((st.S_IFLNK, st.S_IFIFO, st.S_IFSOCK))


def xattr_capable(mode: int) -> bool:
    """Linux allows user.* attributes on regular files and directories only
    (xattr(7)); device nodes are regular files on the host."""
    return mode & 0o170000 not in _NO_USER_XATTRS


# -- host files as the stores see them -----------------------------------------------

@dataclass(slots=True)
class HostFile:
    """A host file: its own descriptor (name empty; O_PATH ones too) or a
    directory descriptor and a name in it; and its host stat."""
    fd: int
    name: bytes
    st: os.stat_result

    @classmethod
    def of_fd(cls, fd: int, s: os.stat_result | None = None) -> "HostFile":
        return cls(fd, b"", s if s is not None else os.stat(fd))

    @classmethod
    def in_dir(cls, dir_fd: int, name: bytes, s: os.stat_result | None = None) -> "HostFile":
        if s is None:
            s = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return cls(dir_fd, name, s)

    def restat(self) -> "HostFile":
        """The same file with its host stat taken now."""
        return HostFile.in_dir(self.fd, self.name) if self.name else HostFile.of_fd(self.fd)

    @property
    def key(self) -> tuple[int, int]:
        return self.st.st_dev, self.st.st_ino

    def proc_path(self) -> bytes:
        """A path the host's *xattr and chmod calls take (they do not take
        O_PATH descriptors; the magic link does)."""
        if self.name:
            return b"/proc/self/fd/%d/%s" % (self.fd, self.name)
        return b"/proc/self/fd/%d" % self.fd

    def birth_ns(self) -> int:
        return libc.birth_time_ns(self.fd, self.name)


# -- stores ----------------------------------------------------------------------------

class MetaStore:
    """Where records live; see the contract in the module's docstring."""

    def keeps(self, mode: int) -> bool:
        return True

    def saves_on_host(self, mode: int) -> bool:
        """Whether saving a record of a file of this type changes the host
        file itself (an attribute: an IN_ATTRIB for its inotify watchers)."""
        return False

    def load(self, f: HostFile) -> LxMeta | None:
        raise NotImplementedError

    def save(self, f: HostFile, meta: LxMeta) -> None:
        raise NotImplementedError

    def forget(self, s: os.stat_result) -> None:
        pass

    def tracks_inodes(self) -> bool:
        return False

    def maybe_gone(self, s: os.stat_result) -> None:
        pass

    def reborn(self, s: os.stat_result) -> None:
        pass

    def close(self) -> None:
        """The file system's end: a persistent store says goodbye."""


def lost_a_name(store: MetaStore, s: os.stat_result | None) -> None:
    """Tell `store` that the file whose host stat (taken just before the
    removal) is `s` lost a name: its last one (a directory has one), or
    maybe not (see maybe_gone in the module docstring)."""
    if s is None:
        return
    if s.st_nlink <= 1 or st.S_ISDIR(s.st_mode):
        store.forget(s)
    else:
        store.maybe_gone(s)


def _right_type(meta: LxMeta | None, s: os.stat_result) -> LxMeta | None:
    """A record for another type of host file is not this file's."""
    if meta is None or lxattr.host_type_for(meta.mode) != st.S_IFMT(s.st_mode):
        return None
    return meta


class NoStore(MetaStore):
    def keeps(self, mode: int) -> bool:
        return False

    def load(self, f: HostFile) -> LxMeta | None:
        return None

    def save(self, f: HostFile, meta: LxMeta) -> None:
        raise OSError(errno.EPERM, "no Linux metadata kept here")


class XattrStore(MetaStore):
    """The `user.lxsub.meta` attribute. With `cache`, records read are kept
    by inode and host ctime: any change of the attribute changes the ctime,
    so an entry with the same ctime is still true."""

    def __init__(self, cache: bool = False) -> None:
        self._cache: dict[tuple[int, int], tuple[int, LxMeta | None]] | None = \
            {} if cache else None

    def keeps(self, mode: int) -> bool:
        return xattr_capable(mode)

    def saves_on_host(self, mode: int) -> bool:
        return xattr_capable(mode)

    def load(self, f: HostFile) -> LxMeta | None:
        if not xattr_capable(f.st.st_mode):
            return None
        cache = self._cache
        if cache is not None:
            hit = cache.get((f.st.st_dev, f.st.st_ino))
            if hit is not None and hit[0] == f.st.st_ctime_ns:
                return hit[1]
        found = _right_type(lxattr.read_meta_path(f.proc_path(), follow=not f.name), f.st)
        if cache is not None:
            if len(cache) >= _CACHE_MAX:
                cache.clear()
            cache[f.key] = (f.st.st_ctime_ns, found)
        return found

    def save(self, f: HostFile, meta: LxMeta) -> None:
        # ctime has a clock tick's grain: two changes in one tick look alike,
        # so a change of ours drops the cached copy outright.
        self.reborn(f.st)
        lxattr.write_meta_path(f.proc_path(), meta, follow=not f.name)

    def reborn(self, s: os.stat_result) -> None:
        if self._cache is not None:
            self._cache.pop((s.st_dev, s.st_ino), None)


class MemoryStore(MetaStore):
    """Records in the provider's memory, by inode. With `check_birth` each
    record also holds the inode's birth time and is taken only for that
    inode (an inode number reused by a host program is another file);
    without it, the file system reports every inode's end (`forget`).

    A record that says what a file without one shows anyway (`plain`: root's
    symlinks, FIFOs made by root with owner rw) is not kept: the store stays
    empty for root's work (dpkg's thousands of symlinks), and removals need
    no stat while it is (tracks_inodes)."""

    def __init__(self, check_birth: bool = False,
                 plain: Callable[[HostFile], LxMeta] = root_owned) -> None:
        self._records: dict[tuple[int, int], tuple[int, LxMeta]] = {}
        self._check_birth = check_birth
        self._plain = plain

    def load(self, f: HostFile) -> LxMeta | None:
        found = self._records.get(f.key)
        if found is None:
            return None
        if self._check_birth and found[0] != f.birth_ns():
            return None
        return _right_type(found[1], f.st)

    def save(self, f: HostFile, meta: LxMeta) -> None:
        if meta == self._plain(f):
            self._records.pop(f.key, None)
        else:
            self._records[f.key] = (f.birth_ns() if self._check_birth else 0, meta)

    def forget(self, s: os.stat_result) -> None:
        self._records.pop((s.st_dev, s.st_ino), None)

    def tracks_inodes(self) -> bool:
        return bool(self._records)


class ByType(MetaStore):
    """Each file's record in the first store that keeps its type."""

    def __init__(self, *stores: MetaStore) -> None:
        self.stores = stores
        self._route: dict[int, MetaStore | None] = {}     # file type -> its store

    def _for(self, mode: int) -> MetaStore | None:
        kind = mode & 0o170000
        try:
            return self._route[kind]
        except KeyError:
            found = self._route[kind] = next((s for s in self.stores if s.keeps(kind)), None)
            return found

    def keeps(self, mode: int) -> bool:
        return self._for(mode) is not None

    def saves_on_host(self, mode: int) -> bool:
        store = self._for(mode)
        return store is not None and store.saves_on_host(mode)

    def load(self, f: HostFile) -> LxMeta | None:
        # The host type decides: a device node's record is on a regular file.
        store = self._for(f.st.st_mode)
        return store.load(f) if store is not None else None

    def save(self, f: HostFile, meta: LxMeta) -> None:
        store = self._for(f.st.st_mode)
        if store is None:
            raise OSError(errno.EPERM, "no Linux metadata kept for this file type")
        store.save(f, meta)

    def forget(self, s: os.stat_result) -> None:
        for store in self.stores:
            store.forget(s)

    def maybe_gone(self, s: os.stat_result) -> None:
        for store in self.stores:
            store.maybe_gone(s)

    def tracks_inodes(self) -> bool:
        return any(s.tracks_inodes() for s in self.stores)

    def reborn(self, s: os.stat_result) -> None:
        for store in self.stores:
            store.reborn(s)

    def close(self) -> None:
        for store in self.stores:
            store.close()


# -- the shared implementation ------------------------------------------------------------

class LinuxMeta:
    """The Linux view of one host tree, over a store.

    host_mode: the host permission bits a Linux mode is kept with (VolFs,
    TmpFs: lxattr.host_mode_for, so the provider can always open the file).
    host_chmod_strict: whether a host chmod that fails fails the chmod (not
    on DrvFs, where the file may be another host user's).
    host_bits_kept: the host bits that must follow a chmod when the record
    is written on the host file anyway (VolFs: the owner's, which the
    provider needs; DrvFs: all, host permissions apply there).
    unknown: the view of a file with no record, for the credentials asking
    (DrvFs shows the host user's files as the asker's own).
    """

    def __init__(self, store: MetaStore,
                 host_mode: Callable[[int], int] = lxattr.host_mode_for,
                 host_chmod_strict: bool = True,
                 host_bits_kept: int = 0o7700,
                 unknown: Callable[[HostFile, "CredsLike | None"], LxMeta] = root_owned) -> None:
        self.store = store
        self.host_mode = host_mode
        self.host_chmod_strict = host_chmod_strict
        self.host_bits_kept = host_bits_kept
        self.unknown = unknown

    def get(self, f: HostFile, creds: "CredsLike | None" = None) -> LxMeta:
        found = self.store.load(f)
        return found if found is not None else self.unknown(f, creds)

    def new(self, parent: HostFile | None, mode: int, rdev: int, creds: CredsLike) -> LxMeta:
        """The view of a file about to be made in `parent`."""
        return new_meta(self.get(parent, creds) if parent is not None else None, mode, rdev, creds)

    def keeps(self, mode: int) -> bool:
        return self.store.keeps(mode)

    def chmod(self, f: HostFile, mode: int, creds: "CredsLike | None" = None) -> LxMeta:
        """Set the permission bits (`mode`, already checked by chmod_mode):
        the record, and the host file's bits as host_mode says (for a type
        the store does not keep, the host bits are all there is)."""
        old = self.get(f, creds)
        if st.S_ISLNK(old.mode):
            raise OSError(errno.EOPNOTSUPP, "symlinks have no mode")
        new = LxMeta(st.S_IFMT(old.mode) | (mode & 0o7777), old.uid, old.gid, old.rdev)
        host_bits = self.host_mode(new.mode)
        if self._host_chmod_needed(f, host_bits):
            try:
                os.chmod(f.proc_path(), host_bits)
            except OSError:
                if self.host_chmod_strict:
                    raise      # else: not the host user's file, the host keeps its bits
        if self.store.keeps(f.st.st_mode):
            self.store.save(f.restat(), new)    # as the host file is now (MemoryStore compares)
        return new

    def _host_chmod_needed(self, f: HostFile, host_bits: int) -> bool:
        """Each host change is an IN_ATTRIB for inotify watchers, and Linux's
        chmod is one (LTP inotify10). A record written on the host file is
        that one change, so the host bits change only when host_bits_kept
        do (on VolFs the owner's: what the provider needs, read, write and
        the exec bit the host kernel checks; the group's and others' then
        show the Linux mode as of the file's creation). A record kept
        elsewhere makes no host change: the host chmod is the event, made
        even to the same bits."""
        kind = f.st.st_mode
        if not self.store.keeps(kind) or not self.store.saves_on_host(kind):
            return True
        return bool((st.S_IMODE(kind) ^ host_bits) & self.host_bits_kept)

    def chown(self, f: HostFile, uid: int, gid: int, creds: "CredsLike | None" = None) -> LxMeta:
        """New owner and/or group (-1: unchanged), set-id bits cleared as
        chown(2) clears them, in one record write. Nothing is kept for a
        type the store does not keep (the caller refuses it if it must)."""
        old = self.get(f, creds)
        if uid < 0 and gid < 0:
            return old
        new = LxMeta(chown_mode(old.mode), old.uid if uid < 0 else uid,
                     old.gid if gid < 0 else gid, old.rdev)
        if self.store.keeps(f.st.st_mode):
            self.store.save(f, new)
        return new
