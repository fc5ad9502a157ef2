"""Linux programs inside host pipelines (issue 5, acceptance): `lx` passes its
own descriptors to the Linux command, so pipes and redirections are the
host's, byte-exact and at native speed, exit statuses and signals go through.

Each pipeline runs in a host shell as the host user of the fixture.
"""

from __future__ import annotations

import hashlib
import os
import select
import shlex
import signal
import subprocess
import time

import pytest

from tests.integration.distros import describe


def _lx(inst, *args: str) -> str:
    """The shell words that run `lx -d NAME ARGS` as the instance's user."""
    return shlex.join([inst.runner.python, "-m", "lxsub", "-d", inst.name, *args])


def _host_sh(inst, script: str, timeout: float = 300, input: bytes | None = None,
             shell: str = "sh") -> subprocess.CompletedProcess:
    runner = inst.runner
    return runner.run_host(runner.user.wrap([shell, "-c", script]), input=input,
                           timeout=timeout, env={"LC_ALL": "C"})


def _scratch(inst, name: str):
    d = inst.runner.root / name
    d.mkdir(exist_ok=True)
    inst.runner.user.give(d)
    return d


def test_host_seq_into_linux_wc(busybox):
    cp = _host_sh(busybox, f"seq 1000000 | {_lx(busybox, '-e', 'wc', '-l')}")
    assert cp.returncode == 0, describe(cp)
    assert cp.stdout.decode().strip() == "1000000"


@pytest.mark.slow
def test_cat_100mb_byte_identical(busybox):
    d = _scratch(busybox, "pipes-big")
    big, copy = d / "big.bin", d / "copy.bin"
    digest = hashlib.sha256()
    with open(big, "wb") as f:
        for _ in range(100):
            chunk = os.urandom(1 << 20)
            digest.update(chunk)
            f.write(chunk)
    busybox.runner.user.give(big)
    try:
        cp = _host_sh(busybox, f"{_lx(busybox, '-e', 'cat')} < {big} > {copy}")
        assert cp.returncode == 0, describe(cp)
        assert copy.stat().st_size == 100 << 20
        with open(copy, "rb") as f:
            assert hashlib.file_digest(f, "sha256").hexdigest() == digest.hexdigest()
    finally:
        for p in (big, copy):
            p.unlink(missing_ok=True)


def test_shell_command_reads_redirected_file(busybox):
    d = _scratch(busybox, "pipes-grep")
    (d / "in.txt").write_bytes(b"one\nxylophone\nthree\nbox\n")
    busybox.runner.user.give(d / "in.txt")
    cp = _host_sh(busybox, f"{_lx(busybox, '--', 'grep x')} < {d / 'in.txt'}")
    assert cp.returncode == 0, describe(cp)
    assert cp.stdout == b"xylophone\nbox\n"


def test_sort_in_a_host_pipeline_matches_native(debian):
    linux = _host_sh(debian, f"ls /usr/bin | {_lx(debian, '-e', 'env', 'LC_ALL=C', 'sort')} | head")
    native = _host_sh(debian, "ls /usr/bin | sort | head")
    assert linux.returncode == 0, describe(linux)
    assert native.returncode == 0, describe(native)
    assert len(linux.stdout.splitlines()) == 10
    assert linux.stdout == native.stdout


@pytest.mark.parametrize("script,status", [
    ("printf 'a\\n' | {lx} -e sh -c 'cat >/dev/null; exit 5'", 5),
    ("{lx} -e false | cat", 1),
    ("echo x | {lx} -e sh -c 'exit 7' | cat", 7),
    ("{lx} -- 'kill -TERM $$' | cat", 128 + 15),
    ("seq 3 | {lx} -e cat | {lx} -e sh -c 'read a; read b; read c; exit $((a+b+c))'", 6),
])
def test_exit_status_through_pipelines(busybox, script, status):
    # bash's pipefail: the pipeline's status is the last failing command's.
    cp = _host_sh(busybox, "set -o pipefail; " + script.format(lx=_lx(busybox)), shell="bash")
    assert cp.returncode == status, describe(cp)


def _start_trapping(inst, sig: str, code: int) -> subprocess.Popen:
    script = (f'trap "echo got-{sig}; exit {code}" {sig}; echo ready; '
              "while :; do sleep 0.05; done")
    return inst.runner.popen(["-d", inst.name, "-e", "sh", "-c", script],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             start_new_session=True)


def _read_line(p: subprocess.Popen, timeout: float = 60) -> bytes:
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n") and time.monotonic() < deadline:
        ready, _, _ = select.select([p.stdout], [], [], 0.5)
        if ready:
            byte = os.read(p.stdout.fileno(), 1)
            if not byte:
                break
            line += byte
    return line


@pytest.mark.parametrize("sig,code", [("INT", 3), ("TERM", 4)])
def test_signal_to_lx_reaches_the_linux_process(busybox, sig, code):
    p = _start_trapping(busybox, sig, code)
    try:
        assert _read_line(p) == b"ready\n", p.stderr.read1() if p.poll() is not None else ""
        os.kill(p.pid, getattr(signal, f"SIG{sig}"))
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert out == f"got-{sig}\n".encode(), (out, err)
    assert p.returncode == code, (p.returncode, err)
