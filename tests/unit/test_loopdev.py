"""The loop driver's pieces that need no instance (kernel/fs/loopdev.py):
the struct layouts, get_size, block size checks, and the writeback that
sends only the pages written through the device."""

from __future__ import annotations

import errno
import os

import pytest

from lxsub.kernel.fs import loopdev as L


def test_struct_sizes_are_the_kernels():
    # struct loop_info64 232, struct loop_info (x86_64) 168, struct loop_config 304
    assert (L.INFO64.size, L.INFO_OLD.size, L.CONFIG.size) == (232, 168, 304)


def _file(tmp_path, data: bytes) -> int:
    p = tmp_path / "img"
    p.write_bytes(data)
    return os.open(p, os.O_RDWR)


def test_get_size_whole_sectors_within_offset_and_limit(tmp_path):
    fd = _file(tmp_path, b"x" * 9000)
    try:
        assert L.get_size(0, 0, fd) == 8704           # 17 sectors
        assert L.get_size(512, 0, fd) == 8192
        assert L.get_size(512, 4096, fd) == 4096
        assert L.get_size(0, 100000, fd) == 8704      # a limit past the end
        assert L.get_size(10000, 0, fd) == 0          # an offset past the end
    finally:
        os.close(fd)


@pytest.mark.parametrize("bsize", [256, 511, 4095, 128 * 1024])
def test_bad_block_sizes(bsize):
    with pytest.raises(OSError) as e:
        L._validate_block_size(bsize)
    assert e.value.errno == errno.EINVAL


@pytest.mark.parametrize("bsize", [512, 1024, 4096, 65536])
def test_good_block_sizes(bsize):
    L._validate_block_size(bsize)


def test_encryption_and_overflow_refused():
    info = list(L.INFO64.unpack(bytes(L.INFO64.size)))
    info[6] = 1                                         # LO_CRYPT_XOR
    with pytest.raises(OSError) as e:
        L._checked_info(tuple(info))
    assert e.value.errno == errno.EINVAL
    info[6], info[3] = 0, 1 << 63
    with pytest.raises(OSError) as e:
        L._checked_info(tuple(info))
    assert e.value.errno == errno.EOVERFLOW


def test_writeback_sends_only_pages_written_through_the_view(tmp_path):
    data = bytes(i % 251 for i in range(4 * 4096))
    backing = _file(tmp_path, data)
    view = os.memfd_create("t")
    try:
        clean = L._copy_in(backing, 512, view, 3 * 4096)
        assert os.pread(view, 16, 0) == data[512:528]
        os.pwrite(view, b"DEVICE", 100)                  # page 0, through the device
        os.pwrite(backing, b"FILE", 512 + 4096 + 10)     # page 1, the file's own change
        L._copy_out(view, backing, 512, 3 * 4096, clean)
        assert os.pread(backing, 6, 612) == b"DEVICE"
        assert os.pread(backing, 4, 512 + 4096 + 10) == b"FILE"
    finally:
        os.close(view)
        os.close(backing)
