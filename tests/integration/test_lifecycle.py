"""Distribution life cycle through the real `lx` command, as root and as an
unprivileged host user: install, default user, list, export, unregister,
import, one change at a time, interrupted changes.

The Debian install (every required package configured by dpkg inside lxsub;
about a minute and a half here, marked slow) runs as the current user only.
Its package lists and .debs are kept in $LXSUB_TEST_CACHE/lx-cache (the
runner's XDG_CACHE_HOME) so a CI cache of that directory saves the download.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.fixtures.runner import LxRunner, describe

EXIT_TEMPFAIL = 75
EXIT_CANTCREAT = 73

# Every file's Linux metadata, as `find -printf '%M %u %g %s %T@ %p %l'` shows
# it (BusyBox's find has no -printf; its stat gives the same fields with
# nanosecond times). Mount points of the instance (/proc, /dev, /sys, /run,
# the host under /mnt) are not part of the distro's files.
LISTING = (
    "find / -xdev \\( -path /proc -o -path /dev -o -path /sys -o -path /run -o -path '/mnt/*' \\) "
    "-prune -o -exec stat -c '%A %U %G %s %y %n %N' {} + | sort"
)


def listing(lx: LxRunner, name: str) -> list[str]:
    cp = lx.run(["-d", name, "-u", "root", "--", LISTING], timeout=120)
    assert cp.returncode == 0, describe(cp)
    lines = cp.stdout.decode(errors="replace").splitlines()
    assert len(lines) > 100, describe(cp)
    return lines


def registry(lx: LxRunner) -> dict:
    return json.loads((lx.lx_home / "registry.json").read_text())


def test_busybox_install_export_unregister_import(lx: LxRunner, tmp_path: Path) -> None:
    t0 = time.monotonic()
    cp = lx.run(["--install", "busybox", "--user", "alice"], timeout=300)
    assert cp.returncode == 0, describe(cp)
    assert time.monotonic() - t0 < 60, "installing busybox should take seconds"
    assert cp.stdout == b"", "quiet when not on a terminal"

    cp = lx.run(["--list", "-v"], check=True)
    assert cp.stdout.decode().split() == ["NAME", "STATE", "VERSION", "*", "busybox", "Stopped", "1"]
    entry = registry(lx)["distros"][0]
    assert entry["default_user"] == "alice" and entry["state"] == "Installed"
    assert entry["source"].startswith("busybox 1:")

    # The default user exists inside, owns its home; root's things are root's.
    cp = lx.run(["--", "id -un; id -u; stat -c '%U %G %a' ~ /root /tmp /etc/shadow; "
                 "ls -l /bin/sh; cat /etc/hostname"], check=True)
    out = cp.stdout.decode().splitlines()
    assert out[:2] == ["alice", "1000"]
    assert out[2:6] == ["alice alice 755", "root root 700", "root root 1777", "root root 600"]
    assert out[6].endswith("/bin/sh -> /bin/busybox")
    # The default user is in group lxhost: it holds the host doors (docs/SECURITY.md).
    cp = lx.run(["--", "id -Gn; grep ^lxhost: /etc/group; "
                 "cat /mnt/host/etc/hostname >/dev/null && echo host"], check=True)
    assert cp.stdout.decode().splitlines() == ["alice lxhost", "lxhost:x:999:alice", "host"]

    before = listing(lx, "busybox")
    tarball = lx.root / "bb.tar.gz"
    cp = lx.run(["--export", "busybox", str(tarball)], timeout=300)
    assert cp.returncode == 0 and cp.stdout == b"", describe(cp)
    assert tarball.stat().st_size > 500_000

    rootfs = Path(entry["rootfs"])
    assert rootfs.is_dir()
    cp = lx.run(["--unregister", "busybox"], check=True)
    assert not rootfs.exists() and not rootfs.parent.exists(), "files removed"
    assert registry(lx)["distros"] == []
    assert b"lx has no distros" in lx.run(["--list"], check=True).stdout

    cp = lx.run(["--import", "busybox", str(lx.distros / "again"), str(tarball)], timeout=300)
    assert cp.returncode == 0, describe(cp)
    after = listing(lx, "busybox")
    assert after == before

    # And through a pipe: export to stdout, import from stdin.
    data = lx.run(["--export", "busybox", "-"], check=True, timeout=300).stdout
    cp = lx.run(["--import", "piped", str(lx.distros / "piped"), "-"], input=data, timeout=300)
    assert cp.returncode == 0, describe(cp)
    assert listing(lx, "piped") == before


def test_install_name_location_and_duplicates(lx: LxRunner) -> None:
    where = lx.distros / "custom"
    cp = lx.run(["--install", "--name", "tiny", "--location", str(where)], timeout=300)
    assert cp.returncode == 0, describe(cp)
    assert (where / "rootfs" / "bin" / "busybox").is_file()
    assert lx.run(["-d", "tiny", "-e", "whoami"], check=True).stdout == b"root\n"
    cp = lx.run(["--install", "busybox", "--name", "tiny"], timeout=300)
    assert cp.returncode == EXIT_CANTCREAT, describe(cp)
    assert cp.stderr.decode().startswith("lx: a distro named 'tiny' already exists")
    assert cp.stderr.count(b"\n") == 1
    cp = lx.run(["--install", "busybox", "--name", "x", "--user", "Bad User"])
    assert cp.returncode == 64 and b"invalid user name" in cp.stderr
    cp = lx.run(["--install", "fedora"])
    assert cp.returncode == 64 and b"invalid choice" in cp.stderr


def _start_import_from_pipe(lx: LxRunner, name: str, tarball: bytes) -> subprocess.Popen:
    """An `lx --import NAME DIR -` that has read part of a tarball and waits
    for the rest: a change in progress, for as long as the test likes."""
    proc = lx.popen(["--import", name, str(lx.distros / name), "-"], stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    proc.stdin.write(tarball[: len(tarball) // 2])
    proc.stdin.flush()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        reg = lx.lx_home / "registry.json"
        if reg.exists() and any(d["name"] == name for d in json.loads(reg.read_text())["distros"]):
            return proc
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"the import never registered as Installing: {proc.communicate()}")


@pytest.fixture
def plain_tar(lx: LxRunner) -> bytes:
    cp = lx.run(["--install", "busybox", "--name", "src"], timeout=300)
    assert cp.returncode == 0, describe(cp)
    return lx.run(["--export", "src", "-"], check=True, timeout=300).stdout


def test_one_change_at_a_time_and_no_launch_while_installing(lx: LxRunner, plain_tar: bytes) -> None:
    proc = _start_import_from_pipe(lx, "busy", plain_tar)
    try:
        cp = lx.run(["--list", "-v"], check=True)
        assert "busy" in cp.stdout.decode() and "Installing" in cp.stdout.decode()

        cp = lx.run(["-d", "busy", "--", "true"])
        assert cp.returncode == EXIT_TEMPFAIL, describe(cp)
        assert cp.stderr == b"lx: distro 'busy' is still being installed; wait for the install " \
                            b"to finish (see 'lx --list -v')\n"

        copy = lx.root / "copy.tar"
        copy.write_bytes(plain_tar)
        lx.user.give(copy)
        t0 = time.monotonic()
        for args in (["--unregister", "busy"], ["--export", "busy", str(lx.root / "x.tar")],
                     ["--import", "busy", str(lx.distros / "other"), str(copy)]):
            cp = lx.run(args)
            assert cp.returncode == EXIT_TEMPFAIL, describe(cp)
            err = cp.stderr.decode()
            assert err.startswith("lx: distro 'busy' is busy: import (pid ") and err.count("\n") == 1
        assert time.monotonic() - t0 >= 3 * 1.5, "a second change waits a little first"
        assert not (lx.distros / "other").exists()

        # The rest of the archive arrives: the import completes normally.
        proc.stdin.write(plain_tar[len(plain_tar) // 2:])
        proc.stdin.close()
        assert proc.wait(120) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert lx.run(["-d", "busy", "-e", "true"]).returncode == 0


def test_killed_import_is_cleaned_up_by_the_next_command(lx: LxRunner, plain_tar: bytes) -> None:
    proc = _start_import_from_pipe(lx, "half", plain_tar)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (lx.distros / "half").exists(), "the killed import left its partial tree"
    cp = lx.run(["--list"])
    assert cp.returncode == 0, describe(cp)
    assert cp.stderr == b"lx: an earlier install of 'half' was interrupted; its files were removed\n"
    assert b"half" not in cp.stdout
    assert not (lx.distros / "half").exists()
    assert lx.run(["--list"]).stderr == b"", "said once"


def test_interrupted_install_leaves_nothing(lx: LxRunner) -> None:
    proc = lx.popen(["--install", "busybox", "--name", "ctrlc"], stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (lx.lx_home / "registry.json").exists():
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the install finished before Ctrl-C arrived")
    assert proc.returncode == 130, err
    assert registry(lx)["distros"] == []
    assert not (lx.lx_home / "distros" / "ctrlc").exists()
    assert lx.run(["--list"]).stderr == b""


def _log_tail(log: Path, lines: int = 40) -> str:
    """The end of a kept install log, for a failure's report (CI keeps no files)."""
    try:
        tail = log.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return f"\n--- the last {len(tail)} lines of {log.name}\n" + "\n".join(tail)


