"""The loop block driver (loop(4)) from a real program:
tests/fixtures/programs/loopdev.c, built static on the host and run as root
in BusyBox. It finds a free device through /dev/loop-control, binds a file
with LOOP_CONFIGURE (offset, size limit, LO_FLAGS_AUTOCLEAR), reads and
writes through the device, reads its status, sysfs attributes and
/proc/partitions row, closes it (the autoclear detach writes the data back
to the file), binds the file read-only (writes are EPERM), detaches with
LOOP_CLR_FD (deferred while another descriptor is open), sees a binding
through a descriptor opened before it, finds its writes in the file within
seconds while the file's own changes are kept, adds and removes devices, and, as
an unprivileged user, is refused /dev/loop-control. Before the driver,
/dev/loop-control did not exist."""

from __future__ import annotations

import errno

import pytest

from tests.fixtures.cbuild import PROGRAMS, gcc_static
from tests.integration.distros import describe

DIR = "/loop-test"


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> bytes:
    tmp = tmp_path_factory.mktemp("loopdev")
    return gcc_static(tmp, "loopdev", PROGRAMS / "loopdev.c").read_bytes()


@pytest.fixture(scope="module")
def out(busybox, program) -> dict[str, str]:
    """{first words: value} of the program's lines, as printed under lxsub."""
    cp = busybox.lx(["-u", "root", "--", f"mkdir -p {DIR} && cat > {DIR}/l && chmod 755 {DIR}/l"],
                    input=program, timeout=60)
    assert cp.returncode == 0, describe(cp)
    cp = busybox.lx(["-u", "root", "--", f"{DIR}/l {DIR}"], timeout=60)
    assert cp.returncode == 0, describe(cp)
    lines = {}
    for line in cp.stdout.decode().splitlines():
        words = line.split(" ")
        for i in range(len(words) - 1, 0, -1):     # labels are words, values numbers
            if not words[i].lstrip("-").isdigit():
                break
        else:
            i = 0
        lines[" ".join(words[:i + 1])] = " ".join(words[i + 1:])
    return lines


def test_control_finds_a_free_device_with_its_node(out):
    assert out["ctl"] == "0", out
    assert out["free"] == "1", out
    assert out["node"] == "1", out
    assert out["unbound status"] == str(-errno.ENXIO), out
    assert out["fstat"] == "1", out                # the open file is the block device
    assert out["fd link"] == "1", out              # /proc/self/fd/N names /dev/loopN


def test_configure_with_offset_and_size_limit(out):
    assert out["configure"] == "0", out
    assert out["configure again"] == str(-errno.EBUSY), out
    assert out["size64"] == "4096", out
    assert out["status"] == f"512 4096 {4} 1", out          # LO_FLAGS_AUTOCLEAR
    assert out["partitions"] == "4", out


def test_sysfs_attributes(out):
    assert out["sysfs size"] == "8", out
    assert out["sysfs offset"] == "512", out
    assert out["sysfs sizelimit"] == "4096", out
    assert out["sysfs autoclear"] == "1", out
    assert out["sysfs ro"] == "0", out
    assert out["sysfs lbs"] == "512", out
    assert out["backing"] == "1", out


def test_io_within_the_window_and_autoclear_writes_back(out):
    assert out["read offset"] == "1", out
    assert out["end"] == "4096", out
    assert out["read past end"] == "0", out
    assert out["write"] == "5", out
    assert out["blk on file"] == str(-errno.ENOTTY), out
    assert out["loop dir after"] == str(-errno.ENOENT), out
    assert out["written back"] == "1", out


def test_read_only_binding(out):
    assert out["ro set_fd"] == "0", out
    assert out["ro sysfs"] == "1", out
    assert out["ro blkroget"] == "1", out
    assert out["ro write"] == str(-errno.EPERM), out
    assert out["ro read"] == "1", out


def test_clr_fd_waits_for_the_last_close(out):
    assert out["clr busy"] == "0", out
    assert out["clr again"] == "0", out           # still bound: another holds it
    # the only holder: rundown, detached at its close; no new openers meanwhile
    assert out["clr last"] == "0", out
    assert out["clr rundown"] == str(-errno.ENXIO), out
    assert out["still bound"] == "0", out
    assert out["open in rundown"] == str(-errno.ENXIO), out
    assert out["cleared"] == str(-errno.ENXIO), out


def test_descriptor_opened_before_the_binding(out):
    assert out["set_fd"] == "0", out
    assert out["early ioctl"] == "0", out
    assert out["early size"] == "8704", out          # 9000 bytes: 17 whole sectors
    assert out["early read"] == "1", out
    assert out["clr"] == "0", out


def test_writeback_in_the_background_keeps_the_files_own_changes(out):
    assert out["early write"] == "5", out
    assert out["background writeback"] == "1", out
    assert out["flsbuf"] == "0", out
    assert out["file's own write kept"] == "1", out


def test_add_and_remove(out):
    assert out["remove"] == "0", out
    assert out["removed node"] == str(-errno.ENOENT), out
    assert out["remove again"] == str(-errno.ENODEV), out
    assert out["add"] == "250", out
    assert out["add again"] == str(-errno.EEXIST), out
    assert out["added node"] == "0", out


def test_unprivileged_user_cannot_open_control(out):
    # /dev/loop-control is root:disk 0660 (udev's rules).
    assert out["user ctl"] == str(-errno.EACCES), out
