"""UTS and IPC namespaces a program makes (kernel/syscalls/nsproxy.py), with
Debian's util-linux: `unshare --uts --ipc` gives its command host and
domain names and System V objects of its own, `nsenter` joins them through
/proc/<pid>/ns, an unprivileged user gets EPERM, and a namespace's objects
are removed when its last process leaves (LTP setns02 checks the same with
clone(2) and setns(2)). Before, unshare(CLONE_NEWIPC) and
clone(CLONE_NEWIPC) were EPERM for root too."""

from __future__ import annotations

import textwrap

import pytest

from tests.integration.distros import describe

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
