"""platform/features.py: the probes see what a kernel lacks, and the hiding switch hides it.

A kernel without a syscall is made here with a seccomp filter that answers
ENOSYS for it (what Linux 4.18 answers for openat2, pidfd_getfd...), in a
forked child: the probes must then report the feature absent.
"""

from __future__ import annotations

import os

from lxsub.abi.prctl import PR_SET_NO_NEW_PRIVS
from lxsub.abi.sysno import NUMBERS
from lxsub.platform import bpf, features, libc

_NEW = ("openat2", "pidfd_open", "pidfd_getfd", "close_range", "fsopen")


def _probe_in_child_without(names: tuple[str, ...]) -> dict[str, bool]:
    """Run the syscall probes in a child whose seccomp filter answers
    ENOSYS for `names` and allows everything else."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(r)
            libc.prctl(PR_SET_NO_NEW_PRIVS, 1)
            actions = {nr: bpf.RET_ALLOW for nr in NUMBERS.values()}
            for name in names:
                actions[NUMBERS[name]] = bpf.errno_action(38)
            libc.seccomp_set_filter(0, bpf.build_filter(actions, bpf.RET_ALLOW))
            found = features._probe_syscalls()
            os.write(w, ",".join(n for n, ok in found.items() if ok).encode())
        finally:
            os._exit(0)
    os.close(w)
    raw = os.read(r, 4096).decode()
    os.close(r)
    os.waitpid(pid, 0)
    present = set(raw.split(",")) - {""}
    return {n: n in present for n in _NEW}


def test_probes_find_the_syscalls_of_this_kernel():
    assert all(_probe_in_child_without(()).values())


def test_probes_see_syscalls_an_old_kernel_lacks():
    found = _probe_in_child_without(_NEW)
    assert not any(found.values()), found


def test_probes_tell_each_syscall_apart():
    found = _probe_in_child_without(("openat2", "close_range"))
    assert found == {n: n not in ("openat2", "close_range") for n in _NEW}


def test_hiding_all_features_chooses_ptrace(monkeypatch):
    monkeypatch.setenv("LX_HIDE_FEATURES", "all")
    monkeypatch.delenv("LX_PLATFORM", raising=False)
    assert not any(features.has(f.name) for f in features.FEATURES)
    name, why = features.platform()
    assert name == "ptrace" and "user_notif" in why
    assert {m["name"] for m in features.report()["missing"]} == set(features.BY_NAME)


def test_hiding_one_feature_hides_only_it(monkeypatch):
    monkeypatch.setenv("LX_HIDE_FEATURES", "openat2")
    monkeypatch.delenv("LX_NO_KILLABLE_WAIT", raising=False)
    assert not features.has("openat2")
    missing = {f.name: why for f, why in features.missing()}
    assert missing.get("openat2") == "hidden by LX_HIDE_FEATURES"


def test_old_switch_hides_killable_wait(monkeypatch):
    monkeypatch.delenv("LX_HIDE_FEATURES", raising=False)
    monkeypatch.setenv("LX_NO_KILLABLE_WAIT", "1")
    assert not features.has("wait_killable_recv")


def test_forced_platform(monkeypatch):
    monkeypatch.setenv("LX_PLATFORM", "ptrace")
    assert features.platform() == ("ptrace", "forced by LX_PLATFORM")


def test_close_fds_without_close_range(monkeypatch):
    """The /proc/self/fd fallback closes all but the one kept."""
    from lxsub.platform import hostfd
    monkeypatch.setenv("LX_HIDE_FEATURES", "close_range")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        keep = os.dup(w)
        extra = [os.open("/dev/null", os.O_RDONLY) for _ in range(3)]
        hostfd.close_fds_except(keep)
        closed = []
        for fd in [r, w, *extra]:
            try:
                os.fstat(fd)
            except OSError:
                closed.append(fd)
        os.write(keep, b"ok" if len(closed) == 5 else repr(closed).encode())
        os._exit(0)
    os.close(w)
    out = os.read(r, 100)
    os.close(r)
    os.waitpid(pid, 0)
    assert out == b"ok"


def test_ptrace_filter_traces_where_notify_was():
    """The ptrace platform's filter is the table's with TRACE|1 for every
    USER_NOTIF return and nothing else changed."""
    import struct
    from lxsub.kernel import table
    from lxsub.platform import tracenotify
    prog = table.seccomp_program()
    traced = tracenotify.trace_filter(prog)
    insns = [struct.unpack_from("<HBBI", prog, i) for i in range(0, len(prog), 8)]
    after = [struct.unpack_from("<HBBI", traced, i) for i in range(0, len(traced), 8)]
    notify_rets = [i for i, ins in enumerate(insns) if ins == (0x06, 0, 0, bpf.RET_USER_NOTIF)]
    assert notify_rets, "the table has notify rows"
    for i, (old, new) in enumerate(zip(insns, after)):
        if i in notify_rets:
            assert new == (0x06, 0, 0, bpf.RET_TRACE | tracenotify.NOTIFY_DATA)
        else:
            assert new == old
