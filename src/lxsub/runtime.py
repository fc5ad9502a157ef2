"""Where the manager and its instances listen: one private local directory per LX_HOME.

Unix sockets must live on a local file system: `$HOME` (and so `$LX_HOME`)
is often on NFS, Lustre or GPFS, shared by every node of a cluster, where
a socket bound on one node means nothing on another (and where a path may
be too long for a socket address). So the runtime directory is chosen as
other per-user daemons do (tmux, podman, systemd --user), never under
LX_HOME, keyed by the uid and a digest of the resolved LX_HOME:

1. `$XDG_RUNTIME_DIR/lxsub-<digest>` when XDG_RUNTIME_DIR is usable: an
   absolute path to a directory of ours that no one else may write in (the
   XDG Base Directory spec: "owned by the user ... access mode 0700"). A
   batch job often inherits the login node's value, naming a directory
   that does not exist on the compute node: then it is passed over.
2. `$TMPDIR/lxsub-<uid>/<digest>`, then `/tmp/lxsub-<uid>/<digest>`: a
   private directory made on first use (as tmux's `/tmp/tmux-<uid>`); a
   TMPDIR that others may write in without the sticky bit is passed over.
   Schedulers that give each job its own TMPDIR (or a private /tmp) so
   give each job its own manager. Not /run/user/<uid>: systemd-logind
   removes it at the user's last logout, pulling the sockets from under a
   batch job's manager.

A candidate whose deepest socket path would not fit in `sun_path` (108
bytes with its NUL) is passed over for the next. A directory of the chain
that exists already must be a real directory (not a symlink) of ours with
no group or other access: anyone else could have made it, or put sockets
in it, in a world-writable /tmp; such a directory is refused with one line
saying which and how to fix it (EXIT_NOPERM), never repaired or used.

Kept at the bottom floor (errors and state only): the kernel (sealed
storage) and LxBus need these paths too, and must not import manager/.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

try:
    # The built-in SHA-256: the same digests as hashlib's, without loading
    # OpenSSL (_hashlib: ~6 ms of every `lx` start-up for two short names).
    from _sha256 import sha256       # Python 3.11
except ImportError:                  # pragma: no cover (3.12+ names it _sha2; others: OpenSSL)
    try:
        from _sha2 import sha256
    except ImportError:
        from hashlib import sha256

from lxsub.errors import EXIT_CANTCREAT, EXIT_NOPERM, LxError
from lxsub.state import lx_home

SUN_PATH_MAX = 107     # sockaddr_un.sun_path (unix(7): 108) less the terminating NUL
# The deepest socket below the runtime directory: instances/<24 hex>.sock
# (39 bytes); LxBus's bus/<12>/<16>.s takes 35.
_DEEPEST = "instances/" + "x" * 24 + ".sock"


def _tag() -> str:
    return sha256(str(lx_home().resolve()).encode()).hexdigest()[:10]


def _xdg_runtime_dir() -> Path | None:
    """$XDG_RUNTIME_DIR if it names a directory of ours no one else may
    write in (the spec asks 0700; one that others may only read is still
    safe for us, since our own directory in it is 0700 and cannot be
    replaced)."""
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if not xdg.startswith("/"):       # the spec: relative paths are invalid, ignore them
        return None
    try:
        s = os.stat(xdg)              # may be a symlink to the real directory
    except OSError:
        return None
    if not stat.S_ISDIR(s.st_mode) or s.st_uid != os.getuid() or s.st_mode & 0o022:
        return None
    return Path(xdg) if os.access(xdg, os.W_OK | os.X_OK) else None


def _tmp_bases() -> list[Path]:
    """$TMPDIR and /tmp, in that order, where they are safe bases."""
    bases = []
    for base in (os.environ.get("TMPDIR", ""), "/tmp"):
        if base.startswith("/") and _safe_base(base) and Path(base) not in bases:
            bases.append(Path(base))
    return bases


def _safe_base(base: str) -> bool:
    """A directory where nobody else can rename our directory away and put
    theirs in its place between our check and our use: not writable by
    others, or sticky as /tmp is (unlink(2), rename(2): EPERM in a sticky
    directory for a file the caller does not own)."""
    try:
        s = os.stat(base)
    except OSError:
        return False
    return stat.S_ISDIR(s.st_mode) and (not s.st_mode & 0o022 or bool(s.st_mode & stat.S_ISVTX))


def candidates() -> list[Path]:
    """Where runtime_dir() may be, in order of preference (nothing is created)."""
    tag = _tag()
    xdg = _xdg_runtime_dir()
    found = [xdg / f"lxsub-{tag}"] if xdg else []
    return found + [base / f"lxsub-{os.getuid()}" / tag for base in _tmp_bases()]


def storage_dirs() -> list[Path]:
    """Every directory a runtime directory may be, or be in (for sealing
    them from DrvFs): the candidates and their private per-uid parents."""
    dirs = candidates()
    return dirs + [d.parent for d in dirs if d.parent.name == f"lxsub-{os.getuid()}"]


def runtime_dir() -> Path:
    """The private directory of this LX_HOME's manager (created if missing)."""
    tried = candidates()
    for d in tried:
        if len(str(d / _DEEPEST)) > SUN_PATH_MAX:
            continue
        if d.parent.name == f"lxsub-{os.getuid()}":
            private_dir(d.parent, create_parent=False)
        return private_dir(d)
    raise LxError(f"no runtime directory short enough for Unix socket paths (tried "
                  f"{', '.join(map(str, tried))}); set TMPDIR to a short local directory",
                  EXIT_CANTCREAT)


def private_dir(d: Path, create_parent: bool = True) -> Path:
    """d, made mode 0700 if missing; refused unless it is our own private directory."""
    try:
        if create_parent:
            d.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
        s = os.lstat(d)
    except OSError as e:
        raise LxError(f"cannot create the runtime directory {d}: {e.strerror}", EXIT_CANTCREAT) from None
    check_private(d, s)
    return d


def check_private(d: Path, s: os.stat_result) -> None:
    """Refuse a directory someone else could have made or entered (as tmux's
    "directory has unsafe permissions")."""
    if stat.S_ISLNK(s.st_mode) or not stat.S_ISDIR(s.st_mode):
        what = "a symbolic link" if stat.S_ISLNK(s.st_mode) else "not a directory"
    elif s.st_uid != os.getuid():
        what = f"owned by uid {s.st_uid}, not by you (uid {os.getuid()})"
    elif s.st_mode & 0o077:
        what = f"mode {stat.S_IMODE(s.st_mode):04o}, not 0700"
    else:
        return
    raise LxError(f"unsafe runtime directory {d}: {what}; remove it (or set TMPDIR or "
                  "XDG_RUNTIME_DIR to a private directory) and retry", EXIT_NOPERM)


def manager_socket() -> Path:
    return runtime_dir() / "manager.sock"


def manager_lock() -> Path:
    """Held by the running manager for its whole life (one per runtime directory)."""
    return runtime_dir() / "manager.lock"


def start_lock() -> Path:
    """Held by the one `lx` that starts the manager; the others wait on it."""
    return runtime_dir() / "start.lock"


def instances_dir() -> Path:
    return private_dir(runtime_dir() / "instances")


def instance_socket(distro: str) -> Path:
    # Distro names may be long or odd; the file name is a short digest.
    digest = sha256(distro.encode()).hexdigest()[:24]
    return instances_dir() / f"{digest}.sock"


def bus_root() -> Path:
    """The parent of every distro's LxBus directory (lxbus/bus.py)."""
    return private_dir(runtime_dir() / "bus")
