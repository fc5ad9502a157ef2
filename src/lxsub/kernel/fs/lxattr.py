"""VolFs metadata: the Linux view of a file, kept in one host extended attribute.

Like WSL's LXATTRB, one attribute holds the Linux type and mode bits, owner,
group and device number, so that a metadata change is a single setxattr and
therefore atomic. Times are the host file's own atime/mtime (the host user
owns every VolFs file and can set them), so they are not duplicated here.

A file without the attribute (made by a host tool, e.g. debootstrap) is
owned by root, with the host's type and mode bits.

Files are kept on the host with the owner's read/write (and search, for
directories) bits always set, so the provider can always open them; the
Linux mode in the attribute is what programs see and what is enforced.
Device nodes are empty regular host files: the attribute gives their type.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass

XATTR_NAME = "user.lxsub.meta"
# Programs inside the instance never see or touch attributes under this prefix.
RESERVED_PREFIX = "user.lxsub."

_FORMAT = struct.Struct("<BIIIQ")  # version, mode, uid, gid, rdev
_VERSION = 1


@dataclass(frozen=True, slots=True)
class LxMeta:
    mode: int   # full st_mode: type bits | setuid/setgid/sticky | permissions
    uid: int
    gid: int
    rdev: int = 0

    def pack(self) -> bytes:
        return _FORMAT.pack(_VERSION, self.mode, self.uid, self.gid, self.rdev)

    @classmethod
    def unpack(cls, raw: bytes) -> "LxMeta | None":
        if len(raw) != _FORMAT.size or raw[0] != _VERSION:
            return None
        _, mode, uid, gid, rdev = _FORMAT.unpack(raw)
        return cls(mode, uid, gid, rdev)


def host_mode_for(mode: int) -> int:
    """Permission bits to give the host file so the provider can always use it.

    No setuid/setgid/sticky on the host: they mean nothing there.  An
    executable for anyone inside is executable by its host owner, so that the
    host kernel agrees to map it.
    """
    perms = mode & 0o777
    if stat.S_ISDIR(mode):
        return perms | 0o700
    if perms & 0o111:
        perms |= 0o100
    return perms | 0o600


def host_type_for(mode: int) -> int:
    """The host file type that stands for a Linux file type on VolFs."""
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return stat.S_IFREG
    return stat.S_IFMT(mode)


def proc_path(fd: int) -> str:
    # xattr calls do not take O_PATH descriptors; the magic link does.
    return f"/proc/self/fd/{fd}"


def read_meta_path(path: str | bytes, follow: bool = False) -> LxMeta | None:
    try:
        raw = os.getxattr(path, XATTR_NAME, follow_symlinks=follow)
    except OSError:
        return None
    return LxMeta.unpack(raw)


def read_meta_fd(fd: int) -> LxMeta | None:
    """Metadata of an open descriptor, O_PATH ones included."""
    return read_meta_path(proc_path(fd), follow=True)


def write_meta_path(path: str | bytes, meta: LxMeta, follow: bool = False) -> None:
    os.setxattr(path, XATTR_NAME, meta.pack(), follow_symlinks=follow)


def write_meta_fd(fd: int, meta: LxMeta) -> None:
    write_meta_path(proc_path(fd), meta, follow=True)


def linux_view(st: os.stat_result, meta: LxMeta | None) -> tuple[int, int, int, int]:
    """(mode, uid, gid, rdev) as a Linux program should see them."""
    if meta is None:
        return st.st_mode, 0, 0, 0
    return meta.mode, meta.uid, meta.gid, meta.rdev
