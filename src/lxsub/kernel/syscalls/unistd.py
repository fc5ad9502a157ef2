"""<unistd.h>: links, directories, the working directory, owners, truncate."""

from __future__ import annotations

import errno
import os
import resource
import signal
import stat

from lxsub.abi.fcntl import AT_EMPTY_PATH, AT_FDCWD, AT_REMOVEDIR, AT_SYMLINK_FOLLOW, AT_SYMLINK_NOFOLLOW
from lxsub.kernel import creds as caps
from lxsub.kernel.call import Call
from lxsub.kernel.vfs import lookup, ops, perm
from lxsub.kernel.vfs.open import open_regular
from lxsub.kernel.vfs.mount import want_write


def sys_unlink(c: Call) -> int:
    ops.unlink(c.inst.vfs, c.task, AT_FDCWD, c.path(0), rmdir=False)
    return 0


def sys_rmdir(c: Call) -> int:
    ops.unlink(c.inst.vfs, c.task, AT_FDCWD, c.path(0), rmdir=True)
    return 0


def sys_unlinkat(c: Call) -> int:
    flags = c.int(2)
    if flags & ~AT_REMOVEDIR:
        raise OSError(errno.EINVAL, "bad flags")
    ops.unlink(c.inst.vfs, c.task, c.int(0), c.path(1), rmdir=bool(flags & AT_REMOVEDIR))
    return 0


def sys_symlink(c: Call) -> int:
    ops.symlink(c.inst.vfs, c.task, c.path(0), AT_FDCWD, c.path(1))
    return 0


def sys_symlinkat(c: Call) -> int:
    ops.symlink(c.inst.vfs, c.task, c.path(0), c.int(1), c.path(2))
    return 0


def sys_link(c: Call) -> int:
    ops.link(c.inst.vfs, c.task, AT_FDCWD, c.path(0), AT_FDCWD, c.path(1), 0)
    return 0


def sys_linkat(c: Call) -> int:
    flags = c.int(4)
    if flags & ~(AT_SYMLINK_FOLLOW | AT_EMPTY_PATH):
        raise OSError(errno.EINVAL, "bad flags")
    old = c.path_or_empty(1, flags)
    ops.link(c.inst.vfs, c.task, c.int(0), old, c.int(2), c.path(3), flags)
    return 0


# -- working directory and root -------------------------------------------------

def _searchable_dir(c: Call, node) -> None:
    """What chdir and chroot ask of their directory (LOOKUP_DIRECTORY, then
    path_permission MAY_EXEC): ENOTDIR, EACCES. Releases the node on error."""
    if not node.is_dir():
        node.release()
        raise OSError(errno.ENOTDIR, "not a directory")
    try:
        node.fs.check_enter(node, c.task.creds)    # DrvFs: its door, sealed storage
    except OSError:
        node.release()
        raise
    if perm.needs_checks(c.task.creds):
        a = node.fs.getattr(node, c.task)
        try:
            perm.check(c.task.creds, a.mode, a.uid, a.gid, perm.MAY_EXEC)
        except OSError:
            node.release()
            raise


def _set_cwd(c: Call, node) -> int:
    _searchable_dir(c, node)
    c.task.fs.set_cwd(node)
    return 0


def sys_chdir(c: Call) -> int:
    return _set_cwd(c, lookup.resolve_at(c.inst.vfs, c.task, AT_FDCWD, c.path(0)))


def sys_fchdir(c: Call) -> int:
    return _set_cwd(c, lookup.node_of_fd(c.inst.vfs, c.task, c.int(0)))


def sys_getcwd(c: Call) -> int:
    path = current_dir_path(c)
    data = os.fsencode(path) + b"\0"   # a str from the host: fsdecoded bytes
    if len(data) > c.args[1]:
        raise OSError(errno.ERANGE, "buffer too small")
    c.write(c.ptr(0), data)
    return len(data)


