"""The key retention service's rules (kernel/keys.py): permissions,
possession, quotas and collection, keyring inheritance (keyrings(7))."""

from __future__ import annotations

import errno

import pytest

from lxsub.kernel import keys
from lxsub.kernel.creds import Creds
from lxsub.abi.keyctl import (KEY_SPEC_PROCESS_KEYRING, KEY_SPEC_SESSION_KEYRING, KEY_SPEC_THREAD_KEYRING,
                              KEY_SPEC_USER_KEYRING, KEY_SPEC_USER_SESSION_KEYRING)
from lxsub.kernel.keys import KEY_POS_ALL, KeyService


def _errno(fn, *args) -> int:
    with pytest.raises(OSError) as e:
        fn(*args)
    return e.value.errno


@pytest.fixture
def live():
    """The credentials of the 'running tasks' whose keyrings keep keys alive."""
    return []


@pytest.fixture
def svc(live) -> KeyService:
    return KeyService(lambda: live)


def _user(live, uid: int, gid: int | None = None) -> Creds:
    c = Creds.for_user(uid, uid if gid is None else gid)
    live.append(c)
    return c


def test_default_permissions_and_describe(svc, live):
    root = _user(live, 0)
    k = svc.add_key(root, "user", "a", b"xyz", KEY_SPEC_THREAD_KEYRING)
    assert svc.describe(root, k) == b"user;0;0;3f010000;a\0"
    lk = svc.add_key(root, "logon", "svc:a", b"secret", KEY_SPEC_THREAD_KEYRING)
    # logon keys cannot be read back, even by their possessor.
    assert _errno(svc.read, root, lk) == errno.EOPNOTSUPP
    assert svc.read(root, k) == b"xyz"


def test_type_and_payload_rules(svc, live):
    root = _user(live, 0)
    assert _errno(svc.add_key, root, "user", "a", b"x" * 32768, KEY_SPEC_THREAD_KEYRING) \
        == errno.EINVAL
    assert _errno(svc.add_key, root, "keyring", "r", b"x", KEY_SPEC_THREAD_KEYRING) == errno.EINVAL
    assert _errno(svc.add_key, root, "logon", "nocolon", b"x", KEY_SPEC_THREAD_KEYRING) \
        == errno.EINVAL
    assert _errno(svc.add_key, root, "asymmetric", "a", b"x", KEY_SPEC_THREAD_KEYRING) \
        == errno.ENODEV
    assert _errno(svc.request_key, root, "dead", "a", None, 0) == errno.ENOKEY


def test_add_key_updates_a_user_key_in_place(svc, live):
    root = _user(live, 0)
    a = svc.add_key(root, "user", "a", b"one", KEY_SPEC_PROCESS_KEYRING)
    assert svc.add_key(root, "user", "a", b"two", KEY_SPEC_PROCESS_KEYRING) == a
    assert svc.read(root, a) == b"two"
    # keyrings have no update: a new one replaces the old in the keyring.
    r1 = svc.add_key(root, "keyring", "r", b"", KEY_SPEC_PROCESS_KEYRING)
    r2 = svc.add_key(root, "keyring", "r", b"", KEY_SPEC_PROCESS_KEYRING)
    assert r1 != r2
    assert _errno(svc.lookup, root, r1, 0) == errno.ENOKEY     # collected


def test_other_users_see_only_their_byte(svc, live):
    root = _user(live, 0)
    k = svc.add_key(root, "user", "a", b"xyz", KEY_SPEC_SESSION_KEYRING)
    other = _user(live, 1000)
    # Not possessed by uid 1000 (not in its keyrings), "other" byte is 0.
    assert _errno(svc.describe, other, k) == errno.EACCES
    assert _errno(svc.read, other, k) == errno.EACCES
    svc.setperm(root, k, KEY_POS_ALL | keys.KEY_OTH_ALL)
    assert svc.read(other, k) == b"xyz"
    # Only the owner (or CAP_SYS_ADMIN) changes the mask or the owner.
    assert _errno(svc.setperm, other, k, 0) == errno.EACCES
    assert _errno(svc.chown, other, k, 1000, -1) == errno.EACCES
    assert _errno(svc.setperm, root, k, 0x40) == errno.EINVAL


