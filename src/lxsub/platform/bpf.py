"""A seccomp BPF program built from a table of per-syscall actions.

The program checks the architecture (anything but x86_64, e.g. `int 0x80`
or x32 numbers, gets ENOSYS: their numbers mean other calls), then finds
the syscall's action with a binary search over ranges of numbers sharing an
action, so native calls cost a handful of instructions. An action is a
return value or a short list of rules on argument values.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000

RET_KILL_PROCESS = 0x80000000
RET_TRAP = 0x00030000
RET_ERRNO = 0x00050000
RET_USER_NOTIF = 0x7FC00000
RET_TRACE = 0x7FF00000
RET_ALLOW = 0x7FFF0000

_LD_ABS = 0x20   # BPF_LD | BPF_W | BPF_ABS
_JEQ = 0x15      # BPF_JMP | BPF_JEQ | BPF_K
_JGE = 0x35      # BPF_JMP | BPF_JGE | BPF_K
_JSET = 0x45     # BPF_JMP | BPF_JSET | BPF_K
_JA = 0x05       # BPF_JMP | BPF_JA
_RET = 0x06      # BPF_RET | BPF_K

_OFF_NR = 0
_OFF_ARCH = 4


def _off_arg(i: int, high: bool = False) -> int:
    return 16 + 8 * i + (4 if high else 0)


def errno_action(err: int) -> int:
    return RET_ERRNO | (err & 0xFFFF)


@dataclass(frozen=True)
class ArgRule:
    """`if args[index] (op) value: return action`, on exactly the bits the
    kernel reads. Most arguments are C `int`s or `unsigned int`s (fcntl's
    cmd, ioctl's request, prctl's option, open's flags, a pid_t) or are
    truncated by the kernel (clone's flags: `lower_32_bits()` in
    kernel/fork.c): the kernel ignores their high half, so the rule must
    too, or a program sets a high bit to step around it. Pointers and
    sizes are read whole (`wide`). The action may be a ByArgs of its own:
    its rules then test the other arguments of the calls this one matched
    (a conjunction)."""
    index: int
    op: str          # "eq" or "any_bit" (value & arg != 0)
    value: int
    action: "int | ByArgs"
    wide: bool = False

    def __post_init__(self) -> None:
        if not self.wide and self.value >> 32:
            raise ValueError("a 32-bit argument rule cannot test the high half")


@dataclass(frozen=True)
class ByArgs:
    rules: tuple[ArgRule, ...]
    default: int


Action = int | ByArgs


@dataclass
class _Prog:
    insns: list = field(default_factory=list)   # (code, jt, jf, k) or label markers

    def emit(self, code: int, jt=0, jf=0, k: int = 0) -> None:
        self.insns.append([code, jt, jf, k])

    def label(self, name: str) -> None:
        self.insns.append(("label", name))

    def jump(self, name: str) -> None:
        self.insns.append(["ja", name])


class _Labels:
    def __init__(self) -> None:
        self.n = 0

    def new(self) -> str:
        self.n += 1
        return f"L{self.n}"


def _ranges(actions: dict[int, Action], default: Action, top: int) -> list[tuple[int, Action]]:
    """[(first_nr, action)] covering 0..top, merging neighbours that agree."""
    out: list[tuple[int, Action]] = []
    for nr in range(top + 1):
        act = actions.get(nr, default)
        if not out or out[-1][1] != act:
            out.append((nr, act))
    return out


def _emit_action(p: _Prog, act: Action, labels: _Labels) -> None:
    if isinstance(act, int):
        p.emit(_RET, k=act)
        return
    for rule in act.rules:
        _emit_rule(p, rule, labels)
    p.emit(_RET, k=act.default)


def _emit_rule(p: _Prog, rule: ArgRule, labels: _Labels) -> None:
    low, high = rule.value & 0xFFFFFFFF, rule.value >> 32
    if rule.op == "eq":
        nxt = labels.new()
        if rule.wide:               # the high half must match too
            p.emit(_LD_ABS, k=_off_arg(rule.index, high=True))
            p.emit(_JEQ, 1, 0, high)
            p.jump(nxt)
        p.emit(_LD_ABS, k=_off_arg(rule.index))
        _emit_on_match(p, _JEQ, low, rule.action, labels)
        p.label(nxt)
    elif rule.op == "any_bit":      # a bit set in either tested half
        halves = [(False, low)] + ([(True, high)] if rule.wide and high else [])
        for is_high, bits in halves:
            p.emit(_LD_ABS, k=_off_arg(rule.index, high=is_high))
            _emit_on_match(p, _JSET, bits, rule.action, labels)
    else:
        raise ValueError(f"unknown argument rule operator {rule.op!r}")


def _emit_on_match(p: _Prog, test: int, k: int, action: Action, labels: _Labels) -> None:
    """`if test(A, k): action`, else on to what follows. A nested ByArgs
    ends in a return of its own, so it needs the jump over it."""
    if isinstance(action, int):
        p.emit(test, 0, 1, k)
        p.emit(_RET, k=action)
        return
    past = labels.new()
    p.emit(test, 1, 0, k)
    p.jump(past)
    _emit_action(p, action, labels)
    p.label(past)


def _emit_tree(p: _Prog, ranges: list[tuple[int, Action]], labels: _Labels) -> None:
    if len(ranges) == 1:
        _emit_action(p, ranges[0][1], labels)
        return
    mid = len(ranges) // 2
    right = labels.new()
    p.emit(_JGE, 0, 1, ranges[mid][0])
    p.jump(right)
    _emit_tree(p, ranges[:mid], labels)
    p.label(right)
    _emit_tree(p, ranges[mid:], labels)


def _assemble(p: _Prog) -> bytes:
    where: dict[str, int] = {}
    pc = 0
    for ins in p.insns:
        if ins[0] == "label":
            where[ins[1]] = pc
        else:
            pc += 1
    out = bytearray()
    pc = 0
    for ins in p.insns:
        if ins[0] == "label":
            continue
        if ins[0] == "ja":
            out += struct.pack("<HBBI", _JA, 0, 0, where[ins[1]] - pc - 1)
        else:
            code, jt, jf, k = ins
            out += struct.pack("<HBBI", code, jt, jf, k & 0xFFFFFFFF)
        pc += 1
    if pc > 4096:
        raise ValueError(f"seccomp program too long: {pc} instructions")
    return bytes(out)


def build_filter(actions: dict[int, Action], default: Action) -> bytes:
    """A complete filter program as bytes of `struct sock_filter`."""
    p = _Prog()
    labels = _Labels()
    p.emit(_LD_ABS, k=_OFF_ARCH)
    p.emit(_JEQ, 1, 0, AUDIT_ARCH_X86_64)
    p.emit(_RET, k=errno_action(38))  # ENOSYS
    p.emit(_LD_ABS, k=_OFF_NR)
    p.emit(_JGE, 0, 1, X32_SYSCALL_BIT)
    p.emit(_RET, k=errno_action(38))
    top = max(actions) if actions else 0
    tail = labels.new()
    p.emit(_JGE, 0, 1, top + 1)
    p.jump(tail)
    _emit_tree(p, _ranges(actions, default, top), labels)
    p.label(tail)
    _emit_action(p, default, labels)
    return _assemble(p)


def allow_only(numbers: tuple[int, ...], otherwise: int) -> bytes:
    """A program that allows the x86_64 calls `numbers` and answers every
    other call (another ABI's too) with `otherwise`."""
    n = len(numbers)
    insns = [(_LD_ABS, 0, 0, _OFF_ARCH), (_JEQ, 0, n + 1, AUDIT_ARCH_X86_64), (_LD_ABS, 0, 0, _OFF_NR)]
    insns += [(_JEQ, n - i, 0, nr) for i, nr in enumerate(numbers)]
    insns += [(_RET, 0, 0, otherwise), (_RET, 0, 0, RET_ALLOW)]
    return b"".join(struct.pack("<HBBI", *insn) for insn in insns)
