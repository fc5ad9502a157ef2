"""Mount propagation (Linux fs/pnode.c, Documentation/filesystems/sharedsubtree.rst).

A shared mount is in a peer group (Mount.group): a mount or umount on a
directory of one peer is repeated on the same directory of every other
peer, in whichever mount namespace it is, and of every slave of the group
(Mount.master: the group it receives from); nothing goes from a slave back
to its master. Peers come from copying a namespace (vfs/mount.py
MountTable.copy: a shared mount's clone is its peer) and from bind mounts
of a shared mount. mount(2)'s MS_SHARED, MS_SLAVE, MS_PRIVATE and
MS_UNBINDABLE change a mount's type (with MS_REC, of the mounts below it
too); an unbindable mount may not be bound (EINVAL).

Not done: a propagated mount is only made where nothing is mounted yet
(Linux stacks it, tucking what was there below), and only on peers and
slaves that show the same directory of the file system as the mount
mounted on (the same root; a bind of a subdirectory receives nothing).
"""

from __future__ import annotations

import errno
import itertools
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from lxsub.kernel.vfs.mount import Mount, MountTable

# mount(2) flags that change the propagation type (include/uapi/linux/mount.h).
MS_UNBINDABLE, MS_PRIVATE, MS_SLAVE, MS_SHARED = 1 << 17, 1 << 18, 1 << 19, 1 << 20
TYPES = MS_UNBINDABLE | MS_PRIVATE | MS_SLAVE | MS_SHARED

_group_ids = itertools.count(1)      # mnt_group_id: never given twice


def new_group() -> int:
    return next(_group_ids)


def check_type_flags(flags: int) -> int:
    """The one propagation type asked for (flags_to_propagation_type):
    EINVAL for none or several."""
    kind = flags & TYPES
    if kind & (kind - 1) or not kind:
        raise OSError(errno.EINVAL, "one propagation type at a time")
    return kind


def change_type(table: "MountTable", m: "Mount", kind: int, rec: bool) -> None:
    """do_change_type: `m` (and with `rec` every mount below it) becomes
    shared, a slave, private or unbindable."""
    for t in [m, *(table.descendants(m) if rec else [])]:
        if kind == MS_SHARED:
            if not t.group:
                t.group = new_group()
            t.unbindable = False
        elif kind == MS_SLAVE:
            if t.group:
                has_peers = any(p is not t for p in _members(table, t.group))
                group, t.group = t.group, 0
                if has_peers:
                    t.master = group        # receives from its former peers
                else:
                    _orphan_slaves(table, group, t.master)
            t.unbindable = False
        else:                                # private, unbindable
            leave_group(table, t)
            t.master = 0
            t.unbindable = kind == MS_UNBINDABLE


def leave_group(table: "MountTable", m: "Mount") -> None:
    """`m` is no longer shared (made private, or unmounted): the slaves of
    its group, if it was the last peer, receive from its master
    (do_make_slave's transfer)."""
    group, m.group = m.group, 0
    if group and not any(p is not m for p in _members(table, group)):
        _orphan_slaves(table, group, m.master)


def as_peer_of(source: "Mount", new: "Mount") -> None:
    """A bind mount of a file of `source` (clone_mnt): a peer of a shared
    source, a slave of the same master as a slave one."""
    new.group = source.group
    new.master = source.master


def propagate_mount(table: "MountTable", new: "Mount",
                    mount_at: Callable[["Mount", "Mount", str, int, int], "Mount | None"]) -> None:
    """After `new` was mounted in its parent: a parent that is shared makes
    `new` shared too (attach_recursive_mnt), and every peer and slave of the
    parent's group gets a copy on the same directory (propagate_mnt):
    peers' copies are peers of `new`, slaves' copies its slaves.
    `mount_at(receiver, new, path, group, master)` makes one copy."""
    parent = new.parent
    if parent is None or not parent.group:
        return
    if not new.group:
        new.group = new_group()
    seen = {id(parent)}
    _spread(table, parent, new, parent.group, new.group, 0, seen, mount_at)


def _spread(table, parent, new, group, copy_group, copy_master, seen, mount_at) -> None:
    """Copies of `new` on the peers (group `group`) of the parent, as
    members of `copy_group` with master `copy_master`, then on the slaves
    of that group: each slave peer group as a group of its own."""
    for r in _members(table, group):
        if id(r) not in seen:
            seen.add(id(r))
            _copy_on(r, parent, new, copy_group, copy_master, mount_at)
    sender = copy_group or copy_master
    for r in [s for t in list(table.family) for s in t.mounts if s.master == group]:
        if id(r) in seen:
            continue
        if r.group:                 # a shared slave: its whole peer group receives
            _spread(table, parent, new, r.group, new_group(), sender, seen, mount_at)
        else:
            seen.add(id(r))
            _copy_on(r, parent, new, 0, sender, mount_at)


def _copy_on(receiver, parent, new, group, master, mount_at) -> None:
    if receiver.fs is not parent.fs or receiver.root_path != parent.root_path:
        return                                  # another directory of the file system
    rel = new.path[len(parent.path.rstrip("/")):]
    path = receiver.path.rstrip("/") + rel or "/"
    mount_at(receiver, new, path, group, master)


def propagate_umount(table: "MountTable", m: "Mount",
                     umount: Callable[["MountTable", "Mount"], None]) -> None:
    """Before `m` goes: the mounts on the same directory of each peer and
    slave of its parent's group go too, those with nothing mounted below
    them (propagate_umount)."""
    parent, point = m.parent, m.mountpoint
    if parent is None or point is None or not parent.group:
        return                          # a slave's own mounts go nowhere
    for r in _receivers(table, parent):
        t = r.table
        if t is None or r.root_path != parent.root_path or r.fs is not parent.fs:
            continue
        child = t.mounted_at(r, point.key)
        if child is not None and child is not m and not t.children(child):
            umount(t, child)


def _receivers(table: "MountTable", m: "Mount") -> list["Mount"]:
    """Every mount a mount or umount in `m` reaches: its peers, the slaves
    of its group, and theirs."""
    out: list = []
    groups, done = [m.group] if m.group else [], set()
    while groups:
        g = groups.pop()
        if g in done:
            continue
        done.add(g)
        for t in list(table.family):
            for r in t.mounts:
                if r is not m and (r.group == g or r.master == g) and r not in out:
                    out.append(r)
                    if r.group:
                        groups.append(r.group)
    return out


def _members(table: "MountTable", group: int) -> list["Mount"]:
    return [r for t in list(table.family) for r in t.mounts if r.group == group]


def _orphan_slaves(table: "MountTable", group: int, master: int) -> None:
    for t in list(table.family):
        for r in t.mounts:
            if r.master == group:
                r.master = master
