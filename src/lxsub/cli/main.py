"""The `lx` command: wsl.exe's habits for running Linux distros on a Linux host.

    lx [-d NAME] [-u USER] [--cd DIR] [-- CMD ARGS... | -e CMD ARGS...]
    lx --import NAME DIR TARBALL|-      lx --export NAME TARBALL|-
    lx --list [-v]   lx --set-default NAME   lx --unregister NAME
    lx --status      lx --terminate NAME     lx --shutdown
    lx --version     lx --help

Everything after `--` or `-e CMD` belongs to the Linux command, so it is cut
off before argparse sees it (`lx -e ls -l` must not read `-l` as ours).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from typing import NoReturn, Sequence

import lxsub
from lxsub.errors import EXIT_USAGE, LxError
from lxsub.state import Distro, Registry, delete_rootfs, lx_home

# Options of ours that take a value: the value may look like `-e` or `--`.
_OPTIONS_WITH_VALUE = {"-d", "--distribution", "-u", "--user", "--cd"}
_EXEC_OPTIONS = {"-e", "--exec"}

_DESCRIPTION = """\
Run Linux programs from a distro's root file system as pico processes.

Run a command (default distro and user unless -d/-u say otherwise):
  lx                      interactive login shell
  lx -- CMD ARGS...       run 'CMD ARGS...' through the user's shell
  lx -e CMD ARGS...       execute CMD directly, without a shell

Manage distros:
  lx --import NAME DIR TARBALL|-   import a rootfs tarball into DIR
  lx --export NAME TARBALL|-       write a distro as a tarball (.gz/.xz by suffix)
  lx --list [-v]                   list distros
  lx --set-default NAME            make NAME the default distro
  lx --unregister NAME             forget NAME and delete its files

Instances (one per running distro, kept by the lx manager):
  lx --status                      the manager, the default distro, running instances
  lx --terminate NAME              end NAME's instance now (every process in it)
  lx --shutdown                    end every instance and the manager

State lives in $LX_HOME (default: $XDG_DATA_HOME/lx)."""


class _UsageError(LxError):
    def __init__(self, message: str) -> None:
        super().__init__(f"{message} (see 'lx --help')", EXIT_USAGE)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse would print the whole usage and exit 2; lx says one line, exits 64.
        raise _UsageError(message)


@dataclass
class _Command:
    """What follows `--` or `-e`: the Linux command line, untouched."""

    mode: str = "login"
    argv: list[str] = field(default_factory=list)


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


def _main(args: list[str]) -> int:
    ours, command = split_command(args)
    opts = _parse(ours)
    _check_combination(opts, command)
    if opts.help:
        print(_parser().format_help(), end="")
        return 0
    if opts.version:
        print(f"lx (lxsub) {lxsub.__version__}\nLinux kernel interface: {lxsub.LINUX_RELEASE}")
        return 0
    registry = Registry(lx_home())
    if opts.list:
        return _list(registry, opts.verbose)
    if opts.import_:
        return _import(registry, *opts.import_)
    if opts.export:
        return _export(registry, *opts.export)
    if opts.set_default is not None:
        registry.set_default(opts.set_default)
        return 0
    if opts.unregister is not None:
        return _unregister(registry, opts.unregister)
    if opts.status:
        return _status()
    if opts.terminate is not None:
        return _terminate(registry, opts.terminate)
    if opts.shutdown:
        return _shutdown()
    return _run(opts, command)


def split_command(args: list[str]) -> tuple[list[str], _Command | None]:
    """Split argv into lx's own options and the Linux command after `--`/`-e`."""
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in _OPTIONS_WITH_VALUE:
            i += 2
            continue
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


def _parser() -> _Parser:
    p = _Parser(
        prog="lx",
        usage="lx [-d NAME] [-u USER] [--cd DIR] [-- CMD ARGS... | -e CMD ARGS...]",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
        allow_abbrev=False,
    )
    run = p.add_argument_group("running")
    run.add_argument("-d", "--distribution", metavar="NAME", help="distro to run (default: the default distro)")
    run.add_argument("-u", "--user", metavar="USER", help="user to run as (default: the distro's default user)")
    run.add_argument("--cd", metavar="DIR", help="working directory inside the distro")
    manage = p.add_argument_group("managing distros").add_mutually_exclusive_group()
    manage.add_argument("--import", dest="import_", nargs=3, metavar=("NAME", "DIR", "TARBALL"))
    manage.add_argument("--export", nargs=2, metavar=("NAME", "TARBALL"))
    manage.add_argument("-l", "--list", action="store_true", help="list distros")
    manage.add_argument("-s", "--set-default", metavar="NAME")
    manage.add_argument("--unregister", metavar="NAME")
    manage.add_argument("--status", action="store_true", help="show the manager and running instances")
    manage.add_argument("-t", "--terminate", metavar="NAME", help="end a distro's instance")
    manage.add_argument("--shutdown", action="store_true", help="end every instance and the manager")
    manage.add_argument("--version", action="store_true")
    manage.add_argument("-h", "--help", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true", help="with --list: name, state and version")
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
            ("--import", opts.import_), ("--export", opts.export), ("--list", opts.list or None),
            ("--set-default", opts.set_default), ("--unregister", opts.unregister),
            ("--status", opts.status or None), ("--terminate", opts.terminate),
            ("--shutdown", opts.shutdown or None),
            ("--version", opts.version or None), ("--help", opts.help or None),
        ) if value is not None),
        None,
    )
    if managing and command is not None:
        raise _UsageError(f"{managing} does not take a command")
    running = [flag for flag, value in (
        ("-d", opts.distribution), ("-u", opts.user), ("--cd", opts.cd),
    ) if value is not None]
    if managing and running:
        raise _UsageError(f"{running[0]} cannot be combined with {managing}")
    if opts.verbose and not opts.list:
        raise _UsageError("-v only goes with --list")


