"""Escape attempts (tests/fixtures/security/*.c) compiled and run inside the
Debian instance, as root and as an unprivileged host user: each must report
CONFINED and exit 0."""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.distros import describe

pytestmark = [pytest.mark.debian, pytest.mark.slow]

SRC = Path(__file__).resolve().parents[1] / "fixtures" / "security"
SECRET = "LXSUB-ESCAPE-MARKER"
PROGRAMS = ["symlink_escape", "dotdot_escape", "proc_escape", "race_escape",
            "host_signal", "bypass_syscalls", "high_bits", "unix_peer", "signal_perm",
            "control_socket", "survivors", "unix_sendmsg", "ipc_escape", "mq_escape", "ipc_perm",
            "scm_creds"]


@pytest.fixture(scope="session")
def built(debian):
    """Compile every program inside the instance (sources piped via stdin)."""
    for name in ["lxsec.h"] + [p + ".c" for p in PROGRAMS]:
        cp = debian.sh(f"mkdir -p /opt/lxsec && cat > /opt/lxsec/{name}",
                       input=(SRC / name).read_bytes())
        assert cp.returncode == 0, describe(cp)
    for p in PROGRAMS:
        cp = debian.sh(f"cd /opt/lxsec && gcc -O2 -Wall -pthread -o {p} {p}.c", timeout=300)
        assert cp.returncode == 0, describe(cp)
    return debian


@pytest.fixture
def marker(built, tmp_path_factory):
    """A host file outside the instance, readable by the test user."""
    d = tmp_path_factory.mktemp("marker")
    os.chmod(d, 0o755)
    m = d / "marker.txt"
    m.write_text(f"host file outside the instance: {SECRET}\n")
    os.chmod(m, 0o644)
    built.user.give(d)
    built.user.give(m)
    return m


@pytest.fixture
def victim(built):
    """A sacrificial host process (the program sends it SIGTERM if it escapes)."""
    p = subprocess.Popen(built.user.wrap(["sleep", "600"]), stdin=subprocess.DEVNULL)
    yield p
    p.kill()
    p.wait()


def _check(cp):
    out = cp.stdout.decode(errors="replace")
    assert cp.returncode == 0 and out.rstrip().endswith("CONFINED"), describe(cp)
    assert "ESCAPED" not in out, describe(cp)


@pytest.mark.parametrize("program", ["symlink_escape", "dotdot_escape", "race_escape"])
def test_path_escapes(built, marker, program):
    cp = built.exe("env", "LXSEC_RACE_SECONDS=10", f"/opt/lxsec/{program}", str(marker), SECRET,
                   timeout=400)
    _check(cp)


@pytest.mark.parametrize("program", ["proc_escape", "bypass_syscalls"])
def test_pid_escapes(built, marker, victim, program):
    cp = built.exe(f"/opt/lxsec/{program}", str(marker), str(os.getpid()), SECRET, timeout=400)
    _check(cp)
    assert victim.poll() is None


def test_host_signal_own_pid(built):
    """The pytest process's own host pid: kill(pid) must be ESRCH."""
    cp = built.exe("/opt/lxsec/host_signal", str(os.getpid()), timeout=400)
    _check(cp)


def test_host_signal_victim(built, victim):
    cp = built.exe("/opt/lxsec/host_signal", str(victim.pid), timeout=400)
    _check(cp)
    assert victim.poll() is None, "the host process was signalled"


def test_high_bits_step_around_no_rule(built, victim):
    """Argument rules read the bits the kernel reads (issue 11, item 1):
    clone(CLONE_UNTRACED|CLONE_NEWUSER | 1<<32), F_SETOWN/FIOSETOWN | 1<<32
    naming a host process, TIOCSTI | 1<<32. Natively all of them work and
    the victim dies of SIGIO (tests/unit/test_fixtures.py)."""
    cp = built.exe("/opt/lxsec/high_bits", str(victim.pid), timeout=400)
    _check(cp)
    assert victim.poll() is None, "the host process was signalled"


