"""mount(2) and umount2(2) inside the instance: the caller's mount namespace.

Root inside (CAP_SYS_ADMIN in the instance's credentials) may mount the
file systems lxsub has that kernel/fs/registry.py lets it make: `tmpfs`
(a new private host tmpfs, see kernel/fs/tmpfs.py), `proc`, `sysfs`,
`cgroup2`, `devpts`, and bind mounts of instance files and directories. Nothing
reaches the host's mount table. Each mount and umount changes the table of
the caller's mount namespace (vfs/mount.py), and of the namespaces its
shared mounts propagate to (vfs/propagation.py: MS_SHARED, MS_SLAVE,
MS_PRIVATE, MS_UNBINDABLE, with MS_REC); a mount point of another
namespace is EINVAL, as Linux's check_mnt.

Read-only mounts (MS_RDONLY, and MS_REMOUNT to or from it, with or without
MS_BIND) are the provider's: every change it makes in such a mount asks
vfs/mount.py want_write first (EROFS, as Linux's mnt_want_write). A remount
changes the one mount it names (Linux's plain remount changes the file
system under every mount of it), keeps the file system's own options (a
tmpfs `size=` given to a remount is not applied), and does not refuse
(EBUSY) while a file in it is open for writing: such a descriptor keeps
writing, natively.
Not done (EINVAL): MS_MOVE. MS_REC with MS_BIND binds the tree without the
mounts below it. nosuid, nodev, noexec are accepted and shown in
/proc/mounts but not enforced.
umount refuses (EBUSY) a mount with mounts below it or with a process's
cwd or root in it, unless MNT_DETACH; open files do not keep it busy.
"""

from __future__ import annotations

import errno
import os

from lxsub.abi.fcntl import AT_EMPTY_PATH, AT_FDCWD, AT_NO_AUTOMOUNT, AT_SYMLINK_NOFOLLOW, O_PATH
from lxsub.kernel import creds as caps
from lxsub.kernel.call import Call, NewFd
from lxsub.kernel.fs import registry
from lxsub.kernel.syscalls.fcntl import install_path_fd
from lxsub.kernel.vfs import lookup, propagation
from lxsub.kernel.vfs.mount import Mount, rebased
from lxsub.platform import libc

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_SYNCHRONOUS, MS_REMOUNT, MS_MANDLOCK, MS_DIRSYNC = 16, 32, 64, 128
MS_NOSYMFOLLOW, MS_NOATIME, MS_NODIRATIME = 256, 1024, 2048
MS_BIND, MS_MOVE, MS_REC, MS_SILENT = 4096, 8192, 16384, 32768
MS_POSIXACL, MS_UNBINDABLE, MS_PRIVATE, MS_SLAVE, MS_SHARED = 1 << 16, 1 << 17, 1 << 18, 1 << 19, 1 << 20
MS_RELATIME, MS_KERNMOUNT, MS_I_VERSION, MS_STRICTATIME, MS_LAZYTIME = 1 << 21, 1 << 22, 1 << 23, 1 << 24, 1 << 25
MS_MGC_MSK, MS_MGC_VAL = 0xFFFF0000, 0xC0ED0000
_PROPAGATION = MS_UNBINDABLE | MS_PRIVATE | MS_SLAVE | MS_SHARED
# What path_mount takes out of the flags into the per-mount ones before it
# looks at the rest (a propagation change with them is no error).
_MNT_FLAGS = (MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME | MS_RELATIME
              | MS_STRICTATIME | MS_NOSYMFOLLOW | MS_KERNMOUNT)

MNT_FORCE, MNT_DETACH, MNT_EXPIRE, UMOUNT_NOFOLLOW = 1, 2, 4, 8

_SHOWN = ((MS_NOSUID, "nosuid"), (MS_NODEV, "nodev"), (MS_NOEXEC, "noexec"),
          (MS_SYNCHRONOUS, "sync"), (MS_DIRSYNC, "dirsync"), (MS_NOATIME, "noatime"),
          (MS_NODIRATIME, "nodiratime"))
