"""The conformance harness: LTP's system call tests, natively and under lxsub.

    python3 -m tools.conformance run [--only REGEX] [--names FILE] [--no-native]
                                     [--tarball LTP.tar.xz] [--timeout S] [--doc PATH]
    python3 -m tools.conformance report RESULTS.json [--doc PATH]
    python3 -m tools.conformance build [--tarball LTP.tar.xz]

`run` builds LTP once into the test cache ($LXSUB_TEST_CACHE, as the
fixtures), lays it over the Debian bookworm fixture, runs every selected
entry of `runtest/syscalls` natively and under lxsub in the same run, writes
results.json beside a log, and (for a full run) regenerates
docs/CONFORMANCE.md.  Root only: the native side is a chroot.
Exit status: 0 when the run completed, 1 when a --expect file's passing
tests did not all pass under lxsub, 2 on a harness error.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "src"), str(REPO)]

from tests.fixtures import rootfs  # noqa: E402
from tools.conformance import build, devices, report, run  # noqa: E402

# ../shared/conformance beside the checkout (LXSUB_SHARED names another shared/).
SHARED = Path(os.environ.get("LXSUB_SHARED", REPO.parent / "shared")) / "conformance"


def default_tarball() -> Path:
    found = sorted(SHARED.glob("ltp-*.tar.xz"))
    if not found:
        raise SystemExit(f"conformance: no LTP tarball in {SHARED}; name one with --tarball")
    return found[-1]


def _block_device_tests(tarball: Path | None) -> set[str]:
    """The shared list, completed from the tests' sources (devices.py)."""
    path = SHARED / "needs-block-device.txt"
    listed = set(path.read_text().split()) if path.exists() else set()
    return devices.block_device_tests(listed, tarball, rootfs.cache_dir())


