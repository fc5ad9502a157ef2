"""Mount namespaces in the Vfs (vfs/mount.py MountTable.copy, vfs/vfs.py
new_namespace/enter_namespace, vfs/propagation.py): a copy walks its own
mounts, shared mounts propagate to peers and slaves, a namespace's mounts
go with its last user. The syscalls around them: test_namespaces.py."""

from __future__ import annotations

import pytest

from lxsub.kernel.creds import Creds
from lxsub.kernel.fs.volfs import VolFs
from lxsub.kernel.vfs import propagation
from lxsub.kernel.vfs.caller import Caller, FsContext
from lxsub.kernel.vfs.path import Walker
from lxsub.kernel.vfs.vfs import Vfs


class _Counted(VolFs):
    """A file system that counts its unmounted() calls."""
    gone = 0

    def unmounted(self) -> None:
        self.gone += 1


@pytest.fixture
def world(tmp_path):
    root = tmp_path / "root"
    for d in ("a", "b", "s/sub", "v/sub"):
        (root / d).mkdir(parents=True)
    for name in ("one", "two", "three"):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"in-{name}").write_text(name)
    vfs = Vfs(VolFs(str(root)), "rootfs")
    first = FsContext(vfs.mounts.root_mount.root(), vfs.mounts.root_mount.root()).attach()
    yield vfs, first, tmp_path
    first.detach()


def _walk(vfs: Vfs, fs: FsContext, path: bytes):
    caller = Caller(Creds(), fs)
    return Walker(vfs.mounts_of(caller), fs.root, caller).resolve(fs.root, path)


def _sees(vfs, fs, path: bytes) -> bool:
    try:
        _walk(vfs, fs, path).release()
        return True
    except FileNotFoundError:
        return False


def _mount(vfs, fs, fs_obj, path: bytes):
    at = _walk(vfs, fs, path)
    try:
        table = vfs.mounts_of(Caller(Creds(), fs))
        m = table.mount(fs_obj, at, path.decode(), "test")
    finally:
        at.release()
    propagation.propagate_mount(table, m, _copy)
    return m


def _copy(receiver, new, path, group, master):
    from lxsub.kernel.syscalls.mount import _mount_copy
    return _mount_copy(receiver, new, path, group, master)


def _new_ns(vfs, fs: FsContext) -> FsContext:
    child = fs.copy().attach()
    vfs.new_namespace(child, 0xF0001000)
    return child


def test_a_copy_has_its_own_mounts(world):
    vfs, first, tmp = world
    _mount(vfs, first, VolFs(str(tmp / "one")), b"/a")
    child = _new_ns(vfs, first)
    try:
        assert vfs.mounts_of(Caller(Creds(), child)) is not vfs.mounts
        assert vfs.mounts_of(Caller(Creds(), child)).inum == 0xF0001000
        # the copy starts with the mount, on clones (new ids) of the mounts
        assert _sees(vfs, child, b"/a/in-one")
        assert child.root.mount is not first.root.mount
        ids = {m.id for m in vfs.mounts.mounts}
        assert not ids & {m.id for m in child.mounts.mounts}
        # then each goes its own way
        _mount(vfs, child, VolFs(str(tmp / "two")), b"/b")
        assert _sees(vfs, child, b"/b/in-two") and not _sees(vfs, first, b"/b/in-two")
        inner_a = child.mounts.mount_of_root(_walk(vfs, child, b"/a"))
        child.mounts.umount(inner_a)
        assert not _sees(vfs, child, b"/a/in-one") and _sees(vfs, first, b"/a/in-one")
    finally:
        child.detach()


