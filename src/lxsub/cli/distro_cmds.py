"""`lx`'s distro commands: install, import, export, list, set-default, unregister.

cli/main.py parses the command line and calls these; each returns lx's exit
status or raises LxError. `recover` runs first on every command, to clean
up after an install, import or unregister that was killed half way and to
say so; `launch_distro` is what every run path uses to pick the distro and
refuse launches into one that is being installed or removed.
"""

from __future__ import annotations

import os
import sys

from lxsub.errors import EXIT_TEMPFAIL, EXIT_USAGE, LxError
from lxsub.state import (INSTALLED, Distro, Registry, check_launchable, host_config_path,
                         running_distros)


def _warn(message: str) -> None:
    print(f"lx: {' '.join(message.split())}", file=sys.stderr)


def recover(registry: Registry) -> None:
    """Finish off interrupted changes and tell the user (one line each)."""
    if not registry.path.exists():
        return
    for message in registry.recover():
        _warn(message)
    exports = registry.home / "exports"      # markers of exports in progress
    if exports.is_dir() and any(exports.glob("*.part-of")):
        from lxsub.distro.exporter import recover_exports
        for message in recover_exports():
            _warn(message)


def launch_distro(registry: Registry, name: str | None) -> Distro:
    """The distro a launch goes to: -d NAME, else the host config's
    [manager] default_distro, else the registry's default; refused with a
    clear message when it is being installed or unregistered."""
    if name is None and host_config_path().exists():
        # Most hosts have no such file: a launch then never imports lxsub.config.
        from lxsub.config import load_host_config

        host = load_host_config()
        for warning in host.warnings:
            _warn(warning)
        name = host.default_distro
    distro = registry.get(name) if name else registry.default()
    check_launchable(distro)
    return distro


def install(registry: Registry, kind: str, *, name: str | None = None,
            location: str | None = None, user: str | None = None) -> int:
    from lxsub.distro.installer import install as do_install
    from lxsub.distro.progress import Progress

    do_install(registry, kind, name=name, location=location, user=user,
               progress=Progress.for_terminal(verbose=True))
    return 0


def import_(registry: Registry, name: str, directory: str, tarball: str) -> int:
    from lxsub.distro.importer import import_tarball
    from lxsub.distro.progress import Progress

    with Progress.for_terminal() as progress:
        import_tarball(registry, name, directory, tarball, progress=progress)
    return 0


def export(registry: Registry, name: str, tarball: str) -> int:
    from lxsub.distro.exporter import compression_for, export_tarball
    from lxsub.distro.progress import Progress

    compression_for(tarball)   # a name that is no tar archive's fails first
    registry.get(name)  # unknown names fail before taking a lock
    if tarball == "-" and sys.stdout.isatty():
        raise LxError("refusing to write a tarball to a terminal; redirect stdout or name a file",
                      EXIT_USAGE)
    with registry.distro_lock(name, "export"):
        registry.recover(only=name)
        distro = registry.get(name)
        if distro.state != INSTALLED:
            raise LxError(f"distro {name!r} is {distro.state.lower()}; it cannot be exported",
                          EXIT_TEMPFAIL)
        with Progress.for_terminal() as progress:
            export_tarball(distro, tarball, progress=progress)
        if progress.verbose and tarball != "-":
            size = os.stat(tarball).st_size
            print(f"Exported {name} to {tarball} ({size / 2**20:.1f} MiB).", file=progress.stream)
    return 0


def unregister(registry: Registry, name: str) -> int:
    """As `wsl --unregister`: a running distro is terminated first."""
    registry.get(name)
    if name in running_distros():
        from lxsub.manager import client
        client.request("terminate", start=False, distro=name)   # returns once it has ended
    registry.unregister(name)
    return 0


def set_default(registry: Registry, name: str) -> int:
    registry.set_default(name)
    return 0


def list_(registry: Registry, verbose: bool) -> int:
    distros = registry.list()
    if not distros:
        print("lx has no distros. Install one with 'lx --install busybox' "
              "or import one with 'lx --import NAME DIR TARBALL'.")
        return 0
    default = _default_name(registry)
    if not verbose:
        print("Linux distributions:")
        for d in distros:
            print(f"{d.name} (Default)" if d.name == default else d.name)
        return 0
    running = running_distros()
    rows = [("NAME", "STATE", "VERSION")] + [
        (d.name, state_of(d, running), str(d.version)) for d in distros
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    for n, (name, state, version) in enumerate(rows):
        mark = "*" if n and distros[n - 1].name == default else " "
        print(f"{mark} {name:<{widths[0]}}    {state:<{widths[1]}}    {version}")
    return 0


def state_of(distro: Distro, running: frozenset[str]) -> str:
    """Running, Stopped, or the registry state while installing/uninstalling."""
    if distro.state != INSTALLED:
        return distro.state
    return "Running" if distro.name in running else "Stopped"


def _default_name(registry: Registry) -> str | None:
    try:
        return registry.default().name
    except LxError:
        return None


__all__ = ["export", "import_", "install", "launch_distro", "list_", "recover",
           "set_default", "state_of", "unregister"]
