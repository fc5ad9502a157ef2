"""The release `uname -r` reports promises the system calls Linux added up
to it: every call numbered after Linux 6.1's last (process_mrelease... up to
set_mempolicy_home_node, 450) and up to the release's own last must be
implemented, not ENOSYS or denied."""

from __future__ import annotations

import lxsub
from lxsub.kernel import table

LINUX_6_1_LAST_SYSCALL = 450     # set_mempolicy_home_node


def test_the_calls_the_reported_release_added_are_implemented():
    newer = range(LINUX_6_1_LAST_SYSCALL + 1, lxsub.LINUX_RELEASE_LAST_SYSCALL + 1)
    missing = [(nr, table.BY_NR[nr].name, table.BY_NR[nr].level) for nr in newer
               if table.BY_NR[nr].level not in (table.FULL, table.PARTIAL)]
    assert missing == [], f"uname -r says {lxsub.LINUX_RELEASE} but these are missing"


def test_the_release_names_its_version():
    major, minor = (int(x) for x in lxsub.LINUX_RELEASE.split(".")[:2])
    assert (major, minor) == (6, 13) and lxsub.LINUX_RELEASE_LAST_SYSCALL == 466
