"""vfs/ops: Linux's permission rules for namespace and attribute changes,
on a real VolFs tree (Linux owners and modes in its xattrs), with callers
of several Linux users."""

from __future__ import annotations

import errno
import stat as st

import pytest

from lxsub.abi.fcntl import (AT_FDCWD, AT_SYMLINK_NOFOLLOW, RENAME_EXCHANGE, RENAME_NOREPLACE, RENAME_WHITEOUT,
                             UTIME_NOW, UTIME_OMIT)
from lxsub.kernel.creds import Creds
from lxsub.kernel.fs.volfs import VolFs
from lxsub.kernel.vfs import lookup, ops
from lxsub.kernel.vfs.caller import Caller, FsContext
from lxsub.kernel.vfs.vfs import Vfs

ALICE, BOB, CAROL = 1000, 1001, 1002
STAFF = 50


class World:
    """An instance root on a temp directory and callers to act in it."""

    def __init__(self, host_root: str) -> None:
        self.inst = Vfs(VolFs(host_root), "rootfs")      # what ops and lookup act on
        self.mounts = self.inst.mounts
        self._nodes = [self.mounts.root_mount.root()]

    def caller(self, uid: int, gid: int | None = None, groups: tuple[int, ...] = (),
               umask: int = 0) -> Caller:
        root = self._nodes[0]
        fs = FsContext(root.dup(), root.dup(), umask)
        self._nodes += [fs.root, fs.cwd]
        return Caller(Creds.for_user(uid, uid if gid is None else gid, groups), fs)

    def close(self) -> None:
        for n in self._nodes:
            n.release()

    def node(self, task, path: bytes):
        n = lookup.resolve_at(self.inst, task, AT_FDCWD, path, AT_SYMLINK_NOFOLLOW)
        self._nodes.append(n)
        return n

    def attr(self, path: bytes):
        n = self.node(self.root, path)
        return n.fs.getattr(n, self.root)

    def file(self, task, path: bytes, mode: int = 0o644) -> None:
        ops.mknod(self.inst, task, AT_FDCWD, path, st.S_IFREG | mode, 0)


@pytest.fixture
def w(tmp_path):
    world = World(str(tmp_path))
    world.root = world.caller(0)
    ops.chmod(world.root, world.node(world.root, b"/"), 0o755)     # tmp_path is 0700
    ops.mkdir(world.inst, world.root, AT_FDCWD, b"/tmp", 0o1777)
    ops.chmod(world.root, world.node(world.root, b"/tmp"), 0o1777)
    yield world
    world.close()


def _errno(fn, *args) -> int:
    with pytest.raises(OSError) as e:
        fn(*args)
    return e.value.errno


def test_new_files_belong_to_their_creator_less_the_umask(w):
    alice = w.caller(ALICE, umask=0o027)
    ops.mkdir(w.inst, alice, AT_FDCWD, b"/tmp/d", 0o777)
    w.file(alice, b"/tmp/f", 0o666)
    d, f = w.attr(b"/tmp/d"), w.attr(b"/tmp/f")
    assert (d.uid, d.gid, st.S_IMODE(d.mode), st.S_ISDIR(d.mode)) == (ALICE, ALICE, 0o750, True)
    assert (f.uid, st.S_IMODE(f.mode), st.S_ISREG(f.mode)) == (ALICE, 0o640, True)


def test_sticky_directory_keeps_others_from_removing_or_renaming(w):
    """may_delete(): in a sticky directory only the file's owner, the
    directory's owner or CAP_FOWNER may unlink or rename an entry."""
    alice, bob = w.caller(ALICE), w.caller(BOB)
    w.file(alice, b"/tmp/a")
    assert _errno(ops.unlink, w.inst, bob, AT_FDCWD, b"/tmp/a", False) == errno.EPERM
    assert _errno(ops.rename, w.inst, bob, AT_FDCWD, b"/tmp/a", AT_FDCWD, b"/tmp/b", 0) == errno.EPERM
    ops.rename(w.inst, alice, AT_FDCWD, b"/tmp/a", AT_FDCWD, b"/tmp/b", 0)
    ops.unlink(w.inst, alice, AT_FDCWD, b"/tmp/b", False)
    assert _errno(w.attr, b"/tmp/b") == errno.ENOENT


