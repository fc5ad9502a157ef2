"""The key retention service (keyrings(7)): keys, keyrings, their
permissions and quotas, for one instance.

Keys live in the provider and end with the instance; their serial numbers
are the instance's own. A task's thread, process and session keyrings and
its request_key(2) default live in its `Creds` (as in Linux's struct cred);
`clone_creds` and `exec_creds` give them the rules copy_creds() and
prepare_exec_creds() give them. The syscall ABI is in kernel/syscalls/keys.py.

Unreferenced keys are collected as Linux's key garbage collector does: a key
no task's keyrings, no keyring and no user reaches is gone (ENOKEY) and its
quota is given back. Reachability stands in for Linux's reference counts
(keyrings cannot form cycles: __key_link_check_live_key refuses, EDEADLK).
"""

from __future__ import annotations

import errno
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from lxsub.abi.keyctl import (KEY_REQKEY_DEFL_DEFAULT,
                               KEY_REQKEY_DEFL_NO_CHANGE, KEY_REQKEY_DEFL_PROCESS_KEYRING,
                               KEY_REQKEY_DEFL_REQUESTOR_KEYRING, KEY_REQKEY_DEFL_SESSION_KEYRING,
                               KEY_REQKEY_DEFL_THREAD_KEYRING, KEY_REQKEY_DEFL_USER_KEYRING,
                               KEY_REQKEY_DEFL_USER_SESSION_KEYRING, KEY_SPEC_PROCESS_KEYRING,
                               KEY_SPEC_REQKEY_AUTH_KEY, KEY_SPEC_REQUESTOR_KEYRING,
                               KEY_SPEC_SESSION_KEYRING, KEY_SPEC_THREAD_KEYRING,
                               KEY_SPEC_USER_KEYRING, KEY_SPEC_USER_SESSION_KEYRING)
from lxsub.kernel.creds import CAP_SETUID, CAP_SYS_ADMIN, Creds

if TYPE_CHECKING:
    from lxsub.kernel.instance import Instance

# Permission bits (<linux/key.h>): one byte each for possessor, user, group, other.
KEY_NEED_VIEW, KEY_NEED_READ, KEY_NEED_WRITE = 0x01, 0x02, 0x04
KEY_NEED_SEARCH, KEY_NEED_LINK, KEY_NEED_SETATTR = 0x08, 0x10, 0x20
KEY_PERM_ALL = 0x3F
KEY_POS_ALL, KEY_USR_ALL = KEY_PERM_ALL << 24, KEY_PERM_ALL << 16
KEY_GRP_ALL, KEY_OTH_ALL = KEY_PERM_ALL << 8, KEY_PERM_ALL
KEY_VALID_PERMS = KEY_POS_ALL | KEY_USR_ALL | KEY_GRP_ALL | KEY_OTH_ALL
KEY_POS_VIEW, KEY_POS_READ, KEY_POS_WRITE = 0x01 << 24, 0x02 << 24, 0x04 << 24
KEY_POS_SEARCH, KEY_POS_LINK, KEY_POS_SETATTR = 0x08 << 24, 0x10 << 24, 0x20 << 24
KEY_USR_VIEW, KEY_USR_READ = KEY_NEED_VIEW << 16, KEY_NEED_READ << 16
KEY_USR_SEARCH, KEY_USR_LINK = KEY_NEED_SEARCH << 16, KEY_NEED_LINK << 16

KEY_MAX_DESC_SIZE = 4096
KEY_TYPE_NAME_MAX = 32
MAX_PAYLOAD = 1024 * 1024 - 1          # add_key(2), KEYCTL_UPDATE
KEYRING_SEARCH_MAX_DEPTH = 6
NEGATIVE_TIMEOUT = 60                  # key_negative_timeout, seconds
# sizeof(struct assoc_array): what a keyring charges beyond its description.
KEYRING_DATALEN = 16


@dataclass
class Quotas:
    """/proc/sys/kernel/keys (security/keys/sysctl.c and their defaults)."""
    maxkeys: int = 200
    maxbytes: int = 20000
    root_maxkeys: int = 1000000
    root_maxbytes: int = 25000000
    gc_delay: int = 300
    persistent_keyring_expiry: int = 3 * 24 * 3600

    def limits(self, uid: int) -> tuple[int, int]:
        return (self.root_maxkeys, self.root_maxbytes) if uid == 0 else (self.maxkeys, self.maxbytes)


@dataclass(eq=False)
class KeyType:
    name: str
    readable: bool
    updatable: bool
    max_payload: int            # 0: keyrings take no payload
    def_datalen: int = 0
    needs_prefix: bool = False  # logon: "service:description"

    def check_payload(self, payload: bytes) -> None:
        """The type's ->preparse(): user_preparse, keyring_preparse, big_key_preparse."""
        if self.max_payload == 0:
            if payload:
                raise OSError(errno.EINVAL, "a keyring takes no payload")
        elif not 0 < len(payload) <= self.max_payload:
            raise OSError(errno.EINVAL, "payload size out of range")

    def default_perm(self) -> int:
        """key_create_or_update's and construct_alloc_key's KEY_PERM_UNDEF."""
        perm = KEY_POS_VIEW | KEY_POS_SEARCH | KEY_POS_LINK | KEY_POS_SETATTR | KEY_USR_VIEW
        if self.readable:
            perm |= KEY_POS_READ
        if self.updatable or self.name == "keyring":
            perm |= KEY_POS_WRITE
        return perm

    def check_description(self, desc: str) -> None:
        """logon_vet_description: a non-empty prefix before a ':'."""
        if self.needs_prefix and desc.find(":") <= 0:
            raise OSError(errno.EINVAL, "logon keys are named 'service:description'")