def test_group_byte(svc, live):
    root = _user(live, 0)
    k = svc.add_key(root, "user", "g", b"v", KEY_SPEC_SESSION_KEYRING)
    svc.setperm(root, k, KEY_POS_ALL | (keys.KEY_NEED_VIEW | keys.KEY_NEED_READ) << 8)
    svc.chown(root, k, -1, 50)
    member = _user(live, 1000, 50)
    stranger = _user(live, 1001, 51)
    assert svc.read(member, k) == b"v"
    assert _errno(svc.read, stranger, k) == errno.EACCES
    # A group byte that grants nothing does not apply: the "other" byte does.
    svc.setperm(root, k, KEY_POS_ALL | keys.KEY_NEED_VIEW | keys.KEY_NEED_READ)
    assert svc.read(member, k) == b"v"


def test_possession_needs_search_permission(svc, live):
    me = _user(live, 1000)
    ring = svc.add_key(me, "keyring", "r", b"", KEY_SPEC_PROCESS_KEYRING)
    k = svc.add_key(me, "user", "a", b"xyz", ring)
    assert svc.read(me, k) == b"xyz"             # possessed through process -> r
    svc.setperm(me, ring, KEY_POS_ALL & ~(keys.KEY_NEED_SEARCH << 24) | keys.KEY_USR_VIEW)
    # r no longer searchable: the key is not possessed and its user byte has no read.
    assert _errno(svc.read, me, k) == errno.EACCES
    assert _errno(svc.process_search, me, "user", "a") == errno.ENOKEY


def test_write_permission_guards_keyrings(svc, live):
    me = _user(live, 1000)
    svc.setperm(me, svc.lookup(me, KEY_SPEC_SESSION_KEYRING, 0, create=True).key.serial,
                keys.KEY_POS_VIEW | keys.KEY_POS_SEARCH | keys.KEY_POS_READ)
    assert _errno(svc.add_key, me, "user", "a", b"x", KEY_SPEC_SESSION_KEYRING) == errno.EACCES
    # request_key may not leave a negative key where it may not write (CVE-2017-17807).
    me.reqkey_default = keys.KEY_REQKEY_DEFL_SESSION_KEYRING
    assert _errno(svc.request_key, me, "user", "a", b"info", 0) == errno.EACCES


def test_user_quota_edquot_and_exact_limit(svc, live):
    me = _user(live, 1000)
    svc.add_key(me, "user", "k0", b"x", KEY_SPEC_THREAD_KEYRING)   # thread keyring + key
    u = svc.users[1000]
    assert (u.qnkeys, u.qnbytes) == (2, len("_tid") + 1 + keys.KEYRING_DATALEN + 3 + 1)
    left = svc.quotas.maxbytes - u.qnbytes
    # desc "big" + NUL + payload: one byte too many, then exactly the limit.
    assert _errno(svc.add_key, me, "user", "big", b"x" * (left - 3), KEY_SPEC_THREAD_KEYRING) \
        == errno.EDQUOT
    svc.add_key(me, "user", "big", b"x" * (left - 4), KEY_SPEC_THREAD_KEYRING)
    assert u.qnbytes == svc.quotas.maxbytes
    svc.quotas.maxkeys = u.qnkeys
    assert _errno(svc.add_key, me, "user", "one-more", b"x", KEY_SPEC_THREAD_KEYRING) \
        == errno.EDQUOT
    # Root's own limits are the root_* ones.
    root = _user(live, 0)
    svc.add_key(root, "user", "one-more", b"x", KEY_SPEC_THREAD_KEYRING)


def test_quota_comes_back_when_keys_go(svc, live):
    me = _user(live, 1000)
    k = svc.add_key(me, "user", "a", b"x" * 100, KEY_SPEC_PROCESS_KEYRING)
    before = svc.users[1000].qnbytes
    svc.unlink(me.process_keyring, svc.keys[k])
    svc.collect()
    assert svc.users[1000].qnbytes == before - (1 + 1 + 100)
    # A task that ends leaves its keyrings to the collector.
    live.remove(me)
    svc.collect()
    assert 1000 not in svc.users
    assert b" 1000:" not in svc.proc_key_users()


