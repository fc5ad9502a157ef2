"""Sending a process's vDSO clock reads to its syscalls.

The vDSO answers clock_gettime, gettimeofday and time in user space from
the host kernel's data page: no syscall, so nothing a seccomp filter or
the provider sees. An instance whose wall clock differs from the host's
(kernel/timekeeping.py) needs those reads to reach the provider, so its
processes get the entry points of the three functions (and their
unprefixed aliases) rewritten to the matching syscall:

    mov eax, NR ; syscall ; ret          (b8 NR 00 00 00 0f 05 c3)

Each takes the C arguments in the registers the syscall wants them in
(rdi, rsi) and returns what the vDSO's own fallback returns (the raw
result, -errno on error), which is what glibc expects of a vDSO call.
The bytes go in through /proc/<pid>/mem as a debugger's breakpoints do
(FOLL_FORCE: the vDSO page becomes a private copy of the process, which
its fork children share copy-on-write); an exec maps a fresh vDSO, so the
provider patches again at the exec event.

The entries are found once from the host's vDSO (the provider's own: the
same image in every process of the host) by its ELF dynamic symbol table.
Only function entries are touched: the fallback `syscall` instructions
deeper in the functions, which platform/inject.py borrows, stay as they
were (checked: a patch that would cover the one inject uses is refused).
"""

from __future__ import annotations

import ctypes
import errno
import struct

from lxsub.abi.sysno import NUMBERS
from lxsub.platform import memory

# The functions and the syscall each becomes.
_CALLS = {
    b"clock_gettime": NUMBERS["clock_gettime"],
    b"gettimeofday": NUMBERS["gettimeofday"],
    b"time": NUMBERS["time"],
}
_STUB_SIZE = 8
_SYSCALL_INSN = b"\x0f\x05"
_SHT_DYNSYM = 11
_STT_FUNC = 2

_entries: list[tuple[int, bytes]] = []     # (offset in the vDSO, stub), once per host


def stub(nr: int) -> bytes:
    """`mov eax, nr; syscall; ret`."""
    return b"\xb8" + struct.pack("<I", nr) + _SYSCALL_INSN + b"\xc3"


def vdso_range(pid: int | str) -> tuple[int, int] | None:
    """[start, end) of pid's vDSO mapping, None without one."""
    with open(f"/proc/{pid}/maps", "rb") as f:
        for line in f:
            if line.rstrip().endswith(b"[vdso]"):
                lo, hi = line.split()[0].split(b"-")
                return int(lo, 16), int(hi, 16)
    return None


def function_offsets(image: bytes) -> dict[bytes, int]:
    """Offset in the image of each function its .dynsym exports (the vDSO
    is linked at its first PT_LOAD's address, usually 0)."""
    if image[:4] != b"\x7fELF" or image[4] != 2:
        raise OSError(errno.ENOEXEC, "the vDSO is not an ELF64 image")
    phoff, shoff = struct.unpack_from("<QQ", image, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", image, 0x36)
    base = 0
    for i in range(phnum):
        p_type, _flags, p_offset, p_vaddr = struct.unpack_from("<IIQQ", image, phoff + i * phentsize)
        if p_type == 1:                     # PT_LOAD
            base = p_vaddr - p_offset
            break
    sections = [struct.unpack_from("<IIQQQQIIQQ", image, shoff + i * shentsize) for i in range(shnum)]
    out: dict[bytes, int] = {}
    for _name, sh_type, _f, _addr, off, size, link, _info, _align, entsize in sections:
        if sh_type != _SHT_DYNSYM or not entsize:
            continue
        stroff = sections[link][4]
        for at in range(off, off + size, entsize):
            st_name, st_info, _other, shndx, value, _size = struct.unpack_from("<IBBHQQ", image, at)
            if st_info & 0xF == _STT_FUNC and shndx and value:
                end = image.index(b"\0", stroff + st_name)
                out[image[stroff + st_name:end]] = value - base
    return out


def _host_entries() -> list[tuple[int, bytes]]:
    if _entries:
        return _entries
    where = vdso_range("self")
    if where is None:
        raise OSError(errno.ENOENT, "the host has no vDSO")
    image = ctypes.string_at(where[0], where[1] - where[0])
    offsets = function_offsets(image)
    borrowed = image.find(_SYSCALL_INSN)          # the one platform/inject.py uses
    found = []
    for name, nr in _CALLS.items():
        for symbol in (b"__vdso_" + name, name):
            at = offsets.get(symbol)
            if at is None:
                continue
            if at <= borrowed < at + _STUB_SIZE:
                raise OSError(errno.ENOEXEC, f"{symbol.decode()} holds the vDSO's first syscall")
            found.append((at, stub(nr)))
    _entries.extend(sorted(set(found)))
    return _entries


def patch(pid: int) -> bool:
    """Rewrite pid's vDSO clock entries; False if it has no vDSO or is gone."""
    entries = _host_entries()
    try:
        where = vdso_range(pid)
        if where is None:
            return False
        for at, code in entries:
            memory.access_forced(pid, where[0] + at, data=code)
    except OSError:
        return False
    return True


def is_patched(pid: int) -> bool:
    """Whether pid's vDSO clock entries are the provider's stubs."""
    entries = _host_entries()
    where = vdso_range(pid)
    if where is None or not entries:
        return False
    at, code = entries[0]
    return memory.access_forced(pid, where[0] + at, len(code)) == code