_ACCEPTED = (MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_SYNCHRONOUS | MS_DIRSYNC | MS_NOATIME
             | MS_NODIRATIME | MS_SILENT | MS_RELATIME | MS_STRICTATIME | MS_LAZYTIME | MS_MANDLOCK
             | MS_I_VERSION | MS_POSIXACL | MS_NOSYMFOLLOW)


def _e(code: int, what: str = "") -> OSError:
    return OSError(code, what or os.strerror(code))


def _string(c: Call, i: int, limit: int = 4096) -> bytes:
    return c.read_str(c.ptr(i), limit) if c.ptr(i) else b""


def sys_mount(c: Call) -> int:
    # Linux copies the strings (copy_mount_string) and looks the target up
    # before may_mount(): a bad pointer is EFAULT even for the unprivileged.
    for i in (0, 2):
        _string(c, i)
    c.path(1)
    if not c.task.creds.capable(caps.CAP_SYS_ADMIN):
        raise _e(errno.EPERM)
    flags = c.args[3] & 0xFFFFFFFFFFFFFFFF
    if flags & MS_MGC_MSK == MS_MGC_VAL:
        flags &= ~MS_MGC_MSK
    inst, task = c.inst, c.task
    target = c.path(1)
    if flags & MS_REMOUNT:
        return _remount(c, target, flags)
    if flags & MS_BIND:
        return _bind(c, c.path(0), target, flags)
    if flags & _PROPAGATION:
        return _change_type(c, target, flags)
    if flags & MS_MOVE:
        inst.log.once("mount-flags", "mount: MS_MOVE is not supported")
        raise _e(errno.EINVAL, "unsupported mount flags")
    fstype = _string(c, 2, 256).decode(errors="replace")
    data = _string(c, 4, 4096).decode(errors="replace")
    source = _string(c, 0, 4096).decode(errors="replace") or "none"
    if flags & ~(_ACCEPTED | MS_RDONLY):
        raise _e(errno.EINVAL, "unknown mount flags")
    at = lookup.resolve_at(inst.vfs, task, AT_FDCWD, target)
    try:
        _check_mount_point(at)
        if not at.is_dir():
            raise _e(errno.ENOTDIR)
        table = _table_of(c, at)
        fs = registry.make(inst, fstype, source, data, by_user=True)
        options = _with_flags(fs.mount_options, flags)
        m = table.mount(fs, at, inst.vfs.vpath_of(at), source, options)
        m.read_only = bool(flags & MS_RDONLY)
        propagation.propagate_mount(m.table, m, _mount_copy)
    finally:
        at.release()
    return 0


def _table_of(c: Call, node):
    """The caller's mount namespace, where `node` must be (check_mnt: a
    file reached through a mount of another namespace, EINVAL)."""
    table = c.inst.vfs.mounts_of(c.task)
    if node.mount.table is not table:
        raise _e(errno.EINVAL, "not a mount of the caller's namespace")
    return table


def _mount_copy(receiver, new, path: str, group: int, master: int):
    """A propagated copy of the mount `new` on the same directory of
    `receiver` (in its namespace), unless something is mounted there."""
    table, point = receiver.table, new.mountpoint
    if table is None or point is None or table.mounted_at(receiver, point.key) is not None:
        return None
    at = rebased(point, receiver)
    try:
        m = table.mount(new.fs, at, path, new.source, new.options, root=new.root_node,
                        root_path=new.root_path)
    finally:
        at.release()
    m.read_only, m.group, m.master = new.read_only, group, master
    return m


def _change_type(c: Call, target: bytes, flags: int) -> int:
    """do_change_type: the target must be a mount's root in the caller's
    namespace; exactly one type, with MS_REC and MS_SILENT only (EINVAL)."""
    node = lookup.resolve_at(c.inst.vfs, c.task, AT_FDCWD, target)
    try:
        table = _table_of(c, node)
        m = table.mount_of_root(node)
    finally:
        node.release()
    if m is None:
        raise _e(errno.EINVAL, "not a mount point")
    kind = flags & ~(MS_REC | MS_SILENT | _MNT_FLAGS)
    if kind & ~_PROPAGATION:
        raise _e(errno.EINVAL, "other flags with a propagation change")
    kind = propagation.check_type_flags(kind)
    propagation.change_type(table, m, kind, bool(flags & MS_REC))
    return 0


