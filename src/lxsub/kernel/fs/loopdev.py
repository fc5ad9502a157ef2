"""The loop block driver (drivers/block/loop.c, loop(4)): /dev/loop-control
and /dev/loopN, each bound to a backing file the caller hands over.

Devices are the instance's own; the host's loop devices (or any host block
device) are never reached. Device N is made on demand (LOOP_CTL_ADD,
LOOP_CTL_GET_FREE, or opening a 7:N node, as Linux's loop_probe does).

What an open /dev/loopN is on the host: reads, writes and seeks on a
descriptor run natively, so the device's data must be a host file the
program holds. It is a memfd per binding (a "view"): the backing file's
bytes [lo_offset, lo_offset + size) copied in at LOOP_SET_FD/LOOP_CONFIGURE,
sealed against growing and shrinking (the device has a fixed size) and,
for a read-only device, against writing (write(2) is EPERM, as
blkdev_write_iter answers). Like the block device's page cache, the view
is written back to the backing file when the device is detached, at
BLKFLSBUF, before its geometry changes, within WRITEBACK_S of a write(2)
(as the kernel's flusher) and when the instance ends: the
pages that changed since they were read (a digest of each page is kept),
so the file's own later changes elsewhere are not undone. An unbound device's view is empty.

A new binding makes a new view; a descriptor of an older one is brought up
to date (replaced in the caller, offset and flags kept) the next time its
holder makes a loop request through it. Last close (LO_FLAGS_AUTOCLEAR,
the detach LOOP_CLR_FD defers while others hold the device) is found by
counting the instance's descriptors of the device whenever the state can
be observed: an open, a loop request, sysfs, /proc/partitions.

Known differences: a descriptor of an older binding that is never used
for a loop request keeps showing that binding's data; a write crossing the
end of the device stops at a page boundary (memfd sealing) instead of at
the last byte, and one at or past the end is EPERM, not ENOSPC; data written through the device reaches the backing file at
the moments above, not at fsync(2) of the device (which runs natively on
the view), and stores through a shared mapping of the device only at the
explicit moments (they leave the view's mtime as it was). Partition tables are not scanned (no loopNpM devices).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import stat as st
import struct
import threading
from typing import TYPE_CHECKING, Callable

from lxsub.kernel import creds as caps

if TYPE_CHECKING:
    from lxsub.kernel.call import Call

LOOP_MAJOR = 7
CONTROL_RDEV = os.makedev(10, 237)        # /dev/loop-control (LOOP_CTRL_MINOR)
DISK_GID = 6                              # udev's rules: root:disk 0660
MAX_INDEX = (1 << 20) - 1                 # MINORMASK with part_shift 0
WRITEBACK_S = 2.0

LOOP_SET_FD, LOOP_CLR_FD, LOOP_SET_STATUS, LOOP_GET_STATUS = 0x4C00, 0x4C01, 0x4C02, 0x4C03
LOOP_SET_STATUS64, LOOP_GET_STATUS64, LOOP_CHANGE_FD, LOOP_SET_CAPACITY = 0x4C04, 0x4C05, 0x4C06, 0x4C07
LOOP_SET_DIRECT_IO, LOOP_SET_BLOCK_SIZE, LOOP_CONFIGURE = 0x4C08, 0x4C09, 0x4C0A
LOOP_CTL_ADD, LOOP_CTL_REMOVE, LOOP_CTL_GET_FREE = 0x4C80, 0x4C81, 0x4C82
BLKROSET, BLKROGET, BLKRRPART, BLKGETSIZE, BLKFLSBUF = 0x125D, 0x125E, 0x125F, 0x1260, 0x1261
BLKSSZGET, BLKPBSZGET = 0x1268, 0x127B
BLKBSZGET, BLKGETSIZE64 = 0x80081270, 0x80081272
DEVICE_REQUESTS = (LOOP_SET_FD, LOOP_CLR_FD, LOOP_SET_STATUS, LOOP_GET_STATUS, LOOP_SET_STATUS64,
                   LOOP_GET_STATUS64, LOOP_CHANGE_FD, LOOP_SET_CAPACITY, LOOP_SET_DIRECT_IO,
                   LOOP_SET_BLOCK_SIZE, LOOP_CONFIGURE, BLKROSET, BLKROGET, BLKRRPART, BLKGETSIZE,
                   BLKFLSBUF, BLKSSZGET, BLKPBSZGET, BLKBSZGET, BLKGETSIZE64)
CONTROL_REQUESTS = (LOOP_CTL_ADD, LOOP_CTL_REMOVE, LOOP_CTL_GET_FREE)
REQUESTS = DEVICE_REQUESTS + CONTROL_REQUESTS

LO_FLAGS_READ_ONLY, LO_FLAGS_AUTOCLEAR, LO_FLAGS_PARTSCAN, LO_FLAGS_DIRECT_IO = 1, 4, 8, 16
CONFIGURE_SETTABLE = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR | LO_FLAGS_PARTSCAN | LO_FLAGS_DIRECT_IO
STATUS_SETTABLE = LO_FLAGS_AUTOCLEAR | LO_FLAGS_PARTSCAN
STATUS_CLEARABLE = LO_FLAGS_AUTOCLEAR
LO_NAME_SIZE, LO_KEY_SIZE = 64, 32
BLK_MAX_BLOCK_SIZE = 64 * 1024            # include/linux/blkdev.h (Linux 6.15+)
LLONG_MAX = (1 << 63) - 1

# struct loop_info64; struct loop_info (x86_64: __kernel_old_dev_t is unsigned long);
# struct loop_config { __u32 fd; __u32 block_size; struct loop_info64 info; __u64 __reserved[8]; }
INFO64 = struct.Struct("<QQQQQIIII64s64s32s2Q")                  # 232 bytes
INFO_OLD = struct.Struct("<i4xQQQiiii64s32s2Q4s4x")             # 168 bytes
CONFIG = struct.Struct("<II232s64s")                            # 304 bytes

UNBOUND, BOUND, RUNDOWN = "unbound", "bound", "rundown"
_CHUNK = 1 << 20
_PAGE = 4096
_KCMP_FILE = 0


def _new_encode(dev: int) -> int:
    """huge_encode_dev: the 32-bit dev_t of struct loop_info64."""
    major, minor = os.major(dev), os.minor(dev)
    return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)


class LoopDevice:
    """One loop device (struct loop_device)."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.rdev = os.makedev(LOOP_MAJOR, number)
        self.state = UNBOUND
        self.flags = 0
        self.offset = 0
        self.sizelimit = 0
        self.file_name = b""
        self.block_size = 512
        self.size = 0                     # bytes, a multiple of 512 (get_size)
        self.bdev_ro = False              # BLKROSET
        self.backing: int | None = None   # provider's reference to the backing file
        self.view: int | None = None      # provider's descriptor of the current view
        self.view_id: tuple[int, int] = (0, 0)
        self.clean: dict[int, bytes] = {}  # view position -> digest of the page when clean
        self.flushed: tuple[int, int] = (0, 0)   # the view's mtime, ctime at the last writeback

    @property
    def read_only(self) -> bool:
        """bdev_read_only: the disk's (LO_FLAGS_READ_ONLY) or the block device's (BLKROSET)."""
        return self.bdev_ro or bool(self.flags & LO_FLAGS_READ_ONLY)

    @property
    def memfd_name(self) -> str:
        return f"lxsub-loop{self.number}"


