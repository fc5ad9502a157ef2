"""LxBus between host processes and Linux programs (docs/LXBUS.md).

The Linux side is examples/lxbus_demo.c and a prober below, both built on
the host with `gcc -static` against examples/lxbus.h and copied into the
BusyBox instance; the host side is the `lxsub.lxbus` API, run as the
instance's own host user (a helper process with the runner's environment).
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.fixtures.cbuild import gcc_static
from tests.fixtures.runner import REPO_ROOT, HostUser, LxRunner, describe

EXAMPLES = REPO_ROOT / "examples"
DIR = "/lxbus-test"          # the tests' own place in the shared instance

PROBER_C = r"""
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>
#include "lxbus.h"

static const char *en(int r) {
    static char buf[32];
    if (r >= 0) return "ok";
    switch (errno) {
    case ENOENT: return "ENOENT"; case EINVAL: return "EINVAL"; case ENOTTY: return "ENOTTY";
    case EFAULT: return "EFAULT"; case EBADF: return "EBADF"; case EADDRINUSE: return "EADDRINUSE";
    case EINTR: return "EINTR"; case EACCES: return "EACCES";
    }
    snprintf(buf, sizeof buf, "errno%d", errno);
    return buf;
}
static struct lxbus_name nm(const char *s) {
    struct lxbus_name n; memset(&n, 0, sizeof n); strcpy(n.name, s); return n;
}
static void on_alarm(int s) { (void)s; }

