"""<keyutils.h> system calls: add_key(2), request_key(2), keyctl(2).

Arguments are copied in as security/keys/keyctl.c does (EFAULT, EINVAL,
EPERM before anything else); kernel/keys.py does the work.
"""

from __future__ import annotations

import errno

from lxsub.abi.keyctl import (KEYCTL_ASSUME_AUTHORITY, KEYCTL_CAPABILITIES, KEYCTL_CAPS0_BIG_KEY,
                               KEYCTL_CAPS0_CAPABILITIES, KEYCTL_CAPS0_INVALIDATE,
                               KEYCTL_CAPS0_MOVE, KEYCTL_CAPS0_PERSISTENT_KEYRINGS, KEYCTL_CHOWN,
                               KEYCTL_CLEAR, KEYCTL_DESCRIBE, KEYCTL_GET_KEYRING_ID,
                               KEYCTL_GET_PERSISTENT, KEYCTL_GET_SECURITY, KEYCTL_INSTANTIATE,
                               KEYCTL_INSTANTIATE_IOV, KEYCTL_INVALIDATE,
                               KEYCTL_JOIN_SESSION_KEYRING, KEYCTL_LINK, KEYCTL_MOVE,
                               KEYCTL_MOVE_EXCL, KEYCTL_NEGATE, KEYCTL_READ, KEYCTL_REJECT,
                               KEYCTL_REVOKE, KEYCTL_SEARCH, KEYCTL_SESSION_TO_PARENT,
                               KEYCTL_SETPERM, KEYCTL_SET_REQKEY_KEYRING, KEYCTL_SET_TIMEOUT,
                               KEYCTL_UNLINK, KEYCTL_UPDATE)
from lxsub.abi.limits import PAGE_SIZE
from lxsub.kernel import keys
from lxsub.kernel.call import Call
from lxsub.kernel.keys import KEY_MAX_DESC_SIZE, KEY_TYPE_NAME_MAX, MAX_PAYLOAD

def _type(c: Call, i: int) -> str:
    """key_get_type_from_user(): 1..31 bytes; a leading '.' is the kernel's own."""
    try:
        name = c.read_str(c.ptr(i), KEY_TYPE_NAME_MAX)
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise OSError(errno.EINVAL, "key type name too long") from None
        raise
    if not name:
        raise OSError(errno.EINVAL, "empty key type")
    if name.startswith(b"."):
        raise OSError(errno.EPERM, "key types starting with '.' are the kernel's")
    return name.decode("utf-8", "surrogateescape")


def _string(c: Call, addr: int, limit: int = KEY_MAX_DESC_SIZE) -> str:
    """strndup_user(): EFAULT, or EINVAL past `limit`."""
    try:
        data = c.read_str(addr, limit)
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise OSError(errno.EINVAL, "string too long") from None
        raise
    return data.decode("utf-8", "surrogateescape")


def _payload(c: Call, addr: int, plen: int) -> bytes:
    if not 0 <= plen <= MAX_PAYLOAD:
        raise OSError(errno.EINVAL, "payload too large")
    return c.read(addr, plen) if plen else b""


def _copy_out(c: Call, addr: int, size: int, data: bytes) -> int:
    """The keyctl read-style answer: the full length, as much as fits copied
    (keyctl_read_key, keyring_read never write past `size`)."""
    if addr and size > 0:
        c.write(addr, data[:size])
    return len(data)


def _svc(c: Call) -> keys.KeyService:
    return keys.service(c.inst)


def sys_add_key(c: Call) -> int:
    type_name = _type(c, 0)
    desc = None
    if c.ptr(1):
        desc = _string(c, c.ptr(1)) or None
        if desc is not None and desc.startswith(".") and type_name.startswith("keyring"):
            raise OSError(errno.EPERM, "keyrings named '.…' are the kernel's")
    payload = _payload(c, c.ptr(2), c.long(3))
    return _svc(c).add_key(c.task.creds, type_name, desc, payload, c.int(4))


