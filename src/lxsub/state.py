"""Where lxsub keeps its state, and the registry of imported distros.

The registry is one small JSON file, `$LX_HOME/registry.json`. Readers never
lock: every write goes to a temporary file that is fsynced and then renamed
over the old one, so a reader sees either the old or the new registry, never
a torn one. Writers serialise read-modify-write cycles with an flock on
`$LX_HOME/registry.lock`, so two `lx --import` runs cannot lose each other's
entry.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import stat
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from lxsub.errors import (
    EXIT_CANTCREAT,
    EXIT_DATAERR,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    LxError,
)

REGISTRY_FILE = "registry.json"
LOCK_FILE = "registry.lock"
_FORMAT_VERSION = 1
_NAME_RE = re.compile(r"[A-Za-z0-9._-]+")


def lx_home() -> Path:
    """$LX_HOME, else $XDG_DATA_HOME/lx, else ~/.local/share/lx."""
    explicit = os.environ.get("LX_HOME")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg:
        return Path(xdg) / "lx"
    return Path.home() / ".local" / "share" / "lx"


@dataclass
class Distro:
    name: str
    rootfs: Path
    default_user: str = "root"
    state: str = "Installed"
    version: int = 1

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["rootfs"] = str(self.rootfs)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Distro":
        return cls(
            name=str(data["name"]),
            rootfs=Path(data["rootfs"]),
            default_user=str(data.get("default_user", "root")),
            state=str(data.get("state", "Installed")),
            version=int(data.get("version", 1)),
        )


def check_name(name: str) -> None:
    """Reject distro names that would be awkward in paths, shells and listings."""
    if not _NAME_RE.fullmatch(name or ""):
        raise LxError(
            f"invalid distro name {name!r}: use only letters, digits, '.', '_' and '-'",
            EXIT_USAGE,
        )


def _unknown(name: str) -> LxError:
    return LxError(
        f"no distro named {name!r} (see 'lx --list'; "
        "import one with 'lx --import NAME DIR TARBALL')",
        EXIT_UNAVAILABLE,
    )


class Registry:
    """The distros known under one LX_HOME, and which one is the default."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.path = self.home / REGISTRY_FILE
        self.lock_path = self.home / LOCK_FILE

    # -- queries (no lock needed: the file is only ever replaced whole) --

    def list(self) -> list[Distro]:
        return self._load()[1]

    def get(self, name: str) -> Distro:
        for distro in self.list():
            if distro.name == name:
                return distro
        raise _unknown(name)

    def default(self) -> Distro:
        default_name, distros = self._load()
        for distro in distros:
            if distro.name == default_name:
                return distro
        raise LxError(
            "no default distro: none is registered "
            "(import one with 'lx --import NAME DIR TARBALL')"
            if not distros
            else "no default distro is set (choose one with 'lx --set-default NAME')",
            EXIT_UNAVAILABLE,
        )

    def __contains__(self, name: str) -> bool:
        return any(d.name == name for d in self.list())

    # -- changes (each one a locked read-modify-write) --

    def add(self, distro: Distro) -> None:
        check_name(distro.name)
        with self.locked():
            default_name, distros = self._load()
            if any(d.name == distro.name for d in distros):
                raise LxError(
                    f"a distro named {distro.name!r} already exists "
                    "(choose another name or 'lx --unregister' it first)",
                    EXIT_CANTCREAT,
                )
            distros.append(distro)
            if default_name is None:
                default_name = distro.name
            self._store(default_name, distros)

    def remove(self, name: str) -> Distro:
        """Drop the entry (not the files); returns what was removed."""
        with self.locked():
            default_name, distros = self._load()
            removed = self._find(distros, name)
            distros.remove(removed)
            if default_name == name:
                # Like wsl: another distro takes over rather than leaving none.
                default_name = distros[0].name if distros else None
            self._store(default_name, distros)
        return removed

    def set_default(self, name: str) -> None:
        with self.locked():
            _, distros = self._load()
            self._find(distros, name)
            self._store(name, distros)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the registry's write lock (blocks while another writer holds it)."""
        self._ensure_home()
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    # -- storage --

    @staticmethod
    def _find(distros: list[Distro], name: str) -> Distro:
        for distro in distros:
            if distro.name == name:
                return distro
        raise _unknown(name)

    def _ensure_home(self) -> None:
        try:
            self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise LxError(
                f"cannot create lx state directory {self.home}: {e.strerror}",
                EXIT_CANTCREAT,
            ) from e

    def _load(self) -> tuple[str | None, list[Distro]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None, []
        except OSError as e:
            raise LxError(f"cannot read registry {self.path}: {e.strerror}", EXIT_DATAERR) from e
        try:
            data = json.loads(text)
            distros = [Distro.from_json(d) for d in data["distros"]]
            default_name = data.get("default")
        except (ValueError, KeyError, TypeError) as e:
            raise LxError(
                f"registry {self.path} is corrupt ({e}); repair or remove it", EXIT_DATAERR
            ) from e
        return default_name, distros

    def _store(self, default_name: str | None, distros: list[Distro]) -> None:
        data = {
            "format": _FORMAT_VERSION,
            "default": default_name,
            "distros": [d.to_json() for d in distros],
        }
        atomic_write(self.path, (json.dumps(data, indent=2) + "\n").encode())


def atomic_write(path: Path, content: bytes) -> None:
    """Replace `path` with `content` so that a crash leaves the old or the new file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def delete_rootfs(distro: Distro) -> None:
    """Delete a distro's files: its rootfs, and the directory around it if now empty."""
    rootfs = Path(distro.rootfs)
    if not rootfs.is_absolute() or rootfs == Path(rootfs.anchor) or rootfs == Path.home():
        raise LxError(
            f"refusing to delete {rootfs} for distro {distro.name!r}: not a distro directory",
            EXIT_CANTCREAT,
        )
    if not os.path.lexists(rootfs):
        return
    try:
        try:
            shutil.rmtree(rootfs)
        except PermissionError:
            _give_owner_access_to_dirs(rootfs)
            shutil.rmtree(rootfs)
    except OSError as e:
        raise LxError(
            f"could not delete all of {rootfs} ({e.strerror}); remove it by hand", EXIT_CANTCREAT
        ) from e
    with contextlib.suppress(OSError):
        rootfs.parent.rmdir()  # only succeeds when the import directory is now empty


def _give_owner_access_to_dirs(top: Path) -> None:
    # VolFs keeps owner rwx on every host directory, but a tree touched by
    # host tools may lack it, and then its entries cannot be unlinked.
    os.chmod(top, stat.S_IMODE(os.lstat(top).st_mode) | stat.S_IRWXU)
    for dirpath, dirnames, _files in os.walk(top):
        for name in dirnames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):  # never chmod through a symlink
                os.chmod(path, stat.S_IMODE(st.st_mode) | stat.S_IRWXU)
