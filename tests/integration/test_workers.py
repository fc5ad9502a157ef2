"""Provider workers (kernel/workers.py, LX_WORKERS): path queries answered
by forked workers from copies of the provider's state must be exactly what
the provider would answer, right after any change the caller has seen
done (a chdir, a symlink's owner, a mount, a setresuid), and what workers
cannot answer (/proc, pipes) still works. The probe is
tests/fixtures/programs/worker_probe.c, built static on the host."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lxsub.platform import notify
from lxsub.platform.fanout import RECEIVER_NAME

from tests.fixtures.cbuild import PROGRAMS, gcc_static
from tests.fixtures.runner import LxRunner, wait_for
from tests.integration.distros import describe


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> bytes:
    return gcc_static(tmp_path_factory.mktemp("workers"), "worker_probe",
                      PROGRAMS / "worker_probe.c").read_bytes()


def _answered(lx: LxRunner) -> list[tuple[int, int]]:
    """(answered by workers, passed on) of each instance that ended."""
    path = lx.lx_home / "lx.log"
    log = path.read_text(errors="replace") if path.exists() else ""
    return [(int(a), int(p)) for a, p in
            re.findall(r"provider workers: (\d+) calls answered, (\d+) passed on", log)]


def test_worker_answers_follow_every_change(lx_self: LxRunner, busybox_tar, probe, monkeypatch):
    if not (notify.LISTENERS and notify.KILLABLE_WAIT):
        pytest.skip("workers receive from seccomp listeners with killable waits (none here)")
    monkeypatch.setenv("LX_WORKERS", "2")
    lx_self.import_distro("bb", busybox_tar)
    cp = lx_self.run(["-d", "bb", "--", "mkdir -p /probe && cat > /probe/worker_probe && "
                      "chmod 755 /probe/worker_probe"], input=probe, timeout=120)
    assert cp.returncode == 0, describe(cp)
    cp = lx_self.run(["-d", "bb", "--", "rm -rf /probe/s && mkdir /probe/s && cd /probe/s && "
                      "/probe/worker_probe 200"], timeout=300)
    out = cp.stdout.decode(errors="replace")
    assert cp.returncode == 0 and "FAIL" not in out, describe(cp)
    assert out.split() == ["ok", "cwd", "ok", "symlink", "owner", "ok", "mounts", "ok", "creds",
                           "ok", "provider's", "own"], describe(cp)
    lx_self.run(["--shutdown"], timeout=60)
    counts = _answered(lx_self)
    assert counts, "no instance with workers ended"
    answered = sum(a for a, _ in counts)
    # 200 rounds of 4 access() calls: the workers answered them.
    assert answered >= 800, counts


def test_no_workers_by_default(lx_self: LxRunner, busybox_tar, monkeypatch):
    monkeypatch.delenv("LX_WORKERS", raising=False)
    lx_self.import_distro("bb", busybox_tar)
    cp = lx_self.run(["-d", "bb", "--", "stat / >/dev/null"], timeout=120)
    assert cp.returncode == 0, describe(cp)
    lx_self.run(["--shutdown"], timeout=60)
    assert _answered(lx_self) == []


def _receiving_threads(provider: int) -> int:
    """Receiving threads (platform/fanout.py) in the provider's workers."""
    count = 0
    children = Path(f"/proc/{provider}/task/{provider}/children").read_text().split()
    for child in children:
        try:
            for task in Path(f"/proc/{child}/task").iterdir():
                if (task / "comm").read_bytes().strip() == RECEIVER_NAME:
                    count += 1
        except OSError:
            pass          # a pico process that just ended
    return count


def test_workers_serve_sessions_that_come_and_go(lx_self: LxRunner, busybox_tar, monkeypatch):
    """Each session's filter has its own listener: a worker receives from
    one it inherited and from ones opened later (sent to it), and lets go
    of each whose processes have all ended, while serving the others."""
    if not (notify.LISTENERS and notify.KILLABLE_WAIT):
        pytest.skip("workers receive from seccomp listeners with killable waits (none here)")
    monkeypatch.setenv("LX_WORKERS", "1")
    lx_self.import_distro("bb", busybox_tar)
    keep = lx_self.hold("bb")
    try:
        provider = lx_self.serving_instance("bb")
        wait_for(lambda: _receiving_threads(provider) == 1, what="the worker's one receiving thread")
        for session in range(2):
            cp = lx_self.run(["-d", "bb", "--", "i=0; while [ $i -lt 300 ]; do [ -e / ] || exit 3; "
                              "i=$((i+1)); done; echo done"], timeout=120)
            assert cp.returncode == 0 and cp.stdout == b"done\n", describe(cp)
            # Its listener is let go: only the holding session's is left.
            wait_for(lambda: _receiving_threads(provider) == 1,
                     what=f"session {session}'s receiving thread to end")
    finally:
        keep.kill()
        keep.wait()
    lx_self.run(["--shutdown"], timeout=60)
    answered = sum(a for a, _ in _answered(lx_self))
    # Two sessions of 300 stat() calls each, on listeners made after the
    # holding one: the worker answered them.
    assert answered >= 600, _answered(lx_self)