def current_dir_path(c: Call) -> str:
    cwd = c.task.fs.cwd
    path = c.inst.vfs.vpath_of(cwd)
    root = c.inst.vfs.vpath_of(c.task.fs.root)
    if root != "/":
        if path == root:
            return "/"
        if path.startswith(root + "/"):
            return path[len(root):]
        return "(unreachable)" + path
    return path


def sys_chroot(c: Call) -> int:
    # ksys_chroot: the directory is looked up and must be searchable
    # before the capability is checked.
    node = lookup.resolve_at(c.inst.vfs, c.task, AT_FDCWD, c.path(0))
    _searchable_dir(c, node)
    if not c.task.creds.capable(caps.CAP_SYS_CHROOT):
        node.release()
        raise OSError(errno.EPERM, "not permitted")
    c.task.fs.set_root(node)
    return 0


# -- owners -------------------------------------------------------------------

def _chown_node(c: Call, node, uid: int, gid: int) -> int:
    try:
        ops.chown(c.task, node, uid, gid)
    finally:
        node.release()
    return 0


def sys_chown(c: Call) -> int:
    return _chown_node(c, lookup.resolve_at(c.inst.vfs, c.task, AT_FDCWD, c.path(0)), c.int(1), c.int(2))


def sys_lchown(c: Call) -> int:
    node = lookup.resolve_at(c.inst.vfs, c.task, AT_FDCWD, c.path(0), AT_SYMLINK_NOFOLLOW)
    return _chown_node(c, node, c.int(1), c.int(2))


def sys_fchown(c: Call) -> int:
    return _chown_node(c, lookup.node_of_open_fd(c.inst.vfs, c.task, c.int(0)), c.int(1), c.int(2))


def sys_fchownat(c: Call) -> int:
    flags = c.int(4)
    if flags & ~(AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH):     # do_fchownat
        raise OSError(errno.EINVAL, "bad fchownat flags")
    path = c.path_or_empty(1, flags)
    node = lookup.resolve_at(c.inst.vfs, c.task, c.int(0), path, flags)
    return _chown_node(c, node, c.int(2), c.int(3))


# -- sizes ----------------------------------------------------------------------

def _check_file_size_limit(c: Call, size: int) -> None:
    """inode_newsize_ok: growing a file past the caller's RLIMIT_FSIZE is
    EFBIG with SIGXFSZ to the caller. The provider truncates in its own
    process, under its own limit, so the caller's is looked up here."""
    limit = resource.prlimit(c.task.process.host_pid, resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and size > limit:
        os.kill(c.task.process.host_pid, signal.SIGXFSZ)
        raise OSError(errno.EFBIG, "file size limit exceeded")


def sys_truncate(c: Call) -> int:
    length = c.long(1)
    if length < 0:
        raise OSError(errno.EINVAL, "negative length")
    node = lookup.resolve_at(c.inst.vfs, c.task, AT_FDCWD, c.path(0))
    try:
        a = node.fs.getattr(node, c.task)
        if node.is_dir():
            raise OSError(errno.EISDIR, "is a directory")
        if not stat.S_ISREG(a.mode):     # vfs_truncate: EINVAL for other non-regulars
            raise OSError(errno.EINVAL, "not a regular file")
        want_write(node)            # vfs_truncate: mnt_want_write before the permission
        if perm.needs_checks(c.task.creds):
            perm.check(c.task.creds, a.mode, a.uid, a.gid, perm.MAY_WRITE)
        if node.host_st is not None:     # vfs_truncate's get_write_access
            c.inst.vfs.images.check_writable((node.host_st.st_dev, node.host_st.st_ino))
        if length > a.size:
            _check_file_size_limit(c, length)
        fd = open_regular(node, os.O_WRONLY, c.task)
        try:
            os.ftruncate(fd, length)
        finally:
            os.close(fd)
    finally:
        node.release()
    return 0
