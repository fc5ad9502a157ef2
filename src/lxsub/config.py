"""Configuration: /etc/lx.conf inside a distro, and the host's lx config file.

Both are INI files, read the way WSL reads wsl.conf: `[section]` headers,
`key = value` lines, `#` or `;` comment lines, keys matched without regard
to case, the last of a repeated key wins, a value may be quoted ("...").

/etc/lx.conf (inside the distro; the Linux path is what messages show):

    [user]       default = NAME             user `lx` runs as by default
    [boot]       command = CMD              run (as root) when the instance starts
    [network]    hostname = NAME            the instance's hostname
    [automount]  enabled = true|false       mount host directories under root
                 root = /mnt/               where (an absolute path)
                 options = a,b=c            DrvFs mount options
                 users = @lxhost, alice     Linux users who may use DrvFs
    [interop]    enabled = true|false       run host programs from the distro
                 users = @lxhost            Linux users who may run host programs
                 appendHostPath = false     add the host's PATH to the distro's

`users` (a host door, see kernel/doors.py and docs/SECURITY.md): names of
users, `@group` for the members of a group, `*` for every user; separated
by commas or blanks. Without it: root, the distro's default user and the
members of group `lxhost`.

$XDG_CONFIG_HOME/lx/config (default ~/.config/lx/config), on the host:

    [manager]    idle_timeout = SECONDS     the manager exits after this long
                                            with no instance running
                 default_distro = NAME      distro used when -d is not given
                                            (overrides the registry's default)
    [instance]   idle_timeout = SECONDS     grace period before an instance
                                            whose last client left is ended

A missing file gives the defaults. A bad value or a malformed line is an
error (ConfigError, an LxError with EXIT_DATAERR) whose one-line message
names the file, the line, the section and key, and what is wrong:

    /etc/lx.conf:3: [boot] command: empty value; give a command or remove the line
    ~/.config/lx/config:5: [instance] idle_timeout: 'abc' is not a number of seconds

Unknown sections and keys are not errors (a newer lx may know them): they
are listed in `warnings`, in the same file:line form.
"""

from __future__ import annotations

import errno
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lxsub.abi.fcntl import RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS
from lxsub.errors import EXIT_DATAERR, LxError
from lxsub.state import host_config_path

DISTRO_CONFIG_PATH = "/etc/lx.conf"
_MAX_CONFIG_BYTES = 1 << 20


class ConfigError(LxError):
    """A configuration file has a bad line or value."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}", EXIT_DATAERR)
        self.where = where


# -- typed results --


@dataclass(frozen=True)
class UserSection:
    default: str | None = None


@dataclass(frozen=True)
class BootSection:
    command: str | None = None


@dataclass(frozen=True)
class NetworkSection:
    hostname: str | None = None


@dataclass(frozen=True)
class AutomountSection:
    enabled: bool = True
    root: str = "/mnt/"      # the host's / appears at <root>host (WSL: drives at <root>c)
    options: str = ""
    tmp: bool = False         # a tmpfs on /tmp (memory, gone with the instance)
    users: tuple[str, ...] | None = None   # who may use DrvFs (None: the default rule)


@dataclass(frozen=True)
class InteropSection:
    enabled: bool = True
    # Off by default: host programs are ELF files like the distro's, so a
    # command missing from the distro would silently be the host's.
    append_host_path: bool = False
    users: tuple[str, ...] | None = None   # who may run host programs (None: the default)


@dataclass(frozen=True)
class DistroConfig:
    """What /etc/lx.conf says, with defaults for everything it does not."""

    user: UserSection = field(default_factory=UserSection)
    boot: BootSection = field(default_factory=BootSection)
    network: NetworkSection = field(default_factory=NetworkSection)
    automount: AutomountSection = field(default_factory=AutomountSection)
    interop: InteropSection = field(default_factory=InteropSection)
    warnings: tuple[str, ...] = ()


DEFAULT_MANAGER_IDLE_TIMEOUT = 60.0
DEFAULT_INSTANCE_IDLE_TIMEOUT = 15.0


@dataclass(frozen=True)
class HostConfig:
    """The host's lx settings ($XDG_CONFIG_HOME/lx/config)."""

    manager_idle_timeout: float = DEFAULT_MANAGER_IDLE_TIMEOUT
    instance_idle_timeout: float = DEFAULT_INSTANCE_IDLE_TIMEOUT
    default_distro: str | None = None
    path: Path | None = None
    warnings: tuple[str, ...] = ()


