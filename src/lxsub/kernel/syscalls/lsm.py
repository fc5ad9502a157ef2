"""lsm_list_modules(2), lsm_get_self_attr(2), lsm_set_self_attr(2) (Linux
6.8, security/lsm_syscalls.c and security/security.c).

The instance runs no Linux security module but the one every Linux has,
"capability" (commoncap, LSM_ID_CAPABILITY), which keeps no per-process
attributes: so the answers are those of a Linux built with no other LSM.
The host's own modules (AppArmor, SELinux...) guard the provider, not the
instance, and are not shown.
"""

from __future__ import annotations

import errno
import struct

from lxsub.kernel.call import Call

LSM_ID_CAPABILITY = 100
ACTIVE = (LSM_ID_CAPABILITY,)          # lsm_idlist, in the order Linux lists them
LSM_ATTR_UNDEF = 0
LSM_ID_UNDEF = 0
LSM_FLAG_SINGLE = 1
SIZEOF_LSM_CTX = 24                    # struct lsm_ctx: id, flags, len, ctx_len, ctx[]
PAGE_SIZE = 4096


def _u32(c: Call, addr: int) -> int:
    return struct.unpack("<I", c.read(addr, 4))[0]


def sys_lsm_list_modules(c: Call) -> int:
    ids, size, flags = c.ptr(0), c.ptr(1), c.uint(2)
    if flags:
        raise OSError(errno.EINVAL, "lsm_list_modules flags")
    usize = _u32(c, size)
    total = len(ACTIVE) * 8
    c.write(size, struct.pack("<I", total))
    if usize < total:
        raise OSError(errno.E2BIG, "room for fewer ids than there are modules")
    c.write(ids, struct.pack(f"<{len(ACTIVE)}Q", *ACTIVE))
    return len(ACTIVE)


def sys_lsm_get_self_attr(c: Call) -> int:
    """security_getselfattr: no active module has a getselfattr hook, so
    no attribute is reported (size 0) and the answer is EOPNOTSUPP."""
    attr, ctx, size, flags = c.uint(0), c.ptr(1), c.ptr(2), c.uint(3)
    if attr == LSM_ATTR_UNDEF or not size:
        raise OSError(errno.EINVAL, "no attribute or no size")
    _u32(c, size)
    if flags:
        if flags != LSM_FLAG_SINGLE or not ctx:
            raise OSError(errno.EINVAL, "lsm_get_self_attr flags")
        if struct.unpack("<Q", c.read(ctx, SIZEOF_LSM_CTX)[:8])[0] == LSM_ID_UNDEF:
            raise OSError(errno.EINVAL, "LSM_FLAG_SINGLE without a module id")
    c.write(size, struct.pack("<I", 0))
    raise OSError(errno.EOPNOTSUPP, "no module reports this attribute")


def sys_lsm_set_self_attr(c: Call) -> int:
    """security_setselfattr: the context is checked, then no module takes
    it (EOPNOTSUPP)."""
    ctx, size, flags = c.ptr(1), c.uint(2), c.uint(3)
    if flags or size < SIZEOF_LSM_CTX:
        raise OSError(errno.EINVAL, "lsm_set_self_attr flags or size")
    if size > PAGE_SIZE:
        raise OSError(errno.E2BIG, "context larger than a page")
    _id, _flags, length, ctx_len = struct.unpack("<QQII", c.read(ctx, size)[:SIZEOF_LSM_CTX])
    if size < length or length < SIZEOF_LSM_CTX + ctx_len:
        raise OSError(errno.EINVAL, "inconsistent lsm_ctx lengths")
    raise OSError(errno.EOPNOTSUPP, "no module takes this attribute")
