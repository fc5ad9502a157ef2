"""ioctl(PIDFD_GET_INFO) on a pidfd (Linux 6.13, fs/pidfs.c pidfd_info):
who the process is, as the caller's PID namespace and the instance see it.

A pidfd of the instance is the host's (pidfd_open and CLONE_PIDFD run
there), so the host answers first; its pids are then made the instance's
(0 for a parent outside it, as Linux gives for one outside the caller's
PID namespace) and its ids the process's instance credentials (the host's
are the provider's user). The cgroup id stays the host's.
"""

from __future__ import annotations

import fcntl
import os
import struct

from lxsub.kernel.call import Call
from lxsub.kernel.task import active_pid_ns, pid_in
from lxsub.kernel.vfs import lookup

# _IOWR(PIDFS_IOCTL_MAGIC 0xFF, 11, struct pidfd_info): the size is part of
# the request; Linux matches the number alone. Sizes: 6.13's struct (64),
# 6.15's (72: exit_code and its spare).
def _iowr(nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (0xFF << 8) | nr


PIDFD_INFO_SIZES = (64, 72)
REQUESTS = tuple(_iowr(11, size) for size in PIDFD_INFO_SIZES)
PIDFD_INFO_PID, PIDFD_INFO_CREDS = 0x1, 0x2
_IDS = struct.Struct("<III")            # pid, tgid, ppid at 16
_CREDS = struct.Struct("<8I")           # ruid, rgid, euid, egid, suid, sgid, fsuid, fsgid at 28


def get_info(c: Call, cmd: int) -> int:
    size = (cmd >> 16) & 0x3FFF
    addr = c.ptr(2)
    buf = bytearray(c.read(addr, size))
    local = lookup.copy_fd(c.task, c.int(0))
    try:
        fcntl.ioctl(local, cmd, buf)      # EBADF/ENOTTY/ESRCH as the host says
    finally:
        os.close(local)
    mask = struct.unpack_from("<Q", buf, 0)[0]
    host_pid, host_tgid, host_ppid = _IDS.unpack_from(buf, 16)
    if mask & PIDFD_INFO_PID:
        _IDS.pack_into(buf, 16, *_pids(c, host_pid, host_tgid, host_ppid))
    if mask & PIDFD_INFO_CREDS:
        creds = _creds_of(c, host_pid, host_tgid)
        if creds is not None:
            _CREDS.pack_into(buf, 28, creds.ruid, creds.rgid, creds.euid, creds.egid,
                             creds.suid, creds.sgid, creds.fsuid, creds.fsgid)
    c.write(addr, bytes(buf))
    return 0


def _pids(c: Call, host_pid: int, host_tgid: int, host_ppid: int) -> tuple[int, int, int]:
    """pid, tgid and ppid as the caller's PID namespace names them (0: outside it)."""
    ns = active_pid_ns(c.task)
    pid = c.inst.pid_of_host(host_pid, ns) or 0
    tgid = c.inst.pid_of_host(host_tgid, ns) or 0
    proc = c.inst.pids.processes_by_host.get(host_tgid) or c.inst.pids.zombies_by_host.get(host_tgid)
    if proc is not None and proc.parent is not None:
        ppid = pid_in(proc.parent, ns)                  # as getppid(2) answers it
    else:
        ppid = (c.inst.pid_of_host(host_ppid, ns) or 0) if host_ppid else 0
    return pid, tgid, ppid


def _creds_of(c: Call, host_pid: int, host_tgid: int):
    """The instance credentials of the thread (a zombie's: its last ones)."""
    task = c.inst.pids.tasks_by_host.get(host_pid)
    if task is not None:
        return task.creds
    proc = c.inst.pids.processes_by_host.get(host_tgid) or c.inst.pids.zombies_by_host.get(host_tgid)
    return proc.exit_creds if proc is not None else None
