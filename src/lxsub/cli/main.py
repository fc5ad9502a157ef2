"""The `lx` command: wsl.exe's habits for running Linux distros on a Linux host.

    lx [-d NAME] [-u USER] [--cd DIR] [-- CMD ARGS... | -e CMD ARGS... | CMD ARGS...]
    lx --install [busybox|debian] [--name NAME] [--location DIR] [--user USER]
    lx --import NAME DIR TARBALL|-      lx --export NAME TARBALL|-
    lx --list [-v]   lx --set-default NAME   lx --unregister NAME
    lx --status      lx --terminate NAME     lx --shutdown
    lx --version     lx --help

Everything after `--`, `-e CMD` or the first word no option takes belongs to
the Linux command, so it is cut off before argparse sees it (`lx -e ls -l`
and `lx ls -l` must not read `-l` as ours).
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, NoReturn, Sequence

import lxsub
from lxsub.errors import EXIT_IOERR, EXIT_USAGE, LxError
from lxsub.cli import distro_cmds, pathcmd
from lxsub.manager import client
from lxsub.state import Registry, lx_home, set_running_provider

if TYPE_CHECKING:
    import argparse

# Options of ours that take a value: the value may look like `-e` or `--`.
_OPTIONS_WITH_VALUE = {"-d", "--distribution", "-u", "--user", "--cd"}
_EXEC_OPTIONS = {"-e", "--exec"}
# How many words the other options take: a word no option takes starts the
# Linux command (`lx ls -la`, as `wsl ls -la`).
_OPTION_WORDS = {
    "-s": 1, "--set-default": 1, "--unregister": 1, "-t": 1, "--terminate": 1,
    "--umount": 1, "--name": 1, "--location": 1, "--export": 2, "--mount": 2, "--import": 3,
}

_DESCRIPTION = """\
Run Linux programs from a distro's root file system as pico processes.

Run a command (default distro and user unless -d/-u say otherwise):
  lx                      interactive login shell
  lx -- CMD ARGS...       run 'CMD ARGS...' through the user's shell
  lx CMD ARGS...          the same: the first word that is not an option
  lx -e CMD ARGS...       execute CMD directly, without a shell
  It starts in --cd DIR (~: the user's home), else in the caller's directory
  when a host mount shows it (/mnt/host/...), else in the user's home.

Manage distros:
  lx --install [busybox|debian]    install a distro from Debian's packages
       [--name NAME] [--location DIR] [--user USER]   (USER: default user to
       create; debian: with sudo, in group sudo, asked for a password)
  lx --import NAME DIR TARBALL|-   import a rootfs tarball into DIR
  lx --export NAME TARBALL|-       write a distro as a tar archive, its format
                                   by suffix: .tar .tar.gz .tgz .tar.xz
                                   .tar.bz2 .tar.zst (- : plain tar on stdout)
  lx --list [-v]                   list distros
  lx --set-default NAME            make NAME the default distro
  lx --unregister NAME             end NAME if running, forget it, delete its files

Instances (one per running distro, kept by the lx manager):
  lx --status                      the manager, the default distro, running instances
  lx --terminate NAME              end NAME's instance now (every process in it)
  lx --shutdown                    end every instance and the manager

Paths (like wslpath; inside a distro: lxpath [-u|-w] PATH):
  lx --path [-d NAME] [-u|-w] PATH -u: host path -> Linux path (default),
                                   -w: Linux path -> host path

Host access to a distro's files, Linux owners and modes kept (FUSE):
  lx --mount NAME DIR [-u USER]    show NAME's files at DIR; new files are
                                   USER's (default root's); returns once mounted
  lx --umount DIR                  end it

