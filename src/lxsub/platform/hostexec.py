"""Starting a host program for interop: an ordinary host process, outside
the instance (no seccomp filter, not traced), as the host user.

The provider forks it (so its exit status comes to the provider's wait
loop, see Engine.watch_child); the child makes itself a session and process
group leader (signals forwarded from the Linux caller go to the group, as a
terminal's would), takes the descriptors it is given as 0, 1, 2, closes
everything else of the provider's, moves to its directory, sets its signal
dispositions and mask, and calls execve. An exec that fails is reported
back through a close-on-exec pipe, so the Linux caller's execve can fail
with the same errno.
"""

from __future__ import annotations

import errno
import os
import signal

from lxsub.abi.prctl import PR_SET_PDEATHSIG
from lxsub.platform import affinity, hostfd, libc

_UNCATCHABLE = {signal.SIGKILL, signal.SIGSTOP}


def spawn(path: bytes, argv: list[bytes], env: dict[bytes, bytes], cwd: bytes,
          stdio: tuple[int | None, int | None, int | None], sigmask: set[int],
          ignored: set[int]) -> int:
    """Start the host program `path`; returns its pid, or raises OSError
    with the errno its execve failed with."""
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        _child(path, argv, env, cwd, stdio, sigmask, ignored, report_r, report_w)
    os.close(report_w)
    try:
        raw = b""
        while True:
            chunk = os.read(report_r, 16)
            if not chunk:
                break
            raw += chunk
    finally:
        os.close(report_r)
    if raw:
        os.waitpid(pid, 0)
        err = int(raw.decode() or errno.EIO)
        raise OSError(err, os.strerror(err))
    return pid


def _child(path, argv, env, cwd, stdio, sigmask, ignored, report_r, report_w):  # pragma: no cover
    err = errno.EIO
    try:
        os.close(report_r)
        os.setsid()
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        affinity.release_child()
        # Move the sources above 2 first so dup2 onto 0..2 cannot clobber one.
        moved = [os.dup(fd) if fd is not None else None for fd in stdio]
        for target, src in enumerate(moved):
            if src is None:
                if _is_open(target):
                    os.close(target)     # closed in the caller: closed here too
            else:
                os.dup2(src, target, inheritable=True)
        hostfd.close_fds_except(report_w)
        try:
            os.chdir(cwd)
        except OSError:
            os.chdir(b"/")
        for sig in range(1, signal.NSIG):
            if sig in _UNCATCHABLE:
                continue
            try:
                signal.signal(sig, signal.SIG_IGN if sig in ignored else signal.SIG_DFL)
            except (OSError, ValueError):
                pass
        signal.pthread_sigmask(signal.SIG_SETMASK, sigmask)
        os.execve(path, argv, env)
    except OSError as e:
        err = e.errno or errno.EIO
    except BaseException:
        pass
    try:
        os.write(report_w, str(err).encode())
    finally:
        os._exit(127)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False
