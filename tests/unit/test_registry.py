"""The distro registry: persistence, defaults, errors, atomic and serialised writes."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from lxsub.errors import EXIT_CANTCREAT, EXIT_DATAERR, EXIT_UNAVAILABLE, EXIT_USAGE, LxError
from lxsub.state import Distro, Registry, delete_rootfs, lx_home


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    home = tmp_path / "lxhome"
    monkeypatch.setenv("LX_HOME", str(home))
    return Registry(lx_home())


def distro(name: str, tmp_path: Path) -> Distro:
    return Distro(name=name, rootfs=tmp_path / name / "rootfs")


# -- where state lives --


def test_lx_home_prefers_lx_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LX_HOME", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert lx_home() == tmp_path / "a"


def test_lx_home_falls_back_to_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LX_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert lx_home() == tmp_path / "xdg" / "lx"


def test_lx_home_defaults_to_local_share(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LX_HOME", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert lx_home() == tmp_path / ".local" / "share" / "lx"


# -- contents --


def test_empty_registry(registry: Registry) -> None:
    assert registry.list() == []
    assert not registry.home.exists(), "reading must not create state"
    with pytest.raises(LxError) as info:
        registry.default()
    assert info.value.exit_code == EXIT_UNAVAILABLE
    assert "lx --import" in info.value.message


def test_add_get_list_persist(registry: Registry, tmp_path: Path) -> None:
    registry.add(distro("debian", tmp_path))
    registry.add(Distro("busybox", tmp_path / "bb", default_user="user", version=1))
    again = Registry(registry.home)  # a fresh reader sees what was written
    assert [d.name for d in again.list()] == ["debian", "busybox"]
    assert again.get("busybox") == Distro("busybox", tmp_path / "bb", default_user="user")
    assert isinstance(again.get("debian").rootfs, Path)
    data = json.loads((registry.home / "registry.json").read_text())
    assert data["default"] == "debian"


def test_first_distro_becomes_default(registry: Registry, tmp_path: Path) -> None:
    registry.add(distro("first", tmp_path))
    registry.add(distro("second", tmp_path))
    assert registry.default().name == "first"


def test_set_default(registry: Registry, tmp_path: Path) -> None:
    registry.add(distro("first", tmp_path))
    registry.add(distro("second", tmp_path))
    registry.set_default("second")
    assert Registry(registry.home).default().name == "second"


def test_set_default_unknown(registry: Registry, tmp_path: Path) -> None:
    registry.add(distro("first", tmp_path))
    with pytest.raises(LxError) as info:
        registry.set_default("ghost")
    assert info.value.exit_code == EXIT_UNAVAILABLE
    assert registry.default().name == "first"


def test_get_unknown_names_it_and_says_what_to_do(registry: Registry) -> None:
    with pytest.raises(LxError) as info:
        registry.get("foo")
    assert info.value.exit_code == EXIT_UNAVAILABLE
    assert "no distro named 'foo'" in info.value.message
    assert "lx --list" in info.value.message and "lx --import NAME DIR TARBALL" in info.value.message


def test_add_duplicate(registry: Registry, tmp_path: Path) -> None:
    registry.add(distro("dup", tmp_path))
    with pytest.raises(LxError) as info:
        registry.add(Distro("dup", tmp_path / "elsewhere"))
    assert info.value.exit_code == EXIT_CANTCREAT
    assert registry.get("dup").rootfs == tmp_path / "dup" / "rootfs"


@pytest.mark.parametrize("name", ["", "has space", "a/b", "ünï", "semi;colon", "new\nline"])
def test_invalid_names(registry: Registry, tmp_path: Path, name: str) -> None:
    with pytest.raises(LxError) as info:
        registry.add(Distro(name, tmp_path / "x"))
    assert info.value.exit_code == EXIT_USAGE
    assert registry.list() == []


@pytest.mark.parametrize("name", ["debian", "Ubuntu-22.04", "a_b.c-d", "0"])
def test_valid_names(registry: Registry, tmp_path: Path, name: str) -> None:
    registry.add(Distro(name, tmp_path / "x"))
    assert registry.get(name).name == name


def test_remove(registry: Registry, tmp_path: Path) -> None:
    registry.add(distro("a", tmp_path))
    registry.add(distro("b", tmp_path))
    removed = registry.remove("b")
    assert removed.name == "b"
    assert [d.name for d in registry.list()] == ["a"]
    assert registry.default().name == "a"


def test_removing_default_passes_it_on(registry: Registry, tmp_path: Path) -> None:
    registry.add(distro("a", tmp_path))
    registry.add(distro("b", tmp_path))
    registry.remove("a")
    assert registry.default().name == "b"
    registry.remove("b")
    with pytest.raises(LxError):
        registry.default()


def test_remove_unknown(registry: Registry) -> None:
    with pytest.raises(LxError) as info:
        registry.remove("ghost")
    assert info.value.exit_code == EXIT_UNAVAILABLE


def test_corrupt_registry_is_reported(registry: Registry) -> None:
    registry.home.mkdir(parents=True)
    (registry.home / "registry.json").write_text("{ not json")
    with pytest.raises(LxError) as info:
        registry.list()
    assert info.value.exit_code == EXIT_DATAERR
    assert "registry.json" in info.value.message


# -- atomicity and locking --


def test_failed_write_keeps_old_registry(registry: Registry, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    registry.add(distro("kept", tmp_path))
    before = (registry.home / "registry.json").read_bytes()

    def crash(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        registry.add(distro("lost", tmp_path))
    monkeypatch.undo()
    assert (registry.home / "registry.json").read_bytes() == before
    assert sorted(os.listdir(registry.home)) == ["registry.json", "registry.lock"], "temp file left behind"


def test_write_is_fsynced_before_rename(registry: Registry, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    registry.add(distro("d", tmp_path))
    assert events[:2] == ["fsync", "replace"]
    assert events[-1] == "fsync", "the directory entry must be made durable too"


def _add_many(home: str, prefix: str, count: int) -> None:
    reg = Registry(Path(home))
    for i in range(count):
        reg.add(Distro(f"{prefix}-{i}", Path(home) / f"{prefix}-{i}"))


def test_concurrent_writers_lose_nothing(registry: Registry) -> None:
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_add_many, args=(str(registry.home), f"p{n}", 10)) for n in range(6)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    assert len(registry.list()) == 60


def test_lock_is_exclusive(registry: Registry) -> None:
    import fcntl

    with registry.locked():
        fd = os.open(registry.lock_path, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)


# -- deleting a distro's files --


def test_delete_rootfs_removes_tree_and_empty_parent(tmp_path: Path) -> None:
    rootfs = tmp_path / "d" / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    os.chmod(rootfs / "etc", 0o500)  # a host tool left it read-only
    os.symlink(str(tmp_path / "outside"), rootfs / "escape")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "keep").write_text("host file")
    delete_rootfs(Distro("d", rootfs))
    assert not (tmp_path / "d").exists()
    assert (tmp_path / "outside" / "keep").exists()


def test_delete_rootfs_keeps_parent_with_other_files(tmp_path: Path) -> None:
    rootfs = tmp_path / "d" / "rootfs"
    rootfs.mkdir(parents=True)
    (tmp_path / "d" / "notes").write_text("mine")
    delete_rootfs(Distro("d", rootfs))
    assert not rootfs.exists() and (tmp_path / "d" / "notes").exists()


@pytest.mark.parametrize("bad", ["/", "relative/rootfs"])
def test_delete_rootfs_refuses_silly_paths(bad: str) -> None:
    with pytest.raises(LxError):
        delete_rootfs(Distro("x", Path(bad)))


def test_missing_rootfs_is_fine(tmp_path: Path) -> None:
    delete_rootfs(Distro("x", tmp_path / "gone" / "rootfs"))
    assert not (tmp_path / "gone").exists()
