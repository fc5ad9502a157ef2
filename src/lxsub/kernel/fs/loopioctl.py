"""The loop driver's requests (drivers/block/loop.c lo_ioctl and
loop_control_ioctl, block/ioctl.c blkdev_common_ioctl), on the instance's
loop devices (kernel/fs/loopdev.py). They trap by user-notify and reach
here from kernel/syscalls/ioctl.py."""

from __future__ import annotations

import errno
import os
import struct
from typing import TYPE_CHECKING

from lxsub.kernel.call import SwapFd
from lxsub.kernel.fs import loopdev as L
from lxsub.platform import hostfd

if TYPE_CHECKING:
    from lxsub.kernel.call import Call


def control_ioctl(loops: L.LoopDevices, c: "Call", cmd: int) -> int:
    """loop_control_ioctl: the argument is a device number."""
    parm = c.int(2)
    if cmd == L.LOOP_CTL_ADD:
        return loops.add(parm if parm >= 0 else loops.lowest_free_number()).number
    if cmd == L.LOOP_CTL_REMOVE:
        return loops.remove(parm)
    if cmd == L.LOOP_CTL_GET_FREE:
        return loops.get_free()
    raise OSError(errno.ENOSYS, "not a loop-control request")    # loop_control_ioctl's default


def device_ioctl(loops: L.LoopDevices, c: "Call", cmd: int, local: int, s: os.stat_result):
    """A request on an open /dev/loopN (local: our copy of the caller's
    descriptor). A descriptor of an older view is replaced by the current
    one afterwards (SwapFd), so its holder sees the device as it is now."""
    dev = loops.device_of(s)
    if dev is None:
        raise OSError(errno.ENOTTY, "not a loop device")
    req = L.Request(c, cmd, local)
    loops.settle()
    result = _device_request(loops, dev, req)
    if (s.st_dev, s.st_ino) != dev.view_id and dev.state != L.RUNDOWN \
            and loops.devices.get(dev.number) is dev:
        return _swapped(loops, dev, c, local, result)
    return result


def _swapped(loops: L.LoopDevices, dev: L.LoopDevice, c: "Call", local: int, result: int):
    number = c.int(0)
    try:
        flags = hostfd.fdinfo_flags(c.task.host_pid, number)
    except OSError:
        return result
    keep = os.O_ACCMODE | os.O_NONBLOCK | os.O_APPEND
    new = loops._reopen(dev, flags & keep)
    try:
        pos = os.lseek(local, 0, os.SEEK_CUR)
        os.lseek(new, pos, os.SEEK_SET)
    except OSError:
        pass
    return SwapFd(new, number, bool(flags & os.O_CLOEXEC), result)


def _device_request(loops: L.LoopDevices, dev: L.LoopDevice, req: L.Request) -> int:
    cmd = req.cmd
    handler = _HANDLERS.get(cmd)
    if handler is None:                   # lo_simple_ioctl's default (a LOOP_CTL_* request)
        raise OSError(errno.EINVAL, "not a loop device request")
    if cmd in (L.LOOP_SET_STATUS, L.LOOP_SET_STATUS64, L.LOOP_SET_CAPACITY, L.LOOP_SET_DIRECT_IO,
               L.LOOP_SET_BLOCK_SIZE) and not (req.writable or req.admin):
        raise OSError(errno.EPERM, "device not open for writing")
    if cmd in (L.BLKROSET, L.BLKFLSBUF, L.BLKRRPART) and not req.admin:
        raise OSError(errno.EACCES, "CAP_SYS_ADMIN needed")
    return handler(loops, dev, req)


# -- binding ---------------------------------------------------------------------------

def _set_fd(loops, dev, req) -> int:
    """LOOP_SET_FD: loop_configure with a zeroed struct loop_config."""
    backing = req.backing_fd(req.c.int(2))
    _configure(loops, dev, req, backing, 0, L.INFO64.unpack(bytes(L.INFO64.size)))
    return 0


def _configure_request(loops, dev, req) -> int:
    fd, block_size, raw_info, _reserved = L.CONFIG.unpack(req.read(L.CONFIG.size))
    backing = req.backing_fd(fd)
    _configure(loops, dev, req, backing, block_size, L.INFO64.unpack(raw_info))
    return 0


def _configure(loops, dev, req, backing: int, block_size: int, info: tuple) -> None:
    try:
        loops.bind(dev, backing, req.writable, block_size, info)
    except BaseException:
        if dev.backing != backing:
            os.close(backing)
        raise


