"""The seccomp BPF builder (platform/bpf.py) on small hand-made tables, run
through the interpreter in tests/fixtures/bpf.py: the architecture check,
the search over numbers, argument rules, and what it refuses to build."""

from __future__ import annotations

import errno
import random

import pytest

from lxsub.platform import bpf
from tests.fixtures.bpf import run_bpf, seccomp_data

ENOSYS = bpf.errno_action(errno.ENOSYS)
EPERM = bpf.errno_action(errno.EPERM)
AUDIT_ARCH_I386 = 0x40000003


def test_other_architectures_and_x32_numbers_get_enosys():
    """An int 0x80 call (AUDIT_ARCH_I386) or an x32 number means another
    call than its x86_64 number says: neither may reach the table."""
    prog = bpf.build_filter({0: bpf.RET_ALLOW}, bpf.RET_ALLOW)
    assert run_bpf(prog, seccomp_data(0)) == bpf.RET_ALLOW
    assert run_bpf(prog, seccomp_data(0, arch=AUDIT_ARCH_I386)) == ENOSYS
    assert run_bpf(prog, seccomp_data(bpf.X32_SYSCALL_BIT | 0)) == ENOSYS


def test_every_number_gets_its_action_and_the_rest_the_default():
    rng = random.Random(15)
    choices = (bpf.RET_ALLOW, bpf.RET_USER_NOTIF, bpf.RET_TRACE, EPERM)
    actions = {nr: rng.choice(choices) for nr in rng.sample(range(470), 200)}
    prog = bpf.build_filter(actions, ENOSYS)
    for nr in range(600):
        assert run_bpf(prog, seccomp_data(nr)) == actions.get(nr, ENOSYS), nr
    assert run_bpf(prog, seccomp_data(0xFFFFFFFF & ~bpf.X32_SYSCALL_BIT)) == ENOSYS


def test_eq_rule_on_an_int_argument_ignores_the_high_half():
    act = bpf.ByArgs((bpf.ArgRule(1, "eq", 8, bpf.RET_TRACE),), bpf.RET_ALLOW)
    prog = bpf.build_filter({72: act}, ENOSYS)
    assert run_bpf(prog, seccomp_data(72, (3, 8))) == bpf.RET_TRACE
    assert run_bpf(prog, seccomp_data(72, (3, 8 | 1 << 32))) == bpf.RET_TRACE
    assert run_bpf(prog, seccomp_data(72, (3, 9))) == bpf.RET_ALLOW


def test_rules_are_tried_in_order_before_the_default():
    act = bpf.ByArgs((bpf.ArgRule(0, "any_bit", 0x10000000, EPERM),
                      bpf.ArgRule(0, "any_bit", 0x100, bpf.RET_TRACE)), bpf.RET_ALLOW)
    prog = bpf.build_filter({56: act}, ENOSYS)
    assert run_bpf(prog, seccomp_data(56, (0x10000100,))) == EPERM
    assert run_bpf(prog, seccomp_data(56, (0x100,))) == bpf.RET_TRACE
    assert run_bpf(prog, seccomp_data(56, (0x11,))) == bpf.RET_ALLOW


def test_a_rule_may_hold_rules_on_other_arguments():
    """A rule whose action is a ByArgs tests the other arguments of the
    calls it matched (prlimit64's own NOFILE limit being set); the calls it
    did not match go on to the next rules."""
    inner = bpf.ByArgs((bpf.ArgRule(2, "eq", 0, bpf.RET_ALLOW, wide=True),), bpf.RET_TRACE)
    act = bpf.ByArgs((bpf.ArgRule(0, "eq", 0, bpf.ByArgs((bpf.ArgRule(1, "eq", 7, inner),),
                                                         bpf.RET_ALLOW)),
                      bpf.ArgRule(0, "any_bit", 1, EPERM)), bpf.RET_USER_NOTIF)
    prog = bpf.build_filter({302: act}, ENOSYS)
    assert run_bpf(prog, seccomp_data(302, (0, 7, 0x1000))) == bpf.RET_TRACE
    assert run_bpf(prog, seccomp_data(302, (0, 7, 0))) == bpf.RET_ALLOW
    assert run_bpf(prog, seccomp_data(302, (0, 7, 1 << 32))) == bpf.RET_TRACE
    assert run_bpf(prog, seccomp_data(302, (0, 3, 0x1000))) == bpf.RET_ALLOW
    assert run_bpf(prog, seccomp_data(302, (5, 7, 0x1000))) == EPERM
    assert run_bpf(prog, seccomp_data(302, (4, 7, 0x1000))) == bpf.RET_USER_NOTIF


def test_a_rule_on_the_default_action_applies_above_the_table():
    """Numbers past the highest listed one take the default, rules included."""
    default = bpf.ByArgs((bpf.ArgRule(0, "eq", 7, EPERM),), bpf.RET_USER_NOTIF)
    prog = bpf.build_filter({0: bpf.RET_ALLOW}, default)
    assert run_bpf(prog, seccomp_data(1000, (7,))) == EPERM
    assert run_bpf(prog, seccomp_data(1000, (6,))) == bpf.RET_USER_NOTIF


def test_a_32_bit_rule_cannot_name_high_bits():
    with pytest.raises(ValueError):
        bpf.ArgRule(0, "eq", 1 << 32, EPERM)
    bpf.ArgRule(0, "eq", 1 << 32, EPERM, wide=True)


def test_unknown_operator_is_refused():
    act = bpf.ByArgs((bpf.ArgRule(0, "lt", 1, EPERM),), bpf.RET_ALLOW)
    with pytest.raises(ValueError, match="operator"):
        bpf.build_filter({1: act}, ENOSYS)


def test_a_program_longer_than_the_kernel_takes_is_refused():
    """BPF_MAXINSNS is 4096 (include/uapi/linux/bpf_common.h): every other
    number with its own action needs more."""
    actions = {nr: bpf.RET_ALLOW if nr % 2 else bpf.RET_TRACE for nr in range(3000)}
    with pytest.raises(ValueError, match="too long"):
        bpf.build_filter(actions, ENOSYS)


def test_errno_action_keeps_the_errno_in_the_low_16_bits():
    assert bpf.errno_action(errno.EPERM) == bpf.RET_ERRNO | errno.EPERM
    assert bpf.errno_action(0x12345) == bpf.RET_ERRNO | 0x2345