@pytest.fixture(scope="module")
def debian_install():
    """`lx --install debian --user bob` on a terminal (pexpect), as WSL's
    first start: it installs sudo, puts bob in group sudo and asks for his
    password. Made once for the tests below; (runner, installer output)."""
    import pexpect
    from tests.fixtures.rootfs import cache_dir
    from tests.fixtures.runner import current_user

    lx = LxRunner(current_user())
    try:
        env = lx.env({"XDG_CACHE_HOME": str(cache_dir() / "lx-cache")})
        argv = lx.command(["--install", "debian", "--user", "bob"])
        child = pexpect.spawn(argv[0], argv[1:], env=env, cwd=str(lx.root), timeout=3600,
                              dimensions=(40, 120))
        child.logfile_read = seen = io.BytesIO()
        for _ in range(2):       # passwd: "New password:", "Retype new password:"
            child.expect(r"(?i)password:")
            child.sendline(BOB_PASSWORD)
        child.expect(pexpect.EOF)
        child.close()
        output = seen.getvalue().decode(errors="replace")
        assert child.exitstatus == 0, output + _log_tail(lx.lx_home / "install-debian.log")
        yield lx, output
    finally:
        lx.close()


BOB_PASSWORD = "Lx-first-hour-1"


@pytest.mark.slow
def test_debian_install_runs_apt_and_dpkg(debian_install) -> None:
    lx, _ = debian_install
    cp = lx.run(["-d", "debian", "--", "id -un; apt-get --version | head -1; "
                 "dpkg -l | grep -c '^ii'; stat -c '%U %G %a' /etc/shadow ~; "
                 "dpkg --audit && echo audit-clean; id -Gn"], timeout=300, check=True)
    out = cp.stdout.decode().splitlines()
    assert out[0] == "bob"
    assert out[1].startswith("apt 2.6")
    assert int(out[2]) >= 90
    assert out[3:5] == ["root shadow 640", "bob bob 755"]
    assert out[5] == "audit-clean"
    assert "lxhost" in out[6].split(), out       # the host doors' group (docs/SECURITY.md)


