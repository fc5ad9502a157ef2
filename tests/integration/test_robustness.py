"""Issue 18: nothing a user or a Linux program sends takes lxsub down.

Each test feeds one kind of hostile or unusual input (bytes that are not
UTF-8, requests a client makes up, Linux-sized command lines, bad
pointers, odd names, a provider killed mid-create) and checks that the
answer is Linux's (or one clear `lx:` line) and that everything keeps
working afterwards.
"""

from __future__ import annotations

import pytest

from tests.fixtures.runner import describe

# Bytes that are not UTF-8, as Python hands them to subprocess (surrogateescape).
NOT_UTF8 = "A\udcff\udcfeB"
NOT_UTF8_BYTES = b"A\xff\xfeB"


# -- 1. bytes in argv, the environment, LANG and --cd arrive byte-exact ------------------

def test_non_utf8_argv_arrives_byte_exact(busybox):
    cp = busybox.exe("printf", "%s", NOT_UTF8)
    assert cp.returncode == 0, describe(cp)
    assert cp.stdout == NOT_UTF8_BYTES
    cp = busybox.sh(f"printf %s {NOT_UTF8}")           # through the shell too
    assert cp.returncode == 0, describe(cp)
    assert cp.stdout == NOT_UTF8_BYTES


def test_non_utf8_environment_arrives_byte_exact(busybox):
    env = {"LANG": "C.\udcff", "LC_ALL": NOT_UTF8, "LXENV": "ODD", "ODD": NOT_UTF8}
    cp = busybox.runner.run(["-d", busybox.name, "-e", "env"], env=env)
    assert cp.returncode == 0, describe(cp)
    lines = cp.stdout.split(b"\n")
    for line in (b"LANG=C.\xff", b"LC_ALL=" + NOT_UTF8_BYTES, b"ODD=" + NOT_UTF8_BYTES):
        assert line in lines, describe(cp)


def test_non_utf8_cd_arrives_byte_exact(busybox):
    cp = busybox.sh("mkdir -p /tmp/robust-cd && cd /tmp/robust-cd && mkdir -p \"$(printf 'A\\377\\376B')\"")
    assert cp.returncode == 0, describe(cp)
    cp = busybox.lx(["--cd", f"/tmp/robust-cd/{NOT_UTF8}", "-e", "pwd"])
    assert cp.returncode == 0, describe(cp)
    assert cp.stdout == b"/tmp/robust-cd/" + NOT_UTF8_BYTES + b"\n"
    # The instance survived all of it: a plain command still runs.
    assert busybox.exe("true").returncode == 0
