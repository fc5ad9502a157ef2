"""UTS and IPC namespaces a program makes (kernel/syscalls/nsproxy.py), with
Debian's util-linux: `unshare --uts --ipc` gives its command host and
domain names and System V objects of its own, `nsenter` joins them through
/proc/<pid>/ns, an unprivileged user gets EPERM, and a namespace's objects
are removed when its last process leaves (LTP setns02 checks the same with
clone(2) and setns(2)). Before, unshare(CLONE_NEWIPC) and
clone(CLONE_NEWIPC) were EPERM for root too."""

from __future__ import annotations

import errno
import textwrap

import pytest

from tests.fixtures.cbuild import PROGRAMS, gcc_static
from tests.integration.distros import describe, run_probe

pytestmark = [pytest.mark.debian]

# Segment sizes no other test uses: the outer one, the inner one, the one
# of the namespace nsenter joins.
_OUTER, _INNER, _JOINED = 4096 * 5 + 11, 4096 * 5 + 13, 4096 * 5 + 17

# mq_open(3) of one queue name: "open" finds it or not, "create" makes it.
MQ_PY = textwrap.dedent("""\
    import ctypes, errno, os, sys
    rt = ctypes.CDLL("librt.so.1", use_errno=True)
    name, how = b"/lxsub-ns-test", sys.argv[1]
    if how == "unlink":
        r = rt.mq_unlink(name)
    else:
        r = rt.mq_open(name, os.O_RDONLY | (os.O_CREAT | os.O_EXCL if how == "create" else 0), 0o600, None)
    print(how, "ok" if r >= 0 else errno.errorcode[ctypes.get_errno()])
    """)

NAMESPACES_SH = textwrap.dedent(f"""\
    set -e
    export MQ_PY='{MQ_PY}'
    sizes() {{ ipcs -m | awk '$1 ~ /^0x/ {{print $5}}' | sort | tr '\\n' ' '; }}
    outer=$(ipcmk -M {_OUTER} | awk '{{print $NF}}')
    mq() {{ python3 -c "$MQ_PY" "$@"; }}
    echo "outer-mq $(mq create)"
    echo "outer-links $(readlink /proc/self/ns/uts) $(readlink /proc/self/ns/ipc)"
    unshare --uts --ipc sh -c '
        echo "inner-links $(readlink /proc/self/ns/uts) $(readlink /proc/self/ns/ipc)"
        hostname inner.example
        echo "inner-host $(hostname) $(cat /proc/sys/kernel/hostname)"
        echo "inner-before $(ipcs -m | awk "\\$1 ~ /^0x/" | wc -l)"
        ipcmk -M {_INNER} >/dev/null
        echo "inner-after $(ipcs -m | awk "\\$1 ~ /^0x/ {{print \\$5}}")"
        echo "inner-sysvipc $(tail -n +2 /proc/sysvipc/shm | wc -l)"
        echo "inner-mq $(python3 -c "$MQ_PY" open) $(python3 -c "$MQ_PY" create)"'
    echo "outer-mq-after $(mq open) $(mq unlink)"
    echo "outer-host $(hostname)"
    echo "outer-sizes $(sizes)"
    # a namespace another process keeps, joined by nsenter (setns(2))
    mkfifo /tmp/ns-ready
    unshare --uts --ipc sh -c 'hostname joined; ipcmk -M {_JOINED} >/dev/null; echo > /tmp/ns-ready; exec sleep 60' &
    keeper=$!
    read _ < /tmp/ns-ready
    echo "joined $(nsenter -t $keeper --uts --ipc sh -c 'echo $(hostname) $(ipcs -m | awk "\\$1 ~ /^0x/ {{print \\$5}}")')"
    kill $keeper; wait $keeper || true
    rm /tmp/ns-ready
    echo "nobody $(setpriv --reuid=65534 --regid=65534 --clear-groups unshare --ipc true 2>&1 || true)"
    ipcrm -m "$outer"
    """)


def _host_segments(size: int) -> int:
    with open("/proc/sysvipc/shm") as f:
        return sum(1 for line in f.read().splitlines()[1:] if int(line.split()[3]) == size)


def test_unshare_and_nsenter_give_uts_and_ipc_namespaces(debian):
    cp = debian.lx(["-u", "root", "--", NAMESPACES_SH], timeout=120)
    assert cp.returncode == 0, describe(cp)
    out = dict(line.split(" ", 1) for line in cp.stdout.decode().splitlines())
    outer_links, inner_links = out["outer-links"].split(), out["inner-links"].split()
    assert outer_links == ["uts:[4026531838]", "ipc:[4026531839]"], out
    assert inner_links[0] != outer_links[0] and inner_links[1] != outer_links[1], out
    assert out["inner-host"] == "inner.example inner.example", out
    assert out["outer-host"] == debian.name, out
    # the new IPC namespace starts empty and sees only its own objects
    assert out["inner-before"] == "0", out
    assert out["inner-after"] == str(_INNER) and out["inner-sysvipc"] == "1", out
    # the outer one never saw the inner segment, which went with its namespace
    assert out["outer-sizes"].split() == [str(_OUTER)], out
    assert out["joined"] == f"joined {_JOINED}", out
    assert out["nobody"].endswith("Operation not permitted"), out
    # POSIX message queues: the new namespace has none of the outer one's
    assert out["outer-mq"] == "create ok", out
    assert out["inner-mq"] == "open ENOENT create ok", out
    assert out["outer-mq-after"] == "open ok unlink ok", out
    assert _host_segments(_INNER) == 0 and _host_segments(_JOINED) == 0, out