def test_sticky_directory_owner_and_root_may_remove_anything(w):
    carol, alice = w.caller(CAROL), w.caller(ALICE)
    ops.mkdir(w.inst, carol, AT_FDCWD, b"/tmp/shared", 0o1777)
    w.file(alice, b"/tmp/shared/a")
    w.file(alice, b"/tmp/shared/b")
    ops.unlink(w.inst, carol, AT_FDCWD, b"/tmp/shared/a", False)     # the directory's owner
    ops.unlink(w.inst, w.root, AT_FDCWD, b"/tmp/shared/b", False)    # CAP_FOWNER
    assert _errno(w.attr, b"/tmp/shared/a") == _errno(w.attr, b"/tmp/shared/b") == errno.ENOENT


def test_removing_needs_write_and_search_on_the_directory(w):
    ops.mkdir(w.inst, w.root, AT_FDCWD, b"/ro", 0o755)
    w.file(w.root, b"/ro/f")
    alice = w.caller(ALICE)
    assert _errno(ops.unlink, w.inst, alice, AT_FDCWD, b"/ro/f", False) == errno.EACCES
    assert _errno(ops.mkdir, w.inst, alice, AT_FDCWD, b"/ro/d", 0o755) == errno.EACCES
    w.attr(b"/ro/f")                                   # still there


def test_unlink_and_rmdir_refuse_the_wrong_kind(w):
    alice = w.caller(ALICE)
    ops.mkdir(w.inst, alice, AT_FDCWD, b"/tmp/d", 0o755)
    w.file(alice, b"/tmp/f")
    assert _errno(ops.unlink, w.inst, alice, AT_FDCWD, b"/tmp/d", False) == errno.EISDIR
    assert _errno(ops.unlink, w.inst, alice, AT_FDCWD, b"/tmp/f", True) == errno.ENOTDIR
    assert _errno(ops.unlink, w.inst, alice, AT_FDCWD, b"/tmp/d/.", True) == errno.EINVAL
    assert _errno(ops.mkdir, w.inst, alice, AT_FDCWD, b"/tmp/d/..", 0o755) == errno.EEXIST


def test_only_the_owner_changes_the_mode_and_setgid_needs_the_group(w):
    """chmod(2): EPERM unless owner or CAP_FOWNER; S_ISGID is dropped
    when the caller is not in the file's group (inode_init_owner/notify_change)."""
    alice, bob = w.caller(ALICE), w.caller(BOB)
    w.file(alice, b"/tmp/f")
    f = w.node(alice, b"/tmp/f")
    assert _errno(ops.chmod, bob, f, 0o777) == errno.EPERM
    ops.chown(w.root, f, -1, STAFF)                    # a group alice is not in
    ops.chmod(alice, f, 0o2755)
    assert st.S_IMODE(w.attr(b"/tmp/f").mode) == 0o755
    ops.chmod(w.caller(ALICE, groups=(STAFF,)), f, 0o2755)
    assert st.S_IMODE(w.attr(b"/tmp/f").mode) == 0o2755


def test_chown_rules_and_setuid_cleared(w):
    """chown(2): only CAP_CHOWN gives a file away; the owner may change
    its group to one of theirs; a change clears set-user-ID."""
    alice = w.caller(ALICE, groups=(STAFF,))
    w.file(alice, b"/tmp/f", 0o4755)
    f = w.node(alice, b"/tmp/f")
    assert _errno(ops.chown, alice, f, BOB, -1) == errno.EPERM
    assert _errno(ops.chown, alice, f, -1, 4242) == errno.EPERM
    assert _errno(ops.chown, w.caller(BOB), f, -1, BOB) == errno.EPERM
    ops.chown(alice, f, -1, STAFF)
    a = w.attr(b"/tmp/f")
    assert (a.uid, a.gid, st.S_IMODE(a.mode)) == (ALICE, STAFF, 0o755)
    ops.chmod(alice, f, 0o4755)
    ops.chown(w.root, f, BOB, -1)
    a = w.attr(b"/tmp/f")
    assert (a.uid, st.S_IMODE(a.mode)) == (BOB, 0o755)


