"""The path walk stays inside the instance root whatever the tree holds."""

from __future__ import annotations

import errno
import os

import pytest

from lxsub.kernel.creds import Creds
from lxsub.kernel.fs.volfs import VolFs
from lxsub.kernel.vfs.mount import MountTable
from lxsub.kernel.vfs.caller import Caller
from lxsub.kernel.vfs.path import Walker


@pytest.fixture
def tree(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host secret")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "secret").write_text("instance secret")
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "usr" / "lib" / "libc.so").write_text("libc")
    os.symlink("usr/lib", root / "lib")
    os.symlink("/etc/secret", root / "abs")
    os.symlink("../../../../../../outside/secret", root / "dotdot")
    os.symlink(str(outside / "secret"), root / "hostabs")
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    mounts = MountTable(VolFs(str(root)), "rootfs")
    rootnode = mounts.root_mount.root()
    yield Walker(mounts, rootnode, Caller(Creds())), rootnode, root
    rootnode.release()


def read(walker, root, path: bytes) -> str:
    node = walker.resolve(root, path)
    try:
        fd = node.fs.open(node, os.O_RDONLY, walker.caller)
    finally:
        node.release()
    with os.fdopen(fd) as f:
        return f.read()


def test_plain_and_symlinked_paths(tree):
    w, root, _ = tree
    assert read(w, root, b"/etc/secret") == "instance secret"
    assert read(w, root, b"/lib/libc.so") == "libc"          # through a relative symlink
    assert read(w, root, b"/abs") == "instance secret"       # absolute symlink: instance root


@pytest.mark.parametrize("path", [b"/../../../../outside/secret", b"/dotdot", b"/etc/../../outside/secret"])
def test_dotdot_never_leaves_the_root(tree, path):
    w, root, _ = tree
    with pytest.raises(OSError) as e:
        read(w, root, path)
    assert e.value.errno == errno.ENOENT


def test_absolute_symlink_to_a_host_path_resolves_inside(tree):
    w, root, hostroot = tree
    with pytest.raises(OSError) as e:
        read(w, root, b"/hostabs")
    assert e.value.errno == errno.ENOENT


def test_symlink_loops_are_eloop(tree):
    w, root, _ = tree
    with pytest.raises(OSError) as e:
        w.resolve(root, b"/loop1")
    assert e.value.errno == errno.ELOOP


def test_nofollow_gives_the_link_and_dir_dot_follows_it(tree):
    w, root, _ = tree
    link = w.resolve(root, b"/lib", follow=False)
    assert link.is_symlink()
    link.release()
    d = w.resolve(root, b"/lib/.", follow=False)
    assert d.is_dir()
    d.release()


def test_not_a_directory_in_the_middle(tree):
    w, root, _ = tree
    with pytest.raises(OSError) as e:
        w.resolve(root, b"/etc/secret/x")
    assert e.value.errno == errno.ENOTDIR


def test_parent_resolution_keeps_last_name(tree):
    w, root, _ = tree
    parent, name = w.resolve_parent(root, b"/lib/newfile")
    try:
        assert name == b"newfile"
        assert parent.is_dir()
    finally:
        parent.release()
