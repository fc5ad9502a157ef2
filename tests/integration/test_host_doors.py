"""Host doors per Linux user (kernel/doors.py) and lxsub's own storage never
shown through DrvFs (kernel/fs/sealed.py), as root and as the unprivileged
host user.

A Linux user who can use /mnt/host or run host programs is the host user,
so: only root, the distro's default user and group lxhost hold those doors
by default (`[automount] users`, `[interop] users` in /etc/lx.conf); and
nobody, root included, reaches LX_HOME, the runtime directory or a
distro's root file system through DrvFs, however the path is spelled.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.fixtures.runner import describe
from tests.integration.test_interop import _lx_conf

HOST = "/mnt/host"
EXIT_CANNOT_EXEC = 126

# Run inside as `python3 - JSON`: tries each (label, path, operation) and
# prints "label OK" or "label ERRNO-NAME".
PROBE = textwrap.dedent("""
    import errno, os, socket, sys, json
    for label, path, op in json.loads(sys.argv[1]):
        try:
            if op == "list":
                os.listdir(path)
            elif op == "read":
                with open(path, "rb") as f:
                    f.read(1)
            elif op == "append":
                with open(path, "ab") as f:
                    f.write(b"# probe\\n")
            elif op == "create":
                with open(path, "xb") as f:
                    f.write(b"x")
            elif op == "mkdir":
                os.mkdir(path)
            elif op == "rename":
                os.rename(path, path + ".moved")
            elif op == "connect":
                s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                s.connect(path)
            elif op == "bind":
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.bind(path)
            elif op == "chdir":
                os.chdir(path)
            print(label, "OK")
        except OSError as e:
            print(label, errno.errorcode.get(e.errno, e.errno))
    """)


def _probe(inst, user: str, targets: list[tuple[str, str, str]], prefix: str = "") -> dict:
    script = (prefix + "\n" if prefix else "") + \
        f"python3 -c {_quote(PROBE)} {_quote(json.dumps(targets))}"
    cp = inst.lx(["-u", user, "--cd", "/", "-e", "sh", "-c", script])
    assert cp.returncode == 0, describe(cp)
    out = dict(line.split(" ", 1) for line in cp.stdout.decode().splitlines() if " " in line)
    assert set(out) == {label for label, _, _ in targets}, describe(cp)
    return out


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _ok(cp: subprocess.CompletedProcess) -> str:
    assert cp.returncode == 0, describe(cp)
    return cp.stdout.decode()


def _runtime_dir(inst) -> Path:
    found = [p for p in (inst.runner.root / "run").glob("lxsub-*") if (p / "manager.sock").exists()]
    assert len(found) == 1, found
    return found[0]


# -- lxsub's own storage ----------------------------------------------------------------

def test_own_storage_is_never_reachable_through_drvfs(debian):
    runner = debian.runner
    _ok(debian.exe("true"))                       # the manager and its runtime dir exist
    home = runner.lx_home
    rootfs = debian.rootfs.resolve()              # outside LX_HOME: an imported distro
    runtime = _runtime_dir(debian)
    shadow_before = (rootfs / "etc" / "shadow").read_bytes()
    # A host symlink in the host user's own directory, leading into LX_HOME.
    link = runner.tmp / "doors-to-home"
    if not link.is_symlink():
        os.symlink("../home", link)
    parent, name = home.parent, home.name
    targets = [
        ("registry", f"{HOST}{home}/registry.json", "read"),
        ("list-home", f"{HOST}{home}", "list"),
        ("chdir-home", f"{HOST}{home}", "chdir"),
        ("list-distros", f"{HOST}{home}/distros", "list"),
        ("dot-slashes", f"{HOST}{home}/././/registry.json", "read"),
        ("dotdot", f"{HOST}{parent}/../{parent.name}/{name}/registry.json", "read"),
        ("host-symlink", f"{HOST}{link}/registry.json", "read"),
        ("linux-symlink", "/tmp/doors-l/registry.json", "read"),
        ("bind-parent", f"/mnt/doors-b/{name}/registry.json", "read"),
        ("bind-itself", "/mnt/doors-c", "list"),
        ("proc-root", f"/proc/1/root{HOST}{home}/registry.json", "read"),
        ("host-proc", f"{HOST}/proc/self/root{home}/registry.json", "read"),
        ("new-file", f"{HOST}{home}/planted", "create"),
        ("new-dir", f"{HOST}{home}/distros/planted", "mkdir"),
        ("rename-home", f"{HOST}{home}", "rename"),
        ("shadow", f"{HOST}{rootfs}/etc/shadow", "append"),
        ("rootfs", f"{HOST}{rootfs}", "list"),
        ("runtime", f"{HOST}{runtime}", "list"),
        ("manager-socket", f"{HOST}{runtime}/manager.sock", "connect"),
    ]
    setup = (f"ln -sfn {HOST}{home} /tmp/doors-l; mkdir -p /mnt/doors-b /mnt/doors-c; "
             f"mount --bind {HOST}{parent} /mnt/doors-b; mount --bind {HOST}{home} /mnt/doors-c")
    try:
        out = _probe(debian, "root", targets, setup)
    finally:
        debian.exe("sh", "-c", "umount /mnt/doors-b; umount /mnt/doors-c; rm -f /tmp/doors-l")
    assert out == {label: "EACCES" for label, _, _ in targets}, out
    # Seen from outside: an empty directory nobody may enter, owned by root.
    cp = debian.lx(["-u", "root", "-e", "stat", "-c", "%A %U %h",
                    f"{HOST}{home}", f"{HOST}{rootfs}", f"{HOST}{runtime}"])
    assert _ok(cp).splitlines() == ["d--------- root 2"] * 3, describe(cp)
    # ...in the listing of its parent too, and its neighbours are the host's as ever.
    listing = _ok(debian.lx(["-u", "root", "-e", "ls", f"{HOST}{parent}"])).split()
    assert name in listing and "tmp" in listing, listing
    # Nothing happened on the host.
    assert (rootfs / "etc" / "shadow").read_bytes() == shadow_before
    assert home.is_dir() and not (home / "planted").exists()
    assert not (home / "distros" / "planted").exists()


def test_own_storage_behind_another_host_mount_point(debian, tmp_path):
    """A host bind mount of the same file system is the same inode: sealed too."""
    if os.geteuid() != 0:
        pytest.skip("making a host bind mount needs root on the host")
    point = Path("/tmp") / f"doors-hostbind-{os.getpid()}"
    point.mkdir(exist_ok=True)
    subprocess.run(["mount", "--bind", str(debian.runner.root), str(point)], check=True)
    try:
        out = _probe(debian, "root", [
            ("other-mount", f"{HOST}{point}/home/registry.json", "read"),
            ("other-rootfs", f"{HOST}{point}/distros/{debian.name}/rootfs/etc/shadow", "read"),
            ("neighbour", f"{HOST}{point}/in", "list"),
        ])
    finally:
        subprocess.run(["umount", str(point)], check=True)
        point.rmdir()
    assert out == {"other-mount": "EACCES", "other-rootfs": "EACCES", "neighbour": "OK"}, out


# -- doors per user --------------------------------------------------------------------

USERS_SETUP = (
    "getent group lxhost >/dev/null || groupadd --system lxhost; "
    # Fixed uids: the Debian distro is shared, and other tests create uid 1000.
    "id doorless >/dev/null 2>&1 || useradd -m -u 2101 doorless; "
    "id doorkeeper >/dev/null 2>&1 || useradd -m -u 2102 -G lxhost doorkeeper; "
    # A host program reached through a distro symlink on PATH, and a script
    # whose #! interpreter is a host program.
    f"ln -sfn {HOST}/usr/bin/id /usr/local/bin/doors-hostid; "
    f"printf '#!{HOST}/usr/bin/echo from-host-echo\\n' > /usr/local/bin/doors-hostscript; "
    "chmod 755 /usr/local/bin/doors-hostscript"
)


@pytest.fixture
def door_users(debian):
    _ok(debian.exe("sh", "-c", USERS_SETUP))
    host_dir = debian.runner.tmp / "doors-shared"
    host_dir.mkdir(exist_ok=True)
    debian.user.give(host_dir)
    (host_dir / "note").write_text("host note\n")
    debian.user.give(host_dir / "note")
    return host_dir


def _door_probe(debian, user: str, host_dir: Path) -> list[str]:
    """What `user` gets from each door, one line each."""
    script = (
        f"ls {HOST}/ >/dev/null 2>&1 && echo list || echo no-list; "
        f"cat {HOST}{host_dir}/note 2>/dev/null || echo no-read; "
        f"echo w > {HOST}{host_dir}/by-$(id -un) 2>/dev/null && echo write || echo no-write; "
        f"{HOST}/usr/bin/id -u 2>/dev/null || echo no-exec; "
        "doors-hostid -u 2>/dev/null || echo no-path-exec; "
        "doors-hostscript 2>/dev/null || echo no-shebang-exec")
    cp = debian.lx(["-u", user, "--cd", "/", "-e", "sh", "-c", script])
    assert cp.returncode == 0, describe(cp)
    return cp.stdout.decode().splitlines()



def _expect_open(debian) -> list[str]:
    uid = str(debian.user.uid)         # the host programs run as the host user
    return ["list", "host note", "write", uid, uid,
            "from-host-echo /usr/local/bin/doors-hostscript"]


CLOSED = ["no-list", "no-read", "no-write", "no-exec", "no-path-exec", "no-shebang-exec"]


def test_user_outside_the_group_holds_no_door(debian, door_users):
    assert _door_probe(debian, "doorless", door_users) == CLOSED
    assert not (door_users / "by-doorless").exists()
    # Why, in the errno a program sees: EACCES everywhere under /mnt/host.
    out = _probe(debian, "doorless", [
        ("list", f"{HOST}", "list"), ("read", f"{HOST}/etc/hostname", "read"),
        ("create", f"{HOST}{door_users}/planted", "create"), ("chdir", f"{HOST}/tmp", "chdir"),
        ("chdir-root", f"{HOST}", "chdir"),
    ])
    assert out == {"list": "EACCES", "read": "EACCES", "create": "EACCES", "chdir": "EACCES",
                   "chdir-root": "EACCES"}, out
    # lx says it in one line.
    cp = debian.lx(["-u", "doorless", "-e", f"{HOST}/usr/bin/id"])
    assert cp.returncode == EXIT_CANNOT_EXEC, describe(cp)
    assert b"Permission denied" in cp.stderr, describe(cp)


def test_user_in_the_group_and_root_hold_both_doors(debian, door_users):
    assert _door_probe(debian, "doorkeeper", door_users) == _expect_open(debian)
    assert (door_users / "by-doorkeeper").read_text() == "w\n"
    assert _door_probe(debian, "root", door_users) == _expect_open(debian)


def test_interop_door_alone(debian, door_users):
    """DrvFs for everyone, interop as by default: doorless reads but cannot run."""
    with _lx_conf(debian, "[automount]\nusers = *\n"):
        got = _door_probe(debian, "doorless", door_users)
        assert got == ["list", "host note", "write", "no-exec", "no-path-exec",
                       "no-shebang-exec"], got
        assert _door_probe(debian, "doorkeeper", door_users) == _expect_open(debian)


def test_users_lists_and_the_default_user(debian, door_users):
    # A list of users: only they; root's capabilities do not open the door.
    with _lx_conf(debian, "[automount]\nusers = doorless\n[interop]\nusers = doorless\n"):
        assert _door_probe(debian, "doorless", door_users) == _expect_open(debian)
        assert _door_probe(debian, "doorkeeper", door_users) == CLOSED
        assert _door_probe(debian, "root", door_users) == CLOSED
        # Not even a socket right under the DrvFs root (no lookup inside on the way).
        sock = Path(f"/doors-{os.getpid()}.sock")
        try:
            out = _probe(debian, "root", [("bind", f"{HOST}{sock}", "bind")])
            assert out == {"bind": "EACCES"} and not sock.exists(), out
        finally:
            if sock.exists():
                sock.unlink()
    # The distro's default user holds the doors by default.
    with _lx_conf(debian, "[user]\ndefault = doorless\n"):
        assert _door_probe(debian, "doorless", door_users) == _expect_open(debian)


def test_a_daemon_as_www_data_cannot_reach_the_host(debian, door_users):
    script = textwrap.dedent(f"""\
        rm -f /tmp/doors-daemon.out /tmp/doors-daemon.pid
        start-stop-daemon --start --background --chuid www-data --chdir / \\
            --make-pidfile --pidfile /tmp/doors-daemon.pid --startas /bin/sh -- -c '{{ id -un; \\
            ls {HOST}/ >/dev/null 2>&1 && echo list || echo no-list; \\
            cat {HOST}{door_users}/note 2>/dev/null || echo no-read; \\
            {HOST}/usr/bin/id -u 2>/dev/null || echo no-exec; }} > /tmp/doors-daemon.part; \\
            mv /tmp/doors-daemon.part /tmp/doors-daemon.out'
        for i in $(seq 100); do [ -e /tmp/doors-daemon.out ] && break; sleep 0.1; done
        cat /tmp/doors-daemon.out
        cat {HOST}{door_users}/note
        """)
    out = _ok(debian.lx(["-u", "root", "--cd", "/", "-e", "sh", "-c", script])).splitlines()
    # The daemon is refused; root, which started it, still holds its doors.
    assert out == ["www-data", "no-list", "no-read", "no-exec", "host note"], out


# -- host commands are not silently run in place of missing ones (issue 12, item 9) ----

def test_a_missing_command_is_not_the_hosts(busybox):
    """python3 is not in BusyBox; the host has one. Without appendHostPath
    (the default) it is `not found`, and lx names the host's for whoever
    means it."""
    cp = busybox.sh("python3 -c 'print(12345)'")
    assert cp.returncode == 127 and b"12345" not in cp.stdout, describe(cp)
    cp = busybox.lx(["-e", "python3", "-c", "print(12345)"])
    assert cp.returncode == 127 and cp.stdout == b"", describe(cp)
    err = cp.stderr.decode()
    assert "python3: command not found in distro" in err, describe(cp)
    assert "the host has /" in err and f"run it as {HOST}/" in err, describe(cp)
    assert "appendHostPath = true" in err and err.count("\n") == 1, describe(cp)


# -- lx inside reaches the host's lx (issue 12, item 12) ---------------------------------

def test_lx_inside_is_the_hosts_lx(debian, door_users):
    """With interop, `lx` inside runs the host's lx (as wsl.exe inside WSL):
    it lists the host user's distros and starts sessions; only for users
    holding the interop door."""
    out = _ok(debian.lx(["-u", "root", "--cd", "/", "-e", "sh", "-c",
                         "command -v lx; lx --list; lx -d deb -u doorless -e id -un"]))
    lines = out.splitlines()
    assert lines[0] == "/usr/local/bin/lx", out
    assert "deb" in " ".join(lines[1:-1]).split(), out
    assert lines[-1] == "doorless", out
    cp = debian.lx(["-u", "doorless", "--cd", "/", "-e", "sh", "-c", "lx --list"])
    assert cp.returncode == EXIT_CANNOT_EXEC and b"Permission denied" in cp.stderr, describe(cp)
    with _lx_conf(debian, "[interop]\nenabled = false\n"):
        cp = debian.lx(["-u", "root", "--cd", "/", "-e", "sh", "-c", "lx --list"])
        assert cp.returncode == 127, describe(cp)       # interop off: no host lx to reach


def test_a_missing_command_in_a_login_shell_names_the_hosts(debian):
    """The Debian fixture has no strace; the host has. A login shell says
    `command not found` and where the host's is; it does not run it."""
    if not os.access("/usr/bin/strace", os.X_OK):
        pytest.skip("the host has no /usr/bin/strace to name")
    cp = debian.lx(["-u", "root"], input=b"strace -V; echo status=$?\n")
    assert cp.stdout.decode().splitlines() == ["status=127"], describe(cp)   # no host ps ran
    err = cp.stderr.decode()
    assert "strace: command not found" in err, describe(cp)
    assert f"lx: the host has {HOST}/usr/bin/strace; run it by that path" in err, describe(cp)
    # A user without the doors is told nothing about the host.
    _ok(debian.exe("sh", "-c", USERS_SETUP))
    cp = debian.lx(["-u", "doorless"],
                   input=b"strace -V; echo status=$?; echo ${LX_HOST_PATH-unset}\n")
    assert cp.stdout.decode().splitlines() == ["status=127", "unset"], describe(cp)
    assert "strace: not found" in cp.stderr.decode(), describe(cp)    # its shell is dash
    assert HOST not in cp.stderr.decode(), describe(cp)


def test_whose_a_host_file_is_depends_on_who_asks_not_on_who_asked_last(debian, door_users):
    """DrvFs shows the host user's files as the caller's own (kernel/fs/drvfs.py
    _owner). `lx -u doorkeeper` checks up front that the program may run
    (kernel/session.py): that check is made for doorkeeper, not for whichever
    program the instance served last (root's, here). A 0700 host program is
    then doorkeeper's, and runs; seen as root's it would be EACCES."""
    prog = door_users / "own-id"
    shutil.copy("/usr/bin/id", prog)
    os.chmod(prog, 0o700)
    debian.user.give(prog)
    _ok(debian.lx(["-u", "root", "--cd", "/", "-e", "true"]))   # root's task served last
    cp = debian.lx(["-u", "doorkeeper", "--cd", "/", "-e", f"{HOST}{prog}", "-u"])
    assert cp.returncode == 0, describe(cp)
    assert cp.stdout.decode().strip() == str(debian.user.uid)   # a host program: the host user
