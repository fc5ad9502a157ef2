"""A multi-user Linux inside (issue 19): a non-root Linux user's sockets,
terminals and session tools, with the real programs of the Debian fixture
(tmux, screen and ping are installed with apt-get from the fixture's mirror
where it is reachable), as root and as an unprivileged host user."""

from __future__ import annotations

import os
import re
import textwrap

import pytest

from tests.integration.distros import describe

pytestmark = [pytest.mark.debian, pytest.mark.slow]

USER = "user"           # the non-root Linux user the tests work as (uid 1000)
OTHER = "other"         # a second one (uid 1001)
PACKAGES = ("tmux", "screen", "iputils-ping")

_prepared: set[tuple[str, str]] = set()


def text(cp) -> str:
    return cp.stdout.decode(errors="replace")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes") and not os.environ.get("LXSUB_ALLOW_SKIP"):
        pytest.fail(f"{reason} (CI=true: an unavailable fixture is a failure here)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def multi(debian):
    """The Debian instance with two Linux users and PACKAGES installed (once)."""
    key = (debian.user.kind, debian.name)
    if key not in _prepared:
        cp = debian.lx(["-u", "root", "--", textwrap.dedent(f"""\
            set -e
            id {USER} >/dev/null 2>&1 || useradd -m -u 1000 -s /bin/bash {USER}
            id {OTHER} >/dev/null 2>&1 || useradd -m -u 1001 -s /bin/bash {OTHER}
            """)], timeout=120)
        assert cp.returncode == 0, describe(cp)
        cp = debian.lx(["-u", "root", "--", "dpkg -s " + " ".join(PACKAGES) + " >/dev/null 2>&1 || "
                        "{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
                        "--no-install-recommends " + " ".join(PACKAGES) + "; }"], timeout=600)
        if cp.returncode != 0:
            if b"Could not resolve" in cp.stdout + cp.stderr or b"Failed to fetch" in cp.stdout + cp.stderr:
                _unavailable("the Debian mirror is unreachable: cannot install " + " ".join(PACKAGES))
            assert cp.returncode == 0, describe(cp)
        _prepared.add(key)
    return debian


@pytest.fixture
def alive(multi):
    """The instance kept running for the test (it ends with its last client
    otherwise, taking servers such as tmux with it)."""
    import subprocess
    keeper = multi.runner.popen(["-d", multi.name, "-e", "sleep", "1020"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cp = multi.sh("true")            # the instance is up once a command ran in it
    assert cp.returncode == 0, describe(cp)
    yield multi
    keeper.kill()
    keeper.wait()


def as_user(inst, command: str, user: str = USER, **kw):
    return inst.lx(["-u", user, "--", command], **kw)


# -- 1. a socket made by bind() is the binding user's ---------------------------------------

def test_tmux_socket_is_the_users_and_keeps_others_out(alive):
    """tmux as a user: its server's socket (bind() under a umask of 117) is
    the user's with mode 0660, its owner can connect to it and another
    user cannot (before: root's, 0755, and the owner was refused)."""
    multi = alive
    as_user(multi, "tmux kill-server 2>/dev/null; true")
    cp = as_user(multi, "tmux new -d -s work 'sleep 1021' && stat -c '%U %G %a %F' /tmp/tmux-1000/default")
    try:
        assert cp.returncode == 0, describe(cp)
        assert text(cp) == "user user 660 socket\n", describe(cp)
        connect = ("python3 -c 'import socket; s = socket.socket(socket.AF_UNIX); "
                   "s.connect(\"/tmp/tmux-1000/default\"); print(\"connected\")'")
        cp = as_user(multi, connect)
        assert cp.returncode == 0 and text(cp) == "connected\n", describe(cp)
        cp = as_user(multi, "chmod 755 /tmp/tmux-1000; " + connect)
        assert cp.returncode == 0, describe(cp)
        cp = as_user(multi, connect, user=OTHER)
        assert cp.returncode != 0 and b"Permission denied" in cp.stderr, describe(cp)
    finally:
        as_user(multi, "tmux kill-server")


def test_socket_and_fifo_modes_follow_umask_chmod_and_chown(alive):
    """bind() and mkfifo as a user on the distro's own tree (VolFs): owner,
    group and the umask's mode; chmod, chown and lchown stick (for the
    instance's life: the host keeps no attributes on these file types)."""
    multi = alive
    cp = as_user(multi, textwrap.dedent("""\
        set -e
        d=$(mktemp -d); cd "$d"
        umask 027
        python3 -c 'import socket; socket.socket(socket.AF_UNIX).bind("sock")'
        mkfifo fifo; ln -s fifo link
        stat -c '%n %U %G %a' sock fifo link
        chmod 600 sock; chmod 604 fifo
        stat -c '%n %a' sock fifo
        echo "dir=$d"
        """))
    assert cp.returncode == 0, describe(cp)
    lines = text(cp).splitlines()
    assert lines[:5] == ["sock user user 750", "fifo user user 640", "link user user 777",
                         "sock 600", "fifo 604"], describe(cp)
    d = lines[5].partition("=")[2]
    cp = multi.lx(["-u", "root", "--", f"cd {d} && chown other:other sock && chown -h other link && "
                   "stat -c '%n %U %G' sock link"])
    assert cp.returncode == 0 and text(cp) == "sock other other\nlink other user\n", describe(cp)
