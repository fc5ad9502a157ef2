"""`lx --path [-d NAME] [-u|-w] PATH`: wslpath's translation, on the host.

    -u (default)  host path -> the distro's Linux path (/usr/bin -> /mnt/host/usr/bin)
    -w            Linux path -> host path (/mnt/host/tmp -> /tmp)

The translation is the one `lxpath` does inside the instance
(lxsub/hostpath.py, which kernel/interop.py uses too; no kernel imported
here): by the host mounts the distro's /etc/lx.conf `[automount]` asks for
(an instance need not be running). A relative host path is taken from the
current directory; a Linux path must be absolute.
Only names are translated: `.` and `..` are folded, symlinks not followed.
A Linux path that is not on a host mount (VolFs: the distro's own files)
has no host path; use `lx --mount` to see those from the host.

Its arguments are parsed here, not by lx's parser, because `-u` means
--user there.
"""

from __future__ import annotations

import os

from lxsub.errors import EXIT_DATAERR, EXIT_USAGE, LxError

USAGE = "lx --path [-d NAME] [-u|-w] PATH"


def wanted(ours: list[str]) -> bool:
    """Is this an `lx --path` command line (lx's own options only)?"""
    return "--path" in ours


def _usage(message: str) -> LxError:
    return LxError(f"{message} (usage: {USAGE})", EXIT_USAGE)


def parse(ours: list[str]) -> tuple[str | None, str, str]:
    """(distro or None, 'u' or 'w', path) from lx's options."""
    distro, mode, paths = None, None, []
    i = 0
    while i < len(ours):
        arg = ours[i]
        if arg == "--path":
            pass
        elif arg in ("-d", "--distribution"):
            if i + 1 >= len(ours):
                raise _usage(f"{arg} needs a distro name")
            distro = ours[i + 1]
            i += 1
        elif arg in ("-u", "-w"):
            if mode is not None and mode != arg[1]:
                raise _usage("-u and -w exclude each other")
            mode = arg[1]
        elif arg.startswith("-") and arg != "-":
            raise _usage(f"--path does not take {arg!r}")
        else:
            paths.append(arg)
        i += 1
    if len(paths) != 1:
        raise _usage("--path needs one PATH" if not paths else f"--path takes one PATH, not {len(paths)}")
    if not paths[0]:
        raise _usage("--path: the PATH is empty")
    return distro, mode or "u", paths[0]


def translate(rootfs: str, mode: str, path: str, cwd: str | None = None) -> str:
    """The translation of `path` for the distro at `rootfs`; LxError if none."""
    from lxsub import hostpath
    from lxsub.config import load_distro_config

    mounts = hostpath.mounts_from_config(load_distro_config(rootfs))
    if mode == "u":
        if not path.startswith("/"):
            path = os.path.join(cwd or os.getcwd(), path)
        out = hostpath.to_linux(path, mounts)
        if out is None:
            raise LxError(f"{path}: the distro has no host mount showing it "
                          "([automount] of its /etc/lx.conf)", EXIT_DATAERR)
        return out
    if not path.startswith("/"):
        raise LxError(f"{path}: give an absolute Linux path", EXIT_USAGE)
    out = hostpath.to_host(path, mounts)
    if out is None:
        raise LxError(f"{path}: not on a host mount of the distro, so it has no host path "
                      "(lx --mount shows the distro's own files on the host)", EXIT_DATAERR)
    return out


def main(ours: list[str]) -> int:
    from lxsub.cli import distro_cmds
    from lxsub.state import Registry, lx_home

    name, mode, path = parse(ours)
    distro = distro_cmds.launch_distro(Registry(lx_home()), name)
    print(translate(str(distro.rootfs), mode, path))
    return 0
