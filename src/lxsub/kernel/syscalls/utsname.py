"""<sys/utsname.h>: uname and the instance's own host and domain names."""

from __future__ import annotations

import ctypes
import errno
import math
import os

from lxsub.kernel import creds as caps
from lxsub.kernel.call import Call
from lxsub.kernel.task import uts_of

_FIELD = 65
HOST_NAME_MAX = 64


def _field(b: bytes) -> bytes:
    b = b[:_FIELD - 1]
    return b + bytes(_FIELD - len(b))


def sys_uname(c: Call) -> int:
    uts = uts_of(c.inst, c.task)
    host = os.uname()
    data = b"".join(_field(b) for b in (
        b"Linux", uts.name_bytes("hostname"), uts.release.encode(), host.version.encode(),
        host.machine.encode(), uts.name_bytes("domainname")))
    c.write(c.ptr(0), data)
    return 0


class _SysInfo(ctypes.Structure):
    _fields_ = [("uptime", ctypes.c_long), ("loads", ctypes.c_ulong * 3),
                ("totalram", ctypes.c_ulong), ("freeram", ctypes.c_ulong),
                ("sharedram", ctypes.c_ulong), ("bufferram", ctypes.c_ulong),
                ("totalswap", ctypes.c_ulong), ("freeswap", ctypes.c_ulong),
                ("procs", ctypes.c_ushort), ("pad", ctypes.c_ushort),
                ("totalhigh", ctypes.c_ulong), ("freehigh", ctypes.c_ulong),
                ("mem_unit", ctypes.c_uint)]


_libc = ctypes.CDLL(None, use_errno=True)


def sys_sysinfo(c: Call) -> int:
    """The host's memory and load (the instance shares them); the uptime
    since the instance started (moved by the caller's time namespace) and
    its own number of tasks, as /proc says."""
    from lxsub.kernel import timens
    from lxsub.kernel.fs.procfs import boot_of, task_count
    info = _SysInfo()
    if _libc.sysinfo(ctypes.byref(info)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    # do_sysinfo: whole seconds, a started one counted (tv_nsec ? 1 : 0).
    info.uptime = math.ceil(boot_of(c.inst).uptime() + timens.offset(c.task, timens.CLOCK_BOOTTIME) / 1e9)
    info.procs = min(task_count(c.inst), 0xFFFF)
    c.write(c.ptr(0), bytes(info))
    return 0


def _set_name(c: Call, attr: str) -> int:
    if not c.task.creds.capable(caps.CAP_SYS_ADMIN):
        raise OSError(errno.EPERM, "not permitted")
    n = c.long(1)
    if not 0 <= n <= HOST_NAME_MAX:
        raise OSError(errno.EINVAL, "name too long")
    uts_of(c.inst, c.task).set_name(attr, c.read(c.ptr(0), n))
    return 0


def sys_sethostname(c: Call) -> int:
    return _set_name(c, "hostname")


def sys_setdomainname(c: Call) -> int:
    return _set_name(c, "domainname")
