"""statmount(2) and listmount(2) (Linux 6.8, extended up to 6.13) over the
instance's mount table.

Mounts are named by their unique 64-bit id (Linux's mnt_id_unique, never
reused), which Linux keeps above MNT_UNIQUE_ID_OFFSET so that it is not
confused with the reusable 32-bit ids of /proc/<pid>/mountinfo; lxsub's
mount ids are never reused either, so the unique id is that offset plus the
id mountinfo shows. The mount table is only read, through Mount's fields
(kernel/vfs/mount.py); this module keeps the struct layouts
(include/uapi/linux/mount.h) and the checks of fs/namespace.c.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from lxsub.kernel.creds import CAP_SYS_ADMIN

if TYPE_CHECKING:
    from lxsub.kernel.vfs.mount import Mount, MountTable

MNT_UNIQUE_ID_OFFSET = 1 << 31
LSMT_ROOT = (1 << 64) - 1
LISTMOUNT_REVERSE = 1
LISTMOUNT_MAX = 1_000_000
# The id of the instance's first mount namespace (statmount's mnt_ns_id,
# struct mnt_id_req's mnt_ns_id); the namespaces programs make have their
# /proc/<pid>/ns/mnt inode number as their id (ns_id_of).
MNT_NS_ID = 1

# struct mnt_id_req: size, spare (mnt_ns_fd from 6.18), mnt_id, param, mnt_ns_id
MNT_ID_REQ_SIZE_VER0, MNT_ID_REQ_SIZE_VER1 = 24, 32
_REQ = struct.Struct("<IIQQQ")
PAGE_SIZE = 4096

STATMOUNT_SB_BASIC = 0x1
STATMOUNT_MNT_BASIC = 0x2
STATMOUNT_PROPAGATE_FROM = 0x4
STATMOUNT_MNT_ROOT = 0x8
STATMOUNT_MNT_POINT = 0x10
STATMOUNT_FS_TYPE = 0x20
STATMOUNT_MNT_NS_ID = 0x40
STATMOUNT_MNT_OPTS = 0x80
STATMOUNT_FS_SUBTYPE = 0x100
STATMOUNT_SB_SOURCE = 0x200
STATMOUNT_OPT_ARRAY = 0x400
STATMOUNT_OPT_SEC_ARRAY = 0x800
_STRINGS = (STATMOUNT_MNT_ROOT | STATMOUNT_MNT_POINT | STATMOUNT_FS_TYPE | STATMOUNT_MNT_OPTS
            | STATMOUNT_FS_SUBTYPE | STATMOUNT_SB_SOURCE | STATMOUNT_OPT_ARRAY
            | STATMOUNT_OPT_SEC_ARRAY)

# struct statmount: 512 bytes, the strings after it. Offsets of its fields.
SIZEOF_STATMOUNT = 512
_HEAD = struct.Struct("<IIQIIQII")              # size .. fs_type (40 bytes)
_BASIC = struct.Struct("<QQIIQQQQQ")            # mnt_id .. propagate_from, at 40
_OFF = {"size": 0, "mnt_opts": 4, "mask": 8, "fs_type": 36, "mnt_root": 104, "mnt_point": 108,
        "mnt_ns_id": 112, "fs_subtype": 120, "sb_source": 124, "opt_num": 128, "opt_array": 132,
        "opt_sec_num": 136, "opt_sec_array": 140}

# MOUNT_ATTR_* (mount_setattr(2)) and MS_* propagation types
_ATTRS = {"ro": 0x1, "nosuid": 0x2, "nodev": 0x4, "noexec": 0x8, "noatime": 0x10,
          "strictatime": 0x20, "nodiratime": 0x80, "nosymfollow": 0x200000}
MS_UNBINDABLE, MS_PRIVATE, MS_SLAVE, MS_SHARED = 1 << 17, 1 << 18, 1 << 19, 1 << 20
_PROPAGATE_FROM_AT = 96                          # struct statmount's propagate_from
SB_RDONLY = 1
_PER_MOUNT = frozenset(("rw", "ro", "nosuid", "nodev", "noexec", "relatime", "noatime", "nodiratime",
                        "strictatime", "nosymfollow", "sync", "dirsync", "mand"))


def unique_id(m: "Mount") -> int:
    return unique_id_of(m.id)


def unique_id_of(mnt_id: int) -> int:
    """The unique id of the mount mountinfo shows as mnt_id (0, no mount: 0)."""
    return MNT_UNIQUE_ID_OFFSET + mnt_id if mnt_id else 0


@dataclass(frozen=True)
class MntIdReq:
    spare: int
    mnt_id: int
    param: int
    mnt_ns_id: int


def parse_request(size: int, raw: bytes) -> MntIdReq:
    """copy_mnt_id_req: `size` is the request's first field, `raw` its
    bytes (as many as size says, up to a page). Bytes beyond the struct
    Linux knows must be zero (copy_struct_from_user: E2BIG)."""
    if size > PAGE_SIZE:
        raise OSError(errno.E2BIG, "mnt_id_req larger than a page")
    if size < MNT_ID_REQ_SIZE_VER0:
        raise OSError(errno.EINVAL, "mnt_id_req too small")
    if any(raw[MNT_ID_REQ_SIZE_VER1:size]):
        raise OSError(errno.E2BIG, "unknown mnt_id_req fields set")
    raw = (raw[:size] + bytes(MNT_ID_REQ_SIZE_VER1))[:MNT_ID_REQ_SIZE_VER1]
    _size, spare, mnt_id, param, ns_id = _REQ.unpack(raw)
    if spare:
        raise OSError(errno.EINVAL, "mnt_id_req.spare set")
    # The first valid unique mount id is MNT_UNIQUE_ID_OFFSET + 1.
    if mnt_id <= MNT_UNIQUE_ID_OFFSET:
        raise OSError(errno.EINVAL, "not a unique mount id")
    return MntIdReq(spare, mnt_id, param, ns_id)


def ns_id_of(table: "MountTable") -> int:
    """statmount's id of a mount namespace (see MNT_NS_ID)."""
    return MNT_NS_ID if table.initial else table.inum