# -- the INI reader --


@dataclass
class _Value:
    text: str
    line: int


_SECTION_RE = re.compile(r"\[\s*([A-Za-z0-9_.-]+)\s*\]")
_KEY_RE = re.compile(r"[A-Za-z0-9_.-]+")


def _parse_ini(text: str, label: str) -> dict[str, dict[str, _Value]]:
    """{section: {key: value}}, both lower-cased; raises ConfigError."""
    sections: dict[str, dict[str, _Value]] = {}
    current: dict[str, _Value] | None = None
    current_name = ""
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        where = f"{label}:{number}"
        if line.startswith("["):
            match = _SECTION_RE.fullmatch(_strip_comment(line))
            if not match:
                raise ConfigError(where, f"malformed section header {line!r}; write [name]")
            current_name = match.group(1).lower()
            current = sections.setdefault(current_name, {})
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(where, f"{line!r} is not 'key = value'")
        if not _KEY_RE.fullmatch(key):
            raise ConfigError(where, f"malformed key {key!r}")
        if current is None:
            raise ConfigError(where, f"{key} is outside any section; put it under a [section]")
        value = _unquote(_strip_comment(value.strip()), where, f"[{current_name}] {key}")
        current[key.lower()] = _Value(value, number)
    return sections


def _strip_comment(value: str) -> str:
    # "a = b # note": a comment after whitespace; quoted values keep '#'.
    if value.startswith('"'):
        end = value.find('"', 1)
        if end > 0:
            return value[: end + 1] + _strip_comment(value[end + 1:]).strip()
        return value
    match = re.search(r"\s[#;]", value)
    return value[: match.start()].rstrip() if match else value


def _unquote(value: str, where: str, what: str) -> str:
    if value.startswith('"'):
        if len(value) < 2 or not value.endswith('"') or '"' in value[1:-1]:
            raise ConfigError(where, f"{what}: unbalanced quotes in {value!r}")
        return value[1:-1]
    return value


# -- value types --


class _Bad(Exception):
    """A value is wrong; the message says why (without file, line and key)."""