@pytest.mark.slow
def test_debian_default_user_is_an_administrator_with_sudo(debian_install) -> None:
    """bob is in group sudo, sudo (set-user-ID root) takes the password given
    at install and runs as root, quietly: no "no new privileges" refusal, no
    audit message (issue 12, items 1 and 11)."""
    lx, output = debian_install
    assert "Set a password for bob" in output, output
    cp = lx.run(["-d", "debian", "--", "id -nG; stat -c '%A %U' /usr/bin/sudo; "
                 "sudo -S -p '' id -un; sudo -n grep NoNewPrivs /proc/self/status; "
                 "sudo -n sudo -n true && echo nested"],
                input=(BOB_PASSWORD + "\n").encode(), timeout=120)
    assert cp.returncode == 0, describe(cp)
    lines = cp.stdout.decode().splitlines()
    assert set(lines[0].split()) == {"bob", "sudo", "lxhost"}, describe(cp)
    assert lines[1:] == ["-rwsr-xr-x root", "root", "NoNewPrivs:\t0", "nested"], describe(cp)
    assert cp.stderr == b"", describe(cp)
    cp = lx.run(["-d", "debian", "--", "sudo -k; sudo -S -p '' true"], input=b"wrong\n",
                timeout=120)
    assert cp.returncode == 1 and b"incorrect password" in cp.stderr, describe(cp)


@pytest.mark.slow
def test_debian_login_shell_of_a_user_reads_the_system_profile(debian_install) -> None:
    """/etc/profile and kin keep the modes of their packages (cp -p in
    base-files' postinst): a non-root login shell reads them."""
    lx, _ = debian_install
    cp = lx.run(["-d", "debian", "-e", "bash", "-lc",
                 "stat -c '%a %n' /etc/profile /etc/shells /etc/motd /etc/nsswitch.conf "
                 "/root/.bashrc /root/.profile 2>&1; echo PATH=$PATH"], timeout=120)
    assert cp.returncode == 0 and cp.stderr == b"", describe(cp)
    lines = cp.stdout.decode().splitlines()
    assert lines[:4] == ["644 /etc/profile", "644 /etc/shells", "644 /etc/motd",
                         "644 /etc/nsswitch.conf"], describe(cp)
    assert "Permission denied" in lines[4] and "Permission denied" in lines[5], describe(cp)
    assert lines[6].startswith("PATH=/usr/local/bin:/usr/bin:/bin"), describe(cp)


