"""Escape attempts (tests/fixtures/security/*.c) compiled and run inside the
Debian instance, as root and as an unprivileged host user: each must report
CONFINED and exit 0."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.integration.distros import describe

pytestmark = [pytest.mark.debian, pytest.mark.slow]

SRC = Path(__file__).resolve().parents[1] / "fixtures" / "security"
SECRET = "LXSUB-ESCAPE-MARKER"
PROGRAMS = ["symlink_escape", "dotdot_escape", "proc_escape", "race_escape",
            "host_signal", "bypass_syscalls", "high_bits"]


@pytest.fixture(scope="session")
def built(debian):
    """Compile every program inside the instance (sources piped via stdin)."""
    for name in ["lxsec.h"] + [p + ".c" for p in PROGRAMS]:
        cp = debian.sh(f"mkdir -p /opt/lxsec && cat > /opt/lxsec/{name}",
                       input=(SRC / name).read_bytes())
        assert cp.returncode == 0, describe(cp)
    for p in PROGRAMS:
        cp = debian.sh(f"cd /opt/lxsec && gcc -O2 -Wall -pthread -o {p} {p}.c", timeout=300)
        assert cp.returncode == 0, describe(cp)
    return debian


@pytest.fixture
def marker(built, tmp_path_factory):
    """A host file outside the instance, readable by the test user."""
    d = tmp_path_factory.mktemp("marker")
    os.chmod(d, 0o755)
    m = d / "marker.txt"
    m.write_text(f"host file outside the instance: {SECRET}\n")
    os.chmod(m, 0o644)
    built.user.give(d)
    built.user.give(m)
    return m


@pytest.fixture
def victim(built):
    """A sacrificial host process (the program sends it SIGTERM if it escapes)."""
    p = subprocess.Popen(built.user.wrap(["sleep", "600"]), stdin=subprocess.DEVNULL)
    yield p
    p.kill()
    p.wait()


def _check(cp):
    out = cp.stdout.decode(errors="replace")
    assert cp.returncode == 0 and out.rstrip().endswith("CONFINED"), describe(cp)
    assert "ESCAPED" not in out, describe(cp)


@pytest.mark.parametrize("program", ["symlink_escape", "dotdot_escape", "race_escape"])
def test_path_escapes(built, marker, program):
    cp = built.exe("env", "LXSEC_RACE_SECONDS=10", f"/opt/lxsec/{program}", str(marker), SECRET,
                   timeout=400)
    _check(cp)


@pytest.mark.parametrize("program", ["proc_escape", "bypass_syscalls"])
def test_pid_escapes(built, marker, victim, program):
    cp = built.exe(f"/opt/lxsec/{program}", str(marker), str(os.getpid()), SECRET, timeout=400)
    _check(cp)
    assert victim.poll() is None


def test_host_signal_own_pid(built):
    """The pytest process's own host pid: kill(pid) must be ESRCH."""
    cp = built.exe("/opt/lxsec/host_signal", str(os.getpid()), timeout=400)
    _check(cp)


def test_host_signal_victim(built, victim):
    cp = built.exe("/opt/lxsec/host_signal", str(victim.pid), timeout=400)
    _check(cp)
    assert victim.poll() is None, "the host process was signalled"


def test_high_bits_step_around_no_rule(built, victim):
    """Argument rules read the bits the kernel reads (issue 11, item 1):
    clone(CLONE_UNTRACED|CLONE_NEWUSER | 1<<32), F_SETOWN/FIOSETOWN | 1<<32
    naming a host process, TIOCSTI | 1<<32. Natively all of them work and
    the victim dies of SIGIO (tests/unit/test_fixtures.py)."""
    cp = built.exe("/opt/lxsec/high_bits", str(victim.pid), timeout=400)
    _check(cp)
    assert victim.poll() is None, "the host process was signalled"
