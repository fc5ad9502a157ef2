#!/usr/bin/env python3
"""Time the same work natively (chroot), under lxsub and under proot.

    python3 bench/run.py [--quick] [--runs N] [--only NAME,...] [--keep]

Uses the cached Debian bookworm rootfs tarball of tests/fixtures/rootfs.py
(built on first use; needs root and debootstrap). In a temporary directory it
extracts one copy of the rootfs for `chroot` (needs root) and `proot -0 -r`
(Debian package proot), and imports the tarball once into a bench-owned
$LX_HOME for `python3 -m lxsub -d bench -e ...`. The C workloads are compiled
once inside each rootfs with its own gcc. Each workload is timed with
hyperfine (--export-json) when present, else by subprocess timing, one run of each
environment per round (interleaved, so machine drift hits all alike);
the table gives median wall times and the ratios lxsub/native, lxsub/proot.
A fourth environment, `seccomp`, is the chroot under an allow-all seccomp
filter (seccomp_allow.c): the floor for the compute and native-call loops,
which any design that filters system calls with seccomp pays.
Results also go to bench/results.json (not committed).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CLEAN_ENV = ["/usr/bin/env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "HOME=/root", "LANG=C.UTF-8", "TERM=dumb"]

# -- the workloads' C programs ----------------------------------------------

C_SOURCES = {
    "compute": r"""
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 250000000L;
    unsigned long x = 88172645463325252UL, s = 0;
    for (long i = 0; i < n; i++) {      /* xorshift: no syscalls, no memory */
        x ^= x << 13; x ^= x >> 7; x ^= x << 17; s += x;
    }
    printf("%lu\n", s);
    return 0;
}
""",
    "native_sys": r"""
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {   /* a syscall neither lxsub nor proot stops */
    long n = argc > 1 ? atol(argv[1]) : 1000000L;
    char c;
    int fd = open("/dev/zero", O_RDONLY);
    if (fd < 0) return 2;
    for (long i = 0; i < n; i++)
        if (read(fd, &c, 1) != 1) return 1;
    return 0;
}
""",
    "seccomp_allow": r"""
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(int argc, char **argv) {   /* allow-all seccomp filter, then exec argv[1..] */
    struct sock_filter allow = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    struct sock_fprog prog = {1, &allow};
    if (argc < 2 || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
            || syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog)) {
        perror("seccomp_allow");
        return 126;
    }
    execv(argv[1], argv + 1);
    perror("seccomp_allow: execv");
    return 127;
}
""",
    "stat_loop": r"""
