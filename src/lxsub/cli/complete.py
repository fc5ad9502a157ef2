"""`lx --complete distros|users [NAME]`: words for the shell completions
(share/bash-completion/lx, share/zsh/site-functions/_lx), one a line,
nothing on error. Read from the registry and the distro's /etc/passwd on
the host: no instance is started to complete a word."""

from __future__ import annotations

from pathlib import Path

from lxsub.errors import LxError
from lxsub.state import Registry, lx_home

# Accounts worth offering for -u: root and people (login.defs UID_MIN..UID_MAX).
_UID_MIN, _UID_MAX = 1000, 60000


def main(args: list[str]) -> int:
    try:
        registry = Registry(lx_home())
        if args[:1] == ["distros"]:
            words = [d.name for d in registry.list()]
        elif args[:1] == ["users"]:
            distro = registry.get(args[1]) if len(args) > 1 and args[1] else registry.default()
            words = _users(Path(distro.rootfs) / "etc" / "passwd")
        else:
            return 64
    except (LxError, OSError, ValueError):
        return 0
    for word in words:
        print(word)
    return 0


def _users(passwd: Path) -> list[str]:
    out = []
    for line in passwd.read_text(errors="replace").splitlines():
        f = line.split(":")
        if len(f) >= 7 and f[2].isdigit():
            uid = int(f[2])
            if uid == 0 or _UID_MIN <= uid <= _UID_MAX:
                out.append(f[0])
    return out
