"""Turning a Linux execve into the host execve that runs it.

The host kernel would look for a program's interpreter (PT_INTERP) and for
`#!` interpreters in the *host* root, so the provider resolves the whole
chain inside the instance and hands the host kernel one file: the program
itself when it is static, else the instance's own dynamic loader with the
program's own argv; at the exec event the provider maps the program as
Linux's binfmt_elf would and makes the auxiliary vector describe it
(kernel/exec/mapping.py), so the loader runs it as a program the kernel
loaded.

With interop (kernel/interop.py), a file that `host_exec` says runs on the
host (a DrvFs file) ends the chain: the plan is a `HostPlan`, its host
path and the argv as built so far.
"""

from __future__ import annotations

import errno
import os
import stat as st
from dataclasses import dataclass

from lxsub.kernel.exec import binfmt, mapping
from lxsub.kernel.vfs import perm
from lxsub.kernel.vfs.node import Node
from lxsub.kernel.vfs.path import Walker
from lxsub.platform import writers

MAX_INTERP_DEPTH = 5


@dataclass
class ExecPlan:
    host_fd: int               # provider-side descriptor of what the host maps
    identity: tuple[int, int]  # its (st_dev, st_ino), checked after exec
    argv: list[bytes]          # host argv
    exe: str                   # the program's path inside the instance
    comm: str
    via_loader: bool           # the host runs ld.so; the program is mapped at the exec event
    execfn_room: int = 0       # bytes of the AT_EXECFN string the host exec will leave
    # The program's owner / group when its set-user-ID / set-group-ID bit
    # counts (kernel/creds.py Creds.after_exec applies them at the exec).
    set_uid: int | None = None
    set_gid: int | None = None
    # The program file's (st_dev, st_ino): the ELF execve was given, which
    # the host maps itself (identity) or ld.so maps (kernel/vfs/images.py).
    image: tuple[int, int] | None = None
    # via_loader: the program's descriptor and headers, the loader's e_entry
    program_fd: int = -1
    program: mapping.ElfImage | None = None
    loader_entry: int = 0

    def close(self) -> None:
        self.close_loader()
        if self.program_fd >= 0:
            os.close(self.program_fd)
            self.program_fd = -1

    def close_loader(self) -> None:
        if self.host_fd >= 0:
            os.close(self.host_fd)
            self.host_fd = -1


@dataclass
class HostPlan:
    """Run a host program instead (interop): nothing is loaded in the caller."""
    host_path: bytes           # the file's host path
    argv: list[bytes]
    exe: str                   # its path inside the instance

    def close(self) -> None:
        pass


def _open_executable(walker: Walker, start: Node, path: bytes, follow: bool):
    """(node, provider descriptor, (set_uid, set_gid)) of an executable file."""
    # An empty path is execveat's AT_EMPTY_PATH: the file `start` itself.
    node = walker.resolve(start, path, follow=follow) if path else start.dup()
    try:
        attr = node.fs.getattr(node, walker.caller)
        if st.S_ISLNK(attr.mode):     # AT_SYMLINK_NOFOLLOW on a symlink (do_open_execat)
            raise OSError(errno.ELOOP, "a symbolic link")
        if st.S_ISDIR(attr.mode) or not st.S_ISREG(attr.mode):
            raise OSError(errno.EACCES, "not a regular file")
        perm.check(walker.creds, attr.mode, attr.uid, attr.gid, perm.MAY_EXEC)
        fd = node.fs.open(node, os.O_RDONLY, walker.caller)
    except BaseException:
        node.release()
        raise
    try:
        _deny_write_access(fd)
    except BaseException:
        os.close(fd)
        node.release()
        raise
    return node, fd, _set_ids(node, attr)


def _deny_write_access(fd: int) -> None:
    """do_open_execat's deny_write_access: a file open for writing (by any
    process) is not executed, ETXTBSY. The provider maps a dynamic program
    (and reads a script) itself, so the host's exec never checks it; the
    host is asked (platform/writers.py). Where it cannot tell, the exec
    goes on, as it did before the check."""
    if writers.open_for_writing(fd):
        raise OSError(errno.ETXTBSY, "text file busy")


