"""Linux path <-> host path across a distro's host (DrvFs) mounts, and LXENV.

Pure functions over a list of HostMount (no kernel, no instance): `lx
--path` (cli/pathcmd.py) uses them with the mounts a distro's /etc/lx.conf
asks for, the instance (kernel/interop.py) with its DrvFs mounts as they are.

Paths
-----
A host path is translated to the instance by the DrvFs mounts: the longest
host directory that contains it, replaced by its mount point (`/usr/bin` ->
`/mnt/host/usr/bin`); a Linux path back by the longest mount point. Only
names are translated (`.` and `..` folded, symlinks not followed). A Linux
path on VolFs or another instance file system has no host name (editing
VolFs files from the host breaks their metadata): translation fails.

Environment (`LXENV`, like WSL's WSLENV)
---------------------------------------
`LXENV=NAME[/flags]:NAME[/flags]...` names the variables that cross the
boundary, in both directions: from `lx` on the host into the Linux login
environment, and from a Linux program into the host programs it runs.
Flags: `p` the value is one path, translated; `l` a `:`-separated list of
paths, each translated; `u` only host -> Linux; `w` only Linux -> host.
LXENV itself always crosses. With `[interop] appendHostPath = true` (the
default is false) the host's PATH, translated, is appended to the Linux
PATH, for the users who may run host programs.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass


# -- paths ----------------------------------------------------------------------

@dataclass(frozen=True)
class HostMount:
    """A host directory mounted in the instance (DrvFs)."""
    host: str       # host directory
    path: str       # its Linux mount point


def normalize(path: str) -> str:
    """An absolute path with `.`, `..` and repeated slashes folded."""
    out = posixpath.normpath("/" + path.lstrip("/"))
    return "/" + out.lstrip("/")


def _inside(path: str, top: str) -> str | None:
    """The rest of `path` below `top` ('' for top itself), or None."""
    if top == "/":
        return path.lstrip("/")
    if path == top:
        return ""
    if path.startswith(top + "/"):
        return path[len(top) + 1:]
    return None


def join(top: str, rest: str) -> str:
    """`top` with the relative `rest` below it ('': top itself)."""
    return top if not rest else top.rstrip("/") + "/" + rest


def to_linux(host_path: str, mounts: list[HostMount]) -> str | None:
    """The Linux path of an absolute host path, or None if no mount shows it."""
    if not host_path.startswith("/"):
        return None
    path = normalize(host_path)
    best: tuple[int, str] | None = None
    for m in mounts:
        rest = _inside(path, m.host)
        if rest is not None and (best is None or len(m.host) > best[0]):
            best = (len(m.host), join(m.path, rest))
    return best[1] if best else None


def to_host(linux_path: str, mounts: list[HostMount], cwd: str = "/") -> str | None:
    """The host path of a Linux path (relative ones from `cwd`), or None if
    it is not on a host mount."""
    path = normalize(linux_path if linux_path.startswith("/") else cwd.rstrip("/") + "/" + linux_path)
    best: tuple[int, str] | None = None
    for m in mounts:
        rest = _inside(path, m.path)
        if rest is not None and (best is None or len(m.path) > best[0]):
            best = (len(m.path), join(m.host, rest))
    return best[1] if best else None


def mounts_from_config(config) -> list[HostMount]:
    """The DrvFs mounts a distro's /etc/lx.conf asks for (what an instance
    of it mounts at start): the host's / at <[automount] root>host."""
    automount = config.automount
    if not automount.enabled:
        return []
    return [HostMount("/", normalize(automount.root.rstrip("/") + "/host"))]


# -- environment ------------------------------------------------------------------

def parse_lxenv(value: str) -> list[tuple[str, str]]:
    """LXENV as (name, flags) pairs; empty names are skipped."""
    out = []
    for item in value.split(":"):
        name, _, flags = item.partition("/")
        if name:
            out.append((name, flags))
    return out


def _translate_value(value: str, flags: str, one) -> str:
    if "l" in flags:
        return ":".join(one(p) or p for p in value.split(":"))
    if "p" in flags:
        return one(value) or value
    return value


def env_to_linux(host_env: dict[str, str], mounts: list[HostMount]) -> dict[str, str]:
    """What of a host environment crosses into Linux by LXENV (LXENV too)."""
    spec = host_env.get("LXENV")
    if spec is None:
        return {}
    out = {"LXENV": spec}
    for name, flags in parse_lxenv(spec):
        if "w" in flags or name not in host_env:
            continue
        out[name] = _translate_value(host_env[name], flags, lambda p: to_linux(p, mounts))
    return out


def env_to_host(linux_env: dict[str, str], mounts: list[HostMount], cwd: str = "/") -> dict[str, str]:
    """What of a Linux environment crosses into a host program by LXENV."""
    spec = linux_env.get("LXENV")
    if spec is None:
        return {}
    out = {"LXENV": spec}
    for name, flags in parse_lxenv(spec):
        if "u" in flags or name not in linux_env:
            continue
        out[name] = _translate_value(linux_env[name], flags,
                                     lambda p: to_host(p, mounts, cwd) if p else None)
    return out


def host_path_suffix(host_path: str, mounts: list[HostMount]) -> str:
    """The host PATH translated for appending to the Linux PATH."""
    parts = []
    for p in host_path.split(":"):
        t = to_linux(p, mounts) if p.startswith("/") else None
        if t is not None and t not in parts:
            parts.append(t)
    return ":".join(parts)