# -- managing --


def _list(registry: Registry, verbose: bool) -> int:
    distros = registry.list()
    if not distros:
        print("lx has no distros. Import one with 'lx --import NAME DIR TARBALL'.")
        return 0
    default = _default_name(registry)
    if verbose:
        _print_table(distros, default, _running())
    else:
        print("Linux distributions:")
        for d in distros:
            print(f"{d.name} (Default)" if d.name == default else d.name)
    return 0


def _default_name(registry: Registry) -> str | None:
    try:
        return registry.default().name
    except LxError:
        return None


def _print_table(distros: list[Distro], default: str | None, running: set[str]) -> None:
    rows = [("NAME", "STATE", "VERSION")] + [
        (d.name, _run_state(d, running), str(d.version)) for d in distros
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    for n, (name, state, version) in enumerate(rows):
        mark = "*" if n and distros[n - 1].name == default else " "
        print(f"{mark} {name:<{widths[0]}}    {state:<{widths[1]}}    {version}")


def _run_state(distro: Distro, running: set[str]) -> str:
    if distro.state != "Installed":
        return distro.state
    return "Running" if distro.name in running else "Stopped"


def _running() -> set[str]:
    """Distros with a running instance (asks the manager only if it runs)."""
    from lxsub.manager import client

    reply = client.request("status", start=False)
    return {i["distro"] for i in reply["instances"]} if reply else set()


def _import(registry: Registry, name: str, directory: str, tarball: str) -> int:
    from lxsub.distro.importer import import_tarball

    import_tarball(registry, name, directory, tarball)
    return 0


def _export(registry: Registry, name: str, tarball: str) -> int:
    from lxsub.distro.exporter import export_tarball

    distro = registry.get(name)
    if tarball == "-" and sys.stdout.isatty():
        raise _UsageError("refusing to write a tarball to a terminal; redirect stdout or name a file")
    export_tarball(distro, tarball)
    return 0


def _unregister(registry: Registry, name: str) -> int:
    distro = registry.remove(name)
    delete_rootfs(distro)
    return 0


# -- running --


def _run(opts: argparse.Namespace, command: _Command | None) -> int:
    from lxsub.cli import terminal
    from lxsub.manager import client
    from lxsub.manager.protocol import PASSED_ENV

    command = command or _Command()
    tty = terminal.describe()
    message = {
        "distro": opts.distribution, "argv": command.argv, "mode": command.mode,
        "user": opts.user, "cwd": opts.cd, "tty": tty,
        "env": {k: v for k, v in os.environ.items() if k in PASSED_ENV},
    }
    conn, _started, fds = client.launch(message, (0, 1, 2))
    return terminal.attend(conn, fds[0] if fds else None, tty)


# -- instances --


def _status() -> int:
    from lxsub.manager import client

    reply = client.request("status", start=False)
    if reply is None:
        print("The lx manager is not running (it starts with the next 'lx' command).")
        return 0
    m = reply["manager"]
    print(f"Manager: pid {m['pid']}, up {_duration(time.time() - m['started'])}, socket {m['socket']}")
    print(f"Default distro: {reply['default'] or '(none)'}")
    if not reply["instances"]:
        print("No instance is running.")
        return 0
    print(f"{'DISTRO':<16} {'PID':>7} {'CLIENTS':>7} {'PROCESSES':>9}  {'UP':<8} STATE")
    for i in reply["instances"]:
        print(f"{i['distro']:<16} {i['pid']:>7} {i['clients']:>7} {i['processes']:>9}  "
              f"{_duration(time.time() - i['started']):<8} {i['state']}")
    return 0


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _terminate(registry: Registry, name: str) -> int:
    from lxsub.manager import client

    registry.get(name)    # an unknown name is an error, not a no-op
    client.request("terminate", start=False, distro=name)
    return 0


def _shutdown() -> int:
    from lxsub.manager import client

    client.shutdown()
    return 0


def _print_error(message: str) -> None:
    # One line, so that scripts can show it as is.
    print(f"lx: {' '.join(message.split())}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
