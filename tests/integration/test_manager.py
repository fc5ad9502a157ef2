"""The manager daemon and its instances, with real processes.

Each test has its own LxRunner (own LX_HOME, runtime dir, host config), so
its own manager; runners configure `[instance] idle_timeout = 0` unless a
test says otherwise.
"""

from __future__ import annotations

import json
import shutil
import os
import signal
import socket
import time
import subprocess
import tempfile

import pytest

from tests.fixtures.runner import LxRunner, describe, wait_for


def _import_bb(lx: LxRunner, busybox_tar) -> None:
    lx.import_distro("bb", busybox_tar)


def _spawn(lx: LxRunner, args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen(lx.command(args), env=lx.env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def _status(lx: LxRunner) -> str:
    cp = lx.run(["--status"])
    assert cp.returncode == 0, describe(cp)
    return cp.stdout.decode()


def _instance_pids(lx: LxRunner) -> list[int]:
    """Host pids of the runner's instance processes (the 'lx:NAME' comm)."""
    found = []
    for pid in lx.strays():
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().startswith("lx:"):
                    found.append(pid)
        except OSError:
            pass
    return found


def _sleepers(lx: LxRunner, seconds: str) -> list[int]:
    """Host pids of `sleep SECONDS` run by the runner's user (by command line:
    a pico process's host name is the descriptor it was executed from)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != lx.user.uid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")[:-1]
        except OSError:
            continue
        if b"lxsub" in args:
            continue          # lx itself: python3 -m lxsub ... -e sleep N
        if args[-1:] == [seconds.encode()] and any(os.path.basename(a) == b"sleep" for a in args):
            found.append(int(entry))
    return found


def test_two_sessions_share_one_instance(lx, busybox_tar):
    _import_bb(lx, busybox_tar)
    first = _spawn(lx, ["-d", "bb", "-e", "sleep", "1001"])
    try:
        wait_for(lambda: _sleepers(lx, "1001"), what="the first session's sleep")
        cp = lx.run(["-d", "bb", "--", "ps -o pid,comm,args"])
        assert cp.returncode == 0, describe(cp)
        lines = [line.split(None, 2) for line in cp.stdout.decode().splitlines()[1:]]
        sleeps = [pid for pid, comm, args in lines if comm == "sleep" and "1001" in args]
        assert len(sleeps) == 1, describe(cp)
        assert int(sleeps[0]) < 100   # a virtual pid of the shared instance
        status = _status(lx)
        row = next(line.split() for line in status.splitlines() if line.startswith("bb "))
        assert row[2:4] == ["1", "1"], status      # one client, one process
        cp = lx.run(["-d", "bb", "--", f"kill {sleeps[0]}"])
        assert cp.returncode == 0, describe(cp)
        assert first.wait(timeout=20) == 128 + signal.SIGTERM
    finally:
        first.kill()
        first.wait()
    wait_for(lambda: not _instance_pids(lx), what="the instance to end")
    assert not _sleepers(lx, "1001")


def test_background_job_dies_with_its_instance(lx, busybox_tar):
    _import_bb(lx, busybox_tar)
    cp = lx.run(["-d", "bb", "--", "sleep 1002 > /dev/null 2>&1 &"])
    assert cp.returncode == 0, describe(cp)
    wait_for(lambda: not _sleepers(lx, "1002"), what="the background sleep to be killed")
    # The instance kills what runs in it, then exits: a moment later.
    wait_for(lambda: not _instance_pids(lx), what="the instance to end")


def test_instance_ends_with_its_last_command(lx, busybox_tar):
    """Nothing left running, grace period 0: the instance process exits."""
    _import_bb(lx, busybox_tar)
    cp = lx.run(["-d", "bb", "-e", "true"])
    assert cp.returncode == 0, describe(cp)
    wait_for(lambda: not _instance_pids(lx), timeout=15, what="the instance to exit")
    wait_for(lambda: "No instance is running" in _status(lx), timeout=15, what="the manager to see it")


def test_grace_period_keeps_the_instance_for_the_next_client(lx, busybox_tar):
    lx.configure("[instance]\nidle_timeout = 3\n")
    _import_bb(lx, busybox_tar)
    cp = lx.run(["-d", "bb", "--", "sleep 1003 > /dev/null 2>&1 &"])
    assert cp.returncode == 0, describe(cp)
    cp = lx.run(["-d", "bb", "--", "ps -o comm,args | grep '^sleep.*1003'"])
    assert cp.returncode == 0, describe(cp)     # the same instance: its job is there
    wait_for(lambda: not _sleepers(lx, "1003"), timeout=30, what="the grace period to end")
    assert "No instance is running" in _status(lx)


def test_terminate_ends_the_instance_now(lx, busybox_tar):
    _import_bb(lx, busybox_tar)
    session = _spawn(lx, ["-d", "bb", "-e", "sleep", "1004"])
    try:
        wait_for(lambda: _sleepers(lx, "1004"), what="the sleep")
        assert "bb" in _status(lx)
        cp = lx.run(["--terminate", "bb"])
        assert cp.returncode == 0, describe(cp)
        assert session.wait(timeout=20) == 128 + signal.SIGKILL
        # The attached client says what happened, in one line.
        assert session.stderr.read().decode() == (
            "lx: lx --terminate ended the instance; the command was killed\n")
    finally:
        session.kill()
        session.wait()
    assert not _sleepers(lx, "1004")
    assert "No instance is running" in _status(lx)
    cp = lx.run(["--terminate", "nosuch"])
    assert cp.returncode == 69 and b"nosuch" in cp.stderr, describe(cp)


def test_manager_killed_then_restarted_finds_the_instance(lx, busybox_tar):
    _import_bb(lx, busybox_tar)
    session = _spawn(lx, ["-d", "bb", "--", "sleep 1005; echo survived"])
    try:
        wait_for(lambda: _sleepers(lx, "1005"), what="the sleep")
        manager = int(_status(lx).split("pid ", 1)[1].split(",")[0])
        os.kill(manager, signal.SIGKILL)
        # The next lx starts a new manager, which finds the running instance.
        cp = lx.run(["-d", "bb", "--", "ps -o comm,args | grep -c '^sleep.*1005'"])
        assert cp.returncode == 0 and cp.stdout.strip() == b"1", describe(cp)
        assert f"pid {manager}," not in _status(lx)
        cp = lx.run(["-d", "bb", "--",
                     "kill $(ps -o pid,comm,args | awk '$2 == \"sleep\" && /1005/ {print $1}')"])
        assert cp.returncode == 0, describe(cp)
        out, err = session.communicate(timeout=20)
        assert session.returncode == 0 and out == b"survived\n", (out, err)
    finally:
        session.kill()
        session.wait()
    cp = lx.run(["--list", "-v"])
    assert cp.returncode == 0 and b"bb" in cp.stdout, describe(cp)
    wait_for(lambda: not _instance_pids(lx), what="the instance to end")


def test_status_and_list_show_running_instances(lx, busybox_tar):
    _import_bb(lx, busybox_tar)
    assert "not running" in _status(lx)
    session = _spawn(lx, ["-d", "bb", "-e", "sleep", "1006"])
    try:
        wait_for(lambda: _sleepers(lx, "1006"), what="the sleep")
        status = _status(lx)
        assert "Default distro: bb" in status and "Running" in status, status
        cp = lx.run(["--list", "-v"])
        assert cp.returncode == 0, describe(cp)
        row = next(line for line in cp.stdout.decode().splitlines() if " bb " in f" {line} ")
        assert row.startswith("*") and "Running" in row, cp.stdout
    finally:
        session.send_signal(signal.SIGTERM)     # lx forwards it to its command
        assert session.wait(timeout=20) == 128 + signal.SIGTERM
    wait_for(lambda: "Stopped" in lx.run(["--list", "-v"]).stdout.decode(), what="Stopped")


def test_manager_exits_when_idle(lx, busybox_tar):
    lx.configure("[instance]\nidle_timeout = 0\n[manager]\nidle_timeout = 1\n")
    _import_bb(lx, busybox_tar)
    cp = lx.run(["-d", "bb", "-e", "true"])
    assert cp.returncode == 0, describe(cp)
    manager = int(_status(lx).split("pid ", 1)[1].split(",")[0])
    wait_for(lambda: not _alive(manager), what="the manager to exit")
    assert "not running" in _status(lx)
    assert not lx.strays()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_bad_host_config_is_reported(lx, busybox_tar):
    lx.configure("[instance]\nidle_timeout = soon\n")
    _import_bb(lx, busybox_tar)
    cp = lx.run(["-d", "bb", "-e", "true"])
    assert cp.returncode == 65, describe(cp)
    err = cp.stderr.decode()
    assert "config" in err and "idle_timeout" in err and "soon" in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_stdio_is_the_callers(lx, busybox_tar):
    _import_bb(lx, busybox_tar)
    data = os.urandom(3 << 20)
    cp = lx.run(["-d", "bb", "-e", "cat"], input=data)
    assert cp.returncode == 0 and cp.stdout == data, describe(cp)
    cp = lx.run(["-d", "bb", "--", "echo out; echo err >&2; exit 5"])
    assert (cp.returncode, cp.stdout, cp.stderr) == (5, b"out\n", b"err\n"), describe(cp)


# -- the socket --------------------------------------------------------------------------

def _manager_socket(lx: LxRunner) -> str:
    cp = lx.run(["-d", "bb", "-e", "true"])       # starts the manager
    assert cp.returncode == 0, describe(cp)
    return _status(lx).splitlines()[0].rsplit("socket ", 1)[1]


def _connect_as_runner_user(lx: LxRunner, path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(10)
    s.connect(path)
    return s


def test_another_host_user_cannot_connect(lx_other_user, busybox_tar):
    lx = lx_other_user
    _import_bb(lx, busybox_tar)
    path = _manager_socket(lx)
    # We (root) may pass the directory's mode, but the manager checks who we are.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(10)
    try:
        s.connect(path)
    except PermissionError:
        return
    try:
        s.send(json.dumps({"v": 1, "op": "hello"}).encode())
        assert s.recv(65536) == b""           # closed without an answer
    except (ConnectionResetError, BrokenPipeError):
        pass                                  # or reset: refused either way
    finally:
        s.close()
    cp = lx.run(["--status"])
    assert cp.returncode == 0 and b"Manager: pid" in cp.stdout, describe(cp)


def test_fuzzed_requests_never_take_the_manager_down(lx_self, busybox_tar):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    lx = lx_self
    _import_bb(lx, busybox_tar)
    path = _manager_socket(lx)
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=12)
    ops = st.sampled_from(["hello", "status", "launch", "terminate", "shutdown", "session", "nope", ""])
    requests = st.one_of(
        st.binary(max_size=300),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.fixed_dictionaries({"v": st.sampled_from([1, 2, None, "1"]), "op": ops},
                              optional={"distro": json_values, "argv": json_values,
                                        "mode": json_values, "env": json_values, "tty": json_values,
                                        "extra": json_values})
        .filter(lambda d: d.get("op") != "shutdown" or d.get("v") != 1)
        .map(lambda d: json.dumps(d).encode()),
    )

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(requests)
    def one(raw: bytes):
        s = _connect_as_runner_user(lx, path)
        try:
            if raw:
                s.send(raw)
            else:
                s.shutdown(socket.SHUT_WR)
            reply = s.recv(65536)
        finally:
            s.close()
        if reply:
            message = json.loads(reply)
            assert message["ok"] is False or json.loads(raw).get("op") in ("hello", "status",
                                                                          "terminate"), message
            if message["ok"] is False:
                assert message["error"]["code"] and message["error"]["message"]

    one()
    # Oversized, and descriptors where none are taken: refused, manager alive.
    s = _connect_as_runner_user(lx, path)
    s.send(b"{" + b" " * (70 * 1024) + b"}")
    assert json.loads(s.recv(65536))["error"]["code"] == "too-large"
    s.close()
    s = _connect_as_runner_user(lx, path)
    r, w = os.pipe()
    socket.send_fds(s, [json.dumps({"v": 1, "op": "hello"}).encode()], [r, w])
    os.close(r)
    os.close(w)
    assert json.loads(s.recv(65536))["error"]["code"] == "bad-request"
    s.close()
    cp = lx.run(["-d", "bb", "--", "echo still here"])
    assert cp.returncode == 0 and cp.stdout == b"still here\n", describe(cp)


# -- the terminal ------------------------------------------------------------------------------

def test_interactive_shell_on_a_pty(lx, busybox_tar):
    pexpect = pytest.importorskip("pexpect")
    _import_bb(lx, busybox_tar)
    argv = lx.command(["-d", "bb"])
    child = pexpect.spawn(argv[0], argv[1:], env=lx.env(), dimensions=(33, 101),
                          timeout=30, encoding="utf-8")
    try:
        child.expect(r"[#$] ")
        child.sendline("stty size; tty")
        child.expect(r"33 101\r\n/dev/pts/\d+")
        child.sendline("sleep 1007")
        wait_for(lambda: _sleepers(lx, "1007"), what="the sleep")
        child.sendcontrol("c")
        child.expect(r"[#$] ")
        wait_for(lambda: not _sleepers(lx, "1007"), what="Ctrl-C to end the sleep")
        child.setwinsize(44, 120)                # SIGWINCH reaches the shell's pty
        child.sendline("stty size")
        child.expect(r"44 120")
        child.sendline("exit 9")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 9, (child.exitstatus, child.signalstatus)


def _host_shell(lx: LxRunner, pexpect, command: str = ""):
    """bash on a pty of its own (job control on), with LX set to the runner's lx."""
    import shlex
    env = {**lx.env(), "LX": shlex.join(lx.command([])), "PS1": "host$ "}
    args = ["--norc", "--noprofile", "-i"] if not command else ["--norc", "--noprofile", "-c", command]
    return pexpect.spawn("/bin/bash", args, env=env, dimensions=(24, 80), timeout=30,
                         encoding="utf-8")


def test_lx_in_a_host_pipeline_leaves_the_terminal_alone(lx, busybox_tar):
    """`lx -- seq 3 | cat` from a terminal: stdout is a pipe, so as ssh
    without -t lx gives no pty and keeps its terminal's mode; cat's lines
    reach the terminal flush left (a raw terminal drew a staircase)."""
    pexpect = pytest.importorskip("pexpect")
    _import_bb(lx, busybox_tar)
    child = _host_shell(lx, pexpect, '$LX -d bb -- "seq 3" | cat; echo "done=$?"')
    try:
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.before == "1\r\n2\r\n3\r\ndone=0\r\n", repr(child.before)


def test_ctrl_z_suspends_lx_with_its_command(lx, busybox_tar):
    """Ctrl-Z stops the command inside and lx with it (the host shell gets
    its prompt back); fg continues both; Ctrl-C then ends the command."""
    pexpect = pytest.importorskip("pexpect")
    _import_bb(lx, busybox_tar)
    child = _host_shell(lx, pexpect)
    try:
        child.expect(r"host\$ ")
        child.sendline("$LX -d bb -e sleep 1011")
        sleeper = wait_for(lambda: _sleepers(lx, "1011"), what="the sleep")[0]
        child.sendcontrol("z")
        child.expect(r"Stopped")
        child.expect(r"host\$ ")
        # stopped (t: seen by its tracer); the stop reaches it as a signal does, a moment later
        wait_for(lambda: _state(sleeper) in "tT", what="the sleep to stop")
        child.sendline("fg; echo status=$?")    # a stopped job's list is abandoned: ask fg
        wait_for(lambda: _state(sleeper) == "S", what="fg to continue the sleep")
        time.sleep(0.3)
        child.sendcontrol("c")
        child.expect(r"status=130")
        child.expect(r"host\$ ")
        child.sendline("$LX -d bb -e sleep 1012 < /dev/null | cat")
        sleeper = wait_for(lambda: _sleepers(lx, "1012"), what="the sleep without a pty")[0]
        time.sleep(0.3)
        child.sendcontrol("z")                   # SIGTSTP to lx, forwarded
        child.expect(r"Stopped")
        # stopped (t: seen by its tracer); the stop reaches it as a signal does, a moment later
        wait_for(lambda: _state(sleeper) in "tT", what="the sleep to stop")
        child.sendline("fg")
        wait_for(lambda: _state(sleeper) == "S", what="fg to continue the sleep")
        time.sleep(0.3)
        child.sendcontrol("c")                   # cat dies of it too: bash drops the line
        child.expect(r"host\$ ")
        wait_for(lambda: not _sleepers(lx, "1012"), what="Ctrl-C to end the sleep")
        child.sendline("exit 0")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    wait_for(lambda: not _sleepers(lx, "1011") and not _sleepers(lx, "1012"), what="the sleeps to end")


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0]


# -- /etc/lx.conf --------------------------------------------------------------------------------

def _write_lx_conf(lx: LxRunner, text: str) -> None:
    cp = lx.run(["-d", "bb", "-u", "root", "-e", "sh", "-c", 'cat > /etc/lx.conf'], input=text.encode())
    assert cp.returncode == 0, describe(cp)


def test_lx_conf_sets_user_hostname_and_boot_command(lx, busybox_tar):
    _import_bb(lx, busybox_tar)
    _write_lx_conf(lx, "[user]\ndefault = user\n[network]\nhostname = bbhost\n"
                       "[boot]\ncommand = echo booted > /tmp/boot-marker; exec sleep 1008\n")
    cp = lx.run(["-d", "bb", "--", "sleep 0.5; id -un; hostname; cat /tmp/boot-marker; "
                                   "ps -o user,args | grep '[s]leep 1008'"])
    assert cp.returncode == 0, describe(cp)
    lines = cp.stdout.decode().splitlines()
    assert lines[:3] == ["user", "bbhost", "booted"], describe(cp)
    assert lines[3].split()[0] == "root", describe(cp)       # the boot command runs as root
    wait_for(lambda: not _sleepers(lx, "1008"), what="the boot command to end with the instance")


def test_bad_lx_conf_is_reported_with_file_line_and_key(lx, busybox_tar):
    """A bad value is a warning naming file, line and key, and its default is
    used: the distro still starts, so the file can be fixed from inside."""
    _import_bb(lx, busybox_tar)
    _write_lx_conf(lx, "[network]\n# a comment\nhostname = not a hostname!\n[user]\ndefault = user\n")
    cp = lx.run(["-d", "bb", "--", "hostname; id -un"])
    assert cp.returncode == 0 and cp.stdout == b"bb\nuser\n", describe(cp)
    err = cp.stderr.decode().strip()
    assert len(err.splitlines()) == 1 and err.startswith("lx: warning: /etc/lx.conf:3"), err
    assert "hostname" in err, err
    _write_lx_conf(lx, "[network\n")
    cp = lx.run(["-d", "bb", "-e", "id", "-un"])
    assert cp.returncode == 0 and cp.stdout == b"root\n", describe(cp)
    assert b"/etc/lx.conf:1" in cp.stderr and b"ignored" in cp.stderr, describe(cp)


def test_full_screen_programs_on_the_pty(debian):
    """top, less and vi (vim.tiny) draw, take keys and quit on lx's pty."""
    pexpect = pytest.importorskip("pexpect")
    argv = debian.runner.command(["-d", debian.name, "-u", "root"])
    child = pexpect.spawn(argv[0], argv[1:], env={**debian.runner.env(), "TERM": "xterm"},
                          dimensions=(30, 100), timeout=30, encoding="utf-8")
    try:
        child.expect(r"# ")
        child.sendline("top -d 1")
        child.expect(r"PID\s+USER")
        child.expect("init")
        child.send("q")
        child.expect(r"# ")
        child.sendline("seq 1000 | less")
        child.expect(r"28\r\n29\r\n:")      # one screen of 30 rows, then the prompt
        child.send("G")
        child.expect(r"1000")
        child.send("q")
        child.expect(r"# ")
        child.sendline("rm -f /tmp/vi-pty; vi /tmp/vi-pty")
        child.expect(r"vi-pty")
        child.send("ihello from vi\x1b")
        child.send(":wq\r")
        child.expect(r"# ")
        child.sendline("cat /tmp/vi-pty; echo status=$?")
        child.expect(r"hello from vi\r\nstatus=0")
        child.sendline("exit 0")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, child.before


def test_an_idle_instance_sleeps(lx, busybox_tar):
    """After its processes are gone an instance waits without spinning (a
    dead filter's listener left in the poll set once kept it at 100 % CPU)."""
    lx.configure("[instance]\nidle_timeout = 30\n")
    _import_bb(lx, busybox_tar)
    for _ in range(3):
        cp = lx.run(["-d", "bb", "--", "true | cat; sh -c true"])
        assert cp.returncode == 0, describe(cp)
    (pid,) = _instance_pids(lx)
    time.sleep(0.5)
    before = _cpu_ticks(pid)
    time.sleep(2)
    used = _cpu_ticks(pid) - before
    assert used < os.sysconf("SC_CLK_TCK") // 5, f"idle instance used {used} ticks in 2 s"


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])      # utime + stime


