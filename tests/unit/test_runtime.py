"""lxsub.runtime: where the sockets go (a local private directory, never LX_HOME)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from lxsub import runtime
from lxsub.errors import EXIT_NOPERM, LxError

NOBODY = 65534


@pytest.fixture
def env(monkeypatch):
    """LX_HOME, TMPDIR and a private XDG_RUNTIME_DIR, all in a short new
    directory (pytest's tmp_path is too long for socket paths)."""
    tmp_path = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    home, tmp, xdg = tmp_path / "home", tmp_path / "tmp", tmp_path / "xdg"
    for d in (home, tmp, xdg):
        d.mkdir(mode=0o700)
    os.chmod(xdg, 0o700)
    monkeypatch.setenv("LX_HOME", str(home))
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    yield tmp_path
    shutil.rmtree(tmp_path)


def _mode(p: Path) -> int:
    return os.lstat(p).st_mode & 0o7777


def test_a_private_xdg_runtime_dir_is_used(env):
    d = runtime.runtime_dir()
    assert d.parent == env / "xdg" and d.name.startswith("lxsub-") and _mode(d) == 0o700


def test_a_tmpdir_others_may_write_in_without_the_sticky_bit_is_passed_over(env, monkeypatch):
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    os.chmod(env / "tmp", 0o777)       # anyone could rename our directory away
    in_tmp = runtime.runtime_dir()
    os.rmdir(in_tmp)
    assert in_tmp.parent == Path(f"/tmp/lxsub-{os.getuid()}")
    os.chmod(env / "tmp", 0o1777)      # sticky, as /tmp: safe
    assert runtime.runtime_dir().parent == env / "tmp" / f"lxsub-{os.getuid()}"


@pytest.mark.parametrize("problem", ["missing", "relative", "others-may-write"])
def test_an_unusable_xdg_runtime_dir_is_passed_over_for_tmpdir(env, monkeypatch, problem):
    if problem == "missing":         # a login node's value in a batch job
        monkeypatch.setenv("XDG_RUNTIME_DIR", f"/run/user/{os.getuid()}/not-on-this-node")
    elif problem == "relative":
        monkeypatch.setenv("XDG_RUNTIME_DIR", "xdg")
    else:
        os.chmod(env / "xdg", 0o777)
    d = runtime.runtime_dir()
    assert d.parent == env / "tmp" / f"lxsub-{os.getuid()}"
    assert _mode(d) == 0o700 and _mode(d.parent) == 0o700
    assert list((env / "xdg").iterdir()) == []


def test_sockets_never_go_under_lx_home_and_fit_in_sun_path(env, monkeypatch):
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    long_tmp = env / ("t" * 100)
    long_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(long_tmp))   # too long: /tmp is next
    home = Path(os.environ["LX_HOME"])
    for d in runtime.candidates():
        assert not str(d).startswith(str(home))
    sock = runtime.instance_socket("a-distro-with-a-long-name" * 4)
    try:
        assert str(sock).startswith(f"/tmp/lxsub-{os.getuid()}/")
        assert len(os.fsencode(str(sock))) <= runtime.SUN_PATH_MAX
    finally:
        for p in (sock.parent, sock.parent.parent):
            os.rmdir(p)


def test_the_directory_is_keyed_by_the_resolved_lx_home(env, monkeypatch):
    first = runtime.runtime_dir()
    link = env / "home-link"
    link.symlink_to(env / "home")
    monkeypatch.setenv("LX_HOME", str(link))
    assert runtime.runtime_dir() == first
    other = env / "home2"
    other.mkdir()
    monkeypatch.setenv("LX_HOME", str(other))
    assert runtime.runtime_dir() != first


def _refused(expected: str) -> str:
    with pytest.raises(LxError) as e:
        runtime.runtime_dir()
    assert e.value.exit_code == EXIT_NOPERM
    assert "\n" not in e.value.message and expected in e.value.message
    return e.value.message


def test_a_group_writable_premade_directory_is_refused_not_repaired(env, monkeypatch):
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    planted = env / "tmp" / f"lxsub-{os.getuid()}"
    planted.mkdir(mode=0o700)
    os.chmod(planted, 0o770)
    message = _refused(f"unsafe runtime directory {planted}: mode 0770, not 0700")
    assert "remove it" in message and _mode(planted) == 0o770


def test_a_symlink_in_place_of_the_directory_is_refused(env, monkeypatch):
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    elsewhere = env / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (env / "tmp" / f"lxsub-{os.getuid()}").symlink_to(elsewhere)
    _refused("a symbolic link")
    assert list(elsewhere.iterdir()) == []


def test_another_users_premade_directory_is_refused(env, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("needs root to make a directory owned by another user")
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    os.chmod(env / "tmp", 0o1777)
    planted = env / "tmp" / f"lxsub-{os.getuid()}"
    planted.mkdir(mode=0o700)
    os.chown(planted, NOBODY, NOBODY)
    _refused(f"owned by uid {NOBODY}, not by you")


def test_storage_dirs_name_every_candidate_and_its_private_parent(env):
    dirs = runtime.storage_dirs()
    assert set(runtime.candidates()) <= set(dirs)
    assert env / "tmp" / f"lxsub-{os.getuid()}" in dirs
    assert Path(f"/tmp/lxsub-{os.getuid()}") in dirs