def _with_flags(options: str, flags: int) -> str:
    parts = options.split(",") if options else ["rw"]
    if flags & MS_RDONLY:
        parts = ["ro"] + [p for p in parts if p not in ("rw", "ro")]
    for bit, name in _SHOWN:
        if flags & bit and name not in parts:
            parts.insert(1, name)
    return ",".join(parts)


def _mount_rooted_at(inst, node):
    """The mount whose root `node` is (released here); EINVAL if none, as
    for a remount or umount of a path that is no mount point."""
    try:
        m = inst.vfs.mounts.mount_of_root(node)      # (node's own mount: any table answers)
    finally:
        node.release()
    if m is None:
        raise _e(errno.EINVAL, "not a mount point")
    return m


def _remount(c: Call, target: bytes, flags: int) -> int:
    """do_remount / do_reconfigure_mnt (MS_BIND): the target must be a
    mount's root (EINVAL); its read-only state and per-mount flags become
    the ones given, as /proc/mounts then shows."""
    inst = c.inst
    m = _mount_rooted_at(inst, lookup.resolve_at(inst.vfs, c.task, AT_FDCWD, target))
    if m.table is not inst.vfs.mounts_of(c.task):
        raise _e(errno.EINVAL, "not a mount of the caller's namespace")
    shown = {name for _bit, name in _SHOWN}
    kept = [p for p in (m.options.split(",") if m.options else []) if p not in shown | {"rw", "ro"}]
    m.options = _with_flags(",".join(["rw", *kept]), flags & (_ACCEPTED | MS_RDONLY))
    m.read_only = bool(flags & MS_RDONLY)
    return 0


def _check_mount_point(at) -> None:
    """lock_mount(): ENOENT for a file nothing may be mounted on."""
    if at.fs.cant_mount(at):
        raise _e(errno.ENOENT, "not a place to mount on")


def _bind(c: Call, source: bytes, target: bytes, flags: int) -> int:
    """do_loopback: the source's mount must be bindable (EINVAL); the new
    mount is its peer if it is shared (vfs/propagation.py)."""
    inst, task = c.inst, c.task
    src = lookup.resolve_at(inst.vfs, task, AT_FDCWD, source)
    try:
        at = lookup.resolve_at(inst.vfs, task, AT_FDCWD, target)
        try:
            _check_mount_point(at)
            table = _table_of(c, at)
            if src.mount.unbindable:
                raise _e(errno.EINVAL, "an unbindable mount")
            if src.is_dir() != at.is_dir():
                raise _e(errno.ENOTDIR if src.is_dir() else errno.EISDIR)
            src_path = inst.vfs.vpath_of(src)
            m = src.mount
            base = m.path.rstrip("/")
            inside = src_path[len(base):] if src_path.startswith(base) else "/"
            root_path = (m.root_path.rstrip("/") + "/" + inside.lstrip("/")).rstrip("/") or "/"
            options = _with_flags(m.options, flags & _ACCEPTED)
            fs = m.fs.for_bind(src)
            new = table.mount(fs, at, inst.vfs.vpath_of(at), m.source, options,
                              root=src, root_path=root_path)
            propagation.as_peer_of(m, new)
            propagation.propagate_mount(table, new, _mount_copy)
        finally:
            at.release()
    finally:
        src.release()
    return 0


