"""Where the manager and its instances listen: one private directory per LX_HOME.

The directory is `$XDG_RUNTIME_DIR/lxsub-<hash of LX_HOME>` (memory, per
user, removed at logout), else `$LX_HOME/run`; if that path is too long for
a Unix socket address (108 bytes), `/tmp/lxsub-<uid>/<hash>`. It is made
mode 0700 and must be ours: only its user can connect, whatever the
socket's own mode.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from lxsub.errors import EXIT_CANTCREAT, LxError
from lxsub.state import lx_home

_SUN_PATH_MAX = 107   # sockaddr_un.sun_path less the terminating NUL


def runtime_dir_candidates() -> list[Path]:
    """Where runtime_dir() may be, in order of preference (nothing is created)."""
    home = lx_home().resolve()
    tag = hashlib.sha256(str(home).encode()).hexdigest()[:10]
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    candidates = [Path(xdg) / f"lxsub-{tag}"] if xdg and os.path.isdir(xdg) else []
    return candidates + [home / "run", Path(f"/tmp/lxsub-{os.getuid()}") / tag]


def runtime_dir() -> Path:
    """The private directory of this LX_HOME's manager (created if missing)."""
    candidates = runtime_dir_candidates()
    for d in candidates:
        if len(str(d / "instances" / ("x" * 24 + ".sock"))) <= _SUN_PATH_MAX:
            return _private_dir(d)
    raise LxError(f"no usable runtime directory for the manager (tried {candidates[-1]})",
                  EXIT_CANTCREAT)


def manager_socket() -> Path:
    return runtime_dir() / "manager.sock"


def instances_dir() -> Path:
    return _private_dir(runtime_dir() / "instances")


def instance_socket(distro: str) -> Path:
    # Distro names may be long or odd; the file name is a short digest.
    digest = hashlib.sha256(distro.encode()).hexdigest()[:24]
    return instances_dir() / f"{digest}.sock"


def _private_dir(d: Path) -> Path:
    try:
        d.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        d.mkdir(exist_ok=True, mode=0o700)
        s = os.lstat(d)
    except OSError as e:
        raise LxError(f"cannot create the runtime directory {d}: {e.strerror}", EXIT_CANTCREAT) from None
    if not stat.S_ISDIR(s.st_mode) or s.st_uid != os.getuid():
        raise LxError(f"{d} is not a directory of yours; remove it and retry", EXIT_CANTCREAT)
    if s.st_mode & 0o077:
        os.chmod(d, 0o700)
    return d
