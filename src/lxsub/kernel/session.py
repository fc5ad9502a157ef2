"""Running one command in a distro for `lx`: user, environment, program, terminal.

This is what WSL's init does for a client: look the user up in the distro's
own /etc/passwd, build a login environment, find the program on the
distro's PATH, start it as a child of /init and give it the terminal.
"""

from __future__ import annotations

import errno
import os
import signal
from dataclasses import dataclass

from lxsub.config import DistroConfig, load_distro_config
from lxsub import hostpath
from lxsub.errors import (EXIT_CANNOT_EXEC, EXIT_NOT_FOUND, EXIT_NOUSER, EXIT_OSERR,
                          EXIT_UNAVAILABLE, LxError)
from lxsub.kernel import interop
from lxsub.kernel.creds import Creds
from lxsub.kernel.exec import binfmt
from lxsub.kernel.exec import limits
from lxsub.kernel.exec import plan as exec_plan
from lxsub.kernel.instance import Instance
from lxsub.kernel.log import Log
from lxsub.kernel.vfs.caller import Caller
from lxsub.kernel.vfs.open import open_regular
from lxsub.kernel.vfs.path import Walker
from lxsub.platform.launcher import ChildSetup
from lxsub.wire import PASSED_ENV, wire_bytes

ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
USER_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games"
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


@dataclass
class User:
    name: str
    uid: int
    gid: int
    home: str
    shell: str
    groups: tuple[int, ...] = ()


@dataclass
class Launch:
    """What a client asks for: the command, as whom, where, with which host settings."""

    argv: list[str]
    mode: str = "login"                  # "exec", "shell" (through the login shell) or "login"
    user: str | None = None              # None: the distro's default user
    cwd: str | None = None               # --cd; None: see host_cwd
    host_env: dict[str, str] | None = None   # the client's TERM, LANG... (None: ours)
    # The client's own directory on the host: where the command starts when
    # a host mount (DrvFs) shows it, as WSL starts in /mnt/c/...; else home.
    host_cwd: str | None = None


def run_command(distro, argv: list[str], *, user: str | None, cwd: str | None, mode: str) -> int:
    """Run a command in `distro` in this process, with our stdio, as its only
    session (what an installer does before the distro is registered).
    Returns the exit status for `lx` (128+N for signal N)."""
    inst = open_instance(distro.name, str(distro.rootfs),
                         default_user=getattr(distro, "default_user", None),
                         meta_db=getattr(distro, "meta_db", None))
    try:
        default_user = inst.config.user.default or getattr(distro, "default_user", None)
        proc = start(inst, Launch(argv, mode, user, cwd), default_user, ChildSetup())
    except BaseException:
        inst.cleanup()
        raise
    return exit_code(_serve(inst, proc))


def open_instance(name: str, rootfs: str, config: DistroConfig | None = None,
                  default_user: str | None = None, meta_db: str | None = None) -> Instance:
    """The provider side of a distro: its PID space, mounts and /init, set
    up as its /etc/lx.conf says (read here when not given). `default_user`:
    the registry's, which holds the host doors by default (kernel/doors.py);
    `meta_db`: the registry's SQLite metadata store, None for the xattrs."""
    if not os.path.isdir(rootfs):
        raise LxError(f"the root file system of '{name}' is missing ({rootfs}); "
                      f"re-import it or 'lx --unregister {name}'", EXIT_UNAVAILABLE)
    from lxsub.state import lx_home
    log = Log(str(lx_home() / "lx.log") if lx_home().is_dir() else None)
    if config is None:
        config = load_distro_config(rootfs)
    for warning in config.warnings:
        log.warn(warning)
    return Instance(name, rootfs, config, log=log, default_user=default_user, meta_db=meta_db)


def start(inst: Instance, launch: Launch, default_user: str | None, setup: ChildSetup):
    """Start a client's command as a child of /init; LxError when it cannot run."""
    account = find_user(inst, launch.user or default_user or "root")
    creds = Creds.for_user(account.uid, account.gid, account.groups)
    argv_b, path = _command_line(inst, account, creds, launch.argv, launch.mode,
                                 launch.host_env)
    fs = _start_dir(inst, account, launch.cwd, launch.host_cwd, creds)
    try:
        _check_runnable(inst, creds, fs, path, argv_b, inst.name)
        env = login_environment(account, inst.uts.hostname, launch.host_env, inst)
        try:
            limits.check(argv_b, env)
        except OSError as e:
            raise LxError(f"argument list too long: {e.strerror} (E2BIG)", EXIT_CANNOT_EXEC) from None
        if setup.ctty is not None:       # the session's pty is its user's, as login(1) makes it
            _give_pty(inst, setup.ctty, account.uid)
        return inst.spawn(path, argv_b, env, creds, fs, setup)
    except BaseException:
        fs.release()
        raise


