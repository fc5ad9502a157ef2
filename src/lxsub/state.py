"""Where lxsub keeps its state, and the registry of imported distros.

The registry is one small JSON file, `$LX_HOME/registry.json`. Readers never
lock: every write goes to a temporary file that is fsynced and then renamed
over the old one, so a reader sees either the old or the new registry, never
a torn one. Writers serialise read-modify-write cycles with an flock on
`$LX_HOME/registry.lock`, so two `lx --import` runs cannot lose each other's
entry.

One change to a distro at a time (like the LXSS manager): install, import,
export and unregister hold a per-distro flock, `$LX_HOME/locks/NAME.lock`,
for their whole run (`Registry.distro_lock`); a second one waits a little,
then fails with EXIT_TEMPFAIL naming what holds the lock.

A distro being made or removed is in the registry with state "Installing"
or "Uninstalling", with the temporary directory it is being built in; a
launch into it is refused (`check_launchable`). The entry becomes
"Installed" only when the files are complete and in place
(`Registry.creating`). A run that dies half way (SIGKILL, power loss)
leaves such an entry with nobody holding its lock: `Registry.recover`,
called at the start of every `lx` command, removes the leftovers and says
what happened.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import stat
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple

from lxsub.errors import (
    EXIT_CANTCREAT,
    EXIT_DATAERR,
    EXIT_TEMPFAIL,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    LxError,
)

REGISTRY_FILE = "registry.json"
LOCK_FILE = "registry.lock"
LOCKS_DIR = "locks"

INSTALLED = "Installed"
INSTALLING = "Installing"
UNINSTALLING = "Uninstalling"

# How long a second install/import/export/unregister of a distro waits for
# the first before giving up.
LOCK_WAIT_SECONDS = 2.0
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


def host_config_path() -> Path:
    """$XDG_CONFIG_HOME/lx/config, else ~/.config/lx/config (lxsub.config
    reads it)."""
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg else Path.home() / ".config"
    return base / "lx" / "config"


class Distro(NamedTuple):
    """A registry entry (immutable: Registry.update writes a changed copy).
    A named tuple, not a dataclass: `dataclasses` imports `inspect`, a
    quarter of what every `lx` launch spent importing."""
    name: str
    rootfs: Path
    default_user: str = "root"
    state: str = INSTALLED
    version: int = 1
    # While Installing: the directory being built (renamed to rootfs at the
    # end) and the top-most directory made around rootfs for it (True, in
    # entries of older versions: just the directory around rootfs).
    work: str | None = None
    made_parent: str | bool = False
    # What it was made from ("busybox 1:1.35.0-4", "debian bookworm", "import").
    source: str = ""
    # The SQLite database of its Linux metadata when its file system takes no
    # user xattrs (kernel/fs/sqlitestore.py); None: the user.lxsub.meta xattrs.
    meta_db: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = self._asdict()
        data["rootfs"] = str(self.rootfs)
        if self.work is None:
            del data["work"], data["made_parent"]
        if self.meta_db is None:
            del data["meta_db"]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Distro":
        return cls(
            name=str(data["name"]),
            rootfs=Path(data["rootfs"]),
            default_user=str(data.get("default_user", "root")),
            state=str(data.get("state", INSTALLED)),
            version=int(data.get("version", 1)),
            work=str(data["work"]) if data.get("work") else None,
            made_parent=(data["made_parent"] if isinstance(data.get("made_parent"), str)
                         else bool(data.get("made_parent", False))),
            source=str(data.get("source", "")),
            meta_db=str(data["meta_db"]) if data.get("meta_db") else None,
        )


MAX_NAME = 64


def check_name(name: str) -> None:
    """Reject distro names that would be awkward in paths, shells and listings
    (the name becomes a file name: `.` and `..` would be directories)."""
    if not _NAME_RE.fullmatch(name or "") or name in (".", ".."):
        raise LxError(
            f"invalid distro name {name!r}: use only letters, digits, '.', '_' and '-' "
            "(and not '.' or '..' alone)",
            EXIT_USAGE,
        )
    if len(name) > MAX_NAME:
        raise LxError(f"invalid distro name: {len(name)} characters, at most {MAX_NAME}",
                      EXIT_USAGE)


def check_launchable(distro: Distro) -> None:
    """Refuse a launch into a distro that is being installed or removed,
    or whose files are gone. Every run path calls this before starting."""
    if distro.state == INSTALLING:
        raise LxError(
            f"distro {distro.name!r} is still being installed; "
            "wait for the install to finish (see 'lx --list -v')",
            EXIT_TEMPFAIL,
        )
    if distro.state == UNINSTALLING:
        raise LxError(
            f"distro {distro.name!r} is being unregistered; it cannot be started",
            EXIT_TEMPFAIL,
        )
    if not Path(distro.rootfs).is_dir():
        raise LxError(
            f"the files of distro {distro.name!r} are missing ({distro.rootfs}); "
            f"'lx --unregister {distro.name}' removes the entry",
            EXIT_UNAVAILABLE,
        )


# Which distros have a running instance. The manager daemon knows; until it
# is asked, nothing runs between lx invocations.
_running_provider: Callable[[], Iterable[str]] | None = None


def set_running_provider(provider: Callable[[], Iterable[str]] | None) -> None:
    """Install the function that says which distros are running (None: none)."""
    global _running_provider
    _running_provider = provider


def running_distros() -> frozenset[str]:
    """Names of the distros with a running instance."""
    if _running_provider is None:
        return frozenset()
    return frozenset(_running_provider())


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

    def check_new_name(self, name: str) -> None:
        """Fail early when `name` is taken by a complete distro (one being
        installed or removed is left to the lock, which says it is busy)."""
        check_name(name)
        for d in self.list():
            if d.name == name and d.state == INSTALLED:
                raise LxError(
                    f"a distro named {name!r} already exists "
                    "(choose another name or 'lx --unregister' it first)",
                    EXIT_CANTCREAT,
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
            found = self._find(distros, name)
            if found.state != INSTALLED:
                raise LxError(
                    f"distro {name!r} is {found.state.lower()}; it cannot be the default",
                    EXIT_TEMPFAIL,
                )
            self._store(name, distros)

    def update(self, name: str, **changes: Any) -> Distro:
        """Change fields of one entry (e.g. default_user); returns the new entry."""
        with self.locked():
            default_name, distros = self._load()
            old = self._find(distros, name)
            new = old._replace(**changes)
            distros[distros.index(old)] = new
            self._store(default_name, distros)
        return new

    # -- one change to a distro at a time --

    @contextlib.contextmanager
    def distro_lock(self, name: str, action: str, wait: float | None = None) -> Iterator[None]:
        """Hold distro `name`'s change lock for `action` ("install", "import",
        "export", "unregister"); waits up to `wait` seconds for another holder,
        then fails with EXIT_TEMPFAIL."""
        check_name(name)
        wait = LOCK_WAIT_SECONDS if wait is None else wait
        locks = self.home / LOCKS_DIR
        self._ensure_home()
        path = locks / f"{name}.lock"
        try:
            locks.mkdir(mode=0o700, exist_ok=True)
            fd = _take_file_lock(path, name, time.monotonic() + wait)
        except OSError as e:
            raise LxError(f"cannot take the lock {path}: {e.strerror}", EXIT_CANTCREAT) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{action} (pid {os.getpid()})\n".encode(), 0)
            yield
        finally:
            # A distro that no longer exists (unregistered, a failed import)
            # leaves no lock behind: unlinked while held, so a waiter that
            # opened the old file sees it is gone and takes a new one.
            with contextlib.suppress(OSError, LxError):
                if name not in self:
                    os.unlink(path)
            os.close(fd)  # releases the flock

    def is_busy(self, name: str) -> bool:
        """Whether some process holds distro `name`'s change lock."""
        path = self.home / LOCKS_DIR / f"{name}.lock"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def creating(self, name: str, rootfs: Path, action: str = "install",
                 source: str = "") -> Iterator[Path]:
        """Make distro `name` at `rootfs`, all or nothing.

        Yields a new empty directory next to `rootfs` to build the tree in.
        Meanwhile the distro is registered as Installing (launches refused);
        when the body returns, the directory is renamed to `rootfs` and the
        entry becomes Installed. If the body fails, or is interrupted, the
        directory and the entry are removed (and the parent of `rootfs`, if
        this made it). A run killed outright is cleaned up by `recover`.
        """
        check_name(name)
        rootfs = Path(rootfs)
        with self.distro_lock(name, action):
            self.recover(only=name)
            if name in self:
                raise LxError(
                    f"a distro named {name!r} already exists "
                    "(choose another name or 'lx --unregister' it first)",
                    EXIT_CANTCREAT,
                )
            if os.path.lexists(rootfs):
                raise LxError(f"{rootfs} already exists; install into a new directory",
                              EXIT_CANTCREAT)
            made_parent = _make_parent(rootfs.parent)
            import tempfile
            try:
                work = Path(tempfile.mkdtemp(prefix=f".{rootfs.name}.partial-",
                                             dir=rootfs.parent))
            except OSError as e:
                if made_parent:
                    _remove_made_parents(rootfs, made_parent)
                raise LxError(f"cannot create a directory in {rootfs.parent}: {e.strerror}",
                              EXIT_CANTCREAT) from e
            entry = Distro(name=name, rootfs=rootfs, state=INSTALLING, work=str(work),
                           made_parent=made_parent, source=source)
            placed = False
            try:
                self.add(entry)
                yield work
                os.replace(work, rootfs)
                placed = True
                fsync_dir(rootfs.parent)
                self.update(name, state=INSTALLED, work=None, made_parent=False)
            except BaseException:
                with _signals_deferred():
                    if placed:
                        remove_tree(rootfs)
                    _remove_leftovers(entry)
                    with contextlib.suppress(LxError):
                        _remove_meta_db(self.get(name))     # recorded by the body
                    self._drop(name, work=str(work))
                raise

    def unregister(self, name: str) -> Distro:
        """Delete distro `name`'s files, then its entry (state Uninstalling meanwhile)."""
        with self.distro_lock(name, "unregister"):
            self.recover(only=name)
            distro = self.get(name)
            if name in running_distros():
                raise LxError(
                    f"distro {name!r} is running; end it first with 'lx --terminate {name}'",
                    EXIT_TEMPFAIL,
                )
            distro = self.update(name, state=UNINSTALLING)
            delete_rootfs(distro)
            self._drop(name)
        return distro

    def recover(self, only: str | None = None) -> list[str]:
        """Clean up after install/import/unregister runs that died half way.

        Returns one message per distro cleaned up, for the user.
        """
        messages = []
        for distro in self.list():
            if distro.state == INSTALLED or (only is not None and distro.name != only):
                continue
            if self.is_busy(distro.name):
                continue  # in progress right now
            current = self._recover_one(distro)
            if current:
                messages.append(current)
        return messages

    def _recover_one(self, distro: Distro) -> str | None:
        try:
            lock = self.distro_lock(distro.name, "recover", wait=0)
            lock.__enter__()
        except LxError:
            return None  # someone else got there first
        try:
            try:
                current = self.get(distro.name)
            except LxError:
                return None
            if current.state == INSTALLING:
                _remove_leftovers(current)
                self._drop(current.name)
                return (f"an earlier install of {current.name!r} was interrupted; "
                        "its files were removed")
            if current.state == UNINSTALLING:
                delete_rootfs(current)
                self._drop(current.name)
                return (f"an earlier unregister of {current.name!r} was interrupted; "
                        "it has now been completed")
            return None
        finally:
            lock.__exit__(None, None, None)

    def _drop(self, name: str, work: str | None = None) -> None:
        """Remove entry `name` (only if it is the one building in `work`, if given)."""
        with contextlib.suppress(LxError):
            if work is not None and self.get(name).work != work:
                return
            self.remove(name)

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
        if not os.access(self.home, os.W_OK | os.X_OK):
            raise LxError(
                f"lx state directory {self.home} is not writable; fix its permissions "
                "or set LX_HOME to a directory you can write", EXIT_CANTCREAT)

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


