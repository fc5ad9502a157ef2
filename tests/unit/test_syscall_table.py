"""The syscall table, the docs made from it and the seccomp program built from it."""

from __future__ import annotations

import errno
import struct

import pytest

from lxsub.abi.sysno import NAMES, NUMBERS
from lxsub.kernel import table
from lxsub.platform import bpf
from tests.fixtures.bpf import run_bpf, seccomp_data


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


def test_every_enosys_is_explained():
    """An unimplemented call says why ENOSYS is right: Linux has no x86_64
    entry for it, removed it, or added it after lxsub's release."""
    bare = [row.name for row in table.BY_NR.values() if row.level == table.UNIMPLEMENTED and not row.note]
    assert not bare, f"ENOSYS without a reason: {bare}"


def test_supported_trapped_calls_have_handlers():
    missing = [row.name for row in table.BY_NR.values()
               if row.via in (table.NOTIFY, table.TRACE)
               and row.level in (table.FULL, table.PARTIAL) and row.handler is None]
    assert not missing, f"no handler for {missing}"


def test_seccomp_program_fits():
    prog = table.seccomp_program()
    assert len(prog) % 8 == 0
    assert 0 < len(prog) // 8 < 4096


@pytest.fixture(scope="module")
def prog():
    return table.seccomp_program()


EPERM = bpf.errno_action(errno.EPERM)
ENOSYS = bpf.errno_action(errno.ENOSYS)
N = NUMBERS
CLONE_THREAD_FLAGS = 0x3D0F00   # VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|SETTLS|PARENT_SETTID|CHILD_CLEARTID
CLONE_NEWUSER = 0x10000000
CLONE_UNTRACED = 0x00800000
TCGETS = 0x5401
TIOCSPGRP = 0x5410


@pytest.mark.parametrize("data, expected", [
    (seccomp_data(N["read"], (0, 0, 10)), bpf.RET_ALLOW),
    (seccomp_data(N["openat"], (0xFFFFFF9C, 0x1000, 0)), bpf.RET_USER_NOTIF),
    (seccomp_data(N["execve"]), bpf.RET_TRACE),
    (seccomp_data(N["ptrace"]), bpf.RET_USER_NOTIF),       # emulated (kernel/ptrace.py)
    (seccomp_data(N["clone"], (CLONE_NEWUSER | 17,)), EPERM),
    (seccomp_data(N["clone"], (CLONE_THREAD_FLAGS,)), bpf.RET_ALLOW),
    (seccomp_data(N["clone"], (17,)), bpf.RET_ALLOW),             # fork via clone(SIGCHLD)
    (seccomp_data(N["ioctl"], (0, TIOCSPGRP, 0)), bpf.RET_TRACE),
    (seccomp_data(N["ioctl"], (0, TCGETS, 0)), bpf.RET_ALLOW),
    (seccomp_data(N["getppid"]), bpf.RET_USER_NOTIF),
    (seccomp_data(N["getrusage"]), bpf.RET_ALLOW),
    (seccomp_data(N["clock_gettime"], (1,)), bpf.RET_ALLOW),             # CLOCK_MONOTONIC
    (seccomp_data(N["clock_gettime"], (0,)), bpf.RET_USER_NOTIF),        # the instance's wall clock
    (seccomp_data(N["clock_gettime"], (11,)), bpf.RET_USER_NOTIF),       # CLOCK_TAI
    (seccomp_data(N["clock_nanosleep"], (0, 0)), bpf.RET_ALLOW),         # relative
    (seccomp_data(N["clock_nanosleep"], (0, 1)), bpf.RET_TRACE),         # TIMER_ABSTIME, REALTIME
    (seccomp_data(N["clock_nanosleep"], (1, 1)), bpf.RET_ALLOW),         # TIMER_ABSTIME, MONOTONIC
    (seccomp_data(N["timerfd_settime"], (3, 0)), bpf.RET_ALLOW),
    (seccomp_data(N["timerfd_settime"], (3, 1)), bpf.RET_TRACE),
    (seccomp_data(N["timerfd_settime"], (3, 3)), bpf.RET_ALLOW),         # and TFD_TIMER_CANCEL_ON_SET
    (seccomp_data(N["clock_gettime"], ((~5 << 3 | 2) & 0xFFFFFFFFFFFFFFFF,)), bpf.RET_TRACE),
    (seccomp_data(N["read"], arch=0x40000003), ENOSYS),            # AUDIT_ARCH_I386
    (seccomp_data(bpf.X32_SYSCALL_BIT | N["read"]), ENOSYS),
    (seccomp_data(1000), bpf.RET_USER_NOTIF),
], ids=["read", "openat", "execve", "ptrace", "clone-newuser", "clone-thread", "clone-fork",
        "ioctl-tiocspgrp", "ioctl-tcgets", "getppid", "getrusage", "clock_gettime", "clock_gettime-realtime", "clock_gettime-tai",
        "clock_nanosleep-relative", "clock_nanosleep-abs-realtime", "clock_nanosleep-abs-monotonic",
        "timerfd_settime-relative", "timerfd_settime-abs", "timerfd_settime-abs-cancel-on-set", "clock_gettime-cpu-clock", "i386",
        "x32", "unknown-1000"])
