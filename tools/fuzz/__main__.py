"""`python3 -m tools.fuzz requests|syscalls [--seconds N] [--seed S] ...`

    requests  hostile clients of the lx manager's and instances' sockets
              (run as the user whose manager it fuzzes; see requests.py)
    syscalls  random system calls from a non-root user inside a distro, with
              a second session that must keep working (see syscalls.py)

Each runs for --seconds (as long as asked), prints a JSON summary as its
last line and exits 0 only if lxsub stayed up and answered throughout.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("requests", "syscalls"):
        print(__doc__, file=sys.stderr)
        return 64
    if argv[0] == "requests":
        from tools.fuzz import requests as fuzzer
    else:
        from tools.fuzz import syscalls as fuzzer
    return fuzzer.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
