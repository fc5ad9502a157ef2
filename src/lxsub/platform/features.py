"""What the running kernel offers the provider: probed once, some hidden on demand.

lxsub runs on Linux 4.18 and up (RHEL 8 is the oldest base still common
on HPC systems). Every newer kernel feature the provider uses is listed
here with the first Linux that has it; `has(name)` answers whether this
kernel has it, from a probe made once per process, and every use of such
a feature asks `has` and takes a fallback when the answer is no.

`LX_HIDE_FEATURES=name,name` (or `all`) makes the probes report those
features absent, so that the test suite proves every fallback on a new
kernel (`LX_NO_KILLABLE_WAIT=1`, older, hides `wait_killable_recv`).

The provider signals by pid (kill, tgkill: it is every pico process's
tracer), so pidfd_send_signal is not on the list; neither is
SECCOMP_USER_NOTIF_FLAG_CONTINUE, which nothing uses. Python's
os.closerange uses close_range itself when the kernel has it.

`platform()` chooses the way syscalls are trapped: `notify` (seccomp
user-notify, the provider answers while the caller sleeps in the kernel)
when this kernel can hand descriptors over with it, else `ptrace`
(seccomp's TRACE stops, answers written into registers: Linux 4.8 and
up). `LX_PLATFORM=notify|ptrace` forces one.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
from dataclasses import dataclass

from lxsub.abi.prctl import PR_SET_NO_NEW_PRIVS
from lxsub.abi.seccomp import (SECCOMP_FILTER_FLAG_NEW_LISTENER, SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
                               SECCOMP_GET_NOTIF_SIZES, SECCOMP_SET_MODE_FILTER)
from lxsub.abi.sysno import (SYS_CLOSE_RANGE, SYS_FSOPEN, SYS_OPENAT2, SYS_PIDFD_GETFD, SYS_PIDFD_OPEN,
                             SYS_SECCOMP)


@dataclass(frozen=True)
class Feature:
    name: str
    since: str          # the first Linux release that has it
    fallback: str       # what lxsub does without it


FEATURES = (
    Feature("user_notif", "5.0", "the ptrace platform"),
    Feature("notif_addfd", "5.9", "the ptrace platform (descriptors handed over by an injected recvmsg)"),
    Feature("addfd_send", "5.14", "the ptrace platform"),
    Feature("wait_killable_recv", "5.19", "answers a signal kept from their caller are repaired "
            "(dispatch); no provider workers"),
    Feature("sync_wake_up", "6.6", "plain wake-ups (a trapped call costs more across CPUs)"),
    Feature("openat2", "5.6", "a component-by-component walk with O_NOFOLLOW"),
    Feature("pidfd_open", "5.3", "processes are named by pid (the provider is their parent or tracer)"),
    Feature("pidfd_getfd", "5.6", "a stopped tracee sends the descriptor itself (injected sendmsg); "
            "otherwise /proc/<pid>/fd/<n> is reopened"),
    Feature("close_range", "5.9", "descriptors closed one by one from /proc/self/fd"),
    Feature("ptrace_syscall_info", "5.3", "syscall entry and exit told apart by rax == -ENOSYS at entry"),
    Feature("fsopen", "5.2", "tmpfs mounted with mount(2) in a private mount namespace"),
    Feature("so_netns_cookie", "5.14", "a socket's network namespace told by its inode (SIOCGSKNS)"),
)
BY_NAME = {f.name: f for f in FEATURES}
PLATFORMS = ("notify", "ptrace")

# Those the notify platform needs; ptrace needs none of the list.
_NOTIFY_NEEDS = ("user_notif", "notif_addfd", "addfd_send", "pidfd_getfd")

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

_probed: dict[str, bool] = {}


def hidden() -> frozenset[str]:
    """The features LX_HIDE_FEATURES (and LX_NO_KILLABLE_WAIT) hide."""
    key = (os.environ.get("LX_HIDE_FEATURES", ""), bool(os.environ.get("LX_NO_KILLABLE_WAIT")))
    found = _hidden_by_env.get(key)
    if found is None:
        found = _hidden_by_env[key] = _parse_hidden(*key)
    return found


# Parsed once per value: has() is asked on hot paths (each descriptor copy).
_hidden_by_env: dict[tuple[str, bool], frozenset[str]] = {}


def _parse_hidden(raw: str, no_killable_wait: bool) -> frozenset[str]:
    names = {n.strip() for n in raw.split(",") if n.strip()}
    if "all" in names:
        names = set(BY_NAME)
    if no_killable_wait:
        names.add("wait_killable_recv")
    return frozenset(names & set(BY_NAME))


def in_kernel(name: str) -> bool:
    """Whether the running kernel has the feature, hidden or not (probed once)."""
    if name not in _probed:
        _probed.update(_PROBES[name]())
    return _probed[name]


def has(name: str) -> bool:
    """Whether the provider may use the feature: the kernel has it and it is not hidden."""
    if name not in BY_NAME:
        raise KeyError(name)
    return name not in hidden() and in_kernel(name)


def missing() -> list[tuple[Feature, str]]:
    """The features the provider goes without, each with why: hidden or absent."""
    out = []
    hide = hidden()
    for f in FEATURES:
        if f.name in hide:
            out.append((f, "hidden by LX_HIDE_FEATURES"))
        elif not in_kernel(f.name):
            out.append((f, f"not in this kernel (Linux {f.since})"))
    return out


def platform() -> tuple[str, str]:
    """The platform to run pico processes on, and why."""
    forced = os.environ.get("LX_PLATFORM", "")
    if forced in PLATFORMS:
        return forced, "forced by LX_PLATFORM"
    lacking = [n for n in _NOTIFY_NEEDS if not has(n)]
    if lacking:
        return "ptrace", "seccomp user-notify cannot be used: no " + ", ".join(lacking)
    return "notify", "seccomp user-notify with descriptor injection works"


def report() -> dict:
    """What `lx --status` shows: the platform, why, and what is missing."""
    name, why = platform()
    return {"platform": name, "why": why,
            "missing": [{"name": f.name, "since": f.since, "why": reason, "fallback": f.fallback}
                        for f, reason in missing()]}


# -- the probes ---------------------------------------------------------------


def _enosys(nr: int, *args: int) -> bool:
    """Whether syscall nr exists: called with arguments it refuses, it
    fails with anything but ENOSYS."""
    ctypes.set_errno(0)
    ret = _syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    if ret >= 0:          # should not happen with the arguments below
        return False
    return ctypes.get_errno() == errno.ENOSYS


def _probe_syscalls() -> dict[str, bool]:
    return {
        # A NULL open_how: EFAULT where openat2 exists.
        "openat2": not _enosys(SYS_OPENAT2, -100, 0, 0, 24),
        # Flags no kernel knows: EINVAL.
        "pidfd_open": not _enosys(SYS_PIDFD_OPEN, os.getpid(), 0x7FFFFFFF),
        # Descriptor -1: EBADF (flags are checked first: 0).
        "pidfd_getfd": not _enosys(SYS_PIDFD_GETFD, -1, 0, 0),
        # last < first: EINVAL, nothing closed.
        "close_range": not _enosys(SYS_CLOSE_RANGE, 5, 4, 0),
        # Unprivileged: EPERM; else a NULL name: EFAULT.
        "fsopen": not _enosys(SYS_FSOPEN, 0, 0),
    }


def _probe_netns_cookie() -> dict[str, bool]:
    import socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.getsockopt(socket.SOL_SOCKET, 71, 8)     # SO_NETNS_COOKIE
        except OSError:
            return {"so_netns_cookie": False}
    return {"so_netns_cookie": True}


def _release_at_least(major: int, minor: int) -> bool:
    try:
        have = tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2])
    except ValueError:
        return False
    return have >= (major, minor)


def _probe_ptrace_info() -> dict[str, bool]:
    # A request can only be tried on a tracee at a stop: the release says.
    return {"ptrace_syscall_info": _release_at_least(5, 3)}


_NOTIF_NAMES = ("user_notif", "notif_addfd", "addfd_send", "wait_killable_recv", "sync_wake_up")
_ALLOW_ALL = struct.pack("<HBBI", 0x06, 0, 0, 0x7FFF0000)     # BPF_RET | BPF_K, SECCOMP_RET_ALLOW
_ADDFD = 0x40182103
_SET_FLAGS = 0x40082104
_ADDFD_ARG = struct.Struct("<QIIII")


def _probe_notify() -> dict[str, bool]:
    """The user-notify features, tried on a listener of a throw-away child
    (a filter cannot be taken off once installed)."""
    found = dict.fromkeys(_NOTIF_NAMES, False)
    sizes = ctypes.create_string_buffer(6)
    ctypes.set_errno(0)
    if _syscall(ctypes.c_long(SYS_SECCOMP), ctypes.c_long(SECCOMP_GET_NOTIF_SIZES), ctypes.c_long(0),
                sizes) < 0:
        return found
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(r)
        bits = 0
        try:
            bits = _notify_bits_in_child()
        finally:
            os.write(w, bytes([bits]))
            os._exit(0)
    os.close(w)
    try:
        raw = os.read(r, 1)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    bits = raw[0] if raw else 0
    for i, name in enumerate(_NOTIF_NAMES):
        found[name] = bool(bits >> i & 1)
    return found


def _set_filter(flags: int) -> int:
    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    buf = ctypes.create_string_buffer(_ALLOW_ALL, len(_ALLOW_ALL))
    prog = SockFprog(1, ctypes.addressof(buf))
    ctypes.set_errno(0)
    ret = _syscall(ctypes.c_long(SYS_SECCOMP), ctypes.c_long(SECCOMP_SET_MODE_FILTER), ctypes.c_long(flags),
                   ctypes.byref(prog))
    if ret < 0:
        raise OSError(ctypes.get_errno(), "seccomp")
    return ret


def _ioctl_errno(fd: int, request: int, arg) -> int:
    try:
        fcntl.ioctl(fd, request, arg)
    except OSError as e:
        return e.errno or 0
    return 0


def _notify_bits_in_child() -> int:  # pragma: no cover - runs in the child
    """In the probe child: bit i set when _NOTIF_NAMES[i] works."""
    _libc.prctl(PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), ctypes.c_ulong(0), ctypes.c_ulong(0),
                ctypes.c_ulong(0))
    bits = 0
    try:
        fd = _set_filter(SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV)
        bits |= 1 | 1 << 3
    except OSError:
        try:
            fd = _set_filter(SECCOMP_FILTER_FLAG_NEW_LISTENER)
            bits |= 1
        except OSError:
            return 0
    # A notification id nobody has: ENOENT where the request and its flags are known.
    if _ioctl_errno(fd, _ADDFD, bytearray(_ADDFD_ARG.pack(1, 0, fd, 0, 0))) == errno.ENOENT:
        bits |= 1 << 1
    if _ioctl_errno(fd, _ADDFD, bytearray(_ADDFD_ARG.pack(1, 2, fd, 0, 0))) == errno.ENOENT:
        bits |= 1 << 2
    if _ioctl_errno(fd, _SET_FLAGS, 1) == 0:
        bits |= 1 << 4
    return bits


_PROBES = {}
for _name in ("openat2", "pidfd_open", "pidfd_getfd", "close_range", "fsopen"):
    _PROBES[_name] = _probe_syscalls
for _name in _NOTIF_NAMES:
    _PROBES[_name] = _probe_notify
_PROBES["ptrace_syscall_info"] = _probe_ptrace_info
_PROBES["so_netns_cookie"] = _probe_netns_cookie
