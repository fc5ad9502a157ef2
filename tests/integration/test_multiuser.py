"""A multi-user Linux inside (issue 19): a non-root Linux user's sockets,
terminals and session tools, with the real programs of the Debian fixture
(tmux, screen, ping, the OpenSSH client and server are installed with
apt-get from the fixture's mirror where it is reachable), as root and as an unprivileged host user."""

from __future__ import annotations

import os
import re
import subprocess
import textwrap
import time

import pytest

from tests.fixtures.cbuild import PROGRAMS
from tests.integration.distros import describe

pytestmark = [pytest.mark.debian, pytest.mark.slow]

USER = "user"           # the non-root Linux user the tests work as (uid 1000)
OTHER = "other"         # a second one (uid 1001)
PACKAGES = ("tmux", "screen", "iputils-ping", "openssh-client", "openssh-server")

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
    # uids 1000 and 1001 are these users' (the other tests' users have their own)
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
    keeper = multi.runner.hold(multi.name, 1020)
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


@pytest.mark.parametrize("user", [USER, "root"])
def test_ssh_agent_holds_a_key_that_ssh_add_added(alive, user):
    """ssh-agent's socket is its user's (ssh-add got 'Error connecting to
    agent: Permission denied'): ssh-add -l lists nothing, then the key
    ssh-add added, by ssh-keygen's fingerprint; another user is kept out."""
    multi = alive
    cp = as_user(multi, textwrap.dedent("""\
        eval "$(ssh-agent -s)" >/dev/null
        ssh-add -l; echo "empty rc=$?"
        d=$(mktemp -d) && ssh-keygen -q -t ed25519 -N '' -C agent-test -f $d/key
        ssh-add -q $d/key; echo "add rc=$?"
        ssh-add -l | cut -d' ' -f2 > $d/listed
        ssh-keygen -lf $d/key.pub | cut -d' ' -f2 | cmp - $d/listed && echo "listed is the key"
        stat -c '%U %a' "$SSH_AUTH_SOCK"
        chmod 755 "$(dirname "$SSH_AUTH_SOCK")"
        echo "SSH_AUTH_SOCK=$SSH_AUTH_SOCK SSH_AGENT_PID=$SSH_AGENT_PID"
        """), user=user)
    agent = text(cp).splitlines()[-1] if cp.stdout else ""
    try:
        assert text(cp).splitlines()[:-1] == [
            "The agent has no identities.", "empty rc=1", "add rc=0", "listed is the key",
            f"{user} 600"], describe(cp)
        assert agent.startswith("SSH_AUTH_SOCK=/tmp/ssh-"), describe(cp)
        cp = as_user(multi, f"{agent} ssh-add -l", user=OTHER)
        assert cp.returncode == 2 and b"Permission denied" in cp.stderr, describe(cp)
    finally:
        as_user(multi, f"{agent} ssh-agent -k", user=user)


# -- 4. devpts as Linux's --------------------------------------------------------------------

def _login(inst, user: str, pexpect):
    argv = inst.runner.command(["-d", inst.name, "-u", user])
    child = pexpect.spawn(argv[0], argv[1:], env={**inst.runner.env(), "TERM": "xterm"},
                          dimensions=(24, 80), timeout=30, encoding="utf-8")
    child.expect(r"[#$] ")
    return child


def _spawn(inst, user: str, command: str, pexpect):
    """`lx -d NAME -u USER -- COMMAND` on a pty of its own (a terminal session)."""
    argv = inst.runner.command(["-d", inst.name, "-u", user, "--", command])
    return pexpect.spawn(argv[0], argv[1:], env={**inst.runner.env(), "TERM": "xterm"},
                         dimensions=(24, 80), timeout=30, encoding="utf-8")


