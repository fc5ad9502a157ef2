"""inotify(7) inside an instance: inotify_add_watch resolves its path in the
instance and watches the host inode through the caller's own inotify
descriptor, so `tail -f`, editors and build watchers see changes at once.
tests/fixtures/programs/inotify_watch.c (built static on the host) prints
the events of a watched directory, which watch descriptors the same inode
and a symlink get, the call's errors, and whether an unprivileged Linux user
may watch a file it cannot read. Before inotify_add_watch was implemented it
answered ENOSYS (-38) and GNU tail fell back to polling."""

from __future__ import annotations

import errno

import pytest

from tests.fixtures.cbuild import PROGRAMS, gcc_static
from tests.integration.distros import describe

DIR = "/inotify-test"


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> bytes:
    tmp = tmp_path_factory.mktemp("inotify")
    return gcc_static(tmp, "inotify_watch", PROGRAMS / "inotify_watch.c").read_bytes()


@pytest.fixture
def installed(debian, program):
    cp = debian.lx(["-u", "root", "--", f"rm -rf {DIR} && mkdir -p {DIR}/w && chmod 755 {DIR} {DIR}/w "
                    f"&& cat > {DIR}/iw && chmod 755 {DIR}/iw"], input=program, timeout=60)
    assert cp.returncode == 0, describe(cp)
    return debian


def _lines(inst, *args: str, user: str = "root") -> list[str]:
    cp = inst.lx(["-u", user, "-e", f"{DIR}/iw", *args], timeout=60)
    assert cp.returncode == 0, describe(cp)
    return cp.stdout.decode().splitlines()


def test_a_watched_directory_reports_its_entries_by_name(installed):
    # inotify(7): events on a watched directory carry the entry's name
    # relative to it. chmod inside (the Linux mode, an xattr on the host)
    # is IN_ATTRIB as in Linux.
    assert _lines(installed, "events", f"{DIR}/w") == [
        "event create a", "event modify a", "event attrib a",
        "event moved_from a", "event moved_to b", "event delete b"]


def test_a_watched_file_sees_its_opens_reads_writes_and_closes(installed):
    # inotify(7): each open, read, write and the last close of an open file
    # (IN_CLOSE_WRITE when it was open for writing), in order, as LTP's
    # inotify01 checks. The provider's own copies of a descriptor it opened
    # for the program must not keep the file open past the program's close.
    cp = installed.lx(["-u", "root", "--", f"echo x > {DIR}/w/f"], timeout=60)
    assert cp.returncode == 0, describe(cp)
    assert _lines(installed, "file", f"{DIR}/w/f") == [
        "event attrib", "event open", "event access", "event close_nowrite",
        "event open", "event modify", "event close_write"]


def test_one_chmod_is_one_attrib_event(installed):
    # chmod(2) is one notify_change: one IN_ATTRIB for the file's watch and
    # one, with its name, for its directory's (LTP inotify10), a chmod to the
    # same mode included. The Linux mode is an xattr on the host; the host
    # bits change only when they must (then, two host changes: two events).
    assert _lines(installed, "attrib", f"{DIR}/w") == ["event attrib g parent", "event attrib - child"]


def test_a_chmod_of_group_and_other_bits_is_one_attrib_event(installed):
    # LTP inotify10: mkdir 0700 then chmod 0755 is one IN_ATTRIB|IN_ISDIR on
    # the directory's watch and one, named, on its parent's. The host bits
    # only keep what the provider needs (the owner's), so this chmod writes
    # the Linux mode's xattr alone: one host change, one event.
    assert _lines(installed, "attribdir", f"{DIR}/w") == [
        "event attrib+isdir d parent", "event attrib+isdir - child"]


def test_close_write_is_queued_when_close_returns(installed):
    # The provider's copy of a descriptor it opened for writing is gone
    # before the program runs again, so the program's close(2) is the last
    # and IN_CLOSE_WRITE is queued when it returns (fsnotify_close in __fput).
    cp = installed.lx(["-u", "root", "--", f"echo x > {DIR}/w/c"], timeout=60)
    assert cp.returncode == 0, describe(cp)
    assert _lines(installed, "closes", f"{DIR}/w/c") == ["closes missed 0"]


def test_watch_descriptors_follow_inodes_and_symlinks(installed):
    # inotify_add_watch(2): the same inode gives the same watch descriptor
    # (through a followed symlink too); IN_DONT_FOLLOW watches the link
    # itself; IN_MASK_CREATE on a watched inode is EEXIST.
    assert _lines(installed, "wds", f"{DIR}/w") == [f"wds same 1 follow 1 nofollow 1 create {-errno.EEXIST}"]


def test_errors_are_linux_own(installed):
    assert _lines(installed, "errors", f"{DIR}/w") == [
        f"errors badf {-errno.EBADF} notinotify {-errno.EINVAL} nomask {-errno.EINVAL} "
        f"addcreate {-errno.EINVAL} noent {-errno.ENOENT} notdir {-errno.ENOTDIR}"]


def test_watching_needs_read_permission_in_linux_terms(installed):
    # "the caller must have read permission for this file" (inotify_add_watch(2)):
    # the Linux owner and mode count, not the host's (the host user owns it all).
    cp = installed.lx(["-u", "root", "--", f"touch {DIR}/secret {DIR}/open && chmod 600 {DIR}/secret "
                       f"&& chmod 644 {DIR}/open"], timeout=60)
    assert cp.returncode == 0, describe(cp)
    assert _lines(installed, "perm", f"{DIR}/secret", user="nobody") == [f"perm {-errno.EACCES}"]
    assert _lines(installed, "perm", f"{DIR}/open", user="nobody") == ["perm 0"]
    assert _lines(installed, "perm", f"{DIR}/secret") == ["perm 0"]


def test_tail_follows_an_append_at_once(installed):
    # GNU tail -f waits on inotify; without it, it polls every -s seconds
    # (here 30, longer than the test waits) and says it reverted to polling.
    script = (f"f={DIR}/log; : > $f; tail -s 30 -f $f > $f.out 2> $f.err & p=$!; sleep 1; "
              "echo appended >> $f; i=0; while [ $i -lt 50 ] && ! grep -q appended $f.out; "
              "do sleep 0.1; i=$((i+1)); done; kill $p; cat $f.out; cat $f.err >&2")
    cp = installed.lx(["-u", "root", "--", script], timeout=60)
    assert cp.returncode == 0, describe(cp)
    assert cp.stdout.decode().splitlines() == ["appended"], describe(cp)
    assert b"polling" not in cp.stderr, describe(cp)