def test_filter_semantics(prog, data, expected):
    assert run_bpf(prog, data) == expected


def test_filter_matches_table_for_every_plain_row(prog):
    """Rows without argument rules: the filter returns exactly the row's action."""
    for nr, row in table.BY_NR.items():
        act = row.action()
        if isinstance(act, int):
            assert run_bpf(prog, seccomp_data(nr)) == act, row.name


# How many bits of each argument an argument rule tests the kernel reads,
# from the kernel's own prototypes: `unsigned int cmd` (fs/fcntl.c, fs/ioctl.c),
# `int option` (kernel/sys.c prctl), `int flags` (fs/open.c open/openat),
# `pid_t` (sched_*, prlimit64, ...), clone's flags through `lower_32_bits()`
# (kernel/fork.c), and sendto's address, a whole pointer (net/socket.c).
KERNEL_ARG_BITS = {
    ("fcntl", 1): 32, ("ioctl", 1): 32, ("prctl", 0): 32, ("clone", 0): 32,
    ("open", 1): 32, ("openat", 2): 32, ("sendto", 4): 64, ("open_tree", 2): 32,
    ("socket", 0): 32, ("socketpair", 0): 32, ("getsockopt", 2): 32, ("setsockopt", 2): 32,    # int family, optname
    ("seccomp", 0): 32,     # unsigned int operation (kernel/seccomp.c)
    ("rt_sigreturn", 0): 64,     # takes no argument: the whole register is the cookie
    **{(name, 0): 32 for name in ("clock_gettime", "clock_getres", "clock_nanosleep")},  # clockid_t
    # int flags (clock_nanosleep, timer_settime, timerfd_settime)
    **{(name, 1): 32 for name in ("clock_nanosleep", "timer_settime", "timerfd_settime")},
    **{(name, 0): 32 for name in (
        "sched_setparam", "sched_getparam", "sched_setscheduler", "sched_getscheduler",
        "sched_rr_get_interval", "sched_setattr", "sched_getattr", "prlimit64",
        "get_robust_list", "migrate_pages", "move_pages")},
    ("setrlimit", 0): 32, ("prlimit64", 1): 32,     # unsigned int resource (kernel/sys.c)
    ("prlimit64", 2): 64,                           # the new limit's pointer
}


def _rule_rows():
    return [(row, rule) for row in table.BY_NR.values() for rule in row.rules]


def _nested(rules):
    """Rules and the rules inside their actions."""
    for rule in rules:
        yield rule
        if isinstance(rule.action, bpf.ByArgs):
            yield from _nested(rule.action.rules)


def _decide(action, args) -> int:
    """What a row's action gives for these arguments, by its rules read in
    Python: the reference the filter is run against."""
    if isinstance(action, int):
        return action
    for rule in action.rules:
        arg = args[rule.index] if rule.wide else args[rule.index] & 0xFFFFFFFF
        if (arg == rule.value) if rule.op == "eq" else bool(arg & rule.value):
            return _decide(rule.action, args)
    return action.default


