"""The provider's log: a file under $LX_HOME, never the program's terminal.

`LX_TRACE=1` also prints every trapped syscall to stderr, strace-like.
"""

from __future__ import annotations

import os
import sys
import time


class Log:
    def __init__(self, path: str | None) -> None:
        self.path = path
        self._said: set[str] = set()
        self.trace = bool(os.environ.get("LX_TRACE"))

    def write(self, level: str, msg: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {level} {msg}\n"
        if self.path:
            try:
                with open(self.path, "a") as f:
                    f.write(line)
            except OSError:
                pass
        if self.trace:
            sys.stderr.write("lx: " + line)

    def warn(self, msg: str) -> None:
        self.write("WARN", msg)

    def once(self, key: str, msg: str) -> None:
        if key not in self._said:
            self._said.add(key)
            self.write("INFO", msg)

    def syscall(self, pid: int, text: str) -> None:
        if self.trace:
            sys.stderr.write(f"[{pid}] {text}\n")
