"""Host doors (kernel/doors.py): who holds them, by the distro's own
/etc/passwd and /etc/group (real files in a directory standing for the
root file system), and lxsub's own storage (kernel/fs/sealed.py)."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from lxsub.config import parse_distro_config
from lxsub.kernel import doors
from lxsub.kernel.creds import Creds
from lxsub.kernel.log import Log

PASSWD = "root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n" \
         "bob:x:1001:1001::/home/bob:/bin/sh\nwww-data:x:33:33::/var/www:/bin/false\n"
GROUP = "root:x:0:\nalice:x:1000:\nbob:x:1001:\nwww-data:x:33:\nlxhost:x:999:bob\n"


def _instance(tmp_path: Path, conf: str = "", passwd: str = PASSWD, group: str = GROUP):
    (tmp_path / "etc").mkdir(exist_ok=True)
    (tmp_path / "etc" / "passwd").write_text(passwd)
    (tmp_path / "etc" / "group").write_text(group)
    log = Log(str(tmp_path / "lx.log"))
    return SimpleNamespace(rootfs=str(tmp_path), log=log, config=parse_distro_config(conf))


def _who(uid: int, gid: int, groups: tuple[int, ...] = ()) -> Creds:
    return Creds.for_user(uid, gid, groups or (gid,))


ROOT, ALICE, BOB_NO_LOGIN_GROUPS, WWW = _who(0, 0), _who(1000, 1000), _who(1001, 1001), _who(33, 33)
BOB = _who(1001, 1001, (1001, 999))


def test_default_rule_is_root_the_default_user_and_lxhost(tmp_path):
    drvfs, interop = doors.make_doors(_instance(tmp_path), default_user="alice")
    for door in (drvfs, interop):
        assert door.allows(ROOT) and door.allows(ALICE) and door.allows(BOB)
        assert not door.allows(WWW)
        # Group membership is the process's (setgroups at login), as in Linux.
        assert not door.allows(BOB_NO_LOGIN_GROUPS)


def test_lx_conf_user_default_wins_over_the_registry(tmp_path):
    inst = _instance(tmp_path, "[user]\ndefault = www-data\n")
    drvfs, _ = doors.make_doors(inst, default_user="alice")
    assert drvfs.allows(WWW) and not drvfs.allows(ALICE)


def test_lists_and_everyone(tmp_path):
    inst = _instance(tmp_path, "[automount]\nusers = alice\n[interop]\nusers = *\n")
    drvfs, interop = doors.make_doors(inst, default_user=None)
    assert drvfs.allows(ALICE) and not drvfs.allows(ROOT) and not drvfs.allows(BOB)
    assert all(interop.allows(c) for c in (ROOT, ALICE, BOB, WWW))


def test_refused_is_eacces_and_logged_once(tmp_path):
    inst = _instance(tmp_path)
    drvfs, _ = doors.make_doors(inst, default_user=None)
    for _ in range(3):
        with pytest.raises(OSError) as info:
            drvfs.check(WWW)
        assert info.value.errno == errno.EACCES
    said = (tmp_path / "lx.log").read_text().splitlines()
    assert len(said) == 1 and "[automount] users: uid 33 does not hold" in said[0], said


def test_names_are_re_resolved_when_the_files_change(tmp_path, monkeypatch):
    inst = _instance(tmp_path, "[automount]\nusers = carol, @ops\n")
    drvfs, _ = doors.make_doors(inst, default_user=None)
    carol = _who(1002, 1002)
    assert not drvfs.allows(carol)
    with open(tmp_path / "etc" / "passwd", "a") as f:
        f.write("carol:x:1002:1002::/home/carol:/bin/sh\n")
    with open(tmp_path / "etc" / "group", "a") as f:
        f.write("ops:x:2000:\n")
    now = time.monotonic()
    monkeypatch.setattr(doors.time, "monotonic", lambda: now + 2)   # past the recheck delay
    assert drvfs.allows(carol) and drvfs.allows(_who(1003, 1003, (1003, 2000)))


def test_storage_is_recognised_by_identity(tmp_path, monkeypatch):
    from lxsub.kernel.fs.sealed import Storage
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "rootfs").mkdir()
    other = tmp_path / "other"
    other.mkdir()
    (tmp_path / "link").symlink_to(home)
    monkeypatch.setenv("LX_HOME", str(tmp_path / "link"))          # spelled through a symlink
    inst = SimpleNamespace(name="t", rootfs=str(tmp_path / "rootfs"), _scratch=None,
                           log=Log(None))
    storage = Storage(inst)
    try:
        assert storage.is_sealed(os.stat(home)) and storage.is_sealed(os.stat(tmp_path / "rootfs"))
        assert not storage.is_sealed(os.stat(other)) and not storage.is_sealed(os.stat(tmp_path))
        assert storage.under(str(home) + "/distros/x") and not storage.under(str(other))
        # The blank: an empty directory that no longer exists, for everyone.
        fd, s = storage.blank()
        try:
            assert storage.is_blank(s) and s.st_nlink == 0
            with pytest.raises(FileNotFoundError):
                os.mkdir("x", dir_fd=os.open(f"/proc/self/fd/{fd}", os.O_RDONLY))
        finally:
            os.close(fd)
    finally:
        storage.close()