def sys_umount2(c: Call) -> int:
    flags = c.int(1)
    if flags & ~(MNT_FORCE | MNT_DETACH | MNT_EXPIRE | UMOUNT_NOFOLLOW) or \
            flags & MNT_EXPIRE and flags & (MNT_FORCE | MNT_DETACH):
        raise _e(errno.EINVAL)
    inst, task = c.inst, c.task
    # ksys_umount looks the path up before may_mount() (EFAULT before EPERM).
    node = lookup.resolve_at(inst.vfs, task, AT_FDCWD, c.path(0),
                             follow_default=not flags & UMOUNT_NOFOLLOW)
    if not c.task.creds.capable(caps.CAP_SYS_ADMIN):
        node.release()
        raise _e(errno.EPERM)
    table = inst.vfs.mounts_of(task)
    m = _mount_rooted_at(inst, node)
    if m.table is not table:
        raise _e(errno.EINVAL, "not a mount of the caller's namespace")
    if m is table.root_mount:
        raise _e(errno.EBUSY)
    if flags & MNT_EXPIRE:
        raise _e(errno.EAGAIN)     # never marked expired before: Linux's first answer
    below = table.descendants(m)
    if not flags & MNT_DETACH:
        if below or _in_use(inst, m):
            raise _e(errno.EBUSY)
    for child in below:
        table.umount(child)
    propagation.propagate_umount(table, m, lambda t, copy: t.umount(copy))
    table.umount(m)
    return 0


def sys_pivot_root(c: Call) -> int:
    """pivot_root(2) (fs/namespace.c): in the caller's mount namespace, the
    mount at `new_root` takes the place of the caller's root mount, which
    moves to `put_old`; the processes whose root or cwd was the old root
    get the new one (chroot_fs_refs)."""
    if not c.task.creds.capable(caps.CAP_SYS_ADMIN):
        raise _e(errno.EPERM)
    vfs = c.inst.vfs
    new = lookup.resolve_at(vfs, c.task, AT_FDCWD, _as_dir(c.path(0)))
    try:
        old = lookup.resolve_at(vfs, c.task, AT_FDCWD, _as_dir(c.path(1)))
        try:
            table, new_mnt, root = _check_pivot(c, new, old)
            old_root = root.root()
            table.pivot(new_mnt, root, old, vfs.vpath_of(old))
            _move_fs_refs(c.inst, old_root, new_mnt)
            old_root.release()
        finally:
            old.release()
    finally:
        new.release()
    return 0


def _as_dir(path: bytes) -> bytes:
    """LOOKUP_DIRECTORY: a path that must name a directory (ENOTDIR)."""
    return path + b"/" if path else path


def _check_pivot(c: Call, new, old):
    """pivot_root's checks, in its order: the table, the mount at new_root
    and the caller's root mount, or the error."""
    vfs = c.inst.vfs
    table = vfs.mounts_of(c.task)
    root_node = c.task.fs.root
    new_mnt, old_mnt, root = new.mount, old.mount, root_node.mount
    if old_mnt.group or (new_mnt.parent and new_mnt.parent.group) or (root.parent and root.parent.group):
        raise _e(errno.EINVAL, "a shared mount")
    if root.table is not table or new_mnt.table is not table:
        raise _e(errno.EINVAL, "not a mount of the caller's namespace")
    if new_mnt is root or old_mnt is root:
        raise _e(errno.EBUSY, "on the root's file system")
    if root_node.key != root.root_key() or root.parent is None:
        raise _e(errno.EINVAL, "the root is no mount's root")
    if new.key != new_mnt.root_key() or new_mnt.parent is None:
        raise _e(errno.EINVAL, "new_root is no mount point")
    new_path, root_path = vfs.vpath_of(new), vfs.vpath_of(root_node)
    if not _under(vfs.vpath_of(old), new_path) or not _under(new_path, root_path):
        raise _e(errno.EINVAL, "put_old not below new_root, or new_root not below the root")
    return table, new_mnt, root


def _under(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip("/") + "/")


def _move_fs_refs(inst, old_root, new_mnt) -> None:
    """chroot_fs_refs: a root or cwd that was the old root becomes the new one."""
    for task in list(inst.pids.tasks_by_host.values()):
        fs = task.fs
        if fs.root.mount is old_root.mount and fs.root.key == old_root.key:
            fs.set_root(new_mnt.root())
        if fs.cwd.mount is old_root.mount and fs.cwd.key == old_root.key:
            fs.set_cwd(new_mnt.root())


