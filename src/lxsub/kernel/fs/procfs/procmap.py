"""/proc/<pid>/maps's PROCMAP_QUERY ioctl (Linux 6.11, fs/proc/task_mmu.c
do_procmap_query): one mapping of the process, by address.

The mappings are the host's (the pico process is a host process), so the
provider asks the host's /proc/<hostpid>/maps the same question, with
buffers of its own for the name and the build id, and hands the answer
back with the file named by its instance path, as the maps text names it.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
from typing import TYPE_CHECKING, Callable

from lxsub.kernel.fs.procfs.task_files import mapped_name
from lxsub.kernel.vfs.pseudo import File

if TYPE_CHECKING:
    from lxsub.kernel.call import Call

# _IOWR(PROCFS_IOCTL_MAGIC 'f', 17, struct procmap_query), 104 bytes
SIZEOF_PROCMAP_QUERY = 104
PROCMAP_QUERY = (3 << 30) | (SIZEOF_PROCMAP_QUERY << 16) | (ord("f") << 8) | 17
REQUESTS = (PROCMAP_QUERY,)
PATH_MAX = 4096
PAGE_SIZE = 4096
# struct procmap_query: size, query_flags, query_addr, vma_start, vma_end,
# vma_flags, vma_page_size, vma_offset, inode, dev_major, dev_minor,
# vma_name_size, build_id_size, vma_name_addr, build_id_addr
_Q = struct.Struct("<QQQQQQQQQIIIIQQ")
_NAME_SIZE, _BUILD_ID_SIZE, _NAME_ADDR, _BUILD_ID_ADDR = 11, 12, 13, 14


class MapsFile(File):
    """/proc/<pid>/maps: its text (read), and the query on the host's."""

    def __init__(self, path: str, read: Callable, host_dir: str, vfs) -> None:
        super().__init__(path, read)
        self.host_dir = host_dir
        self.vfs = vfs

    def ioctl(self, c: "Call", cmd: int, fd: int) -> object:
        if cmd != PROCMAP_QUERY:
            return super().ioctl(c, cmd, fd)
        return query(c, c.ptr(2), f"{self.host_dir}/maps", self._name)

    def _name(self, host: bytes, dev: int) -> bytes:
        """The mapping's name as the maps text shows it ([heap], or the
        file's instance path)."""
        if not host.startswith(b"/"):
            return host
        text = os.fsdecode(host)
        deleted = text.endswith(" (deleted)")
        plain = text[: -len(" (deleted)")] if deleted else text
        roots = self.vfs.host_roots()
        v = mapped_name(self.vfs, roots, self.vfs.detached_mounts(roots), plain, dev)
        if v is None:
            return host
        return os.fsencode(v + (" (deleted)" if deleted else ""))


def query(c: "Call", addr: int, host_maps: str, name_of: Callable[[bytes, int], bytes]) -> int:
    usize = struct.unpack("<Q", c.read(addr, 8))[0]
    if usize > PAGE_SIZE:
        raise OSError(errno.E2BIG, "procmap_query larger than a page")
    if usize < 24:                  # up to query_addr
        raise OSError(errno.EINVAL, "procmap_query too small")
    raw = c.read(addr, usize)
    fields = list(_Q.unpack((raw + bytes(SIZEOF_PROCMAP_QUERY))[:SIZEOF_PROCMAP_QUERY]))
    want_name, name_addr = fields[_NAME_SIZE], fields[_NAME_ADDR]
    want_bid, bid_addr = fields[_BUILD_ID_SIZE], fields[_BUILD_ID_ADDR]
    # The host fills buffers of the provider's; a zero stays zero so that
    # the host checks that address and size are given together.
    name_buf = ctypes.create_string_buffer(PATH_MAX)
    bid_buf = ctypes.create_string_buffer(max(want_bid, 1) if want_bid <= PAGE_SIZE else PAGE_SIZE)
    if name_addr:
        fields[_NAME_ADDR] = ctypes.addressof(name_buf)
    if want_name:
        fields[_NAME_SIZE] = PATH_MAX
    if bid_addr:
        fields[_BUILD_ID_ADDR] = ctypes.addressof(bid_buf)
    if want_bid > PAGE_SIZE:
        fields[_BUILD_ID_SIZE] = PAGE_SIZE
    packed = _Q.pack(*fields) + raw[SIZEOF_PROCMAP_QUERY:]
    buf = ctypes.create_string_buffer(packed, len(packed))
    fd = os.open(host_maps, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, PROCMAP_QUERY, buf)      # a mutable buffer: the answer comes back in it
    finally:
        os.close(fd)
    out = list(_Q.unpack(buf.raw[:SIZEOF_PROCMAP_QUERY]))
    if want_name:
        name = name_of(name_buf.raw[: max(out[_NAME_SIZE] - 1, 0)], os.makedev(out[9], out[10])) \
            if out[_NAME_SIZE] else b""
        size = len(name) + 1 if out[_NAME_SIZE] else 0
        if size > min(PATH_MAX, want_name):
            raise OSError(errno.ENAMETOOLONG, "the mapping's name does not fit")
        if size:
            c.write(name_addr, name + b"\0")
        out[_NAME_SIZE] = size
    if want_bid:
        if out[_BUILD_ID_SIZE] > want_bid:
            raise OSError(errno.ENAMETOOLONG, "the build id does not fit")
        if out[_BUILD_ID_SIZE]:
            c.write(bid_addr, bid_buf.raw[: out[_BUILD_ID_SIZE]])
    out[_NAME_ADDR], out[_BUILD_ID_ADDR] = name_addr, bid_addr
    c.write(addr, _Q.pack(*out)[: min(usize, SIZEOF_PROCMAP_QUERY)])
    return 0
