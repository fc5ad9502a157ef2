"""The test fixtures themselves: root file system tarballs, the local .deb,
the LxRunner machinery (as each host user), the escape-attempt programs, and
the CI script agreeing with the README."""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tests.fixtures import REPO_ROOT, SECURITY_DIR, rootfs
from tests.fixtures.runner import SRC_DIR, LxRunner, describe

# ---------------------------------------------------------------------------
# BusyBox


def _members(tarball: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(tarball) as tar:
        return {m.name.removeprefix("./").rstrip("/"): m for m in tar.getmembers()}


@pytest.fixture(scope="module")
def busybox_members(busybox_tar) -> dict[str, tarfile.TarInfo]:
    return _members(busybox_tar)


def test_busybox_has_static_busybox_and_sh(busybox_tar, busybox_members):
    m = busybox_members
    bb = m["bin/busybox"]
    assert bb.isfile() and bb.mode & 0o111 and (bb.uid, bb.gid) == (0, 0)
    with tarfile.open(busybox_tar) as tar:
        head = tar.extractfile(bb).read(4096)
    assert head[:4] == b"\x7fELF" and head[4] == 2, "bin/busybox is not an ELF64"
    assert m["bin/sh"].issym() and m["bin/sh"].linkname == "/bin/busybox"
    applets = [n for n, i in m.items() if i.issym()]
    assert len(applets) > 200
    assert all(m[n].linkname == "/bin/busybox" for n in applets)
    for applet in ("bin/ls", "bin/cat", "usr/bin/awk", "bin/tar", "bin/ps"):
        assert applet in m, applet


def test_busybox_users_and_directories(busybox_tar, busybox_members):
    m = busybox_members
    home = m["home/user"]
    assert home.isdir() and (home.uid, home.gid) == (1000, 1000)
    assert m["tmp"].isdir() and stat.S_IMODE(m["tmp"].mode) == 0o1777
    assert m["root"].isdir() and stat.S_IMODE(m["root"].mode) == 0o700
    for d in ("proc", "sys", "dev"):
        assert m[d].isdir(), d
        assert not any(n.startswith(d + "/") for n in m), f"/{d} is not empty"
    others = [n for n, i in m.items() if (i.uid, i.gid) != (0, 0) and n != "home/user"]
    assert others == [], "only /home/user is not root's"
    with tarfile.open(busybox_tar) as tar:
        passwd = tar.extractfile(m["etc/passwd"]).read().decode()
        group = tar.extractfile(m["etc/group"]).read().decode()
        hostname = tar.extractfile(m["etc/hostname"]).read().decode()
    assert "root:x:0:0:root:/root:/bin/sh" in passwd.splitlines()
    assert "user:x:1000:1000::/home/user:/bin/sh" in passwd.splitlines()
    assert "user:x:1000:" in group.splitlines()
    assert hostname.strip() == rootfs.BUSYBOX_HOSTNAME


def test_busybox_is_cached_and_readable(busybox_tar):
    st = busybox_tar.stat()
    assert rootfs.busybox_tarball() == busybox_tar
    assert busybox_tar.stat().st_mtime_ns == st.st_mtime_ns, "rebuilt although cached"
    assert stat.S_IMODE(st.st_mode) & 0o044 == 0o044, "tarball not world-readable"
    manifest = busybox_tar.with_name(busybox_tar.name + ".json")
    assert manifest.exists()


@pytest.mark.slow
def test_busybox_build_is_reproducible(tmp_path, monkeypatch, busybox_tar):
    """Two builds in a fresh cache give the same bytes (needs the .deb)."""
    monkeypatch.setenv("LXSUB_TEST_CACHE", str(tmp_path / "cache"))
    try:
        first = rootfs.busybox_tarball()
    except rootfs.FixtureUnavailable as e:
        pytest.skip(str(e))
    digest = rootfs._sha256(first)
    second = rootfs.busybox_tarball(rebuild=True)
    assert second == first and rootfs._sha256(second) == digest
    leftovers = [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".build")]
    assert leftovers == []


def test_busybox_binary_runs_as_sh(tmp_path, busybox_tar):
    """The archived busybox is static and runs on this host (no rootfs needed)."""
    with tarfile.open(busybox_tar) as tar:
        data = tar.extractfile("bin/busybox").read()
    bb = tmp_path / "busybox"
    bb.write_bytes(data)
    bb.chmod(0o755)
    cp = subprocess.run([str(bb), "sh", "-c", "echo $((6*7))"], capture_output=True, timeout=30)
    assert cp.stdout == b"42\n", cp


# ---------------------------------------------------------------------------
# Debian


