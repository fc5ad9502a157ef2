"""Character devices by (major, minor): what a device node in the instance opens.

Only devices that are safe to share with the host are passed through; any
other number opens as ENXIO, as for a device with no driver.
"""

from __future__ import annotations

import errno
import os
import stat as st
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lxsub.kernel.vfs.node import Node

# (major, minor) -> host device path
_CHAR = {
    (1, 3): "/dev/null",
    (1, 5): "/dev/zero",
    (1, 7): "/dev/full",
    (1, 8): "/dev/random",
    (1, 9): "/dev/urandom",
    (5, 0): "/dev/tty",
    (5, 1): "/dev/tty",      # the console of an instance is its user's terminal
    (5, 2): "/dev/ptmx",
}
# Misc devices (major 10) whose minor the host's kernel chose when it
# booted (MISC_DYNAMIC_MINOR), passed through under the host's number where
# the host has them: /dev/userfaultfd makes the same userfaultfds as
# userfaultfd(2), which programs call natively; its node is root's, 0600,
# as the host's, and the host decides who may open it.
DYNAMIC_MISC = {"userfaultfd": 0o600}


def _host_misc_devices() -> dict[tuple[int, int], str]:
    found = {}
    for name in DYNAMIC_MISC:
        try:
            s = os.stat("/dev/" + name)
        except OSError:
            continue
        if st.S_ISCHR(s.st_mode):
            found[(os.major(s.st_rdev), os.minor(s.st_rdev))] = "/dev/" + name
    return found


HOST_MISC = _host_misc_devices()      # (major, minor) -> host path
_CHAR.update(HOST_MISC)
PTS_MAJORS = range(136, 144)
TTY_RDEV = os.makedev(5, 0)
PTMX_RDEV = os.makedev(5, 2)

# /dev/lxbus (docs/LXBUS.md): a misc device (major 10) with no host device
# behind it; its driver is the provider's own (kernel/fs/lxbusdev.py).
LXBUS_RDEV = os.makedev(10, 250)


def host_path_of(kind: int, rdev: int) -> str | None:
    if kind != st.S_IFCHR:
        return None
    major, minor = os.major(rdev), os.minor(rdev)
    if major in PTS_MAJORS:
        return f"/dev/pts/{(major - 136) * 256 + minor}"
    return _CHAR.get((major, minor))


def controlling_tty_path(host_pid: int) -> str:
    """The host path of a task's controlling terminal, what /dev/tty opens
    for it (drivers/tty/tty_io.c tty_open_current_tty: ENXIO without one).
    A task is a host process in a host session of its own, so its terminal
    is tty_nr in its /proc/PID/stat (proc(5)); the provider's own /dev/tty
    is not the task's. Only the ptys the instance has are reachable."""
    try:
        with open(f"/proc/{host_pid}/stat", "rb") as f:
            tail = f.read().rpartition(b")")[2].split()
        tty_nr = int(tail[4])            # fields 3..: state ppid pgrp session tty_nr
    except (OSError, IndexError, ValueError):
        raise OSError(errno.ENXIO, "no controlling terminal") from None
    if tty_nr == 0 or os.major(tty_nr) not in PTS_MAJORS:
        raise OSError(errno.ENXIO, "no controlling terminal")
    return host_path_of(st.S_IFCHR, tty_nr)


def open_device(kind: int, rdev: int, flags: int, host_pid: int | None = None) -> int:
    """Open the host device behind a device node for a task (host_pid: the
    opener's host process, for /dev/tty)."""
    if kind == st.S_IFCHR and rdev == LXBUS_RDEV:
        from lxsub.kernel.fs import lxbusdev     # imported here: it imports vfs, which imports us
        return lxbusdev.open_device()
    if kind == st.S_IFCHR and rdev == TTY_RDEV and host_pid is not None:
        path = controlling_tty_path(host_pid)
        keep = os.O_ACCMODE | os.O_NONBLOCK | os.O_APPEND
        return os.open(path, (flags & keep) | os.O_NOCTTY | os.O_CLOEXEC)
    path = host_path_of(kind, rdev)
    if path is None:
        raise OSError(errno.ENXIO, "no such device")
    keep = os.O_ACCMODE | os.O_NONBLOCK | os.O_APPEND | os.O_NOCTTY
    return os.open(path, (flags & keep) | os.O_CLOEXEC)


# Terminals: majors of the tty, console, vt and pty drivers.
_TERMINAL_MAJORS = frozenset({4, 5, *PTS_MAJORS})
OPENED_DEVICES_KEPT = 256


class OpenedDevices:
    """The node each device was opened through, when that node is a file of
    a host-backed file system (mknod(2) on the distro's tree or a tmpfs):
    the open file is the host device, but Linux's file is the node's
    inode, so fstat, fchmod and /proc/PID/fd/N name the node (stat(2):
    stat and fstat of one file agree; the node's st_dev and st_ino, not
    /dev/null's).

    Each entry keeps a provider reference to the open file description, to
    know it again with kcmp(2); the oldest are let go past
    OPENED_DEVICES_KEPT (those then show as the host device, /dev's node).
    Terminals are not kept: a reference held here would keep a terminal
    from its hangup when its last user closes it (tty_release)."""

    def __init__(self) -> None:
        self._kept: list[tuple[int, int, "Node"]] = []     # (device fd, rdev, node)

    def opened(self, fd: int, rdev: int, node: "Node") -> None:
        if node.fd is None or node.obj is not None or os.major(rdev) in _TERMINAL_MAJORS:
            return                        # /dev's own nodes (DevFs entries) are found by rdev
        if len(self._kept) >= OPENED_DEVICES_KEPT:
            old_fd, _, old_node = self._kept.pop(0)
            os.close(old_fd)
            old_node.release()
        self._kept.append((os.dup(fd), rdev, node.dup()))

    def node_of(self, fd: int, s: os.stat_result) -> "Node | None":
        """The node device descriptor fd (ours, the caller's to close) was
        opened through, using fd: fd is made a handle of that node."""
        from lxsub.kernel.vfs.node import Node
        from lxsub.platform import libc
        for kept, rdev, node in self._kept:
            if rdev == s.st_rdev and libc.same_open_file(fd, kept):
                os.dup2(node.fd, fd, inheritable=False)
                return Node(node.mount, fd, os.fstat(fd))
        return None
