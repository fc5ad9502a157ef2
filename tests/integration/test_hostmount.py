"""`lx --mount NAME DIR`: host programs edit a distro's files through FUSE and
the Linux owners and modes survive (issue 5, host access to Linux files).

Every host-side action runs as the host user who mounted (a FUSE mount
without allow_other is that user's alone), on the BusyBox fixture, as root
and as an unprivileged host user.
"""

from __future__ import annotations

import os
import stat
import subprocess
import uuid

import pytest

from tests.conftest import _unavailable
from tests.integration.distros import describe

EXIT_OSFILE = 72


def _mounted(point) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if line.split()[4] == str(point)]


@pytest.fixture
def mounted(busybox):
    """(instance, mount point, host_sh) with the distro mounted; unmounted after."""
    runner = busybox.runner
    point = runner.root / f"mnt-{uuid.uuid4().hex[:8]}"
    point.mkdir()
    runner.user.give(point)
    if not runner.user.succeeds(["test", "-r", "/dev/fuse", "-a", "-w", "/dev/fuse"]):
        # fusermount3 opens /dev/fuse with the user's rights: a host limit, so
        # what is tested is that lx says so clearly.
        cp = runner.run(["--mount", busybox.name, str(point)], timeout=60)
        assert cp.returncode == EXIT_OSFILE, describe(cp)
        message = cp.stderr.decode().strip()
        assert len(message.splitlines()) == 1 and "/dev/fuse" in message and "chmod" in message
        assert _mounted(point) == []
        pytest.skip(f"{runner.user} cannot open /dev/fuse; lx says: {message}")
    cp = busybox.runner.run(["--mount", busybox.name, str(point)], timeout=60)
    if cp.returncode == EXIT_OSFILE:
        point.rmdir()
        _unavailable(f"FUSE is unavailable here: {cp.stderr.decode().strip()}")
    assert cp.returncode == 0, describe(cp)

    def host_sh(command: str, check: bool = True) -> subprocess.CompletedProcess:
        cp = runner.run_host(runner.user.wrap(["sh", "-c", command]), cwd=point, timeout=60)
        if check:
            assert cp.returncode == 0, describe(cp)
        return cp

    yield busybox, point, host_sh
    if _mounted(point):
        runner.run(["--umount", str(point)], timeout=60)
    try:
        point.rmdir()
    except OSError:
        pass


def _stat_inside(inst, path: str) -> str:
    return inst.out(f"stat -c '%U %G %a' {path}").strip()


def test_mount_is_fuse_nosuid_nodev(mounted):
    _, point, host_sh = mounted
    lines = _mounted(point)
    assert len(lines) == 1
    opts, fstype = lines[0].split()[5], lines[0].split(" - ")[1].split()[0]
    assert fstype == "fuse.lxsub"
    assert "nosuid" in opts.split(",") and "nodev" in opts.split(",")
    assert "bin" in host_sh("ls").stdout.decode().split()


def test_edit_keeps_linux_owner_and_mode(mounted):
    inst, point, host_sh = mounted
    inst.out("mkdir -p /tmp/hm && printf 'alpha\\n' > /tmp/hm/f && chown 1000:1000 /tmp/hm/f "
             "&& chmod 4750 /tmp/hm/f")
    # The host sees the Linux view through the mount...
    assert host_sh("stat -c '%u %g %a' tmp/hm/f").stdout.decode().split() == ["1000", "1000", "4750"]
    # ...and edits it in place and by replacing it (sed -i writes a new file and renames).
    host_sh("echo beta >> tmp/hm/f && sed -i s/alpha/ALPHA/ tmp/hm/f")
    assert _stat_inside(inst, "/tmp/hm/f") == "user user 4750"
    assert inst.out("cat /tmp/hm/f") == "ALPHA\nbeta\n"
    # The host file itself carries no setuid bit: only the attribute does.
    host_mode = os.stat(inst.rootfs / "tmp/hm/f").st_mode
    assert not host_mode & (stat.S_ISUID | stat.S_ISGID)


def test_new_files_are_root_by_default(mounted):
    inst, point, host_sh = mounted
    inst.out("rm -rf /tmp/hn && mkdir /tmp/hn")
    host_sh("echo made-on-host > tmp/hn/file && chmod 640 tmp/hn/file && mkdir tmp/hn/dir "
            "&& chmod 750 tmp/hn/dir")
    assert _stat_inside(inst, "/tmp/hn/file") == "root root 640"
    assert _stat_inside(inst, "/tmp/hn/dir") == "root root 750"
    assert inst.out("cat /tmp/hn/file") == "made-on-host\n"


