"""kernel/exec/mapping.py on real ELF files: the calls that map a program
as binfmt_elf does (PT_LOAD segments at a bias, bss), read from the
host's own /bin/true (a PIE) and a non-PIE built here."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess

import pytest

from lxsub.abi.elf import ELF_ET_DYN_BASE
from lxsub.abi.mman import MAP_ANONYMOUS, MAP_FIXED, MAP_FIXED_NOREPLACE
from lxsub.abi.sysno import NUMBERS
from lxsub.kernel.exec import mapping
from lxsub.platform import coderun

MMAP, CLOSE, OPENAT = NUMBERS["mmap"], NUMBERS["close"], NUMBERS["openat"]


def _image(path: str) -> mapping.ElfImage:
    fd = os.open(path, os.O_RDONLY)
    try:
        return mapping.read_image(fd)
    finally:
        os.close(fd)


def _calls(image: mapping.ElfImage, randomize: bool = False):
    m = mapping.ProgramMapping(image, b"/proc/1/fd/3", randomize)
    steps = m.steps()
    opened = steps[0]
    assert isinstance(opened, coderun.Keep) and opened.call.nr == OPENAT
    assert opened.call.data == b"/proc/1/fd/3\0"
    return m, steps[1:]


def test_a_pie_is_mapped_at_elf_et_dyn_base_without_randomization():
    image = _image("/bin/true")
    assert image.dynamic and image.segments
    m, calls = _calls(image)
    reserve, *segments, close = calls
    assert reserve.nr == MMAP and reserve.args[0] == ELF_ET_DYN_BASE and reserve.args[4] is coderun.KEPT
    assert reserve.args[3] & MAP_FIXED_NOREPLACE          # as load_elf_binary: a taken place fails
    assert close.nr == CLOSE and close.args == (coderun.KEPT,)
    assert m.bias == ELF_ET_DYN_BASE - (image.segments[0].vaddr & ~0xFFF)
    files = [c for c in segments if isinstance(c, coderun.SysCall) and not c.args[3] & MAP_ANONYMOUS]
    assert len(files) == sum(1 for s in image.segments[1:] if s.filesz)
    for call, seg in zip(files, [s for s in image.segments[1:] if s.filesz]):
        assert call.args[0] == m.bias + (seg.vaddr & ~0xFFF) and call.args[3] & MAP_FIXED
        assert call.args[5] == seg.offset & ~0xFFF and call.args[2] == seg.prot


def test_randomized_bases_differ_and_stay_above_elf_et_dyn_base():
    image = _image("/bin/true")
    hints = {_calls(image, randomize=True)[1][0].args[0] for _ in range(8)}
    assert len(hints) > 1 and min(hints) >= ELF_ET_DYN_BASE


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc")
def test_a_non_pie_goes_where_it_was_linked_and_gets_its_bss(tmp_path):
    src = tmp_path / "big.c"
    src.write_text("char bss[100000]; int data = 1; int main(void) { return bss[5] + data; }\n")
    subprocess.run(["gcc", "-no-pie", "-o", str(tmp_path / "big"), str(src)], check=True)
    image = _image(str(tmp_path / "big"))
    assert not image.dynamic
    lo = image.segments[0].vaddr & ~0xFFF
    m, calls = _calls(image, randomize=True)
    assert calls[0].args[0] == lo and calls[0].args[3] & MAP_FIXED_NOREPLACE and m.bias == 0
    anon = [c for c in calls if isinstance(c, coderun.SysCall) and c.nr == MMAP and c.args[3] & MAP_ANONYMOUS]
    data = image.segments[-1]
    assert anon and anon[-1].args[0] + anon[-1].args[1] >= data.vaddr + data.memsz
    fills = [c for c in calls if isinstance(c, coderun.Fill)]
    assert fills and fills[0].addr == data.vaddr + data.filesz       # the tail of its last file page


def test_the_table_rows_hold_the_calls_and_their_data():
    path = coderun.SysCall(OPENAT, (-100, coderun.Scratch(0), 0, 0), b"/x\0")
    steps = [coderun.Keep(path), coderun.SysCall(MMAP, (0x1000, 0x2000, 1, 2, coderun.KEPT, 0)),
             coderun.Fill(0x5000, 12), coderun.SysCall(CLOSE, (coderun.KEPT,))]
    table = coderun.encode(steps, 0x10000)
    assert len(table) == coderun.table_size(steps) == 4 * 64 + 8
    rows = [struct.unpack_from("<8Q", table, 64 * i) for i in range(4)]
    assert rows[0][:3] == (OPENAT, 2**64 - 100, 0x10000 + 4 * 64) and rows[0][7] == coderun.KEEP_RESULT
    assert table[4 * 64:4 * 64 + 3] == b"/x\0"
    assert rows[1][5] == 0 and rows[1][7] == coderun.KEPT_ARG4
    assert rows[2][1:3] == (0x5000, 12) and rows[2][7] == coderun.FILL
    assert rows[3][0] == CLOSE and rows[3][7] == coderun.KEPT_ARG0


@pytest.mark.skipif(shutil.which("as") is None or shutil.which("objcopy") is None, reason="no binutils")
def test_the_code_is_its_source_assembled(tmp_path):
    (tmp_path / "c.S").write_text(coderun.SOURCE)
    subprocess.run(["as", "--64", "-o", str(tmp_path / "c.o"), str(tmp_path / "c.S")], check=True)
    subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(tmp_path / "c.o"), str(tmp_path / "c.bin")],
                   check=True)
    assert (tmp_path / "c.bin").read_bytes() == coderun.CODE
