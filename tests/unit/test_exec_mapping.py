"""kernel/exec/mapping.py on real ELF files: the calls that map a program
as binfmt_elf does (PT_LOAD segments at a bias, bss), read from the
host's own /bin/true (a PIE) and a non-PIE built here."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from lxsub.abi.elf import ELF_ET_DYN_BASE
from lxsub.abi.mman import MAP_ANONYMOUS, MAP_FIXED, MAP_FIXED_NOREPLACE
from lxsub.abi.sysno import NUMBERS
from lxsub.kernel.exec import mapping

MMAP, CLOSE, OPENAT = NUMBERS["mmap"], NUMBERS["close"], NUMBERS["openat"]


def _image(path: str) -> mapping.ElfImage:
    fd = os.open(path, os.O_RDONLY)
    try:
        return mapping.read_image(fd)
    finally:
        os.close(fd)


def _calls(image: mapping.ElfImage, base: int, randomize: bool = False):
    m = mapping.ProgramMapping(1, image, b"/proc/1/fd/3", randomize)
    first = m.first()
    assert first.nr == OPENAT and first.data == b"/proc/1/fd/3\0"
    reserve = m.after(7)                       # the descriptor
    calls = [reserve]
    nxt = m.after(base)
    while nxt is not None:
        calls.append(nxt)
        nxt = m.after(0)
    return m, calls


def test_a_pie_is_mapped_at_elf_et_dyn_base_without_randomization():
    image = _image("/bin/true")
    assert image.dynamic and image.segments
    m, calls = _calls(image, ELF_ET_DYN_BASE)
    reserve, *segments, close = calls
    assert reserve.nr == MMAP and reserve.args[0] == ELF_ET_DYN_BASE and reserve.args[4] == 7
    assert close.nr == CLOSE and close.args == (7,)
    assert m.bias == ELF_ET_DYN_BASE - (image.segments[0].vaddr & ~0xFFF)
    files = [c for c in segments if not c.args[3] & MAP_ANONYMOUS]
    assert len(files) == sum(1 for s in image.segments[1:] if s.filesz)
    for call, seg in zip(files, [s for s in image.segments[1:] if s.filesz]):
        assert call.args[0] == m.bias + (seg.vaddr & ~0xFFF) and call.args[3] & MAP_FIXED
        assert call.args[5] == seg.offset & ~0xFFF and call.args[2] == seg.prot


def test_randomized_bases_differ_and_stay_above_elf_et_dyn_base():
    image = _image("/bin/true")
    hints = {_calls(image, ELF_ET_DYN_BASE, randomize=True)[1][0].args[0] for _ in range(8)}
    assert len(hints) > 1 and min(hints) >= ELF_ET_DYN_BASE


def test_a_failed_call_closes_the_descriptor_and_ends():
    m = mapping.ProgramMapping(1, _image("/bin/true"), b"/x", False)
    m.after(5)
    close = m.after(-12)                       # the reservation: ENOMEM
    assert close.nr == CLOSE and close.args == (5,) and m.error == 12
    assert m.after(0) is None


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc")
def test_a_non_pie_goes_where_it_was_linked_and_gets_its_bss(tmp_path):
    src = tmp_path / "big.c"
    src.write_text("char bss[100000]; int data = 1; int main(void) { return bss[5] + data; }\n")
    subprocess.run(["gcc", "-no-pie", "-o", str(tmp_path / "big"), str(src)], check=True)
    image = _image(str(tmp_path / "big"))
    assert not image.dynamic
    lo = image.segments[0].vaddr & ~0xFFF
    m, calls = _calls(image, lo)
    assert calls[0].args[0] == lo and calls[0].args[3] & MAP_FIXED_NOREPLACE and m.bias == 0
    anon = [c for c in calls if c.nr == MMAP and c.args[3] & MAP_ANONYMOUS]
    data = image.segments[-1]
    assert anon and anon[-1].args[0] + anon[-1].args[1] >= data.vaddr + data.memsz
    assert m.zero and m.zero[0][0] == data.vaddr + data.filesz      # the tail of its last file page
    _, other = _calls(image, lo + 0x1000)                            # not where it must be
    assert other[-1].nr == CLOSE
