"""Mapping a dynamic program into its process as Linux's binfmt_elf does.

The host kernel is handed the instance's own loader (kernel/exec/plan.py):
it maps only ld.so, and its auxiliary vector describes ld.so as the
program. At the exec event the provider maps the program itself with
calls run inside the new process, all with one stop (platform/coderun.py):
the program file opened through the provider's descriptor, its PT_LOAD
segments at their addresses plus a load bias for ET_DYN (ELF_ET_DYN_BASE,
randomized unless ADDR_NO_RANDOMIZE, chosen here as load_elf_binary does),
the bss zeroed and mapped anonymous; the auxiliary vector on the new
stack is patched to describe the program (AT_PHDR, AT_PHENT, AT_PHNUM, AT_ENTRY) with AT_BASE
the loader's base. ld.so, entered at its entry, then finds a program the
"kernel" loaded and runs it as usual, and a debugger reading the auxv
(gdb: AT_ENTRY for the load displacement, AT_BASE for the loader's
breakpoint) sees Linux's picture.
"""

from __future__ import annotations

import errno
import os
import random
import struct
from dataclasses import dataclass

from lxsub.abi.auxvec import AT_BASE, AT_ENTRY, AT_NULL, AT_PHDR, AT_PHENT, AT_PHNUM
from lxsub.abi.elf import ELF_ET_DYN_BASE, MMAP_RND_BITS, PF_R, PF_W, PF_X, PT_LOAD, PT_PHDR
from lxsub.abi.fcntl import AT_FDCWD, O_CLOEXEC
from lxsub.abi.mman import (ADDR_NO_RANDOMIZE, MAP_ANONYMOUS, MAP_FIXED, MAP_FIXED_NOREPLACE, MAP_PRIVATE,
                            PROT_EXEC, PROT_READ, PROT_WRITE)
from lxsub.abi.limits import PAGE_SIZE
from lxsub.abi.sysno import NUMBERS
from lxsub.kernel.exec.binfmt import ET_DYN
from lxsub.platform import memory
from lxsub.platform.coderun import KEPT, Fill, Keep, Step
from lxsub.platform.inject import Scratch, SysCall


_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_SYS_OPENAT, _SYS_MMAP, _SYS_CLOSE = NUMBERS["openat"], NUMBERS["mmap"], NUMBERS["close"]


def _down(v: int) -> int:
    return v & ~(PAGE_SIZE - 1)


def _up(v: int) -> int:
    return _down(v + PAGE_SIZE - 1)


@dataclass(frozen=True)
class Segment:
    vaddr: int
    memsz: int
    offset: int
    filesz: int
    prot: int


@dataclass(frozen=True)
class ElfImage:
    """What mapping a program needs of its ELF headers."""
    dynamic: bool              # ET_DYN: loaded at a bias
    entry: int
    phdr_vaddr: int            # where its program headers are once loaded
    phnum: int
    segments: tuple[Segment, ...]
    align: int = PAGE_SIZE     # the largest PT_LOAD p_align: a PIE's base is a multiple of it


def read_image(fd: int) -> ElfImage:
    """The program's headers (binfmt.probe has checked the ELF already)."""
    head = os.pread(fd, _EHDR.size, 0)
    (_, e_type, _, _, e_entry, e_phoff, _, _, _, e_phentsize, e_phnum, _, _, _) = _EHDR.unpack(head)
    table = os.pread(fd, e_phnum * e_phentsize, e_phoff)
    segments, phdr, align = [], None, PAGE_SIZE
    for i in range(e_phnum):
        p_type, flags, offset, vaddr, _, filesz, memsz, p_align = _PHDR.unpack_from(table, i * e_phentsize)
        if p_type == PT_PHDR:
            phdr = vaddr
        elif p_type == PT_LOAD and memsz:
            prot = ((PROT_READ if flags & PF_R else 0) | (PROT_WRITE if flags & PF_W else 0)
                    | (PROT_EXEC if flags & PF_X else 0))
            segments.append(Segment(vaddr, memsz, offset, filesz, prot))
            if p_align > align and not p_align & (p_align - 1):       # maximum_alignment()
                align = p_align
    if not segments:
        raise OSError(errno.ENOEXEC, "no loadable segment")
    if phdr is None:         # the headers inside the segment that maps file offset e_phoff
        seg = next((s for s in segments if s.offset <= e_phoff < s.offset + s.filesz), segments[0])
        phdr = seg.vaddr + e_phoff - seg.offset
    return ElfImage(e_type == ET_DYN, e_entry, phdr, e_phnum, tuple(segments), align)


def entry_of(fd: int) -> int:
    """e_entry of an ELF file (the loader's: its base is AT_ENTRY minus this)."""
    return _EHDR.unpack(os.pread(fd, _EHDR.size, 0))[4]


