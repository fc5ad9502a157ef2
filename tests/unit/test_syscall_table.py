"""The syscall table, the docs made from it and the seccomp program built from it."""

from __future__ import annotations

import errno
import struct

import pytest

from lxsub.kernel import table
from lxsub.kernel.sysno import NUMBERS
from lxsub.platform import bpf


def test_docs_are_up_to_date():
    path = table.default_output()
    assert path.exists(), "docs/SYSCALLS.md is missing: run `python3 -m lxsub.kernel.table --write`"
    assert path.read_text(encoding="utf-8") == table.markdown(), (
        "docs/SYSCALLS.md is stale: run `python3 -m lxsub.kernel.table --write`")


def test_markdown_is_deterministic_and_complete():
    text = table.markdown()
    assert text == table.markdown()
    for nr, row in table.BY_NR.items():
        assert f"| {nr} | `{row.name}` | {row.via} | {row.level} |" in text


def test_main_writes_to_output(tmp_path, capsys):
    out = tmp_path / "S.md"
    assert table.main(["--write", "--output", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == table.markdown()
    assert table.main(["--markdown"]) == 0
    assert capsys.readouterr().out.endswith(table.markdown())


def test_every_row_names_a_real_syscall():
    for row in table.ROWS:
        assert row.name in NUMBERS, row.name
    for nr, row in table.BY_NR.items():
        assert NUMBERS[row.name] == nr


def test_levels_and_vias_are_known():
    for row in table.BY_NR.values():
        assert row.via in (table.NATIVE, table.NOTIFY, table.TRACE, table.ERRNO), row
        assert row.level in (table.FULL, table.PARTIAL, table.UNIMPLEMENTED, table.DENIED), row


def test_supported_trapped_calls_have_handlers():
    missing = [row.name for row in table.BY_NR.values()
               if row.via in (table.NOTIFY, table.TRACE)
               and row.level in (table.FULL, table.PARTIAL) and row.handler is None]
    assert not missing, f"no handler for {missing}"


def test_seccomp_program_fits():
    prog = table.seccomp_program()
    assert len(prog) % 8 == 0
    assert 0 < len(prog) // 8 < 4096


# -- a classic BPF interpreter for the subset bpf.py emits -----------------

_BPF_CLASS = 0x07
_BPF_LD, _BPF_JMP, _BPF_RET = 0x00, 0x05, 0x06


def run_bpf(prog: bytes, data: bytes) -> int:
    insns = [struct.unpack_from("<HBBI", prog, i) for i in range(0, len(prog), 8)]
    acc = 0
    pc = 0
    for _ in range(100_000):
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == 0x20:                           # LD W ABS
            assert k % 4 == 0 and k + 4 <= len(data), k
            acc = struct.unpack_from("<I", data, k)[0]
        elif code == 0x05:                         # JA
            pc += k
        elif code == 0x15:                         # JEQ K
            pc += jt if acc == k else jf
        elif code == 0x35:                         # JGE K
            pc += jt if acc >= k else jf
        elif code == 0x45:                         # JSET K
            pc += jt if acc & k else jf
        elif code == 0x06:                         # RET K
            return k
        else:
            raise AssertionError(f"unexpected BPF opcode {code:#x} at {pc - 1}")
        assert 0 <= pc < len(insns), "jump out of the program"
    raise AssertionError("BPF program does not terminate")


def seccomp_data(nr: int, args=(), arch: int = bpf.AUDIT_ARCH_X86_64, ip: int = 0x401000) -> bytes:
    args = list(args) + [0] * (6 - len(args))
    return struct.pack("<IIQ6Q", nr & 0xFFFFFFFF, arch, ip, *args)


@pytest.fixture(scope="module")
def prog():
    return table.seccomp_program()


EPERM = bpf.errno_action(errno.EPERM)
ENOSYS = bpf.errno_action(errno.ENOSYS)
N = NUMBERS
CLONE_THREAD_FLAGS = 0x3D0F00   # VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|SETTLS|PARENT_SETTID|CHILD_CLEARTID
CLONE_NEWUSER = 0x10000000
TCGETS = 0x5401
TIOCSPGRP = 0x5410


@pytest.mark.parametrize("data, expected", [
    (seccomp_data(N["read"], (0, 0, 10)), bpf.RET_ALLOW),
    (seccomp_data(N["openat"], (0xFFFFFF9C, 0x1000, 0)), bpf.RET_USER_NOTIF),
    (seccomp_data(N["execve"]), bpf.RET_TRACE),
    (seccomp_data(N["ptrace"]), EPERM),
    (seccomp_data(N["clone"], (CLONE_NEWUSER | 17,)), EPERM),
    (seccomp_data(N["clone"], (CLONE_THREAD_FLAGS,)), bpf.RET_ALLOW),
    (seccomp_data(N["clone"], (17,)), bpf.RET_ALLOW),             # fork via clone(SIGCHLD)
    (seccomp_data(N["ioctl"], (0, TIOCSPGRP, 0)), bpf.RET_TRACE),
    (seccomp_data(N["ioctl"], (0, TCGETS, 0)), bpf.RET_ALLOW),
    (seccomp_data(N["getppid"]), bpf.RET_USER_NOTIF),
    (seccomp_data(N["getrusage"]), bpf.RET_ALLOW),
    (seccomp_data(N["clock_gettime"]), bpf.RET_ALLOW),
    (seccomp_data(N["read"], arch=0x40000003), ENOSYS),            # AUDIT_ARCH_I386
    (seccomp_data(bpf.X32_SYSCALL_BIT | N["read"]), ENOSYS),
    (seccomp_data(1000), bpf.RET_USER_NOTIF),
], ids=["read", "openat", "execve", "ptrace", "clone-newuser", "clone-thread", "clone-fork",
        "ioctl-tiocspgrp", "ioctl-tcgets", "getppid", "getrusage", "clock_gettime", "i386",
        "x32", "unknown-1000"])
def test_filter_semantics(prog, data, expected):
    assert run_bpf(prog, data) == expected


def test_filter_matches_table_for_every_plain_row(prog):
    """Rows without argument rules: the filter returns exactly the row's action."""
    for nr, row in table.BY_NR.items():
        act = row.action()
        if isinstance(act, int):
            assert run_bpf(prog, seccomp_data(nr)) == act, row.name


def test_arg_rules_need_high_half_zero(prog):
    # a 64-bit argument whose low half matches a rule but high half does not
    data = seccomp_data(N["ioctl"], (0, (1 << 32) | TIOCSPGRP, 0))
    assert run_bpf(prog, data) == bpf.RET_ALLOW


def kernel_caches_allow(prog: bytes, nr: int) -> bool:
    """The kernel's seccomp action cache (kernel/seccomp.c,
    seccomp_is_const_allow): a number is answered ALLOW without running the
    filter if the filter reaches RET ALLOW for it having loaded nothing but
    the number and the architecture."""
    insns = [struct.unpack_from("<HBBI", prog, i) for i in range(0, len(prog), 8)]
    acc = pc = 0
    while pc < len(insns):
        code, jt, jf, k = insns[pc]
        if code == 0x20:
            if k not in (0, 4):
                return False                       # an argument: not constant
            acc = nr if k == 0 else bpf.AUDIT_ARCH_X86_64
        elif code == 0x06:
            return k == bpf.RET_ALLOW
        elif code == 0x05:
            pc += k
        elif code in (0x15, 0x35, 0x45):
            taken = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += jt if taken else jf
        else:
            return False
        pc += 1
    return False


def test_native_calls_skip_the_filter_through_the_kernel_cache(prog):
    """A native call then costs only the filtered syscall entry (see
    docs/ARCHITECTURE.md): the filter must not load an argument on the way
    to a plain ALLOW."""
    native = [row.name for row in table.BY_NR.values() if row.action() == bpf.RET_ALLOW]
    assert "read" in native and "futex" in native
    assert [name for name in native if not kernel_caches_allow(prog, N[name])] == []
    assert not kernel_caches_allow(prog, N["ioctl"])      # split by argument rules
