"""Whether anyone has a host file open for writing.

Linux's exec refuses a file open for writing (deny_write_access: ETXTBSY).
When the provider maps a program itself the host kernel never opens it for
exec, so the provider asks the host kernel the same question another way:
a read lease (fcntl(2) F_SETLEASE F_RDLCK) is refused with EAGAIN while the
inode is open for writing by any process (fs/locks.c check_conflicting_open,
inode_is_open_for_write), and taken otherwise; it is given back at once.

A lease needs the file's owner or CAP_LEASE, leases enabled
(/proc/sys/fs/leases-enable) and a file system that has them; where any of
that is missing the answer is "unknown" (None), never a guess.

While the lease is held, a writer's open(2) breaks it: the kernel signals
the lease holder (the provider) and the writer waits for the lease to go,
which it does at once. The signal is SIGIO unless F_SETSIG names another;
SIGIO would end the provider, so the descriptor names SIGURG, which the
provider ignores (its default action).
"""

from __future__ import annotations

import errno
import fcntl
import signal


def open_for_writing(fd: int) -> bool | None:
    """Whether the file behind fd (a read-only descriptor of a regular
    file) is open for writing anywhere on the host; None if the host
    cannot tell us."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as e:
        if e.errno == errno.EAGAIN:
            return True
        return None            # EACCES (not the owner), EINVAL (leases off, no leases here)
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    except OSError:
        pass
    return False