State lives in $LX_HOME (default: $XDG_DATA_HOME/lx). See also lx(1)."""


class _UsageError(LxError):
    def __init__(self, message: str) -> None:
        super().__init__(f"{message} (see 'lx --help')", EXIT_USAGE)


class _Command:
    """What follows `--` or `-e`: the Linux command line, untouched."""

    def __init__(self, mode: str = "login", argv: list[str] | None = None) -> None:
        self.mode = mode
        self.argv = argv if argv is not None else []

    def __repr__(self) -> str:
        return f"_Command({self.mode!r}, {self.argv!r})"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return _main(args)
    except LxError as e:
        _print_error(e.message)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0  # e.g. `lx --list | head -1`: the reader is satisfied
    except OSError as e:
        # What no check foresaw (a full disk, a file made read-only meanwhile):
        # still one line naming the file and the reason, never a traceback.
        where = f": {e.filename}" if e.filename else ""
        _print_error(f"{e.strerror or e}{where}")
        return EXIT_IOERR


def run() -> NoReturn:
    """The `lx` command (the console script and `python -m lxsub`): main's
    status without the interpreter's teardown, which collects every module
    and costs a launch some 8 ms; what lx wrote is flushed first."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):    # a reader gone (`lx ... | head`), a closed stream
            pass
    os._exit(code)


def _main(args: list[str]) -> int:
    if args[:1] == ["--complete"]:     # for the shell completion only (cli/complete.py)
        from lxsub.cli import complete
        return complete.main(args[1:])
    ours, command = split_command(args)
    if pathcmd.wanted(ours):       # its own small grammar: -u there is not --user
        if command is not None:
            raise _UsageError("--path does not take a command")
        return pathcmd.main(ours)
    plain = _plain_launch(ours)
    if plain is not None:
        return _run(_registry(), plain.get("distribution"), plain.get("user"), plain.get("cd"), command)
    opts = _parse(ours)
    _check_combination(opts, command)
    if opts.help:
        print(_parser().format_help(), end="")
        return 0
    if opts.version:
        print(f"lx (lxsub) {lxsub.__version__}\nLinux kernel interface: {lxsub.LINUX_RELEASE}")
        return 0
    registry = _registry()
    if opts.list:
        return distro_cmds.list_(registry, opts.verbose)
    if opts.install:
        code = distro_cmds.install(registry, opts.install, name=opts.name,
                                   location=opts.location, user=opts.user)
        if code == 0 and opts.install == "debian" and opts.user not in (None, "root"):
            return _first_password(registry, opts.name or opts.install, opts.user)
        return code
    if opts.import_:
        return distro_cmds.import_(registry, *opts.import_)
    if opts.export:
        return distro_cmds.export(registry, *opts.export)
    if opts.set_default is not None:
        return distro_cmds.set_default(registry, opts.set_default)
    if opts.unregister is not None:
        return distro_cmds.unregister(registry, opts.unregister)
    if opts.status:
        return _status()
    if opts.terminate is not None:
        return _terminate(registry, opts.terminate)
    if opts.shutdown:
        return _shutdown()
    if opts.mount or opts.umount:
        from lxsub.distro import fusemount
        if opts.umount:
            return fusemount.umount(opts.umount)
        distro = registry.get(opts.mount[0])
        return fusemount.mount(distro.rootfs, opts.mount[0], opts.mount[1], opts.user,
                               meta_db=distro.meta_db)
    return _run(registry, opts.distribution, opts.user, opts.cd, command)


def _registry() -> Registry:
    registry = Registry(lx_home())
    set_running_provider(client.running_distros)
    distro_cmds.recover(registry)
    return registry


_LAUNCH_OPTIONS = {"-d": "distribution", "--distribution": "distribution", "-u": "user",
                   "--user": "user", "--cd": "cd"}


def _plain_launch(ours: list[str]) -> dict[str, str] | None:
    """lx's options when they are only -d, -u and --cd, each at most once
    with a value of its own: a launch, read without argparse (importing it
    and building the parser cost every launch a few ms). None for anything
    else, which argparse reads and checks."""
    if len(ours) % 2:
        return None
    got: dict[str, str] = {}
    for flag, value in zip(ours[::2], ours[1::2]):
        key = _LAUNCH_OPTIONS.get(flag)
        if key is None or key in got or value.startswith("-"):
            return None
        got[key] = value
    return got