def test_every_argument_rule_tests_the_bits_the_kernel_reads():
    """A new rule needs its kernel width above, and must use it."""
    for row, rule in [(row, r) for row in table.BY_NR.values() for r in _nested(row.rules)]:
        bits = KERNEL_ARG_BITS.get((row.name, rule.index))
        assert bits is not None, f"{row.name} arg {rule.index}: add its kernel width"
        assert rule.wide == (bits == 64), f"{row.name} arg {rule.index} is {bits}-bit"


def _matching(rule) -> int:
    return rule.value if rule.op == "eq" else rule.value & -rule.value   # one of its bits


def _args(index: int, value: int) -> tuple[int, ...]:
    args = [0] * 6
    args[index] = value
    return tuple(args)


HIGH_HALVES = (1 << 32, 0xFFFFFFFF << 32, 1 << 63)


@pytest.mark.parametrize("row, rule", _rule_rows(),
                         ids=[f"{r.name}-{u.index}-{u.value:#x}" for r, u in _rule_rows()])
def test_argument_rules_with_high_bits_set_and_cleared(prog, row, rule):
    """The filter through the kernel's rules (seccomp_data, classic BPF) for
    every argument rule: a 32-bit argument gives the same action whatever
    its high half holds, for a value matching the rule and for one that does
    not; a 64-bit one matches only when all its bits do."""
    nr = row.nr
    hit = _matching(rule)
    miss = 0 if hit else 1
    for value in (hit, miss):
        want = run_bpf(prog, seccomp_data(nr, _args(rule.index, value)))
        for high in HIGH_HALVES:
            got = run_bpf(prog, seccomp_data(nr, _args(rule.index, value | high)))
            if not rule.wide:
                assert got == want, f"{row.name}: {value | high:#x}"
            elif rule.op == "eq":
                assert got != rule.action or (value | high) == rule.value, row.name
    # the first rule that matches decides (earlier rules may shadow a later
    # one; a rule holding rules decides by them)
    args = _args(rule.index, hit)
    assert run_bpf(prog, seccomp_data(nr, args)) == _decide(row.action(), args)


@pytest.mark.parametrize("args, expected", [
    ((0, 7, 0x7000, 0), bpf.RET_TRACE),             # the caller's RLIMIT_NOFILE set
    ((0, 7, 0, 0x7000), bpf.RET_ALLOW),             # ... only read
    ((0, 7, 1 << 32, 0), bpf.RET_TRACE),            # a pointer above 4 GiB is no NULL
    ((0, 7 | 1 << 32, 0x7000, 0), bpf.RET_TRACE),   # the resource is an unsigned int
    ((0, 3, 0x7000, 0), bpf.RET_ALLOW),             # RLIMIT_STACK set
    ((5, 7, 0, 0x7000), bpf.RET_TRACE),             # another process's
], ids=["nofile-set", "nofile-get", "nofile-high-pointer", "nofile-high-resource", "stack-set", "other"])
def test_prlimit64_stops_for_a_new_nofile_limit_only(prog, args, expected):
    assert run_bpf(prog, seccomp_data(N["prlimit64"], args)) == expected


@pytest.mark.parametrize("name, index, value, expected", [
    ("clone", 0, CLONE_UNTRACED | 17 | 1 << 32, EPERM),
    ("clone", 0, CLONE_NEWUSER | 17 | 1 << 32, EPERM),
    ("fcntl", 1, 8 | 1 << 32, bpf.RET_USER_NOTIF),            # F_SETOWN
    ("ioctl", 1, 0x8901 | 1 << 32, bpf.RET_TRACE),             # FIOSETOWN
    ("ioctl", 1, 0x5412 | 1 << 32, EPERM),                     # TIOCSTI
    ("prctl", 0, 35 | 1 << 32, EPERM),                         # PR_SET_MM
    ("sendto", 4, 1 << 32, bpf.RET_USER_NOTIF),                # a pointer above 4 GiB
    ("sendto", 4, 0, bpf.RET_ALLOW),                           # no address
], ids=["clone-untraced", "clone-newuser", "f_setown", "fiosetown", "tiocsti", "pr_set_mm",
        "sendto-addr", "sendto-null"])