#include <stdlib.h>
#include <sys/stat.h>
int main(int argc, char **argv) {   /* a path call the provider answers */
    long n = argc > 1 ? atol(argv[1]) : 20000L;
    struct stat st;
    for (long i = 0; i < n; i++)
        if (stat("/etc/passwd", &st) != 0) return 1;
    return 0;
}
""",
    "spawn": r"""
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {   /* fork + exec /bin/true + wait */
    long n = argc > 1 ? atol(argv[1]) : 200L;
    for (long i = 0; i < n; i++) {
        pid_t p = fork();
        if (p < 0) return 1;
        if (p == 0) { execl("/bin/true", "true", (char *)0); _exit(127); }
        int st;
        if (waitpid(p, &st, 0) != p || !WIFEXITED(st) || WEXITSTATUS(st)) return 1;
    }
    return 0;
}
""",
}

B = "/opt/bench"
BUILD_FILES = 32   # small C files of the parallel build workload


def build_sources() -> dict[str, str]:
    """A small C project: BUILD_FILES units of a few functions each (a
    compiler's real work: headers, optimisation) and a Makefile linking them."""
    files = {}
    for i in range(BUILD_FILES):
        files[f"u{i:02d}.c"] = f"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
struct rec{i} {{ char name[32]; long v[8]; double w; }};
static int cmp{i}(const void *a, const void *b) {{
    const struct rec{i} *x = a, *y = b;
    return (x->v[{i} % 8] > y->v[{i} % 8]) - (x->v[{i} % 8] < y->v[{i} % 8]);
}}
long unit{i}(long n) {{
    struct rec{i} *r = calloc(n, sizeof *r);
    long s = 0;
    for (long k = 0; k < n; k++) {{
        snprintf(r[k].name, sizeof r[k].name, "r%ld-{i}", k);
        for (int j = 0; j < 8; j++) r[k].v[j] = (k * {i + 3} + j * 7) % 101;
        r[k].w = r[k].v[0] * 0.5 + strlen(r[k].name);
    }}
    qsort(r, n, sizeof *r, cmp{i});
    for (long k = 0; k < n; k++) s += r[k].v[{i} % 8] + (long)r[k].w;
    free(r);
    return s;
}}
"""
    decls = "".join(f"long unit{i}(long);\n" for i in range(BUILD_FILES))
    calls = "".join(f"    s += unit{i}(n);\n" for i in range(BUILD_FILES))
    files["main.c"] = (f"#include <stdio.h>\n{decls}int main(void) {{\n    long n = 100, s = 0;\n"
                       f"{calls}    printf(\"%ld\\n\", s);\n    return 0;\n}}\n")
    objs = " ".join([f"u{i:02d}.o" for i in range(BUILD_FILES)] + ["main.o"])
    files["Makefile"] = (f"OBJS = {objs}\nprog: $(OBJS)\n\tcc -o $@ $(OBJS)\n"
                         "%.o: %.c\n\tcc -O2 -c -o $@ $<\n"
                         "clean:\n\trm -f prog $(OBJS)\n")
    return files


TAR_SRC = ["/usr/lib/python3.11", "/usr/share/perl"]   # ~50 MB, a few thousand files
NATIVE_CALLS = 5_000_000


@dataclass
class Workload:
    name: str
    label: str
    argv: list[str]
    prepare: list[str] | None = None   # untimed, before each run
    # A host shell line around the command: {cmd} is the environment's command
    # line, {data} the host file PIPE_DATA (made once): e.g. a host pipeline.
    shell: str = ""
    # Environments not timed for this workload, with the reason (in the notes).
    skip: dict[str, str] = field(default_factory=dict)
    # The same command doing none of the work (a count of 0), timed right
    # after it in each round: the work's own cost is the difference. Start-up
    # varies from run to run on a loaded machine far more than the work.
    zero: list[str] | None = None


WORKLOADS = [
    Workload("startup", "/bin/true (startup cost)", ["/bin/true"]),
    Workload("compute", "compute loop (C)", [f"{B}/compute"]),
    Workload("native_sys", f"{NATIVE_CALLS // 10**6}M read() syscalls (native)",
             [f"{B}/native_sys", str(NATIVE_CALLS)],
             skip={"proot": "proot stops at every system call on this kernel (no seccomp "
                            "acceleration): millions of calls take minutes"}),
    Workload("stat_loop", "20k stat(\"/etc/passwd\") (trapped)", [f"{B}/stat_loop", "20000"],
             zero=[f"{B}/stat_loop", "0"]),
    Workload("find", "find /usr > /dev/null", ["/usr/bin/find", "/usr"]),
    Workload("spawn", "200 x fork+exec /bin/true", [f"{B}/spawn", "200"], zero=[f"{B}/spawn", "0"]),
    Workload("tar", "tar -xf ~50 MB tarball", ["/bin/tar", "-xf", f"{B}/data.tar", "-C", "/tmp/bench-x"],
             prepare=["/bin/sh", "-c", "rm -rf /tmp/bench-x && mkdir /tmp/bench-x"]),
    Workload("python", "python3 -c pass", ["/usr/bin/python3", "-c", "pass"], zero=["/bin/true"]),
    # A parallel build: make at -j1 and -j2 of the same BUILD_FILES+1 units
    # (each run from clean); the -j2/-j1 speed-up is in the notes.
    Workload("make_j1", f"make -j1 ({BUILD_FILES + 1} C files)", ["/usr/bin/make", "-s", "-j1", "-C", f"{B}/build"],
             prepare=["/usr/bin/make", "-s", "-C", f"{B}/build", "clean"]),
    Workload("make_j2", f"make -j2 ({BUILD_FILES + 1} C files)", ["/usr/bin/make", "-s", "-j2", "-C", f"{B}/build"],
             prepare=["/usr/bin/make", "-s", "-C", f"{B}/build", "clean"]),
    # 100 MB from a host file through the environment's cat into a host pipe:
    # the data path should be the host kernel's alone (cat reads and writes
    # lx's own descriptors), so lxsub should be near native.
    Workload("pipe", "100 MB: host file > cat > host pipe", ["/bin/cat"],
             shell="{cmd} < {data} | cat > /dev/null"),
]

PIPE_MB = 100
PIPE_DATA: Path | None = None

SETUP_SCRIPT = f"""
set -e
mkdir -p {B}
cd {B}
for f in {' '.join(C_SOURCES)}; do gcc -O2 -o $f $f.c; done
./compute 1000 >/dev/null
tar -cf {B}/data.tar {' '.join(TAR_SRC)} 2>/dev/null
mkdir -p /tmp/bench-x
if [ -f make.deb ]; then
    dpkg -i make.deb >/dev/null
    make -s -C build; ./build/prog >/dev/null; make -s -C build clean
fi
ls -l {B}/data.tar
"""


# -- environments -----------------------------------------------------------

@dataclass
class Env:
    name: str
    prefix: list[str]
    env: dict = field(default_factory=lambda: dict(os.environ))
    skipped: str = ""
    limit: int = 0      # seconds a timed command may take (coreutils timeout), 0: none
    only: tuple[str, ...] = ()   # the workloads timed here, if not all

    def argv(self, cmd: list[str]) -> list[str]:
        guard = ["timeout", "-k", "5", str(self.limit)] if self.limit else []
        return guard + self.prefix + cmd

    def run(self, cmd: list[str], **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(cmd), env=self.env, **kw)

    def command(self, w: "Workload") -> list[str]:
        """The timed command line of workload w."""
        if not w.shell:
            return self.argv(w.argv)
        line = w.shell.format(cmd=shlex.join(self.argv(w.argv)), data=shlex.quote(str(PIPE_DATA)))
        return ["/bin/sh", "-c", line]


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def fetch_make_deb(work: Path) -> bytes | None:
    """Debian's make package (the minbase fixture has none), downloaded with
    the host's apt; None if that fails (the build workloads then fail with
    a note). Installed in each environment with its own dpkg."""
    r = subprocess.run(["apt-get", "download", "make"], cwd=work, capture_output=True, text=True)
    debs = sorted(work.glob("make_*.deb"))
    if r.returncode != 0 or not debs:
        log(f"apt-get download make failed: {r.stderr.strip()[-200:]}; no build workloads")
        return None
    return debs[0].read_bytes()


MAKE_DEB: bytes | None = None


def write_sources(env: Env, root: Path | None) -> None:
    """Put the C sources at /opt/bench (the build's at /opt/bench/build)
    and make's package inside the environment."""
    files: dict[str, str | bytes] = {f"{name}.c": src for name, src in C_SOURCES.items()}
    files.update({f"build/{name}": src for name, src in build_sources().items()})
    if MAKE_DEB is not None:
        files["make.deb"] = MAKE_DEB
    if root is not None:
        (root / B.lstrip("/") / "build").mkdir(parents=True, exist_ok=True)
        for name, src in files.items():
            (root / B.lstrip("/") / name).write_bytes(src if isinstance(src, bytes) else src.encode())
        return
    env.run(["/bin/mkdir", "-p", f"{B}/build"], check=True)
    # one tar stream instead of a command per file
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, src in files.items():
            data = src if isinstance(src, bytes) else src.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    env.run(["/bin/tar", "-xf", "-", "-C", B], input=buf.getvalue(), check=True)


def setup_env(env: Env, root: Path | None) -> None:
    t = time.monotonic()
    write_sources(env, root)
    r = env.run(["/bin/sh", "-c", SETUP_SCRIPT], capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"setup in {env.name} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    log(f"{env.name}: compiled workloads, made tarball ({time.monotonic() - t:.1f} s): "
        f"{r.stdout.strip().splitlines()[-1]}")


def extract_rootfs(tarball: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    argv = ["tar", "-xzf", str(tarball), "-C", str(dest)]
    if os.geteuid() != 0:
        argv[1:1] = ["--no-same-owner", "--exclude=./dev/*"]
    t = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode not in (0, 2) or not (dest / "usr/bin/gcc").exists():
        raise RuntimeError(f"extracting {tarball} failed: {r.stderr[-2000:]}")
    log(f"extracted rootfs to {dest} ({time.monotonic() - t:.1f} s)")


BASELINE: Path | None = None     # --baseline: another lxsub source tree, timed beside this one


def lx_environment(name: str, work: Path, src: Path, tarball: Path,
                   extra: dict[str, str] | None = None) -> Env:
    """lxsub from the source tree `src`, with its own $LX_HOME (so its own
    manager) where the tarball is imported as distro `bench`; `extra`:
    more environment for its manager (LX_PLATFORM...)."""
    lx_env = dict(os.environ)
    lx_env.update(extra or {})
    lx_env["LX_HOME"] = str(work / f"lxhome-{name}")
    lx_env["PYTHONPATH"] = str(src) + os.pathsep + lx_env.get("PYTHONPATH", "")
    # As for an installed lx: compiled modules are cached, not compiled at every start.
    lx_env.pop("PYTHONDONTWRITEBYTECODE", None)
    t = time.monotonic()
    subprocess.run([sys.executable, "-m", "lxsub", "--import", "bench", str(work / f"lxdistro-{name}"),
                    str(tarball)], env=lx_env, check=True, stdout=subprocess.DEVNULL)
    log(f"imported the Debian tarball into {name} ({time.monotonic() - t:.1f} s)")
    return Env(name, [sys.executable, "-m", "lxsub", "-d", "bench", "-e"], env=lx_env)


def make_envs(work: Path, tarball: Path) -> list[Env]:
    is_root = os.geteuid() == 0
    proot = shutil.which("proot")
    root = work / "rootfs"
    envs = []

    if is_root or proot:
        extract_rootfs(tarball, root)
    native = Env("native", ["chroot", str(root)] + CLEAN_ENV)
    if not is_root:
        native.skipped = "not root: chroot needs root"
    envs.append(native)

    lx = lx_environment("lxsub", work, REPO / "src", tarball)
    envs.append(lx)
    # The ptrace platform (kernels without seccomp user-notify, Linux < 5.9)
    # with every newer kernel feature hidden: what lxsub costs on RHEL 8.
    envs.append(lx_environment("lxsub-ptrace", work, REPO / "src", tarball,
                               {"LX_PLATFORM": "ptrace", "LX_HIDE_FEATURES": "all"}))
    if BASELINE is not None:
        envs.append(lx_environment("lxsub-base", work, BASELINE, tarball))

    # Native under an allow-all seccomp filter: what any seccomp-based design
    # pays on a call it lets through (the kernel's filtered syscall entry).
    floor = Env("seccomp", ["chroot", str(root)] + CLEAN_ENV + [f"{B}/seccomp_allow"],
                skipped=native.skipped, only=("startup", "compute", "native_sys"))
    envs.append(floor)

    # The lx client's own interpreter, started bare: the floor under lx's start-up.
    envs.append(Env("python-host", [sys.executable, "-c", "pass"], env=lx.env, only=("startup",)))

    pr = Env("proot", [proot or "proot", "-0", "-r", str(root), "-b", "/dev", "-b", "/proc",
                       "-w", "/"] + CLEAN_ENV)
    pr.env.pop("LD_PRELOAD", None)
    if not proot:
        pr.skipped = "proot not installed (apt-get install proot)"
    envs.append(pr)

    global MAKE_DEB
    MAKE_DEB = fetch_make_deb(work)
    # compile and make the tarball in each rootfs: chroot's and proot's share one
    if not native.skipped:
        setup_env(native, root)
    elif not pr.skipped:
        setup_env(pr, root)
    for env in envs:
        if env.name.startswith("lxsub"):
            setup_env(env, None)
    return envs


# -- timing -----------------------------------------------------------------

def check_once(env: Env, w: Workload) -> str:
    """Run once untimed: '' if fine, else why not."""
    try:
        if w.prepare:
            env.run(w.prepare, check=True, capture_output=True, timeout=600)
        r = subprocess.run(env.command(w), env=env.env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, timeout=900)
    except subprocess.TimeoutExpired:
        return "timed out"
    except subprocess.CalledProcessError as e:
        return f"prepare failed ({e.returncode})"
    if r.returncode == 124:
        return f"timed out after {env.limit} s (hung?)"
    if r.returncode != 0:
        return f"exit {r.returncode}: {r.stderr.decode(errors='replace').strip()[-200:]}"
    return ""


def time_hyperfine(env: Env, w: Workload, runs: int, warmup: int, work: Path) -> list[float]:
    out = work / f"hf-{env.name}-{w.name}.json"
    argv = ["hyperfine", "--runs", str(runs), "--warmup", str(warmup), "--style", "none",
            "--export-json", str(out), "-N"]
    if w.prepare:
        argv += ["--prepare", shlex.join(env.argv(w.prepare))]
    argv.append(shlex.join(env.command(w)))
    limit = (env.limit + 10) * (runs + warmup) * (2 if w.prepare else 1) + 60 if env.limit else None
    r = subprocess.run(argv, env=env.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       text=True, timeout=limit)
    if r.returncode != 0:
        why = " ".join(r.stderr.strip().splitlines()[-2:])[-300:]
        raise RuntimeError(f"hyperfine: {why or f'exit {r.returncode}'}")
    return list(json.loads(out.read_text())["results"][0]["times"])


def time_loop(env: Env, w: Workload, runs: int, warmup: int) -> list[float]:
    times = []
    for i in range(warmup + runs):
        if w.prepare:
            env.run(w.prepare, check=True, capture_output=True)
        t = time.perf_counter()
        subprocess.run(env.command(w), env=env.env, check=True, stdout=subprocess.DEVNULL)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times


def time_interleaved(envs: list[Env], w: Workload, runs: int, warmup: int, results: dict,
                     use_hf: bool, work: Path) -> None:
    """Round after round, one run in each environment: a machine whose speed
    drifts (shared VMs do, by several times) then drifts for all of them alike,
    and the ratios hold."""
    envs = [e for e in envs if e.name not in w.skip and (not e.only or w.name in e.only)]
    times: dict[str, list[float]] = {e.name: [] for e in envs}
    zeros: dict[str, list[float]] = {e.name: [] for e in envs}
    zero_w = Workload(w.name + "-zero", w.label, w.zero) if w.zero else None
    failed: dict[str, str] = {}
    for i in range(warmup + runs):
        for env in envs:
            if env.name in failed:
                continue
            try:
                t = (time_hyperfine(env, w, 1, 0, work) if use_hf else time_loop(env, w, 1, 0))
                if zero_w is not None:
                    z = (time_hyperfine(env, zero_w, 1, 0, work) if use_hf else time_loop(env, zero_w, 1, 0))
                    if i >= warmup:
                        zeros[env.name] += z
            except (subprocess.SubprocessError, OSError, RuntimeError) as e:
                again = check_once(env, w)   # run again alone to say why
                failed[env.name] = (f"{again} ({e})" if again else
                                    f"{e}; a lone re-run succeeded: intermittent")
                log(f"{env.name} {w.name}: FAILED: {failed[env.name]}")
                continue
            if i >= warmup:
                times[env.name] += t
    for env in envs:
        entry: dict = {"label": w.label, "argv": w.argv}
        if env.name in failed:
            entry["error"] = failed[env.name]
        else:
            entry.update(times=times[env.name], median=statistics.median(times[env.name]))
            if zeros[env.name]:
                # per round: the work alone (its run less the empty run after it)
                net = [t - z for t, z in zip(times[env.name], zeros[env.name])]
                entry.update(zero_times=zeros[env.name], net_median=max(statistics.median(net), 0.0))
            log(f"{env.name} {w.name}: median {fmt_time(entry['median'])}")
        results[env.name]["workloads"][w.name] = entry


def hyperfine_usable() -> bool:
    if not shutil.which("hyperfine"):
        return False
    r = subprocess.run(["hyperfine", "--help"], capture_output=True, text=True)
    return "--shell" in r.stdout and "-N" in r.stdout   # -N (no shell) since 1.13


# -- output -----------------------------------------------------------------

def fmt_time(t: float | None) -> str:
    if t is None:
        return "–"
    return f"{t * 1000:.1f} ms" if t < 1 else f"{t:.2f} s"


def fmt_ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "–"
    r = a / b
    return f"{r:.0f}×" if r >= 10 else f"{r:.1f}×" if r >= 1 else f"{r:.2f}×"


def table_rows(results: dict) -> list[list[str]]:
    rows = []
    for w in WORKLOADS:
        med = {e: results[e]["workloads"].get(w.name, {}).get("median") for e in results}
        rows.append([w.label, fmt_time(med.get("native")), fmt_time(med.get("seccomp")),
                     fmt_time(med.get("lxsub")), fmt_time(med.get("lxsub-ptrace")),
                     fmt_time(med.get("proot")),
                     fmt_ratio(med.get("lxsub"), med.get("native")),
                     fmt_ratio(med.get("lxsub"), med.get("seccomp")),
                     fmt_ratio(med.get("lxsub"), med.get("proot")),
                     fmt_ratio(med.get("lxsub-ptrace"), med.get("lxsub")),
                     fmt_ratio(med.get("lxsub-ptrace"), med.get("proot"))])
    return rows


# lxsub is the notify platform; lxsub-ptrace the ptrace platform with every
# newer kernel feature hidden (LX_PLATFORM=ptrace LX_HIDE_FEATURES=all).
HEADER = ["workload", "native", "seccomp", "lxsub", "lxsub-ptrace", "proot", "lxsub/native",
          "lxsub/seccomp", "lxsub/proot", "ptrace/notify", "ptrace/proot"]


def plain_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [HEADER] + rows) for i in range(len(HEADER))]
    line = lambda r: "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i])
                               for i, c in enumerate(r))
    return "\n".join([line(HEADER), line(["-" * w for w in widths])] + [line(r) for r in rows])