def _propagation(m: "Mount") -> int:
    """statmount_mnt_basic's mnt_propagation: shared, slave, unbindable,
    or private when none of them (vfs/propagation.py's state)."""
    flags = (MS_SHARED if m.group else 0) | (MS_SLAVE if m.master else 0)
    flags |= MS_UNBINDABLE if m.unbindable else 0
    return flags or MS_PRIVATE


class View:
    """The mounts as one caller sees them: its mount namespace and its root
    directory (chroot), and whether it may look past that root."""

    def __init__(self, table: "MountTable", root_mount: "Mount", root_path: str,
                 privileged: bool) -> None:
        self.table = table
        self.root_mount = root_mount
        self.root_path = root_path
        self.privileged = privileged

    @classmethod
    def of(cls, c) -> "View":
        fs = c.task.fs
        table = fs.mounts if fs.mounts is not None else c.inst.vfs.mounts
        return cls(table, fs.root.mount, c.inst.vfs.vpath_of(fs.root),
                   c.task.creds.capable(CAP_SYS_ADMIN))

    @property
    def ns_id(self) -> int:
        return ns_id_of(self.table)

    def check_ns(self, req: MntIdReq) -> None:
        """grab_requested_mnt_ns: the caller's own namespace by its id; the
        id of another names none here (ENOENT)."""
        if req.mnt_ns_id and req.mnt_ns_id != self.ns_id:
            raise OSError(errno.ENOENT, "no such mount namespace")

    def find(self, uid: int) -> "Mount":
        for m in self.table.mounts:
            if unique_id(m) == uid:
                return m
        raise OSError(errno.ENOENT, "no such mount")

    def reachable(self, m: "Mount", top: "Mount", top_path: str) -> bool:
        """is_path_reachable(m, m's root, (top, top_path)): m is top or
        below it, on a place at or under the directory top_path."""
        cur, point = m, m.path
        while cur is not top:
            if cur.parent is None:
                return False
            point, cur = cur.path, cur.parent
        return _under(point, top_path)

    def may_see(self, m: "Mount", top: "Mount", top_path: str) -> None:
        """Past the caller's root only with CAP_SYS_ADMIN (EPERM)."""
        if not self.reachable(m, top, top_path) and not self.privileged:
            raise OSError(errno.EPERM, "mount outside the caller's root")

    def listmount(self, req: MntIdReq, count: int, reverse: bool) -> list[int]:
        """do_listmount: the ids of the mounts below req.mnt_id (LSMT_ROOT:
        the caller's root), after req.param, in id order."""
        if req.mnt_id == LSMT_ROOT:
            top, top_path = self.root_mount, self.root_path
        else:
            top = self.find(req.mnt_id)
            top_path = top.path
        self.may_see(top, self.root_mount, self.root_path)
        ordered = sorted(self.table.mounts, key=unique_id, reverse=reverse)
        last = req.param
        if last:
            ordered = [m for m in ordered if (unique_id(m) < last if reverse else unique_id(m) > last)]
        out = []
        for m in ordered:
            if len(out) >= count:
                break
            if unique_id(m) != req.mnt_id and self.reachable(m, top, top_path):
                out.append(unique_id(m))
        return out

    def mount_point(self, m: "Mount") -> str | None:
        """Where m is, from the caller's root (None: not below it)."""
        if not self.reachable(m, self.root_mount, self.root_path):
            return None
        if self.root_path == "/":
            return m.path
        return m.path[len(self.root_path.rstrip("/")):] or "/"


def _under(path: str, base: str) -> bool:
    return base == "/" or path == base or path.startswith(base.rstrip("/") + "/")


def attr_flags(opts: Iterable[str]) -> int:
    """mnt_to_attr_flags: relatime (0) unless noatime or strictatime."""
    flags = 0
    for o in opts:
        flags |= _ATTRS.get(o, 0)
    return flags