# -- mount namespaces (tests/fixtures/programs/mount_ns.c, output checked
# natively under `unshare -m`). Before, unshare(CLONE_NEWNS) and
# clone(CLONE_NEWNS) were EPERM for root, and every process saw the
# instance's one mount table.

@pytest.fixture(scope="module")
def mount_ns(tmp_path_factory) -> bytes:
    tmp = tmp_path_factory.mktemp("mount_ns")
    return gcc_static(tmp, "mount_ns", PROGRAMS / "mount_ns.c").read_bytes()


def _mount_ns(debian, program: bytes, case: str) -> dict[str, str]:
    return run_probe(debian, program, "/nsprobe/mount_ns", case, user="root")


def test_unshare_newns_keeps_mounts_and_umounts_to_the_namespace(debian, mount_ns):
    out = _mount_ns(debian, mount_ns, "unshare")
    assert out["unshare rc"] == "0" and out["unshare link-changed"] == "yes", out
    assert out["parent links-differ"] == "yes", out
    # a tmpfs mounted inside is the child's only
    assert out["unshare mount"] == "0" and out["unshare sees-inner"] == "yes", out
    assert out["parent sees-inner"] == "no", out
    # the parent's tmpfs unmounted inside stays mounted for the parent
    assert out["unshare umount-outer"] == "0" and out["unshare sees-outer-file"] == "no", out
    assert out["parent sees-outer-file"] == "yes", out
    # /proc/<pid>/mounts is the process's namespace's table
    assert out["unshare mounts-lists"] == "yes no", out
    assert out["parent mounts-lists"] == "no yes", out
    assert out["parent child-mounts"] == "yes no", out
    # setns(2) through /proc/<pid>/ns/mnt joins the child's namespace
    assert out["setns rc"] == "0" and out["setns sees-inner"] == "yes no", out


def test_shared_mounts_propagate_between_namespaces(debian, mount_ns):
    out = _mount_ns(debian, mount_ns, "shared")
    assert out["shared make-shared"] == "0 0" and out["shared make-private"] == "0", out
    assert out["shared two-types"] == str(-errno.EINVAL), out
    # mountinfo: the copy of a shared mount is a peer (same group)
    parent_type, child_type = out["shared parent-type"], out["shared child-type"]
    assert parent_type.startswith("shared:") and child_type == parent_type, out
    # a mount on a shared mount reaches the peer in the other namespace, a
    # mount on a private one does not
    assert out["shared mount-in-shared"] == "0" and out["shared mount-in-private"] == "0", out
    assert out["shared parent-sees-shared"] == "yes yes", out
    assert out["shared parent-sees-private"] == "no no", out
    # a slave receives from its former peers and sends nothing back
    assert out["shared make-slave"] == "0" and out["shared slave-type"].startswith("master:"), out
    assert out["shared mount-in-slave"] == "0", out
    assert out["shared parent-sees-slave-mount"] == "no", out
    assert out["shared parent-mount-to-slave"] == "0" and out["shared slave-receives"] == "yes", out
    # an umount propagates as the mount did
    assert out["shared parent-umount"] == "0" and out["shared umount-propagated"] == "no", out


def test_clone_newns_and_who_may_make_a_mount_namespace(debian, mount_ns):
    out = _mount_ns(debian, mount_ns, "clone")
    assert out["clone child"] == "0", out
    assert out["clone parent-sees"] == "no no", out
    # CLONE_FS would share the root and cwd the new namespace moves
    assert out["clone with-fs"] == str(-errno.EINVAL), out
    assert out["nobody unshare"] == str(-errno.EPERM), out


def test_pivot_root_swaps_the_root_mount_in_a_namespace(debian, mount_ns):
    """pivot_root(2), before EPERM for every caller: in a namespace of its
    own, chrooted into a tmpfs, the tmpfs on /new becomes the root and the
    old root goes to /new/old."""
    out = _mount_ns(debian, mount_ns, "pivot")
    assert out["pivot unshare"] == "0" and out["pivot private"] == "0", out
    # new_root on the root's own file system
    assert out["pivot same-fs"] == str(-errno.EBUSY), out
    assert out["pivot rc"] == "0" and out["pivot cwd"] == "/", out
    assert out["pivot sees"] == "yes yes no", out
    assert out["pivot umount-old"] == "0 no", out
    assert out["pivot child"] == "0", out


def test_open_tree_clone_and_move_mount_beneath(debian, mount_ns):
    """open_tree(2) and move_mount(2), before EPERM: a detached clone of a
    tmpfs mount, attached beneath the tmpfs on top of another directory,
    is uncovered by that one's umount (LTP move_mount03)."""
    out = _mount_ns(debian, mount_ns, "tree")
    assert out["tree plain-is-path"] == "yes", out
    assert out["tree clone"] == "ok" and out["tree bad-flags"] == str(-errno.EINVAL), out
    assert out["tree beneath"] == "0" and out["tree sees"] == "yes yes no", out
    assert out["tree umount-top"] == "0 yes" and out["tree umount-beneath"] == "0 no", out