@pytest.mark.debian
def test_debian_tarball_contents(debian_tar):
    m = _members(debian_tar)
    for prog in ("usr/bin/python3", "usr/bin/gcc", "usr/bin/ps", "usr/bin/git",
                 "usr/bin/perl", "usr/bin/file", "usr/bin/dpkg", "usr/bin/apt-get"):
        assert prog in m, prog
    devs = {n: i for n, i in m.items() if n.startswith("dev/") and (i.ischr() or i.isblk())}
    for node, (major, minor) in {"dev/null": (1, 3), "dev/zero": (1, 5),
                                 "dev/urandom": (1, 9), "dev/tty": (5, 0)}.items():
        assert node in devs, f"{node} is not a device node"
        assert (devs[node].devmajor, devs[node].devminor) == (major, minor)
    for name, info in devs.items():
        assert (info.uid, info.gid) == (0, 0), name
        assert info.uname in ("", "root"), f"{name}: owner stored by name {info.uname!r}"
    assert m["bin"].issym() and m["bin"].linkname == "usr/bin", "merged /usr expected"
    assert stat.S_IMODE(m["tmp"].mode) == 0o1777
    shadow = m["etc/shadow"]
    assert shadow.gid == 42, "group ownership (shadow) must be kept numerically"
    assert not any(n.startswith("var/cache/apt/archives/") and n.endswith(".deb") for n in m)


# ---------------------------------------------------------------------------
# The local .deb


def test_local_deb(local_deb):
    assert local_deb.name == "hello-lxsub_1.0_all.deb"
    if not shutil.which("dpkg-deb"):
        pytest.skip("dpkg-deb not installed")
    field = lambda f: subprocess.run(["dpkg-deb", "-f", str(local_deb), f],  # noqa: E731
                                     capture_output=True, text=True, check=True).stdout.strip()
    assert (field("Package"), field("Version"), field("Architecture")) == \
        ("hello-lxsub", "1.0", "all")
    listing = subprocess.run(["dpkg-deb", "-c", str(local_deb)], capture_output=True,
                             text=True, check=True).stdout
    assert re.search(r"-rwxr-xr-x root/root .* \./usr/bin/hello-lxsub$", listing, re.M), listing
    postinst = subprocess.run(["dpkg-deb", "-I", str(local_deb), "postinst"],
                              capture_output=True, text=True, check=True).stdout
    assert "chown 1:1" in postinst and rootfs.LOCAL_DEB.stamp in postinst
    conffiles = subprocess.run(["dpkg-deb", "-I", str(local_deb), "conffiles"],
                               capture_output=True, text=True, check=True).stdout
    assert conffiles.strip() == rootfs.LOCAL_DEB.conffile


# ---------------------------------------------------------------------------
# LxRunner, as each host user


PROBE = ("import os, sys, lxsub; "
         "print(os.getuid(), os.environ['LX_HOME'], os.path.dirname(os.path.dirname(lxsub.__file__))); "
         "open(os.path.join(os.environ['LX_HOME'], 'probe'), 'w').write('x')")


def test_runner_environment(lx, host_user):
    assert lx.command(["--list"])[-3:] == ["-m", "lxsub", "--list"]
    env = lx.env()
    assert env["LX_HOME"] == str(lx.lx_home)
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(lx.src)
    assert len(str(lx.lx_home)) < 60, "keep LX_HOME short: sockets live under it"
    cp = lx.run_host(host_user.wrap([lx.python, "-c", PROBE]), timeout=60)
    assert cp.returncode == 0, describe(cp)
    uid, lx_home, src = cp.stdout.decode().split()
    assert int(uid) == host_user.uid
    assert lx_home == str(lx.lx_home)
    assert Path(src) == lx.src
    if lx.src != SRC_DIR:  # a copy for a user who cannot read the checkout
        assert (lx.src / "lxsub" / "__init__.py").read_bytes() == \
            (SRC_DIR / "lxsub" / "__init__.py").read_bytes()
    probe = lx.lx_home / "probe"
    assert probe.stat().st_uid == host_user.uid, "LX_HOME must be writable by the user"


