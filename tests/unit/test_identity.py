"""Credential changes follow credentials(7): root may become anyone, a user
may only move between its real, effective and saved ids."""

from __future__ import annotations

import errno
from types import SimpleNamespace

import pytest

from lxsub.kernel.call import Call
from lxsub.kernel.creds import Creds
from lxsub.kernel.syscalls import identity

KEEP = 0xFFFFFFFF   # -1 as the kernel receives it


def call(creds: Creds, *args: int) -> Call:
    return Call(None, SimpleNamespace(creds=creds), 0, args + (0,) * (6 - len(args)))


def ids(c: Creds) -> tuple:
    return (c.ruid, c.euid, c.suid, c.fsuid)


def test_root_setuid_drops_everything():
    c = Creds.for_user(0, 0)
    identity.sys_setuid(call(c, 1000))
    assert ids(c) == (1000, 1000, 1000, 1000)
    assert c.cap_effective == 0 and c.cap_permitted == 0
    with pytest.raises(OSError) as e:
        identity.sys_setuid(call(c, 0))
    assert e.value.errno == errno.EPERM


def test_seteuid_round_trip_keeps_root_in_saved():
    c = Creds.for_user(0, 0)
    identity.sys_setresuid(call(c, KEEP, 1000, KEEP))
    assert ids(c) == (0, 1000, 0, 1000) and c.cap_effective == 0
    identity.sys_setresuid(call(c, KEEP, 0, KEEP))
    assert ids(c) == (0, 0, 0, 0) and c.cap_effective == c.cap_permitted != 0


def test_setreuid_sets_saved_to_new_effective():
    c = Creds.for_user(0, 0)
    identity.sys_setreuid(call(c, 1000, 2000))
    assert ids(c) == (1000, 2000, 2000, 2000)
    with pytest.raises(OSError):
        identity.sys_setreuid(call(c, 3000, KEEP))


def test_user_may_swap_between_its_own_gids_only():
    c = Creds(ruid=1000, euid=1000, suid=1000, fsuid=1000, rgid=100, egid=200, sgid=300,
              fsgid=200, cap_effective=0, cap_permitted=0)
    identity.sys_setgid(call(c, 300))
    assert (c.rgid, c.egid, c.sgid, c.fsgid) == (100, 300, 300, 300)
    with pytest.raises(OSError):
        identity.sys_setgid(call(c, 0))
    identity.sys_setregid(call(c, KEEP, 100))
    # e equals the old real id: the saved id stays (credentials(7))
    assert (c.rgid, c.egid, c.sgid) == (100, 100, 300)


def test_setgroups_needs_capability():
    c = Creds.for_user(1000, 1000)
    with pytest.raises(OSError) as e:
        identity.sys_setgroups(call(c, 0, 0))
    assert e.value.errno == errno.EPERM