@pytest.fixture
def private_python():
    """A system Python copied into a 0700 directory owned by root, as a pyenv
    build under Debian's private /root is: the unprivileged user can be
    started in it by setpriv, but cannot execute it from its own processes."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the private directory belongs to another user")
    private = tempfile.mkdtemp(prefix="lx-root-like-", dir="/tmp")  # mode 0700, like /root
    os.mkdir(os.path.join(private, "bin"))
    python = os.path.join(private, "bin", "python3")
    shutil.copy2(os.path.realpath("/usr/bin/python3"), python)
    yield python
    shutil.rmtree(private, ignore_errors=True)


def test_harness_python_probe_rejects_a_python_under_a_private_directory(private_python):
    from tests.fixtures.runner import python_for, python_usable_by, unprivileged_user
    user = unprivileged_user()
    assert not python_usable_by(user, private_python)
    chosen = python_for(user)
    assert python_usable_by(user, chosen)
    assert not chosen.startswith(os.path.dirname(os.path.dirname(private_python)))


def test_lx_says_when_its_python_cannot_start_the_manager(private_python, lx_other_user,
                                                          busybox_tar):
    _import_bb(lx_other_user, busybox_tar)
    argv = lx_other_user.user.wrap([private_python, "-m", "lxsub", "-d", "bb", "-e", "true"])
    cp = lx_other_user.run_host(argv, timeout=60)
    assert cp.returncode == 72, describe(cp)
    err = cp.stderr.decode()
    assert "cannot start the lx manager" in err and private_python in err, describe(cp)
    assert "Traceback" not in err, describe(cp)
    assert len(err.strip().splitlines()) == 1, describe(cp)
    # The same command with a Python the user can execute again works.
    cp = lx_other_user.run(["-d", "bb", "-e", "true"])
    assert cp.returncode == 0, describe(cp)
