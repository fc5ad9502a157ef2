"""The distro registry: persistence, defaults, errors, atomic and serialised writes."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from lxsub import state
from lxsub.errors import (EXIT_CANTCREAT, EXIT_DATAERR, EXIT_TEMPFAIL, EXIT_UNAVAILABLE,
                          EXIT_USAGE, LxError)
from lxsub.state import (INSTALLED, INSTALLING, UNINSTALLING, Distro, Registry, check_launchable,
                         delete_rootfs, lx_home, running_distros, set_running_provider)


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


# -- one change at a time: creating, locks, recovery --


def _hold_lock_in_child(home: str, name: str, ready, release) -> None:
    reg = Registry(Path(home))
    with reg.distro_lock(name, "install"):
        ready.set()
        release.wait(30)


@pytest.fixture
def lock_holder(registry: Registry):
    """Start a process holding distro NAME's lock; yields a starter."""
    ctx = multiprocessing.get_context("fork")
    procs = []

    def start(name: str):
        ready, release = ctx.Event(), ctx.Event()
        proc = ctx.Process(target=_hold_lock_in_child, args=(str(registry.home), name, ready, release))
        proc.start()
        assert ready.wait(10)
        procs.append((proc, release))
        return release

    yield start
    for proc, release in procs:
        release.set()
        proc.join(10)


def test_creating_registers_only_when_done(registry: Registry, tmp_path: Path) -> None:
    rootfs = tmp_path / "d" / "rootfs"
    with registry.creating("new", rootfs) as work:
        entry = registry.get("new")
        assert entry.state == INSTALLING and entry.work == str(work)
        assert work.parent == rootfs.parent and work.name.startswith(".rootfs.partial-")
        with pytest.raises(LxError) as info:
            check_launchable(entry)
        assert info.value.exit_code == EXIT_TEMPFAIL
        assert "still being installed" in info.value.message
        (work / "etc").mkdir()
    done = registry.get("new")
    assert done.state == INSTALLED and done.work is None
    assert (rootfs / "etc").is_dir() and not work.exists()
    assert "work" not in json.loads(registry.path.read_text())["distros"][0]
    check_launchable(done)


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_creating_failure_leaves_nothing(registry: Registry, tmp_path: Path, error) -> None:
    rootfs = tmp_path / "d" / "rootfs"
    with pytest.raises(type(error)):
        with registry.creating("new", rootfs) as work:
            (work / "file").write_text("x")
            raise error
    assert registry.list() == []
    assert not (tmp_path / "d").exists()