def _clr_fd(loops, dev, req) -> int:
    """loop_clr_fd: detached at the last close; the state goes to rundown
    (no new openers) if the caller is the only one."""
    if dev.state != L.BOUND:
        raise OSError(errno.ENXIO, "loop device not bound")
    dev.flags |= L.LO_FLAGS_AUTOCLEAR
    if loops.openers(dev) <= 1:
        dev.state = L.RUNDOWN
    return 0


def _change_fd(loops, dev, req) -> int:
    """loop_change_fd: only for a read-only device, to a file of the same size."""
    backing = req.backing_fd(req.c.int(2))
    try:
        if dev.state != L.BOUND:
            raise OSError(errno.ENXIO, "loop device not bound")
        if not dev.flags & L.LO_FLAGS_READ_ONLY:
            raise OSError(errno.EINVAL, "loop device not read-only")
        L._validate_backing(loops, dev, backing)
        old = dev.backing
        assert old is not None
        if L.get_size(dev.offset, dev.sizelimit, backing) != L.get_size(dev.offset, dev.sizelimit, old):
            raise OSError(errno.EINVAL, "new backing file differs in size")
    except BaseException:
        os.close(backing)
        raise
    dev.backing = backing
    os.close(old)
    loops.reload(dev)
    return 0


# -- status ----------------------------------------------------------------------------

def _info64(loops, dev: L.LoopDevice, req) -> tuple:
    sdev, sino, srdev = _backing_ids(req.c, dev)
    return (sdev, sino, srdev, dev.offset, dev.sizelimit, dev.number, 0, 0, dev.flags,
            dev.file_name, b"", b"", 0, 0)


def _backing_ids(c: "Call", dev: L.LoopDevice) -> tuple[int, int, int]:
    """The backing file's st_dev, st_ino and st_rdev as the instance shows them."""
    assert dev.backing is not None
    local = os.dup(dev.backing)
    try:
        s = os.fstat(local)
        node = c.inst.vfs.node_for_host_fd(local, s)
    except BaseException:
        os.close(local)
        raise
    if node is None:
        os.close(local)
        return L._new_encode(s.st_dev), s.st_ino, L._new_encode(s.st_rdev)
    try:
        a = node.fs.getattr(node, c.task)
        return L._new_encode(a.dev), a.ino, L._new_encode(a.rdev)
    finally:
        node.release()


def _get_status64(loops, dev, req) -> int:
    if dev.state != L.BOUND:
        raise OSError(errno.ENXIO, "loop device not bound")
    req.write(L.INFO64.pack(*_info64(loops, dev, req)))
    return 0


def _get_status_old(loops, dev, req) -> int:
    """loop_info64_to_old: EOVERFLOW where a value does not fit."""
    if dev.state != L.BOUND:
        raise OSError(errno.ENXIO, "loop device not bound")
    i = _info64(loops, dev, req)
    if i[3] > 0x7FFFFFFF:
        raise OSError(errno.EOVERFLOW, "offset too large for struct loop_info")
    req.write(L.INFO_OLD.pack(dev.number, i[0], i[1], i[2], i[3], 0, 0, dev.flags,
                              dev.file_name, b"", 0, 0, b""))
    return 0


def _set_status64(loops, dev, req) -> int:
    _set_status(loops, dev, L.INFO64.unpack(req.read(L.INFO64.size)))
    return 0


def _set_status_old(loops, dev, req) -> int:
    """loop_info64_from_old: the offset an int (sign-extended), no size limit."""
    (_number, _d, _i, _r, offset, crypt_type, key_size, flags, name, _key, _i0, _i1,
     _res) = L.INFO_OLD.unpack(req.read(L.INFO_OLD.size))
    info = (0, 0, 0, offset & ((1 << 64) - 1), 0, 0, crypt_type & 0xFFFFFFFF,
            key_size & 0xFFFFFFFF, flags & 0xFFFFFFFF, name, b"", b"", 0, 0)
    _set_status(loops, dev, info)
    return 0


def _set_status(loops, dev: L.LoopDevice, info: tuple) -> None:
    """loop_set_status: AUTOCLEAR can be set and cleared, PARTSCAN only set;
    the other flags stay; a new offset or size limit resizes the device."""
    if dev.state != L.BOUND:
        raise OSError(errno.ENXIO, "loop device not bound")
    offset, sizelimit, name = L._checked_info(info)
    prev = dev.flags
    flags = info[8] & L.STATUS_SETTABLE
    flags |= prev & ~L.STATUS_SETTABLE
    flags |= prev & ~L.STATUS_CLEARABLE
    resized = (offset, sizelimit) != (dev.offset, dev.sizelimit)
    if resized:
        loops.write_back(dev)
    dev.offset, dev.sizelimit, dev.file_name, dev.flags = offset, sizelimit, name, flags
    if resized:
        assert dev.backing is not None
        dev.size = L.get_size(offset, sizelimit, dev.backing)
        loops._new_view(dev)