def sys_request_key(c: Call) -> int:
    type_name = _type(c, 0)
    desc = _string(c, c.ptr(1))
    callout = _string(c, c.ptr(2), PAGE_SIZE).encode("utf-8", "surrogateescape") \
        if c.ptr(2) else None
    return _svc(c).request_key(c.task.creds, type_name, desc, callout, c.int(3))


def sys_keyctl(c: Call) -> int:
    op = c.int(0)
    handler = _OPS.get(op)
    if handler is None:
        raise OSError(errno.EOPNOTSUPP, f"keyctl operation {op} not supported")
    return handler(c, _svc(c), c.task.creds)


def _get_keyring_id(c, svc, creds) -> int:
    return svc.lookup(creds, c.int(1), 0, create=bool(c.long(2)), partial=True).key.serial


def _join(c, svc, creds) -> int:
    name = _string(c, c.ptr(1)) if c.ptr(1) else None
    if name is not None and name.startswith("."):
        # ee8f844e3c5a: the kernel's own keyrings cannot be joined.
        raise OSError(errno.EPERM, "keyrings named '.…' are the kernel's")
    return svc.join_session(creds, name).serial


def _update(c, svc, creds) -> int:
    payload = _payload(c, c.ptr(2), c.long(3))
    svc.update(creds, c.int(1), payload)
    return 0


def _revoke(c, svc, creds) -> int:
    try:
        ref = svc.lookup(creds, c.int(1), keys.KEY_NEED_WRITE)
    except OSError as e:
        if e.errno != errno.EACCES:
            raise
        ref = svc.lookup(creds, c.int(1), keys.KEY_NEED_SETATTR)
    svc.revoke(ref.key)
    return 0


def _chown(c, svc, creds) -> int:
    svc.chown(creds, c.int(1), c.int(2), c.int(3))
    return 0


def _setperm(c, svc, creds) -> int:
    svc.setperm(creds, c.int(1), c.uint(2))
    return 0


def _describe(c, svc, creds) -> int:
    data = svc.describe(creds, c.int(1))
    # keyctl_describe_key copies only when the whole description fits.
    if c.ptr(2) and c.long(3) >= len(data):
        c.write(c.ptr(2), data)
    return len(data)


def _clear(c, svc, creds) -> int:
    svc.clear(svc.lookup(creds, c.int(1), keys.KEY_NEED_WRITE, create=True).key)
    return 0


def _link(c, svc, creds) -> int:
    ring = svc.lookup(creds, c.int(2), keys.KEY_NEED_WRITE, create=True).key
    key = svc.lookup(creds, c.int(1), keys.KEY_NEED_LINK, create=True, partial=True).key
    svc.link(ring, key)
    return 0


def _unlink(c, svc, creds) -> int:
    ring = svc.lookup(creds, c.int(2), keys.KEY_NEED_WRITE).key
    key = svc.lookup(creds, c.int(1), 0, partial=True).key
    svc.unlink(ring, key)
    return 0


def _search(c, svc, creds) -> int:
    """keyctl_keyring_search(): found keys must grant Link to go into dest."""
    ring = svc.lookup(creds, c.int(1), keys.KEY_NEED_SEARCH)
    type_name = _type(c, 2)
    desc = _string(c, c.ptr(3))
    dest = svc.lookup(creds, c.int(4), keys.KEY_NEED_WRITE, create=True).key if c.int(4) else None
    if type_name not in keys.TYPES:
        raise OSError(errno.ENOKEY, "no such key type")
    if not ring.key.is_keyring:
        raise OSError(errno.ENOTDIR, "not a keyring")
    found = svc.search([ring], creds, type_name, desc)
    if dest is not None:
        keys.check(found, creds, keys.KEY_NEED_LINK)
        svc.link(dest, found.key)
    return found.key.serial


def _read(c, svc, creds) -> int:
    return _copy_out(c, c.ptr(2), c.long(3), svc.read(creds, c.int(1)))


def _no_authority(c, svc, creds) -> int:
    """Instantiating needs the authorisation key of a request-key upcall
    (keyctl_instantiate_key_common): lxsub starts none."""
    raise OSError(errno.EPERM, "no request-key authorisation")


