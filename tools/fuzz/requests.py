"""The request fuzzer: hostile clients of the manager's and instances' sockets.

    python3 -m tools.fuzz requests [--seconds N] [--seed S] [--distro NAME]

Run as the user whose lx manager is to be fuzzed (LX_HOME and
XDG_RUNTIME_DIR as that `lx` sees them). It sends garbage, truncated and
deeply nested JSON, frames larger than the protocol allows, message
bodies that are not sealed memfds, descriptors of every kind, requests
with every field mistyped, and keeps slow readers (clients that send but
never read) and many idle connections open, while checking every second
that the manager still answers `hello` and each instance `info`. It
never sends a valid request that changes anything (launch of a real
command, terminate, shutdown, end). Exit status 0 if both stayed up and
answered throughout; the last line is a JSON summary (counts, memory).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import sys
import time

from lxsub.manager import paths, protocol
from tools.fuzz.syscalls import rss_kib

LIVENESS_TIMEOUT = 5.0
SLOW_READERS = 8
IDLE_CONNECTIONS = 40




class Fuzzer:
    def __init__(self, seed: int, distro: str | None) -> None:
        self.rng = random.Random(seed)
        self.distro = distro
        self.sent = 0
        self.kinds: dict[str, int] = {}
        self.keep: list[socket.socket] = []      # slow readers and idle connections

    # -- targets -------------------------------------------------------------------

    def targets(self) -> list[str]:
        found = [str(paths.manager_socket())]
        found += sorted(str(p) for p in paths.instances_dir().glob("*.sock"))
        return found

    @staticmethod
    def connect(path: str, timeout: float = LIVENESS_TIMEOUT) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.settimeout(timeout)
        sock.connect(path)
        return sock

    def ask(self, path: str, message: dict) -> dict:
        with self.connect(path) as sock:
            protocol.send(sock, message)
            reply, fds = protocol.receive(sock)
            protocol.close_all(fds)
        if reply is None:
            raise ConnectionError(f"{path} closed without answering {message}")
        return reply

    def alive(self) -> dict[str, int]:
        """Pids of the manager and the instances, each having answered."""
        pids = {}
        for path in self.targets():
            op = "hello" if path == str(paths.manager_socket()) else "info"
            try:
                reply = self.ask(path, {"v": protocol.VERSION, "op": op})
            except FileNotFoundError:
                if op == "info":
                    continue        # an instance that ended on its own (idle)
                raise
            if not reply.get("ok"):
                raise AssertionError(f"{path} answered {op} with {reply}")
            pids[path] = reply["pid"]
        return pids

    # -- what to send -----------------------------------------------------------------

    def payload(self) -> tuple[str, bytes, list[int]]:
        kind = self.rng.choice(["garbage", "truncated", "nested", "huge", "mistyped",
                                "surrogates", "descriptors", "body", "many-fds"])
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        return (kind, *getattr(self, "_" + kind.replace("-", "_"))())

    def _garbage(self):
        return self.rng.randbytes(self.rng.choice([0, 1, 7, 100, 4096, 65536, 65537])), []

    def _truncated(self):
        data = json.dumps(self._request()).encode()
        return data[: self.rng.randrange(max(len(data), 1))], []

    def _nested(self):
        depth = self.rng.choice([100, 1000, 10000, 30000])
        left, right = self.rng.choice([("[", "]"), ('{"a":', "}")])
        inner = left * depth + "1" + right * depth
        data = ('{"v":1,"op":"hello","x":' + inner + "}").encode()
        return data[: protocol.MAX_MESSAGE], []

    def _huge(self):
        return b'{"v":1,"op":"hello","x":"' + b"a" * self.rng.randrange(65536, 300000) + b'"}', []

    def _request(self) -> dict:
        """A request with its fields mistyped, never a valid changing one."""
        ops = ["hello", "status", "info", "launch", "session", "signal", "nope", None, 1, ""]
        m = {"v": self.rng.choice([1, True, 1.0, "1", 2, None, -1]), "op": self.rng.choice(ops)}
        junk = [None, True, -1, 2**63, "x" * 5000, [], {}, [[[]]], {"a": {"b": []}},
                "\udcff", "/", ["a"] * 5000]
        for name in self.rng.sample(["distro", "argv", "mode", "user", "cwd", "env", "tty",
                                     "signal", "default_user", "body"], self.rng.randrange(4)):
            m[name] = self.rng.choice(junk)
        if m["op"] in ("launch", "session"):
            m["tty"] = {"stdin": True, "stdout": True, "stderr": True, "rows": -1, "cols": 99999}
            m["distro"] = "no-such-distro-\udcff"
        return m

    def _mistyped(self):
        return json.dumps(self._request()).encode(), []

    def _surrogates(self):
        m = self._request()
        m["user"] = self.rng.choice(["\ud800", "\udfff\ud800", "\udcff"])
        return json.dumps(m).encode(), []

    def _descriptors(self):
        fds = []
        for _ in range(self.rng.randrange(1, 5)):
            kind = self.rng.choice(["pipe", "null", "socket", "memfd", "dir"])
            if kind == "pipe":
                r, w = os.pipe()
                os.close(w)
                fds.append(r)
            elif kind == "null":
                fds.append(os.open("/dev/null", os.O_RDWR))
            elif kind == "socket":
                a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                fds.append(a.detach())
                self.keep.append(b)      # its peer: a session conn nobody reads
            elif kind == "memfd":
                fds.append(os.memfd_create("fuzz"))
            else:
                fds.append(os.open("/", os.O_RDONLY | os.O_DIRECTORY))
        m = self._request()
        if self.rng.random() < 0.5:
            m = {"v": 1, "op": "session", "argv": ["/no/such/program"], "mode": "exec",
                 "user": None, "cwd": None, "env": {}, "tty": None, "distro": "x",
                 "default_user": None}
        return json.dumps(m).encode(), fds

    def _body(self):
        """A frame announcing a body that is not what it says."""
        size = self.rng.choice([0, 10, protocol.MAX_MESSAGE + 1, 2**31, protocol.MAX_BODY + 1, -5, True])
        kind = self.rng.choice(["none", "pipe", "unsealed", "short"])
        fds = []
        if kind == "pipe":
            r, w = os.pipe()
            fds.append(r)
            self.keep.append(_Closer(w))     # the writer stays open: a read would wait
        elif kind in ("unsealed", "short"):
            fd = os.memfd_create("fuzz", os.MFD_ALLOW_SEALING)
            os.write(fd, b"{" * 100)
            if kind == "short":
                import fcntl
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, protocol._SEALS)
            fds.append(fd)
        return json.dumps({"body": size}).encode(), fds

    def _many_fds(self):
        fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(self.rng.choice([9, 64, 250]))]
        return b'{"v":1,"op":"hello"}', fds

    # -- sending --------------------------------------------------------------------

    def send_one(self, path: str) -> None:
        kind, data, fds = self.payload()
        try:
            sock = self.connect(path, timeout=1.0)
        except OSError:
            protocol.close_all(fds)
            return
        try:
            if fds:
                socket.send_fds(sock, [data], fds)
            else:
                sock.send(data)
            self.sent += 1
            if self.rng.random() < 0.7:
                try:
                    sock.recv(protocol.MAX_MESSAGE + 1)
                except OSError:
                    pass
        except OSError:
            pass
        finally:
            protocol.close_all(fds)
            if self.rng.random() < 0.05 and len(self.keep) < IDLE_CONNECTIONS:
                self.keep.append(sock)     # an idle connection, left open
            else:
                sock.close()

    def slow_reader(self, path: str) -> None:
        """A client that sends many requests and reads none of the replies."""
        try:
            sock = self.connect(path, timeout=0.5)
        except OSError:
            return
        sock.setblocking(False)
        for _ in range(300):
            try:
                sock.send(b'{"v":1,"op":"hello"}' if path == str(paths.manager_socket())
                          else b'{"v":1,"op":"info"}')
            except OSError:
                break
        self.keep.append(sock)
        self.kinds["slow-reader"] = self.kinds.get("slow-reader", 0) + 1
        while len([s for s in self.keep if isinstance(s, socket.socket)]) > SLOW_READERS + IDLE_CONNECTIONS:
            self.keep.pop(0).close()

    def run(self, seconds: float) -> dict:
        start_pids = self.alive()
        if not start_pids:
            raise AssertionError("no manager to fuzz")
        checks = 0
        rss_start: dict[int, int] = {}
        started = time.monotonic()
        next_check = started + 1.0
        while time.monotonic() - started < seconds:
            targets = self.targets()
            path = self.rng.choice(targets)
            if self.rng.random() < 0.02:
                self.slow_reader(path)
            else:
                self.send_one(path)
            if time.monotonic() >= next_check:
                pids = self.alive()        # raises when one stopped answering
                checks += 1
                for p in pids.values():
                    if p not in rss_start and time.monotonic() - started > min(5.0, seconds / 4):
                        rss_start[p] = rss_kib(p) or 0
                next_check = time.monotonic() + 1.0
        pids = self.alive()
        lost = set(start_pids.values()) - set(pids.values())
        for s in self.keep:
            s.close()
        return {"sent": self.sent, "kinds": self.kinds, "liveness_checks": checks,
                "pids": sorted(pids.values()), "lost": sorted(lost),
                "rss_kib": {p: [rss_start.get(p), rss_kib(p)] for p in pids.values()}}


class _Closer:
    """Holds a descriptor open until the fuzzer ends."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        os.close(self.fd)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m tools.fuzz requests")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--distro", help="(unused: every running instance is a target)")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    fuzzer = Fuzzer(seed, args.distro)
    try:
        summary = fuzzer.run(args.seconds)
    except (AssertionError, OSError, ConnectionError) as e:
        print(json.dumps({"seed": seed, "failed": f"{type(e).__name__}: {e}", "sent": fuzzer.sent}))
        return 1
    summary["seed"] = seed
    print(json.dumps(summary))
    return 0 if not summary["lost"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
