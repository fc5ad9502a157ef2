"""Interop: host programs run from Linux, path translation, LXENV.

A file on DrvFs (the host's / at /mnt/host) executed inside a distro runs on
the host, outside the instance, with the caller's stdio, cwd (translated),
signals and exit status (kernel/interop.py). Run for both host users the
fixtures give (root and the unprivileged one).
"""

from __future__ import annotations

import os
import signal
import subprocess
from contextlib import contextmanager

import pytest

import lxsub
from lxsub import hostpath
from lxsub.hostpath import HostMount
from tests.fixtures.runner import describe, wait_for

HOST = "/mnt/host"


def _ok(cp: subprocess.CompletedProcess) -> str:
    assert cp.returncode == 0, describe(cp)
    return cp.stdout.decode()


def _host_processes(argv: list[str], uid: int) -> list[int]:
    """Untraced host processes of uid with exactly this command line: host
    programs (a pico process is traced by its provider)."""
    want = [a.encode() for a in argv]
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if f.read().split(b"\0")[:-1] != want:
                    continue
            with open(f"/proc/{entry}/status") as f:
                tracer = next(line for line in f if line.startswith("TracerPid:"))
        except (OSError, StopIteration):
            continue
        if int(tracer.split()[1]) == 0:
            found.append(int(entry))
    return found


@contextmanager
def _lx_conf(inst, text: str):
    """/etc/lx.conf of a shared distro set to `text` for the block (each
    launch after the last client left starts a new instance, which reads it)."""
    cp = inst.lx(["-u", "root", "-e", "cat", "/etc/lx.conf"])
    old = cp.stdout if cp.returncode == 0 else None
    _ok(inst.lx(["-u", "root", "-e", "sh", "-c", "cat > /etc/lx.conf"], input=text.encode()))
    try:
        yield
    finally:
        if old is None:
            _ok(inst.lx(["-u", "root", "-e", "rm", "-f", "/etc/lx.conf"]))
        else:
            _ok(inst.lx(["-u", "root", "-e", "sh", "-c", "cat > /etc/lx.conf"], input=old))


# -- translation rules (no instance) ----------------------------------------------------

MOUNTS = [HostMount("/", "/mnt/host"), HostMount("/srv/data", "/data")]


def test_path_translation_rules():
    assert hostpath.to_linux("/usr/bin", MOUNTS) == "/mnt/host/usr/bin"
    assert hostpath.to_linux("/", MOUNTS) == "/mnt/host"
    assert hostpath.to_linux("/srv/data/x", MOUNTS) == "/data/x"         # the longest host root
    assert hostpath.to_linux("/usr//lib/../bin/.", MOUNTS) == "/mnt/host/usr/bin"
    assert hostpath.to_linux("relative", MOUNTS) is None
    assert hostpath.to_host("/mnt/host/tmp", MOUNTS) == "/tmp"
    assert hostpath.to_host("/mnt/host", MOUNTS) == "/"
    assert hostpath.to_host("/data/x", MOUNTS) == "/srv/data/x"
    assert hostpath.to_host("/mnt/hostile", MOUNTS) is None              # not below /mnt/host
    assert hostpath.to_host("/etc/passwd", MOUNTS) is None               # VolFs: no host path
    assert hostpath.to_host("x/../y", MOUNTS, cwd="/mnt/host/tmp") == "/tmp/y"


def test_lxenv_rules():
    env = {"LXENV": "A:P/p:L/l:U/u:W/w:MISSING", "A": "1", "P": "/usr", "L": "/a:/b",
           "U": "u", "W": "w", "OTHER": "x"}
    assert hostpath.env_to_linux(env, MOUNTS) == {
        "LXENV": env["LXENV"], "A": "1", "P": "/mnt/host/usr", "L": "/mnt/host/a:/mnt/host/b",
        "U": "u"}
    linux = {"LXENV": "A:P/p:L/l:U/u:W/w", "A": "1", "P": "/mnt/host/usr", "L": "/data:/mnt/host/b",
             "U": "u", "W": "w", "OTHER": "x"}
    assert hostpath.env_to_host(linux, MOUNTS) == {
        "LXENV": linux["LXENV"], "A": "1", "P": "/usr", "L": "/srv/data:/b", "W": "w"}
    assert hostpath.env_to_linux({"A": "1"}, MOUNTS) == {}
    assert hostpath.host_path_suffix("/usr/bin:rel:/bin:/usr/bin", MOUNTS) == "/mnt/host/usr/bin:/mnt/host/bin"


# -- host programs from Linux -------------------------------------------------------------