def _set_ids(node: Node, attr) -> tuple[int | None, int | None]:
    """Linux's bprm_fill_uid: set-user-ID takes the owner; set-group-ID the
    group only with group execute (without it the bit means mandatory
    locking); neither on a nosuid mount nor on host files (DrvFs)."""
    if not node.fs.set_id_bits or "nosuid" in node.mount.options.split(","):
        return None, None
    uid = attr.uid if attr.mode & st.S_ISUID else None
    gid = attr.gid if attr.mode & st.S_ISGID and attr.mode & st.S_IXGRP else None
    return uid, gid


def plan(walker: Walker, start: Node, path: bytes, argv: list[bytes], vpath_of,
         follow: bool = True, host_exec=None, fd_name: bytes = b"") -> ExecPlan | HostPlan:
    """Resolve `path` (and its interpreters) for an execve by the walker's caller.
    `host_exec(node, creds) -> host path | None`: files that run on the host
    (it raises EACCES for a caller who may not run them). An empty path
    executes `start` itself (execveat AT_EMPTY_PATH), which Linux names
    `fd_name` ("/dev/fd/N", alloc_bprm)."""
    name = path or fd_name
    argv = list(argv) or [name]
    # Linux names the process after the file execve was given (a symlink's
    # own name, a script's rather than its interpreter's): /proc/<pid>/comm.
    comm = os.path.basename(name).decode(errors="replace")[:15]
    for _ in range(MAX_INTERP_DEPTH):
        node, fd, set_ids = _open_executable(walker, start, path, follow)
        if host_exec is not None:
            try:
                host = host_exec(node, walker.creds)
                exe = vpath_of(node) if host is not None else ""
            except BaseException:
                os.close(fd)
                node.release()
                raise
            if host is not None:
                os.close(fd)
                node.release()
                return HostPlan(os.fsencode(host), argv, exe)
        try:
            kind = binfmt.probe(fd)
            exe = vpath_of(node)
        except BaseException:
            os.close(fd)
            raise
        finally:
            node.release()
        if isinstance(kind, binfmt.Script):
            os.close(fd)
            argv = [kind.interp] + ([kind.arg] if kind.arg else []) + [path or fd_name] + argv[1:]
            path, follow = kind.interp, True
            continue
        # For a script Linux takes the interpreter's bits (bprm->file), never
        # the script's; for an ELF program its own, not its loader's.
        image = _identity(fd)
        if kind.interp is None:
            return ExecPlan(fd, image, argv, exe, comm, False, 0, *set_ids, image=image)
        try:
            p = _plan_with_loader(walker, start, kind.interp, argv, exe, comm)
            p.program = mapping.read_image(fd)
        except BaseException:
            os.close(fd)
            raise
        p.program_fd = fd
        p.set_uid, p.set_gid = set_ids
        p.image = image
        return p
    raise OSError(errno.ELOOP, "too many levels of #! interpreters")


def _plan_with_loader(walker: Walker, start: Node, interp: bytes, argv: list[bytes],
                      exe: str, comm: str) -> ExecPlan:
    node, fd, _ = _open_executable(walker, start, interp, True)
    node.release()
    try:
        kind = binfmt.probe(fd)
        if not isinstance(kind, binfmt.Elf) or kind.interp is not None:
            raise OSError(errno.ELIBBAD, "bad ELF interpreter")
    except BaseException:
        os.close(fd)
        raise
    try:
        entry = mapping.entry_of(fd)
    except BaseException:
        os.close(fd)
        raise
    return ExecPlan(fd, _identity(fd), argv, exe, comm, True, loader_entry=entry)


def _identity(fd: int) -> tuple[int, int]:
    s = os.fstat(fd)
    return (s.st_dev, s.st_ino)
