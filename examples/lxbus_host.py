#!/usr/bin/env python3
"""The host side of the LxBus example: both directions, with descriptors.

    gcc -static -O2 -Wall -o lxbus_demo examples/lxbus_demo.c
    lx -d DISTRO -- 'cat > /usr/local/bin/lxbus_demo && chmod 755 /usr/local/bin/lxbus_demo' < lxbus_demo
    python3 examples/lxbus_host.py DISTRO /usr/local/bin/lxbus_demo

1. The host registers the server port "demo-host" and runs `lxbus_demo
   client demo-host` in the distro. The Linux program connects; the host
   sends it a message carrying the write end of a host pipe; the Linux
   program writes a line into that pipe and answers "done"; the host reads
   the line from the pipe's read end.
2. `lxbus_demo server demo-linux` registers a server inside the instance;
   the host connects, sends "ping", gets "echo: ping", then a message
   carrying the read end of a pipe made inside, and reads the line the
   Linux program put in it; "bye" ends the program.

Run it as the distro's host user with the LX_HOME that `lx` uses. `--lx`
names the lx command (default: `python3 -m lxsub` of this interpreter).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

from lxsub import lxbus


def host_serves(lx: list[str], distro: str, demo: str) -> None:
    with lxbus.register_server(distro, "demo-host") as server:
        prog = subprocess.Popen([*lx, "-d", distro, "-e", demo, "client", "demo-host"],
                                stdout=subprocess.PIPE)
        try:
            with server.accept(timeout=60) as port:
                r, w = os.pipe()
                port.send(b"hello from the host", fds=[w])
                os.close(w)                       # the Linux program holds the only write end
                with os.fdopen(r, "rb") as pipe_r:
                    line = pipe_r.read().decode()
                print(f"host read from its pipe: {line.strip()}")
                reply, fds = port.recv()
                print(f"host got reply: {reply.decode()}")
        finally:
            out, _ = prog.communicate(timeout=60)
        sys.stdout.write(out.decode())
        print(f"linux client exit status: {prog.returncode}")


def linux_serves(lx: list[str], distro: str, demo: str) -> None:
    prog = subprocess.Popen([*lx, "-d", distro, "-e", demo, "server", "demo-linux"],
                            stdout=subprocess.PIPE)
    try:
        ready = prog.stdout.readline()
        if ready != b"ready\n":
            raise SystemExit(f"lxbus_demo server did not start: {ready!r}")
        with lxbus.connect(distro, "demo-linux", wait=10) as port:
            port.send(b"ping")
            print(f"host got: {port.recv()[0].decode()}")
            text, fds = port.recv()
            print(f"host got: {text.decode()} ({len(fds)} descriptor)")
            with os.fdopen(fds[0], "rb") as pipe_r:
                print(f"host read from the Linux pipe: {pipe_r.read().decode().strip()}")
            port.send(b"bye")
    finally:
        out, _ = prog.communicate(timeout=60)
    sys.stdout.write(out.decode())
    print(f"linux server exit status: {prog.returncode}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("distro")
    ap.add_argument("demo", help="path of lxbus_demo inside the distro")
    ap.add_argument("--lx", default=f"{shlex.quote(sys.executable)} -m lxsub",
                    help="the lx command line")
    args = ap.parse_args()
    lx = shlex.split(args.lx)
    host_serves(lx, args.distro, args.demo)
    linux_serves(lx, args.distro, args.demo)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