def _boolean(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("true", "yes", "on", "1"):
        return True
    if lowered in ("false", "no", "off", "0"):
        return False
    raise _Bad(f"{value!r} is not true or false")


def _seconds(value: str) -> float:
    text = value.strip()
    if text.lower().endswith("s"):
        text = text[:-1].strip()
    try:
        seconds = float(text)
    except ValueError:
        raise _Bad(f"{value!r} is not a number of seconds") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise _Bad(f"{value!r} is not a number of seconds (0 or more)")
    return seconds


def _non_empty(what: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not value.strip():
            raise _Bad(f"empty value; give {what} or remove the line")
        return value.strip()

    return check


_USER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?")


def _user_name(value: str) -> str:
    if not _USER_RE.fullmatch(value):
        raise _Bad(f"{value!r} is not a valid user name")
    return value


def _door_users(value: str) -> tuple[str, ...]:
    """`@lxhost, alice bob` -> ("@lxhost", "alice", "bob"); `*` is everyone."""
    items = tuple(item for item in re.split(r"[\s,]+", value.strip()) if item)
    if not items:
        raise _Bad("empty list; name users, @groups or * (everyone), or remove the line")
    for item in items:
        name = item[1:] if item.startswith("@") else item
        if item != "*" and not _USER_RE.fullmatch(name):
            raise _Bad(f"{item!r} is not a user name, @group or *")
    return items


_HOST_LABEL_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _hostname(value: str) -> str:
    if not value or len(value) > 64 or not all(
        _HOST_LABEL_RE.fullmatch(label) for label in value.split(".")
    ):
        raise _Bad(f"{value!r} is not a valid host name (letters, digits, '-', '.'; at most 64)")
    return value


def _absolute_dir(value: str) -> str:
    if not value.startswith("/") or "\0" in value:
        raise _Bad(f"{value!r} is not an absolute path")
    if any(part == ".." for part in value.split("/")):
        raise _Bad(f"{value!r} may not contain '..'")
    return value.rstrip("/") + "/"


_OPTION_RE = re.compile(r"[A-Za-z0-9_]+(=[A-Za-z0-9_.:/+-]*)?")


def _mount_options(value: str) -> str:
    items = [item.strip() for item in value.split(",")] if value.strip() else []
    for item in items:
        if not _OPTION_RE.fullmatch(item):
            raise _Bad(f"{item!r} is not a mount option (name or name=value, comma-separated)")
    return ",".join(items)


def _distro_name(value: str) -> str:
    from lxsub.state import check_name

    try:
        check_name(value)
    except LxError:
        raise _Bad(f"{value!r} is not a distro name (letters, digits, '.', '_', '-')") from None
    return value


# section -> key (lower case) -> (attribute, converter)
_DISTRO_SCHEMA: dict[str, dict[str, tuple[str, Callable[[str], object]]]] = {
    "user": {"default": ("default", _user_name)},
    "boot": {"command": ("command", _non_empty("a command"))},
    "network": {"hostname": ("hostname", _hostname)},
    "automount": {
        "enabled": ("enabled", _boolean),
        "root": ("root", _absolute_dir),
        "options": ("options", _mount_options),
        "tmp": ("tmp", _boolean),
        "users": ("users", _door_users),
    },
    "interop": {
        "enabled": ("enabled", _boolean),
        "appendhostpath": ("append_host_path", _boolean),
        "users": ("users", _door_users),
    },
}
_DISTRO_SECTIONS = {
    "user": UserSection, "boot": BootSection, "network": NetworkSection,
    "automount": AutomountSection, "interop": InteropSection,
}

_HOST_SCHEMA: dict[str, dict[str, tuple[str, Callable[[str], object]]]] = {
    "manager": {
        "idle_timeout": ("manager_idle_timeout", _seconds),
        "default_distro": ("default_distro", _distro_name),
    },
    "instance": {"idle_timeout": ("instance_idle_timeout", _seconds)},
}


def _convert(
    sections: dict[str, dict[str, _Value]],
    schema: dict[str, dict[str, tuple[str, Callable[[str], object]]]],
    label: str,
    lenient: bool = False,
) -> tuple[dict[str, dict[str, object]], list[str]]:
    values: dict[str, dict[str, object]] = {}
    warnings: list[str] = []
    for section, keys in sections.items():
        known = schema.get(section)
        if known is None:
            first = min((v.line for v in keys.values()), default=0)
            warnings.append(f"{label}:{first}: unknown section [{section}] ignored")
            continue
        for key, value in sorted(keys.items(), key=lambda kv: kv[1].line):
            if key not in known:
                warnings.append(f"{label}:{value.line}: [{section}] {key}: unknown key ignored")
                continue
            attribute, converter = known[key]
            try:
                values.setdefault(section, {})[attribute] = converter(value.text)
            except _Bad as e:
                if not lenient:
                    raise ConfigError(f"{label}:{value.line}", f"[{section}] {key}: {e}") from None
                warnings.append(f"{label}:{value.line}: [{section}] {key}: {e}; "
                                "the default is used")
    return values, warnings


# -- distro config --


def parse_distro_config(text: str, label: str = DISTRO_CONFIG_PATH,
                        lenient: bool = False) -> DistroConfig:
    """Parse the text of an /etc/lx.conf. Lenient: a bad value becomes a
    warning and its default is used (an instance still starts, as WSL does,
    so the file can be fixed from inside)."""
    try:
        sections = _parse_ini(text, label)
    except ConfigError as e:
        if not lenient:
            raise
        return DistroConfig(warnings=(f"{e.message}; the file is ignored",))
    values, warnings = _convert(sections, _DISTRO_SCHEMA, label, lenient)
    parts = {name: cls(**values.get(name, {})) for name, cls in _DISTRO_SECTIONS.items()}
    return DistroConfig(**parts, warnings=tuple(warnings))


def load_distro_config(rootfs: str | Path, lenient: bool = False) -> DistroConfig:
    """/etc/lx.conf of the distro whose root file system is `rootfs` (host path).

    The file is looked up inside the distro: symlinks on the way resolve
    within `rootfs`, never to host files. A missing file gives the defaults.
    """
    text = read_in_root(rootfs, DISTRO_CONFIG_PATH)
    return DistroConfig() if text is None else parse_distro_config(text, lenient=lenient)


# -- host config --


def _display(path: Path) -> str:
    home = str(Path.home())
    text = str(path)
    if home not in ("", "/") and text.startswith(home + "/"):
        return "~" + text[len(home):]
    return text


def parse_host_config(text: str, label: str = "~/.config/lx/config") -> HostConfig:
    values, warnings = _convert(_parse_ini(text, label), _HOST_SCHEMA, label)
    flat: dict[str, object] = {}
    for section in values.values():
        flat.update(section)
    return HostConfig(**flat, warnings=tuple(warnings))  # type: ignore[arg-type]


def load_host_config(path: str | Path | None = None) -> HostConfig:
    """The host config (defaults when the file does not exist)."""
    path = Path(path) if path is not None else host_config_path()
    label = _display(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_CONFIG_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        return HostConfig(path=path)
    except OSError as e:
        raise ConfigError(label, f"cannot read: {e.strerror}") from e
    text = _decode(raw, label)
    config = parse_host_config(text, label)
    return HostConfig(
        manager_idle_timeout=config.manager_idle_timeout,
        instance_idle_timeout=config.instance_idle_timeout,
        default_distro=config.default_distro,
        path=path,
        warnings=config.warnings,
    )


def _decode(raw: bytes, label: str) -> str:
    if len(raw) > _MAX_CONFIG_BYTES:
        raise ConfigError(label, f"larger than {_MAX_CONFIG_BYTES} bytes; is it the right file?")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"{label}:{line}", "not UTF-8 text") from None


# -- reading a file inside a distro --


def _openat2_in_root(root_fd: int, path: str) -> int:
    from lxsub.platform import libc       # ctypes: not for `lx`'s launches, which read no distro file

    return libc.openat2(root_fd, os.fsencode(path), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC, 0,
                        RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)


def read_in_root(rootfs: str | Path, path: str, limit: int = _MAX_CONFIG_BYTES) -> str | None:
    """Text of `path` inside `rootfs`, symlinks resolved within it; None if missing.

    Raises ConfigError when it exists but is not a readable UTF-8 regular file.
    """
    try:
        root_fd = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fd = _openat2_in_root(root_fd, path.lstrip("/"))
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return None
            if e.errno != errno.ENOSYS:
                raise ConfigError(path, f"cannot read: {e.strerror}") from None
            fd = _open_in_root_walk(root_fd, path)
            if fd is None:
                return None
    finally:
        os.close(root_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(path, "not a regular file")
        raw = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    return _decode(raw, path)


_MAX_SYMLINKS = 40          # Linux's MAXSYMLINKS


def _open_in_root_walk(root_fd: int, path: str) -> int | None:
    """RESOLVE_IN_ROOT on hosts without openat2 (Linux < 5.6): one component
    at a time with O_NOFOLLOW; a symlink's target is walked in its place
    (an absolute one from the distro's root), and '..' never climbs above
    the root. None if missing, a loop, or not reachable."""
    todo = [p for p in path.split("/") if p not in ("", ".")]
    dirs = [os.dup(root_fd)]              # the directories walked, the root first
    links = 0
    try:
        while todo:
            part = todo.pop(0)
            if part == "..":
                if len(dirs) > 1:
                    os.close(dirs.pop())
                continue
            flags = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_RDONLY
            flags |= os.O_NONBLOCK if not todo else os.O_DIRECTORY
            try:
                fd = os.open(part, flags, dir_fd=dirs[-1])
            except OSError:
                try:
                    target = os.readlink(part, dir_fd=dirs[-1])
                except OSError:
                    return None           # missing, or not a directory on the way
                links += 1
                if links > _MAX_SYMLINKS:
                    return None
                if target.startswith("/"):
                    while len(dirs) > 1:
                        os.close(dirs.pop())
                todo[:0] = [p for p in target.split("/") if p not in ("", ".")]
                continue
            if not todo:
                return fd
            dirs.append(fd)
        return None
    finally:
        for fd in dirs:
            os.close(fd)


__all__ = [
    "AutomountSection", "BootSection", "ConfigError", "DistroConfig", "HostConfig",
    "InteropSection", "NetworkSection", "UserSection", "DISTRO_CONFIG_PATH",
    "host_config_path", "load_distro_config", "load_host_config", "parse_distro_config",
    "parse_host_config", "read_in_root",
]