# -- the new mount API: open_tree(2), move_mount(2) -------------------------------

OPEN_TREE_CLONE, OPEN_TREE_CLOEXEC, AT_RECURSIVE = 1, os.O_CLOEXEC, 0x8000
MOVE_MOUNT_F_SYMLINKS, MOVE_MOUNT_F_AUTOMOUNTS, MOVE_MOUNT_F_EMPTY_PATH = 0x1, 0x2, 0x4
MOVE_MOUNT_T_SYMLINKS, MOVE_MOUNT_T_AUTOMOUNTS, MOVE_MOUNT_T_EMPTY_PATH = 0x10, 0x20, 0x40
MOVE_MOUNT_SET_GROUP, MOVE_MOUNT_BENEATH = 0x100, 0x200
_MOVE_MOUNT_MASK = 0x377
_DETACHED_KEPT = 64          # detached trees remembered (their descriptors cannot be watched)


def sys_open_tree(c: Call):
    """open_tree(2): an O_PATH descriptor of the file (the call traps by
    ptrace, as an O_PATH open: fcntl.install_path_fd); with OPEN_TREE_CLONE
    (root only) a descriptor of the root of a detached bind mount of it,
    which move_mount(2) attaches (AT_RECURSIVE: the mounts below it are
    not copied, as MS_BIND|MS_REC here). That one is opened O_RDONLY, not
    O_PATH: seccomp hands over no O_PATH file, and the provider finds the
    detached mount again by the very open file (kcmp)."""
    flags = c.uint(2)
    if flags & ~(OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH | AT_NO_AUTOMOUNT | AT_RECURSIVE
                 | AT_SYMLINK_NOFOLLOW) or flags & AT_RECURSIVE and not flags & OPEN_TREE_CLONE:
        raise _e(errno.EINVAL, "bad flags")
    if flags & OPEN_TREE_CLONE and not c.task.creds.capable(caps.CAP_SYS_ADMIN):
        raise _e(errno.EPERM)
    vfs = c.inst.vfs
    node = lookup.resolve_at(vfs, c.task, c.int(0), c.path_or_empty(1, flags),
                             flags & (AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW))
    try:
        if not flags & OPEN_TREE_CLONE:
            if c.regs is None:
                raise _e(errno.ENOSYS, "open_tree without OPEN_TREE_CLONE traps by ptrace")
            return install_path_fd(c, node.fs.open(node, O_PATH, c.task), flags & OPEN_TREE_CLOEXEC)
        detached = _detached_bind(c, node)
        fd = node.fs.open(node, os.O_RDONLY | (os.O_DIRECTORY if node.is_dir() else 0), c.task)
    finally:
        node.release()
    _keep_detached(vfs, fd, detached)
    return NewFd(fd, bool(flags & OPEN_TREE_CLOEXEC))


def _detached_bind(c: Call, src) -> Mount:
    """__do_loopback: a bind mount of `src` in no namespace (EINVAL for an
    unbindable mount or one of another namespace)."""
    m = src.mount
    if m.unbindable or m.table is not c.inst.vfs.mounts_of(c.task):
        raise _e(errno.EINVAL, "not a mount that may be bound")
    src_path = c.inst.vfs.vpath_of(src)
    base = m.path.rstrip("/")
    inside = src_path[len(base):] if src_path.startswith(base) else "/"
    root_path = (m.root_path.rstrip("/") + "/" + inside.lstrip("/")).rstrip("/") or "/"
    new = Mount(m.fs.for_bind(src), m.source, m.options, root_path=root_path, read_only=m.read_only)
    new.root_node = rebased(src, new)
    propagation.as_peer_of(m, new)
    return new


def _keep_detached(vfs, fd: int, m: Mount) -> None:
    """Remember the detached mount by a copy of the descriptor that names
    it (the program's shares its open file: kcmp finds it again)."""
    kept = vfs.detached
    kept.append((os.dup(fd), m))
    while len(kept) > _DETACHED_KEPT:
        old, gone = kept.pop(0)
        os.close(old)
        gone.root_node.release()