TYPES = {t.name: t for t in (
    KeyType("keyring", True, False, 0, KEYRING_DATALEN),
    KeyType("user", True, True, 32767),
    KeyType("logon", False, True, 32767, needs_prefix=True),
    KeyType("big_key", True, True, MAX_PAYLOAD),
)}


@dataclass(eq=False)
class Key:
    serial: int
    type: KeyType
    description: str
    uid: int
    gid: int
    perm: int
    quotalen: int = 0               # bytes charged to the owner
    payload: bytes = b""
    links: dict[tuple[str, str], "Key"] | None = None   # a keyring's keys by (type, desc)
    expiry: float | None = None     # CLOCK_REALTIME seconds
    instantiated: bool = False
    reject_error: int = 0           # negative: the error a lookup gives
    revoked: bool = False
    invalidated: bool = False
    dead: bool = False
    uid_keyring: bool = False       # a user or user session keyring: never found by name

    @property
    def is_keyring(self) -> bool:
        return self.links is not None

    @property
    def negative(self) -> bool:
        return self.reject_error != 0

    def expired(self, now: float | None = None) -> bool:
        return self.expiry is not None and (now or time.time()) >= self.expiry

    def validate(self) -> None:
        """key_validate(): what a lookup of a dead key says."""
        if self.invalidated or self.dead:
            raise OSError(errno.ENOKEY, "key invalidated")
        if self.revoked:
            raise OSError(errno.EKEYREVOKED, "key revoked")
        if self.expired():
            raise OSError(errno.EKEYEXPIRED, "key expired")

    def read_state(self) -> None:
        """key_read_state(): a negative key's rejection."""
        if self.negative:
            raise OSError(self.reject_error, "negative key")

    def contents(self) -> Iterator["Key"]:
        return iter(list(self.links.values())) if self.links is not None else iter(())


@dataclass(eq=False)
class KeyRef:
    """A key and whether the caller possesses it (Linux's key_ref_t)."""
    key: Key
    possessed: bool


@dataclass
class KeyUser:
    """struct key_user: what one uid's keys cost."""
    uid: int
    nkeys: int = 0
    nikeys: int = 0
    qnkeys: int = 0
    qnbytes: int = 0
    user_keyring: Key | None = None
    session_keyring: Key | None = None


def permission(ref: KeyRef, creds: Creds, need: int) -> bool:
    """key_task_permission(): the owner's, group's or others' byte (the first
    that applies; the group's only when it grants something), plus the
    possessor's byte for a possessed key."""
    key, perm = ref.key, ref.key.perm
    if key.uid == creds.fsuid:
        kperm = perm >> 16
    elif key.gid != -1 and perm & KEY_GRP_ALL and creds.in_group(key.gid):
        kperm = perm >> 8
    else:
        kperm = perm
    if ref.possessed:
        kperm |= perm >> 24
    return (kperm & need & KEY_PERM_ALL) == need


def check(ref: KeyRef, creds: Creds, need: int) -> None:
    if need and not permission(ref, creds, need):
        raise OSError(errno.EACCES, "key permission denied")