def test_high_bits_do_not_step_around_a_rule(prog, name, index, value, expected):
    """The attacks of issue 11: the kernel ignores these high halves."""
    assert run_bpf(prog, seccomp_data(N[name], _args(index, value))) == expected


def test_wide_rule_tests_both_halves():
    f = bpf.build_filter({1: bpf.ByArgs((bpf.ArgRule(0, "eq", 0x1_0000_0005, 7, wide=True),
                                        bpf.ArgRule(1, "any_bit", 1 << 40, 9, wide=True)),
                                       bpf.RET_ALLOW)}, bpf.RET_ALLOW)
    assert run_bpf(f, seccomp_data(1, (0x1_0000_0005,))) == 7
    assert run_bpf(f, seccomp_data(1, (0x5,))) == bpf.RET_ALLOW
    assert run_bpf(f, seccomp_data(1, (0x2_0000_0005,))) == bpf.RET_ALLOW
    assert run_bpf(f, seccomp_data(1, (0, 1 << 40))) == 9
    assert run_bpf(f, seccomp_data(1, (0, 1 << 41))) == bpf.RET_ALLOW
    with pytest.raises(ValueError):
        bpf.ArgRule(0, "eq", 1 << 32, 7)


def _as_errnos(act: bpf.Action, codes: dict[int, int]) -> bpf.Action:
    """The same rules with each action replaced by its own ERRNO value, so
    that the kernel tells which one it took and the call itself never runs."""
    def code(a: int) -> int:
        return bpf.errno_action(codes.setdefault(a, len(codes) + 1))
    return bpf.ByArgs(tuple(bpf.ArgRule(r.index, r.op, r.value, code(r.action), r.wide)
                            for r in act.rules), code(act.default))


def _probes() -> list[tuple[int, tuple[int, ...]]]:
    probes = []
    for row, rule in _rule_rows():
        for value in (_matching(rule), 0, 1):
            for high in (0, *HIGH_HALVES):
                probes.append((row.nr, _args(rule.index, value | high)))
    return probes


def test_interpreter_agrees_with_the_kernel():
    """The interpreter above is the kernel's reading: the table's argument
    rules (actions made distinct errnos) loaded into a forked child and
    probed with real system calls, high halves set and cleared."""
    import ctypes
    import os

    from lxsub.platform import libc

    codes: dict[int, int] = {}
    rows = {row.nr: _as_errnos(row.action(), codes) for row, _ in _rule_rows()}
    prog = bpf.build_filter(rows, bpf.RET_ALLOW)
    probes = _probes()
    expected = [run_bpf(prog, seccomp_data(nr, args)) & 0xFFFF for nr, args in probes]
    assert len(set(expected)) > 3, "the probes must reach several different actions"
    sysc = ctypes.CDLL(None, use_errno=True).syscall
    sysc.restype = ctypes.c_long
    got = [0] * len(probes)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                       # the child: nothing allocated below
        try:
            libc.prctl(38, 1)                          # PR_SET_NO_NEW_PRIVS
            libc.seccomp_set_filter(0, prog)
            for i, (nr, args) in enumerate(probes):
                ctypes.set_errno(0)
                sysc(ctypes.c_long(nr), *(ctypes.c_ulong(a) for a in args))
                got[i] = ctypes.get_errno()
            os.write(w, struct.pack(f"<{len(got)}i", *got))
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    assert len(data) == 4 * len(probes), "the child could not install the filter"
    kernel = list(struct.unpack(f"<{len(probes)}i", data))
    wrong = [(NAMES[nr], [hex(a) for a in args], e, k)
             for (nr, args), e, k in zip(probes, expected, kernel) if e != k]
    assert wrong == []


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