def _detached_of(c: Call, fd: int) -> "Mount | None":
    """The detached mount the caller's descriptor `fd` was opened for, or None."""
    local = lookup.copy_fd(c.task, fd)
    try:
        for kept, m in c.inst.vfs.detached:
            if libc.same_open_file(kept, local):
                return m
    finally:
        os.close(local)
    return None


def _attached(vfs, m: Mount) -> None:
    """A detached mount is in a table now: no descriptor names it any more."""
    for i, (kept, other) in enumerate(vfs.detached):
        if other is m:
            del vfs.detached[i]
            os.close(kept)
            return


def sys_move_mount(c: Call) -> int:
    """move_mount(2) of a detached mount (open_tree's OPEN_TREE_CLONE) onto
    a file of the caller's namespace, or with MOVE_MOUNT_BENEATH under the
    mount on top there. Moving an attached mount is not done (EINVAL), nor
    MOVE_MOUNT_SET_GROUP."""
    if not c.task.creds.capable(caps.CAP_SYS_ADMIN):
        raise _e(errno.EPERM)
    flags = c.uint(4)
    if flags & ~_MOVE_MOUNT_MASK or flags & MOVE_MOUNT_SET_GROUP:
        raise _e(errno.EINVAL, "bad flags")
    from_empty = flags & MOVE_MOUNT_F_EMPTY_PATH and not c.path_or_empty(1, AT_EMPTY_PATH)
    m = _detached_of(c, c.int(0)) if from_empty else None
    if m is None:
        c.inst.log.once("move-mount", "move_mount: only open_tree clones are attached")
        raise _e(errno.EINVAL, "not a detached mount")
    vfs = c.inst.vfs
    at_flags = (AT_EMPTY_PATH if flags & MOVE_MOUNT_T_EMPTY_PATH else 0) | \
        (0 if flags & MOVE_MOUNT_T_SYMLINKS else AT_SYMLINK_NOFOLLOW)
    at = lookup.resolve_at(vfs, c.task, c.int(2), c.path_or_empty(3, at_flags), at_flags)
    try:
        table = _table_of(c, at)
        _check_mount_point(at)
        if m.root_node.is_dir() != at.is_dir():
            raise _e(errno.ENOTDIR if m.root_node.is_dir() else errno.EISDIR)
        if flags & MOVE_MOUNT_BENEATH:
            top = table.mount_of_root(at)
            if top is None or top is table.root_mount or table.mounted_on(at) is not None:
                raise _e(errno.EINVAL, "not the top mount of a mount point")
            _attached(vfs, m)
            table.tuck(m, top)
        else:
            _attached(vfs, m)
            table.attach(m, at, vfs.vpath_of(at))
            propagation.propagate_mount(table, m, _mount_copy)
    finally:
        at.release()
    return 0


def _in_use(inst, m) -> bool:
    """A process has its cwd or root in the mount."""
    for task in inst.pids.tasks_by_host.values():
        fs = task.fs
        if fs.cwd.mount is m or fs.root.mount is m:
            return True
    return False


def sys_sysfs(c: Call) -> int:
    """sysfs(2), Linux fs/filesystems.c: option 1 maps a type name to its
    index, 2 copies the name of an index to a buffer, 3 counts the types;
    the types and their order are /proc/filesystems'. Anything else EINVAL."""
    names = [t.name for t in registry.FS_TYPES]
    option = c.int(0)
    if option == 1:
        name = c.read_str(c.ptr(1)).decode(errors="surrogateescape")
        if name not in names:
            raise OSError(errno.EINVAL, "no such file system type")
        return names.index(name)
    if option == 2:
        index = c.uint(1)
        if index >= len(names):
            raise OSError(errno.EINVAL, "no file system type with this index")
        c.write(c.ptr(2), names[index].encode() + b"\0")
        return 0
    if option == 3:
        return len(names)
    raise OSError(errno.EINVAL, "bad sysfs option")