def fs_options(m: "Mount") -> list[str]:
    """What the file system's show_options adds (mountinfo's super options
    past rw/ro): the options that are not per-mount flags."""
    return [o for o in m.options.split(",") if o and o not in _PER_MOUNT]


class StatmountBuilder:
    """struct statmount and its string area, as do_statmount fills them."""

    def __init__(self, bufsize: int) -> None:
        self.bufsize = bufsize
        self.head = bytearray(SIZEOF_STATMOUNT)
        self.strings = bytearray()
        self.mask = 0

    def put(self, field: str, fmt: str, value: int) -> None:
        struct.pack_into("<" + fmt, self.head, _OFF[field], value)

    def string(self, flag: int, field: str, data: bytes) -> None:
        """statmount_string: nothing written leaves the flag unset; the
        strings must fit in the caller's buffer (EOVERFLOW)."""
        if not self.strings:
            self.strings.append(0)          # offset 0: the empty string of unset fields
        if not data:
            return
        start = len(self.strings)
        if SIZEOF_STATMOUNT + start + len(data) >= self.bufsize:
            raise OSError(errno.EOVERFLOW, "statmount buffer too small for the strings")
        self.strings += data + b"\0"
        self.mask |= flag
        self.put(field, "I", start)

    def result(self) -> bytes:
        """What copy_statmount_to_user writes: the struct (cut to the
        buffer) with size and mask, then the strings."""
        copysize = min(self.bufsize, SIZEOF_STATMOUNT)
        self.put("size", "I", copysize + len(self.strings))
        self.put("mask", "Q", self.mask)
        return bytes(self.head[:copysize]) + (bytes(self.strings) if self.strings else b"")


def statmount(view: View, req: MntIdReq, bufsize: int, mount_root: str, dev: tuple[int, int]) -> bytes:
    """do_statmount for the mount req.mnt_id; `mount_root` is its root
    within the file system, `dev` its device (as mountinfo shows them)."""
    m = view.find(req.mnt_id)
    view.may_see(m, view.root_mount, view.root_path)
    mask = req.param
    if mask & _STRINGS and bufsize == SIZEOF_STATMOUNT:
        raise OSError(errno.EOVERFLOW, "no room for the strings")
    b = StatmountBuilder(bufsize)
    opts = m.options.split(",")
    if mask & STATMOUNT_MNT_BASIC:
        parent = m.parent if m.parent is not None else m
        b.mask |= STATMOUNT_MNT_BASIC
        _BASIC.pack_into(b.head, 40, unique_id(m), unique_id(parent), m.id, parent.id,
                         attr_flags(opts), _propagation(m), m.group, m.master, 0)
    if mask & STATMOUNT_SB_BASIC:
        b.mask |= STATMOUNT_SB_BASIC
        struct.pack_into("<IIQI", b.head, 16, dev[0], dev[1], m.fs.magic,
                         SB_RDONLY if "ro" in opts else 0)
    if mask & STATMOUNT_PROPAGATE_FROM:
        b.mask |= STATMOUNT_PROPAGATE_FROM
        struct.pack_into("<Q", b.head, _PROPAGATE_FROM_AT, m.master)
    _strings(b, view, m, mask, mount_root)
    if mask & STATMOUNT_MNT_NS_ID:
        b.mask |= STATMOUNT_MNT_NS_ID
        b.put("mnt_ns_id", "Q", view.ns_id)
    return b.result()


def _strings(b: StatmountBuilder, view: View, m: "Mount", mask: int, mount_root: str) -> None:
    fs_opts = fs_options(m)
    if mask & STATMOUNT_FS_TYPE:
        b.string(STATMOUNT_FS_TYPE, "fs_type", m.fs.fstype.encode())
    if mask & STATMOUNT_MNT_ROOT:
        b.string(STATMOUNT_MNT_ROOT, "mnt_root", mount_root.encode())
    if mask & STATMOUNT_MNT_POINT:
        b.string(STATMOUNT_MNT_POINT, "mnt_point", (view.mount_point(m) or "").encode())
    if mask & STATMOUNT_MNT_OPTS:
        b.string(STATMOUNT_MNT_OPTS, "mnt_opts", ",".join(fs_opts).encode())
    if mask & STATMOUNT_OPT_ARRAY:
        b.string(STATMOUNT_OPT_ARRAY, "opt_array", b"\0".join(o.encode() for o in fs_opts))
        if fs_opts:
            b.put("opt_num", "I", len(fs_opts))
    if mask & STATMOUNT_OPT_SEC_ARRAY:
        pass                                        # no LSM: no security options
    if mask & STATMOUNT_FS_SUBTYPE:
        pass                                        # no file system of lxsub has a subtype
    if mask & STATMOUNT_SB_SOURCE:
        b.string(STATMOUNT_SB_SOURCE, "sb_source", m.source.encode())
