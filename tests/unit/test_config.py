"""Configuration files: /etc/lx.conf in a distro and the host's lx config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lxsub.config import (
    AutomountSection, ConfigError, DistroConfig, HostConfig, host_config_path,
    load_distro_config, load_host_config, parse_distro_config, parse_host_config,
)
from lxsub.errors import EXIT_DATAERR


FULL = """\
# a full lx.conf
[user]
default = alice

[boot]
command = service ssh start   # comment after whitespace

[network]
hostname = dev-box.lan

[automount]
enabled = false
root = /host
options = "metadata,uid=1000,umask=022"

[interop]
Enabled = no
appendHostPath = off
users = @lxhost, alice
"""


def test_defaults_when_empty() -> None:
    config = parse_distro_config("")
    assert config == DistroConfig()
    assert config.user.default is None
    assert config.boot.command is None
    assert config.network.hostname is None
    assert config.automount == AutomountSection(enabled=True, root="/mnt/", options="")
    assert config.interop.enabled is True
    # No silent shadowing of missing commands by host programs (issue 12, item 9).
    assert config.interop.append_host_path is False
    # No `users =`: the default rule of kernel/doors.py (root, default user, @lxhost).
    assert config.automount.users is None and config.interop.users is None


def test_full_file() -> None:
    config = parse_distro_config(FULL)
    assert config.user.default == "alice"
    assert config.boot.command == "service ssh start"
    assert config.network.hostname == "dev-box.lan"
    assert config.automount.enabled is False
    assert config.automount.root == "/host/"
    assert config.automount.options == "metadata,uid=1000,umask=022"
    assert config.interop.enabled is False
    assert config.interop.append_host_path is False
    assert config.interop.users == ("@lxhost", "alice")
    assert config.warnings == ()


def test_door_users_lists() -> None:
    config = parse_distro_config("[automount]\nusers = root  alice,@staff\n"
                                 "[interop]\nusers = *\n")
    assert config.automount.users == ("root", "alice", "@staff")
    assert config.interop.users == ("*",)


def test_last_repeated_key_wins_and_keys_ignore_case() -> None:
    config = parse_distro_config("[USER]\nDefault = a\ndefault = b\n")
    assert config.user.default == "b"


def test_quoted_value_keeps_hash() -> None:
    config = parse_distro_config('[boot]\ncommand = "echo a#b ; x"\n')
    assert config.boot.command == "echo a#b ; x"


@pytest.mark.parametrize("text, where, needle", [
    ("[user]\n\ndefault = bad name\n", "/etc/lx.conf:3:", "[user] default: 'bad name' is not a valid user name"),
    ("[boot]\ncommand =\n", "/etc/lx.conf:2:", "[boot] command: empty value"),
    ("\n[network]\nhostname = -x\n", "/etc/lx.conf:3:", "[network] hostname: '-x' is not a valid host name"),
    ("[automount]\nenabled = maybe\n", "/etc/lx.conf:2:", "[automount] enabled: 'maybe' is not true or false"),
    ("[automount]\nroot = mnt\n", "/etc/lx.conf:2:", "[automount] root: 'mnt' is not an absolute path"),
    ("[automount]\nroot = /mnt/../etc\n", "/etc/lx.conf:2:", "may not contain '..'"),
    ("[automount]\noptions = uid=1000,,x y\n", "/etc/lx.conf:2:", "[automount] options: '' is not a mount option"),
    ("[interop]\nappendHostPath = 2\n", "/etc/lx.conf:2:", "[interop] appendhostpath: '2' is not true or false"),
    ("[interop]\nusers = @\n", "/etc/lx.conf:2:", "[interop] users: '@' is not a user name"),
    ("[automount]\nusers = ,\n", "/etc/lx.conf:2:", "[automount] users: empty list"),
    ("default = alice\n", "/etc/lx.conf:1:", "outside any section"),
    ("[user\n", "/etc/lx.conf:1:", "malformed section header"),
    ("[user]\njust words\n", "/etc/lx.conf:2:", "is not 'key = value'"),
    ('[boot]\ncommand = "open\n', "/etc/lx.conf:2:", "unbalanced quotes"),
])
def test_bad_values_name_file_line_and_key(text: str, where: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_distro_config(text)
    message = info.value.message
    assert message.startswith(where), message
    assert needle in message, message
    assert "\n" not in message
    assert info.value.exit_code == EXIT_DATAERR


def test_unknown_sections_and_keys_are_warnings() -> None:
    config = parse_distro_config("[user]\ndefault = bob\ncolour = red\n[gpu]\nenabled = true\n")
    assert config.user.default == "bob"
    assert config.warnings == (
        "/etc/lx.conf:3: [user] colour: unknown key ignored",
        "/etc/lx.conf:5: unknown section [gpu] ignored",
    )


def test_load_distro_config_from_rootfs(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    assert load_distro_config(tmp_path) == DistroConfig()
    (tmp_path / "etc" / "lx.conf").write_text("[network]\nhostname = box\n")
    assert load_distro_config(tmp_path).network.hostname == "box"


def test_distro_config_symlinks_stay_inside_the_distro(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "srv").mkdir()
    (rootfs / "srv" / "lx.conf").write_text("[user]\ndefault = inside\n")
    # An absolute symlink means the distro's /srv/lx.conf, not the host's.
    os.symlink("/srv/lx.conf", rootfs / "etc" / "lx.conf")
    host_file = Path("/srv/lx.conf")
    assert not host_file.exists() or "inside" not in host_file.read_text()
    assert load_distro_config(rootfs).user.default == "inside"
    # A symlink out of the root by '..' stays at the distro's root.
    outside = tmp_path / "secret.conf"
    outside.write_text("[user]\ndefault = host\n")
    os.unlink(rootfs / "etc" / "lx.conf")
    os.symlink("../../secret.conf", rootfs / "etc" / "lx.conf")
    assert load_distro_config(rootfs) == DistroConfig()


def test_distro_config_errors_show_the_linux_path(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "lx.conf").write_text("[boot]\n\n\ncommand = \n")
    with pytest.raises(ConfigError) as info:
        load_distro_config(tmp_path)
    assert info.value.message.startswith("/etc/lx.conf:4: [boot] command:")


def test_distro_config_not_a_file(tmp_path: Path) -> None:
    (tmp_path / "etc" / "lx.conf").mkdir(parents=True)
    with pytest.raises(ConfigError) as info:
        load_distro_config(tmp_path)
    assert info.value.message == "/etc/lx.conf: not a regular file"


# -- host config --


def test_host_config_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert host_config_path() == tmp_path / "xdg" / "lx" / "config"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert host_config_path() == tmp_path / ".config" / "lx" / "config"


def test_host_config_defaults_when_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    config = load_host_config()
    assert config.manager_idle_timeout == 60.0
    assert config.instance_idle_timeout == 15.0
    assert config.default_distro is None
    assert config.path == tmp_path / "lx" / "config"


def test_host_config_values(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text("[manager]\nidle_timeout = 30\ndefault_distro = deb\n"
                    "[instance]\nidle_timeout = 2.5s\n")
    config = load_host_config(path)
    assert config == HostConfig(manager_idle_timeout=30.0, instance_idle_timeout=2.5,
                                default_distro="deb", path=path)


def test_host_config_bad_seconds_under_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    path = tmp_path / ".config" / "lx" / "config"
    path.parent.mkdir(parents=True)
    path.write_text("[manager]\nidle_timeout = 5\n\n[instance]\nidle_timeout = abc\n")
    with pytest.raises(ConfigError) as info:
        load_host_config()
    assert info.value.message == (
        "~/.config/lx/config:5: [instance] idle_timeout: 'abc' is not a number of seconds")


@pytest.mark.parametrize("value", ["-1", "nan", "inf", ""])
def test_host_config_rejects_odd_seconds(value: str) -> None:
    with pytest.raises(ConfigError, match=r"\[manager\] idle_timeout"):
        parse_host_config(f"[manager]\nidle_timeout = {value}\n", "cfg")


def test_host_config_bad_default_distro() -> None:
    with pytest.raises(ConfigError) as info:
        parse_host_config("[manager]\ndefault_distro = a/b\n", "cfg")
    assert info.value.message.startswith("cfg:2: [manager] default_distro: 'a/b'")


def test_host_config_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_bytes(b"[manager]\n\xff = 1\n")
    with pytest.raises(ConfigError) as info:
        load_host_config(path)
    assert info.value.message == f"{path}:2: not UTF-8 text"


def test_lenient_distro_config_warns_and_keeps_defaults():
    config = parse_distro_config("[network]\nhostname = bad name!\n[user]\ndefault = bob\n",
                                 lenient=True)
    assert config.network.hostname is None and config.user.default == "bob"
    assert len(config.warnings) == 1 and config.warnings[0].startswith("/etc/lx.conf:2:")
    broken = parse_distro_config("[user\n", lenient=True)
    assert broken == DistroConfig(warnings=broken.warnings) and "ignored" in broken.warnings[0]


def test_host_default_distro_chooses_the_launch_distro(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    from lxsub.cli.distro_cmds import launch_distro
    from lxsub.state import Distro, Registry

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    registry = Registry(tmp_path / "home")
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        registry.add(Distro(name, tmp_path / name))
    assert launch_distro(registry, None).name == "first"  # the registry's default
    (tmp_path / "cfg" / "lx").mkdir(parents=True)
    (tmp_path / "cfg" / "lx" / "config").write_text("[manager]\ndefault_distro = second\n")
    assert launch_distro(registry, None).name == "second"
    assert launch_distro(registry, "first").name == "first"  # -d wins