def _give_pty(inst: Instance, slave: int, uid: int) -> None:
    try:
        inst.vfs.ptys.opened(int(os.ttyname(slave).rpartition("/")[2]), uid)
    except (OSError, ValueError):
        pass      # not a /dev/pts terminal: it shows with its host owner


# -- users ----------------------------------------------------------------------

def _read_instance_file(inst: Instance, path: str) -> bytes:
    own = Caller(Creds())              # the provider reads the distro's own files
    node = inst.vfs.resolve(path.encode(), own)
    try:
        fd = open_regular(node, os.O_RDONLY, own)
    finally:
        node.release()
    with os.fdopen(fd, "rb") as f:
        return f.read(1 << 22)


def find_user(inst: Instance, name: str) -> User:
    try:
        passwd = _read_instance_file(inst, "/etc/passwd").decode(errors="replace")
    except OSError:
        passwd = ""
    for line in passwd.splitlines():
        f = line.split(":")
        if len(f) >= 7 and (f[0] == name or (name.isdigit() and f[2] == name)):
            u = User(f[0], int(f[2]), int(f[3]), f[5] or "/", f[6] or "/bin/sh")
            u.groups = _groups_of(inst, u)
            return u
    if name in ("root", "0"):
        return User("root", 0, 0, "/root", "/bin/sh")
    raise LxError(f"no user '{name}' in distro '{inst.name}' (see its /etc/passwd)", EXIT_NOUSER)


def _groups_of(inst: Instance, u: User) -> tuple[int, ...]:
    try:
        text = _read_instance_file(inst, "/etc/group").decode(errors="replace")
    except OSError:
        return (u.gid,)
    gids = {u.gid}
    for line in text.splitlines():
        f = line.split(":")
        if len(f) >= 4 and u.name in f[3].split(","):
            try:
                gids.add(int(f[2]))
            except ValueError:
                pass
    return tuple(sorted(gids))


def login_environment(u: User, hostname: str, host_env: dict[str, str] | None = None,
                      inst: Instance | None = None) -> list[bytes]:
    """The environment a client's command starts with: a login one, the
    client's terminal and locale settings (PASSED_ENV) and, given the
    instance, what interop adds (LXENV variables, the host PATH appended;
    see kernel/interop.py)."""
    env = {
        "HOME": u.home, "USER": u.name, "LOGNAME": u.name, "SHELL": u.shell,
        "PATH": ROOT_PATH if u.uid == 0 else USER_PATH, "HOSTNAME": hostname,
    }
    source = os.environ if host_env is None else host_env
    for key in PASSED_ENV:
        if key in source:
            env[key] = source[key]
    env.setdefault("TERM", "dumb")
    if inst is not None:
        env = interop.session_env(inst, env, dict(source),
                                  Creds.for_user(u.uid, u.gid, u.groups))
    return [wire_bytes(f"{k}={v}") for k, v in env.items()]


# -- the command ------------------------------------------------------------------

def _command_line(inst: Instance, u: User, creds: Creds, argv: list[str], mode: str,
                  host_env: dict[str, str] | None = None):
    if mode == "shell":
        return [u.shell.encode(), b"-c", wire_bytes(" ".join(argv))], u.shell.encode()
    if mode == "login":
        return [b"-" + os.path.basename(u.shell).encode()], u.shell.encode()
    if not argv:
        raise LxError("no command given after -e", 64)
    prog = argv[0]
    path = prog if "/" in prog else _search_path(inst, creds, prog, u, host_env)
    return [wire_bytes(a) for a in argv], wire_bytes(path)


def _search_path(inst: Instance, creds: Creds, prog: str, u: User,
                 host_env: dict[str, str] | None = None) -> str:
    root = inst.vfs.mounts.root_mount.root()
    try:
        w = Walker(inst.vfs.mounts, root, Caller(creds))
        for d in (ROOT_PATH if u.uid == 0 else USER_PATH).split(":"):
            candidate = f"{d}/{prog}"
            try:
                node = w.resolve(root, wire_bytes(candidate))
            except OSError:
                continue
            try:
                if not node.is_dir():
                    return candidate
            finally:
                node.release()
    finally:
        root.release()
    raise LxError(f"{prog}: command not found in distro '{inst.name}'"
                  f"{_host_command_hint(inst, creds, prog, host_env)}", EXIT_NOT_FOUND)


