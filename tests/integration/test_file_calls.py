"""File calls whose Linux answer depends on the descriptor or the path:
tests/fixtures/programs/file_calls.c, built static on the host, in Debian.

- open(2), O_PATH: "the file itself is not opened, and other file
  operations (e.g., read(2), write(2), fchmod(2), fchown(2), fgetxattr(2),
  ioctl(2), mmap(2)) fail with the error EBADF" (Linux's fdget; fstat uses
  fdget_raw and works). Before, the provider took the descriptor's file
  and changed it (LTP open13).
- readlink(2) of an empty path: ENOENT (do_readlinkat, LOOKUP_EMPTY); with
  a descriptor of a symlink, readlinkat(fd, "") reads that link. Before,
  the provider answered EINVAL (LTP readlink03).
- name_to_handle_at(2): the host file system's handle for the file the
  path names inside, the same through another link, EOVERFLOW with the
  size for a short buffer, the mount id that /proc/self/mountinfo shows;
  a /proc file has no handle but an AT_HANDLE_FID one. Before, EOPNOTSUPP
  (LTP name_to_handle_at02, 03).
- a program file being run is ETXTBSY for open(2) for writing and for
  truncate(2) (exec's deny_write_access), static (the host runs it) or
  dynamic (the host runs the instance's ld.so and only maps it: the
  provider counts running images). Before, a dynamic program's file could be
  written while it ran (LTP creat07).
- openat2(2)'s RESOLVE_* restrictions, each step of the provider's walk
  under them: RESOLVE_BENEATH (EXDEV for `..` above the directory, absolute
  paths and symlinks), RESOLVE_IN_ROOT (the directory as root),
  RESOLVE_NO_SYMLINKS and RESOLVE_NO_MAGICLINKS (ELOOP), RESOLVE_NO_XDEV
  (EXDEV into /proc). Before, every one was EOPNOTSUPP (LTP openat201, 202).
- open(2) with O_NOATIME: EPERM unless the caller owns the file or has
  CAP_FOWNER (may_open). Before, the host allowed it (its user owns every
  file) (LTP open02).
- truncate(2) of a FIFO or a device: EINVAL, of a directory EISDIR
  (vfs_truncate). Before, the provider opened the FIFO for writing to
  truncate it and waited for a reader that never came: the whole instance
  hung (found by the syscall fuzzer).
- the f*xattr calls on a socket or a pipe: the sockfs or pipefs inode's
  answers (xattr_permission's ENODATA and EPERM for user.*, sockfs's
  system.sockprotoname). Before, ENOTDIR: the provider looked for the
  descriptor's file in the instance (LTP fgetxattr02). An attribute name
  longer than 255 bytes is ERANGE (import_xattr_name), not ENAMETOOLONG
  (LTP fsetxattr01)."""

from __future__ import annotations

import errno
import subprocess

import pytest

from tests.fixtures.cbuild import PROGRAMS, gcc_static
from tests.integration.distros import describe

DIR = "/file-calls-test"


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> bytes:
    tmp = tmp_path_factory.mktemp("file_calls")
    return gcc_static(tmp, "file_calls", PROGRAMS / "file_calls.c").read_bytes()


@pytest.fixture
def installed(debian, program):
    cp = debian.lx(["-u", "root", "--", f"rm -rf {DIR} && mkdir -p {DIR} && cat > {DIR}/fc && "
                    f"chmod 755 {DIR}/fc && touch {DIR}/file && ln -s target12 {DIR}/link"],
                   input=program, timeout=60)
    assert cp.returncode == 0, describe(cp)
    return debian


def _run(inst, *args: str, user: str = "root") -> list[str]:
    cp = inst.lx(["-u", user, "--cd", DIR, "-e", f"{DIR}/fc", *args], timeout=60)
    assert cp.returncode == 0, describe(cp)
    return cp.stdout.decode().splitlines()


def test_an_o_path_descriptor_is_no_open_file(installed):
    ebadf = -errno.EBADF
    assert _run(installed, "opath", f"{DIR}/file") == [
        f"opath fchmod {ebadf} fchown {ebadf} fgetxattr {ebadf} futimens {ebadf} fstat 0"]
    cp = installed.lx(["-u", "root", "-e", "stat", "-c", "%a", f"{DIR}/file"], timeout=60)
    assert cp.stdout.decode().strip() == "644", describe(cp)


