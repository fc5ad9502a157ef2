"""Reading and writing a pico process's memory with process_vm_readv/writev.

One system call per transfer; no stop of the target needed, which is what
seccomp user-notify handlers want (the caller thread is blocked, its
siblings may run).
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading

from lxsub.abi.limits import PAGE_SIZE as PAGE
from lxsub.platform import libc

_readv = libc._libc.process_vm_readv
_readv.restype = ctypes.c_ssize_t
_readv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong,
                   ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
_writev = libc._libc.process_vm_writev
_writev.restype = ctypes.c_ssize_t
_writev.argtypes = _readv.argtypes

_SCRATCH_SIZE = 1 << 16
# Above every user address space (x86-64: 47 bits, 56 with 5-level paging):
# what reaches past it is a kernel address, EFAULT like access_ok() says.
USER_END = 1 << 56


class _PerThread(threading.local):
    """A scratch buffer and iovecs per thread: blocking calls run handlers
    on worker threads while the loop serves others."""

    def __init__(self) -> None:
        self.scratch = ctypes.create_string_buffer(_SCRATCH_SIZE)
        self.local = libc.iovec()
        self.remote = libc.iovec()
        self.local_ref = ctypes.byref(self.local)
        self.remote_ref = ctypes.byref(self.remote)


_tls = _PerThread()


class MemoryFault(OSError):
    """The program handed us an address it cannot read or write: EFAULT."""

    def __init__(self) -> None:
        super().__init__(errno.EFAULT, "bad address")


def _check_range(addr: int, n: int) -> None:
    """access_ok(): a range that is not all below USER_END is EFAULT (also
    keeps huge lengths from being allocated here and pread offsets valid)."""
    if addr <= 0 or n < 0 or addr + n > USER_END:
        raise MemoryFault()


def _transfer(fn, pid: int, buf, addr: int, n: int) -> int:
    _check_range(addr, n)
    t = _tls
    t.local.iov_base = ctypes.addressof(buf)
    t.local.iov_len = n
    t.remote.iov_base = addr
    t.remote.iov_len = n
    got = fn(pid, t.local_ref, 1, t.remote_ref, 1, 0)
    if got < 0:
        err = ctypes.get_errno()
        if err in (errno.EFAULT, 0):
            raise MemoryFault()
        raise OSError(err, os.strerror(err))
    return got


def read(pid: int, addr: int, n: int) -> bytes:
    if n == 0:
        return b""
    _check_range(addr, n)
    buf = _tls.scratch if n <= _SCRATCH_SIZE else ctypes.create_string_buffer(n)
    got = _transfer(_readv, pid, buf, addr, n)
    if got != n:
        raise MemoryFault()
    return ctypes.string_at(buf, n)


def read_cstr(pid: int, addr: int, limit: int = 4096) -> bytes:
    """A NUL-terminated string; ENAMETOOLONG past `limit` like the kernel."""
    _check_range(addr, 1)
    out = b""
    want = 256    # most paths are short: do not copy a whole page each time
    while True:
        chunk = min(want, PAGE - (addr % PAGE))
        scratch = _tls.scratch
        got = _transfer(_readv, pid, scratch, addr, chunk)
        data = ctypes.string_at(scratch, got)
        want = PAGE
        nul = data.find(b"\0")
        if nul >= 0:
            out += data[:nul]
            if len(out) >= limit:
                raise OSError(errno.ENAMETOOLONG, "name too long")
            return out
        out += data
        if len(out) >= limit:
            raise OSError(errno.ENAMETOOLONG, "name too long")
        addr += got


def read_cstr_fd(memfd: int, addr: int, limit: int = 4096) -> bytes:
    """read_cstr through an open /proc/<pid>/mem: one plain pread, no ctypes."""
    _check_range(addr, 1)
    out = b""
    want = 256
    while True:
        chunk = min(want, PAGE - (addr % PAGE))
        try:
            data = os.pread(memfd, chunk, addr)
        except (OSError, OverflowError):
            raise MemoryFault() from None
        if not data:
            raise MemoryFault()
        nul = data.find(b"\0")
        if nul >= 0:
            out += data[:nul]
            break
        out += data
        if len(out) >= limit:
            break
        addr += len(data)
        want = PAGE
    if len(out) >= limit:
        raise OSError(errno.ENAMETOOLONG, "name too long")
    return out


def read_ptr_array(pid: int, addr: int, limit: int = 1 << 17) -> list[int]:
    """A NULL-terminated array of pointers (argv, envp)."""
    ptrs: list[int] = []
    if not addr:
        return ptrs
    while True:
        # Stop at page ends: the array may end right before an unmapped page.
        raw = read(pid, addr, min(512, PAGE - addr % PAGE))
        for i in range(0, len(raw), 8):
            p = int.from_bytes(raw[i:i + 8], "little")
            if p == 0:
                return ptrs
            ptrs.append(p)
            if len(ptrs) > limit:
                raise OSError(errno.E2BIG, "argument list too long")
        addr += len(raw)


def write(pid: int, addr: int, data: bytes) -> None:
    n = len(data)
    if n == 0:
        return
    buf = _tls.scratch if n <= _SCRATCH_SIZE else ctypes.create_string_buffer(n)
    ctypes.memmove(buf, data, n)
    if _transfer(_writev, pid, buf, addr, n) != n:     # it checks the range first
        raise MemoryFault()


RED_ZONE = 128


def write_below_sp(pid: int, sp: int, chunks: list[bytes]) -> list[int]:
    """Place `chunks` just below a stopped thread's stack pointer (past the
    red zone) and return their addresses. Only for a thread that is about to
    replace its image or otherwise does not care about memory below its sp."""
    total = sum((len(c) + 15) & ~15 for c in chunks)
    base = (sp - RED_ZONE - 256 - total) & ~15
    addrs, off = [], base
    blob = bytearray()
    for c in chunks:
        addrs.append(off)
        padded = (len(c) + 15) & ~15
        blob += c + bytes(padded - len(c))
        off += padded
    write(pid, base, bytes(blob))
    return addrs


# -- copying between two processes (process_vm_readv/writev for a program) --

_CROSS_CHUNK = 1 << 20
IOV_MAX = 1024            # UIO_MAXIOV
_SSIZE_MAX = (1 << 63) - 1


def read_iovecs(pid: int, addr: int, count: int) -> list[tuple[int, int]]:
    """A struct iovec array of `count` entries in `pid`'s memory, checked as
    Linux's iovec_from_user: more than UIO_MAXIOV entries or a length that
    is negative as ssize_t (or totals past it) is EINVAL; an unreadable
    array is EFAULT."""
    if count > IOV_MAX:
        raise OSError(errno.EINVAL, "too many iovecs")
    if count == 0:
        return []
    raw = read(pid, addr, 16 * count)
    segs, total = [], 0
    for i in range(count):
        base = int.from_bytes(raw[16 * i:16 * i + 8], "little")
        length = int.from_bytes(raw[16 * i + 8:16 * i + 16], "little")
        total += length
        if length > _SSIZE_MAX or total > _SSIZE_MAX:
            raise OSError(errno.EINVAL, "iovec length out of range")
        segs.append((base, length))
    return segs


def _take(segs: list[tuple[int, int]], pos: list[int], n: int):
    """Up to `n` bytes of iovecs from the cursor `pos` ([index, offset]),
    as a ctypes iovec array and its byte count; the cursor is not moved."""
    out, got = [], 0
    i, off = pos
    while i < len(segs) and got < n:
        base, length = segs[i]
        step = min(length - off, n - got)
        if step > 0:
            out.append((base + off, step))
            got += step
        i, off = i + 1, 0
    arr = (libc.iovec * max(len(out), 1))()
    for k, (base, length) in enumerate(out):
        arr[k].iov_base, arr[k].iov_len = base, length
    return arr, len(out), got


def _advance(segs: list[tuple[int, int]], pos: list[int], n: int) -> None:
    while n and pos[0] < len(segs):
        left = segs[pos[0]][1] - pos[1]
        if n < left:
            pos[1] += n
            return
        n -= left
        pos[0], pos[1] = pos[0] + 1, 0


def copy_between(src_pid: int, src: list[tuple[int, int]],
                 dst_pid: int, dst: list[tuple[int, int]]) -> int:
    """Copy from the `src` iovecs of `src_pid` to the `dst` iovecs of
    `dst_pid` through a buffer here, in order, until either list ends or a
    side faults (Linux's process_vm_rw_core: the bytes copied before the
    first fault, EFAULT when that is none)."""
    want = min(sum(n for _, n in src), sum(n for _, n in dst))
    buf = ctypes.create_string_buffer(min(want, _CROSS_CHUNK) or 1)
    mine = libc.iovec(ctypes.addressof(buf), 0)
    spos, dpos, done = [0, 0], [0, 0], 0
    while done < want:
        step = min(want - done, _CROSS_CHUNK)
        arr, cnt, step = _take(src, spos, step)
        mine.iov_len = step
        got = _readv(src_pid, ctypes.byref(mine), 1, arr, cnt, 0)
        if got > 0:
            arr, cnt, _ = _take(dst, dpos, got)
            mine.iov_len = got
            put = _writev(dst_pid, ctypes.byref(mine), 1, arr, cnt, 0)
            got = min(got, put)
        if got <= 0:
            err = ctypes.get_errno() if got < 0 else errno.EFAULT
            if done:
                return done
            if err in (errno.EFAULT, 0):
                raise MemoryFault()
            raise OSError(err, os.strerror(err))
        done += got
        _advance(src, spos, got)
        _advance(dst, dpos, got)
        if got < step:
            break
    return done


def access_forced(pid: int, addr: int, n: int = 0, data: bytes | None = None) -> bytes:
    """Read n bytes, or write `data`, through /proc/<pid>/mem as the
    process's tracer: FOLL_FORCE, so read-only text takes a breakpoint
    (ptrace(2) PTRACE_POKETEXT, mm/memory.c access_remote_vm). Short:
    MemoryFault."""
    _check_range(addr, len(data) if data is not None else n)
    fd = os.open(f"/proc/{pid}/mem", (os.O_RDWR if data is not None else os.O_RDONLY) | os.O_CLOEXEC)
    try:
        if data is not None:
            if os.pwrite(fd, data, addr) != len(data):
                raise MemoryFault()
            return data
        out = os.pread(fd, n, addr)
    except OSError as e:
        if e.errno in (errno.EIO, errno.EFAULT):
            raise MemoryFault() from None
        raise
    finally:
        os.close(fd)
    if len(out) != n:
        raise MemoryFault()
    return out