def markdown_table(rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(HEADER) + " |", "|---|" + "---:|" * (len(HEADER) - 1)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


# -- main -------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    global WORKLOADS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 runs and no warm-up (default 5 runs after 1 warm-up)")
    ap.add_argument("--runs", type=int, help="timed runs per workload (default 5, quick 2)")
    ap.add_argument("--only", help="comma-separated workload names: "
                    + ",".join(w.name for w in WORKLOADS) + " (rss: the provider's memory)")
    ap.add_argument("--no-hyperfine", action="store_true", help="time with subprocess")
    ap.add_argument("--timeout", type=int, help="seconds one run may take (default 600, quick 120)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--baseline", type=Path, metavar="SRC",
                    help="another lxsub source tree (its src/) timed beside this one, as lxsub-base")
    ap.add_argument("--output", type=Path, default=REPO / "bench" / "results.json")
    args = ap.parse_args(argv)
    runs = args.runs or (2 if args.quick else 5)
    global BASELINE
    BASELINE = args.baseline.resolve() if args.baseline else None
    warmup = 0 if args.quick else 1
    if args.only:
        names = set(args.only.split(","))
        if names & {"pipe", "native_sys", "stat_loop", "spawn", "python"}:
            names.add("startup")   # their notes are net of starting the command
        WORKLOADS = [w for w in WORKLOADS if w.name in names]

    from tests.fixtures.rootfs import FixtureUnavailable, debian_tarball
    try:
        tarball = debian_tarball()
    except FixtureUnavailable as e:
        print(f"cannot get the Debian rootfs tarball: {e}", file=sys.stderr)
        return 2

    use_hf = not args.no_hyperfine and hyperfine_usable()
    work = Path(tempfile.mkdtemp(prefix="lxsub-bench-"))
    log(f"work dir {work}; timing with {'hyperfine' if use_hf else 'subprocess'}, {runs} runs")
    results: dict = {}
    rss: dict[int, int] = {}
    floors: dict[str, float] = {}
    try:
        global PIPE_DATA
        if any(w.shell for w in WORKLOADS):
            PIPE_DATA = work / "pipe.bin"
            with open(PIPE_DATA, "wb") as f:
                for _ in range(PIPE_MB):
                    f.write(os.urandom(1 << 20))
        envs = make_envs(work, tarball)
        live = []
        for env in envs:
            env.limit = args.timeout or (120 if args.quick else 600)
            results[env.name] = {"skipped": env.skipped, "workloads": {}}
            if env.skipped:
                log(f"{env.name}: skipped: {env.skipped}")
            else:
                live.append(env)
        for w in WORKLOADS:
            time_interleaved(live, w, runs, warmup, results, use_hf, work)
        if any(w.name == "stat_loop" for w in WORKLOADS) and (work / "rootfs").is_dir():
            floors = stat_floors(work, runs)
        lx = next((e for e in live if e.name == "lxsub"), None)
        if lx and (not args.only or "rss" in args.only.split(",")):
            rss = provider_rss(lx)
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    rows = table_rows(results)
    notes = [f"{e}: skipped ({r['skipped']})" for e, r in results.items() if r["skipped"]]
    notes += [f"{e} {w}: failed ({d['error']})" for e, r in results.items()
              for w, d in r["workloads"].items() if "error" in d]
    notes += [f"{e} {w.name}: not timed ({why})" for w in WORKLOADS for e, why in w.skip.items()
              if e in results and not results[e]["skipped"]]
    notes += throughput_notes(results) + per_call_notes(results) + target_notes(results)
    notes += baseline_notes(results)
    if floors:
        notes.append(floor_note(floors, results))
    if rss:
        notes.append("provider RSS (target < 40 MB): " + ", ".join(
            f"{n} busy process{'es' if n > 1 else ''} {kb / 1024:.1f} MB" for n, kb in rss.items()))
    meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(),
            "kernel": platform.release(), "cpu": _cpu(), "runs": runs, "quick": args.quick,
            "timer": "hyperfine" if use_hf else "subprocess", "tarball": str(tarball)}
    print(f"\nMedian wall time of {runs} runs ({meta['timer']}); kernel {meta['kernel']}; "
          f"{meta['cpu']}\n")
    print(plain_table(rows))
    for n in notes:
        print(f"  note: {n}")
    print("\nMarkdown:\n")
    print(markdown_table(rows))
    for n in notes:
        print(f"\n*{n}*")
    args.output.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    log(f"wrote {args.output}")
    return 0