@dataclass
class KeyService:
    """The keys of one instance. `live_creds` gives the credentials of its
    living tasks: the keyrings they hold keep keys alive."""
    live_creds: Callable[[], Iterable[Creds]] = lambda: ()
    quotas: Quotas = field(default_factory=Quotas)
    keys: dict[int, Key] = field(default_factory=dict)
    users: dict[int, KeyUser] = field(default_factory=dict)
    persistent: dict[int, Key] = field(default_factory=dict)
    _garbage: bool = False
    _collected: float = 0.0

    # -- allocation and quota ---------------------------------------------

    def user(self, uid: int) -> KeyUser:
        u = self.users.get(uid)
        if u is None:
            u = self.users[uid] = KeyUser(uid)
        return u

    def _serial(self) -> int:
        """key_alloc_serial(): random, at least 3, unique."""
        while True:
            serial = random.randrange(3, 1 << 31)
            if serial not in self.keys:
                return serial

    def _charge(self, u: KeyUser, nkeys: int, nbytes: int, overrun: bool) -> None:
        maxkeys, maxbytes = self.quotas.limits(u.uid)
        if not overrun and (u.qnkeys + nkeys > maxkeys or u.qnbytes + nbytes > maxbytes):
            # Keys nothing refers to any more still count until collected.
            self.collect()
            if u.qnkeys + nkeys > maxkeys or u.qnbytes + nbytes > maxbytes:
                raise OSError(errno.EDQUOT, "key quota exceeded")
        u.qnkeys += nkeys
        u.qnbytes += nbytes

    def alloc(self, ktype: KeyType, desc: str, uid: int, gid: int, perm: int,
              overrun: bool = False, datalen: int | None = None) -> Key:
        """key_alloc(): charged to `uid` (desc + NUL + the type's default size,
        or the payload's size the caller is about to instantiate it with:
        key_payload_reserve's charge at once); EDQUOT past
        /proc/sys/kernel/keys/*max* unless `overrun`."""
        quotalen = len(desc.encode("utf-8", "surrogateescape")) + 1 + (
            ktype.def_datalen if datalen is None else datalen)
        u = self.user(uid)
        self._charge(u, 1, quotalen, overrun)
        key = Key(self._serial(), ktype, desc, uid, gid, perm, quotalen=quotalen,
                  links={} if ktype.name == "keyring" else None)
        u.nkeys += 1
        self.keys[key.serial] = key
        return key

    def reserve(self, key: Key, datalen: int) -> None:
        """key_payload_reserve(): the key's charge becomes desc + NUL + datalen."""
        want = len(key.description.encode("utf-8", "surrogateescape")) + 1 + datalen
        delta = want - key.quotalen
        if delta and key.quotalen:
            self._charge(self.user(key.uid), 0, delta, overrun=delta < 0)
            key.quotalen = want

    def instantiate(self, key: Key, payload: bytes) -> None:
        if key.type.max_payload:
            self.reserve(key, len(payload))
        key.payload = payload
        if not key.instantiated:
            self.user(key.uid).nikeys += 1
        key.instantiated = True
        key.reject_error = 0

    def negate(self, key: Key, error: int, timeout: int) -> None:
        """key_reject_and_link(): a negative key that answers `error` for a while."""
        if not key.instantiated:
            self.user(key.uid).nikeys += 1
        key.instantiated = True
        key.reject_error = error
        key.expiry = time.time() + timeout if timeout else None

    def keyring(self, desc: str, creds: Creds, perm: int, overrun: bool = False,
                uid: int | None = None, gid: int | None = None) -> Key:
        key = self.alloc(TYPES["keyring"], desc, creds.fsuid if uid is None else uid,
                         creds.fsgid if gid is None else gid, perm, overrun=overrun)
        self.instantiate(key, b"")
        return key

    # -- links -------------------------------------------------------------

    def link(self, keyring: Key, key: Key) -> None:
        """__key_link(): replaces a key of the same type and description.
        A keyring may not end up inside itself (EDEADLK)."""
        if not keyring.is_keyring:
            raise OSError(errno.ENOTDIR, "not a keyring")
        keyring.validate()
        if key.is_keyring and (key is keyring or self._reaches(key, keyring, 0)):
            raise OSError(errno.EDEADLK, "the link would make a cycle")
        index = (key.type.name, key.description)
        old = keyring.links.get(index)
        keyring.links[index] = key
        if old is not None and old is not key:
            self._garbage = True

    def _reaches(self, start: Key, target: Key, depth: int) -> bool:
        if depth > KEYRING_SEARCH_MAX_DEPTH:
            raise OSError(errno.ELOOP, "keyrings nested too deep")
        for k in start.contents():
            if k is target or (k.is_keyring and self._reaches(k, target, depth + 1)):
                return True
        return False

    def unlink(self, keyring: Key, key: Key) -> None:
        if not keyring.is_keyring:
            raise OSError(errno.ENOTDIR, "not a keyring")
        index = (key.type.name, key.description)
        if keyring.links.get(index) is not key:
            raise OSError(errno.ENOENT, "key not in keyring")
        del keyring.links[index]
        self._garbage = True

    def clear(self, keyring: Key) -> None:
        if not keyring.is_keyring:
            raise OSError(errno.ENOTDIR, "not a keyring")
        keyring.links.clear()
        self._garbage = True

    def revoke(self, key: Key) -> None:
        """key_revoke(): the payload goes (user_revoke, keyring_revoke); the key
        counts as expired from now on (/proc/keys "expd") and keyrings let go
        of it gc_delay seconds later."""
        if key.revoked:
            return
        key.revoked = True
        key.payload = b""
        if key.is_keyring:
            key.links.clear()
        elif key.type.max_payload:
            self.reserve(key, 0)
        now = time.time()
        if key.expiry is None or key.expiry > now:
            key.expiry = now
        self._garbage = True

    def invalidate(self, key: Key) -> None:
        key.invalidated = True
        self._garbage = True

    def set_timeout(self, key: Key, seconds: int) -> None:
        key.expiry = time.time() + seconds if seconds else None

    # -- the garbage collector (security/keys/gc.c) -------------------------

    def _roots(self) -> Iterator[Key]:
        for u in self.users.values():
            yield from (k for k in (u.user_keyring, u.session_keyring) if k is not None)
        yield from self.persistent.values()
        for c in self.live_creds():
            yield from (k for k in (c.thread_keyring, c.process_keyring, c.session_keyring)
                        if k is not None)

    def collect(self) -> None:
        """Drop every key nothing reaches, and links to dead keys; give back their quota."""
        self._garbage = False
        # key_is_dead(): invalidated, or expired or revoked gc_delay ago.
        limit = time.time() - self.quotas.gc_delay
        live: set[int] = set()
        stack = list(self._roots())
        while stack:
            key = stack.pop()
            if id(key) in live:
                continue
            live.add(id(key))
            if key.is_keyring:
                for index, k in list(key.links.items()):
                    if k.invalidated or k.dead or (k.expiry is not None and k.expiry <= limit):
                        del key.links[index]       # keyring_gc: dead links go
                    else:
                        stack.append(k)
        for serial, key in list(self.keys.items()):
            if id(key) not in live or key.invalidated:
                self._destroy(key)

    def _destroy(self, key: Key) -> None:
        if self.keys.get(key.serial) is not key:
            return
        del self.keys[key.serial]
        key.dead = True
        u = self.user(key.uid)
        u.nkeys -= 1
        if key.instantiated:
            u.nikeys -= 1
        if key.quotalen:
            u.qnkeys -= 1
            u.qnbytes -= key.quotalen
        if u.nkeys == 0 and u.user_keyring is None and u.session_keyring is None:
            del self.users[u.uid]

    def maybe_collect(self) -> None:
        """Collect after links went, and now and then for the keyrings of
        tasks that exited (Linux's collector runs asynchronously too)."""
        now = time.monotonic()
        if self._garbage or now - self._collected > 1.0:
            self._collected = now
            self.collect()

    # -- the caller's keyrings (security/keys/process_keys.c) ---------------

    def user_keyrings(self, uid: int) -> tuple[Key, Key]:
        """look_up_user_keyrings(): "_uid.N" and "_uid_ses.N", made on first use
        and owned by N whoever asked; the session one links the user one."""
        u = self.user(uid)
        if u.user_keyring is None:
            perm = (KEY_POS_ALL & ~KEY_POS_SETATTR) | KEY_USR_ALL
            creds = Creds.for_user(uid, -1)
            u.user_keyring = self.keyring(f"_uid.{uid}", creds, perm, overrun=True)
            u.user_keyring.uid_keyring = True
            u.session_keyring = self.keyring(f"_uid_ses.{uid}", creds, perm, overrun=True)
            u.session_keyring.uid_keyring = True
            self.link(u.session_keyring, u.user_keyring)
        return u.user_keyring, u.session_keyring

    def install_thread_keyring(self, creds: Creds) -> Key:
        if creds.thread_keyring is None:
            creds.thread_keyring = self.keyring("_tid", creds, KEY_POS_ALL | KEY_USR_VIEW,
                                                overrun=True)
        return creds.thread_keyring

    def install_process_keyring(self, creds: Creds) -> Key:
        if creds.process_keyring is None:
            creds.process_keyring = self.keyring("_pid", creds, KEY_POS_ALL | KEY_USR_VIEW,
                                                 overrun=True)
        return creds.process_keyring

    def join_session(self, creds: Creds, name: str | None) -> Key:
        """join_session_keyring(): a new anonymous "_ses" keyring, or the named
        one the caller may search (made if there is none)."""
        if name is None:
            keyring = self.keyring("_ses", creds, KEY_POS_ALL | KEY_USR_VIEW | KEY_USR_READ,
                                   overrun=True)
        else:
            keyring = self.find_keyring_by_name(creds, name)
            if keyring is None:
                keyring = self.keyring(name, creds, KEY_POS_ALL | KEY_USR_VIEW | KEY_USR_READ
                                       | KEY_USR_LINK)
            elif keyring is creds.session_keyring:
                return keyring
        creds.session_keyring = keyring
        self._garbage = True
        return keyring

    def find_keyring_by_name(self, creds: Creds, name: str) -> Key | None:
        """find_keyring_by_name(): a live named keyring the caller may search
        without possessing it; user keyrings are never found this way."""
        for key in self.keys.values():
            if (key.is_keyring and key.description == name and not key.uid_keyring
                    and not key.revoked and not key.invalidated and not key.expired()
                    and permission(KeyRef(key, False), creds, KEY_NEED_SEARCH)):
                return key
        return None

    def session_or_user_session(self, creds: Creds) -> Key:
        return creds.session_keyring or self.user_keyrings(creds.ruid)[1]

    def _existing_user_session(self, creds: Creds) -> Key | None:
        u = self.users.get(creds.ruid)
        return u.session_keyring if u is not None else None

    def lookup(self, creds: Creds, serial: int, need: int, create: bool = False,
               partial: bool = False) -> KeyRef:
        """lookup_user_key(): a special id or a serial, whether possessed, its
        state checked (unless `partial`) and `need` granted."""
        self.maybe_collect()
        if serial > 0:
            key = self.keys.get(serial)
            if key is None or key.dead:
                raise OSError(errno.ENOKEY, "no such key")
            ref = KeyRef(key, self.possesses(creds, key))
        else:
            ref = KeyRef(self._special(creds, serial, create), True)
        key = ref.key
        if key.invalidated:
            raise OSError(errno.ENOKEY, "key invalidated")
        if not partial:
            if not key.instantiated:
                raise OSError(errno.ENOKEY, "key under construction")
            key.validate()
        check(ref, creds, need)
        return ref

    def _special(self, creds: Creds, serial: int, create: bool) -> Key:
        if serial == KEY_SPEC_THREAD_KEYRING:
            if creds.thread_keyring is None and not create:
                raise OSError(errno.ENOKEY, "no thread keyring")
            return self.install_thread_keyring(creds)
        if serial == KEY_SPEC_PROCESS_KEYRING:
            if creds.process_keyring is None and not create:
                raise OSError(errno.ENOKEY, "no process keyring")
            return self.install_process_keyring(creds)
        if serial == KEY_SPEC_SESSION_KEYRING:
            user_session = self.user_keyrings(creds.ruid)[1]
            if creds.session_keyring is None:
                # Linux installs a session keyring on first access: a new one
                # when asked to create, else the user session keyring.
                if create:
                    return self.join_session(creds, None)
                creds.session_keyring = user_session
            elif creds.session_keyring is user_session and create:
                return self.join_session(creds, None)
            return creds.session_keyring
        if serial == KEY_SPEC_USER_KEYRING:
            return self.user_keyrings(creds.ruid)[0]
        if serial == KEY_SPEC_USER_SESSION_KEYRING:
            return self.user_keyrings(creds.ruid)[1]
        if serial in (KEY_SPEC_REQKEY_AUTH_KEY, KEY_SPEC_REQUESTOR_KEYRING):
            # Only a request-key upcall holds an authorisation key; lxsub makes none.
            raise OSError(errno.ENOKEY, "no request-key authorisation")
        raise OSError(errno.EINVAL, "bad special keyring id")

    def starting_keyrings(self, creds: Creds) -> list[Key]:
        """What search_process_keyrings() starts from: all possessed."""
        session = creds.session_keyring or self._existing_user_session(creds)
        return [k for k in (creds.thread_keyring, creds.process_keyring, session)
                if k is not None]

    def possesses(self, creds: Creds, key: Key) -> bool:
        for ring in self.starting_keyrings(creds):
            if ring is key:
                return True
            if self._search(KeyRef(ring, True), creds, lambda k: k is key, 0,
                            check_state=False) is not None:
                return True
        return False

    def _search(self, ring: KeyRef, creds: Creds, match, depth: int,
                check_state: bool = True, skipped: list | None = None) -> Key | None:
        """search_nested_keyrings(): keys in a keyring the caller may search,
        then the keyrings nested in it that it may search, depth first."""
        keyring = ring.key
        if not permission(ring, creds, KEY_NEED_SEARCH):
            return None
        now = time.time()
        for key in keyring.contents():
            if not match(key):
                continue
            if not permission(KeyRef(key, ring.possessed), creds, KEY_NEED_SEARCH):
                if skipped is not None:
                    skipped.append(errno.EACCES)
                continue
            if check_state:
                # keyring_search_iterator: revoked or invalidated, then expired.
                error = (errno.EKEYREVOKED if key.invalidated or key.revoked
                         else errno.EKEYEXPIRED if key.expired(now) else key.reject_error)
                if error:
                    if skipped is not None:
                        skipped.append(error)
                    continue
            return key
        if depth >= KEYRING_SEARCH_MAX_DEPTH:
            return None
        for key in keyring.contents():
            if key.is_keyring and not key.revoked:
                found = self._search(KeyRef(key, ring.possessed), creds, match, depth + 1,
                                     check_state, skipped)
                if found is not None:
                    return found
        return None

    def search(self, rings: list[KeyRef], creds: Creds, type_name: str, desc: str) -> KeyRef:
        """keyring_search(): the first live match; else the error of a match
        skipped (revoked, expired, negative, no permission); else EAGAIN
        (ENOKEY to callers)."""
        skipped: list[int] = []

        def match(k: Key) -> bool:
            return k.type.name == type_name and k.description == desc

        for ring in rings:
            found = self._search(ring, creds, match, 0, skipped=skipped)
            if found is not None:
                return KeyRef(found, ring.possessed)
        raise OSError(skipped[0] if skipped else errno.ENOKEY, "key not found")

    def process_search(self, creds: Creds, type_name: str, desc: str) -> KeyRef:
        return self.search([KeyRef(k, True) for k in self.starting_keyrings(creds)],
                           creds, type_name, desc)

    # -- operations ----------------------------------------------------------

    def add_key(self, creds: Creds, type_name: str, desc: str | None, payload: bytes,
                ringid: int) -> int:
        """add_key(2) after its arguments were copied in: key_create_or_update()."""
        ring = self.lookup(creds, ringid, KEY_NEED_WRITE, create=True)
        ktype = TYPES.get(type_name)
        if ktype is None:
            raise OSError(errno.ENODEV, f"no key type {type_name!r}")
        if not ring.key.is_keyring:
            raise OSError(errno.ENOTDIR, "destination is not a keyring")
        if desc is None:
            if not ktype.name == "keyring":
                raise OSError(errno.EINVAL, "a description is needed")
            desc = ""
        ktype.check_description(desc)
        ktype.check_payload(payload)
        if ktype.updatable:
            old = ring.key.links.get((ktype.name, desc))
            if old is not None and not old.dead and not old.invalidated and not old.revoked:
                check(KeyRef(old, ring.possessed), creds, KEY_NEED_WRITE)
                self.instantiate(old, payload)
                return old.serial
        key = self.alloc(ktype, desc, creds.fsuid, creds.fsgid, ktype.default_perm(),
                         datalen=len(payload) if ktype.max_payload else None)
        self.instantiate(key, payload)
        try:
            self.link(ring.key, key)
        except OSError:
            self._destroy(key)
            raise
        return key.serial

    def update(self, creds: Creds, serial: int, payload: bytes) -> None:
        """keyctl_update_key(): write permission, then a type that updates."""
        ref = self.lookup(creds, serial, KEY_NEED_WRITE)
        key = ref.key
        if not key.type.updatable:
            raise OSError(errno.EOPNOTSUPP, "this key type cannot be updated")
        key.type.check_payload(payload)
        self.instantiate(key, payload)

    def request_key(self, creds: Creds, type_name: str, desc: str, callout: bytes | None,
                    destid: int) -> int:
        """request_key(2): the caller's keyrings are searched; a key found is
        linked into the destination. Not found: without callout info ENOKEY;
        with it, a key is made and, as Linux does when /sbin/request-key does
        not instantiate it, negated (ENOKEY for 60 s). lxsub runs no upcall."""
        dest = self.lookup(creds, destid, KEY_NEED_WRITE, create=True).key if destid else None
        if type_name not in TYPES:
            raise OSError(errno.ENOKEY, f"no key type {type_name!r}")
        try:
            found = self.process_search(creds, type_name, desc)
        except OSError as e:
            if e.errno != errno.ENOKEY or callout is None:
                raise
            self._construct_negative(creds, TYPES[type_name], desc, dest)
            raise OSError(errno.ENOKEY, "no key, none constructed") from None
        if dest is not None:
            self.link(dest, found.key)
        return found.key.serial

    def _construct_negative(self, creds: Creds, ktype: KeyType, desc: str,
                            dest: Key | None) -> None:
        ktype.check_description(desc)
        if dest is None:
            dest = self.default_dest(creds)
        # construct_get_dest_keyring(): the destination must be writable
        # (CVE-2017-17807).
        check(KeyRef(dest, True), creds, KEY_NEED_WRITE)
        key = self.alloc(ktype, desc, creds.fsuid, creds.fsgid, ktype.default_perm())
        self.negate(key, errno.ENOKEY, NEGATIVE_TIMEOUT)
        self.link(dest, key)

    def default_dest(self, creds: Creds) -> Key:
        """construct_get_dest_keyring(): the KEYCTL_SET_REQKEY_KEYRING default."""
        d = creds.reqkey_default
        if d == KEY_REQKEY_DEFL_THREAD_KEYRING and creds.thread_keyring is not None:
            return creds.thread_keyring
        if d in (KEY_REQKEY_DEFL_THREAD_KEYRING, KEY_REQKEY_DEFL_PROCESS_KEYRING) \
                and creds.process_keyring is not None:
            return creds.process_keyring
        if d == KEY_REQKEY_DEFL_DEFAULT:
            for k in (creds.thread_keyring, creds.process_keyring):
                if k is not None:
                    return k
        if d in (KEY_REQKEY_DEFL_DEFAULT, KEY_REQKEY_DEFL_THREAD_KEYRING,
                 KEY_REQKEY_DEFL_PROCESS_KEYRING, KEY_REQKEY_DEFL_SESSION_KEYRING,
                 KEY_REQKEY_DEFL_REQUESTOR_KEYRING) and creds.session_keyring is not None:
            return creds.session_keyring
        if d == KEY_REQKEY_DEFL_USER_KEYRING:
            return self.user_keyrings(creds.ruid)[0]
        return self.user_keyrings(creds.ruid)[1]

    def set_reqkey_keyring(self, creds: Creds, which: int) -> int:
        """keyctl_set_reqkey_keyring(): returns the former default; choosing the
        thread or process keyring makes it if missing (never replaces it)."""
        old = creds.reqkey_default
        if which == KEY_REQKEY_DEFL_NO_CHANGE:
            return old
        if which == KEY_REQKEY_DEFL_THREAD_KEYRING:
            self.install_thread_keyring(creds)
        elif which == KEY_REQKEY_DEFL_PROCESS_KEYRING:
            self.install_process_keyring(creds)
        elif which not in (KEY_REQKEY_DEFL_DEFAULT, KEY_REQKEY_DEFL_SESSION_KEYRING,
                           KEY_REQKEY_DEFL_USER_KEYRING, KEY_REQKEY_DEFL_USER_SESSION_KEYRING,
                           KEY_REQKEY_DEFL_REQUESTOR_KEYRING):
            raise OSError(errno.EINVAL, "bad request-key default")
        creds.reqkey_default = which
        return old

    def describe(self, creds: Creds, serial: int) -> bytes:
        key = self.lookup(creds, serial, KEY_NEED_VIEW, partial=True).key
        return (f"{key.type.name};{key.uid};{key.gid};{key.perm:08x};{key.description}"
                .encode("utf-8", "surrogateescape") + b"\0")

    def read(self, creds: Creds, serial: int) -> bytes:
        """keyctl_read_key(): read permission, or possession (found by a search)."""
        ref = self.lookup(creds, serial, 0)
        ref.key.read_state()
        if not permission(ref, creds, KEY_NEED_READ) and not ref.possessed:
            raise OSError(errno.EACCES, "no read permission")
        key = ref.key
        if not key.type.readable:
            raise OSError(errno.EOPNOTSUPP, "this key type cannot be read")
        if key.is_keyring:
            return b"".join(k.serial.to_bytes(4, "little") for k in key.contents())
        return key.payload

    def setperm(self, creds: Creds, serial: int, perm: int) -> None:
        if perm & ~KEY_VALID_PERMS:
            raise OSError(errno.EINVAL, "bad permission mask")
        key = self.lookup(creds, serial, KEY_NEED_SETATTR, create=True, partial=True).key
        if key.uid != creds.fsuid and not creds.capable(CAP_SYS_ADMIN):
            raise OSError(errno.EACCES, "not the key's owner")
        key.perm = perm

    def chown(self, creds: Creds, serial: int, uid: int, gid: int) -> None:
        """keyctl_chown_key(): only CAP_SYS_ADMIN gives a key away; the owner may
        set a group it is in. The new owner pays the quota (EDQUOT)."""
        key = self.lookup(creds, serial, KEY_NEED_SETATTR, create=True, partial=True).key
        if not creds.capable(CAP_SYS_ADMIN):
            if uid != -1 and uid != key.uid:
                raise OSError(errno.EACCES, "only CAP_SYS_ADMIN changes a key's owner")
            if gid != -1 and gid != key.gid and not creds.in_group(gid):
                raise OSError(errno.EACCES, "not in that group")
        if uid != -1 and uid != key.uid:
            new = self.user(uid)
            if key.quotalen:
                self._charge(new, 1, key.quotalen, overrun=False)
            old = self.user(key.uid)
            old.nkeys -= 1
            new.nkeys += 1
            if key.instantiated:
                old.nikeys -= 1
                new.nikeys += 1
            if key.quotalen:
                old.qnkeys -= 1
                old.qnbytes -= key.quotalen
            key.uid = uid
        if gid != -1:
            key.gid = gid

    def get_persistent(self, creds: Creds, uid: int, destid: int) -> int:
        """keyctl_get_persistent(): "_persistent.UID", kept for
        persistent_keyring_expiry seconds after its last use, linked into dest."""
        if uid == -1:
            uid = creds.ruid
        elif uid not in (creds.ruid, creds.euid) and not creds.capable(CAP_SETUID):
            raise OSError(errno.EPERM, "another user's persistent keyring")
        dest = self.lookup(creds, destid, KEY_NEED_WRITE, create=True).key
        keyring = self.persistent.get(uid)
        if keyring is None or keyring.dead or keyring.revoked or keyring.expired():
            owner = Creds.for_user(uid, -1)
            keyring = self.keyring(f"_persistent.{uid}", owner,
                                   (KEY_POS_ALL & ~KEY_POS_SETATTR) | KEY_USR_VIEW | KEY_USR_READ,
                                   overrun=True)
            self.persistent[uid] = keyring
        self.set_timeout(keyring, self.quotas.persistent_keyring_expiry)
        self.link(dest, keyring)
        return keyring.serial

    def session_to_parent(self, creds: Creds, parent_creds: list[Creds]) -> None:
        """keyctl_session_to_parent(): the parent (single threaded, same ids as
        the caller's effective ones) gets the caller's session keyring."""
        mine = self.session_or_user_session(creds)
        if len(parent_creds) != 1:
            raise OSError(errno.EPERM, "the parent is not single threaded")
        p = parent_creds[0]
        if (p.ruid, p.euid, p.suid, p.rgid, p.egid, p.sgid) != (creds.euid,) * 3 + (creds.egid,) * 3:
            raise OSError(errno.EPERM, "the parent has other credentials")
        if (p.session_keyring is not None and p.session_keyring.uid != creds.euid) \
                or mine.uid != creds.euid:
            raise OSError(errno.EPERM, "a session keyring of another user")
        p.session_keyring = mine
        self._garbage = True

    # -- task credentials ------------------------------------------------------

    def clone_creds(self, creds: Creds, clone_thread: bool) -> None:
        """copy_creds(): a new thread gets a new thread keyring if its parent had
        one; a new process does not share its parent's process keyring."""
        had_thread_keyring = creds.thread_keyring is not None
        creds.thread_keyring = None
        if clone_thread and had_thread_keyring:
            self.install_thread_keyring(creds)
        if not clone_thread:
            creds.process_keyring = None

    def exec_creds(self, creds: Creds) -> None:
        """prepare_exec_creds(): the thread and process keyrings are left behind."""
        if creds.thread_keyring is not None or creds.process_keyring is not None:
            creds.thread_keyring = creds.process_keyring = None
            self._garbage = True

    # -- /proc -------------------------------------------------------------------

    def _usage(self) -> dict[int, int]:
        """How many keyrings and credentials refer to each key (its usage count)."""
        count: dict[int, int] = {}
        for key in self.keys.values():
            for k in key.contents():
                count[k.serial] = count.get(k.serial, 0) + 1
        for root in self._roots():
            count[root.serial] = count.get(root.serial, 0) + 1
        return count

    def proc_keys(self, creds: Creds) -> bytes:
        """/proc/keys (proc_keys_show): the keys the reader may view."""
        self.collect()
        now = time.time()
        usage = self._usage()
        lines = []
        for serial in sorted(self.keys):
            key = self.keys[serial]
            if not permission(KeyRef(key, self.possesses(creds, key)), creds, KEY_NEED_VIEW):
                continue
            flags = "".join(c if on else "-" for c, on in (
                ("I", key.instantiated), ("R", key.revoked), ("D", key.dead),
                ("Q", key.quotalen > 0), ("U", False), ("N", key.negative),
                ("i", key.invalidated)))
            lines.append(f"{serial:08x} {flags} {usage.get(serial, 0):5d} "
                         f"{_timeout(key.expiry, now):>4s} {key.perm:08x} {key.uid:5d} "
                         f"{key.gid:5d} {key.type.name:<9.9s} {_describe(key)}\n")
        return "".join(lines).encode("utf-8", "surrogateescape")

    def proc_key_users(self) -> bytes:
        """/proc/key-users (proc_key_users_show)."""
        self.collect()
        lines = []
        for uid in sorted(self.users):
            u = self.users[uid]
            maxkeys, maxbytes = self.quotas.limits(uid)
            lines.append(f"{uid:5d}: {u.nkeys:5d} {u.nkeys}/{u.nikeys} {u.qnkeys}/{maxkeys} "
                         f"{u.qnbytes}/{maxbytes}\n")
        return "".join(lines).encode()