def test_revoke_expire_negative_errors(svc, live):
    root = _user(live, 0)
    r = svc.add_key(root, "keyring", "rev", b"", KEY_SPEC_THREAD_KEYRING)
    svc.revoke(svc.keys[r])
    assert _errno(svc.read, root, r) == errno.EKEYREVOKED
    # Revoked reads as expired in /proc/keys, yet a search names the revocation.
    assert _errno(svc.request_key, root, "keyring", "rev", None, 0) == errno.EKEYREVOKED
    assert f"{r:08x} IR-Q---     1 expd " in svc.proc_keys(root).decode()
    e = svc.add_key(root, "user", "exp", b"x", KEY_SPEC_THREAD_KEYRING)
    svc.keys[e].expiry = 1.0
    assert _errno(svc.read, root, e) == errno.EKEYEXPIRED
    assert _errno(svc.request_key, root, "user", "exp", None, 0) == errno.EKEYEXPIRED
    assert _errno(svc.request_key, root, "user", "nope", b"info",
                  KEY_SPEC_PROCESS_KEYRING) == errno.ENOKEY
    (neg,) = list(root.process_keyring.contents())
    assert neg.negative and _errno(svc.read, root, neg.serial) == errno.ENOKEY
    # A later add_key instantiates the negative key.
    assert svc.add_key(root, "user", "nope", b"v", KEY_SPEC_PROCESS_KEYRING) == neg.serial
    assert svc.read(root, neg.serial) == b"v"


def test_keyrings_across_clone_and_exec(svc, live):
    parent = _user(live, 0)
    thread = svc.lookup(parent, KEY_SPEC_THREAD_KEYRING, 0, create=True).key
    process = svc.lookup(parent, KEY_SPEC_PROCESS_KEYRING, 0, create=True).key
    session = svc.join_session(parent, None)
    child = parent.copy()
    svc.clone_creds(child, clone_thread=False)       # fork
    assert (child.thread_keyring, child.process_keyring, child.session_keyring) \
        == (None, None, session)
    sibling = parent.copy()
    svc.clone_creds(sibling, clone_thread=True)      # a new thread: its own thread keyring
    assert sibling.process_keyring is process
    assert sibling.thread_keyring is not None and sibling.thread_keyring is not thread
    svc.exec_creds(parent)
    assert (parent.thread_keyring, parent.process_keyring, parent.session_keyring) \
        == (None, None, session)


def test_user_keyrings_cannot_be_forged(svc, live):
    root = _user(live, 0)
    fake = svc.add_key(root, "keyring", "_uid.4242", b"", KEY_SPEC_PROCESS_KEYRING)
    user = _user(live, 4242)
    assert svc.lookup(user, KEY_SPEC_USER_KEYRING, 0).key.serial != fake
    user_ring = svc.lookup(user, KEY_SPEC_USER_KEYRING, 0).key
    assert user_ring.uid == 4242
    assert user_ring in svc.lookup(user, KEY_SPEC_USER_SESSION_KEYRING, 0).key.contents()


def test_join_named_session_and_cycles(svc, live):
    root = _user(live, 0)
    a = svc.join_session(root, "shared")
    other = _user(live, 0)
    # Joined by name only when its owner's byte grants Search (find_keyring_by_name).
    assert svc.join_session(other, "shared") is not a
    svc.setperm(root, a.serial, a.perm | keys.KEY_USR_SEARCH)
    third = _user(live, 0)
    assert svc.join_session(third, "shared") is a
    b = svc.add_key(root, "keyring", "b", b"", KEY_SPEC_SESSION_KEYRING)
    assert _errno(svc.link, svc.keys[b], a) == errno.EDEADLK


def test_sysctl_and_proc_files(svc, live):
    root = _user(live, 0)
    svc.add_key(root, "user", "shown", b"abc", KEY_SPEC_THREAD_KEYRING)
    text = svc.proc_keys(root).decode()
    assert any(line.split()[8:] == ["shown:", "3"] and line.split()[1] == "I--Q---"
               for line in text.splitlines())
    line = svc.proc_key_users().decode().splitlines()[0]
    assert line.startswith("    0:") and "/1000000" in line and "/25000000" in line
