"""Host doors: which Linux users inside may use DrvFs and interop.

DrvFs (`/mnt/host`) shows the host user's files with the host user's
rights, and interop runs host programs as the host user: whoever passes
either door *is* the host user, and so also root of the distro (its files
are the host user's). A door is therefore given to some Linux users only,
by `users =` in `[automount]` and `[interop]` of /etc/lx.conf:

    users = @lxhost, alice      # members of group lxhost, and alice
    users = *                   # every Linux user (WSL's behaviour)

Without the line: root, the distro's default user and the members of group
`lxhost` (`lx --install --user NAME` makes that group and puts NAME in it).
System users (www-data, postgres...) and other users hold no door.

Who a caller is: its file-system credentials, as Linux decides access
(fsuid; fsgid and supplementary groups for `@group`), so a daemon that
dropped to www-data has lost the door with its privileges, and a user
added to the group holds it from its next login (setgroups), as with any
Linux group. Names are resolved in the distro's own /etc/passwd and
/etc/group, re-read when they change (checked at most once a second).

A refused caller gets EACCES, whatever its capabilities: the door is the
host's, and CAP_DAC_OVERRIDE inside is not the host user's consent.
"""

from __future__ import annotations

import errno
import os
import time
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from lxsub.kernel.creds import Creds
    from lxsub.kernel.instance import Instance

DOOR_GROUP = "lxhost"
_RECHECK_SECONDS = 1.0


def default_users(default_user: str | None) -> tuple[str, ...]:
    """The rule when lx.conf has no `users =`: root, the default user, @lxhost."""
    names = ["root"]
    if default_user and default_user != "root":
        names.append(default_user)
    return (*names, "@" + DOOR_GROUP)


def _ids(text: str, names: set[str]) -> set[int]:
    """ids (3rd field) of the lines of a passwd/group file whose name is in names."""
    found = set()
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] in names:
            try:
                found.add(int(fields[2]))
            except ValueError:
                pass
    return found


class Door:
    """One door (DrvFs or interop) of one instance and who may pass it."""

    def __init__(self, inst: "Instance", what: str, users: Iterable[str]) -> None:
        self.inst = inst
        self.what = what                     # "[automount]" or "[interop]", for messages
        entries = tuple(users)
        self.everyone = "*" in entries
        self.user_names = {e for e in entries if not e.startswith("@") and e != "*"}
        self.group_names = {e[1:] for e in entries if e.startswith("@")}
        self.uids: frozenset[int] = frozenset()
        self.gids: frozenset[int] = frozenset()
        self._seen: tuple | None = None      # identity of /etc/passwd and /etc/group
        self._checked = -_RECHECK_SECONDS

    def allows(self, creds: "Creds") -> bool:
        if self.everyone:
            return True
        self._refresh()
        if creds.fsuid in self.uids:
            return True
        gids = self.gids
        return creds.fsgid in gids or any(g in gids for g in creds.groups)

    def check(self, creds: "Creds") -> None:
        """EACCES unless the caller holds this door."""
        if not self.allows(creds):
            self.inst.log.once(f"door:{self.what}:{creds.fsuid}",
                               f"{self.what} users: uid {creds.fsuid} does not hold this host "
                               f"door (see /etc/lx.conf); refused")
            raise OSError(errno.EACCES, "permission denied")

    # -- names to ids ------------------------------------------------------------

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < _RECHECK_SECONDS:
            return
        self._checked = now
        seen = tuple(_identity(self.inst.rootfs, p) for p in ("etc/passwd", "etc/group"))
        if seen == self._seen:
            return
        self._seen = seen
        passwd = _read(self.inst, "/etc/passwd")
        uids = _ids(passwd, self.user_names)
        if "root" in self.user_names:
            uids.add(0)          # root is uid 0 even in a distro without /etc/passwd
        self.uids = frozenset(uids)
        self.gids = frozenset(_ids(_read(self.inst, "/etc/group"), self.group_names))


def _identity(rootfs: str, path: str) -> tuple:
    # A change of the file (edited in place or replaced) changes one of these.
    # The path is only compared, never used to open: the contents are read
    # inside the root (_read), symlinks resolved there.
    try:
        s = os.stat(os.path.join(rootfs, path), follow_symlinks=False)
    except OSError:
        return ()
    return (s.st_ino, s.st_mtime_ns, s.st_size)


def _read(inst: "Instance", path: str) -> str:
    from lxsub.config import read_in_root
    from lxsub.errors import LxError
    try:
        return read_in_root(inst.rootfs, path) or ""
    except LxError as e:
        inst.log.warn(f"host doors: cannot read {path}: {e.message}; no user there holds a door")
        return ""


def make_doors(inst: "Instance", default_user: str | None) -> tuple[Door, Door]:
    """(the DrvFs door, the interop door) as the instance's lx.conf says."""
    config = inst.config
    default = config.user.default or default_user
    automount = config.automount.users or default_users(default)
    interop = config.interop.users or default_users(default)
    return Door(inst, "[automount]", automount), Door(inst, "[interop]", interop)
