"""bench/run.py's own pieces: the build workload's project, the stat floor
probes, and the arithmetic of the target notes (real gcc, make, seccomp)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("lxsub_bench_run", REPO / "bench" / "run.py")
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench      # dataclasses look their module up there
_spec.loader.exec_module(bench)

needs_cc = pytest.mark.skipif(not shutil.which("gcc") or not shutil.which("make"),
                              reason="needs gcc and make on the host")


@needs_cc
def test_build_workload_builds_from_clean_in_parallel(tmp_path: Path) -> None:
    for name, text in bench.build_sources().items():
        (tmp_path / name).write_text(text)
    units = [n for n in bench.build_sources() if n.endswith(".c")]
    assert len(units) == bench.BUILD_FILES + 1
    subprocess.run(["make", "-s", "-j2", "-C", str(tmp_path)], check=True)
    out = subprocess.run([str(tmp_path / "prog")], check=True, capture_output=True, text=True).stdout
    assert int(out) > 0
    assert len(list(tmp_path.glob("*.o"))) == len(units)
    subprocess.run(["make", "-s", "-C", str(tmp_path), "clean"], check=True)
    assert not list(tmp_path.glob("*.o")) and not (tmp_path / "prog").exists()


@pytest.fixture(scope="module")
def floor_binary(tmp_path_factory) -> Path:
    if not shutil.which("gcc"):
        pytest.skip("needs gcc")
    out = tmp_path_factory.mktemp("floor") / "floor_stat"
    r = subprocess.run(["gcc", "-O2", "-static", "-o", str(out), str(REPO / "bench" / "floor_stat.c")],
                       capture_output=True, text=True)
    if r.returncode != 0 and "cannot find -lc" in r.stderr:
        pytest.skip("no static libc on the host")
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.parametrize("mode", ["full", "bare"])
def test_floor_stat_c_serves_the_calls(floor_binary: Path, mode: str) -> None:
    argv = [str(floor_binary), "/", "300"] + (["bare"] if mode == "bare" else [])
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr     # the child's 300 stat() calls all succeeded
    assert float(r.stdout) > 0


def test_floor_stat_python_serves_the_calls(floor_binary: Path) -> None:
    r = subprocess.run([sys.executable, str(REPO / "bench" / "floor_stat.py"), str(floor_binary), "/", "300"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert float(r.stdout) > 0


def test_floor_stat_python_answers_what_stat_would(floor_binary: Path, tmp_path: Path) -> None:
    """The Python floor's answers are real stat results: a root without
    /etc/passwd makes the child's stat fail (ENOENT), so the run fails."""
    (tmp_path / "etc").mkdir()
    r = subprocess.run([sys.executable, str(REPO / "bench" / "floor_stat.py"), str(floor_binary),
                        str(tmp_path), "5"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0


def _results(**medians: dict[str, float]) -> dict:
    return {env: {"skipped": "", "workloads": {w: {"median": v} for w, v in ws.items()}}
            for env, ws in medians.items()}


def test_target_notes_subtract_start_up_and_divide_per_call() -> None:
    results = _results(
        native=dict(startup=0.010, stat_loop=0.050, spawn=0.210, python=0.030, find=0.040,
                    make_j1=2.0, make_j2=1.0),
        lxsub=dict(startup=0.110, stat_loop=0.510, spawn=0.510, python=0.170, find=0.200,
                   make_j1=3.0, make_j2=2.0),
        proot=dict(startup=0.030))
    notes = "\n".join(bench.target_notes(results))
    assert "native 2.0 us, lxsub 20.0 us" in notes          # (0.51 - 0.11) / 20000
    assert "lxsub/native 10.0x" in notes
    assert "native 1.0 ms, lxsub 2.0 ms" in notes           # (0.51 - 0.11) / 200
    assert "python3 -c pass" in notes and "lxsub/native 3.0x" in notes
    assert "find /usr (target lxsub/native <= 4): lxsub/native 5.0x" in notes
    assert "native 2.00x, lxsub 1.50x" in notes             # -j1 / -j2
    assert "make -j1 lxsub/native (target <= 1.5x): 1.50x" in notes
    assert "lxsub/proot 3.67x" in notes


def test_traced_processes_are_found_by_their_tracer() -> None:
    """provider_rss finds the provider as the tracer of the busy processes
    it started: here a shell traced by strace is found with strace's pid."""
    if not shutil.which("strace"):
        pytest.skip("needs strace")
    token = f"lxsub-bench-token-{os.getpid()}"
    p = subprocess.Popen(["strace", "-o", "/dev/null", "sh", "-c", "sleep 30", token])
    try:
        for _ in range(100):
            found = bench._traced_with(token)
            if found:
                break
            subprocess.run(["sleep", "0.05"])
        assert found and set(found.values()) == {p.pid}
    finally:
        p.kill()
        p.wait()


def test_baseline_notes_compare_the_two_trees_of_one_run() -> None:
    results = _results(native=dict(startup=0.010, stat_loop=0.050),
                       lxsub=dict(startup=0.100, stat_loop=0.500),
                       **{"lxsub-base": dict(startup=0.200, stat_loop=1.000)})
    notes = bench.baseline_notes(results)
    assert "stat_loop 1.00 s -> 500.0 ms (0.50×)" in notes[0]
    assert "startup 200.0 ms -> 100.0 ms (0.50×)" in notes[0]
    # the baseline's own target notes: (1.0 - 0.2) / 20000 = 40 us
    assert any(n.startswith("baseline: stat_loop per call") and "lxsub 40.0 us" in n for n in notes)
    assert bench.baseline_notes(_results(lxsub=dict(startup=0.1))) == []


def test_per_call_notes_prefer_the_empty_run_of_the_same_round() -> None:
    """A workload timed with its `zero` run is net of that run, not of the
    start-up row (which here would give a negative, clipped cost)."""
    results = _results(native=dict(startup=0.010, stat_loop=0.050),
                       lxsub=dict(startup=0.900, stat_loop=0.500))
    results["lxsub"]["workloads"]["stat_loop"]["net_median"] = 0.300
    results["native"]["workloads"]["stat_loop"]["net_median"] = 0.020
    notes = "\n".join(bench.target_notes(results))
    assert "native 1.0 us, lxsub 15.0 us" in notes         # 0.3 s / 20000