def test_runner_makes_files_readable(lx, host_user, tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    f = private / "data.tar.gz"
    f.write_bytes(b"tarball")
    f.chmod(0o644)
    shown = lx.readable(f)
    assert host_user.can_read(shown)
    assert shown.read_bytes() == b"tarball"
    if host_user.is_self:
        assert shown == f


def test_runner_timeout_kills_process_group(lx_self):
    t0 = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        lx_self.run_host(["sh", "-c", "sleep 30 & sleep 30; wait"], timeout=1)
    assert time.monotonic() - t0 < 15


def test_runner_close_kills_strays(host_user):
    runner = LxRunner(host_user)
    p = subprocess.Popen(host_user.wrap(["sleep", "60"]), env=runner.env(),
                         stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 10
    while p.pid not in runner.strays() and time.monotonic() < deadline:
        time.sleep(0.05)  # setpriv has not exec'd sleep yet
    assert p.pid in runner.strays()
    with pytest.warns(UserWarning, match="stray"):
        runner.close()
    assert p.wait(timeout=10) == -signal.SIGKILL
    assert runner.killed_strays == [p.pid]
    assert not runner.root.exists()


def test_runner_check_raises_with_output(lx_self):
    cp = lx_self.run_host([sys.executable, "-c", "import sys; print('out'); sys.exit(3)"])
    assert cp.returncode == 3 and cp.stdout == b"out\n"
    with pytest.raises(AssertionError, match="exit status 3"):
        lx_self.run_host([sys.executable, "-c", "import sys; sys.exit(3)"], check=True)


# ---------------------------------------------------------------------------
# Escape-attempt programs


SECURITY_PROGRAMS = sorted(p.stem for p in SECURITY_DIR.glob("*.c"))


def test_security_programs_present():
    assert set(SECURITY_PROGRAMS) >= {"symlink_escape", "dotdot_escape", "proc_escape",
                                      "race_escape", "host_signal", "bypass_syscalls"}
    for name in SECURITY_PROGRAMS:
        head = (SECURITY_DIR / f"{name}.c").read_text().split("*/", 1)[0]
        assert "Usage:" in head and "Confined means" in head, f"{name}.c: header comment"


@pytest.fixture(scope="module")
def security_bin(tmp_path_factory) -> Path:
    if not shutil.which("gcc"):
        pytest.skip("gcc not installed")
    out = tmp_path_factory.mktemp("secbin")
    for name in SECURITY_PROGRAMS:
        cp = subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-pthread",
                             "-o", str(out / name), str(SECURITY_DIR / f"{name}.c")],
                            capture_output=True, text=True, timeout=120)
        assert cp.returncode == 0, f"{name}.c does not compile cleanly:\n{cp.stderr}"
    return out


@pytest.fixture
def marker(tmp_path) -> Path:
    d = tmp_path / "markerdir"
    d.mkdir()
    m = d / "marker"
    m.write_text("LXSUB-ESCAPE-MARKER\n")
    m.chmod(0o644)
    return m


@pytest.fixture
def host_sleep():
    p = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL, start_new_session=True)
    yield p.pid
    p.kill()
    p.wait()


def _run_native(security_bin, tmp_path, argv, timeout=120):
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    env = dict(os.environ, TMPDIR=str(scratch), LXSEC_RACE_SECONDS="20")
    argv = [str(security_bin / argv[0]), *map(str, argv[1:])]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("name", ["symlink_escape", "dotdot_escape", "race_escape"])
def test_detectors_detect_on_the_unconfined_host(security_bin, tmp_path, marker, name):
    """Natively nothing confines the program: it must report ESCAPED.  With
    a secret that is not in the marker it must report CONFINED."""
    extra = ["LXSUB-ESCAPE-MARKER", "20000"] if name == "race_escape" else []
    cp = _run_native(security_bin, tmp_path, [name, marker, *extra])
    assert cp.returncode == 1 and "ESCAPED: " in cp.stdout, cp.stdout + cp.stderr
    assert cp.stdout.rstrip().splitlines()[-1].startswith("ESCAPED ")
    wrong = ["not-the-secret", "2000"] if name == "race_escape" else ["not-the-secret"]
    cp = _run_native(security_bin, tmp_path, [name, marker, *wrong])
    assert cp.returncode == 0 and cp.stdout.rstrip().endswith("CONFINED"), cp.stdout + cp.stderr


def test_proc_and_signal_detectors(security_bin, tmp_path, marker, host_sleep):
    cp = _run_native(security_bin, tmp_path, ["proc_escape", marker, host_sleep])
    assert cp.returncode == 1 and f"stat /proc/{host_sleep} succeeded" in cp.stdout, cp.stdout
    cp = _run_native(security_bin, tmp_path, ["host_signal", host_sleep])
    assert cp.returncode == 1 and f"kill({host_sleep}, 0) succeeded" in cp.stdout, cp.stdout


def test_high_bits_detector_reaches_the_host(security_bin, tmp_path):
    """Natively every high-bit attempt works, and the host process given as
    the owner is sent SIGIO and ends: the detector can see an escape."""
    victim = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        cp = _run_native(security_bin, tmp_path, ["high_bits", victim.pid])
        assert cp.returncode == 1, cp.stdout + cp.stderr
        for what in ("clone(CLONE_UNTRACED", "F_SETOWN |", "FIOSETOWN |", "TIOCSTI |"):
            assert f"ESCAPED: {what}" in cp.stdout or f"ESCAPED: fcntl({what}" in cp.stdout \
                or f"ESCAPED: ioctl({what}" in cp.stdout, (what, cp.stdout)
        assert victim.wait(timeout=10) == -signal.SIGIO
    finally:
        victim.kill()
        victim.wait()


