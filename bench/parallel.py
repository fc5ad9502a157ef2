"""A parallel build under lxsub: -P1 against -P2 (and more), side by side.

    python3 bench/parallel.py [--work DIR] [--runs N] [--files N] [--jobs 1,2] [--native]
                              [--workers 0,auto] [--nice N]

Compiles N small C files with `xargs -P<jobs> cc -O2 -c` inside the Debian
bookworm rootfs fixture (the distro has gcc but no make), alternating the
job counts run by run so that load from others on the machine falls on all
of them alike, and prints the median wall time of each and the speed-up of
each over -P1. `--native` times the same in a chroot of the rootfs (root).
`--workers` times lxsub once per LX_WORKERS setting (kernel/workers.py),
restarting the manager for each, and also prints the CPU time of the
provider's own thread and of its workers. `--nice -20` runs everything
ahead of other work on a shared machine (root). The lxsub distro and the
chroot are kept in --work between runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CLEAN_ENV = ["/usr/bin/env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "HOME=/root", "LANG=C.UTF-8", "TERM=dumb"]
SRC = "/opt/par"

# Each file includes a few headers (path lookups, opens, mmaps in cc1) and
# has a little code to optimise: about what a small project's file is.
C_FILE = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
struct item%(i)d { int key; double value; char name[16]; };
static int cmp%(i)d(const void *a, const void *b) {
    const struct item%(i)d *x = a, *y = b;
    return (x->key > y->key) - (x->key < y->key);
}
double work%(i)d(int n) {
    struct item%(i)d *v = calloc(n, sizeof *v);
    double s = 0;
    for (int k = 0; k < n; k++) { v[k].key = (k * 7919) %% 1000; v[k].value = k * 0.5;
        snprintf(v[k].name, sizeof v[k].name, "n%%d", k); }
    qsort(v, n, sizeof *v, cmp%(i)d);
    for (int k = 0; k < n; k++) s += v[k].value * strlen(v[k].name);
    free(v);
    return s;
}
"""


def setup_script(files: int) -> str:
    lines = ["set -e", f"rm -rf {SRC}", f"mkdir -p {SRC}", f"cd {SRC}"]
    for i in range(files):
        body = (C_FILE % {"i": i}).replace("'", "'\\''")
        lines.append(f"printf '%s' '{body}' > f{i}.c")
    return "\n".join(lines) + "\n"


def build_line(jobs: int) -> str:
    return f"cd {SRC} && rm -f *.o && ls *.c | xargs -P{jobs} -n1 cc -O2 -c && ls *.o | wc -l"


def lx_env(work: Path) -> dict:
    env = dict(os.environ)
    env["LX_HOME"] = str(work / "lxhome")
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def prepare_lx(work: Path, tarball: Path, files: int) -> list[str]:
    env = lx_env(work)
    if not (work / "lxdistro").exists():
        subprocess.run([sys.executable, "-m", "lxsub", "--import", "par", str(work / "lxdistro"),
                        str(tarball)], env=env, check=True, stdout=subprocess.DEVNULL)
    prefix = [sys.executable, "-m", "lxsub", "-d", "par", "-e"]
    subprocess.run(prefix + ["/bin/sh", "-c", setup_script(files)], env=env, check=True)
    return prefix


def prepare_native(work: Path, tarball: Path, files: int) -> list[str]:
    root = work / "rootfs"
    if not root.exists():
        root.mkdir(parents=True)
        subprocess.run(["tar", "-xzf", str(tarball), "-C", str(root)], check=True)
    prefix = ["chroot", str(root)] + CLEAN_ENV
    subprocess.run(prefix + ["/bin/sh", "-c", setup_script(files)], check=True)
    return prefix


def restart_manager(env: dict, nice: int) -> None:
    """A manager (and so an instance) with env's LX_WORKERS and niceness."""
    subprocess.run([sys.executable, "-m", "lxsub", "--shutdown"], env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run(["nice", "-n", str(nice), sys.executable, "-m", "lxsub", "-d", "par", "-e", "/bin/true"],
                   env=env, check=True)


def provider_cpu(env: dict) -> dict[str, float]:
    """CPU seconds of the instance's provider thread and of each worker."""
    home = env["LX_HOME"].encode()
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if b"LX_HOME=" + home not in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"lxsub.manager.daemon" in cmd:
            out[pid] = (int(fields[11]) + int(fields[12])) / tick
    return out


def time_once(prefix: list[str], env: dict | None, jobs: int, files: int) -> float:
    t = time.monotonic()
    out = subprocess.run(prefix + ["/bin/sh", "-c", build_line(jobs)], env=env,
                         capture_output=True, text=True)
    took = time.monotonic() - t
    if out.returncode != 0 or out.stdout.strip() != str(files):
        raise SystemExit(f"build at -P{jobs} failed ({out.returncode}): {out.stdout}{out.stderr}")
    return took


def measure(name: str, prefix: list[str], env: dict | None, jobs: list[int], runs: int,
            files: int) -> dict[int, list[float]]:
    times: dict[int, list[float]] = {j: [] for j in jobs}
    time_once(prefix, env, jobs[0], files)          # warm caches
    for _ in range(runs):
        for j in jobs:
            times[j].append(time_once(prefix, env, j, files))
    base = statistics.median(times[jobs[0]])
    for j in jobs:
        med = statistics.median(times[j])
        print(f"{name:7} -P{j}: median {med:6.2f} s  speed-up {base / med:4.2f}x  "
              f"runs {' '.join(f'{t:.2f}' for t in times[j])}", flush=True)
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/lxsub-bench-parallel")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--files", type=int, default=48)
    ap.add_argument("--jobs", default="1,2")
    ap.add_argument("--native", action="store_true")
    ap.add_argument("--workers", default="", help="LX_WORKERS settings to compare, e.g. 0,auto")
    ap.add_argument("--nice", type=int, default=0)
    args = ap.parse_args(argv)
    from tests.fixtures.rootfs import debian_tarball
    tarball = debian_tarball()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    jobs = [int(j) for j in args.jobs.split(",")]
    if args.native:
        measure("native", prepare_native(work, tarball, args.files), None, jobs, args.runs, args.files)
    prefix = prepare_lx(work, tarball, args.files)
    if not args.workers:
        measure("lxsub", prefix, lx_env(work), jobs, args.runs, args.files)
        return 0
    for setting in args.workers.split(","):
        env = lx_env(work)
        env["LX_WORKERS"] = setting
        restart_manager(env, args.nice)
        before = provider_cpu(env)
        measure(f"w={setting}", prefix, env, jobs, args.runs, args.files)
        after = provider_cpu(env)
        spent = {pid: after[pid] - before.get(pid, 0.0) for pid in after}
        print(f"  provider processes' CPU (manager, provider, workers): "
              f"{' '.join(f'{t:.2f}s' for t in spent.values())}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
