"""The Linux view of a file's attributes and its `struct stat`/`statx` layouts."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from lxsub.abi.stat import SIZEOF_STATX, STATX_BASIC_STATS, STATX_MNT_ID

_STAT = struct.Struct("<QQQIIIiQqqqqqqqqq24x")     # struct stat, x86_64: 144 bytes
_STATX_HEAD = struct.Struct("<IIQIIIHHQQQQ")          # up to stx_attributes_mask
_STATX_TS = struct.Struct("<qIi")
_STATX_TAIL = struct.Struct("<IIIIQ")                 # rdev, dev majors/minors, mnt_id
_NS = 10**9


@dataclass(slots=True)
class LinuxStat:
    dev: int
    ino: int
    nlink: int
    mode: int
    uid: int
    gid: int
    rdev: int
    size: int
    blksize: int
    blocks: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def from_host(cls, s: os.stat_result, mode: int, uid: int, gid: int, rdev: int) -> "LinuxStat":
        return cls(s.st_dev, s.st_ino, s.st_nlink, mode, uid, gid, rdev, s.st_size,
                   s.st_blksize, s.st_blocks, s.st_atime_ns, s.st_mtime_ns, s.st_ctime_ns)

    def pack_stat(self) -> bytes:
        # Every stat answer: plain arithmetic, no generator or tuples.
        a, m, c = self.atime_ns, self.mtime_ns, self.ctime_ns
        return _STAT.pack(self.dev, self.ino, self.nlink, self.mode, self.uid, self.gid, 0,
                          self.rdev, self.size, self.blksize, self.blocks,
                          a // _NS, a % _NS, m // _NS, m % _NS, c // _NS, c % _NS)

    def pack_statx(self, mnt_id: int = 0, mnt_mask: int = STATX_MNT_ID) -> bytes:
        head = _STATX_HEAD.pack(STATX_BASIC_STATS | mnt_mask, self.blksize, 0, self.nlink,
                                self.uid, self.gid, self.mode & 0xFFFF, 0, self.ino,
                                self.size, self.blocks, 0)
        times = b"".join(_STATX_TS.pack(*divmod(t, 10**9), 0)
                         for t in (self.atime_ns, 0, self.ctime_ns, self.mtime_ns))
        tail = _STATX_TAIL.pack(os.major(self.rdev), os.minor(self.rdev),
                                os.major(self.dev), os.minor(self.dev), mnt_id)
        out = head + times + tail
        return out + bytes(SIZEOF_STATX - len(out))
