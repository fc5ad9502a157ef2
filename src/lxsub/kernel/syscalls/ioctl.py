"""<sys/ioctl.h>: the terminal and socket requests that carry process ids,
and the requests of the provider's own drivers.

The process-id requests must run in the caller (a terminal checks that it
is the caller's controlling one), so the id is rewritten into a copy below
the caller's stack and the request runs natively; ids coming back are
translated.

A driver's requests (LxBus: kernel/fs/lxbusdev.py; the loop driver:
kernel/fs/loopioctl.py) trap by user-notify and
go to the open file's own ioctl (FileSystem.ioctl), as Linux's vfs_ioctl
calls the file's f_op->unlocked_ioctl.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

from lxsub.kernel import creds as caps
from lxsub.kernel.call import Call, Native
from lxsub.kernel.fs import devices, loopdev, loopioctl
from lxsub.kernel.syscalls import pidfd_info
from lxsub.kernel.task import active_pid_ns
from lxsub.kernel.vfs import lookup
from lxsub.kernel.vfs.node import Node
from lxsub.platform import memory

TIOCGPGRP, TIOCSPGRP, TIOCGSID = 0x540F, 0x5410, 0x5429
FIOSETOWN, SIOCSPGRP, FIOGETOWN, SIOCGPGRP = 0x8901, 0x8902, 0x8903, 0x8904
TIOCSTI = 0x5412
TIOCVHANGUP = 0x5437

SETTERS = (TIOCSPGRP, FIOSETOWN, SIOCSPGRP)
GETTERS = (TIOCGPGRP, TIOCGSID, FIOGETOWN, SIOCGPGRP)
TRAPPED = SETTERS + GETTERS


def sys_ioctl(c: Call):
    cmd = c.uint(1)
    if cmd in SETTERS:
        return _set_id(c, cmd)
    if cmd in GETTERS:
        return _get_id(c)
    if cmd in pidfd_info.REQUESTS:
        return pidfd_info.get_info(c, cmd)
    return _file_ioctl(c, cmd)          # the filter traps no other but drivers' requests


def _set_id(c: Call, cmd: int) -> Native:
    vid = struct.unpack("<i", c.read(c.ptr(2), 4))[0]
    pids, ns = c.inst.pids, active_pid_ns(c.task)
    if cmd == TIOCSPGRP:
        if vid < 0:
            raise OSError(errno.EINVAL, "bad process group")
        host = pids.group_host_in(ns, vid)
    elif vid < 0:                     # FIOSETOWN/SIOCSPGRP: negative is a group
        g = pids.group_host_in(ns, -vid)
        host = -g if g is not None else None
    else:
        host = pids.host_pid_in(ns, vid) if vid else 0
    if host is None:
        raise OSError(errno.ESRCH if cmd != TIOCSPGRP else errno.EPERM, "no such process")
    regs = c.regs
    assert regs is not None
    (addr,) = memory.write_below_sp(c.pid, regs.rsp, [struct.pack("<i", host)])
    c.set_arg(2, addr)
    return Native()


def _get_id(c: Call) -> Native:
    pid, addr, pids, ns = c.pid, c.ptr(2), c.inst.pids, active_pid_ns(c.task)

    def translate(result: int):
        if result == 0:
            host = struct.unpack("<i", memory.read(pid, addr, 4))[0]
            v = pids.group_in(host, ns) if host > 0 else -pids.group_in(-host, ns)
            memory.write(pid, addr, struct.pack("<i", v))
        return None
    return Native(on_exit=translate)


# -- the provider's drivers -------------------------------------------------------

def _file_ioctl(c: Call, cmd: int):
    """The open file's own ioctl (Linux do_vfs_ioctl -> vfs_ioctl ->
    f_op->unlocked_ioctl): its file system's, or the host object's."""
    local = lookup.copy_fd(c.task, c.int(0))
    try:
        s = os.fstat(local)
    except BaseException:
        os.close(local)
        raise
    if cmd in loopdev.REQUESTS:
        return _loop_ioctl(c, cmd, local, s)        # closes local
    vfs = c.inst.vfs
    node = vfs.node_for_host_fd(local, s, table=vfs.mounts_of(c.task)) or Node(vfs.anon_mount, local, s)
    try:
        return node.fs.ioctl(node, c, cmd)
    finally:
        node.release()


def _loop_ioctl(c: Call, cmd: int, local: int, s: os.stat_result):
    """A loop or block request: the loop driver's, on its devices; any
    other file has no such request (ENOTTY, as a regular file answers)."""
    loops = c.inst.vfs.loops
    try:
        with loops.lock:
            if loops.is_control(s):
                return loopioctl.control_ioctl(loops, c, cmd)
            if loops.device_of(s) is not None:
                return loopioctl.device_ioctl(loops, c, cmd, local, s)
        raise OSError(errno.ENOTTY, "inappropriate ioctl for device")
    finally:
        os.close(local)


def sys_vhangup(c: Call) -> int:
    """vhangup(2) (fs/open.c): CAP_SYS_TTY_CONFIG (EPERM), then the caller's
    controlling terminal, if it has one, is hung up (tty_vhangup_self);
    without one there is nothing to do and the call succeeds. The
    terminal is the task's host pty, hung up by the host's TIOCVHANGUP,
    which the host allows only to its own CAP_SYS_ADMIN: refused there,
    the call is EPERM rather than a hang-up that did not happen."""
    if not c.task.creds.capable(caps.CAP_SYS_TTY_CONFIG):
        raise OSError(errno.EPERM, "CAP_SYS_TTY_CONFIG needed")
    try:
        path = devices.controlling_tty_path(c.task.host_pid)
    except OSError:
        return 0                                     # no controlling terminal
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TIOCVHANGUP)
    finally:
        os.close(fd)
    return 0