def _names(path: Path) -> list[str]:
    """The first word of each line that is not blank or a comment."""
    return [line.split()[0] for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def _select(entries, only: str | None, names_file: Path | None):
    if names_file:
        wanted = _names(names_file)
        by_name = dict(entries)
        missing = [n for n in wanted if n not in by_name]
        if missing:
            raise SystemExit(f"conformance: not in runtest/syscalls: {', '.join(missing[:10])}")
        entries = [(n, by_name[n]) for n in wanted]
    if only:
        entries = [(n, c) for n, c in entries if re.search(only, n)]
    return entries


def _meta(tarball: Path) -> dict:
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    return {"date": time.strftime("%Y-%m-%d"), "commit": commit or "?",
            "tarball": tarball.name, "kernel": platform.release()}


def cmd_run(args) -> int:
    if os.geteuid() != 0:
        raise SystemExit("conformance: run as root (the native side is a chroot)")
    tarball = Path(args.tarball) if args.tarball else default_tarball()
    cache = rootfs.cache_dir()
    subset = _names(Path(args.names)) if args.names else None
    ltp_root = build.build(tarball, cache, names=subset)
    debian = rootfs.debian_tarball()
    work = Path(tempfile.mkdtemp(prefix="conformance-", dir=cache))
    os.chmod(work, 0o755)
    build.log(f"laying out the tree in {work}")
    tree_tar = run.lay_out_tree(debian, ltp_root, work / "tree")
    entries = _select(run.read_runtest(ltp_root), args.only, Path(args.names) if args.names else None)
    build.log(f"{len(entries)} entries; log: {work / 'results.log'}")
    envs = [] if args.no_native else [run.Native(work / "tree")]
    envs.append(run.Lxsub(tree_tar, work / "lx", REPO / "src"))
    log = open(work / "results.log", "a")
    t0 = time.monotonic()
    counts: dict[str, int] = {}

    def on_result(env: str, res: run.Result) -> None:
        counts[env] = counts.get(env, 0) + 1
        log.write(json.dumps({"env": env, **res.as_dict()}) + "\n")
        log.flush()
        if not args.quiet:
            print(f"[{time.monotonic() - t0:6.0f}s] {env:6} {counts[env]:4}/{len(entries)} "
                  f"{res.name:24} {res.status}", file=sys.stderr, flush=True)

    try:
        results = run.run_all(envs, entries, args.timeout, on_result)
    finally:
        for env in envs:
            env.close()
        log.close()
        # Keep the results, the log and lxsub's own logs (why an instance
        # ended, the provider's warnings), not the trees (hundreds of MB each).
        for own_log in (work / "lx" / "home").glob("*.log"):
            shutil.copy(own_log, work / f"lxsub-{own_log.name}")
        for bulky in (work / "tree", work / "lx"):
            shutil.rmtree(bulky, ignore_errors=True)
        (work / "tree.tar").unlink(missing_ok=True)
    data = {env: [r.as_dict() for r in rs] for env, rs in results.items()}
    data["meta"] = {**_meta(tarball), "seconds": round(time.monotonic() - t0)}
    out = work / "results.json"
    out.write_text(json.dumps(data, indent=1))
    print(out)
    full = not args.only and not args.names
    if args.doc or full:
        doc = Path(args.doc) if args.doc else REPO / "docs" / "CONFORMANCE.md"
        report.write(doc, data, _block_device_tests(tarball), data["meta"])
        build.log(f"wrote {doc}")
    _print_summary(data)
    return _check_expectations(data, Path(args.expect)) if args.expect else 0


def _print_summary(data: dict) -> None:
    for env in ("native", "lxsub"):
        if env in data:
            c = {}
            for r in data[env]:
                c[r["status"]] = c.get(r["status"], 0) + 1
            print(f"{env}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())), file=sys.stderr)


def _check_expectations(data: dict, expect: Path) -> int:
    """Every test the file expects to pass must pass under lxsub."""
    got = {r["name"]: r for r in data["lxsub"]}
    bad = []
    for line in expect.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, status = line.split()[:2]
        if status == "pass" and got.get(name, {}).get("status") != "pass":
            r = got.get(name, {"status": "not run", "problem": ""})
            bad.append(f"{name}: {r['status']} {r['problem']}")
    for b in bad:
        print(f"conformance: expected to pass: {b}", file=sys.stderr)
    return 1 if bad else 0


def cmd_report(args) -> int:
    data = json.loads(Path(args.results).read_text())
    doc = Path(args.doc) if args.doc else REPO / "docs" / "CONFORMANCE.md"
    tarball = Path(args.tarball) if args.tarball else default_tarball()
    report.write(doc, data, _block_device_tests(tarball), data.get("meta", {}))
    print(doc)
    return 0


def cmd_build(args) -> int:
    names = _names(Path(args.names)) if args.names else None
    print(build.build(Path(args.tarball) if args.tarball else default_tarball(),
                      rootfs.cache_dir(), names=names))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m tools.conformance", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run LTP natively and under lxsub")
    r.add_argument("--tarball", help="LTP source tarball (default: ../shared/conformance/ltp-*.tar.xz)")
    r.add_argument("--only", help="only entries whose name matches this regular expression")
    r.add_argument("--names", help="only the entries named in this file (first word of each line)")
    r.add_argument("--expect", help="fail (exit 1) unless the tests this file marks 'pass' pass under lxsub")
    r.add_argument("--no-native", action="store_true", help="skip the native run")
    r.add_argument("--timeout", type=float, default=60.0, help="seconds per entry (default 60)")
    r.add_argument("--doc", help="write the report here (default for a full run: docs/CONFORMANCE.md)")
    r.add_argument("-q", "--quiet", action="store_true", help="no line per entry")
    rep = sub.add_parser("report", help="regenerate the report from a results.json")
    rep.add_argument("results")
    rep.add_argument("--doc")
    rep.add_argument("--tarball", help="the LTP source the results came from (default: the shared one)")
    b = sub.add_parser("build", help="build LTP into the cache")
    b.add_argument("--tarball")
    b.add_argument("--names", help="build only what these runtest entries need")
    args = p.parse_args(argv)
    return {"run": cmd_run, "report": cmd_report, "build": cmd_build}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