@pytest.mark.parametrize("user", [USER, "root"])
def test_tmux_session_is_listed_and_shared_by_two_later_lx_sessions(alive, user):
    """`tmux new -d`, then from other `lx` sessions (each its own client
    connection and pty): `tmux ls` names the session, and two clients
    attach to it at once and see each other's typing. The server checks
    each client's SO_PEERCRED uid against its own (a second root client got
    'access not allowed' when it was the host uid) and the user's socket is
    theirs (a user's got 'Permission denied')."""
    pexpect = pytest.importorskip("pexpect")
    multi = alive
    # a fresh socket directory (tmux refuses one another test left 0755)
    as_user(multi, "tmux kill-server 2>/dev/null; rm -rf /tmp/tmux-$(id -u)", user=user)
    cp = as_user(multi, "tmux new -d -s work", user=user)
    assert cp.returncode == 0, describe(cp)
    clients = []
    try:
        cp = as_user(multi, "tmux ls -F '#{session_name} #{session_windows}'", user=user)
        assert cp.returncode == 0 and text(cp) == "work 1\n", describe(cp)
        first = _spawn(multi, user, "tmux attach -t work", pexpect)
        clients.append(first)
        first.expect(r"[#$] ")
        first.sendline("echo typed-$((6*7))")
        first.expect("typed-42")
        second = _spawn(multi, user, "tmux attach -t work", pexpect)
        clients.append(second)
        second.expect("typed-42")               # the same pane, drawn for the second client
        second.sendline("echo clients=$(tmux list-clients | wc -l) peer=$(tmux display -p '#{client_uid}')")
        second.expect(r"clients=2 peer=(\d+)")
        assert second.match.group(1) == ("1000" if user == USER else "0")
        first.expect("clients=2")               # and typed there, seen here
        second.sendcontrol("b")
        second.send("d")
        second.expect(r"\[detached")
        second.expect(pexpect.EOF)
    finally:
        for child in clients:
            child.close(force=True)
        as_user(multi, "tmux kill-server", user=user)


@pytest.mark.parametrize("user", [USER, "root"])
def test_a_users_terminal_is_theirs_and_ps_names_it(multi, user):
    """The session's pty is the user's, group tty, 0620, with its real
    device number, so ps shows pts/N (it showed ? with 0:0); /dev/tty is
    that terminal, and no terminal in a new session (setsid); screen runs,
    detaches and reattaches as the user and as root."""
    pexpect = pytest.importorskip("pexpect")
    child = _login(multi, user, pexpect)
    try:
        child.sendline("echo \"[$(tty) $(ps -o tty= -p $$) $(stat -c '%U %G %a %t:%T' $(tty))]\"")
        mode = "600" if user == "root" else "620"      # root's ~/.profile on Debian runs `mesg n`
        child.expect(rf"\[/dev/pts/(\d+) pts/(\d+) {user} tty {mode} 88:([0-9a-f]+)\]")
        n, ps_n, minor = child.match.groups()
        assert n == ps_n and int(minor, 16) == int(n) % 256
        child.sendline("echo to-$((6*7)) > /dev/tty && echo ctty=$?")
        child.expect(r"to-42\r\nctty=0")
        child.sendline("setsid -w sh -c 'exec 2>&1; : > /dev/tty'; echo setsid=$?")
        child.expect(r"/dev/tty: No such device or address\r\nsetsid=2")
        # screen (SCREENDIR: /run/screen is made by an init script at boot).
        child.sendline("export SCREENDIR=$HOME/.screen; screen -dmS work sleep 1041 && screen -r work")
        time.sleep(1.5)
        child.sendcontrol("a")
        child.send("d")
        child.expect(r"\[detached")
        child.expect(r"[#$] ")
        child.sendline("echo \"count=$(screen -ls | grep -c 'work.*Detached')\"; screen -S work -X quit")
        child.expect(r"count=1")
        child.sendline("exit 0")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, child.before


