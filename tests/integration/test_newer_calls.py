"""What Linux 6.8 to 6.13 added, which the release lxsub reports promises:
tests/fixtures/programs/newer_calls.c, built static on the host and run as
root in BusyBox. listmount(2) and statmount(2) list and describe the
instance's own mounts (ids and places as /proc/self/mountinfo shows them),
statx(STATX_MNT_ID_UNIQUE) names the same ids, PROCMAP_QUERY on
/proc/self/maps finds the program's own code under its instance path,
lsm_list_modules(2) shows the capability module alone, and the *xattrat
calls set and read an attribute; F_CREATED_QUERY says which open made a
file; PIDFD_GET_INFO gives the instance's pids and ids. Before, statmount and listmount were
EPERM, lsm_list_modules and the *xattrat calls ENOSYS and PROCMAP_QUERY
ENOTTY (the maps file was a memfd), F_CREATED_QUERY 0 on VolFs, PIDFD_GET_INFO the host's pids and ids."""

from __future__ import annotations

import errno

import pytest

from tests.fixtures.cbuild import PROGRAMS, gcc_static
from tests.integration.distros import describe

DIR = "/newer-calls-test"


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> bytes:
    tmp = tmp_path_factory.mktemp("newer_calls")
    return gcc_static(tmp, "newer_calls", PROGRAMS / "newer_calls.c").read_bytes()


@pytest.fixture(scope="module")
def run(busybox, program) -> tuple[list[list[str]], str]:
    """The program's lines, split in words, and the mountinfo it ran with."""
    cp = busybox.lx(["--", f"mkdir -p {DIR} && cat > {DIR}/n && chmod 755 {DIR}/n"],
                    input=program, timeout=60)
    assert cp.returncode == 0, describe(cp)
    cp = busybox.lx(["-u", "root", "--", f"{DIR}/n {DIR} && echo --- && cat /proc/self/mountinfo"],
                    timeout=60)
    assert cp.returncode == 0, describe(cp)
    lines, _, mountinfo = cp.stdout.decode().partition("---\n")
    return [line.split() for line in lines.splitlines()], mountinfo


def _lines(run, name: str) -> list[list[str]]:
    return [words[1:] for words in run[0] if words[0] == name]


def test_listmount_and_statmount_show_the_mountinfo_mounts(run):
    (count,), = _lines(run, "listmount")
    mounts = _lines(run, "mount")
    assert int(count) == len(mounts) > 3, run
    expected = []
    for line in run[1].splitlines():
        fields = line.split()
        sep = fields.index("-")
        expected.append([fields[0], fields[1], fields[2], fields[4], fields[sep + 1], fields[sep + 2], "1"])
    # statmount's mnt_parent_id_old of the root mount is its own id; mountinfo says 1.
    expected[0][1] = expected[0][0]
    assert sorted(mounts, key=lambda m: int(m[0])) == sorted(expected, key=lambda m: int(m[0])), run


def test_statmount_names_the_callers_mount_namespace_and_propagation(run):
    """The first namespace's id is 1 and its root private; after unshare(CLONE_NEWNS)
    the id is another, a mount made shared there says shared with a peer group, and
    the first namespace's id finds nothing from there (ENOENT)."""
    assert _lines(run, "ns_first") == [["0", "1", "1"]], run
    assert _lines(run, "ns_new") == [["0", "1", "1", "1"]], run
    assert _lines(run, "ns_other") == [[str(-errno.ENOENT)]], run


def test_unique_ids_are_statx_s_and_page_like_linux(run):
    assert _lines(run, "statx_unique") == [["1", "1"]], run
    assert _lines(run, "after_first")[0][1] == "1", run
    assert _lines(run, "reverse")[0][1] == "1", run
    # An old 32-bit id is no unique id (EINVAL); an unknown unique id is ENOENT.
    assert _lines(run, "old_id") == [[str(-errno.EINVAL)]], run
    assert _lines(run, "no_such") == [[str(-errno.ENOENT)]], run


def test_procmap_query_names_the_program_by_its_instance_path(run):
    assert _lines(run, "procmap") == [["0", "1", "1", "1", f"{DIR}/n"]], run
    assert _lines(run, "procmap_short") == [[str(-errno.ENAMETOOLONG)]], run
    assert _lines(run, "procmap_none") == [[str(-errno.ENOENT)]], run


def test_lsm_list_modules_shows_capability_alone(run):
    assert _lines(run, "lsm") == [["1", "8", "100"]], run
    assert _lines(run, "lsm_small") == [[str(-errno.E2BIG), "8"]], run


def test_created_query_says_which_open_made_the_file(run):
    """On VolFs (the distro's tree) and wherever /tmp is; a dup shares the
    description; the mark VolFs's files carry is no owner (F_GETOWN 0)."""
    assert _lines(run, "created") == [["1"]], run
    assert _lines(run, "dup_created") == [["1"]], run
    assert _lines(run, "owner") == [["0"]], run
    assert _lines(run, "reopened") == [["0"]], run
    assert _lines(run, "tmp_created") == [["1"]], run


def test_pidfd_get_info_gives_the_instance_s_pids_and_ids(run):
    # The child of a root program in the instance: its pids, its parent, uid/gid 0.
    assert _lines(run, "pidfd_info") == [["0", "1", "1", "1", "0", "0", "0"]], run


def test_xattrat_calls(run):
    assert _lines(run, "xattrat") == [["0", "5", "hello"]], run
    assert _lines(run, "xattrat_flags") == [[str(-errno.EINVAL)]], run