def test_creating_keeps_an_existing_parent(registry: Registry, tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(RuntimeError):
        with registry.creating("new", tmp_path / "d" / "rootfs"):
            raise RuntimeError
    assert (tmp_path / "d").is_dir() and list((tmp_path / "d").iterdir()) == []


def test_creating_refuses_existing_rootfs_and_name(registry: Registry, tmp_path: Path) -> None:
    (tmp_path / "d" / "rootfs").mkdir(parents=True)
    with pytest.raises(LxError) as info:
        with registry.creating("x", tmp_path / "d" / "rootfs"):
            pass
    assert info.value.exit_code == EXIT_CANTCREAT and "already exists" in info.value.message
    registry.add(distro("taken", tmp_path))
    with pytest.raises(LxError) as info:
        with registry.creating("taken", tmp_path / "e" / "rootfs"):
            pass
    assert info.value.exit_code == EXIT_CANTCREAT
    assert not (tmp_path / "e").exists()


def test_second_change_waits_then_fails_clearly(registry: Registry, lock_holder,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state, "LOCK_WAIT_SECONDS", 0.3)
    lock_holder("busy")
    assert registry.is_busy("busy")
    with pytest.raises(LxError) as info:
        with registry.distro_lock("busy", "export"):
            pass
    assert info.value.exit_code == EXIT_TEMPFAIL
    assert info.value.message.startswith("distro 'busy' is busy: install (pid ")
    assert "try again" in info.value.message
    with registry.distro_lock("other", "export"):  # other distros are not affected
        pass


def test_lock_waits_for_a_short_holder(registry: Registry, lock_holder) -> None:
    release = lock_holder("brief")
    import threading
    threading.Timer(0.3, release.set).start()
    with registry.distro_lock("brief", "import", wait=10):
        pass


def test_recover_removes_an_interrupted_install(registry: Registry, tmp_path: Path) -> None:
    rootfs = tmp_path / "d" / "rootfs"
    work = tmp_path / "d" / ".rootfs.partial-abc"
    (work / "etc").mkdir(parents=True)
    registry.add(Distro("half", rootfs, state=INSTALLING, work=str(work), made_parent=True))
    registry.add(distro("whole", tmp_path))
    assert registry.recover() == [
        "an earlier install of 'half' was interrupted; its files were removed"]
    assert [d.name for d in registry.list()] == ["whole"]
    assert registry.default().name == "whole"
    assert not (tmp_path / "d").exists()
    assert registry.recover() == []


def test_recover_leaves_a_running_install_alone(registry: Registry, tmp_path: Path,
                                               lock_holder) -> None:
    work = tmp_path / "d" / ".rootfs.partial-abc"
    work.mkdir(parents=True)
    registry.add(Distro("live", tmp_path / "d" / "rootfs", state=INSTALLING, work=str(work)))
    lock_holder("live")
    assert registry.recover() == []
    assert registry.get("live").state == INSTALLING and work.exists()


def test_recover_finishes_an_interrupted_unregister(registry: Registry, tmp_path: Path) -> None:
    rootfs = tmp_path / "d" / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    registry.add(Distro("going", rootfs, state=UNINSTALLING))
    assert registry.recover() == [
        "an earlier unregister of 'going' was interrupted; it has now been completed"]
    assert registry.list() == [] and not (tmp_path / "d").exists()


def test_recover_never_deletes_outside_the_distro_directory(registry: Registry,
                                                           tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    registry.add(Distro("odd", tmp_path / "d" / "rootfs", state=INSTALLING, work=str(precious)))
    registry.recover()
    assert precious.is_dir() and registry.list() == []


def test_unregister_removes_files_then_entry(registry: Registry, tmp_path: Path) -> None:
    d = distro("gone", tmp_path)
    (d.rootfs / "etc").mkdir(parents=True)
    registry.add(d)
    removed = registry.unregister("gone")
    assert removed.state == UNINSTALLING
    assert registry.list() == [] and not d.rootfs.parent.exists()


def test_unregister_refuses_a_running_distro(registry: Registry, tmp_path: Path) -> None:
    d = distro("busy", tmp_path)
    d.rootfs.mkdir(parents=True)
    registry.add(d)
    set_running_provider(lambda: ["busy"])
    try:
        assert running_distros() == frozenset({"busy"})
        with pytest.raises(LxError) as info:
            registry.unregister("busy")
        assert info.value.exit_code == EXIT_TEMPFAIL and "lx --terminate busy" in info.value.message
    finally:
        set_running_provider(None)
    assert running_distros() == frozenset()
    assert registry.get("busy").state == INSTALLED


def test_check_launchable(tmp_path: Path) -> None:
    d = distro("x", tmp_path)
    with pytest.raises(LxError) as info:
        check_launchable(d)
    assert info.value.exit_code == EXIT_UNAVAILABLE and "are missing" in info.value.message
    d.rootfs.mkdir(parents=True)
    check_launchable(d)
    d = d._replace(state=UNINSTALLING)
    with pytest.raises(LxError, match="being unregistered") as info:
        check_launchable(d)
    assert info.value.exit_code == EXIT_TEMPFAIL


def test_update_and_set_default_rules(registry: Registry, tmp_path: Path) -> None:
    registry.add(distro("a", tmp_path))
    registry.add(Distro("b", tmp_path / "b", state=INSTALLING, work=str(tmp_path / ".b")))
    assert registry.update("a", default_user="alice").default_user == "alice"
    assert registry.get("a").default_user == "alice"
    with pytest.raises(LxError) as info:
        registry.set_default("b")
    assert info.value.exit_code == EXIT_TEMPFAIL


def test_old_registry_entries_still_load(registry: Registry) -> None:
    registry.home.mkdir(parents=True)
    registry.path.write_text(json.dumps({"format": 1, "default": "a", "distros": [
        {"name": "a", "rootfs": "/x/rootfs", "default_user": "root", "state": "Installed",
         "version": 1}]}))
    d = registry.get("a")
    assert (d.state, d.work, d.made_parent, d.source) == (INSTALLED, None, False, "")
