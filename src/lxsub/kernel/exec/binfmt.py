"""What kind of executable a file is: ELF64 x86-64 (static or with an
interpreter), a `#!` script, or something the instance cannot run (ENOEXEC)."""

from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass

ELF_MAGIC = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
EM_X86_64 = 62
ET_EXEC, ET_DYN = 2, 3
PT_INTERP = 3

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
BINPRM_BUF_SIZE = 256


@dataclass
class Elf:
    interp: bytes | None     # PT_INTERP, None for static binaries


@dataclass
class Script:
    interp: bytes
    arg: bytes | None


def probe(fd: int) -> Elf | Script:
    head = os.pread(fd, BINPRM_BUF_SIZE, 0)
    if head.startswith(b"#!"):
        return _parse_shebang(head)
    if head.startswith(ELF_MAGIC):
        return _parse_elf(fd, head)
    raise OSError(errno.ENOEXEC, "exec format error")


def describe_enoexec(fd: int) -> str:
    """Why the file cannot run, for the user's one-line error."""
    head = os.pread(fd, 64, 0)
    if not head.startswith(ELF_MAGIC):
        return "not an ELF binary or a #! script"
    if head[4] != ELFCLASS64:
        return "a 32-bit ELF binary (lxsub runs 64-bit x86-64 programs only)"
    machine = struct.unpack_from("<H", head, 18)[0]
    if machine != EM_X86_64:
        return f"an ELF binary for another CPU (e_machine {machine}), not x86-64"
    return "an ELF file that is not an executable"


def _parse_shebang(head: bytes) -> Script:
    # Like the kernel, only the first BINPRM_BUF_SIZE bytes count.
    line = head[2:].split(b"\n", 1)[0].strip(b" \t")
    if not line:
        raise OSError(errno.ENOEXEC, "empty #! line")
    parts = line.split(None, 1)
    interp = parts[0]
    arg = parts[1].strip(b" \t") if len(parts) > 1 else None
    return Script(interp, arg or None)


def _parse_elf(fd: int, head: bytes) -> Elf:
    if len(head) < _EHDR.size or head[4] != ELFCLASS64 or head[5] != ELFDATA2LSB:
        raise OSError(errno.ENOEXEC, "not a 64-bit little-endian ELF")
    (_, e_type, e_machine, _, _, e_phoff, _, _, _, e_phentsize, e_phnum,
     _, _, _) = _EHDR.unpack_from(head)
    if e_machine != EM_X86_64 or e_type not in (ET_EXEC, ET_DYN):
        raise OSError(errno.ENOEXEC, "not an x86-64 executable")
    if e_phentsize != _PHDR.size or not 0 < e_phnum <= 128:
        raise OSError(errno.ENOEXEC, "bad program headers")
    table = os.pread(fd, e_phnum * e_phentsize, e_phoff)
    for i in range(e_phnum):
        p_type, _, p_offset, _, _, p_filesz, _, _ = _PHDR.unpack_from(table, i * e_phentsize)
        if p_type == PT_INTERP:
            if not 1 < p_filesz <= 4096:
                raise OSError(errno.ENOEXEC, "bad PT_INTERP")
            return Elf(os.pread(fd, p_filesz, p_offset).rstrip(b"\0"))
    return Elf(None)
