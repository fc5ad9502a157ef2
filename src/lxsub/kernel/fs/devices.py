"""Character devices by (major, minor): what a device node in the instance opens.

Only devices that are safe to share with the host are passed through; any
other number opens as ENXIO, as for a device with no driver.
"""

from __future__ import annotations

import errno
import os
import stat as st

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
PTS_MAJORS = range(136, 144)
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


def open_device(kind: int, rdev: int, flags: int) -> int:
    if kind == st.S_IFCHR and rdev == LXBUS_RDEV:
        from lxsub.kernel.fs import lxbusdev     # imported here: it imports vfs, which imports us
        return lxbusdev.open_device()
    path = host_path_of(kind, rdev)
    if path is None:
        raise OSError(errno.ENXIO, "no such device")
    keep = os.O_ACCMODE | os.O_NONBLOCK | os.O_APPEND | os.O_NOCTTY
    return os.open(path, (flags & keep) | os.O_CLOEXEC)