def test_readlink_of_an_empty_path(installed):
    assert _run(installed, "readlink", f"{DIR}/link") == [f"readlink empty {-errno.ENOENT} fd 8"]


def test_o_noatime_is_for_the_owner(installed):
    cp = installed.lx(["-u", "root", "--", f"touch {DIR}/mine && chown nobody {DIR}/mine"], timeout=60)
    assert cp.returncode == 0, describe(cp)
    assert _run(installed, "noatime", f"{DIR}/file", user="nobody") == [f"noatime {-errno.EPERM}"]
    assert _run(installed, "noatime", f"{DIR}/mine", user="nobody") == ["noatime 0"]
    assert _run(installed, "noatime", f"{DIR}/file") == ["noatime 0"]


def test_name_to_handle_at(installed):
    assert _run(installed, "handle", f"{DIR}/file") == [
        f"handle overflow {-errno.EOVERFLOW} size 1 got 0 linked 0 same 1 mountinfo 1 "
        f"proc {-errno.EOPNOTSUPP} fid 0 badflags {-errno.EINVAL}"]



OPEN_BY_HANDLE_PY = """\
import ctypes, errno, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
def handle(path):
    buf = ctypes.create_string_buffer(8 + 128)
    struct.pack_into("<Ii", buf, 0, 128, 0)
    assert libc.name_to_handle_at(-100, path.encode(), buf, ctypes.byref(ctypes.c_int()), 0) == 0
    return buf
root = os.open("/", os.O_RDONLY | os.O_DIRECTORY)     # the mount the handles are decoded in
def open_by(buf):
    fd = libc.open_by_handle_at(root, buf, os.O_RDONLY)
    return os.read(fd, 20).decode() if fd >= 0 else errno.errorcode[ctypes.get_errno()]
with open("/root/handle-test", "w") as f:
    f.write("inside")
own = handle("/root/handle-test")
print("own", open_by(own))
print("host", open_by(ctypes.create_string_buffer(bytes.fromhex(sys.argv[1]))))
os.setgroups([]); os.setgid(65534); os.setuid(65534)
print("nobody", open_by(own))
"""


def _host_handle(path) -> str:
    """The host's file handle of a host file, in hex."""
    import ctypes
    import struct
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(8 + 128)
    struct.pack_into("<Ii", buf, 0, 128, 0)
    if libc.name_to_handle_at(-100, str(path).encode(), buf, ctypes.byref(ctypes.c_int()), 0) != 0:
        pytest.skip("the host file system has no file handles")
    size = struct.unpack_from("<I", buf, 0)[0]
    return buf.raw[:8 + size].hex()


def test_open_by_handle_at(installed, tmp_path):
    """open_by_handle_at(2) opens the instance's file a handle names, for a
    caller with CAP_DAC_READ_SEARCH (EPERM else), when the host decodes
    handles for its user (root); a handle of a host file outside the
    mount's file system (here the root's) is ESTALE, never that file (LTP
    open_by_handle_at01, 02, name_to_handle_at01)."""
    import os
    secret = tmp_path / "host-secret"
    secret.write_text("host")
    cp = installed.lx(["-u", "root", "-e", "python3", "-c", OPEN_BY_HANDLE_PY, _host_handle(secret)],
                      timeout=60)
    assert cp.returncode == 0, describe(cp)
    host_decodes = os.geteuid() == 0 and installed.user.kind == "self"
    assert cp.stdout.decode().splitlines() == (
        ["own inside", "host ESTALE", "nobody EPERM"] if host_decodes
        else ["own EPERM", "host EPERM", "nobody EPERM"]), describe(cp)

