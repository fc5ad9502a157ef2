"""statmount(2), listmount(2): the ABI side (kernel/vfs/statmount.py
answers from the instance's mount table)."""

from __future__ import annotations

import errno
import os
import struct

from lxsub.kernel.call import Call
from lxsub.kernel.fs.procfs.task_files import _mount_dev, _mount_root
from lxsub.kernel.vfs import statmount as sm
from lxsub.platform.memory import USER_END


def _request(c: Call, addr: int) -> sm.MntIdReq:
    size = struct.unpack("<I", c.read(addr, 4))[0]        # get_user: EFAULT
    raw = c.read(addr, size) if sm.MNT_ID_REQ_SIZE_VER0 <= size <= sm.PAGE_SIZE else b""
    return sm.parse_request(size, raw)


def _access_ok(addr: int, size: int) -> None:
    """access_ok: the range must lie in user space (EFAULT), not be mapped."""
    if addr + size > USER_END:
        raise OSError(errno.EFAULT, "buffer beyond user space")


def sys_statmount(c: Call) -> int:
    buf, bufsize, flags = c.ptr(1), c.args[2], c.uint(3)
    if flags:
        raise OSError(errno.EINVAL, "statmount flags")
    _access_ok(buf, bufsize)
    req = _request(c, c.ptr(0))
    view = sm.View.of(c)
    view.check_ns(req)
    m = view.find(req.mnt_id)
    dev = _mount_dev(m)
    data = sm.statmount(view, req, bufsize, _mount_root(m), (os.major(dev), os.minor(dev)))
    c.write(buf, data)
    return 0


def sys_listmount(c: Call) -> int:
    ids, count, flags = c.ptr(1), c.args[2], c.uint(3)
    if flags & ~sm.LISTMOUNT_REVERSE:
        raise OSError(errno.EINVAL, "listmount flags")
    if count > sm.LISTMOUNT_MAX:
        raise OSError(errno.EOVERFLOW, "more than a million mount ids asked for")
    _access_ok(ids, count * 8)
    req = _request(c, c.ptr(0))
    if req.param and req.param <= sm.MNT_UNIQUE_ID_OFFSET:
        raise OSError(errno.EINVAL, "not a unique mount id to continue after")
    view = sm.View.of(c)
    view.check_ns(req)
    out = view.listmount(req, count, bool(flags & sm.LISTMOUNT_REVERSE))
    if out:
        c.write(ids, struct.pack(f"<{len(out)}Q", *out))
    return len(out)
