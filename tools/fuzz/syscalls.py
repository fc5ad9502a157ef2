"""The syscall fuzzer: random system calls from a non-root user in a distro.

    python3 -m tools.fuzz syscalls --distro NAME [--user USER] [--seconds N]
                                   [--seed S] [--program PATH]

Run as the host user whose distro it is (LX_HOME as that `lx` sees it).
It builds tools/fuzz/sysfuzz.c (static, gcc) unless --program names a
build, copies it into the distro's /tmp and runs it there as USER (not
root) through `lx`: batches of random calls with random arguments, each
batch a child of its own. Meanwhile a second session must keep working:
every second `lx -d NAME -e echo alive` has to answer within 30 s. At the
end: no "provider bug" or traceback in lx.log or manager.log since the
start, and the provider's memory (VmRSS) at the end against after warm-up.
Exit status 0 when all held; the last line is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from lxsub.state import Registry, lx_home

HERE = Path(__file__).resolve().parent
ALIVE_TIMEOUT = 30.0
STALL_DUMP_AFTER = 5.0          # a slower liveness run gets a stack dump of the instance
RSS_GROWTH_KIB = 16 * 1024        # what "flat" allows: caches that fill once


def build(out_dir: Path) -> Path:
    out = out_dir / "sysfuzz"
    subprocess.run(["gcc", "-static", "-O2", "-o", str(out), str(HERE / "sysfuzz.c")],
                   check=True, capture_output=True)
    return out


def lx_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "lxsub", *args]


def _instance_pid(distro: str) -> int | None:
    from lxsub.manager import client
    reply = client.request("status", start=False)
    for i in (reply or {}).get("instances", []):
        if i["distro"] == distro:
            return i["pid"]
    return None


def rss_kib(pid: int | None) -> int | None:
    """A process's resident memory in KiB (None: gone or unknown)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _log_sizes() -> dict[Path, int]:
    return {p: p.stat().st_size for p in (lx_home() / "lx.log", lx_home() / "manager.log")
            if p.exists()}


def _new_log_text(start: dict[Path, int]) -> str:
    text = []
    for p in (lx_home() / "lx.log", lx_home() / "manager.log"):
        if p.exists():
            with open(p, "rb") as f:
                f.seek(start.get(p, 0))
                text.append(f.read().decode(errors="replace"))
    return "\n".join(text)


class SecondSession(threading.Thread):
    """`lx -e echo alive` once a second; records the worst answer time.

    A run slower than STALL_DUMP_AFTER gets one `py-spy dump` of the
    instance (when py-spy is installed): where its thread is while it
    keeps a session waiting is what explains a stall.
    """

    def __init__(self, distro: str, instance_pid: int | None) -> None:
        super().__init__(daemon=True)
        self.distro = distro
        self.instance_pid = instance_pid
        self.stop = threading.Event()
        self.runs = 0
        self.worst = 0.0
        self.failure: str | None = None
        self.stall_dump: str | None = None

    def run(self) -> None:
        while not self.stop.wait(1.0):
            t0 = time.monotonic()
            proc = subprocess.Popen(lx_command("-d", self.distro, "-u", "root", "-e", "echo", "alive"),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    stdin=subprocess.DEVNULL)
            try:
                out, err = self._wait(proc)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                self.failure = f"the second session did not answer within {ALIVE_TIMEOUT:g} s"
                return
            self.worst = max(self.worst, time.monotonic() - t0)
            self.runs += 1
            if proc.returncode != 0 or out != b"alive\n":
                self.failure = (f"the second session failed: exit {proc.returncode}, "
                                f"{err.decode(errors='replace').strip()[-300:]}")
                return

    def _wait(self, proc: subprocess.Popen) -> tuple[bytes, bytes]:
        try:
            return proc.communicate(timeout=STALL_DUMP_AFTER)
        except subprocess.TimeoutExpired:
            if self.stall_dump is None:
                self.stall_dump = dump_stacks(self.instance_pid)
            return proc.communicate(timeout=ALIVE_TIMEOUT - STALL_DUMP_AFTER)


def dump_stacks(pid: int | None) -> str:
    """The Python stacks of a process, by py-spy, or why there are none."""
    spy = shutil.which("py-spy")
    if pid is None or spy is None:
        return "(no stack dump: " + ("no instance" if pid is None else "py-spy is not installed") + ")"
    cp = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, timeout=30)
    return (cp.stdout + cp.stderr).decode(errors="replace")


def run(distro: str, user: str, seconds: float, seed: int, program: Path | None) -> dict:
    rootfs = Registry(lx_home()).get(distro).rootfs
    with tempfile.TemporaryDirectory() as tmp:
        prog = program or build(Path(tmp))
        inside = Path(rootfs) / "tmp" / "sysfuzz"
        shutil.copyfile(prog, inside)
        os.chmod(inside, 0o755)
    warm = subprocess.run(lx_command("-d", distro, "-e", "true"), capture_output=True)
    if warm.returncode != 0:
        raise RuntimeError(f"cannot run in {distro}: {warm.stderr.decode(errors='replace')}")
    logs = _log_sizes()
    pid = _instance_pid(distro)
    rss_start = rss_kib(pid)
    second = SecondSession(distro, pid)
    second.start()
    t0 = time.monotonic()
    fuzz = subprocess.run(lx_command("-d", distro, "-u", user, "--cd", "/tmp", "-e", "/tmp/sysfuzz",
                                     str(seed), str(seconds)),
                          capture_output=True, timeout=seconds + 120, stdin=subprocess.DEVNULL)
    second.stop.set()
    second.join(ALIVE_TIMEOUT + 5)
    rss_end = rss_kib(_instance_pid(distro))
    log_text = _new_log_text(logs)
    problems = []
    if fuzz.returncode != 0:
        problems.append(f"the fuzzer exited {fuzz.returncode}: "
                        f"{fuzz.stderr.decode(errors='replace').strip()[-300:]}")
    if second.failure:
        problems.append(second.failure + (f"; the instance's stacks then: {second.stall_dump}"
                                          if second.stall_dump else ""))
    if _instance_pid(distro) != pid:
        problems.append("the instance was replaced (it died)")
    for bad in ("provider bug", "Traceback"):
        if bad in log_text:
            at = log_text.index(bad)
            problems.append(f"{bad!r} in the logs: {log_text[max(0, at - 200):at + 800]}")
    if rss_start and rss_end and rss_end - rss_start > RSS_GROWTH_KIB:
        problems.append(f"provider memory grew from {rss_start} to {rss_end} KiB")
    return {"seed": seed, "seconds": round(time.monotonic() - t0, 1),
            "fuzzer": _summary_line(fuzz.stdout),
            "second_session_runs": second.runs, "second_session_worst_s": round(second.worst, 2),
            "stall_dump": second.stall_dump,
            "provider_rss_kib": [rss_start, rss_end], "problems": problems}


def _summary_line(out: bytes) -> str:
    """sysfuzz's own last line (random writes to its stdout come before it)."""
    lines = [line for line in out.split(b"\n") if line.startswith(b"batches ")]
    return lines[-1].decode() if lines else "(no summary: the fuzzer did not finish)"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m tools.fuzz syscalls")
    ap.add_argument("--distro", required=True)
    ap.add_argument("--user", default="user", help="the distro's non-root user to fuzz as")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--program", type=Path, help="a sysfuzz already built (default: build it)")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    summary = run(args.distro, args.user, args.seconds, seed, args.program)
    print(json.dumps(summary))
    return 0 if not summary["problems"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
