"""Starting a pico process: the filter is in place before its first instruction.

fork; the child stops itself; the provider seizes it (ptrace with EXITKILL);
the child installs the seccomp filter (which traps execve) and reports the
listener descriptor; then it calls execve, which is already the provider's
to carry out. Between fork and exec the child runs only this file's code.
"""

from __future__ import annotations

import os
import signal

from lxsub.abi.prctl import PR_SET_NO_NEW_PRIVS, PR_SET_PDEATHSIG
from lxsub.platform import affinity, features, hostfd, libc, ptrace, tracenotify
from lxsub.platform.notify import install_filter


class ChildSetup:
    """What the host side of a new pico process looks like before exec."""

    def __init__(self, stdio: tuple[int, int, int] = (0, 1, 2), new_pgrp: bool = True,
                 new_session: bool = False, ctty: int | None = None) -> None:
        self.stdio = stdio
        self.new_pgrp = new_pgrp
        self.new_session = new_session
        self.ctty = ctty


def spawn(filter_prog: bytes, path: bytes, argv: list[bytes], envp: list[bytes],
          setup: ChildSetup, sigmask: set[int]) -> tuple[int, int]:
    """Start a pico process; returns (host pid, provider-side listener fd).

    The caller's event loop must be ready to treat the child's trapped execve.
    """
    if features.platform()[0] == "ptrace":
        filter_prog = tracenotify.trace_filter(filter_prog)
    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        _child(filter_prog, path, argv, envp, setup, sigmask, report_r, report_w)
    os.close(report_w)
    _, status = os.waitpid(pid, os.WUNTRACED)
    if not os.WIFSTOPPED(status):
        os.close(report_r)
        raise OSError(f"pico process {pid} did not start (status {status:#x})")
    ptrace.seize(pid)
    os.kill(pid, signal.SIGCONT)
    return pid, report_r


def take_listener(pid: int, report_r: int) -> int | None:
    """Called at the child's first trapped syscall (its execve): the listener
    fd number is in the pipe; copy the descriptor into the provider.
    pidfd_getfd (Linux 5.6) is one of the notify platform's needs
    (platform/features.py): the child cannot send it, its sendmsg is
    already trapped, by this very listener."""
    raw = os.read(report_r, 16)
    os.close(report_r)
    if not raw:
        raise OSError(f"pico process {pid} died before installing its filter")
    child_fd = int(raw.decode())
    if child_fd < 0:
        return None            # the ptrace platform: no listener
    pidfd = libc.pidfd_open(pid)
    try:
        return libc.pidfd_getfd(pidfd, child_fd)
    finally:
        os.close(pidfd)


def _child(filter_prog, path, argv, envp, setup, sigmask, report_r, report_w):  # pragma: no cover
    try:
        os.close(report_r)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if setup.new_session:
            os.setsid()
            if setup.ctty is not None:
                import fcntl
                import termios
                fcntl.ioctl(setup.ctty, termios.TIOCSCTTY, 0)
        elif setup.new_pgrp:
            os.setpgid(0, 0)
        _arrange_stdio(setup, report_w)
        os.chdir("/")
        signal.pthread_sigmask(signal.SIG_SETMASK, sigmask)
        # Default actions, as a program Linux's init starts has them: an
        # ignored signal stays ignored across execve, and Python ignores
        # SIGPIPE and SIGXFSZ (a file size limit would not end the program).
        for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP, signal.SIGTTIN,
                    signal.SIGTTOU, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD, signal.SIGTERM,
                    signal.SIGHUP, signal.SIGWINCH):
            signal.signal(sig, signal.SIG_DFL)
        affinity.release_child()
        os.kill(os.getpid(), signal.SIGSTOP)       # wait to be seized
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1)
        if features.platform()[0] == "ptrace":
            libc.seccomp_set_filter(0, filter_prog)
            listener = -1
        else:
            listener = install_filter(filter_prog)
        os.write(report_w, str(listener).encode())
        os.close(report_w)
        env = dict(e.split(b"=", 1) if b"=" in e else (e, b"") for e in envp)
        os.execve(path, argv, env)                 # trapped: the provider runs it
        os._exit(127)
    except BaseException as exc:
        try:
            os.write(2, f"lx: cannot start pico process: {exc}\n".encode())
        finally:
            os._exit(71)


def _arrange_stdio(setup: ChildSetup, report_w: int) -> None:
    # Move sources out of the way first so dup2 onto 0..2 cannot clobber one.
    moved = [os.dup(fd) for fd in setup.stdio]
    for target, src in enumerate(moved):
        os.dup2(src, target, inheritable=True)
    # Nothing of the provider's may leak into the instance.
    hostfd.close_fds_except(report_w)
