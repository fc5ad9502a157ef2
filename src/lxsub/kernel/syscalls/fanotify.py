"""<sys/fanotify.h>: fanotify_init and fanotify_mark, on the groups the
provider keeps for the instance (kernel/fanotify.py)."""

from __future__ import annotations

import errno
import os
import stat

from lxsub.abi.fanotify import (EVENT_F_BITS, FAN_ALL_CLASS_BITS, FAN_CLASS_NOTIF, FAN_CLOEXEC,
                                FAN_ENABLE_AUDIT, FAN_EVENT_ON_CHILD, FAN_MARK_ADD, FAN_MARK_DONT_FOLLOW,
                                FAN_MARK_FILESYSTEM, FAN_MARK_FLUSH, FAN_MARK_IGNORE, FAN_MARK_IGNORED_MASK,
                                FAN_MARK_INODE, FAN_MARK_MOUNT, FAN_MARK_ONLYDIR, FAN_MARK_REMOVE,
                                FAN_NONBLOCK, FAN_REPORT_MNT, FAN_REPORT_PIDFD, FAN_REPORT_TID,
                                FAN_UNLIMITED_MARKS, FAN_UNLIMITED_QUEUE, FANOTIFY_EVENT_FLAGS,
                                FANOTIFY_FD_EVENTS, FANOTIFY_FID_BITS, FANOTIFY_INIT_FLAGS,
                                FANOTIFY_MARK_CMD_BITS, FANOTIFY_MARK_FLAGS, FANOTIFY_MARK_MASK,
                                FANOTIFY_MARK_TYPE_BITS, FANOTIFY_PERM_EVENTS, SUPPORTED_INIT_FLAGS)
from lxsub.abi.fcntl import O_PATH
from lxsub.kernel import fanotify
from lxsub.kernel.call import Call, NewFd
from lxsub.kernel.creds import CAP_SYS_ADMIN
from lxsub.kernel.syscalls.inotify import watched_node
from lxsub.kernel.vfs import lookup

# FANOTIFY_ADMIN_INIT_FLAGS: what an unprivileged group may not ask for.
_ADMIN_INIT_FLAGS = (FAN_ALL_CLASS_BITS | FAN_UNLIMITED_QUEUE | FAN_UNLIMITED_MARKS | FAN_ENABLE_AUDIT
                     | FAN_REPORT_PIDFD)


def sys_fanotify_init(c: Call) -> NewFd:
    """fanotify_init(2), in fs/notify/fanotify/fanotify_user.c's order:
    CAP_SYS_ADMIN in the instance (EPERM; Linux lets others make a
    file-handle group, which lxsub does not serve: EINVAL), unknown flags
    and event_f_flags (EINVAL), then the user's group limit (EMFILE)."""
    flags, event_f_flags = c.uint(0), c.uint(1)
    if not c.task.creds.capable(CAP_SYS_ADMIN):
        if flags & _ADMIN_INIT_FLAGS or not flags & (FANOTIFY_FID_BITS | FAN_REPORT_MNT):
            raise OSError(errno.EPERM, "fanotify_init needs CAP_SYS_ADMIN")
    if flags & ~FANOTIFY_INIT_FLAGS or event_f_flags & ~EVENT_F_BITS:
        raise OSError(errno.EINVAL, "unknown fanotify_init flags")
    if event_f_flags & os.O_ACCMODE == os.O_ACCMODE:
        raise OSError(errno.EINVAL, "bad event_f_flags access mode")
    if flags & FAN_ALL_CLASS_BITS == FAN_ALL_CLASS_BITS:
        raise OSError(errno.EINVAL, "bad notification class")
    if flags & FAN_REPORT_PIDFD and flags & FAN_REPORT_TID:
        raise OSError(errno.EINVAL, "FAN_REPORT_PIDFD with FAN_REPORT_TID")
    if flags & ~SUPPORTED_INIT_FLAGS:
        raise OSError(errno.EINVAL, "fanotify_init flag not served by lxsub")
    fd = fanotify.new_group(c.inst, c.task, c.task.creds.euid, flags, event_f_flags, bool(flags & FAN_NONBLOCK))
    return NewFd(fd, bool(flags & FAN_CLOEXEC))


