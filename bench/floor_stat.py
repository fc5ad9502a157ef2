#!/usr/bin/env python3
"""The floor of a trapped stat() served by Python: floor_stat.c's service
(the host system calls lxsub makes for it) written with lxsub's own
platform layer (notify.Listener, memory, libc.openat2) and nothing of the
kernel above it: no Task, Call, dispatch, walk or metadata store.

    python3 bench/floor_stat.py FLOOR_STAT_BINARY ROOT N

The child installs the filter and executes `FLOOR_STAT_BINARY --loop N`
(static: no other trapped call); prints microseconds per call. What lxsub
spends above this is its own layers; what this spends above floor_stat.c
is the interpreter's.
"""

from __future__ import annotations

import errno
import os
import select
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from lxsub.abi.fcntl import RESOLVE_BENEATH, RESOLVE_NO_SYMLINKS  # noqa: E402
from lxsub.abi.seccomp import SECCOMP_FILTER_FLAG_NEW_LISTENER  # noqa: E402
from lxsub.abi.sysno import NUMBERS  # noqa: E402
from lxsub.kernel.vfs.stat import LinuxStat  # noqa: E402
from lxsub.platform import libc, memory, notify  # noqa: E402

_RET_USER_NOTIF, _RET_ALLOW = 0x7FC00000, 0x7FFF0000
_PR_SET_NO_NEW_PRIVS = 38


def _filter(nr: int) -> bytes:
    """BPF: syscall nr to the listener, everything else allowed."""
    ins = lambda code, jt, jf, k: struct.pack("<HBBI", code, jt, jf, k)   # noqa: E731
    return (ins(0x20, 0, 0, 0) + ins(0x15, 0, 1, nr)          # ld nr; jeq nr
            + ins(0x06, 0, 0, _RET_USER_NOTIF) + ins(0x06, 0, 0, _RET_ALLOW))


def main() -> int:
    binary, root_dir, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    nr = NUMBERS["newfstatat"]
    root = os.open(root_dir, os.O_PATH | os.O_DIRECTORY)
    report_r, report_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        libc._libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        fd = libc.seccomp_set_filter(SECCOMP_FILTER_FLAG_NEW_LISTENER, _filter(nr))
        os.write(report_w, struct.pack("i", fd))
        os.read(go_r, 1)
        os.execv(binary, [binary, "--loop", str(n)])
    child_fd = struct.unpack("i", os.read(report_r, 4))[0]
    listener = notify.Listener(libc.pidfd_getfd(os.pidfd_open(pid), child_fd))
    poller = select.poll()
    poller.register(listener.fd, select.POLLIN)
    how = os.O_PATH | os.O_CLOEXEC
    mem = -1
    served = 0
    start = time.perf_counter()
    os.write(go_w, b"g")
    while served < n:
        poller.poll()
        note = listener.receive()
        if note.nr != nr:             # the exec's own calls are not trapped (static binary)
            listener.reply(note.id, 0, -38)
            continue
        if mem < 0:                   # after the exec: the new address space's
            mem = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        path = memory.read_cstr_fd(mem, note.args[1])
        fd = _open_beneath(root, path.lstrip(b"/"), how)
        s = os.fstat(fd)
        memory.write(note.pid, note.args[2],
                     LinuxStat.from_host(s, s.st_mode, s.st_uid, s.st_gid, s.st_rdev).pack_stat())
        os.close(fd)
        listener.reply(note.id, 0, 0)
        served += 1
    _, status = os.waitpid(pid, 0)
    elapsed = time.perf_counter() - start
    if status != 0:
        print(f"child failed: status {status:#x}", file=sys.stderr)
        return 70
    print(f"{elapsed / n * 1e6:.2f}")
    return 0


def _open_beneath(root: int, path: bytes, how: int) -> int:
    """What the provider's walk opens: openat2 beneath the root with no
    symlinks; without openat2 (Linux < 5.6, or hidden), one component at a
    time with O_NOFOLLOW, as the provider's fallback does."""
    try:
        return libc.openat2(root, path, how, 0, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)
    except OSError as e:
        if e.errno != errno.ENOSYS:
            raise
    fd = os.dup(root)
    for part in [p for p in path.split(b"/") if p not in (b"", b".")]:
        if part == b"..":
            os.close(fd)
            raise OSError(errno.EXDEV, "'..' would leave the root")
        try:
            child = os.open(part, how | os.O_NOFOLLOW, dir_fd=fd)
        finally:
            os.close(fd)
        fd = child
    return fd


if __name__ == "__main__":
    raise SystemExit(main())