@pytest.fixture
def unix_victim(built):
    """A host program on an abstract socket and a path socket, holding a
    secret file open (tests/fixtures/security/unix_victim.py), running as
    the test's host user; yields it and a client socket connected to its
    path socket."""
    d = Path(tempfile.mkdtemp(prefix="lxsec-victim-"))     # the host user must reach it
    os.chmod(d, 0o755)
    secret = d / "secret"
    secret.write_text(f"the host program's own file: {SECRET}\n")
    built.user.give(d)
    built.user.give(secret)
    name = f"lxsec-{uuid.uuid4().hex[:12]}"
    p = subprocess.Popen(built.user.wrap([built.runner.python, str(SRC / "unix_victim.py"), name,
                                          str(d / "sock"), str(secret)]),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"ready\n"
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(d / "sock"))
        yield p, name, client
        client.close()
    finally:
        p.kill()
        p.wait()
        shutil.rmtree(d, ignore_errors=True)


def test_unix_sockets_reach_no_host_program(built, unix_victim):
    """Issue 11, item 3: the host program's abstract names are not the
    instance's, its peer credentials show no host pid, and no pidfd of it
    gives its descriptors or a signal, also through a socket connected to
    it that lx passes in as standard input. Natively every one of these
    works (tests/unit/test_fixtures.py)."""
    victim, name, client = unix_victim
    p = built.runner.popen(["-d", built.name, "-e", "/opt/lxsec/unix_peer", str(victim.pid),
                            name, SECRET], stdin=client, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    out, err = p.communicate(timeout=400)
    _check(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    assert b"standard input: SO_PEERCRED gives pid 0 uid 65534" in out, out
    assert victim.poll() is None


def test_users_inside_cannot_signal_root(built):
    """Issue 11, item 5: Linux's permission rule with the instance's
    credentials (kill_ok_by_cred, SIGCONT within a session) for kill,
    group kill, tkill, tgkill, rt_(tg)sigqueueinfo and pidfd_send_signal.
    Natively as root the program gets the same answers from the kernel
    (tests/unit/test_fixtures.py)."""
    cp = built.exe("/opt/lxsec/signal_perm", timeout=400)
    _check(cp)
    assert cp.stdout.count(b"Operation not permitted") == 15, describe(cp)


def _control_sockets(built) -> list[str]:
    """The manager's socket (from its log) and the running instances'."""
    log = (built.runner.lx_home / "manager.log").read_text()
    manager = Path(re.findall(r"listening on (\S+)", log)[-1])
    return [str(manager), *map(str, sorted((manager.parent / "instances").glob("*.sock")))]


def test_control_sockets_take_no_request_from_inside(built):
    """Issue 11, item 6: through /mnt/host (automount on) a Linux program
    reaches the manager's and the instance's sockets, but no request of
    its is answered. The same program run natively as the same host user
    gets answers: the test can fail."""
    assert built.sh("test -d /mnt/host/tmp").returncode == 0, "automount is off"
    keep = built.runner.hold(built.name, 120)
    try:
        for _ in range(100):
            socks = _control_sockets(built)
            if len(socks) >= 2:
                break
            time.sleep(0.1)
        assert len(socks) >= 2, socks
        _attack_control_sockets(built, socks)
    finally:
        keep.kill()
        keep.wait()


def _attack_control_sockets(built, socks: list[str]) -> None:
    bindir = Path(tempfile.mkdtemp(prefix="lxsec-native-"))
    try:
        os.chmod(bindir, 0o755)
        prog = bindir / "control_socket"
        subprocess.run(["gcc", "-O2", "-o", str(prog), str(SRC / "control_socket.c")], check=True)
        native = subprocess.run(built.user.wrap([str(prog), *socks]), capture_output=True,
                                timeout=60)
        assert native.returncode == 1 and b"answered" in native.stdout, describe(native)
    finally:
        shutil.rmtree(bindir, ignore_errors=True)
    cp = built.exe("/opt/lxsec/control_socket", *("/mnt/host" + s for s in socks), timeout=120)
    _check(cp)


def _native_build(name: str, where: Path) -> Path:
    """The attack program compiled on the host, for its native run."""
    os.chmod(where, 0o755)
    prog = where / name
    subprocess.run(["gcc", "-O2", "-pthread", "-o", str(prog), str(SRC / f"{name}.c"), "-lrt"],
                   check=True)
    return prog


def _drain(sock: socket.socket) -> int:
    n = 0
    while True:
        try:
            sock.recv(64)
        except BlockingIOError:
            return n
        n += 1


def test_sendmsg_reaches_no_host_socket_path(built):
    """Issue 11, item 3: sendmsg and sendmmsg name their destination in
    memory the filter cannot read; a datagram with SCM_RIGHTS must not reach
    a host socket path, also when a thread flips msg_name during the call.
    The same program run natively as the same host user delivers them."""
    d = Path(tempfile.mkdtemp(prefix="lxsec-dgram-"))
    try:
        os.chmod(d, 0o755)
        path = d / "dgram"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as host:
            host.bind(str(path))
            host.setblocking(False)
            os.chmod(path, 0o777)
            prog = _native_build("unix_sendmsg", d)
            native = subprocess.run(built.user.wrap(["env", "LXSEC_RACE_SECONDS=1", str(prog),
                                                     str(path)]), capture_output=True, timeout=60)
            assert native.returncode == 1 and b"SCM_RIGHTS delivered" in native.stdout, \
                describe(native)
            assert _drain(host) >= 3
            cp = built.exe("/opt/lxsec/unix_sendmsg", str(path), timeout=400)
            _check(cp)
            assert _drain(host) == 0, "a datagram from inside reached the host socket"
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_received_credentials_are_the_instances(built):
    """Issue 11: SCM_CREDENTIALS received (SO_PASSCRED) show the sender's
    pid, uid and gid as it sees them in the instance, for native sends,
    the provider's sendmsg, a thread older than SO_PASSCRED, children (one
    uid 1000), after exec, and in processes that never turned it on (one
    holding the socket from before, one sent it by SCM_RIGHTS), not the
    host's pid and user. Before the
    translation (the provider's injected filter) every line was ESCAPED
    with the host pid; natively the program is CONFINED (its own view is
    the host's)."""
    cp = built.exe("/opt/lxsec/scm_creds", timeout=400)
    _check(cp)
    out = cp.stdout.decode()
    assert out.count("ok: ") == (12 if "uid-1000" in out else 10), describe(cp)


def _survivors(marker: str) -> list[int]:
    """Host processes any of whose threads runs `... 3600 MARKER`
    (survivors.c's daemons; under lxsub through the instance's loader,
    whose arguments hold them). Read per thread: a process whose leader
    has exited shows an empty command line but for its live threads."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/cmdline", "rb") as f:
                    words = f.read().split(b"\0")
            except OSError:
                continue
            if b"3600" in words and marker.encode() in words:
                found.append(int(pid))
                break
    return found


def _kill_survivors(marker: str) -> None:
    """Clean up after a survivors run: SIGKILL whatever still carries marker
    (never an empty one: every process with a `3600` word would match)."""
    assert marker, "no marker: would kill unrelated processes"
    for pid in _survivors(marker):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def _sleep_marker() -> str:
    """A sleep(1) interval no other process uses (a marker sleep rejects
    would end the daemons at once)."""
    return f"0.{uuid.uuid4().int % 10**15:015d}1"


def _wait_for(cond, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _start_survivors(argv: list[str], marker: str, **kw) -> tuple[subprocess.Popen, int]:
    """Start survivors.c (its own session, so no group signal of the test's
    reaches its daemons), and wait until all the daemons it counted run
    (2 per clone that succeeded: setsid, fork, both exec sleep; 1 for the
    vfork; 2 from a CLONE_VM child, 2 from a thread's fork, 1 process
    whose thread outlives its leader)."""
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True, **kw)
    lines = []
    for line in p.stdout:
        lines.append(line)
        if line.startswith(b"started "):
            break
    assert lines and lines[-1].startswith(b"started "), b"".join(lines)
    expected = int(lines[-1].split()[3])
    assert _wait_for(lambda: len(_survivors(marker)) >= expected, 60), \
        (expected, _survivors(marker), b"".join(lines), [l for l in subprocess.run(["ps", "-wweo", "pid,ppid,pgid,sid,user,stat,wchan:20,args", "--forest"], capture_output=True, text=True).stdout.splitlines() if any(w in l for w in (marker, "lx", "defunct", "sleep", "survivors"))])
    return p, expected


def _provider_pid(built) -> int:
    """The running instance's provider (`lx:DISTRO`) among the runner's processes."""
    for pid in built.runner.strays():
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == f"lx:{built.name}"[:15]:
                    return pid
        except OSError:
            continue
    raise AssertionError("no provider process found")


def test_survivors_detector_natively(built, tmp_path_factory):
    """The same daemons, started natively as the same host user, outlive
    their launcher's SIGKILL: the check below can fail."""
    marker = _sleep_marker()
    d = tmp_path_factory.mktemp("survivors")
    prog = _native_build("survivors", d)
    p, expected = _start_survivors(built.user.wrap([str(prog), marker]), marker)
    try:
        p.kill()
        p.wait()
        time.sleep(1)
        assert len(_survivors(marker)) >= expected
    finally:
        _kill_survivors(marker)


@pytest.mark.parametrize("how", ["terminate", "shutdown", "kill-provider"])
def test_nothing_of_an_instance_survives_it(built, how):
    """Issue 11, item 2: daemons (setsid + double fork, vfork) made with
    every clone flag combination the filter allows are all gone once the
    instance ends, however it ends."""
    marker = _sleep_marker()
    p, expected = _start_survivors(built.runner.command(["-d", built.name, "-e",
                                                         "/opt/lxsec/survivors", marker]),
                                   marker, env=built.runner.env(), cwd=str(built.runner.root))
    try:
        if how == "kill-provider":
            os.kill(_provider_pid(built), 9)
        else:
            cp = built.runner.run([f"--{how}", *([built.name] if how == "terminate" else [])],
                                  timeout=60)
            assert cp.returncode == 0, describe(cp)
        left = _wait_for(lambda: not _survivors(marker), 15)
        assert left, f"{len(_survivors(marker))} of {expected} daemons outlived the instance"
    finally:
        _kill_survivors(marker)
        p.kill()
        p.wait()


class _HostIpc:
    """A host program's System V objects (made here with ctypes): a shared
    memory segment and a message queue holding SECRET, modes 0666 so the
    host user of either test run may use them natively."""

    def __init__(self) -> None:
        import ctypes
        self.libc = libc = ctypes.CDLL(None, use_errno=True)
        libc.shmat.restype = ctypes.c_void_p
        base = 0x4C580000 | (os.getpid() & 0xFFFF)
        self.shm_key, self.msg_key = base, base ^ 0x1
        self.shm_id = libc.shmget(self.shm_key, 4096, 0o1000 | 0o2000 | 0o666)
        self.msg_id = libc.msgget(self.msg_key, 0o1000 | 0o2000 | 0o666)
        assert self.shm_id >= 0 and self.msg_id >= 0, ctypes.get_errno()
        at = libc.shmat(self.shm_id, None, 0)
        ctypes.memmove(at, SECRET.encode(), len(SECRET))
        libc.shmdt(ctypes.c_void_p(at))
        self.send()

    def send(self) -> None:
        msg = (1).to_bytes(8, "little") + SECRET.encode()
        assert self.libc.msgsnd(self.msg_id, msg, len(SECRET), 0) == 0

    def queued(self) -> int:
        buf = bytes(120)                                   # struct msqid_ds
        assert self.libc.msgctl(self.msg_id, 2, buf) == 0  # IPC_STAT
        return int.from_bytes(buf[80:88], "little")       # msg_qnum

    def args(self) -> list[str]:
        return [hex(self.shm_key), str(self.shm_id), hex(self.msg_key), str(self.msg_id), SECRET]

    def remove(self) -> None:
        self.libc.shmctl(self.shm_id, 0, None)
        self.libc.msgctl(self.msg_id, 0, None)


def test_sysv_ipc_of_the_host_is_not_reachable(built, tmp_path_factory):
    """Issue 11, item 4: a host program's shared memory segment and message
    queue are reached neither by key nor by id nor through the *_STAT
    table commands, and a key made inside is the instance's own. Natively
    the same program, as the same host user, reads both secrets."""
    host = _HostIpc()
    try:
        cp = built.exe("/opt/lxsec/ipc_escape", *host.args(), timeout=400)
        _check(cp)
        assert host.queued() == 1, "the host program's message was taken"
        prog = _native_build("ipc_escape", tmp_path_factory.mktemp("ipc"))
        native = subprocess.run(built.user.wrap([str(prog), *host.args()]), capture_output=True,
                                timeout=60)
        assert native.returncode == 1 and b"read the host program's shared memory" in \
            native.stdout and b"took the host program's message" in native.stdout, \
            describe(native)
    finally:
        host.remove()


class _HostQueue:
    """A host program's POSIX message queue (made here with ctypes), mode
    0666 so the host user of either test run may use it natively, holding
    one message with SECRET."""

    def __init__(self, name: bytes) -> None:
        import ctypes
        self.libc = libc = ctypes.CDLL(None, use_errno=True)
        libc.mq_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
        self.name = name
        old = os.umask(0)
        try:
            self.q = libc.mq_open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NONBLOCK, 0o666, None)
        finally:
            os.umask(old)
        assert self.q >= 0, ctypes.get_errno()
        assert libc.mq_send(self.q, SECRET.encode(), len(SECRET), 0) == 0

    def queued(self) -> int:
        attr = bytes(64)                                       # struct mq_attr
        assert self.libc.mq_getattr(self.q, attr) == 0
        return int.from_bytes(attr[24:32], "little")          # mq_curmsgs

    def remove(self) -> None:
        self.libc.mq_close(self.q)
        self.libc.mq_unlink(self.name)


def _host_has_queue(name: bytes) -> bool:
    """Whether the host's IPC namespace has queue `name` (as root: any mode)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mq_open.argtypes = [ctypes.c_char_p, ctypes.c_int]
    q = libc.mq_open(name, os.O_RDONLY)
    if q >= 0:
        libc.mq_close(q)
        return True
    assert ctypes.get_errno() in (errno.ENOENT, errno.EACCES), ctypes.get_errno()
    return ctypes.get_errno() == errno.EACCES


def _helpers_of(built, comm: str) -> list[int]:
    """The runner's host processes called `comm` (the instance's helpers)."""
    found = []
    for pid in built.runner.strays():
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == comm:
                    found.append(pid)
        except OSError:
            continue
    return found


def _describe_strays(built) -> str:
    """pid, comm and owner of each of the runner's host processes (for a
    failure's message: which helper is missing, and what runs instead)."""
    out = []
    for pid in built.runner.strays():
        try:
            with open(f"/proc/{pid}/comm") as f:
                out.append(f"{pid}:{f.read().strip()}:uid{os.stat(f'/proc/{pid}').st_uid}")
        except OSError:
            continue
    anywhere = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() == "lx-mqueues":
                    anywhere.append(f"{entry}:uid{os.stat(f'/proc/{entry}').st_uid}")
        except OSError:
            continue
    return (" ".join(out) or "none") + "; every lx-mqueues on the host: " + (" ".join(anywhere) or "none")


