"""Linux permission checks against the Linux view of a file (mode, owner)."""

from __future__ import annotations

import errno
import stat as st

from lxsub.kernel import creds as caps
from lxsub.kernel.creds import Creds

MAY_EXEC = 1
MAY_WRITE = 2
MAY_READ = 4


def allowed(c: Creds, mode: int, uid: int, gid: int, want: int) -> bool:
    if c.fsuid == uid:
        bits = (mode >> 6) & 7
    elif c.in_group(gid):
        bits = (mode >> 3) & 7
    else:
        bits = mode & 7
    if want & ~bits == 0:
        return True
    # CAP_DAC_OVERRIDE: anything but executing a file no one may execute.
    if c.capable(caps.CAP_DAC_OVERRIDE):
        if not (want & MAY_EXEC) or st.S_ISDIR(mode) or mode & 0o111:
            return True
    if c.capable(caps.CAP_DAC_READ_SEARCH):
        if want == MAY_READ or (st.S_ISDIR(mode) and want & ~(MAY_READ | MAY_EXEC) == 0):
            return True
    return False


def check(c: Creds, mode: int, uid: int, gid: int, want: int) -> None:
    if not allowed(c, mode, uid, gid, want):
        raise OSError(errno.EACCES, "permission denied")


_DAC_BYPASS = (1 << caps.CAP_DAC_OVERRIDE) | (1 << caps.CAP_DAC_READ_SEARCH)


def needs_checks(c: Creds) -> bool:
    """Root with full capabilities passes every DAC check but exec bits."""
    return c.cap_effective & _DAC_BYPASS != _DAC_BYPASS