def sys_fanotify_mark(c: Call) -> int:
    """fanotify_mark(2), in do_fanotify_mark's order: the flags and the
    mask (EINVAL), the descriptor (EBADF, EINVAL unless a group),
    permission events on a notification-class group (EINVAL), then the
    object (ENOTDIR, EACCES) and the mark (ENOENT to remove none)."""
    flags, mask = c.uint(1), c.args[2] & 0xFFFFFFFFFFFFFFFF
    cmd, kind = flags & FANOTIFY_MARK_CMD_BITS, flags & FANOTIFY_MARK_TYPE_BITS
    _check_mark_flags(flags, cmd, kind, mask)
    group = _group_of(c, c.int(0))
    if mask & FANOTIFY_PERM_EVENTS and group.flags & FAN_ALL_CLASS_BITS == FAN_CLASS_NOTIF:
        raise OSError(errno.EINVAL, "permission events need a content class group")
    if mask & ~(FANOTIFY_FD_EVENTS | FANOTIFY_EVENT_FLAGS):
        raise OSError(errno.EINVAL, "events that need a file-handle group")
    groups = fanotify.groups_of(c.inst)
    if cmd == FAN_MARK_FLUSH:
        with groups.lock:
            group.flush(_KIND[kind])
            fanotify.drop_stale_watches(groups)
        return 0
    key, is_dir, own = _object(c, flags, kind)
    try:
        if kind != FAN_MARK_INODE or not is_dir:
            mask &= ~FAN_EVENT_ON_CHILD
        ignored = bool(flags & (FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORE))
        with groups.lock:
            if cmd == FAN_MARK_ADD:
                group.add(key, mask, ignored, flags)
            else:
                group.remove(key, mask, ignored)
            if kind == FAN_MARK_INODE:
                fanotify.watch_for(c.inst, key, own)
    finally:
        os.close(own)
    return 0


_KIND = {FAN_MARK_INODE: "ino", FAN_MARK_MOUNT: "mnt", FAN_MARK_FILESYSTEM: "sb"}


def _check_mark_flags(flags: int, cmd: int, kind: int, mask: int) -> None:
    if flags & ~FANOTIFY_MARK_FLAGS or kind not in _KIND:
        raise OSError(errno.EINVAL, "bad fanotify_mark flags")
    if cmd in (FAN_MARK_ADD, FAN_MARK_REMOVE):
        if not mask:
            raise OSError(errno.EINVAL, "empty mask")
    elif cmd != FAN_MARK_FLUSH or flags & ~(FANOTIFY_MARK_TYPE_BITS | FAN_MARK_FLUSH):
        raise OSError(errno.EINVAL, "bad fanotify_mark command")
    if mask & ~FANOTIFY_MARK_MASK:
        raise OSError(errno.EINVAL, "bad fanotify_mark mask")


def _group_of(c: Call, fd: int) -> "fanotify.Group":
    copy = lookup.copy_fd(c.task, fd)
    try:
        ino = os.fstat(copy).st_ino
    finally:
        os.close(copy)
    group = fanotify.groups_of(c.inst).by_ino(ino)
    if group is None:
        raise OSError(errno.EINVAL, "not a fanotify descriptor")
    return group


def _object(c: Call, flags: int, kind: int) -> tuple[tuple, bool, int]:
    """fanotify_find_path: the path (or the descriptor dirfd itself when
    it is NULL), followed unless FAN_MARK_DONT_FOLLOW, a directory with
    FAN_MARK_ONLYDIR, readable by the caller: its mark key, whether a
    directory, and a provider descriptor of it (the caller closes it)."""
    if not c.ptr(4):
        own = lookup.copy_fd(c.task, c.int(3))
    else:
        own = _resolve(c, flags)
    try:
        st = os.fstat(own)
        if flags & FAN_MARK_ONLYDIR and not _isdir(st.st_mode):
            raise OSError(errno.ENOTDIR, "not a directory")
    except BaseException:
        os.close(own)
        raise
    return _key(kind, st), _isdir(st.st_mode), own


def _resolve(c: Call, flags: int) -> int:
    node = watched_node(c, c.int(3), c.path(4), follow=not flags & FAN_MARK_DONT_FOLLOW,
                        only_dir=bool(flags & FAN_MARK_ONLYDIR))
    try:
        if node.fd is not None:
            return os.dup(node.fd)
        return node.fs.open(node, O_PATH, c.task)
    finally:
        node.release()


def _isdir(mode: int) -> bool:
    return stat.S_ISDIR(mode)


def _key(kind: int, st: os.stat_result) -> tuple:
    if kind == FAN_MARK_INODE:
        return ("ino", st.st_dev, st.st_ino)
    return (_KIND[kind], st.st_dev)