def _host_command_hint(inst: Instance, creds: Creds, prog: str,
                       host_env: dict[str, str] | None) -> str:
    """'; the host has /usr/bin/ps...' when a host program of that name is
    on the client's PATH and the user may run host programs: host programs
    are ELF files like the distro's, so one is never run in a missing
    command's place unasked (appendHostPath is off by default)."""
    if not inst.config.interop.enabled or not (
            inst.interop_door.allows(creds) and inst.drvfs_door.allows(creds)):
        return ""
    host_path = (host_env if host_env is not None else os.environ).get("PATH", "")
    mounts = interop.mounts_of(inst)
    for d in host_path.split(":"):
        candidate = os.path.join(d, prog)
        if d.startswith("/") and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            linux = hostpath.to_linux(candidate, mounts)
            if linux is not None:
                return (f"; the host has {candidate}: run it as {linux}, or set "
                        f"appendHostPath = true under [interop] in /etc/lx.conf")
    return ""


def _start_dir(inst: Instance, u: User, cwd: str | None, host_cwd: str | None = None,
               creds: Creds | None = None):
    """--cd DIR (`~` and `~/...` are the user's home, as with wsl --cd); else
    the client's host directory as a DrvFs mount shows it, to a user who
    holds the DrvFs door; else the home."""
    if cwd is not None:
        want = u.home + cwd[1:] if cwd == "~" or cwd.startswith("~/") else cwd
        try:
            return inst.root_context(want)
        except OSError as e:
            raise LxError(f"--cd {cwd}: {os.strerror(e.errno or errno.ENOENT)} in distro "
                          f"'{inst.name}'", EXIT_NOT_FOUND) from None
    if host_cwd and creds is not None and inst.drvfs_door.allows(creds):
        from lxsub.kernel import interop
        on_mount = hostpath.to_linux(host_cwd, interop.mounts_of(inst))
        if on_mount is not None:
            try:
                return inst.root_context(on_mount)
            except OSError:
                pass            # not there (or not mounted): the home, as WSL does
    try:
        return inst.root_context(u.home)
    except OSError:
        return inst.root_context("/")


def _check_runnable(inst: Instance, creds: Creds, fs, path: bytes, argv: list[bytes], name: str) -> None:
    """Refuse up front what the exec would refuse, with a message naming why."""
    w = Walker(inst.vfs.mounts, fs.root, Caller(creds, fs))
    shown = path.decode(errors="replace")
    try:
        p = exec_plan.plan(w, fs.cwd, path, argv, inst.vfs.vpath_of,
                           host_exec=interop.host_target(inst))
        p.close()
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise LxError(f"{shown}: no such file in distro '{name}'", EXIT_NOT_FOUND) from None
        if e.errno == errno.ENOEXEC:
            raise LxError(f"{shown}: cannot execute: {_why_enoexec(inst, w, fs, path)} (ENOEXEC)",
                          EXIT_CANNOT_EXEC) from None
        raise LxError(f"{shown}: cannot execute: {os.strerror(e.errno or errno.EIO)}",
                      EXIT_CANNOT_EXEC) from None


def _why_enoexec(inst: Instance, w: Walker, fs, path: bytes) -> str:
    try:
        node = w.resolve(fs.cwd, path)
        try:
            fd = open_regular(node, os.O_RDONLY, w.caller)
        finally:
            node.release()
        try:
            return binfmt.describe_enoexec(fd)
        finally:
            os.close(fd)
    except OSError:
        return "exec format error"


# -- running it -------------------------------------------------------------------

def _serve(inst: Instance, proc) -> int:
    tty = _foreground_tty()
    old = {s: signal.signal(s, lambda sig, _f: inst.signal_group(proc, sig)) for s in _FORWARDED}
    old_ttou = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        if tty is not None:
            _give_terminal(tty, proc.host_pid)
        return inst.run(proc)
    except OSError as e:
        raise LxError(f"the provider failed: {e}", EXIT_OSERR) from e
    finally:
        if tty is not None:
            _give_terminal(tty, os.getpgrp())
        for s, h in old.items():
            signal.signal(s, h)
        signal.signal(signal.SIGTTOU, old_ttou)


def _foreground_tty() -> int | None:
    """stdin when it is our controlling terminal and we are in its foreground."""
    try:
        if os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp():
            return 0
    except OSError:
        pass
    return None


def _give_terminal(fd: int, pgrp: int) -> None:
    try:
        os.tcsetpgrp(fd, pgrp)
    except OSError:
        pass


def exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return 1

