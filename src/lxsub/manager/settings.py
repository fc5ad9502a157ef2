"""The manager's settings from the host config file ($XDG_CONFIG_HOME/lx/config)."""

from __future__ import annotations

import configparser
import os
from pathlib import Path

from lxsub.errors import EXIT_DATAERR, LxError
from lxsub.manager.daemon import ManagerSettings


def host_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "lx" / "config"


def manager_settings() -> ManagerSettings:
    path = host_config_path()
    settings = ManagerSettings()
    parser = configparser.ConfigParser()
    try:
        parser.read(path)
    except configparser.Error as e:
        raise LxError(f"{path}: {e}", EXIT_DATAERR) from None
    for section, key, attr in (("manager", "idle_timeout", "idle_timeout"),
                               ("instance", "idle_timeout", "instance_idle_timeout")):
        raw = parser.get(section, key, fallback=None)
        if raw is not None:
            try:
                setattr(settings, attr, float(raw))
            except ValueError:
                raise LxError(f"{path}: [{section}] {key}: {raw!r} is not a number of seconds",
                              EXIT_DATAERR) from None
    return settings
