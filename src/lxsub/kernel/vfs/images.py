"""Program files being run: Linux refuses to open them for writing.

exec keeps the program file write-denied while any address space runs it
(mm->exe_file, deny_write_access): open(2) for writing and truncate(2)
answer ETXTBSY ("Text file busy"). A dynamic program runs on the host as
the instance's ld.so with the program only mapped, so the host does not
know; the provider counts, by (st_dev, st_ino), the processes whose image
each file is, from the exec that starts it to the exit or exec that ends
it (a fork shares it)."""

from __future__ import annotations

import collections
import errno


class RunningImages:
    def __init__(self) -> None:
        self._count: collections.Counter[tuple[int, int]] = collections.Counter()

    def started(self, key: tuple[int, int] | None) -> None:
        if key is not None:
            self._count[key] += 1

    def ended(self, key: tuple[int, int] | None) -> None:
        if key is not None and self._count[key] > 0:
            self._count[key] -= 1
            if not self._count[key]:
                del self._count[key]

    def check_writable(self, key: tuple[int, int]) -> None:
        """get_write_access: ETXTBSY while the file is a running image."""
        if key in self._count:
            raise OSError(errno.ETXTBSY, "text file busy")