def test_unix_peer_detector_reaches_the_host(security_bin, tmp_path, marker):
    """Natively the abstract name is the host program's, its peer
    credentials and pidfd are had, its secret descriptor taken."""
    name = f"lxsec-{os.getpid()}-native"
    victim = subprocess.Popen([sys.executable, str(SECURITY_DIR / "unix_victim.py"), name,
                               str(tmp_path / "sock"), str(marker)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        assert victim.stdout.readline() == b"ready\n"
        import socket
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(tmp_path / "sock"))
            cp = subprocess.run([str(security_bin / "unix_peer"), str(victim.pid), name],
                                stdin=client, capture_output=True, text=True, timeout=120)
        assert cp.returncode == 1, cp.stdout + cp.stderr
        for what in ("connect to the host's abstract socket", "SO_PEERCRED names host pid",
                     "took the host program's secret file", "pidfd_send_signal(peer, 0) reached",
                     "sendto @", "EADDRINUSE"):
            assert what in cp.stdout, (what, cp.stdout)
        assert "standard input: pidfd_getfd(peer, " in cp.stdout
    finally:
        victim.kill()
        victim.wait()


def test_signal_perm_expects_what_linux_does(security_bin, tmp_path):
    """signal_perm's expectations are the kernel's: natively, as root, every
    attempt on the daemon is EPERM and the allowed signals work."""
    if os.geteuid() != 0:
        pytest.skip("signal_perm drops from root to uid 1000")
    cp = _run_native(security_bin, tmp_path, ["signal_perm"])
    assert cp.returncode == 0 and cp.stdout.rstrip().endswith("CONFINED"), cp.stdout
    assert cp.stdout.count("Operation not permitted") == 15, cp.stdout


def test_survivors_detector_sees_an_untraced_child(security_bin, tmp_path):
    """Natively nothing refuses CLONE_UNTRACED: the program says so."""
    marker = f"lxsec-native-survivor-{os.getpid()}"
    try:
        cp = _run_native(security_bin, tmp_path, ["survivors", marker])
        assert cp.returncode == 1, cp.stdout + cp.stderr
        assert "with CLONE_UNTRACED made child" in cp.stdout, cp.stdout
    finally:
        for pid in filter(str.isdigit, os.listdir("/proc")):   # only what it started
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if marker.encode() in f.read().split(b"\0"):
                        os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass


def test_bypass_detector_runs(security_bin, tmp_path, marker, host_sleep):
    """bypass_syscalls completes natively and finds at least io_uring or
    process_vm_*.  As root it runs in a private mount namespace (it tries
    bind mounts)."""
    argv = ["bypass_syscalls", marker, host_sleep]
    if os.geteuid() == 0:
        if not shutil.which("unshare"):
            pytest.skip("unshare (util-linux) needed to run bypass_syscalls as root")
        argv = [shutil.which("unshare"), "--mount", "--propagation", "private",
                str(security_bin / argv[0]), *map(str, argv[1:])]
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, TMPDIR=str(tmp_path)))
    else:
        cp = _run_native(security_bin, tmp_path, argv)
    lines = cp.stdout.rstrip().splitlines()
    assert cp.returncode in (0, 1) and lines, cp.stdout + cp.stderr
    assert lines[-1] == "CONFINED" or lines[-1].startswith("ESCAPED ")
    assert "ERROR" not in cp.stdout


def test_security_program_usage_error(security_bin, tmp_path):
    cp = _run_native(security_bin, tmp_path, ["host_signal"])
    assert cp.returncode == 2 and cp.stdout.startswith("ERROR: usage:")


# ---------------------------------------------------------------------------
# CI and README agree


def test_ci_runs_the_readme_test_command():
    readme = (REPO_ROOT / "README.md").read_text()
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    m = re.search(r"^TEST_CMD=\((.*)\)", ci, re.M)
    assert m, ".ci/run must define TEST_CMD=(...)"
    command = m.group(1).strip()
    assert command in readme, f"README.md must show the test command `{command}`"
    assert os.access(REPO_ROOT / ".ci" / "run", os.X_OK)
    assert os.access(REPO_ROOT / "scripts" / "quickstart", os.X_OK)
    block = re.search(r"## Quick start.*?```(?:sh|bash)?\n(.*?)```", readme, re.S)
    assert block, "README.md needs a Quick start code block"
    commands = [line for line in block.group(1).splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert commands == ["./scripts/quickstart", "./.ci/run"], commands