def test_utimens_to_now_needs_write_access_other_times_ownership(w):
    """utimensat(2): UTIME_NOW for both is allowed with write permission;
    any other time needs ownership or CAP_FOWNER."""
    alice, bob, carol = w.caller(ALICE), w.caller(BOB), w.caller(CAROL)
    w.file(alice, b"/tmp/f", 0o646)                    # others may write
    f = w.node(alice, b"/tmp/f")
    ops.utimens(bob, f, (0, UTIME_NOW), (0, UTIME_NOW))
    assert _errno(ops.utimens, bob, f, (5, 0), (5, 0)) == errno.EPERM
    ops.chmod(alice, f, 0o644)
    assert _errno(ops.utimens, carol, f, (0, UTIME_NOW), (0, UTIME_NOW)) == errno.EACCES
    ops.utimens(alice, f, (1_000_000, 0), (2_000_000, 0))
    a = w.attr(b"/tmp/f")
    assert (a.atime_ns, a.mtime_ns) == (1_000_000 * 10**9, 2_000_000 * 10**9)
    ops.utimens(alice, f, (0, UTIME_OMIT), (0, UTIME_OMIT))
    assert w.attr(b"/tmp/f").mtime_ns == 2_000_000 * 10**9


@pytest.mark.parametrize("flags, err", [
    (RENAME_EXCHANGE | RENAME_NOREPLACE, errno.EINVAL),
    (RENAME_EXCHANGE | RENAME_WHITEOUT, errno.EINVAL),
    (8, errno.EINVAL),
    (RENAME_WHITEOUT, errno.EPERM),          # needs CAP_MKNOD in the host's init namespace
])
def test_rename_flags_checked_before_the_names(w, flags, err):
    alice = w.caller(ALICE)
    assert _errno(ops.rename, w.inst, alice, AT_FDCWD, b"/missing", AT_FDCWD, b"/x", flags) == err


def test_device_nodes_need_cap_mknod(w):
    alice = w.caller(ALICE)
    assert _errno(ops.mknod, w.inst, alice, AT_FDCWD, b"/tmp/null", st.S_IFCHR | 0o666, 0x103) == errno.EPERM
    assert _errno(ops.mknod, w.inst, alice, AT_FDCWD, b"/tmp/d", st.S_IFDIR | 0o755, 0) == errno.EINVAL
    ops.mknod(w.inst, w.root, AT_FDCWD, b"/tmp/null", st.S_IFCHR | 0o666, 0x103)
    a = w.attr(b"/tmp/null")
    assert st.S_ISCHR(a.mode) and a.rdev == 0x103


def test_rename_over_another_users_file_in_a_sticky_directory(w):
    """rename(2) replacing an entry is a delete of it too: vfs_rename()
    calls may_delete() on the target, so the sticky bit protects it."""
    alice, bob = w.caller(ALICE), w.caller(BOB)
    w.file(alice, b"/tmp/a")
    w.file(bob, b"/tmp/b")
    assert _errno(ops.rename, w.inst, bob, AT_FDCWD, b"/tmp/b", AT_FDCWD, b"/tmp/a", 0) == errno.EPERM
    assert w.attr(b"/tmp/a").uid == ALICE
    ops.rename(w.inst, w.root, AT_FDCWD, b"/tmp/b", AT_FDCWD, b"/tmp/a", 0)     # CAP_FOWNER
    assert w.attr(b"/tmp/a").uid == BOB