class ProgramMapping:
    """The calls that map one program (`steps`, run inside its process
    by platform/coderun.py) and the auxv patch that describes it. The
    load bias is chosen here, as load_elf_binary does, and the segments
    mapped there with MAP_FIXED_NOREPLACE: a place already taken fails
    the exec (EEXIST) as in Linux."""

    def __init__(self, image: ElfImage, host_path: bytes, randomize: bool) -> None:
        self.image, self.host_path = image, host_path
        self._lo = _down(image.segments[0].vaddr)
        if image.dynamic:
            base = ELF_ET_DYN_BASE + (random.getrandbits(MMAP_RND_BITS) * PAGE_SIZE if randomize else 0)
            base &= ~(image.align - 1)                       # maximum_alignment()
            self.bias = _down(base - image.segments[0].vaddr)
        else:
            self.bias = 0

    def steps(self) -> list[Step]:
        """openat of the program (through the provider's descriptor), the
        whole span reserved with the first segment's file pages (elf_map
        with total_size), the other segments over it, the bss tails
        zeroed (padzero) and the rest anonymous, close."""
        segs = self.image.segments
        span = _up(max(s.vaddr + s.memsz for s in segs)) - self._lo
        steps: list[Step] = [
            Keep(SysCall(_SYS_OPENAT, (AT_FDCWD, Scratch(0), O_CLOEXEC, 0), self.host_path + b"\0")),
            SysCall(_SYS_MMAP, (self.bias + self._lo, span, segs[0].prot, MAP_PRIVATE | MAP_FIXED_NOREPLACE,
                                KEPT, _down(segs[0].offset)))]
        for i, s in enumerate(segs):
            steps += self._segment_steps(s, first=i == 0)
        steps.append(SysCall(_SYS_CLOSE, (KEPT,)))
        return steps

    def _segment_steps(self, s: Segment, first: bool) -> list[Step]:
        b = self.bias
        steps: list[Step] = []
        start = b + _down(s.vaddr)
        file_end = b + s.vaddr + s.filesz
        if s.filesz and not first:
            steps.append(SysCall(_SYS_MMAP, (start, _up(file_end) - start, s.prot,
                                             MAP_PRIVATE | MAP_FIXED, KEPT, _down(s.offset))))
        if s.memsz > s.filesz:
            anon_from = _up(file_end) if s.filesz else start
            anon_to = _up(b + s.vaddr + s.memsz)
            if s.filesz and _up(file_end) > file_end and s.prot & PROT_WRITE:
                steps.append(Fill(file_end, _up(file_end) - file_end))     # padzero
            if anon_to > anon_from:
                steps.append(SysCall(_SYS_MMAP, (anon_from, anon_to - anon_from, s.prot,
                                                 MAP_PRIVATE | MAP_FIXED | MAP_ANONYMOUS, -1, 0)))
        return steps

    def patch_auxv(self, tid: int, auxv: "StackAuxv", loader_entry: int) -> bytes:
        """Make the auxv on the new stack describe the program; returns it
        as /proc/<pid>/auxv shows it."""
        img, b = self.image, self.bias
        values = {AT_PHDR: b + img.phdr_vaddr, AT_PHENT: _PHDR.size, AT_PHNUM: img.phnum,
                  AT_ENTRY: b + img.entry,
                  AT_BASE: dict(auxv.pairs).get(AT_ENTRY, loader_entry) - loader_entry}
        flat = [x for k, v in auxv.pairs for x in (k, values.get(k, v))]
        data = struct.pack(f"<{len(flat)}Q", *flat)
        memory.write(tid, auxv.at, data)
        return data


_CHUNK = 4096
_PAIR = struct.Struct("<QQ")


class StackAuxv:
    """The auxiliary vector on a new process's stack (sp at argc, as at
    the exec event): where it is and its (key, value) pairs, found with
    one read in the common case (argv, envp and auxv within 4 KiB)."""

    def __init__(self, tid: int, sp: int) -> None:
        try:
            raw = memory.read(tid, sp, _CHUNK)
        except memory.MemoryFault:          # the stack ends sooner: its first page then
            raw = memory.read(tid, sp, PAGE_SIZE - sp % PAGE_SIZE)
        words = struct.unpack(f"<{len(raw) // 8}Q", raw[:len(raw) // 8 * 8])
        argc = words[0]
        i = argc + 2                        # envp's first slot
        while i < len(words) and words[i]:
            i += 1
        if i >= len(words):                 # a long environment: walk it
            envp = sp + 8 * (argc + 2)
            self.at = envp + 8 * (len(memory.read_ptr_array(tid, envp)) + 1)
            raw, first = b"", 0
        else:
            self.at = sp + 8 * (i + 1)
            first = 8 * (i + 1)
        self.pairs: list[tuple[int, int]] = []
        whole = (len(raw) - first) // 16 * 16
        for key, value in _PAIR.iter_unpack(raw[first:first + whole]):
            self.pairs.append((key, value))
            if key == AT_NULL:
                return
        for n in range(len(self.pairs), 64):          # past the read: one entry at a time
            key, value = _PAIR.unpack(memory.read(tid, self.at + 16 * n, 16))
            self.pairs.append((key, value))
            if key == AT_NULL:
                return

    def get(self, key: int) -> int:
        return dict(self.pairs).get(key, 0)

    def set(self, tid: int, key: int, value: int) -> bool:
        """Write one entry's value on the stack; False if there is none."""
        for i, (k, _) in enumerate(self.pairs):
            if k == key:
                memory.write(tid, self.at + 16 * i + 8, struct.pack("<Q", value))
                self.pairs[i] = (k, value)
                return True
        return False


def randomizes(tid: int) -> bool:
    """Whether the new process's layout is randomized (not ADDR_NO_RANDOMIZE,
    which gdb sets before it runs a program)."""
    try:
        fd = os.open(f"/proc/{tid}/personality", os.O_RDONLY | os.O_CLOEXEC)
        try:
            return not int(os.read(fd, 32), 16) & ADDR_NO_RANDOMIZE
        finally:
            os.close(fd)
    except (OSError, ValueError):
        return True
