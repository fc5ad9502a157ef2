"""The key retention service (keyrings(7)) from a real program:
tests/fixtures/programs/keyrings.c, built static on the host and run as root
in BusyBox. It joins a named session keyring, adds keys, forks and execs
itself (the session keyring is inherited and kept, the thread keyring not),
reads keys as another user with and without possessing them, fills a
non-root user's byte quota to EDQUOT, lowers maxkeys through
/proc/sys/kernel/keys and finds its key in /proc/keys.
Before keyrings were implemented every call answered ENOSYS."""

from __future__ import annotations

import errno

import pytest

from tests.fixtures.cbuild import PROGRAMS, gcc_static
from tests.integration.distros import describe

DIR = "/keyrings-test"


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> bytes:
    tmp = tmp_path_factory.mktemp("keyrings")
    return gcc_static(tmp, "keyrings", PROGRAMS / "keyrings.c").read_bytes()


@pytest.fixture(scope="module")
def out(busybox, program) -> dict[str, str]:
    """{first words: value} of the program's lines, as printed under lxsub."""
    cp = busybox.lx(["--", f"mkdir -p {DIR} && cat > {DIR}/k && chmod 755 {DIR}/k"],
                    input=program, timeout=60)
    assert cp.returncode == 0, describe(cp)
    cp = busybox.lx(["-u", "root", "--", f"{DIR}/k"], timeout=60)
    assert cp.returncode == 0, describe(cp)
    lines = {}
    for line in cp.stdout.decode().splitlines():
        head, _, value = line.rpartition(" ")
        lines[head] = value
    return lines


def test_type_errors(out):
    # logon needs "service:", unknown types are ENODEV, payloads stop at 1 MiB - 1.
    assert out["errors"] == f"{-errno.EINVAL},{-errno.ENODEV},{-errno.EINVAL}", out


def test_session_keyring_survives_fork_and_exec(out):
    assert out["join"] == "1", out
    assert out["exec session"] == "1", out
    assert out["exec thread"] == str(-errno.ENOKEY), out
    assert out["exec read"] == "hello", out
    assert out["exec request"] == "1", out


def test_permissions_of_another_user(out):
    assert out["other possessed"] == "5", out
    assert out["other read"] == str(-errno.EACCES), out
    assert out["other describe"] == str(-errno.EACCES), out
    assert out["other shared"] == "open", out
    assert out["other sysctl"] == str(-errno.EACCES), out


def test_byte_quota_and_proc_keys(out):
    # 20000 bytes: the thread keyring (_tid: 4 + 1 + 16) and 19 keys of
    # 3 + 1 + 1000 bytes fit, the 20th is EDQUOT.
    assert out["quota bytes"] == f"19,{-errno.EDQUOT}", out
    assert out["proc keys"] == "1", out


def test_key_count_quota_from_proc_sys(out):
    # root may write /proc/sys/kernel/keys/maxkeys; with 5, the thread
    # keyring and 4 keys fit (key_alloc: qnkeys + 1 > maxkeys is EDQUOT).
    assert out["sysctl access"] == "0", out
    assert out["quota keys"] == f"4,{-errno.EDQUOT}", out
