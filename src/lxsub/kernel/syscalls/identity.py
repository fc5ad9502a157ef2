"""<unistd.h>/<sys/capability.h> credentials: all emulated in the provider.

Rules follow credentials(7): root (or CAP_SETUID) may set any id; others
may only switch between their real, effective and saved ids.
"""

from __future__ import annotations

import errno
import struct

from lxsub.kernel import creds as caps
from lxsub.kernel.call import Call
from lxsub.kernel.task import active_pid_ns, pid_in

_ID_MAX = 0xFFFFFFFF
NGROUPS_MAX = 65536


def _id(c: Call, i: int) -> int:
    v = c.uint(i)
    return -1 if v == _ID_MAX else v


def sys_getuid(c: Call) -> int:
    return c.task.creds.ruid


def sys_geteuid(c: Call) -> int:
    return c.task.creds.euid


def sys_getgid(c: Call) -> int:
    return c.task.creds.rgid


def sys_getegid(c: Call) -> int:
    return c.task.creds.egid


def _may(cr, new: int, cap: int, *allowed: int) -> bool:
    return new == -1 or cr.capable(cap) or new in allowed


_UIDS = ("ruid", "euid", "suid")
_GIDS = ("rgid", "egid", "sgid")


def _set_one(c: Call, names: tuple[str, str, str], cap: int) -> None:
    """setuid/setgid: with the capability all three ids, else the effective
    one, to the real or saved id."""
    cr = c.task.creds
    new = _id(c, 0)
    if new == -1:
        raise OSError(errno.EINVAL, "bad id")
    real, eff, saved = names
    if cr.capable(cap):
        for n in names:
            setattr(cr, n, new)
    elif new in (getattr(cr, real), getattr(cr, saved)):
        setattr(cr, eff, new)
    else:
        raise OSError(errno.EPERM, "not permitted")


def _set_re(c: Call, names: tuple[str, str, str], cap: int) -> None:
    """setreuid/setregid, with the saved id following the rules of credentials(7)."""
    cr = c.task.creds
    real, eff, saved = names
    r_now, e_now, s_now = (getattr(cr, n) for n in names)
    r, e = _id(c, 0), _id(c, 1)
    if not (_may(cr, r, cap, r_now, e_now) and _may(cr, e, cap, r_now, e_now, s_now)):
        raise OSError(errno.EPERM, "not permitted")
    if r != -1:
        setattr(cr, real, r)
    if e != -1:
        setattr(cr, eff, e)
    if r != -1 or (e != -1 and e != r_now):
        setattr(cr, saved, getattr(cr, eff))


def sys_setuid(c: Call) -> int:
    cr = c.task.creds
    old = (cr.ruid, cr.euid, cr.suid)
    _set_one(c, _UIDS, caps.CAP_SETUID)
    cr.after_uid_change(*old)
    return 0


def sys_setreuid(c: Call) -> int:
    cr = c.task.creds
    old = (cr.ruid, cr.euid, cr.suid)
    _set_re(c, _UIDS, caps.CAP_SETUID)
    cr.after_uid_change(*old)
    return 0


def _setres(c: Call, names: tuple[str, str, str], cap: int) -> None:
    """setresuid/setresgid: each of three ids may become any of the three
    current ones, or anything with the capability; -1 keeps it."""
    cr = c.task.creds
    mine = tuple(getattr(cr, n) for n in names)
    new = (_id(c, 0), _id(c, 1), _id(c, 2))
    if not all(_may(cr, v, cap, *mine) for v in new):
        raise OSError(errno.EPERM, "not permitted")
    for name, v in zip(names, new):
        if v != -1:
            setattr(cr, name, v)


def _getres(c: Call, names: tuple[str, str, str]) -> int:
    cr = c.task.creds
    for i, name in enumerate(names):
        c.write(c.ptr(i), struct.pack("<I", getattr(cr, name)))
    return 0


def sys_setresuid(c: Call) -> int:
    cr = c.task.creds
    old = (cr.ruid, cr.euid, cr.suid)
    _setres(c, _UIDS, caps.CAP_SETUID)
    cr.after_uid_change(*old)
    return 0


def sys_getresuid(c: Call) -> int:
    return _getres(c, _UIDS)


def sys_setgid(c: Call) -> int:
    _set_one(c, _GIDS, caps.CAP_SETGID)
    c.task.creds.fsgid = c.task.creds.egid
    return 0


def sys_setregid(c: Call) -> int:
    _set_re(c, _GIDS, caps.CAP_SETGID)
    c.task.creds.fsgid = c.task.creds.egid
    return 0


def sys_setresgid(c: Call) -> int:
    _setres(c, _GIDS, caps.CAP_SETGID)
    c.task.creds.fsgid = c.task.creds.egid
    return 0


def sys_getresgid(c: Call) -> int:
    return _getres(c, _GIDS)