def _timeout(expiry: float | None, now: float) -> str:
    """proc_keys_show's TTL column."""
    if expiry is None:
        return "perm"
    left = int(expiry - now)
    if left <= 0:
        return "expd"
    for unit, size in (("s", 60), ("m", 60), ("h", 24), ("d", 7)):
        if left < size:
            return f"{left}{unit}"
        left //= size
    return f"{left}w"


def _describe(key: Key) -> str:
    """The type's ->describe(): user_describe, keyring_describe."""
    if key.is_keyring:
        text = key.description or "[anon]"
        if key.instantiated and not key.negative:
            text += f": {len(key.links)}" if key.links else ": empty"
        return text
    if key.instantiated and not key.negative:
        return f"{key.description}: {len(key.payload)}"
    return key.description


def service(inst: "Instance") -> KeyService:
    """The instance's keys, made on first use."""
    svc = getattr(inst, "keys", None)
    if svc is None:
        pids = inst.pids
        svc = inst.keys = KeyService(lambda: [t.creds for t in list(pids.tasks_by_host.values())])
    return svc


# -- /proc files (hooked in by kernel/fs/procfs.py) -------------------------------

_SYSCTLS = ("gc_delay", "maxbytes", "maxkeys", "persistent_keyring_expiry",
            "root_maxbytes", "root_maxkeys")