def test_a_running_program_is_text_file_busy(installed):
    etxtbsy = -errno.ETXTBSY
    cp = installed.lx(["-u", "root", "--", f"cp {DIR}/fc {DIR}/fc2"], timeout=60)
    assert cp.returncode == 0, describe(cp)
    assert _run(installed, "busy", f"{DIR}/fc2") == [f"busy open {etxtbsy} truncate {etxtbsy} after 0"]
    # A dynamic program (Debian's sleep, run through ld.so), and its fork.
    script = (f"cp /bin/sleep {DIR}/sl; {DIR}/sl 30 & p=$!; sleep 1; "
              f"(echo x > {DIR}/sl) 2>&1; truncate -s 0 {DIR}/sl 2>&1; "
              f"kill $p; wait $p; echo x > {DIR}/sl && echo written")
    cp = installed.lx(["-u", "root", "--", script], timeout=60)
    lines = cp.stdout.decode().splitlines()
    assert len(lines) == 3 and all("Text file busy" in x for x in lines[:2]), describe(cp)
    assert lines[2] == "written", describe(cp)


def test_a_program_open_for_writing_is_not_executed(installed):
    """execve(2) of a file open for writing is ETXTBSY (do_open_execat's
    deny_write_access), for a dynamic program (the provider maps it: the
    host asked through a read lease), a script and a static program (the
    host execs it), and runs once the writer closed it. Before, the dynamic
    program and the script ran (LTP execve04)."""
    cp = installed.lx(["-u", "root", "--", f"cp /bin/true {DIR}/dyn && cp {DIR}/fc {DIR}/st && "
                       f"printf '#!/bin/sh\\nexit 0\\n' > {DIR}/sc && chmod 755 {DIR}/sc"], timeout=60)
    assert cp.returncode == 0, describe(cp)
    busy = -errno.ETXTBSY
    assert _run(installed, "execbusy", f"{DIR}/dyn") == [f"execbusy open {busy} closed 0"]
    assert _run(installed, "execbusy", f"{DIR}/sc") == [f"execbusy open {busy} closed 0"]
    # the static copy run without arguments prints its usage and exits 2
    assert _run(installed, "execbusy", f"{DIR}/st") == [f"execbusy open {busy} closed 2"]


def test_openat2_resolve_restrictions(installed):
    cp = installed.lx(["-u", "root", "--", f"mkdir -p {DIR}/r/d && touch {DIR}/r/d/f {DIR}/r/x && "
                       f"ln -sfn f {DIR}/r/d/rel && ln -sfn /f {DIR}/r/d/abs"], timeout=60)
    assert cp.returncode == 0, describe(cp)
    exdev, eloop = -errno.EXDEV, -errno.ELOOP
    assert _run(installed, "resolve", f"{DIR}/r") == [
        f"resolve beneath 0 beneath-up {exdev} beneath-abs {exdev} beneath-abslink {exdev} "
        f"inroot-abslink 0 inroot-up 0 nosym {eloop} nosym-plain 0 nomagic {eloop} "
        f"noxdev {exdev} noxdev-plain 0 both {-errno.EINVAL}"]


def test_truncate_of_what_is_not_a_regular_file(installed, tmp_path):
    native = subprocess.run([str(gcc_static(tmp_path, "fc", PROGRAMS / "file_calls.c")), "truncate",
                             str(tmp_path)], capture_output=True, timeout=10)
    lines = _run(installed, "truncate", DIR)
    einval, eisdir = -errno.EINVAL, -errno.EISDIR
    expected = [f"truncate fifo 0 {einval}", f"truncate null {einval}", f"truncate dir {eisdir}"]
    assert native.stdout.decode().splitlines() == expected      # what Linux itself answers
    assert lines == expected, lines
    assert installed.lx(["-e", "true"], timeout=30).returncode == 0     # the instance still serves


def test_xattr_calls_on_a_socket_and_a_pipe(installed):
    nodata, perm, notsup = -errno.ENODATA, -errno.EPERM, -errno.EOPNOTSUPP
    name = b"system.sockprotoname\0"         # flistxattr: the one name, NUL-ended
    assert _run(installed, "xattr", DIR) == [
        f"sock get {nodata} set {perm} remove {perm} proto 12 UNIX-STREAM list {len(name)} acl {notsup}",
        f"pipe get {nodata} set {perm} list 0 trusted {notsup} long {-errno.ERANGE}"]
    # trusted.* is judged by the caller's CAP_SYS_ADMIN in the instance, not the host user's.
    assert _run(installed, "xattr", "/tmp", user="nobody")[1] \
        == f"pipe get {nodata} set {perm} list 0 trusted {nodata} long {-errno.ERANGE}"
