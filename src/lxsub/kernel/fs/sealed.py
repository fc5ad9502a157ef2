"""The instance's own storage, never shown through DrvFs.

What lxsub keeps on the host for its distros is the distros themselves: a
Linux user who could reach `$LX_HOME/distros/NAME/rootfs/etc/shadow`
through /mnt/host could rewrite the distro (become its root), and one who
could reach the runtime directory could talk to the manager. So DrvFs shows
these directories as empty, inaccessible directories, to every Linux user,
root included:

- `$LX_HOME` (registry, distros, logs, locks);
- the runtime directories (manager and instance sockets), every place
  lxsub/runtime.py may put them;
- every registered distro's root file system (an imported one may live
  outside `$LX_HOME`), the one being built, and this instance's own;
- the scratch directories of running instances (pseudo files, tmpfs
  fallbacks) in the host's /dev/shm or tmp.

They are recognised by the identity of the host object, (st_dev, st_ino),
never by path: a symlink, `..`, a bind mount or another host mount point of
the same file system that leads there reaches the same inode. A sealed
directory becomes, for the walk, a directory the provider made and deleted
at once (a *blank*): listing it, looking a name up in it, creating in it,
renaming, removing or changing it are EACCES; what the host kernel would
do with its descriptor, should one leak, is act on an empty dead directory
(where even host root cannot create a file).

The set is recomputed at most once a second (the registry may gain a
distro while the instance runs); the comparison itself is one set lookup
on the stat DrvFs takes anyway.
"""

from __future__ import annotations

import os
import stat as st
import tempfile
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lxsub.kernel.instance import Instance

_RECHECK_SECONDS = 1.0


def _blank_dir() -> int:
    """An O_PATH descriptor of an empty directory that no longer exists."""
    path = tempfile.mkdtemp(prefix="lxsub-sealed-")
    try:
        fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    finally:
        os.rmdir(path)
    return fd


def storage_paths(inst: "Instance") -> set[str]:
    """Host directories of lxsub's own storage (see the module's doc)."""
    from lxsub.runtime import storage_dirs
    from lxsub.state import Registry, lx_home
    home = lx_home()
    paths = {str(home), inst.rootfs}
    paths.update(str(d) for d in storage_dirs())
    names = {inst.name}
    try:
        for distro in Registry(home).list():
            names.add(distro.name)
            paths.add(str(distro.rootfs))
            if distro.work:
                paths.add(str(distro.work))
    except Exception as e:      # a corrupt registry: still seal what we know
        inst.log.warn(f"drvfs: cannot read the registry to hide its distros: {e}")
    # Scratch directories: Instance.scratch_dir() names them lxsub-<distro>-*.
    prefixes = tuple(f"lxsub-{name}-" for name in names)
    for base in {"/dev/shm", tempfile.gettempdir()}:
        try:
            entries = [n for n in os.listdir(base) if n.startswith(prefixes)]
        except OSError:
            continue
        paths.update(os.path.join(base, n) for n in entries)
    return paths


class Storage:
    """The sealed directories of one instance: identities, paths, the blank."""

    def __init__(self, inst: "Instance") -> None:
        self.inst = inst
        self.blank_fd = _blank_dir()
        s = os.fstat(self.blank_fd)
        self.blank_st = s
        self.blank_key = (s.st_dev, s.st_ino)
        self.keys: frozenset[tuple[int, int]] = frozenset()
        self.paths: tuple[str, ...] = ()
        self._checked = -_RECHECK_SECONDS

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < _RECHECK_SECONDS:
            return
        self._checked = now
        keys, paths = set(), set()
        uid = os.getuid()
        for path in storage_paths(self.inst):
            try:
                s = os.stat(path)      # following a symlink: the directory it names
            except OSError:
                continue
            if not st.S_ISDIR(s.st_mode):
                continue
            if s.st_uid != uid and path.startswith(("/dev/shm/", tempfile.gettempdir() + "/")):
                continue               # another host user's, not ours to hide
            keys.add((s.st_dev, s.st_ino))
            paths.add(os.path.realpath(path))
        self.keys = frozenset(keys)
        self.paths = tuple(sorted(paths))

    def is_sealed(self, s: os.stat_result) -> bool:
        """Is this host object one of the sealed directories?"""
        self.refresh()
        return (s.st_dev, s.st_ino) in self.keys

    def is_blank(self, s: os.stat_result | None) -> bool:
        return s is not None and (s.st_dev, s.st_ino) == self.blank_key

    def under(self, host: str) -> bool:
        """Is a host path (as /proc/self/fd shows it) a sealed directory or
        inside one? For descriptors a program hands in."""
        self.refresh()
        return any(host == p or host.startswith(p + "/") for p in self.paths)

    def blank(self) -> tuple[int, os.stat_result]:
        """A new descriptor of the blank directory, and its stat."""
        return os.dup(self.blank_fd), self.blank_st

    def close(self) -> None:
        if self.blank_fd >= 0:
            os.close(self.blank_fd)
            self.blank_fd = -1