def test_message_queues_are_the_instances_own(built, busybox, tmp_path_factory):
    """Issue 11, item 4 (POSIX message queues): a host program's queue is
    neither opened nor taken from inside, O_CREAT of its name makes the
    instance's own; a queue made inside is seen neither by the host nor by
    another instance (the BusyBox one, running the same program built
    statically), and nothing of it is left when the instance ends. Natively
    the same program, as the same host user, takes the host's message and
    leaves its queue on the host."""
    tag = uuid.uuid4().hex[:10]
    hostq, own = f"/lxsec-host-{tag}".encode(), f"/lxsec-own-{tag}"
    host = _HostQueue(hostq)
    keep = built.runner.hold(built.name)
    try:
        cp = built.exe("/opt/lxsec/mq_escape", hostq.decode(), SECRET, own, timeout=400)
        _check(cp)
        assert host.queued() == 1, "the host program's message was taken"
        assert _host_has_queue(hostq), "the host program's queue was removed from inside"
        assert not _host_has_queue(own.encode()), "a queue made inside is the host's"
        helpers = _helpers_of(built, "lx-mqueues")
        assert helpers, "no message queue helper runs for the instance; the runner's processes: " + \
            _describe_strays(built)

        d = tmp_path_factory.mktemp("mq")
        os.chmod(d, 0o755)
        static = d / "mq_escape"
        subprocess.run(["gcc", "-static", "-O2", "-I", str(SRC), "-o", str(static),
                        str(SRC / "mq_escape.c"), "-lrt"], check=True)
        cp = busybox.lx(["--", "mkdir -p /opt && cat > /opt/mq_escape && chmod 755 /opt/mq_escape"],
                        input=static.read_bytes(), timeout=60)
        assert cp.returncode == 0, describe(cp)
        other = busybox.exe("/opt/mq_escape", own, "made inside", own + "-bb", timeout=120)
        _check(other)
        assert b"mq_open(%s, O_RDONLY): No such file" % own.encode() in other.stdout, describe(other)

        cp = built.runner.run(["--terminate", built.name], timeout=60)
        assert cp.returncode == 0, describe(cp)
        keep.wait(timeout=60)
        assert _wait_for(lambda: not set(helpers) & set(_helpers_of(built, "lx-mqueues")), 15), \
            "the instance's message queue namespace outlived it"
        assert not _host_has_queue(own.encode())

        native = subprocess.run(built.user.wrap([str(static), hostq.decode(), SECRET, own]),
                                capture_output=True, timeout=60)
        assert native.returncode == 1 and b"took the host program's message" in native.stdout, \
            describe(native)
        assert _host_has_queue(own.encode()), "natively the queue is the host's"
    finally:
        keep.kill()
        keep.wait()
        host.remove()
        _mq_unlink(own.encode())


def _mq_unlink(name: bytes) -> None:
    import ctypes
    ctypes.CDLL(None).mq_unlink(name)


def test_ipc_permissions_are_linux_users(built, tmp_path_factory):
    """Issue 11, item 4 (permissions): root's System V objects and POSIX
    message queue, mode 0600, are refused to uid 1000 of the same instance
    (ipcperms: EACCES; IPC_SET/IPC_RMID: EPERM; mq_unlink: the sticky
    root), IPC_STAT shows Linux owners and the creator's pid in the
    instance, IPC_SET hands a segment over. Before, every pico process
    was the same host user and all of it succeeded. The same program run
    natively as host root gets the same answers from the kernel."""
    tag = uuid.uuid4().hex[:4]
    cp = built.lx(["-u", "root", "-e", "/opt/lxsec/ipc_perm", tag], timeout=400)
    _check(cp)
    assert cp.stdout.count(b"ok: ") == 24, describe(cp)
    if os.geteuid() == 0:
        prog = _native_build("ipc_perm", tmp_path_factory.mktemp("ipcperm"))
        native = subprocess.run([str(prog), uuid.uuid4().hex[:4]], capture_output=True, timeout=60)
        _check(native)