def test_shared_mounts_propagate_and_slaves_only_receive(world):
    vfs, first, tmp = world
    s = _mount(vfs, first, VolFs(str(tmp / "one")), b"/s")
    v = _mount(vfs, first, VolFs(str(tmp / "two")), b"/v")
    (tmp / "one" / "sub").mkdir()
    (tmp / "two" / "sub").mkdir()
    (tmp / "two" / "mine").mkdir()
    propagation.change_type(vfs.mounts, s, propagation.MS_SHARED, False)
    propagation.change_type(vfs.mounts, v, propagation.MS_SHARED, False)
    child = _new_ns(vfs, first)
    try:
        table = child.mounts
        peer_s = table.mount_of_root(_walk(vfs, child, b"/s"))
        assert peer_s.group == s.group != 0
        # shared: both ways
        _mount(vfs, child, VolFs(str(tmp / "three")), b"/s/sub")
        assert _sees(vfs, first, b"/s/sub/in-three")
        # a slave receives, and sends nothing back
        peer_v = table.mount_of_root(_walk(vfs, child, b"/v"))
        propagation.change_type(table, peer_v, propagation.MS_SLAVE, False)
        assert peer_v.group == 0 and peer_v.master == v.group
        _mount(vfs, child, VolFs(str(tmp / "three")), b"/v/mine")
        assert not _sees(vfs, first, b"/v/mine/in-three")
        _mount(vfs, first, VolFs(str(tmp / "one")), b"/v/sub")
        assert _sees(vfs, child, b"/v/sub/in-one")
        # an umount goes where the mount went
        sub = vfs.mounts.mount_of_root(_walk(vfs, first, b"/s/sub"))
        propagation.propagate_umount(vfs.mounts, sub, lambda t, m: t.umount(m))
        vfs.mounts.umount(sub)
        assert not _sees(vfs, child, b"/s/sub/in-three")
    finally:
        child.detach()


def test_private_mounts_do_not_propagate(world):
    vfs, first, tmp = world
    (tmp / "one" / "sub").mkdir()
    p = _mount(vfs, first, VolFs(str(tmp / "one")), b"/s")
    propagation.change_type(vfs.mounts, p, propagation.MS_SHARED, False)
    propagation.change_type(vfs.mounts, p, propagation.MS_PRIVATE, False)
    assert p.group == 0
    child = _new_ns(vfs, first)
    try:
        _mount(vfs, child, VolFs(str(tmp / "two")), b"/s/sub")
        assert not _sees(vfs, first, b"/s/sub/in-two")
    finally:
        child.detach()


def test_a_namespace_ends_with_its_last_user(world):
    vfs, first, tmp = world
    counted = _Counted(str(tmp / "one"))
    child = _new_ns(vfs, first)
    brother = child.copy().attach()          # a fork in the same namespace
    _mount(vfs, child, counted, b"/a")
    table = child.mounts
    assert table.users == 2
    child.detach()
    assert counted.gone == 0 and len(table.mounts) == 2
    brother.detach()
    assert counted.gone == 1 and len(table.mounts) == 1
    assert table not in [t for t in vfs.mounts.family if t.users] and not _sees(vfs, first, b"/a/in-one")


def test_enter_namespace_moves_root_and_cwd(world):
    vfs, first, tmp = world
    child = _new_ns(vfs, first)
    _mount(vfs, child, VolFs(str(tmp / "one")), b"/a")
    joiner = first.copy().attach()
    try:
        vfs.enter_namespace(joiner, child.mounts)
        assert joiner.mounts is child.mounts and child.mounts.users == 2
        assert joiner.root.mount is child.mounts.root_mount
        assert _sees(vfs, joiner, b"/a/in-one")
        vfs.enter_namespace(joiner, vfs.mounts)
        assert joiner.mounts is None and child.mounts.users == 1
    finally:
        joiner.detach()
        child.detach()


def test_pivot_moves_the_mounts_and_a_copy_keeps_them(world):
    """MountTable.pivot (pivot_root): the mount on /a/new takes the place of
    the one on /a, which goes to /a/new/old, i.e. /a/old; a copy made after
    (where a parent now comes after its child in the table) is the same."""
    vfs, first, tmp = world
    (tmp / "one" / "new").mkdir()
    (tmp / "two" / "old").mkdir()
    r = _mount(vfs, first, VolFs(str(tmp / "one")), b"/a")
    n = _mount(vfs, first, VolFs(str(tmp / "two")), b"/a/new")
    put_old = _walk(vfs, first, b"/a/new/old")
    try:
        vfs.mounts.pivot(n, r, put_old, vfs.vpath_of(put_old))
    finally:
        put_old.release()
    assert (n.path, r.path) == ("/a", "/a/old")
    assert _sees(vfs, first, b"/a/in-two") and _sees(vfs, first, b"/a/old/in-one")
    assert not _sees(vfs, first, b"/a/in-one")
    child = _new_ns(vfs, first)
    try:
        assert _sees(vfs, child, b"/a/in-two") and _sees(vfs, child, b"/a/old/in-one")
        assert sorted(m.path for m in child.mounts.mounts) == ["/", "/a", "/a/old"]
    finally:
        child.detach()