def throughput_notes(results: dict) -> list[str]:
    """MB/s of the pipe workload in each environment, and lxsub's share of native."""
    speed = {}
    for e, r in results.items():
        median = r["workloads"].get("pipe", {}).get("median")
        if median:
            speed[e] = PIPE_MB / median
    if not speed:
        return []
    parts = [f"{e} {v:.0f} MB/s" for e, v in speed.items()]
    if "lxsub" in speed and "native" in speed:
        parts.append(f"lxsub/native {speed['lxsub'] / speed['native']:.2f}")
    notes = ["pipe throughput, start-up included: " + ", ".join(parts)]
    # Net of each environment's own start-up (the /bin/true workload): the data path.
    net = {}
    for e, r in results.items():
        median = r["workloads"].get("pipe", {}).get("median")
        start = r["workloads"].get("startup", {}).get("median")
        if median and start is not None and median > start:
            net[e] = PIPE_MB / (median - start)
    if net:
        parts = [f"{e} {v:.0f} MB/s" for e, v in net.items()]
        if "lxsub" in net and "native" in net:
            parts.append(f"lxsub/native {net['lxsub'] / net['native']:.2f} (target >= 0.5)")
        notes.append("pipe throughput, start-up (/bin/true) subtracted: " + ", ".join(parts))
    return notes


