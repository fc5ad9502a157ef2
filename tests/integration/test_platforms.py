"""The ptrace platform (issue 17): chosen, reported, and serving real programs.

Each test starts its own manager with LX_PLATFORM and LX_HIDE_FEATURES set
(a manager's instances run on the platform its environment chooses), on
the BusyBox fixture. The whole suite can also run on the ptrace platform:
`LX_PLATFORM=ptrace LX_HIDE_FEATURES=all pytest ...` (the runner passes
LX_* variables to every `lx`).
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from lxsub.platform import features

from tests.fixtures.runner import describe

PTRACE = {"LX_PLATFORM": "ptrace", "LX_HIDE_FEATURES": "all"}


@pytest.fixture
def bb_ptrace(lx_self, busybox_tar):
    lx_self.import_distro("bb", busybox_tar)
    yield lx_self


def _sh(runner, command: str, env: dict[str, str] = PTRACE):
    return runner.run(["-d", "bb", "--", command], env=env, timeout=60)


def test_status_names_the_platform_and_the_hidden_features(bb_ptrace):
    cp = _sh(bb_ptrace, "true")
    assert cp.returncode == 0, describe(cp)
    cp = bb_ptrace.run(["--status"], env=PTRACE)
    out = cp.stdout.decode()
    assert "Platform: ptrace (forced by LX_PLATFORM)" in out, out
    assert "without openat2: hidden by LX_HIDE_FEATURES" in out, out
    assert "without user_notif: hidden by LX_HIDE_FEATURES" in out, out


def test_hiding_user_notify_alone_chooses_ptrace(bb_ptrace):
    env = {"LX_HIDE_FEATURES": "notif_addfd", "LX_PLATFORM": ""}      # "": chosen by probing
    cp = _sh(bb_ptrace, "true", env)
    assert cp.returncode == 0, describe(cp)
    out = bb_ptrace.run(["--status"], env=env).stdout.decode()
    assert "Platform: ptrace (seccomp user-notify cannot be used: no notif_addfd)" in out, out


def _seccomp_listeners(host_pid: int) -> int:
    n = 0
    for fd in os.listdir(f"/proc/{host_pid}/fd"):
        try:
            n += os.readlink(f"/proc/{host_pid}/fd/{fd}") == "anon_inode:seccomp notify"
        except OSError:
            pass
    return n


@pytest.mark.parametrize("platform,listeners", [("ptrace", False), ("notify", True)])
def test_files_are_served_with_or_without_a_listener(bb_ptrace, platform, listeners):
    """Opening files (a notify row) works on both platforms; on ptrace the
    provider holds no seccomp listener at all: the calls came as ptrace
    stops and the descriptors were handed over by an injected recvmsg."""
    if platform == "notify" and not all(features.in_kernel(n) for n in ("user_notif", "notif_addfd",
                                                                        "addfd_send", "pidfd_getfd")):
        pytest.skip("this kernel cannot run the notify platform")
    env = PTRACE if platform == "ptrace" else {"LX_PLATFORM": "notify", "LX_HIDE_FEATURES": ""}
    p = bb_ptrace.popen(["-d", "bb", "--", "head -c 4 /etc/passwd; echo; sleep 3"],
                        env=bb_ptrace.env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        pid = bb_ptrace.serving_instance("bb", env)
        time.sleep(0.5)
        assert (_seccomp_listeners(pid) > 0) == listeners
    finally:
        out, err = p.communicate(timeout=60)
    assert p.returncode == 0 and out == b"root\n", (out, err)


def test_channel_descriptor_is_hidden_and_survives_being_closed(bb_ptrace):
    """The ptrace platform's own descriptor is not in /proc/self/fd; a
    program that closes it (it cannot know) still gets its files."""
    cp = _sh(bb_ptrace, "cat /etc/hostname >/dev/null; ls /proc/$$/fd | tr '\\n' ' '; "
                        "for n in 1016 1017 1018 1019 1020 1021 1022 1023; do eval \"exec $n>&-\"; done; "
                        "echo; head -n 1 /etc/passwd; ls /proc/$$/fd | tr '\\n' ' '")
    assert cp.returncode == 0, describe(cp)
    lines = cp.stdout.decode().splitlines()
    assert lines[0].split() == ["0", "1", "2"], describe(cp)
    assert lines[1].startswith("root:"), describe(cp)
    assert lines[2].split() == ["0", "1", "2"], describe(cp)


def _fdpass_names(instance_pid: int) -> list[bytes]:
    names = []
    with open("/proc/net/unix", "rb") as f:
        for line in f:
            cols = line.split()
            if len(cols) >= 8 and cols[-1].startswith(b"@lxsub-fdpass-%d-" % instance_pid):
                names.append(b"\0" + cols[-1][1:])
    return names


def test_a_host_process_connecting_to_the_channel_gets_no_file(bb_ptrace):
    """The provider's abstract socket is visible in /proc/net/unix and open
    to anyone on the host: a connection that is not the tracee's own is
    closed, and the files the program opens never go to it."""
    import socket
    env = PTRACE
    p = bb_ptrace.popen(["-d", "bb", "--", "sleep 2; head -c 4 /etc/passwd; cat /etc/group > /dev/null"],
                        env=bb_ptrace.env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    intruders = []
    try:
        pid = bb_ptrace.serving_instance("bb", env)
        names = []
        for _ in range(50):
            names = _fdpass_names(pid)
            if names:
                break
            time.sleep(0.1)
        assert len(names) == 1, names
        for _ in range(8):                      # queued before the program's own connects
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(names[0])
            intruders.append(s)
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0 and out == b"root", (out, err)
        for s in intruders:
            s.settimeout(5)
            msg, fds, _, _ = socket.recv_fds(s, 16, 4)
            assert (msg, fds) == (b"", []), "the intruder got a descriptor"
    finally:
        for s in intruders:
            s.close()
        if p.poll() is None:
            p.kill()
            p.communicate()