def test_pipeline_through_a_host_sort(debian):
    """`ls /usr/bin | /mnt/host/usr/bin/sort | head` as the native pipeline
    gives it (C collation on both sides: LXENV carries LC_ALL to the host sort)."""
    cp = debian.sh(f"export LC_ALL=C LXENV=LC_ALL; ls /usr/bin | {HOST}/usr/bin/sort | head")
    native = subprocess.run(f"ls {debian.rootfs}/usr/bin | sort | head", shell=True,
                            capture_output=True, env={**os.environ, "LC_ALL": "C"}, check=True)
    assert _ok(cp) == native.stdout.decode() and len(native.stdout.splitlines()) == 10


def test_uname_inside_and_on_the_host(debian, busybox):
    for inst in (debian, busybox):
        cp = inst.sh(f"uname -r; {HOST}/usr/bin/uname -r")
        assert _ok(cp).splitlines() == [lxsub.LINUX_RELEASE, os.uname().release], describe(cp)


def test_exit_statuses_come_back(busybox):
    cp = busybox.sh(f"{HOST}/usr/bin/false; echo $?; {HOST}/usr/bin/true; echo $?; "
                    f"{HOST}/bin/sh -c 'exit 7'; echo $?; "
                    f"{HOST}/bin/sh -c 'kill -TERM $$'; echo $?; "
                    f"{HOST}/bin/sh -c 'kill -KILL $$'; echo $?; "
                    f"trap 'echo caught' INT; {HOST}/bin/sh -c 'kill -INT $$'; echo $?")
    # Killed by a signal the Linux caller had a handler for still kills it
    # (an exec resets handlers): the parent sees 128+N, no "caught".
    assert _ok(cp).split() == ["1", "0", "7", "143", "137", "130"], describe(cp)
    cp = busybox.exe(f"{HOST}/bin/sh", "-c", "exit 42")
    assert cp.returncode == 42, describe(cp)
    cp = busybox.exe(f"{HOST}/bin/sh", "-c", "kill -TERM $$")
    assert cp.returncode == 128 + signal.SIGTERM, describe(cp)


def test_stdio_argv_and_environment(busybox):
    cp = busybox.sh(f"echo hello | {HOST}/usr/bin/tr a-z A-Z; "
                    f"{HOST}/usr/bin/printf '%s|' 'two words' \"\" x; echo; "
                    f"{HOST}/bin/sh -c 'echo err >&2' 2>/dev/null; echo; "
                    f"{HOST}/usr/bin/head -1 < /etc/passwd")
    out = _ok(cp).splitlines()
    assert out[:3] == ["HELLO", "two words||x|", ""], describe(cp)
    assert out[3] == _ok(busybox.exe("head", "-1", "/etc/passwd")).strip(), describe(cp)
    # stdin and stdout of the lx client itself, through a top-level host program
    cp = busybox.exe(f"{HOST}/usr/bin/wc", "-c", input=b"x" * 100000)
    assert _ok(cp).strip() == "100000", describe(cp)


def test_host_program_runs_as_the_host_user_outside_the_instance(busybox):
    cp = busybox.sh(f"{HOST}/usr/bin/id -u; {HOST}/bin/sh -c 'grep TracerPid /proc/$$/status'")
    uid, tracer = _ok(cp).splitlines()
    assert int(uid) == busybox.user.uid, describe(cp)
    assert tracer.split() == ["TracerPid:", "0"], describe(cp)       # not a pico process


def test_working_directory_is_translated(busybox):
    cp = busybox.sh(f"cd {HOST}/tmp && {HOST}/usr/bin/pwd; cd {HOST}/usr/share && {HOST}/bin/pwd -P")
    assert _ok(cp).splitlines() == ["/tmp", os.path.realpath("/usr/share")], describe(cp)
    # Not on DrvFs: the host user's home directory (documented in kernel/interop.py).
    cp = busybox.sh(f"cd /etc && {HOST}/usr/bin/pwd")
    home = busybox.runner.env()["HOME"]
    assert _ok(cp).strip() == (home if os.path.isdir(home) else "/"), describe(cp)


def test_sigint_to_lx_ends_the_host_program(busybox):
    p = busybox.runner.popen(["-d", busybox.name, "--", f"{HOST}/usr/bin/sleep 1011; echo after"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        uid = busybox.user.uid
        pids = wait_for(lambda: _host_processes([f"{HOST}/usr/bin/sleep", "1011"], uid),
                         what="the host sleep")
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130 and b"after" not in out, (p.returncode, out, err)
    wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") and
                              _host_processes([f"{HOST}/usr/bin/sleep", "1011"], uid)
                              for pid in pids),
              what="the host sleep to end")