def per_call_notes(results: dict) -> list[str]:
    """The native-call loop per call, each environment's start-up (/bin/true)
    subtracted: what a syscall costs once the program runs."""
    cost = {}
    for e, r in results.items():
        median = r["workloads"].get("native_sys", {}).get("median")
        start = r["workloads"].get("startup", {}).get("median")
        if median and start is not None:
            cost[e] = (median - start) / NATIVE_CALLS * 1e9
    if not cost:
        return []
    parts = [f"{e} {v:.0f} ns" for e, v in cost.items()]
    for base in ("native", "seccomp"):
        if "lxsub" in cost and base in cost and cost[base] > 0:
            parts.append(f"lxsub/{base} {cost['lxsub'] / cost[base]:.2f}")
    return ["native read() per call, start-up subtracted: " + ", ".join(parts)]


def _net(results: dict, env: str, name: str) -> float | None:
    """Workload name's own cost in env: the median per round of its run less
    the empty run after it (Workload.zero), else its median less the
    start-up row's (/bin/true)."""
    w = results.get(env, {}).get("workloads", {})
    if "net_median" in w.get(name, {}):
        return w[name]["net_median"]
    median, start = w.get(name, {}).get("median"), w.get("startup", {}).get("median")
    return None if median is None or start is None else max(median - start, 0.0)