def sys_setfsuid(c: Call) -> int:
    cr = c.task.creds
    old, new = cr.fsuid, _id(c, 0)
    if new != -1 and _may(cr, new, caps.CAP_SETUID, cr.ruid, cr.euid, cr.suid, cr.fsuid):
        cr.fsuid = new
        cr.after_fsuid_change(old)
    return old


def sys_setfsgid(c: Call) -> int:
    cr = c.task.creds
    old, new = cr.fsgid, _id(c, 0)
    if new != -1 and _may(cr, new, caps.CAP_SETGID, cr.rgid, cr.egid, cr.sgid, cr.fsgid):
        cr.fsgid = new
    return old


def sys_getgroups(c: Call) -> int:
    size = c.int(0)
    groups = c.task.creds.groups
    if size < 0:
        raise OSError(errno.EINVAL, "bad size")
    if size == 0:
        return len(groups)
    if size < len(groups):
        raise OSError(errno.EINVAL, "buffer too small")
    c.write(c.ptr(1), struct.pack(f"<{len(groups)}I", *groups))
    return len(groups)


def sys_setgroups(c: Call) -> int:
    size = c.int(0)
    if not 0 <= size <= NGROUPS_MAX:
        raise OSError(errno.EINVAL, "bad size")
    if not c.task.creds.capable(caps.CAP_SETGID):
        raise OSError(errno.EPERM, "not permitted")
    raw = c.read(c.ptr(1), 4 * size) if size else b""
    c.task.creds.groups = tuple(sorted(set(struct.unpack(f"<{size}I", raw))))
    return 0


_CAP_V1, _CAP_V2, _CAP_V3 = 0x19980330, 0x20071026, 0x20080522


def _cap_version(c: Call) -> int:
    """cap_validate_magic: the header's version, or EINVAL after writing
    the preferred one (_LINUX_CAPABILITY_VERSION_3) back into the header."""
    version = struct.unpack("<I", c.read(c.ptr(0), 4))[0]
    if version not in (_CAP_V1, _CAP_V2, _CAP_V3):
        c.write(c.ptr(0), struct.pack("<I", _CAP_V3))
        raise OSError(errno.EINVAL, "bad version")
    return version


def sys_capget(c: Call) -> int:
    """kernel/capability.c: with a NULL data pointer only the version is
    checked (a bad one still answers 0, having written the preferred one);
    a negative pid is EINVAL, a missing one ESRCH."""
    try:
        version = _cap_version(c)
    except OSError as e:
        if e.errno == errno.EINVAL and not c.ptr(1):
            return 0
        raise
    if not c.ptr(1):
        return 0
    pid = struct.unpack("<i", c.read(c.ptr(0) + 4, 4))[0]
    if pid < 0:
        raise OSError(errno.EINVAL, "negative pid")
    cr = c.task.creds
    ns = active_pid_ns(c.task)
    if pid not in (0, pid_in(c.task.process, ns)):
        proc = c.inst.pids.process_in(ns, pid)
        if proc is None or not proc.threads:
            raise OSError(errno.ESRCH, "no such process")
        cr = next(iter(proc.threads.values())).creds
    words = 1 if version == _CAP_V1 else 2
    data = b""
    for i in range(words):
        sh = 32 * i
        data += struct.pack("<III", (cr.cap_effective >> sh) & _ID_MAX,
                            (cr.cap_permitted >> sh) & _ID_MAX, (cr.cap_inheritable >> sh) & _ID_MAX)
    c.write(c.ptr(1), data)
    return 0


def sys_capset(c: Call) -> int:
    version = _cap_version(c)
    pid = struct.unpack("<i", c.read(c.ptr(0) + 4, 4))[0]
    if pid not in (0, c.task.pid):
        raise OSError(errno.EPERM, "not permitted")
    words = 1 if version == _CAP_V1 else 2
    raw = c.read(c.ptr(1), 12 * words)
    eff = perm = inh = 0
    for i in range(words):
        e, p, h = struct.unpack_from("<III", raw, 12 * i)
        eff |= e << (32 * i)
        perm |= p << (32 * i)
        inh |= h << (32 * i)
    cr = c.task.creds
    # cap_capset: without CAP_SETPCAP the new inheritable set stays within
    # the old inheritable and permitted ones.
    if not cr.capable(caps.CAP_SETPCAP) and inh & ~(cr.cap_inheritable | cr.cap_permitted):
        raise OSError(errno.EPERM, "not permitted")
    # ... and never beyond the old inheritable set and the bounding set.
    if inh & ~(cr.cap_inheritable | cr.cap_bset):
        raise OSError(errno.EPERM, "not permitted")
    if perm & ~cr.cap_permitted or eff & ~perm:
        raise OSError(errno.EPERM, "not permitted")
    cr.cap_effective, cr.cap_permitted, cr.cap_inheritable = eff, perm, inh
    cr.cap_ambient &= perm & inh        # cap_capset: pA stays within pP & pI
    return 0