int main(void) {
    int bus = open(LXBUS_DEVICE, O_RDWR);
    setvbuf(stdout, NULL, _IONBF, 0);
    printf("open %s\n", en(bus));
    struct stat sb;
    fstat(bus, &sb);
    printf("fstat chr=%d rdev=%u,%u\n", S_ISCHR(sb.st_mode), major(sb.st_rdev), minor(sb.st_rdev));
    char fdlink[256] = {0};
    readlink("/proc/self/fd/3", fdlink, sizeof fdlink - 1);
    printf("fd link %s\n", fdlink);
    struct lxbus_name n = nm("missing-name");
    printf("connect missing %s\n", en(ioctl(bus, LXBUS_IOC_CONNECT, &n)));
    printf("null pointer %s\n", en(ioctl(bus, LXBUS_IOC_REGISTER_SERVER, NULL)));
    printf("bad pointer %s\n", en(ioctl(bus, LXBUS_IOC_CONNECT, (void *)16)));
    n = nm(""); printf("empty name %s\n", en(ioctl(bus, LXBUS_IOC_REGISTER_SERVER, &n)));
    memset(n.name, 'a', sizeof n.name);
    printf("no NUL %s\n", en(ioctl(bus, LXBUS_IOC_REGISTER_SERVER, &n)));
    n = nm("x"); n.flags = 0x80;
    printf("bad flags %s\n", en(ioctl(bus, LXBUS_IOC_REGISTER_SERVER, &n)));
    n = nm("x"); n.reserved = 1;
    printf("reserved %s\n", en(ioctl(bus, LXBUS_IOC_REGISTER_SERVER, &n)));
    int null = open("/dev/null", O_RDWR);
    n = nm("x"); printf("on /dev/null %s\n", en(ioctl(null, LXBUS_IOC_REGISTER_SERVER, &n)));
    printf("bad fd %s\n", en(ioctl(999, LXBUS_IOC_CONNECT, &n)));
    unsigned flags = 0;
    printf("wait on the device %s\n", en(ioctl(bus, LXBUS_IOC_WAIT_FOR_CONNECTION, &flags)));
    int sv[2];
    socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv);
    printf("wait on a socketpair %s\n", en(ioctl(sv[0], LXBUS_IOC_WAIT_FOR_CONNECTION, &flags)));
    char junk[8];
    printf("read the device %s\n", en((int)read(bus, junk, sizeof junk)));
    printf("write the device %s\n", en((int)write(bus, "x", 1)));

    n = nm("probe-twice");
    int s1 = ioctl(bus, LXBUS_IOC_REGISTER_SERVER, &n);
    printf("register %s\n", en(s1));
    printf("register again %s\n", en(ioctl(bus, LXBUS_IOC_REGISTER_SERVER, &n)));
    close(s1);
    int s2 = ioctl(bus, LXBUS_IOC_REGISTER_SERVER, &n);
    printf("register after close %s\n", en(s2));

    /* A wait that a signal interrupts: EINTR, and the bus still works after. */
    struct sigaction sa; memset(&sa, 0, sizeof sa); sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    alarm(1);
    printf("interrupted wait %s\n", en(ioctl(s2, LXBUS_IOC_WAIT_FOR_CONNECTION, &flags)));

    /* Both ends inside: a child connects, the parent accepts; a descriptor crosses. */
    pid_t child = fork();
    if (child == 0) {
        int b = open(LXBUS_DEVICE, O_RDONLY);
        int port = ioctl(b, LXBUS_IOC_CONNECT, &n);
        if (port < 0) { printf("child connect %s\n", en(port)); _exit(1); }
        write(port, "first", 5); write(port, "second", 6);
        _exit(0);
    }
    int port = ioctl(s2, LXBUS_IOC_WAIT_FOR_CONNECTION, &flags);
    printf("inside wait %s\n", en(port));
    char m[64] = {0};
    int k = read(port, m, sizeof m - 1); m[k] = 0;
    printf("message 1 %s\n", m);
    k = read(port, m, sizeof m - 1); m[k] = 0;
    printf("message 2 %s\n", m);
    int st; waitpid(child, &st, 0);
    printf("child %d\n", WEXITSTATUS(st));
    return 0;
}
"""


# -- building and installing the Linux programs ---------------------------------------

@pytest.fixture(scope="module")
def linux_programs(tmp_path_factory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("lxbus")
    prober = tmp / "prober.c"
    prober.write_text(PROBER_C)
    return {"lxbus_demo": gcc_static(tmp, "lxbus_demo", EXAMPLES / "lxbus_demo.c", EXAMPLES).read_bytes(),
            "prober": gcc_static(tmp, "prober", prober, EXAMPLES).read_bytes()}


def _install(run_lx, programs: dict[str, bytes]) -> None:
    for name, data in programs.items():
        cp = run_lx(["--", f"mkdir -p {DIR} && cat > {DIR}/{name} && chmod 755 {DIR}/{name}"],
                    data)
        assert cp.returncode == 0, describe(cp)


@pytest.fixture
def bb(busybox, linux_programs):
    _install(lambda args, data: busybox.lx(args, input=data), linux_programs)
    return busybox


# -- the host side, run as the runner's user ---------------------------------------

def _host_python(runner: LxRunner, code: str, *args: str, timeout: float = 60,
                 user: HostUser | None = None) -> subprocess.CompletedProcess:
    """Run Python code as the runner's host user (or `user`) with its LX_HOME."""
    argv = [runner.python, "-c", textwrap.dedent(code), *args]
    return runner.run_host((user or runner.user).wrap(argv), timeout=timeout)


def test_example_passes_a_host_pipe_to_linux_and_back(bb):
    """examples/lxbus_host.py: host server + Linux client writing into a
    host pipe it got over the port; Linux server + host client, messages
    both ways and a Linux pipe's read end to the host."""
    runner = bb.runner
    script = runner.readable(EXAMPLES / "lxbus_host.py")
    lx_cmd = f"{runner.python} -m lxsub"
    cp = runner.run_host(runner.user.wrap([runner.python, str(script), bb.name,
                                           f"{DIR}/lxbus_demo", "--lx", lx_cmd]), timeout=120)
    assert cp.returncode == 0, describe(cp)
    out = cp.stdout.decode()
    assert "linux got: hello from the host\n" in out, describe(cp)
    assert "host read from its pipe: written by Linux pid " in out, describe(cp)
    assert "into the host's pipe: hello from the host\n" in out, describe(cp)
    assert "host got reply: done\n" in out, describe(cp)
    assert "linux client exit status: 0\n" in out, describe(cp)
    assert "host got: echo: ping\n" in out, describe(cp)
    assert "host got: here is a pipe (1 descriptor)\n" in out, describe(cp)
    assert "host read from the Linux pipe: a line from Linux through a pipe it made\n" in out
    assert "linux server: bye\n" in out and "linux server exit status: 0\n" in out, describe(cp)