def _median(results: dict, env: str, name: str) -> float | None:
    return results.get(env, {}).get("workloads", {}).get(name, {}).get("median")


def target_notes(results: dict) -> list[str]:
    """The targets of issue 16, each as measured in this run (net of each
    environment's start-up where the target says so)."""
    envs = [e for e in ("native", "lxsub", "proot") if e in results and not results[e]["skipped"]]
    notes = []

    def per(name: str, count: int, unit: str, scale: float, target: str) -> None:
        cost = {e: v * scale / count for e in envs if (v := _net(results, e, name)) is not None}
        if not cost:
            return
        parts = [f"{e} {v:.1f} {unit}" for e, v in cost.items()]
        if "lxsub" in cost and cost.get("native"):
            parts.append(f"lxsub/native {cost['lxsub'] / cost['native']:.1f}x")
        notes.append(f"{name} per call, net of the same program doing no work ({target}): " + ", ".join(parts))

    per("stat_loop", 20000, "us", 1e6, "target lxsub <= 15 us")
    per("spawn", 200, "ms", 1e3, "target lxsub/native <= 2")
    py = {e: v for e in envs if (v := _net(results, e, "python")) is not None}
    if "lxsub" in py and py.get("native"):
        notes.append("python3 -c pass net of /bin/true timed after it (target lxsub/native <= 2): "
                     + ", ".join(f"{e} {fmt_time(v)}" for e, v in py.items())
                     + f", lxsub/native {py['lxsub'] / py['native']:.1f}x")
    find = {e: v for e in envs if (v := _median(results, e, "find")) is not None}
    if "lxsub" in find and find.get("native"):
        notes.append(f"find /usr (target lxsub/native <= 4): lxsub/native "
                     f"{find['lxsub'] / find['native']:.1f}x")
    j1 = {e: v for e in envs if (v := _median(results, e, "make_j1")) is not None}
    j2 = {e: v for e in envs if (v := _median(results, e, "make_j2")) is not None}
    up = [f"{e} {j1[e] / j2[e]:.2f}x" for e in envs if e in j1 and j2.get(e)]
    if up:
        notes.append("make -j2 speed-up over -j1 (target lxsub >= 1.8x): " + ", ".join(up))
    if "lxsub" in j1 and j1.get("native"):
        notes.append(f"make -j1 lxsub/native (target <= 1.5x): {j1['lxsub'] / j1['native']:.2f}x")
    start = {e: v for e in envs if (v := _median(results, e, "startup")) is not None}
    if "lxsub" in start and start.get("proot"):
        notes.append(f"start-up /bin/true (target lxsub <= proot): lxsub {fmt_time(start['lxsub'])}, "
                     f"proot {fmt_time(start['proot'])}, lxsub/proot {start['lxsub'] / start['proot']:.2f}x")
    floor = results.get("python-host", {}).get("workloads", {}).get("startup", {}).get("median")
    if floor is not None and "lxsub" in start:
        notes.append(f"the lx client's interpreter ({sys.executable} -c pass) starts in {fmt_time(floor)}: "
                     f"lxsub's own start-up above it {fmt_time(start['lxsub'] - floor)}")
    return notes