class LoopDevices:
    """The instance's loop devices, their views and /dev/loop-control."""

    def __init__(self) -> None:
        self.devices: dict[int, LoopDevice] = {}
        # (st_dev, st_ino) of every view handed out -> its device number
        self._views: dict[tuple[int, int], int] = {}
        self.lock = threading.RLock()
        # The instance's processes (host pids), to count a device's openers;
        # set by the instance.
        self.host_pids: Callable[[], list[int]] = lambda: []
        self.log: Callable[[str], None] = lambda _m: None
        self._control: int | None = None
        self._control_id = (0, 0)
        self._flusher: threading.Thread | None = None
        self._stop = threading.Event()

    # -- which host objects are ours -------------------------------------------------

    @staticmethod
    def claims(kind: int, rdev: int) -> bool:
        return ((kind == st.S_IFBLK and os.major(rdev) == LOOP_MAJOR)
                or (kind == st.S_IFCHR and rdev == CONTROL_RDEV))

    def device_of(self, s: os.stat_result) -> LoopDevice | None:
        """The device an open view (its host fstat) belongs to."""
        if not st.S_ISREG(s.st_mode):
            return None
        number = self._views.get((s.st_dev, s.st_ino))
        return self.devices.get(number) if number is not None else None

    def is_control(self, s: os.stat_result) -> bool:
        return self._control is not None and (s.st_dev, s.st_ino) == self._control_id

    def owns(self, s: os.stat_result) -> bool:
        return self.is_control(s) or self.device_of(s) is not None

    # -- opening -------------------------------------------------------------------

    def open(self, kind: int, rdev: int, flags: int) -> int:
        """A new open file of /dev/loop-control or /dev/loopN (lo_open)."""
        keep = os.O_ACCMODE | os.O_NONBLOCK | os.O_APPEND
        with self.lock:
            if kind == st.S_IFCHR:
                return os.open(f"/proc/self/fd/{self._control_fd()}", (flags & keep) | os.O_CLOEXEC)
            self.settle()
            number = os.minor(rdev)
            dev = self.devices.get(number)
            if dev is None:                # loop_probe: a node of a device not made yet
                if number > MAX_INDEX:
                    raise OSError(errno.ENXIO, "no such loop device")
                dev = self.add(number)
            if dev.state == RUNDOWN:
                raise OSError(errno.ENXIO, "loop device being detached")
            return self._reopen(dev, flags & keep)

    def _control_fd(self) -> int:
        if self._control is None:
            fd = os.memfd_create("lxsub-loop-control", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            _seal(fd, write=True)
            s = os.fstat(fd)
            self._control, self._control_id = fd, (s.st_dev, s.st_ino)
        return self._control

    def _reopen(self, dev: LoopDevice, flags: int) -> int:
        if dev.view is None:
            self._new_view(dev)
        assert dev.view is not None
        return os.open(f"/proc/self/fd/{dev.view}", flags | os.O_CLOEXEC)

    # -- devices -------------------------------------------------------------------

    def add(self, number: int) -> LoopDevice:
        """loop_add(number): EEXIST if it is there."""
        if number in self.devices:
            raise OSError(errno.EEXIST, "loop device exists")
        if not 0 <= number <= MAX_INDEX:
            raise OSError(errno.EINVAL, "loop device number out of range")
        dev = LoopDevice(number)
        self.devices[number] = dev
        self._new_view(dev)
        return dev

    def lowest_free_number(self) -> int:
        n = 0
        while n in self.devices:
            n += 1
        return n

    def get_free(self) -> int:
        """LOOP_CTL_GET_FREE: the first unbound device, else a new one."""
        self.settle()
        for n in sorted(self.devices):
            if self.devices[n].state == UNBOUND:
                return n
        return self.add(self.lowest_free_number()).number

    def remove(self, number: int) -> int:
        """LOOP_CTL_REMOVE: ENODEV if absent, EBUSY if bound or open."""
        if number < 0:
            raise OSError(errno.EINVAL, "no device named")
        self.settle()
        dev = self.devices.get(number)
        if dev is None:
            raise OSError(errno.ENODEV, "no such loop device")
        if dev.state != UNBOUND or self.openers(dev) > 0:
            raise OSError(errno.EBUSY, "loop device in use")
        del self.devices[number]
        self._drop_view(dev)
        return 0

    # -- views -----------------------------------------------------------------------

    def _new_view(self, dev: LoopDevice) -> None:
        """The device's data as a new memfd: the backing bytes, or nothing."""
        fd = os.memfd_create(dev.memfd_name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            clean: dict[int, bytes] = {}
            if dev.state != UNBOUND and dev.backing is not None and dev.size:
                clean = _copy_in(dev.backing, dev.offset, fd, dev.size)
                os.ftruncate(fd, dev.size)
            _seal(fd, write=dev.read_only or dev.state == UNBOUND)
            s = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        self._drop_view(dev)
        dev.view, dev.view_id, dev.clean = fd, (s.st_dev, s.st_ino), clean
        dev.flushed = (s.st_mtime_ns, s.st_ctime_ns)
        self._views[dev.view_id] = dev.number
        if len(self._views) > 65536:               # views long gone: forget the oldest
            for key in list(self._views)[:1024]:
                if self._views[key] in self.devices and key != self.devices[self._views[key]].view_id:
                    del self._views[key]

    def _drop_view(self, dev: LoopDevice) -> None:
        if dev.view is not None:
            os.close(dev.view)
            dev.view = None

    def write_back(self, dev: LoopDevice) -> None:
        """The view's pages written through the device go to the backing
        file (writeback of the block device's dirty page cache)."""
        if dev.state == UNBOUND or dev.backing is None or dev.view is None:
            return
        if dev.flags & LO_FLAGS_READ_ONLY:
            return
        try:
            _copy_out(dev.view, dev.backing, dev.offset, dev.size, dev.clean)
        except OSError as e:
            self.log(f"loop{dev.number}: writeback to the backing file failed: {e}")

    def reload(self, dev: LoopDevice) -> None:
        """Geometry or read-only state changed: write back, then a new view."""
        self.write_back(dev)
        self._new_view(dev)

    def flush_all(self) -> None:
        with self.lock:
            for dev in self.devices.values():
                self.write_back(dev)

    def _start_flusher(self) -> None:
        """Background writeback, as the kernel's flusher writes dirty pages
        back within seconds: every WRITEBACK_S, each bound device whose view
        was written to (its mtime moved) since the last look."""
        if self._flusher is not None:
            return
        self._flusher = threading.Thread(target=self._flush_loop, name="loop-writeback", daemon=True)
        self._flusher.start()

    def _flush_loop(self) -> None:
        while not self._stop.wait(WRITEBACK_S):
            try:
                with self.lock:
                    for dev in list(self.devices.values()):
                        self._flush_if_written(dev)
            except Exception as e:        # never let writeback end the provider
                self.log(f"loop writeback: {e!r}")

    def _flush_if_written(self, dev: LoopDevice) -> None:
        if dev.state == UNBOUND or dev.view is None or dev.flags & LO_FLAGS_READ_ONLY:
            return
        s = os.fstat(dev.view)
        stamp = (s.st_mtime_ns, s.st_ctime_ns)
        if stamp != dev.flushed:
            dev.flushed = stamp           # taken first: a write meanwhile is seen next time
            self.write_back(dev)

    def close(self) -> None:
        self._stop.set()
        self.flush_all()

    # -- last close --------------------------------------------------------------------

    def openers(self, dev: LoopDevice) -> int:
        """How many open files of the device the instance's processes hold
        (disk_openers): their descriptors of any of its views, one per open
        file description."""
        link = f"/memfd:{dev.memfd_name} (deleted)"
        found: list[tuple[int, int]] = []
        me = os.getpid()
        for pid in self.host_pids():
            if pid == me:
                continue
            try:
                names = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for name in names:
                path = f"/proc/{pid}/fd/{name}"
                try:
                    if os.readlink(path) != link:
                        continue
                    s = os.stat(path)
                except OSError:
                    continue
                if self._views.get((s.st_dev, s.st_ino)) == dev.number:
                    found.append((pid, int(name)))
        return _distinct_files(found)

    def settle(self) -> None:
        """Run what the last close of each device would have run (lo_release):
        a device set to clear itself (LO_FLAGS_AUTOCLEAR, or a LOOP_CLR_FD that
        others held back) with no opener left is detached."""
        for dev in list(self.devices.values()):
            due = dev.state == RUNDOWN or (dev.state == BOUND and dev.flags & LO_FLAGS_AUTOCLEAR)
            if due and self.openers(dev) == 0:
                self.clear(dev)

    def clear(self, dev: LoopDevice) -> None:
        """__loop_clr_fd: back to unbound."""
        self.write_back(dev)
        if dev.backing is not None:
            os.close(dev.backing)
        dev.backing = None
        dev.state = UNBOUND
        dev.flags = dev.offset = dev.sizelimit = dev.size = 0
        dev.file_name = b""
        dev.block_size = 512
        self._new_view(dev)

    # -- binding ---------------------------------------------------------------------------

    def bind(self, dev: LoopDevice, backing: int, dev_writable: bool, block_size: int,
             info: tuple) -> None:
        """loop_configure: `backing` (ours now) bound with a struct loop_info64."""
        if dev.state != UNBOUND:
            raise OSError(errno.EBUSY, "loop device in use")
        _validate_backing(self, dev, backing)
        flags = info[8]
        if flags & ~CONFIGURE_SETTABLE:
            raise OSError(errno.EINVAL, "flags not settable")
        offset, sizelimit, name = _checked_info(info)
        if block_size:
            _validate_block_size(block_size)
        acc = fcntl.fcntl(backing, fcntl.F_GETFL) & os.O_ACCMODE
        if acc == os.O_RDONLY or not dev_writable:
            flags |= LO_FLAGS_READ_ONLY
        dev.offset, dev.sizelimit, dev.file_name, dev.flags = offset, sizelimit, name, flags
        dev.block_size = block_size or 512
        dev.backing = backing
        dev.size = get_size(offset, sizelimit, backing)
        dev.state = BOUND
        try:
            self._new_view(dev)
        except BaseException:
            dev.backing = None
            self.clear(dev)
            raise
        self._start_flusher()


def get_size(offset: int, sizelimit: int, backing: int) -> int:
    """get_size(): the device's size in bytes, whole 512-byte sectors."""
    size = os.fstat(backing).st_size - offset
    if size < 0:
        return 0
    if 0 < sizelimit < size:
        size = sizelimit
    return size >> 9 << 9


def _validate_backing(loops: LoopDevices, dev: LoopDevice, backing: int) -> None:
    """loop_validate_file: a regular file or a block device (one of ours), not
    the device itself."""
    s = os.fstat(backing)
    if not st.S_ISREG(s.st_mode):
        raise OSError(errno.EINVAL, "backing file must be a regular file or block device")
    if loops.device_of(s) is dev:
        raise OSError(errno.EINVAL, "a loop device cannot be its own backing file")


def _validate_block_size(bsize: int) -> None:
    """blk_validate_block_size."""
    if bsize < 512 or bsize > BLK_MAX_BLOCK_SIZE or bsize & (bsize - 1):
        raise OSError(errno.EINVAL, "bad block size")


def _checked_info(info: tuple) -> tuple[int, int, bytes]:
    """loop_set_status_from_info: (offset, sizelimit, file name)."""
    (_dev, _ino, _rdev, offset, sizelimit, _number, crypt_type, key_size, _flags,
     file_name, _crypt_name, _key, _init0, _init1) = info
    if key_size > LO_KEY_SIZE or crypt_type != 0:
        raise OSError(errno.EINVAL, "encryption is not supported")
    if offset > LLONG_MAX or sizelimit > LLONG_MAX:
        raise OSError(errno.EOVERFLOW, "offset or size limit too large")
    return offset, sizelimit, file_name[:LO_NAME_SIZE - 1].split(b"\0", 1)[0]


def _seal(fd: int, write: bool) -> None:
    seals = fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | (fcntl.F_SEAL_WRITE if write else 0)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)


def _data_ranges(fd: int, start: int, end: int):
    """(from, to) ranges of fd between start and end that may hold data
    (SEEK_DATA/SEEK_HOLE; everything where the file system cannot tell)."""
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
            hole = os.lseek(fd, data, os.SEEK_HOLE)
        except OSError as e:
            if e.errno == errno.ENXIO:
                return
            yield pos, end
            return
        if data >= end:
            return
        yield data, min(hole, end)
        pos = hole


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def _pages(fd: int, start: int, end: int):
    """(position, bytes) of each page of fd's data between start and end,
    pages counted from start."""
    for first, last in _data_ranges(fd, start, end):
        pos = first - (first - start) % _PAGE           # pages counted from start
        while pos < last:
            block = os.pread(fd, min(_CHUNK, last - pos), pos)
            if not block:
                return
            for i in range(0, len(block), _PAGE):
                yield pos + i, block[i:i + _PAGE]
            pos += len(block)


def _copy_in(backing: int, offset: int, view: int, size: int) -> dict[int, bytes]:
    """The backing window into the view; the digest of each page copied,
    by view position (what the page was when clean)."""
    clean: dict[int, bytes] = {}
    for pos, page in _pages(backing, offset, offset + size):
        os.pwrite(view, page, pos - offset)
        clean[pos - offset] = _digest(page)
    return clean


def _copy_out(view: int, backing: int, offset: int, size: int, clean: dict[int, bytes]) -> None:
    """The view's pages written since they were clean go to the backing
    file (pages the device never wrote are left as the file has them now)."""
    for pos, page in _pages(view, 0, size):
        digest = _digest(page)
        if clean.get(pos) != digest and (pos in clean or page.count(0) != len(page)):
            os.pwrite(backing, page, offset + pos)
        clean[pos] = digest


def _distinct_files(found: list[tuple[int, int]]) -> int:
    """How many open file descriptions the (pid, fd) pairs name (kcmp(2))."""
    from lxsub.abi.sysno import SYS_KCMP
    from lxsub.platform import libc
    distinct: list[tuple[int, int]] = []
    for pid, fd in found:
        for opid, ofd in distinct:
            try:
                if libc.syscall(SYS_KCMP, pid, opid, _KCMP_FILE, fd, ofd) == 0:
                    break
            except OSError:
                continue
        else:
            distinct.append((pid, fd))
    return len(distinct)


# -- requests (lo_ioctl, loop_control_ioctl, blkdev_ioctl) --------------------------------

class Request:
    """One trapped request on a device's open file: the caller, its
    descriptor's provider copy `local`, and whether it was opened for writing."""

    def __init__(self, c: "Call", cmd: int, local: int) -> None:
        self.c, self.cmd, self.local = c, cmd, local
        self.writable = fcntl.fcntl(local, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY

    @property
    def admin(self) -> bool:
        return self.c.task.creds.capable(caps.CAP_SYS_ADMIN)

    def arg(self) -> int:
        return self.c.ptr(2)

    def read(self, size: int) -> bytes:
        from lxsub.platform.memory import MemoryFault
        try:
            return self.c.read(self.c.ptr(2), size)
        except (MemoryFault, OSError):
            raise OSError(errno.EFAULT, "bad address") from None

    def write(self, data: bytes) -> None:
        from lxsub.platform.memory import MemoryFault
        try:
            self.c.write(self.c.ptr(2), data)
        except (MemoryFault, OSError):
            raise OSError(errno.EFAULT, "bad address") from None

    def backing_fd(self, fd: int) -> int:
        """fget(fd) of the caller: our copy (EBADF)."""
        if fd < 0 or fd > 0x7FFFFFFF:
            raise OSError(errno.EBADF, "bad file descriptor")
        return self.c.task.copy_fd(fd)


# -- what sysfs and /proc show ------------------------------------------------------------

DISK_ATTRS = ("dev", "size", "ro", "removable", "range", "hidden", "uevent")
QUEUE_ATTRS = ("logical_block_size", "physical_block_size", "hw_sector_size", "minimum_io_size",
               "optimal_io_size")
LOOP_ATTRS = ("backing_file", "offset", "sizelimit", "autoclear", "partscan", "dio")


def sysfs_attr(loops: LoopDevices, dev: LoopDevice, name: str, inst) -> str:
    """The text of /sys/devices/virtual/block/loopN/<name> (block/genhd.c,
    block/blk-sysfs.c, loop.c's loop_attr_*_show)."""
    n = dev.number
    disk = {"dev": f"{LOOP_MAJOR}:{n}", "size": str(dev.size >> 9),
            "ro": str(int(bool(dev.flags & LO_FLAGS_READ_ONLY))), "removable": "0", "range": "1",
            "hidden": "0", "uevent": f"MAJOR={LOOP_MAJOR}\nMINOR={n}\nDEVNAME=loop{n}\nDEVTYPE=disk"}
    if name in disk:
        return disk[name] + "\n"
    if name.startswith("queue/"):
        value = 0 if name == "queue/optimal_io_size" else dev.block_size
        return f"{value}\n"
    if dev.state == UNBOUND:
        raise OSError(errno.ENOENT, "loop device not bound")
    flag = {"loop/autoclear": LO_FLAGS_AUTOCLEAR, "loop/partscan": LO_FLAGS_PARTSCAN,
            "loop/dio": LO_FLAGS_DIRECT_IO}
    if name in flag:
        return ("1" if dev.flags & flag[name] else "0") + "\n"
    if name == "loop/offset":
        return f"{dev.offset}\n"
    if name == "loop/sizelimit":
        return f"{dev.sizelimit}\n"
    if name == "loop/backing_file":
        return backing_path(dev, inst) + "\n"
    raise OSError(errno.ENOENT, "no such attribute")


def backing_path(dev: LoopDevice, inst) -> str:
    """The backing file's path in the instance (file_path: d_path, with
    " (deleted)" once it is unlinked)."""
    if dev.backing is None:
        return ""
    host = os.readlink(f"/proc/self/fd/{dev.backing}")
    deleted = host.endswith(" (deleted)")
    local = os.dup(dev.backing)
    try:
        node = inst.vfs.node_for_host_fd(local, os.fstat(local))
    except BaseException:
        os.close(local)
        raise
    if node is None:
        os.close(local)
        plain = host[: -len(" (deleted)")] if deleted else host
        path = inst.vfs.host_to_vpath(inst.vfs.host_roots(), plain) or plain
    else:
        try:
            path = inst.vfs.vpath_of(node)
        finally:
            node.release()
    if deleted and not path.endswith(" (deleted)"):
        path += " (deleted)"
    return path


def partitions_lines(loops: LoopDevices) -> list[str]:
    """/proc/partitions rows of the devices with a size (show_partition
    skips a disk of capacity 0): major, minor, 1K blocks, name."""
    with loops.lock:
        loops.settle()
        return [f"{LOOP_MAJOR:4d}  {n:7d} {loops.devices[n].size >> 10:10d} loop{n}"
                for n in sorted(loops.devices) if loops.devices[n].size]
