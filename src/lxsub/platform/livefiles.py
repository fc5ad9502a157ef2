"""Counting open files by a tag without holding them open.

Each file is registered in an epoll set of the provider's, whose item
carries the tag as its data word. An epoll item holds no reference on its
file: it goes when the file's last descriptor closes, wherever that
descriptor is (epoll(7), "Questions and answers" 6), and the epoll set's
/proc/self/fdinfo lists the items left, with their data. So the count
follows the files' lives in the programs exactly (descriptors passed
over sockets and inherited by children included), at the price of one
fdinfo read per count.
"""

from __future__ import annotations

import select
import threading

from lxsub.platform import libc


class LiveFiles:
    def __init__(self) -> None:
        self._epoll = select.epoll()          # close-on-exec; never waited on
        self.lock = threading.Lock()          # a count and the add it allows go together

    def add(self, fd: int, tag: int) -> None:
        """Follow the open file of our descriptor `fd` (which the caller
        may close at once) under `tag`, a 64-bit number."""
        libc.epoll_add(self._epoll.fileno(), fd, 0, tag)

    def count(self, tag: int) -> int:
        """How many of the files added under `tag` are still open somewhere."""
        with open(f"/proc/self/fdinfo/{self._epoll.fileno()}", "rb") as f:
            text = f.read()
        want = b"%x" % tag
        return sum(1 for line in text.splitlines()
                   if line.startswith(b"tfd:") and _data_of(line) == want)

    def close(self) -> None:
        self._epoll.close()


def _data_of(line: bytes) -> bytes:
    """The data word of a "tfd: N events: E data: D pos: ..." line, in hex."""
    words = line.split()
    try:
        return words[words.index(b"data:") + 1]
    except (ValueError, IndexError):
        return b""