def _assume_authority(c, svc, creds) -> int:
    if c.int(1) == 0:
        return 0
    if c.int(1) < 0:
        raise OSError(errno.EINVAL, "bad authorisation key id")
    raise OSError(errno.ENOKEY, "no such authorisation key")


def _set_reqkey(c, svc, creds) -> int:
    return svc.set_reqkey_keyring(creds, c.int(1))


def _set_timeout(c, svc, creds) -> int:
    key = svc.lookup(creds, c.int(1), keys.KEY_NEED_SETATTR, create=True, partial=True).key
    svc.set_timeout(key, c.uint(2))
    return 0


def _get_security(c, svc, creds) -> int:
    """No security module labels keys: an empty context (keyctl_get_security)."""
    svc.lookup(creds, c.int(1), keys.KEY_NEED_VIEW, partial=True)
    return _copy_out(c, c.ptr(2), c.long(3), b"\0")


def _session_to_parent(c, svc, creds) -> int:
    parent = c.task.process.parent
    if parent is None or parent.is_init():
        raise OSError(errno.EPERM, "no parent to give the session keyring to")
    svc.session_to_parent(creds, [t.creds for t in parent.threads.values()])
    return 0


def _invalidate(c, svc, creds) -> int:
    svc.invalidate(svc.lookup(creds, c.int(1), keys.KEY_NEED_SEARCH, partial=True).key)
    return 0


def _get_persistent(c, svc, creds) -> int:
    return svc.get_persistent(creds, c.int(1), c.int(2))


def _move(c, svc, creds) -> int:
    """keyctl_keyring_move(): from one keyring to another in one step."""
    flags = c.uint(4)
    if flags & ~KEYCTL_MOVE_EXCL:
        raise OSError(errno.EINVAL, "bad flags")
    key = svc.lookup(creds, c.int(1), keys.KEY_NEED_LINK, create=True, partial=True).key
    src = svc.lookup(creds, c.int(2), keys.KEY_NEED_WRITE).key
    dst = svc.lookup(creds, c.int(3), keys.KEY_NEED_WRITE, create=True).key
    if not dst.is_keyring:
        raise OSError(errno.ENOTDIR, "not a keyring")
    if flags & KEYCTL_MOVE_EXCL and (key.type.name, key.description) in dst.links:
        raise OSError(errno.EEXIST, "a key of that name is there")
    svc.unlink(src, key)
    svc.link(dst, key)
    return 0


def _capabilities(c, svc, creds) -> int:
    caps = bytes([KEYCTL_CAPS0_CAPABILITIES | KEYCTL_CAPS0_PERSISTENT_KEYRINGS
                  | KEYCTL_CAPS0_BIG_KEY | KEYCTL_CAPS0_INVALIDATE | KEYCTL_CAPS0_MOVE, 0])
    return _copy_out(c, c.ptr(1), c.long(2), caps)


_OPS = {
    KEYCTL_GET_KEYRING_ID: _get_keyring_id, KEYCTL_JOIN_SESSION_KEYRING: _join,
    KEYCTL_UPDATE: _update, KEYCTL_REVOKE: _revoke, KEYCTL_CHOWN: _chown,
    KEYCTL_SETPERM: _setperm, KEYCTL_DESCRIBE: _describe, KEYCTL_CLEAR: _clear,
    KEYCTL_LINK: _link, KEYCTL_UNLINK: _unlink, KEYCTL_SEARCH: _search, KEYCTL_READ: _read,
    KEYCTL_INSTANTIATE: _no_authority, KEYCTL_NEGATE: _no_authority,
    KEYCTL_REJECT: _no_authority, KEYCTL_INSTANTIATE_IOV: _no_authority,
    KEYCTL_SET_REQKEY_KEYRING: _set_reqkey, KEYCTL_SET_TIMEOUT: _set_timeout,
    KEYCTL_ASSUME_AUTHORITY: _assume_authority, KEYCTL_GET_SECURITY: _get_security,
    KEYCTL_SESSION_TO_PARENT: _session_to_parent, KEYCTL_INVALIDATE: _invalidate,
    KEYCTL_GET_PERSISTENT: _get_persistent, KEYCTL_MOVE: _move,
    KEYCTL_CAPABILITIES: _capabilities,
}