FLOOR_N = 20000


def stat_floors(work: Path, runs: int) -> dict[str, float]:
    """Per-call floors of a trapped stat() on this machine (bench/floor_stat.c
    and floor_stat.py, compiled and run on the host against the extracted
    rootfs), median of `runs` interleaved rounds: the seccomp round trip
    alone ('bare'), with lxsub's host system calls in C ('c'), and the same
    in Python over lxsub's platform layer only ('python')."""
    binary = work / "floor_stat"
    r = subprocess.run(["gcc", "-O2", "-static", "-o", str(binary), str(REPO / "bench" / "floor_stat.c")],
                       capture_output=True, text=True)
    if r.returncode != 0:
        log(f"floor_stat.c did not compile: {r.stderr.strip()[-300:]}")
        return {}
    root = str(work / "rootfs")
    argvs = {"bare": [str(binary), root, str(FLOOR_N), "bare"], "c": [str(binary), root, str(FLOOR_N)],
             "python": [sys.executable, str(REPO / "bench" / "floor_stat.py"), str(binary), root, str(FLOOR_N)]}
    got: dict[str, list[float]] = {k: [] for k in argvs}
    for _ in range(runs):
        for k, argv in argvs.items():
            r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
            if r.returncode != 0:
                log(f"stat floor {k} failed: {r.stderr.strip()[-300:]}")
                return {}
            got[k].append(float(r.stdout))
    floors = {k: statistics.median(v) for k, v in got.items()}
    log("stat floors per call: " + ", ".join(f"{k} {v:.1f} us" for k, v in floors.items()))
    return floors


