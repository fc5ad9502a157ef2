"""The conformance harness's own logic: how an LTP run is read and reported."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest

from tools.conformance import devices, report
from tools.conformance.run import Result, classify, kill_rooted_in, run_all


def test_ltp_exit_statuses():
    assert classify("a01", 0, b"TPASS", 1.0, False).status == "pass"
    conf = classify("a01", 32, b"x.c:1: TINFO: hi\nx.c:2: TCONF: needs 6.9\n", 1.0, False)
    assert (conf.status, conf.problem) == ("conf", "x.c:2: TCONF: needs 6.9")
    assert classify("a01", 127, b"sh: 1: exec: a01: not found", 0.1, False).status == "missing"
    assert classify("a01", -9, b"", 60.0, True).status == "timeout"
    res = classify("a01", 1, b"tst_test.c:1: TINFO: x\nopen02.c:47: TFAIL: open() succeeded\n"
                   b"x.c:2: TBROK: later\n", 0.3, False)
    assert res.status == "fail"
    assert res.problem == "open02.c:47: TFAIL: open() succeeded"


def test_a_failure_without_tfail_keeps_the_output_end():
    res = classify("a01", 2, b"one\ntwo\nthree\nfour\n", 0.3, False)
    assert res.problem == "two | three | four"


def test_areas():
    assert report.area_of("open01") == "open"
    assert report.area_of("accept4_01") == "accept4"
    assert report.area_of("futex_wait_bitset01") == "futex_wait_bitset"


def test_report_counts_natively_passing_tests_and_block_devices_apart():
    def r(name, status, problem=""):
        return {"name": name, "status": status, "exit": 0, "seconds": 0.1, "problem": problem}
    data = {"native": [r("open01", "pass"), r("open02", "pass"), r("mount01", "pass"),
                       r("kill01", "fail")],
            "lxsub": [r("open01", "pass"), r("open02", "fail", "TFAIL: x | y"),
                      r("mount01", "fail", "TBROK: no loop"), r("kill01", "pass")]}
    text = report.render(data, {"mount01"}, {"date": "d", "commit": "c"})
    assert "passing natively: **3**; under lxsub: **1** (33%)" in text
    assert "without the block-device tests: **1 of 2** (50%)" in text
    assert "block-device tests: 0 of 1" in text
    assert "| open02 | fail | `TFAIL: x \\| y` |" in text
    assert "| mount01 (block device) | fail | `TBROK: no loop` |" in text
    assert "kill01" not in text.split("## Passing natively")[1]
    assert "| open | 2 | 1 | 50% |" in text


def test_entries_that_acquire_a_device_count_as_block_device_tests(tmp_path):
    """The `_64`/`_16` builds of a listed test and the old API's
    tst_acquire_device() callers need a device too; others do not."""
    needing = {name for name, text in [
        ("linkat02", b"setup(void) { device = tst_acquire_device(cleanup); }"),
        ("lstat03", b"static struct tst_test test = { .needs_device = 1, };"),
        ("open01", b"static struct tst_test test = { .needs_tmpdir = 1, };"),
    ] if devices._NEEDS_DEVICE.search(text)}
    assert needing == {"linkat02", "lstat03"}
    entries = [("linkat02", "linkat02"), ("lstat03_64", "lstat03_64"), ("open01", "open01"),
               ("fchown04_16", "fchown04_16"), ("open01_64", "open01_64")]
    found = devices.entries_needing_a_device({"fchown04"}, needing, entries)
    assert found == {"fchown04", "fchown04_16", "linkat02", "lstat03_64"}


def test_runtest_lines_split_at_blanks_or_tabs():
    from tools.conformance.build import parse_runtest
    text = "# comment\n\nopen01 open01\nsetdomainname01\tsetdomainname01\nfoo bar -i 5\n"
    assert parse_runtest(text) == [("open01", "open01"), ("setdomainname01", "setdomainname01"),
                                   ("foo", "bar -i 5")]


def test_the_guard_fails_when_an_expected_pass_does_not_pass(tmp_path, capsys):
    from tools.conformance.__main__ import _check_expectations
    expect = tmp_path / "guard.txt"
    expect.write_text("# comment\nopen01 pass\nkill01 pass\n")
    data = {"lxsub": [{"name": "open01", "status": "pass", "problem": ""},
                      {"name": "kill01", "status": "fail", "problem": "TFAIL: no"}]}
    assert _check_expectations(data, expect) == 1
    assert "kill01: fail TFAIL: no" in capsys.readouterr().err
    data["lxsub"][1]["status"] = "pass"
    assert _check_expectations(data, expect) == 0


def test_the_guard_list_names_runtest_entries_once():
    from pathlib import Path
    lines = [line.split() for line in
             (Path(__file__).parents[2] / "tools/conformance/guard.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    names = [words[0] for words in lines]
    assert 100 <= len(names) == len(set(names))
    assert all(words[1] == "pass" for words in lines)


def test_processes_left_in_the_native_tree_are_ended(tmp_path):
    """A test's daemon that left its process group (kill11's children) must
    not outlive the native run in its chroot; a process elsewhere is untouched."""
    if os.geteuid() != 0:
        pytest.skip("chroot needs root (CI runs the suite as root)")
    tree = tmp_path / "tree"
    (tree / "bin").mkdir(parents=True)
    shutil.copy2(shutil.which("busybox"), tree / "bin" / "busybox")
    inside = subprocess.Popen(["chroot", str(tree), "/bin/busybox", "sleep", "300"],
                              start_new_session=True)
    outside = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10   # until chroot has executed busybox
        while os.readlink(f"/proc/{inside.pid}/root") != str(tree) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert kill_rooted_in(tree) == [inside.pid]
        assert inside.wait(timeout=10) == -signal.SIGKILL
        assert outside.poll() is None
    finally:
        for p in (inside, outside):
            p.kill()
            p.wait()


def test_a_native_clock_setter_runs_while_no_other_entry_does():
    """Natively, settimeofday01 and its kind set the host's clock, which the
    lxsub run's tests read: no entry of the other environment overlaps one."""
    spans: list[tuple[str, str, float, float]] = []

    class Env:
        def __init__(self, name: str, seconds: float) -> None:
            self.name, self.seconds = name, seconds

        def run(self, name: str, command: str, timeout: float) -> Result:
            t0 = time.monotonic()
            time.sleep(self.seconds)
            spans.append((self.name, name, t0, time.monotonic()))
            return Result(name, "pass", 0, self.seconds, "")

    entries = [(n, n) for n in ("open01", "settimeofday01", "open02", "stime01", "open03", "open04")]
    run_all([Env("native", 0.05), Env("lxsub", 0.03)], entries, 10, lambda env, res: None)
    setters = [s for s in spans if s[0] == "native" and s[1] in ("settimeofday01", "stime01")]
    assert len(setters) == 2 and len(spans) == 12
    for _, _, a, b in setters:
        overlapping = [s for s in spans if s[0] == "lxsub" and s[2] < b and a < s[3]]
        assert overlapping == [], overlapping