def proc_entries(inst: "Instance") -> list:
    """/proc/keys and /proc/key-users."""
    from lxsub.kernel.vfs.pseudo import File
    return [File("/keys", lambda t: service(inst).proc_keys(t.creds if t is not None else Creds())),
            File("/key-users", lambda t: service(inst).proc_key_users())]


def sysctl_dir(inst: "Instance"):
    """/proc/sys/kernel/keys: the instance's quotas, root may write them
    (security/keys/sysctl.c: integers from 1, gc_delay and the persistent
    keyring expiry from 0, up to INT_MAX)."""
    from lxsub.kernel.vfs.pseudo import File, StaticDir
    d = StaticDir("/sys/kernel/keys")
    for name in _SYSCTLS:
        d.add(File(f"/sys/kernel/keys/{name}",
                   lambda t, n=name: b"%d\n" % getattr(service(inst).quotas, n),
                   write=lambda t, data, n=name: _set_sysctl(inst, n, data), mode=0o444))
    return d


def _set_sysctl(inst: "Instance", name: str, data: bytes) -> None:
    try:
        value = int(data.split()[0]) if data.split() else None
    except ValueError:
        value = None
    low = 0 if name in ("gc_delay", "persistent_keyring_expiry") else 1
    if value is None or not low <= value <= 0x7FFFFFFF:
        raise OSError(errno.EINVAL, "not a number in range")
    setattr(service(inst).quotas, name, value)