def _free_loopback_port() -> int:
    """A TCP port free on the host's loopback now (the instance shares the
    host's network)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sshd_interactive_login_gets_a_terminal_it_owns(alive):
    """sshd (as Linux root) on a loopback port and `ssh -tt` as a user with
    keys made here: the login's pty is chowned to the user (it was EROFS, so
    sshd dropped the login), is the login's controlling terminal (sshd's
    open of /dev/tty after TIOCSCTTY was ENXIO: /dev/tty opened the
    provider's terminal, not the caller's) and ps names it."""
    pexpect = pytest.importorskip("pexpect")
    multi = alive
    port = _free_loopback_port()
    cp = multi.lx(["-u", "root", "--", textwrap.dedent(f"""\
        set -e
        usermod -p '*' {USER}          # no password, not locked ('!'): sshd refuses locked accounts
        su {USER} -c "rm -rf ~/.ssh && mkdir -m 700 ~/.ssh && ssh-keygen -q -t ed25519 -N '' -f ~/.ssh/id_ed25519 &&
                      cp ~/.ssh/id_ed25519.pub ~/.ssh/authorized_keys"
        d=$(mktemp -d) && ssh-keygen -q -t ed25519 -N '' -f $d/host
        mkdir -p -m 755 /run/sshd     # made at boot on Debian, as utmp, where sshd logs the login
        install -m 664 -g utmp /dev/null /run/utmp
        /usr/sbin/sshd -f /dev/null -h $d/host -p {port} -o ListenAddress=127.0.0.1 -o UsePAM=no \\
            -o PidFile=$d/pid -E $d/log
        echo $d
        """)])
    assert cp.returncode == 0, describe(cp)
    d = text(cp).strip()
    child = _spawn(multi, USER, f"ssh -tt -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                                f"-p {port} {USER}@127.0.0.1", pexpect)
    try:
        child.expect(r"\$ ")
        child.sendline("echo \"[$(tty) $(stat -c '%U %G %a' $(tty)) $(ps -o tty= -p $$) $SSH_TTY]\"; "
                       "echo to-the-terminal > /dev/tty && echo ctty=ok")
        child.expect(r"\[/dev/pts/(\d+) (\S+) (\S+) (\d+) pts/(\d+) /dev/pts/(\d+)\]")
        n, owner, group, mode, ps_n, ssh_n = child.match.groups()
        assert (owner, group, mode) == (USER, "tty", "620") and n == ps_n == ssh_n, child.match.group(0)
        child.expect("to-the-terminal")
        child.expect("ctty=ok")
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
        cp = multi.lx(["-u", "root", "--", f"kill $(cat {d}/pid); cat {d}/log"])
    log = text(cp)
    assert f"Accepted publickey for {USER}" in log, log
    assert "failed" not in log.lower() and "error" not in log.lower(), log
    assert child.exitstatus == 0, child.before


def test_a_new_pty_is_the_openers_and_its_owner_and_root_may_change_it(alive):
    """posix_openpt as a user: the slave is the user's, group tty, 0620,
    stat and fstat agree; the owner may chmod it but not give it away;
    root may chown it (sshd's chown of the login's pty was EROFS)."""
    multi = alive
    probe = textwrap.dedent("""\
        import os, sys
        m, s = os.openpty()
        n = os.ttyname(s)
        a, b = os.stat(n), os.fstat(s)
        print(n, a.st_uid, a.st_gid, oct(a.st_mode & 0o7777), (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino))
        os.chmod(n, 0o600)
        print(oct(os.stat(n).st_mode & 0o7777))
        try:
            os.chown(n, 1001, -1)
        except PermissionError:
            print("EPERM")
        sys.stdout.flush()
        print("hold", flush=True)
        sys.stdin.readline()
        """)
    proc = multi.runner.popen(["-d", multi.name, "-u", USER, "-e", "python3", "-c", probe],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        lines = [proc.stdout.readline().decode() for _ in range(4)]
        name, uid, gid, mode, same = lines[0].split()
        assert (uid, gid, mode, same) == ("1000", "5", "0o620", "True"), lines
        assert lines[1:] == ["0o600\n", "EPERM\n", "hold\n"], lines
        cp = multi.lx(["-u", "root", "--", f"chown other {name} && chmod 620 {name} && stat -c '%U %G %a' {name}"])
        assert cp.returncode == 0 and text(cp) == "other tty 620\n", describe(cp)
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


@pytest.mark.parametrize("user", [USER, "root"])
def test_vim_opens_a_file_with_no_error_and_no_prompt(multi, user):
    """vim on a terminal opens a file straight to its text (timer_create's
    EINVAL made it say 'E1286: Could not set timeout' and wait for ENTER),
    edits it and writes it."""
    pexpect = pytest.importorskip("pexpect")
    cp = as_user(multi, "d=$(mktemp -d) && printf 'alpha\\nbeta\\n' > $d/f.txt && echo $d/f.txt", user=user)
    assert cp.returncode == 0, describe(cp)
    path = text(cp).strip()
    child = _spawn(multi, user, f"vim.tiny {path}", pexpect)
    try:
        child.expect(f'"{re.escape(path)}" (2 lines, 11 bytes|2L, 11B)')   # its message line, then the text
        child.expect("beta")
        shown = child.before
        child.send("Gogamma\x1b:wq\r")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, child.before
    assert not re.search(r"E\d+:|Press ENTER|Error", shown), shown
    cp = as_user(multi, f"cat {path}", user=user)
    assert text(cp) == "alpha\nbeta\ngamma\n", describe(cp)


# -- 6. one file, one identity -----------------------------------------------------------------

SAME_FILE = textwrap.dedent("""\
    import os, sys
    for p in sys.argv[1:]:
        fd = os.open(p, os.O_RDONLY | (os.O_DIRECTORY if os.path.isdir(p) else 0))
        fp = os.open(p, os.O_PATH)
        views = [os.stat(p), os.fstat(fd), os.stat(f"/proc/self/fd/{fd}"), os.fstat(fp)]
        keys = {(s.st_dev, s.st_ino, s.st_mode, s.st_rdev) for s in views}
        print(p, "same" if len(keys) == 1 else f"DIFFER {sorted(keys)}")
    """)


def test_stat_and_fstat_of_one_file_agree_and_install_copies_dev_null(multi):
    """stat, fstat, stat of /proc/self/fd/N and fstat of an O_PATH descriptor
    give one (st_dev, st_ino) for each kind of file (/dev/null differed, so
    `install -m 644 /dev/null x`, which man-db's configuration runs, failed)."""
    paths = ["/", "/etc/passwd", "/dev", "/dev/null", "/dev/zero", "/dev/urandom", "/dev/full",
             "/dev/ptmx", "/dev/pts", "/proc", "/proc/self/status", "/proc/cpuinfo", "/sys",
             "/sys/fs/cgroup", "/dev/shm", "/run", "/tmp", "/usr/bin/ls"]
    cp = multi.lx(["-u", USER, "-e", "python3", "-c", SAME_FILE, *paths])
    assert cp.returncode == 0, describe(cp)
    assert text(cp).splitlines() == [f"{p} same" for p in paths], describe(cp)
    # DrvFs as root, who holds its door (USER does not: docs/SECURITY.md).
    host = ["/mnt/host", "/mnt/host/tmp"]
    cp = multi.lx(["-u", "root", "-e", "python3", "-c", SAME_FILE, *host])
    assert cp.returncode == 0, describe(cp)
    assert text(cp).splitlines() == [f"{p} same" for p in host], describe(cp)
    cp = as_user(multi, "d=$(mktemp -d) && install -m 644 /dev/null $d/x && stat -c '%U %a %s' $d/x")
    assert cp.returncode == 0 and text(cp) == "user 644 0\n", describe(cp)


def test_a_device_node_made_by_mknod_is_one_file_for_stat_and_fstat(multi):
    """Character devices made by root with mknod on the distro's tree and on
    a tmpfs: stat, fstat, stat of /proc/self/fd/N and fstat of O_PATH agree
    on (st_dev, st_ino, st_mode, st_rdev), the node's (fstat gave /dev's
    node); /proc/self/fd/N names it and fchmod changes it; it is the device
    (a read of zero gives zeros, null takes a write)."""
    probe = SAME_FILE + textwrap.dedent("""\
        for p in sys.argv[1:3]:           # the made ones (not /dev/null: the others' too)
            fd = os.open(p, os.O_RDWR)
            os.fchmod(fd, 0o600)
            print(p, os.readlink(f"/proc/self/fd/{fd}"), oct(os.stat(p).st_mode), os.write(fd, b"xy"),
                  os.read(fd, 3))
        """)
    cp = multi.lx(["-u", "root", "--", "d=$(mktemp -d) && mknod $d/zero c 1 5 && mknod /dev/shm/null-$$ c 1 3 && "
                   "python3 - $d/zero /dev/shm/null-$$ /dev/null && rm /dev/shm/null-$$ && echo d=$d"],
                  input=probe.encode())
    assert cp.returncode == 0, describe(cp)
    out = text(cp).splitlines()
    d = out[-1].partition("=")[2]
    null = [line.split()[0] for line in out if line.startswith("/dev/shm/null-")][0]
    assert out[:-1] == [f"{d}/zero same", f"{null} same", "/dev/null same",
                        f"{d}/zero {d}/zero 0o20600 2 b'\\x00\\x00\\x00'",
                        f"{null} {null} 0o20600 2 b''"], describe(cp)


# -- 8. virtual ids inside structures ------------------------------------------------------

def test_ids_inside_structures_are_the_instances(multi):
    """timer_create(SIGEV_THREAD_ID, gettid()) (vim's E1286 was its EINVAL),
    F_SETOWN_EX/F_GETOWN_EX with a tid, F_GETLK and F_OFD_GETLK's holder,
    mq_notify's sender and waitid's si_pid/si_uid: a C probe built inside
    with the distro's gcc, run as a user."""
    source = (PROGRAMS / "virtual_ids.c").read_bytes()
    cp = as_user(multi, "d=$(mktemp -d) && cd $d && cat > ids.c && gcc -O2 -Wall -o ids ids.c && "
                        "./ids $d/lockfile /lxsub-ids-$$", input=source, timeout=300)
    assert cp.returncode == 0, describe(cp)
    assert text(cp).splitlines() == [
        "timer_create THREAD_ID ok code=SI_TIMER",
        "timer_create other tid Invalid argument",
        "F_GETOWN_EX tid same",
        "F_GETLK l_pid is the holder",
        "F_OFD_GETLK l_pid is the holder",
        "mq_notify si_pid is the sender",
        "waitid si_pid is the child si_uid is the child's status 7",
    ], describe(cp)


# -- 9. ping -------------------------------------------------------------------------------------

PING_RANGE = "/proc/sys/net/ipv4/ping_group_range"


@pytest.fixture
def ping_range():
    """Set the host's net.ipv4.ping_group_range for the test (root only),
    then put the original back."""
    if os.geteuid() != 0:
        pytest.skip("needs root to change the host's ping_group_range")
    with open(PING_RANGE) as f:
        saved = f.read().strip()

    def set_range(value: str) -> None:
        with open(PING_RANGE, "w") as f:
            f.write(value)
    yield set_range
    set_range(saved)


def test_ping_uses_icmp_datagram_sockets_where_the_host_allows_them(multi, ping_range):
    """Linux root and a Linux user ping 127.0.0.1 through ICMP datagram
    sockets when the host's ping_group_range holds the host user's group;
    where it does not (and the host user has no CAP_NET_RAW), ping fails
    with EPERM, as the README says (known limits)."""
    gid = multi.user.gid
    ping_range(f"{gid} {gid}")
    view = "cat /proc/sys/net/ipv4/ping_group_range"     # in the instance's groups
    cp = multi.sh(view)
    assert cp.returncode == 0 and text(cp) == "0\t2147483647\n", describe(cp)
    for user in ("root", USER):
        cp = multi.lx(["-u", user, "--", "ping -n -c1 -W2 127.0.0.1"])
        assert cp.returncode == 0 and b"1 received" in cp.stdout, describe(cp)
    probe = ("python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM, "
             "socket.IPPROTO_ICMP); print(\"icmp datagram socket\")'")
    cp = as_user(multi, probe)
    assert cp.returncode == 0 and text(cp) == "icmp datagram socket\n", describe(cp)
    ping_range("1 0")
    cp = multi.sh(view)
    assert cp.returncode == 0 and text(cp) == "1\t0\n", describe(cp)
    cp = as_user(multi, probe)
    assert cp.returncode != 0 and b"Permission denied" in cp.stderr, describe(cp)
    if multi.user.uid != 0:       # the host root still has raw sockets
        cp = as_user(multi, "ping -n -c1 -W2 127.0.0.1")
        assert cp.returncode != 0 and b"Operation not permitted" in cp.stderr, describe(cp)


# -- 7. every mount its own st_dev -------------------------------------------------------------

MOUNT_IDS = textwrap.dedent("""\
    import ctypes, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    mounts = {}
    for line in open("/proc/self/mountinfo"):
        f = line.split()
        mounts[f[4]] = (int(f[0]), f[2])
    for path in sys.argv[1:]:
        buf = ctypes.create_string_buffer(256)
        assert libc.statx(-100, path.encode(), 0, 0x1000 | 0x7FF, buf) == 0, path
        mnt_id = int.from_bytes(buf.raw[144:152], "little")
        dev = f"{int.from_bytes(buf.raw[136:140], 'little')}:{int.from_bytes(buf.raw[140:144], 'little')}"
        s = os.stat(path)
        agree = mounts[path] == (mnt_id, dev) and s.st_dev == os.makedev(*map(int, dev.split(":")))
        print(path, "agree" if agree else f"DIFFER {mounts[path]} {(mnt_id, dev)} {s.st_dev}")
    devs = [os.stat(p).st_dev for p in sys.argv[1:]]
    print("distinct" if len(set(devs)) == len(devs) else f"SHARED {devs}")
    """)


def test_every_mount_has_its_own_dev_and_find_xdev_stays_inside(multi):
    """st_dev, /proc/self/mountinfo and statx's stx_mnt_id agree for each
    mount, no two mounts share a device (the rootfs and /mnt/host did: both
    are the host's /), so `find / -xdev` lists /mnt/host but not below it."""
    mounts = ["/", "/proc", "/dev", "/dev/pts", "/sys", "/sys/fs/cgroup", "/dev/shm", "/run",
              "/mnt/host"]
    cp = multi.lx(["-u", USER, "-e", "python3", "-c", MOUNT_IDS, *mounts])
    assert cp.returncode == 0, describe(cp)
    assert text(cp).splitlines() == [f"{m} agree" for m in mounts] + ["distinct"], describe(cp)
    cp = multi.sh("find / -xdev -path '/mnt/host*' -print; find / -xdev -path '/proc/*' -print | head -1; "
                  "find /mnt/host/etc -maxdepth 0 -xdev", timeout=300)
    assert cp.returncode == 0, describe(cp)
    assert text(cp) == "/mnt/host\n/mnt/host/etc\n", describe(cp)


def test_find_goes_on_when_host_directories_vanish_under_it(multi):
    """A host tree changing under `find /mnt/host/...`: the directories that
    vanish are reported (ENOENT, as natively) and find walks on to the end."""
    import shutil
    import tempfile
    import threading
    from pathlib import Path
    top = Path(tempfile.mkdtemp(prefix="lxsub-vanish-"))
    os.chmod(top, 0o755)               # the unprivileged host user walks it too
    tree = top / "vanishing"
    for i in range(200):
        (tree / f"d{i}" / "a" / "b").mkdir(parents=True)
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            for i in range(200):
                shutil.rmtree(tree / f"d{i}", ignore_errors=True)
                (tree / f"d{i}" / "a" / "b").mkdir(parents=True, exist_ok=True)
    worker = threading.Thread(target=churn)
    worker.start()
    try:
        cp = multi.sh(f"for k in 1 2 3; do find /mnt/host{tree} > /dev/null; echo rc=$?; done; "
                      f"find /mnt/host{tree} -maxdepth 0", timeout=300)
    finally:
        stop.set()
        worker.join()
        shutil.rmtree(top, ignore_errors=True)
    assert cp.returncode == 0, describe(cp)
    out = text(cp).splitlines()
    assert out[-1] == f"/mnt/host{tree}" and len(out) == 4, describe(cp)
    assert all(line in ("rc=0", "rc=1") for line in out[:3]), describe(cp)
    for line in cp.stderr.decode().splitlines():
        assert line.startswith("find: ") and line.endswith("No such file or directory"), describe(cp)