def test_linux_server_host_client_messages_and_descriptors(bb):
    """The Linux program registers; the host connects: boundaries kept,
    descriptors both ways, and the name is free again after the server closed."""
    runner = bb.runner
    prog = runner.popen(["-d", bb.name, "-e", f"{DIR}/lxbus_demo", "server", "svc-msgs"],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert prog.stdout.readline() == b"ready\n"
        code = """
            import os, sys
            from lxsub import lxbus
            distro = sys.argv[1]
            with lxbus.connect(distro, "svc-msgs", wait=10) as port:
                r, w = os.pipe()
                port.send(b"a" * 3000, fds=[r])     # a descriptor the server closes unread
                data, fds = port.recv()
                print("reply", len(data), data[:8].decode(), len(fds))
                data, fds = port.recv()
                print("then", data.decode(), len(fds), os.read(fds[0], 100).decode().strip())
                port.send(b"bye")
                print("end", port.recv())
        """
        cp = _host_python(runner, code, bb.name)
        out, err = prog.communicate(timeout=60)
    finally:
        if prog.poll() is None:
            prog.kill()
            prog.wait()
    assert cp.returncode == 0, describe(cp)
    lines = cp.stdout.decode().splitlines()
    # "echo: " + the 3000-byte message, one message, no descriptor coming back
    assert lines[0] == "reply 3006 echo: aa 0", describe(cp)
    assert lines[1] == "then here is a pipe 1 a line from Linux through a pipe it made", describe(cp)
    assert lines[2] == "end (b'', [])", describe(cp)
    assert prog.returncode == 0 and out.endswith(b"linux server: bye\n"), (out, err)
    # The server port was closed: the name is free, connecting says so clearly.
    cp = _host_python(runner, """
        import sys
        from lxsub import lxbus
        try:
            lxbus.connect(sys.argv[1], "svc-msgs")
        except lxbus.NoSuchServer as e:
            print("refused", e.errno, e)
    """, bb.name)
    assert cp.returncode == 0, describe(cp)
    assert cp.stdout.decode().startswith(f"refused 2 lxbus: no server port 'svc-msgs' on distro "
                                         f"'{bb.name}'"), describe(cp)


def test_unregistered_names_fail_clearly_on_both_sides(bb):
    cp = bb.exe(f"{DIR}/lxbus_demo", "connect", "nobody-serves-this")
    assert cp.returncode == 3 and cp.stdout == b"errno 2 ENOENT\n", describe(cp)
    cp = _host_python(bb.runner, """
        import sys
        from lxsub import lxbus
        for distro, name in ((sys.argv[1], "nobody-serves-this"), ("no-such-distro", "x")):
            try:
                lxbus.connect(distro, name)
            except lxbus.LxBusError as e:
                print(type(e).__name__, e.errno, "|", e)
    """, bb.name)
    assert cp.returncode == 0, describe(cp)
    first, second = cp.stdout.decode().splitlines()
    assert first.startswith("NoSuchServer 2 | lxbus: no server port 'nobody-serves-this' on "
                            f"distro '{bb.name}' ("), first
    assert second.startswith("LxBusError 2 | lxbus: no distro named 'no-such-distro'"), second


def test_no_server_says_whether_the_instance_runs(bb):
    """The hint of NoSuchServer comes from the bus itself (is the instance's
    socket listening?), not from asking the manager: lxbus sits below it."""
    code = """
        import sys
        from lxsub import lxbus
        try:
            lxbus.connect(sys.argv[1], "nobody-serves-this")
        except lxbus.NoSuchServer as e:
            print(e)
    """
    cp = bb.runner.run(["--terminate", bb.name])
    assert cp.returncode == 0, describe(cp)
    cp = _host_python(bb.runner, code, bb.name)
    assert cp.stdout.decode().endswith("(its instance is not running, so no Linux program "
                                       "serves it)\n"), describe(cp)
    # A running command keeps the instance up (the tests' instances end when idle).
    sleeper = bb.runner.hold(bb.name, 60)
    try:
        cp = _host_python(bb.runner, code, bb.name)
        assert cp.stdout.decode().endswith("(no Linux program of it has registered that "
                                           "name)\n"), describe(cp)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_host_server_refuses_a_taken_name_and_frees_it_on_close(bb):
    cp = _host_python(bb.runner, """
        import sys
        from lxsub import lxbus
        d = sys.argv[1]
        s = lxbus.register_server(d, "taken")
        try:
            lxbus.register_server(d, "taken")
        except lxbus.LxBusError as e:
            print(e.errno, e)
        s.close()
        lxbus.register_server(d, "taken").close()
        print("again ok")
    """, bb.name)
    assert cp.returncode == 0, describe(cp)
    assert cp.stdout.decode() == (f"98 lxbus: port 'taken' on distro '{bb.name}' is already "
                                  "registered by a running server\nagain ok\n"), describe(cp)


def test_odd_ioctls_never_crash_the_provider(bb):
    cp = bb.exe(f"{DIR}/prober", timeout=60)
    assert cp.returncode == 0, describe(cp)
    got = dict(line.rsplit(" ", 1) if not line.startswith(("fstat", "fd link")) else
               (line, "") for line in cp.stdout.decode().splitlines())
    expected = {
        "open": "ok", "connect missing": "ENOENT", "null pointer": "EFAULT",
        "bad pointer": "EFAULT", "empty name": "EINVAL", "no NUL": "EINVAL",
        "bad flags": "EINVAL", "reserved": "EINVAL", "on /dev/null": "ENOTTY",
        "bad fd": "EBADF", "wait on the device": "ENOTTY", "wait on a socketpair": "ENOTTY",
        "write the device": "EBADF", "register": "ok", "register again": "EADDRINUSE",
        "register after close": "ok", "interrupted wait": "EINTR", "inside wait": "ok",
        "message 1": "first", "message 2": "second", "child": "0",
    }
    for key, value in expected.items():
        assert got.get(key) == value, (key, describe(cp))
    assert "fstat chr=1 rdev=10,250" in got, describe(cp)
    # (the device is a memfd on the host, unlinked there but not in the instance)
    assert any(k.startswith("fd link /dev/lxbus") for k in got), describe(cp)
    # The provider is still there and serving.
    cp = bb.sh("echo alive")
    assert cp.returncode == 0 and cp.stdout == b"alive\n", describe(cp)


# -- another host user --------------------------------------------------------------

@pytest.fixture
def lx_lxtest(lx_other_user, busybox_tar, linux_programs):
    runner = lx_other_user
    runner.import_distro("bb", busybox_tar)
    _install(lambda args, data: runner.run(["-d", "bb", *args], input=data), linux_programs)
    return runner


def _nobody() -> HostUser:
    return HostUser("unprivileged", "nobody", 65534, 65534, "/",
                    ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"))


def test_another_host_user_cannot_reach_the_bus(lx_lxtest):
    """The instance runs as lxtest. Another unprivileged user gets a clear
    error from the API; root, who passes the directory's mode, is refused by
    the peer-credential checks of both the provider and the host API."""
    lx = lx_lxtest
    prog = lx.popen(["-d", "bb", "-e", f"{DIR}/lxbus_demo", "server", "private"],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert prog.stdout.readline() == b"ready\n"
        # 1. nobody, with lxtest's LX_HOME: cannot even find the bus.
        if shutil.which("setpriv"):
            from tests.fixtures.runner import python_for, src_for
            nobody = _nobody()
            try:
                py, src = python_for(nobody), src_for(nobody)
            except Exception as e:            # noqa: BLE001 — no Python nobody can run
                py = src = None
                print(f"skipping the nobody part: {e}")
            if py is not None:
                cp = lx.run_host(nobody.wrap([py, "-c", textwrap.dedent("""
                    from lxsub import lxbus
                    try:
                        lxbus.connect("bb", "private")
                    except lxbus.LxBusError as e:
                        print("refused", e)
                """)]), env={"PYTHONPATH": str(src), "HOME": "/"})
                assert cp.returncode == 0, describe(cp)
                text = cp.stdout.decode()
                assert text.startswith("refused lxbus: cannot reach the bus of distro 'bb'"), describe(cp)

        # 2. root, straight at the socket file: the provider closes the connection unseen.
        runtime = _runtime_dir_of(lx)
        path = _port_path(runtime, "bb", b"private")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.settimeout(10)
        s.connect(path)
        try:
            s.send(b"from root")
            assert s.recv(100) == b""
        except (ConnectionResetError, BrokenPipeError):
            pass
        finally:
            s.close()
        # 3. lxtest itself still gets through to the same waiting server.
        cp = _host_python(lx, """
            from lxsub import lxbus
            with lxbus.connect("bb", "private", wait=10) as port:
                port.send(b"from lxtest")
                print(port.recv()[0].decode())
                port.recv()
                port.send(b"bye")
        """)
        assert cp.returncode == 0 and cp.stdout == b"echo: from lxtest\n", describe(cp)
        out, err = prog.communicate(timeout=60)
        assert prog.returncode == 0, (out, err)
    finally:
        if prog.poll() is None:
            prog.kill()
            prog.wait()
    log = (lx.lx_home / "lx.log").read_text(errors="replace")
    assert "refused a connection from another host user" in log

    # 4. A host server of lxtest's: root's connection is not handed to accept().
    argv = lx.user.wrap([lx.python, "-c", textwrap.dedent("""
        from lxsub import lxbus
        with lxbus.register_server("bb", "host-private") as s:
            print("ready", flush=True)
            try:
                s.accept(timeout=3)
                print("accepted")
            except TimeoutError:
                print("nothing accepted")
    """)])
    p = subprocess.Popen(argv, env=lx.env(), stdout=subprocess.PIPE, cwd=str(lx.root))
    try:
        assert p.stdout.readline() == b"ready\n"
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.settimeout(10)
        s.connect(_port_path(runtime, "bb", b"host-private"))
        try:
            assert s.recv(100) == b""
        except ConnectionResetError:
            pass
        s.close()
        assert p.stdout.read() == b"nothing accepted\n"
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()


def _runtime_dir_of(lx: LxRunner) -> Path:
    tag = hashlib.sha256(str(lx.lx_home.resolve()).encode()).hexdigest()[:10]
    return lx.root / "run" / f"lxsub-{tag}"


def _port_path(runtime: Path, distro: str, name: bytes) -> str:
    d = hashlib.sha256(distro.encode()).hexdigest()[:12]
    return str(runtime / "bus" / d / (hashlib.sha256(name).hexdigest()[:16] + ".s"))


def test_example_built_inside_debian_with_its_own_gcc(debian):
    """The demo compiled by the instance's gcc (dynamic, the instance's
    libc) talks to the host the same way."""
    header = (EXAMPLES / "lxbus.h").read_bytes()
    source = (EXAMPLES / "lxbus_demo.c").read_bytes()
    for name, data in (("lxbus.h", header), ("lxbus_demo.c", source)):
        cp = debian.sh(f"mkdir -p {DIR}/src && cat > {DIR}/src/{name}", input=data)
        assert cp.returncode == 0, describe(cp)
    cp = debian.sh(f"cd {DIR}/src && gcc -O2 -Wall -o lxbus_demo lxbus_demo.c && echo built",
                   timeout=300)
    assert cp.returncode == 0 and cp.stdout.endswith(b"built\n"), describe(cp)
    runner = debian.runner
    script = runner.readable(EXAMPLES / "lxbus_host.py")
    cp = runner.run_host(runner.user.wrap([runner.python, str(script), debian.name,
                                           f"{DIR}/src/lxbus_demo", "--lx",
                                           f"{runner.python} -m lxsub"]), timeout=180)
    assert cp.returncode == 0, describe(cp)
    out = cp.stdout.decode()
    assert "into the host's pipe: hello from the host\n" in out, describe(cp)
    assert "host read from the Linux pipe: a line from Linux through a pipe it made\n" in out
