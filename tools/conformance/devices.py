"""Which LTP entries need a block device, read from the tests' own source.

../shared/conformance/needs-block-device.txt lists the tests whose
`struct tst_test` declares a device (`needs_device`, `mount_device`,
`format_device`, `all_filesystems`) by the name of their source.  Two kinds
of entry that acquire one are missing from it:

- `NAME_64`: NAME.c built again with 64-bit offsets (the same struct);
- the old API (`tst_acquire_device()` called from setup) that declares
  nothing in a struct.

Both are found here from the source tarball, so the report counts every
test that needs a device apart, as the list meant to.  The scan reads the
tarball once and keeps its answer beside the LTP build in the cache.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from pathlib import Path

from tools.conformance.build import parse_runtest

SYSCALLS = "testcases/kernel/syscalls/"
# A struct tst_test field that asks for a device, or the old API's call.
_NEEDS_DEVICE = re.compile(rb"\.(needs_device|mount_device|format_device|all_filesystems)\s*=\s*1"
                           rb"|\btst_acquire_device\s*\(")


def _in_tree(name: str) -> str:
    """A member's path from the source tree's top, with or without a
    leading directory in the tarball."""
    name = name.removeprefix("./")
    first, _, rest = name.partition("/")
    return rest if rest and first not in ("testcases", "runtest") and first.startswith("ltp") else name


def _sources_needing_a_device(tarball: Path) -> tuple[set[str], list[tuple[str, str]]]:
    """(names of syscalls test sources that need a device, runtest entries)."""
    needing: set[str] = set()
    runtest = ""
    with tarfile.open(tarball, "r:xz") as tar:
        for member in tar:
            path = _in_tree(member.name)
            if not member.isfile():
                continue
            if path == "runtest/syscalls":
                runtest = tar.extractfile(member).read().decode()
            elif path.startswith(SYSCALLS) and path.endswith(".c"):
                if _NEEDS_DEVICE.search(tar.extractfile(member).read()):
                    needing.add(Path(path).stem)
    return needing, parse_runtest(runtest)


def entries_needing_a_device(listed: set[str], needing: set[str],
                             entries: list[tuple[str, str]]) -> set[str]:
    """The runtest entries that need a block device: listed by name, or
    running a program built from a source that asks for one (PROG_64 and
    PROG_16 are PROG.c built again)."""
    found = set(listed)
    for name, command in entries:
        program = command.split()[0] if command.split() else name
        base = re.sub(r"_(64|16)$", "", program)
        if {program, base} & (needing | listed) or re.sub(r"_(64|16)$", "", name) in listed:
            found.add(name)
    return found


def block_device_tests(listed: set[str], tarball: Path | None, cache: Path | None) -> set[str]:
    """`listed`, completed from the tarball's sources when one is given;
    the scan's result is cached under `cache` by the tarball's hash."""
    if tarball is None or not tarball.exists():
        return set(listed)
    key = hashlib.sha256(f"{tarball.resolve()}:{tarball.stat().st_size}:{tarball.stat().st_mtime_ns}"
                         .encode()).hexdigest()[:12]
    saved = cache / f"ltp-block-device-{key}.json" if cache else None
    if saved and saved.exists():
        data = json.loads(saved.read_text())
        needing, entries = set(data["sources"]), [tuple(e) for e in data["entries"]]
    else:
        needing, entries = _sources_needing_a_device(tarball)
        if saved:
            saved.write_text(json.dumps({"sources": sorted(needing), "entries": entries}))
    return entries_needing_a_device(listed, needing, entries)