def floor_note(floors: dict[str, float], results: dict) -> str:
    lx = _net(results, "lxsub", "stat_loop")
    parts = [f"seccomp round trip alone {floors['bare']:.1f} us",
             f"with lxsub's host calls (recv, pread path, openat2, fstat, close, "
             f"process_vm_writev, send, poll) in C {floors['c']:.1f} us",
             f"the same in Python over lxsub's platform layer {floors['python']:.1f} us"]
    if lx is not None:
        parts.append(f"lxsub {lx * 1e6 / 20000:.1f} us")
    return "trapped stat floors per call (bench/floor_stat.c, floor_stat.py): " + "; ".join(parts)


def baseline_notes(results: dict) -> list[str]:
    """With --baseline: each workload's median under the other tree and this
    one, timed in the same rounds, and the target notes as the baseline met them."""
    if "lxsub-base" not in results or results["lxsub-base"]["skipped"]:
        return []
    parts = []
    for w in WORKLOADS:
        old, new = _median(results, "lxsub-base", w.name), _median(results, "lxsub", w.name)
        if old is not None and new is not None:
            parts.append(f"{w.name} {fmt_time(old)} -> {fmt_time(new)} ({fmt_ratio(new, old)})")
    base = {e: r for e, r in results.items() if e != "lxsub"}
    base["lxsub"] = results["lxsub-base"]
    return (["baseline (lxsub-base, --baseline) -> this tree, same rounds: " + ", ".join(parts)]
            + [f"baseline: {n}" for n in target_notes(base)])


def _status_kb(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def _traced_with(token: str) -> dict[int, int]:
    """Host pid -> tracer pid of the processes whose command line holds token
    and that are traced (pico processes: their tracer is the provider)."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if token.encode() in (d / "cmdline").read_bytes().split(b"\0"):
                tracer = _status_kb(int(d.name), "TracerPid")
                if tracer:
                    found[int(d.name)] = tracer
        except (OSError, ValueError):
            continue
    return found


def provider_rss(lx: Env, counts: tuple[int, ...] = (1, 16), settle: float = 2.0) -> dict[int, int]:
    """The provider's peak VmRSS (kB) while N stat loops (trapped calls) run
    in the instance. The provider is found as the tracer of those pico
    processes; they are killed by their host pids afterwards."""
    rss = {}
    for n in counts:
        token = str(900_000_000 + n)
        sh = subprocess.Popen(lx.argv(["/bin/sh", "-c", f"for i in $(seq {n}); do {B}/stat_loop {token} & done; wait"]),
                              env=lx.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while len(procs := _traced_with(token)) < n and time.monotonic() < deadline:
                time.sleep(0.1)
            if len(procs) < n:
                log(f"provider RSS with {n}: only {len(procs)} busy processes appeared")
                continue
            provider = next(iter(procs.values()))
            peak, end = 0, time.monotonic() + settle
            while time.monotonic() < end:
                peak = max(peak, _status_kb(provider, "VmRSS"))
                time.sleep(0.1)
            rss[n] = peak
            log(f"provider {provider} RSS with {n} busy: {peak / 1024:.1f} MB")
        finally:
            for pid in _traced_with(token):
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
            try:
                sh.wait(timeout=30)
            except subprocess.TimeoutExpired:
                sh.kill()
                sh.wait()
    return rss


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} CPUs)"
    except OSError:
        pass
    return platform.processor() or "?"


if __name__ == "__main__":
    raise SystemExit(main())