def _read_holder(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        return ""


def _make_parent(parent: Path) -> str | bool:
    """Create `parent` (and above) if missing; the top-most directory this
    call made (all it made is removed if the install fails), or False."""
    if parent.is_dir():
        return False
    top = parent
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    try:
        parent.mkdir(mode=0o700, parents=True)
        return str(top)
    except FileExistsError:
        if parent.is_dir():
            return False
        raise LxError(f"{parent} exists and is not a directory", EXIT_CANTCREAT) from None
    except OSError as e:
        raise LxError(f"cannot create {parent}: {e.strerror}", EXIT_CANTCREAT) from e


def _remove_made_parents(rootfs: Path, made: str | bool) -> None:
    """rmdir the (empty) directories _make_parent made for rootfs."""
    top = Path(made) if isinstance(made, str) else Path(rootfs).parent
    d = Path(rootfs).parent
    while True:
        try:
            d.rmdir()
        except OSError:
            return
        if d == top or top not in d.parents:
            return
        d = d.parent


def _take_file_lock(path: Path, name: str, deadline: float) -> int:
    """An flock on `path` (created if missing), held on the file the path
    names when we get it (a lock file unlinked meanwhile is retried)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        holder = _read_holder(fd)
                        raise LxError(
                            f"distro {name!r} is busy: {holder or 'another lx command'} "
                            "is changing it; try again when it has finished",
                            EXIT_TEMPFAIL,
                        ) from None
                    time.sleep(0.05)
            st = os.fstat(fd)
            try:
                now = os.stat(path)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)     # removed or replaced while we waited: lock the new one


def _remove_leftovers(distro: Distro) -> None:
    """Remove what an unfinished install of `distro` made."""
    if distro.work:
        work = Path(distro.work)
        if work.parent == Path(distro.rootfs).parent and work.name.startswith("."):
            remove_tree(work)
    _remove_meta_db(distro)
    if distro.made_parent:
        _remove_made_parents(Path(distro.rootfs), distro.made_parent)


def _remove_meta_db(distro: Distro) -> None:
    """A distro's SQLite metadata store goes with its files."""
    if distro.meta_db:
        from lxsub.kernel.fs.sqlitestore import remove_db
        remove_db(distro.meta_db)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Let a clean-up finish even if the user presses Ctrl-C again."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        try:
            old[sig] = signal.signal(sig, lambda n, _f: pending.append(n))
        except (ValueError, OSError):
            pass
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def remove_tree(path: Path) -> None:
    """rm -rf that copes with directories lacking owner permissions."""
    if not os.path.lexists(path):
        return
    import shutil           # as tempfile below: not for a launch, which only reads the registry
    try:
        shutil.rmtree(path)
    except PermissionError:
        _give_owner_access_to_dirs(path)
        shutil.rmtree(path)


def atomic_write(path: Path, content: bytes) -> None:
    """Replace `path` with `content` so that a crash leaves the old or the new file."""
    import tempfile
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
        _remove_meta_db(distro)
        return
    try:
        remove_tree(rootfs)
    except OSError as e:
        raise LxError(
            f"could not delete all of {rootfs} ({e.strerror}); remove it by hand", EXIT_CANTCREAT
        ) from e
    # What a killed provider left in VolFs's staging directory (kernel/fs/volfs.py).
    staging = rootfs.parent / f".{rootfs.name}.staging"
    if os.path.isdir(staging) and not os.path.islink(staging):
        with contextlib.suppress(OSError):
            remove_tree(staging)
    _remove_meta_db(distro)
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