def test_ctrl_c_on_the_terminal_reaches_the_host_program(busybox):
    pexpect = pytest.importorskip("pexpect")
    argv = busybox.runner.command(["-d", busybox.name])
    child = pexpect.spawn(argv[0], argv[1:], env=busybox.runner.env(), timeout=30,
                          encoding="utf-8")
    uid = busybox.user.uid
    try:
        child.expect(r"[#$] ")
        child.sendline(f"{HOST}/usr/bin/sleep 1012; echo status=$?")
        wait_for(lambda: _host_processes([f"{HOST}/usr/bin/sleep", "1012"], uid),
                  what="the host sleep")
        child.sendcontrol("c")
        child.expect(r"[#$] ")
        wait_for(lambda: not _host_processes([f"{HOST}/usr/bin/sleep", "1012"], uid),
                  what="Ctrl-C to end the host sleep")
        child.sendline("echo still-here")
        child.expect("still-here")
        child.sendline("exit 3")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 3, (child.exitstatus, child.signalstatus)


def test_killing_the_linux_caller_kills_the_host_program(busybox):
    uid = busybox.user.uid
    p = busybox.runner.popen(["-d", busybox.name, "--",
                              f"{HOST}/usr/bin/sleep 1013 & sleep 1; kill -9 $!; wait $!; echo $?"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0 and out.split() == [b"137"], (out, err)
    wait_for(lambda: not _host_processes([f"{HOST}/usr/bin/sleep", "1013"], uid),
              what="the host sleep to be killed with its Linux stand-in")


# -- configuration -------------------------------------------------------------------------

def test_interop_off_runs_the_file_inside(debian, busybox):
    with _lx_conf(debian, "[interop]\nenabled = false\n"):
        # Debian has a loader: the host's uname runs as a Linux binary, inside.
        cp = debian.sh(f"{HOST}/usr/bin/uname -r")
        assert _ok(cp).strip() == lxsub.LINUX_RELEASE, describe(cp)
    with _lx_conf(busybox, "[interop]\nenabled = false\n"):
        # BusyBox has no dynamic loader: the host's dynamic uname cannot run inside.
        cp = busybox.sh(f"{HOST}/usr/bin/uname -r")
        assert cp.returncode == 127 and cp.stdout == b"", describe(cp)
        cp = busybox.sh("echo $PATH")
        assert HOST not in _ok(cp), describe(cp)       # appendHostPath needs interop
    cp = busybox.sh(f"{HOST}/usr/bin/uname -r")       # back on
    assert _ok(cp).strip() == os.uname().release, describe(cp)


def test_append_host_path(busybox):
    extra = "/opt/lxsub-interop-test/bin"
    env = {"PATH": busybox.runner.env()["PATH"] + ":" + extra}
    # Off by default: a command missing from the distro is not silently the host's.
    path = _ok(busybox.sh("echo $PATH", env=env)).strip()
    assert HOST not in path, path
    with _lx_conf(busybox, "[interop]\nappendHostPath = true\n"):
        path = _ok(busybox.sh("echo $PATH", env=env)).strip()
        assert path.endswith(f":{HOST}{extra}"), path
        assert f":{HOST}/usr/bin:" in path + ":", path
        linux = path.split(":")
        assert linux.index("/bin") < linux.index(f"{HOST}/usr/bin"), path   # Linux's own first


def test_automount_root_moves_host_programs(busybox):
    with _lx_conf(busybox, "[automount]\nroot = /h/\n"):
        cp = busybox.sh("/h/host/usr/bin/uname -r; lxpath -u /usr/bin; lxpath -w /h/host/tmp")
        assert _ok(cp).splitlines() == [os.uname().release, "/h/host/usr/bin", "/tmp"], describe(cp)
        cp = busybox.lx(["--path", "-u", "/usr/bin"])
        assert _ok(cp).strip() == "/h/host/usr/bin", describe(cp)


def test_lxenv_from_the_host_into_linux(busybox):
    env = {"LXENV": "LXT_A:LXT_P/p:LXT_L/l:LXT_W/w", "LXT_A": "plain value",
           "LXT_P": "/usr/share", "LXT_L": "/usr/bin:/bin", "LXT_W": "not me",
           "LXT_NOT_LISTED": "no"}
    cp = busybox.sh('echo "$LXT_A|$LXT_P|$LXT_L|${LXT_W-unset}|${LXT_NOT_LISTED-unset}|$LXENV"', env=env)
    assert _ok(cp).strip() == (f"plain value|{HOST}/usr/share|{HOST}/usr/bin:{HOST}/bin|unset|unset|"
                               + env["LXENV"]), describe(cp)


def test_lxenv_from_linux_into_host_programs(busybox):
    cp = busybox.sh(f"export LXENV=LXT_A:LXT_P/p:LXT_U/u LXT_A=hi LXT_P={HOST}/tmp/x "
                    f"LXT_U=linux-only LXT_SECRET=1; "
                    f"{HOST}/bin/sh -c 'echo \"$LXT_A|$LXT_P|${{LXT_U-unset}}|${{LXT_SECRET-unset}}|$LXENV\"'")
    assert _ok(cp).strip() == "hi|/tmp/x|unset|unset|LXT_A:LXT_P/p:LXT_U/u", describe(cp)


# -- lxpath and lx --path -------------------------------------------------------------------

def test_lxpath_inside(busybox, debian):
    for inst in (busybox, debian):
        cp = inst.sh("lxpath /usr/bin; lxpath -u /; lxpath -w /mnt/host/tmp; "
                     "lxpath -w /mnt/host; lxpath -u \"$(lxpath -w /mnt/host/usr/./lib/../bin)\"; "
                     "cd /mnt/host/tmp && lxpath -w sub/../file; "
                     "ls -ln /usr/local/bin/lxpath")
        lines = _ok(cp).splitlines()
        assert lines[:6] == ["/mnt/host/usr/bin", "/mnt/host", "/tmp", "/",
                             "/mnt/host/usr/bin", "/tmp/file"], describe(cp)
        mode, _links, uid, gid = lines[6].split()[:4]
        assert (mode, uid, gid) == ("-rwxr-xr-x", "0", "0"), describe(cp)
    cp = busybox.sh("lxpath -w /etc/passwd")
    assert cp.returncode == 1 and cp.stdout == b"", describe(cp)
    assert cp.stderr.decode().strip().startswith("lxpath: /etc/passwd: not on a host"), describe(cp)
    cp = busybox.sh("lxpath relative")
    assert cp.returncode == 1 and b"not an absolute host path" in cp.stderr, describe(cp)
    for bad in ("lxpath", "lxpath -x /", "lxpath -w a b"):
        cp = busybox.sh(bad)
        assert cp.returncode == 2 and b"usage: lxpath" in cp.stderr, describe(cp)


def test_lxpath_is_rewritten_when_changed(busybox):
    _ok(busybox.lx(["-u", "root", "--", "echo 'echo tampered' > /usr/local/bin/lxpath; "
                                        "chmod 600 /usr/local/bin/lxpath"]))
    # The instance ended with its last client; the next one writes it again.
    cp = busybox.sh("lxpath -w /mnt/host/usr; ls -l /usr/local/bin/lxpath")
    lines = _ok(cp).splitlines()
    assert lines[0] == "/usr" and lines[1].startswith("-rwxr-xr-x"), describe(cp)


def test_lx_path_on_the_host(busybox):
    runner, d = busybox.runner, busybox.name
    assert _ok(runner.run(["--path", "-d", d, "/usr/bin"])).strip() == f"{HOST}/usr/bin"
    assert _ok(runner.run(["--path", "-d", d, "-u", "/usr/bin/"])).strip() == f"{HOST}/usr/bin"
    assert _ok(runner.run(["--path", "-d", d, "-w", f"{HOST}/var/../tmp"])).strip() == "/tmp"
    assert _ok(runner.run(["--path", "-d", d, "-u", "rel"], cwd="/usr")).strip() == f"{HOST}/usr/rel"
    # Same answers as lxpath inside.
    inside = _ok(busybox.sh("lxpath -u /var/log; lxpath -w /mnt/host/var/log")).split()
    outside = [_ok(runner.run(["--path", "-d", d, "-u", "/var/log"])).strip(),
               _ok(runner.run(["--path", "-d", d, "-w", "/mnt/host/var/log"])).strip()]
    assert inside == outside
    cp = runner.run(["--path", "-d", d, "-w", "/etc"])
    assert cp.returncode == 65 and len(cp.stderr.splitlines()) == 1, describe(cp)
    assert cp.stderr.startswith(b"lx: /etc: not on a host mount"), describe(cp)
    for bad in (["--path"], ["--path", "-d", d, "-u", "-w", "/x"], ["--path", "-d", d, "a", "b"],
                ["--path", "-d", d, "-w", "relative"], ["--path", "-d", d, "-x", "/"]):
        cp = runner.run(bad)
        assert cp.returncode == 64 and len(cp.stderr.splitlines()) == 1, describe(cp)
    cp = runner.run(["--path", "-d", "no-such-distro", "/x"])
    assert cp.returncode == 69, describe(cp)


def test_popen_of_a_host_program_returns_at_once(debian):
    """The caller really executes (a stand-in): Python's subprocess, which
    waits on a close-on-exec pipe (and may vfork), returns before the host
    program ends, and can read its output through a pipe."""
    cp = debian.exe("python3", "-c", f"""
import subprocess, time
t = time.monotonic()
p = subprocess.Popen(["{HOST}/bin/sh", "-c", "sleep 2; echo done $0", "x"], stdout=subprocess.PIPE)
started = time.monotonic() - t
print(started < 1.5, p.communicate()[0].decode().strip(), p.returncode)
""")
    assert _ok(cp).split() == ["True", "done", "x", "0"], describe(cp)
