"""Host paths as the instance names them, for /proc/<pid>/maps and the
fd links: through the host-backed mounts (host_roots, host_to_vpath) or,
for a file system the host names by no path, its device (detached_mounts).

Kept together in this one file: the Vfs object (issue 15, item 1) takes
them over.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lxsub.kernel.vfs.mount import Mount


def host_roots(inst) -> list[tuple[str, "Mount"]]:
    """The host directory at the root of each host-backed mount, deepest
    first; only those the host can name by path (a private tmpfs has none)."""
    roots = []
    for m in list(inst.mounts.mounts):
        node = m.root_node
        if node is None or node.fd is None or not hasattr(m.fs, "host_root"):
            continue
        try:
            path = os.readlink(f"/proc/self/fd/{node.fd}")
            a, b = os.stat(path), os.fstat(node.fd)
        except OSError:
            continue
        if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
            roots.append((path, m))
    roots.sort(key=lambda rm: len(rm[0]), reverse=True)
    return roots


def detached_mounts(inst) -> dict[int, "Mount"]:
    """Host-backed mounts on a file system of their own that the host names
    by no path (private tmpfs): device number -> mount."""
    named = {id(m) for _, m in host_roots(inst)}
    out = {}
    for m in list(inst.mounts.mounts):
        node = m.root_node
        if node is None or node.fd is None or id(m) in named or not hasattr(m.fs, "host_root"):
            continue
        try:
            out[os.fstat(node.fd).st_dev] = m
        except OSError:
            continue
    return out


def host_to_vpath(roots: list[tuple[str, "Mount"]], host: str) -> str | None:
    """A host path as the instance names it, through the mount whose host
    directory holds it; None if no mount shows it."""
    for root, m in roots:
        if host == root or host.startswith(root.rstrip("/") + "/"):
            rel = host[len(root):].lstrip("/")
            base = m.path.rstrip("/")
            return (base + "/" + rel) if rel else (m.path or "/")
    return None
