"""<sys/fanotify.h>: fanotify_init and fanotify_mark, on the groups the
provider keeps for the instance (kernel/fanotify.py)."""

from __future__ import annotations

import errno
import os
import stat
from typing import Callable

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
from lxsub.kernel.call import Call, Native, NewFd
from lxsub.kernel.creds import CAP_SYS_ADMIN
from lxsub.kernel.syscalls.inotify import watched_node
from lxsub.kernel.vfs import lookup
from lxsub.platform import hostfd

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
    fanotify.give_group_filter(c.inst, c.task)
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


# -- calls on a group descriptor (kernel/fanotify.py: the group filter) ---------------
#
# A group descriptor is a socket here, an anonymous-inode file in Linux:
# the socket calls fail with ENOTSOCK once the descriptor is looked up
# (net/socket.c sockfd_lookup_light), after the checks each makes of its
# other arguments first; splice and sendfile fail as on a file without
# splice_read or splice_write. Any other descriptor runs as it would.

_MSG_CMSG_COMPAT = 0x80000000
_SOCK_FLAGS = os.O_CLOEXEC | os.O_NONBLOCK
_SPLICE_F_ALL = 0xF          # SPLICE_F_MOVE | SPLICE_F_NONBLOCK | SPLICE_F_MORE | SPLICE_F_GIFT


def _not_a_socket(c: Call) -> None:
    if fanotify.is_group_fd(c.inst, c.task, c.int(0)):
        raise OSError(errno.ENOTSOCK, "a fanotify descriptor")


def socket_call(handler: Callable[[Call], object] | None = None,
                own: Callable[[Call], bool] | None = None,
                checked_first: Callable[[Call], bool] | None = None) -> Callable[[Call], object]:
    """A socket call's handler: ENOTSOCK for a group descriptor, unless
    `checked_first` (the arguments the kernel checks before the descriptor
    are wrong: the host says how); then `handler` where `own` (default:
    always) says the call is one it serves, else the host runs it."""
    def run(c: Call):
        if checked_first is None or not checked_first(c):
            _not_a_socket(c)
        if handler is not None and (own is None or own(c)):
            return handler(c)
        return Native()
    run.__name__ = run.__qualname__ = getattr(handler, "__name__", "socket_call")
    run.__doc__ = handler.__doc__ if handler is not None else _not_a_socket.__doc__
    return run


def bad_accept4_flags(c: Call) -> bool:
    return bool(c.int(3) & ~_SOCK_FLAGS)


def bad_msg_flags(index: int) -> Callable[[Call], bool]:
    """sendmsg, recvmsg and their mmsg forms refuse MSG_CMSG_COMPAT first."""
    return lambda c: bool(c.uint(index) & _MSG_CMSG_COMPAT)


def bad_optlen(c: Call) -> bool:
    return c.int(4) < 0


def bad_address(c: Call) -> bool:
    """connect copies its address in before it looks at the descriptor."""
    length = c.int(2)
    if length < 0 or length > 128:
        return True
    try:
        c.read(c.ptr(1), length)
    except OSError:
        return True
    return False


def sys_splice(c: Call):
    """splice(2) with a group descriptor at either end (do_splice): no
    length is 0, bad flags EINVAL, a closed descriptor EBADF, an offset
    for a pipe ESPIPE, an end not open for its direction EBADF; then
    EINVAL, as the group is no pipe and has neither splice_read nor
    splice_write. (Linux first waits for room in an output pipe that is
    full; this does not.)"""
    fd_in, fd_out, length, flags = c.int(0), c.int(2), c.args[4] & 0xFFFFFFFFFFFFFFFF, c.uint(5)
    groups = (fanotify.is_group_fd(c.inst, c.task, fd_in), fanotify.is_group_fd(c.inst, c.task, fd_out))
    if not any(groups) or not length or flags & ~_SPLICE_F_ALL:
        return Native()
    (acc_in, mode_in), (acc_out, mode_out) = _open_file(c, fd_in, groups[0]), _open_file(c, fd_out, groups[1])
    if stat.S_ISFIFO(mode_in) and c.ptr(1) or stat.S_ISFIFO(mode_out) and c.ptr(3):
        raise OSError(errno.ESPIPE, "an offset for a pipe")
    for at in (c.ptr(3), c.ptr(1)):
        if at:
            c.read(at, 8)
    if acc_in == os.O_WRONLY or acc_out == os.O_RDONLY:
        raise OSError(errno.EBADF, "not open for that direction")
    raise OSError(errno.EINVAL, "splice of a fanotify descriptor")


_SEEK_MAX = 4                # SEEK_HOLE


def sys_lseek(c: Call):
    """lseek(2) of a group descriptor: fanotify's noop_llseek keeps the
    position at 0 and says so (a socket would be ESPIPE); a whence past
    SEEK_MAX is EINVAL first (ksys_lseek)."""
    if not fanotify.is_group_fd(c.inst, c.task, c.int(0)):
        return Native()
    if c.uint(2) > _SEEK_MAX:
        raise OSError(errno.EINVAL, "bad whence")
    return 0


def sys_sendfile(c: Call):
    """sendfile(2) with a group descriptor at either end (do_sendfile):
    the input must be open for reading (EBADF), an offset needs one it can
    pread (ESPIPE), the output open for writing (EBADF); then a group
    input reads nothing into a pipe for a count of 0 and is EINVAL
    otherwise (no splice_read), and a group output takes nothing from a
    regular file for a count of 0 and is EINVAL otherwise (no
    splice_write; a non-regular input is EINVAL first)."""
    fd_out, fd_in, offset, count = c.int(0), c.int(1), c.ptr(2), c.args[3] & 0xFFFFFFFFFFFFFFFF
    group_in = fanotify.is_group_fd(c.inst, c.task, fd_in)
    group_out = fanotify.is_group_fd(c.inst, c.task, fd_out)
    if not (group_in or group_out):
        return Native()
    if offset:
        c.read(offset, 8)
    acc_in, mode_in = _open_file(c, fd_in, group_in)
    if acc_in == os.O_WRONLY:
        raise OSError(errno.EBADF, "input not open for reading")
    if offset and (group_in or stat.S_ISFIFO(mode_in) or stat.S_ISSOCK(mode_in)):
        raise OSError(errno.ESPIPE, "an input without pread")
    acc_out, mode_out = _open_file(c, fd_out, group_out)
    if acc_out == os.O_RDONLY:
        raise OSError(errno.EBADF, "output not open for writing")
    if group_in:
        if not count and stat.S_ISFIFO(mode_out):
            return 0
    elif (stat.S_ISREG(mode_in) or stat.S_ISBLK(mode_in)) and not count:
        return 0
    raise OSError(errno.EINVAL, "sendfile of a fanotify descriptor")


def _open_file(c: Call, fd: int, group: bool) -> tuple[int, int]:
    """The access mode and file type of the caller's descriptor, read from
    its /proc entries (no copy; a `group` descriptor is a socket here,
    O_RDWR on the anonymous inode in Linux); EBADF if it has none or it is
    O_PATH (fdget)."""
    if group:
        return os.O_RDWR, 0o600
    try:
        flags = hostfd.fdinfo_flags(c.task.host_tid, fd)
        mode = os.stat(f"/proc/{c.task.host_tid}/fd/{fd}").st_mode
    except OSError:
        raise OSError(errno.EBADF, "no such descriptor") from None
    if flags & O_PATH:
        raise OSError(errno.EBADF, "an O_PATH descriptor")
    return flags & os.O_ACCMODE, mode