def split_command(args: list[str]) -> tuple[list[str], _Command | None]:
    """Split argv into lx's own options and the Linux command: after `--`,
    after `-e CMD`, or from the first word that is no option's value (run
    through the user's shell, as after `--`)."""
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in _OPTIONS_WITH_VALUE:
            i += 2
            continue
        if arg == "--path":
            return args, None          # its own grammar (cli/pathcmd.py)
        if arg in _OPTION_WORDS:
            i += 1 + _OPTION_WORDS[arg]
            continue
        if arg == "--install":
            i += 2 if i + 1 < len(args) and not args[i + 1].startswith("-") else 1
            continue
        if not arg.startswith("-") or arg == "-":
            return args[:i], _Command("shell", [" ".join(args[i:])])
        if arg == "--":
            rest = args[i + 1:]
            return args[:i], _Command("shell", [" ".join(rest)]) if rest else _Command()
        if arg in _EXEC_OPTIONS:
            rest = args[i + 1:]
            if not rest:
                raise _UsageError(f"{arg} needs a command to execute")
            return args[:i], _Command("exec", rest)
        i += 1
    return args, None


def _parser() -> "argparse.ArgumentParser":
    import argparse

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            # argparse would print the whole usage and exit 2; lx says one line, exits 64.
            raise _UsageError(message)

    p = _Parser(
        prog="lx",
        usage="lx [-d NAME] [-u USER] [--cd DIR] [-- CMD ARGS... | -e CMD ARGS... | CMD ARGS...]",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
        allow_abbrev=False,
    )
    run = p.add_argument_group("running")
    run.add_argument("-d", "--distribution", metavar="NAME", help="distro to run (default: the default distro)")
    run.add_argument("-u", "--user", metavar="USER", help="user to run as (default: the distro's default user)")
    run.add_argument("--cd", metavar="DIR", help="working directory inside the distro (~: home)")
    manage = p.add_argument_group("managing distros").add_mutually_exclusive_group()
    manage.add_argument("--install", nargs="?", const="busybox", choices=("busybox", "debian"),
                        metavar="KIND")
    manage.add_argument("--import", dest="import_", nargs=3, metavar=("NAME", "DIR", "TARBALL"))
    manage.add_argument("--export", nargs=2, metavar=("NAME", "TARBALL"))
    manage.add_argument("-l", "--list", action="store_true", help="list distros")
    manage.add_argument("-s", "--set-default", metavar="NAME")
    manage.add_argument("--unregister", metavar="NAME")
    manage.add_argument("--status", action="store_true", help="show the manager and running instances")
    manage.add_argument("-t", "--terminate", metavar="NAME", help="end a distro's instance")
    manage.add_argument("--shutdown", action="store_true", help="end every instance and the manager")
    manage.add_argument("--mount", nargs=2, metavar=("NAME", "DIR"), help="show NAME's files at DIR (FUSE)")
    manage.add_argument("--umount", metavar="DIR", help="end an 'lx --mount' at DIR")
    manage.add_argument("--version", action="store_true")
    manage.add_argument("-h", "--help", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true", help="with --list: name, state and version")
    p.add_argument("--name", metavar="NAME", help="with --install: the distro's name")
    p.add_argument("--location", metavar="DIR", help="with --install: where its files go")
    return p


def _parse(ours: list[str]) -> argparse.Namespace:
    opts, extra = _parser().parse_known_args(ours)
    if extra:
        if extra[0].startswith("-"):
            raise _UsageError(f"unknown option {extra[0]!r}")
        raise _UsageError(
            f"unexpected argument {extra[0]!r}; to run a Linux command: lx -- CMD ARGS..."
        )
    return opts


def _check_combination(opts: argparse.Namespace, command: _Command | None) -> None:
    managing = next(
        (flag for flag, value in (
            ("--install", opts.install),
            ("--import", opts.import_), ("--export", opts.export), ("--list", opts.list or None),
            ("--set-default", opts.set_default), ("--unregister", opts.unregister),
            ("--status", opts.status or None), ("--terminate", opts.terminate),
            ("--shutdown", opts.shutdown or None), ("--mount", opts.mount), ("--umount", opts.umount),
            ("--version", opts.version or None), ("--help", opts.help or None),
        ) if value is not None),
        None,
    )
    if managing and command is not None:
        raise _UsageError(f"{managing} does not take a command")
    running = [flag for flag, value in (
        ("-d", opts.distribution), ("-u", None if opts.install or opts.mount else opts.user),
        ("--cd", opts.cd),
    ) if value is not None]
    for flag, value in (("--name", opts.name), ("--location", opts.location)):
        if value is not None and not opts.install:
            raise _UsageError(f"{flag} only goes with --install")
    if managing and running:
        raise _UsageError(f"{running[0]} cannot be combined with {managing}")
    if opts.verbose and not opts.list:
        raise _UsageError("-v only goes with --list")


# -- running --


def _run(registry: Registry, distribution: str | None, user: str | None, cd: str | None,
         command: _Command | None) -> int:
    distro = distro_cmds.launch_distro(registry, distribution)
    return _launch(distro.name, user, _cd(cd), command or _Command())


def _first_password(registry: Registry, name: str, user: str) -> int:
    """After `lx --install debian --user USER`: USER is in group sudo and
    needs a password for it. On a terminal passwd asks for one now (as WSL's
    first start does); without one, say how to set it later."""
    default = distro_cmds._default_name(registry)
    how = f"lx {'' if default == name else f'-d {name} '}-u root passwd {user}"
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        _print_error(f"{user} has no password yet (sudo asks for it); set one with: {how}")
        return 0
    print(f"Set a password for {user} (sudo asks for it):", file=sys.stderr)
    for _attempt in range(3):
        if _launch(name, "root", "/", _Command("exec", ["passwd", user])) == 0:
            return 0
    _print_error(f"no password set for {user}; set one later with: {how}")
    return 0


def _launch(distro: str, user: str | None, cwd: str | None, command: _Command) -> int:
    from lxsub.cli import terminal
    from lxsub.manager.protocol import (LAUNCH_FIELDS, LaunchRequest, ProtocolError, launch_env,
                                         wire_str)

    tty = terminal.describe()
    host_cwd = _host_cwd()
    launch = LaunchRequest(
        distro=distro, argv=[wire_str(a) for a in command.argv], mode=command.mode,
        user=user and wire_str(user), cwd=cwd and wire_str(cwd),
        host_cwd=host_cwd and wire_str(host_cwd), env=launch_env(os.environ), tty=tty)
    try:
        launch.check_size()       # Linux's E2BIG, said before anything starts
    except ProtocolError as e:
        raise LxError(e.message, e.exit_code) from None
    message = {k: getattr(launch, k) for k in LAUNCH_FIELDS}
    conn, started, fds = client.launch(message, (0, 1, 2))
    for warning in started.get("warnings", ()):
        _print_error(f"warning: {warning}")
    return terminal.attend(conn, fds[0] if fds else None, tty)


def _cd(value: str | None) -> str | None:
    """--cd's value: `~` (quoted, or as the host shell expands it, the host
    $HOME) is the Linux user's home, as with `wsl --cd ~`."""
    home = os.environ.get("HOME")
    if value is not None and home and home != "/" and os.path.normpath(value) == os.path.normpath(home):
        return "~"
    return value


def _host_cwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:         # removed under us: start in the home
        return None


# -- instances --


def _status() -> int:
    reply = client.request("status", start=False)
    if reply is None:
        print("The lx manager is not running (it starts with the next 'lx' command).")
        return 0
    m = reply["manager"]
    print(f"Manager: pid {m['pid']}, up {_duration(time.time() - m['started'])}, socket {m['socket']}")
    print(f"Default distro: {reply['default'] or '(none)'}")
    _print_platform(reply.get("platform"))
    if not reply["instances"]:
        print("No instance is running.")
        return 0
    print(f"{'DISTRO':<16} {'PID':>7} {'CLIENTS':>7} {'PROCESSES':>9}  {'UP':<8} STATE")
    for i in reply["instances"]:
        print(f"{i['distro']:<16} {i['pid']:>7} {i['clients']:>7} {i['processes']:>9}  "
              f"{_duration(time.time() - i['started']):<8} {i['state']}")
    return 0


def _print_platform(platform: dict | None) -> None:
    """Which platform traps the syscalls, why, and the kernel features the
    provider goes without (platform/features.py)."""
    if not platform:
        return
    print(f"Platform: {platform['platform']} ({platform['why']})")
    for f in platform["missing"]:
        print(f"  without {f['name']}: {f['why']}; {f['fallback']}")


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _terminate(registry: Registry, name: str) -> int:
    registry.get(name)    # an unknown name is an error, not a no-op
    client.request("terminate", start=False, distro=name)
    return 0


def _shutdown() -> int:
    client.shutdown()
    return 0


def _print_error(message: str) -> None:
    # One line, so that scripts can show it as is.
    print(f"lx: {' '.join(message.split())}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