@pytest.mark.slow
def test_debian_install_matches_a_native_install(debian_install, debian_tar) -> None:
    """Every file the fresh install shares with the Debian fixture (the same
    bookworm packages installed natively by debootstrap as root) has the
    same type, mode and owner. Not compared: /dev (device nodes and mount
    points each side makes itself), and the files debootstrap or account
    tools write rather than packages (hostname, resolv.conf, the passwd-
    and group- backups)."""
    import tarfile

    lx, _ = debian_install
    fresh = lx.run(["--export", "debian", "-"], timeout=600, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(fresh)) as tar:
        mine = _manifest(tar)
    with tarfile.open(debian_tar) as tar:
        native = _manifest(tar)
    skipped = {"etc/hostname", "etc/resolv.conf", "etc/passwd-", "etc/group-"}
    common = sorted(n for n in set(mine) & set(native)
                    if n not in skipped and n != "dev" and not n.startswith("dev/"))
    assert len(common) > 8000, len(common)
    for name in ("etc/profile", "etc/shells", "etc/motd", "etc/nsswitch.conf", "root/.bashrc",
                 "root/.profile", "usr/bin/passwd", "etc/shadow", "var/log/wtmp"):
        assert name in common, name
    differ = [f"{n}: lx {mine[n]} native {native[n]}" for n in common if mine[n] != native[n]]
    assert differ == [], "\n".join(differ[:50])


def _manifest(tar) -> dict[str, tuple]:
    """path -> (type, mode, uid, gid) of every member."""
    return {m.name.lstrip("./").rstrip("/"): (m.type, oct(m.mode), m.uid, m.gid)
            for m in tar if m.name not in (".", "./")}


@pytest.mark.slow
def test_debian_user_installs_file_with_sudo_and_it_reads_his_files(debian_install) -> None:
    """The WSL habit: `sudo apt-get install file` as the default user, then
    file(1), which sandboxes itself with its own seccomp filter, on files he
    made (issue 12, items 1 and 3)."""
    lx, _ = debian_install
    cp = lx.run(["-d", "debian", "--",
                 "sudo -S -p '' sh -c 'export DEBIAN_FRONTEND=noninteractive; "
                 "apt-get update -q && apt-get install -y -q file' >/dev/null && "
                 "cd && printf 'hi\\n' > a1 && "
                 "command -v file && file a1 && file /tmp && file /etc/passwd"],
                input=(BOB_PASSWORD + "\n").encode(), timeout=900)
    assert cp.returncode == 0, describe(cp)
    assert cp.stdout.decode().splitlines() == [
        "/usr/bin/file", "a1: ASCII text", "/tmp: sticky, directory",
        "/etc/passwd: ASCII text"], describe(cp)


@pytest.mark.slow
def test_debian_man_db_configures_from_the_archive(debian_install) -> None:
    """apt-get install man-db from Debian's archive configures cleanly (its
    postinst builds the manual database as user man through setpriv), and
    apt-get goes on working after it (issue 12, item 4)."""
    lx, _ = debian_install
    cp = lx.run(["-d", "debian", "-u", "root", "--",
                 "export DEBIAN_FRONTEND=noninteractive; apt-get update -q >/dev/null && "
                 "apt-get install -y -q man-db 2>&1 && dpkg --audit && "
                 "apt-get install -y -q --reinstall man-db >/dev/null 2>&1 && echo clean"],
                timeout=900)
    out = cp.stdout.decode(errors="replace")
    assert cp.returncode == 0 and out.splitlines()[-1] == "clean", describe(cp)
    assert "setpriv:" not in out and "Building database of manual pages" in out, describe(cp)


def test_install_says_where_it_is_and_names_an_unreachable_mirror(lx: LxRunner) -> None:
    """Not on a terminal (`lx --install ... 2>&1 | cat`), each step is a
    plain line on stderr; a mirror that does not answer is named as such
    (it was "the package lists name no required packages")."""
    cp = lx.run(["--install", "busybox", "--name", "steps"], timeout=300)
    assert cp.returncode == 0, describe(cp)
    err = cp.stderr.decode().splitlines()
    assert "Fetching busybox-static..." in err and "Fetching busybox-static: done" in err, describe(cp)
    assert any(line.startswith("Installed 'steps'") for line in err), describe(cp)
    cp = lx.run(["--install", "debian", "--name", "nomirror"], timeout=300,
                env={"LX_DEBIAN_MIRROR": "http://127.0.0.1:9/debian"})
    assert cp.returncode == 69, describe(cp)
    last = cp.stderr.decode().splitlines()[-1]
    assert last.startswith("lx: the Debian mirror http://127.0.0.1:9/debian is unreachable"), describe(cp)
    assert "LX_DEBIAN_MIRROR" in last, describe(cp)