def _set_capacity(loops, dev, req) -> int:
    if dev.state != L.BOUND:
        raise OSError(errno.ENXIO, "loop device not bound")
    loops.write_back(dev)
    assert dev.backing is not None
    dev.size = L.get_size(dev.offset, dev.sizelimit, dev.backing)
    loops._new_view(dev)
    return 0


def _set_direct_io(loops, dev, req) -> int:
    """loop_set_dio: the flag only (the view is the provider's memory either way);
    direct I/O needs the offset aligned to the block size."""
    if dev.state != L.BOUND:
        raise OSError(errno.ENXIO, "loop device not bound")
    if req.arg():
        if dev.offset % dev.block_size:
            raise OSError(errno.EINVAL, "offset not aligned for direct I/O")
        dev.flags |= L.LO_FLAGS_DIRECT_IO
    else:
        dev.flags &= ~L.LO_FLAGS_DIRECT_IO
    return 0


def _set_block_size(loops, dev, req) -> int:
    if dev.state != L.BOUND:
        raise OSError(errno.ENXIO, "loop device not bound")
    bsize = req.arg()
    if bsize == dev.block_size:
        return 0
    L._validate_block_size(bsize)
    dev.block_size = bsize
    return 0


# -- generic block requests --------------------------------------------------------------

def _blk_roset(loops, dev, req) -> int:
    (n,) = struct.unpack("<i", req.read(4))
    ro = n != 0
    if ro != dev.bdev_ro:
        dev.bdev_ro = ro
        if dev.state == L.BOUND:
            loops.reload(dev)
    return 0


def _blk_roget(loops, dev, req) -> int:
    req.write(struct.pack("<i", int(dev.read_only)))
    return 0


def _blk_getsize(loops, dev, req) -> int:
    req.write(struct.pack("<Q", dev.size >> 9))
    return 0


def _blk_getsize64(loops, dev, req) -> int:
    req.write(struct.pack("<Q", dev.size))
    return 0


def _blk_sszget(loops, dev, req) -> int:
    req.write(struct.pack("<i", dev.block_size))
    return 0


def _blk_pbszget(loops, dev, req) -> int:
    req.write(struct.pack("<I", dev.block_size))
    return 0


def _blk_bszget(loops, dev, req) -> int:
    """block_size(bdev): the logical block size, doubled up to a page while
    the device's size stays a multiple of it (set_init_blocksize)."""
    bsize = dev.block_size
    while bsize < 4096 and dev.size % (bsize * 2) == 0:
        bsize *= 2
    req.write(struct.pack("<i", bsize))
    return 0


def _blk_flsbuf(loops, dev, req) -> int:
    loops.write_back(dev)
    return 0


def _blk_rrpart(loops, dev, req) -> int:
    """disk_scan_partitions: EINVAL without LO_FLAGS_PARTSCAN; no table is read."""
    if dev.state != L.BOUND or not dev.flags & L.LO_FLAGS_PARTSCAN:
        raise OSError(errno.EINVAL, "partition scanning is off")
    return 0


_HANDLERS = {
    L.LOOP_SET_FD: _set_fd, L.LOOP_CONFIGURE: _configure_request, L.LOOP_CLR_FD: _clr_fd,
    L.LOOP_CHANGE_FD: _change_fd, L.LOOP_GET_STATUS: _get_status_old,
    L.LOOP_GET_STATUS64: _get_status64, L.LOOP_SET_STATUS: _set_status_old,
    L.LOOP_SET_STATUS64: _set_status64, L.LOOP_SET_CAPACITY: _set_capacity,
    L.LOOP_SET_DIRECT_IO: _set_direct_io, L.LOOP_SET_BLOCK_SIZE: _set_block_size,
    L.BLKROSET: _blk_roset, L.BLKROGET: _blk_roget, L.BLKGETSIZE: _blk_getsize,
    L.BLKGETSIZE64: _blk_getsize64, L.BLKSSZGET: _blk_sszget, L.BLKPBSZGET: _blk_pbszget,
    L.BLKBSZGET: _blk_bszget, L.BLKFLSBUF: _blk_flsbuf, L.BLKRRPART: _blk_rrpart,
}