def test_new_files_owned_by_the_user_asked_for(busybox):
    runner = busybox.runner
    point = runner.root / f"mnt-{uuid.uuid4().hex[:8]}"
    point.mkdir()
    runner.user.give(point)
    cp = runner.run(["--mount", busybox.name, str(point), "-u", "user"], timeout=60)
    if cp.returncode == EXIT_OSFILE and b"/dev/fuse" in cp.stderr:
        pytest.skip(f"{runner.user} cannot open /dev/fuse (see the 'mounted' fixture)")
    if cp.returncode == EXIT_OSFILE:
        _unavailable(f"FUSE is unavailable here: {cp.stderr.decode().strip()}")
    assert cp.returncode == 0, describe(cp)
    try:
        busybox.out("rm -f /tmp/by-user")
        cp = runner.run_host(runner.user.wrap(["sh", "-c", f"echo x > {point}/tmp/by-user"]))
        assert cp.returncode == 0, describe(cp)
        assert _stat_inside(busybox, "/tmp/by-user").split()[:2] == ["user", "user"]
    finally:
        runner.run(["--umount", str(point)], timeout=60)
    cp = runner.run(["--mount", busybox.name, str(point), "-u", "nobody-here"])
    assert cp.returncode == 67 and b"nobody-here" in cp.stderr, describe(cp)


def test_chmod_and_chown_through_the_mount(mounted):
    inst, point, host_sh = mounted
    inst.out("rm -rf /tmp/hc && mkdir /tmp/hc && echo x > /tmp/hc/f")
    host_sh("chmod 4711 tmp/hc/f")
    assert _stat_inside(inst, "/tmp/hc/f") == "root root 4711"
    # No default_permissions: the kernel leaves chown to the file system, which
    # lets the mounting user act as Linux root, unprivileged on the host or not.
    host_sh("chown 1000:1000 tmp/hc/f")
    assert _stat_inside(inst, "/tmp/hc/f") == "user user 711"   # chown clears setuid, as Linux
    host_sh("chmod 0604 tmp/hc/f")
    assert _stat_inside(inst, "/tmp/hc/f").split()[2] == "604"


def test_rename_unlink_symlink_truncate(mounted):
    inst, point, host_sh = mounted
    inst.out("rm -rf /tmp/hr && mkdir /tmp/hr && printf 0123456789 > /tmp/hr/a "
             "&& chown 1000:1000 /tmp/hr/a && chmod 600 /tmp/hr/a && echo gone > /tmp/hr/b")
    host_sh("mv tmp/hr/a tmp/hr/c && rm tmp/hr/b && ln -s c tmp/hr/link && truncate -s 4 tmp/hr/c "
            "&& mkdir tmp/hr/d && rmdir tmp/hr/d")
    assert inst.out("ls /tmp/hr").split() == ["c", "link"]
    assert _stat_inside(inst, "/tmp/hr/c") == "user user 600"
    assert inst.out("cat /tmp/hr/link") == "0123"
    assert inst.out("readlink /tmp/hr/link").strip() == "c"


def test_unmount(mounted):
    inst, point, host_sh = mounted
    cp = inst.runner.run(["--umount", str(point)], timeout=60)
    assert cp.returncode == 0, describe(cp)
    assert _mounted(point) == []
    assert os.listdir(point) == []
    cp = inst.runner.run(["--umount", str(point)])
    assert cp.returncode == 66 and b"not an lx mount" in cp.stderr, describe(cp)


def test_missing_fusepy_is_a_clear_error(busybox):
    # A Python that cannot import fusepy: both names shadowed by failing modules.
    runner = busybox.runner
    shadow = runner.root / "shadow"
    shadow.mkdir(exist_ok=True)
    for name in ("fuse", "fusepy"):
        (shadow / f"{name}.py").write_text("raise ImportError('hidden by the test')\n")
        runner.user.give(shadow / f"{name}.py")
    runner.user.give(shadow)
    point = runner.root / "mnt-nofuse"
    point.mkdir(exist_ok=True)
    runner.user.give(point)
    pythonpath = f"{runner.src}{os.pathsep}{shadow}"
    cp = runner.run_host(runner.user.wrap(
        ["env", f"PYTHONPATH={pythonpath}", runner.python, "-m", "lxsub",
         "--mount", busybox.name, str(point)]))
    assert cp.returncode == EXIT_OSFILE, describe(cp)
    lines = cp.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "fusepy" in lines[0] and "install" in lines[0], describe(cp)
    assert _mounted(point) == []
