"""F_CREATED_QUERY (Linux 6.12): whether the open that made a descriptor's
open file description created the file (FMODE_CREATED).

The host sets that mode on a description only when its own O_CREAT open
made the file. Most file systems of lxsub create that way, so the host's
answer is the caller's. VolFs does not: it makes the file unnamed
(O_TMPFILE), gives it its Linux attributes, links it in and opens it again
by its name, so that watchers see a whole file appear (volfs.py create).
The description it hands over is then marked as created with the one
per-description state a regular file does not otherwise use here: its
owner (F_SETOWN), set to the provider. The fcntl(2) owner commands trap
(syscalls/fcntl.py) and show that owner as none. A regular file sends no
SIGIO, so the owner has no other effect; a program's own F_SETOWN or
F_SETLEASE on the description replaces the mark (F_CREATED_QUERY is then 0).
"""

from __future__ import annotations

import fcntl
import os
import stat
import struct

from lxsub.abi.fcntl import F_CREATED_QUERY, F_GETOWN_EX, F_OWNER_PID, F_SETOWN_EX

# The provider's pid (workers fork after this import and keep it).
PROVIDER_PID = os.getpid()


def mark(fd: int) -> int:
    """Mark the new regular file's description fd as created, unless the
    host already knows it; returns fd."""
    try:
        if fcntl.fcntl(fd, F_CREATED_QUERY) == 0 and stat.S_ISREG(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, F_SETOWN_EX, struct.pack("<ii", F_OWNER_PID, PROVIDER_PID))
    except OSError:
        pass            # a host before 6.12 (EINVAL): the query is EINVAL there too
    return fd


def is_marked_owner(kind: int, pid: int) -> bool:
    """Whether an owner the host reports is the mark, not a real owner."""
    return kind == F_OWNER_PID and pid == PROVIDER_PID


def created(fd: int) -> int:
    """F_CREATED_QUERY on the provider's copy of a caller's descriptor."""
    if fcntl.fcntl(fd, F_CREATED_QUERY):
        return 1
    kind, pid = struct.unpack("<ii", fcntl.fcntl(fd, F_GETOWN_EX, bytes(8)))
    return int(is_marked_owner(kind, pid))
