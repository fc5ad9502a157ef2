"""The Vfs: which mount a host descriptor's file is on, and a file's path in
the instance (d_path, as getcwd(2) and /proc/<pid>/fd show it)."""

from __future__ import annotations

import os

import pytest

from lxsub.kernel.creds import Creds
from lxsub.kernel.fs.volfs import VolFs
from lxsub.kernel.vfs.caller import Caller
from lxsub.kernel.vfs.path import Walker
from lxsub.kernel.vfs.vfs import Vfs


@pytest.fixture
def vfs(tmp_path):
    """A rootfs with a second host tree mounted at /mnt/data and a bind
    mount of the rootfs's /srv/www at /var/www."""
    root = tmp_path / "root"
    for d in ("etc", "mnt/data", "srv/www/html", "var/www"):
        (root / d).mkdir(parents=True)
    (root / "etc" / "hostname").write_text("box\n")
    (root / "srv" / "www" / "html" / "index.html").write_text("hi")
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "file").write_text("data")
    (tmp_path / "outside").write_text("host only")

    v = Vfs(VolFs(str(root)), "rootfs")
    walk = Walker(v.mounts, v.mounts.root_mount.root(), Caller(Creds()))
    at = walk.resolve(walk.root, b"/mnt/data")
    v.mounts.mount(VolFs(str(data)), at, "/mnt/data", "data")
    at.release()
    src = walk.resolve(walk.root, b"/srv/www")
    at = walk.resolve(walk.root, b"/var/www")
    v.mounts.mount(src.fs.for_bind(src), at, "/var/www", "rootfs", root=src, root_path="/srv/www")
    src.release()
    at.release()
    yield v, walk, tmp_path
    walk.root.release()


def _host_fd(path) -> int:
    return os.open(path, os.O_PATH | os.O_CLOEXEC)


@pytest.mark.parametrize("instance_path", [b"/etc/hostname", b"/mnt/data/sub/file", b"/mnt/data",
                                           b"/var/www/html/index.html", b"/"])
def test_a_file_has_the_path_it_was_found_by(vfs, instance_path):
    v, _, _ = vfs
    node = v.resolve(instance_path, Caller(Creds()))
    try:
        assert v.vpath_of(node) == instance_path.decode()
    finally:
        node.release()


def test_a_host_descriptor_finds_its_mount_deepest_root_first(vfs):
    v, _, tmp = vfs
    node = v.node_of_host_fd(_host_fd(tmp / "data" / "sub" / "file"))
    try:
        assert node.mount.path == "/mnt/data"
        assert v.vpath_of(node) == "/mnt/data/sub/file"
    finally:
        node.release()


def test_a_deleted_file_keeps_its_path(vfs):
    v, _, tmp = vfs
    victim = tmp / "root" / "etc" / "gone"
    victim.write_text("x")
    fd = _host_fd(victim)
    victim.unlink()
    node = v.node_of_host_fd(fd)
    try:
        assert v.vpath_of(node) == "/etc/gone"     # /proc/<pid>/fd adds " (deleted)" itself
    finally:
        node.release()


def test_a_host_file_outside_every_mount_is_no_file_of_the_instance(vfs):
    v, _, tmp = vfs
    fd = _host_fd(tmp / "outside")
    with pytest.raises(OSError):
        v.node_of_host_fd(fd)                      # closes fd
    anon = v.node_or_anon(_host_fd(tmp / "outside"))
    try:
        assert anon.mount is v.anon_mount
        assert v.mount_id_of_host_fd(anon.fd) == v.anon_mount.id
    finally:
        anon.release()


def test_the_index_follows_mounts_and_umounts(vfs):
    v, _, tmp = vfs
    m = next(m for m in v.mounts.mounts if m.path == "/mnt/data")
    fd = _host_fd(tmp / "data" / "sub" / "file")
    try:
        assert v.node_for_host_fd(fd, os.fstat(fd)).mount is m
        v.mounts.umount(m)
        assert v.node_for_host_fd(fd, os.fstat(fd)) is None
    finally:
        os.close(fd)


def test_host_paths_map_to_instance_paths_through_host_roots(vfs):
    v, _, tmp = vfs
    roots = v.host_roots()
    assert v.host_to_vpath(roots, str(tmp / "data" / "sub" / "file")) == "/mnt/data/sub/file"
    assert v.host_to_vpath(roots, str(tmp / "root" / "etc")) == "/etc"
    assert v.host_to_vpath(roots, str(tmp / "outside")) is None
