"""VolFs on a file system without user xattrs (issue 17): the Debian fixture
imported onto a bindfs --xattr-none mount (a real FUSE file system that
refuses user.* attributes, as NFS, Lustre or GPFS homes often do), mounted
by root as such homes are, and used by lx as root and as the unprivileged
host user.
lx chooses the SQLite store there by itself; owners, modes, devices,
FIFOs, symlinks, hard links, dpkg, export/import, a kill -9 in the
middle of `dpkg -i` and `lx --install debian` are checked against it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.metastore import db_inos, tree_inos, unsure_inos
from tests.fixtures.rootfs import LOCAL_DEB, cache_dir
from tests.fixtures.runner import HostUser, LxRunner, describe, wait_for

pytestmark = [pytest.mark.debian, pytest.mark.slow]


class NoXattrDistro:
    """The Debian fixture on a bindfs --xattr-none mount, run as one host user."""

    def __init__(self, runner: LxRunner, backing: Path, mount: Path) -> None:
        self.runner = runner
        self.backing = backing          # the host directory under the mount
        self.mount = mount

    def sh(self, command: str, name: str = "deb", user: str | None = None, timeout: float = 300,
           check: bool = True) -> str:
        args = ["-d", name, *(["-u", user] if user else []), "--", command]
        cp = self.runner.run(args, timeout=timeout)
        if check:
            assert cp.returncode == 0, describe(cp)
        return cp.stdout.decode(errors="replace")

    def entry(self, name: str = "deb") -> dict:
        registry = json.loads((self.runner.lx_home / "registry.json").read_text())
        return next(d for d in registry["distros"] if d["name"] == name)

    # Read through the mount, as lx does: the database's WAL index is a
    # shared mmap, coherent for the users of one file (the FUSE one), not
    # between it and the file under it.
    def rootfs(self, name: str = "deb") -> Path:
        return self.mount / name / "rootfs"

    def db(self, name: str = "deb") -> Path:
        return self.mount / name / "rootfs.lxmeta.sqlite"


def _fail_or_skip(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI installs bindfs: .ci/run)")
    pytest.skip(why)


@pytest.fixture(scope="module")
def nox(host_user: HostUser, debian_tar) -> NoXattrDistro:
    if not shutil.which("bindfs"):
        _fail_or_skip("bindfs is not installed (apt-get install bindfs)")
    runner = LxRunner(host_user)
    backing, mount = runner.root / "backing", runner.root / "nox"
    for d in (backing, mount):
        d.mkdir()
        host_user.give(d)
    # bindfs in the foreground, ours to wait for after the unmount. No attribute cache: with
    # FUSE's default second a link(2) leaves st_nlink stale, which NFS does
    # not (its replies carry the new attributes); shadow's lock files need it.
    # Mounted by root for every user (new files the creator's), as a home
    # on NFS is; by the user itself when the tests do not run as root.
    options = "attr_timeout=0,entry_timeout=0"
    argv = ["bindfs", "-f", "--xattr-none", "-o", options, str(backing), str(mount)]
    if os.geteuid() == 0:
        argv[3:5] = ["--create-as-user", "-o", options + ",allow_other"]
    else:
        argv = host_user.wrap(argv)
    server = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, cwd="/")
    try:
        wait_for(lambda: os.path.ismount(mount) or server.poll() is not None, timeout=30,
                 what="the bindfs mount")
    except BaseException:
        server.kill()
        raise
    if server.poll() is not None:
        runner.close()
        pytest.fail(f"bindfs failed: {server.stderr.read().decode(errors='replace')}")
    try:
        # The premise: this file system refuses user xattrs.
        probe = subprocess.run(host_user.wrap(
            ["sh", "-c", f"touch {mount}/probe && setfattr -n user.t -v 1 {mount}/probe; "
                         f"e=$?; rm -f {mount}/probe; exit $e"]), capture_output=True)
        assert probe.returncode != 0 and b"not supported" in probe.stderr, probe
        cp = runner.import_distro("deb", debian_tar, mount / "deb", check=False)
        assert cp.returncode == 0, describe(cp)
        yield NoXattrDistro(runner, backing, mount)
    finally:
        with_timeout = dict(timeout=60)
        try:
            runner.run(["--shutdown"], **with_timeout)
        finally:
            unmount = ["fusermount", "-u", "-z", str(mount)]
            subprocess.run(unmount if os.geteuid() == 0 else host_user.wrap(unmount),
                           capture_output=True, **with_timeout)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            runner.close()


def _stat_lines(nox: NoXattrDistro, paths: str, name: str = "deb") -> list[str]:
    out = nox.sh(f"stat -c '%n %u %g %a %F %t:%T %Y' {paths}", name=name)
    return out.splitlines()


# -- the store is chosen, and holds everything --------------------------------------------

def test_the_import_chose_the_sqlite_store(nox):
    entry = nox.entry()
    assert entry["meta_db"] == str(nox.mount / "deb" / "rootfs.lxmeta.sqlite")
    assert nox.db().is_file()
    # Every file of the imported tree has its record, and every record its file.
    assert db_inos(nox.db()) == tree_inos(nox.rootfs())
    lines = _stat_lines(nox, "/usr/bin/passwd /etc/shadow /usr/bin/chage /tmp /bin")
    assert lines[0].startswith("/usr/bin/passwd 0 0 4755 regular file"), lines
    assert lines[1].startswith("/etc/shadow 0 42 640 regular file"), lines
    assert lines[2].startswith("/usr/bin/chage 0 42 2755 regular file"), lines
    assert lines[3].startswith("/tmp 0 0 1777 directory"), lines
    assert lines[4].startswith("/bin 0 0 777 symbolic link"), lines


def test_owners_modes_devices_fifos_symlinks_hard_links_and_times(nox):
    # (touch -d sets both times: bindfs 1.14 mishandles UTIME_OMIT, `touch -m`,
    # on the host as well.)
    nox.sh("set -e; rm -rf /tmp/m; mkdir /tmp/m; cd /tmp/m; "
           "mknod null c 1 3; mknod blk b 7 0; chown 6:6 blk; chmod 660 blk; "
           "mkfifo -m 620 fifo; chown 1:5 fifo; ln -s target link; chown -h 2:3 link; "
           "touch f; chown 3:4 f; chmod 4750 f; ln f hard; touch -d @1000000000 f; "
           "mkdir -m 2775 sg; chgrp 7 sg; mkdir sg/sub; mv f f2; "
           "echo data > null; test ! -s null")
    want = ["/tmp/m/null 0 0 644 character special file 1:3",
            "/tmp/m/blk 6 6 660 block special file 7:0",
            "/tmp/m/fifo 1 5 620 fifo 0:0",
            "/tmp/m/link 2 3 777 symbolic link 0:0",
            "/tmp/m/f2 3 4 4750 regular empty file 0:0 1000000000",
            "/tmp/m/hard 3 4 4750 regular empty file 0:0 1000000000",
            "/tmp/m/sg 0 7 2775 directory 0:0",
            "/tmp/m/sg/sub 0 7 2755 directory 0:0"]
    paths = " ".join(w.split()[0] for w in want)

    def check() -> None:
        got = _stat_lines(nox, paths)
        for line, expected in zip(got, want):
            assert line.startswith(expected), (got, want)
    check()
    # The records outlive the instance (the xattr store keeps no owner of a
    # FIFO or symlink past its instance).
    nox.runner.run(["--terminate", "deb"], timeout=60, check=True)
    check()


def test_a_user_makes_files_of_its_own(nox):
    nox.sh("id nox >/dev/null 2>&1 || useradd -m -u 1234 nox")
    nox.sh("set -e; cd; rm -rf w; mkdir w; cd w; mkfifo p; ln -s x l; touch t; chmod 600 t; "
           "mkdir d; chown nox:nox t", user="nox")
    got = _stat_lines(nox, "/home/nox/w/p /home/nox/w/l /home/nox/w/t /home/nox/w/d")
    assert [l.split()[1:4] for l in got] == [["1234", "1234", "644"], ["1234", "1234", "777"],
                                             ["1234", "1234", "600"], ["1234", "1234", "755"]], got
    # Not root: chown to another user is refused, as in Linux.
    cp = nox.runner.run(["-d", "deb", "-u", "nox", "--", "chown 0 /home/nox/w/t"], timeout=60)
    assert cp.returncode != 0 and b"Operation not permitted" in cp.stderr, describe(cp)


def test_an_unlinked_or_renamed_open_file_keeps_its_owner(nox):
    out = nox.sh("set -e; cd /tmp; echo x > o; chown 7:8 o; chmod 604 o; exec 3<o; rm o; "
                 "stat -L -c '%u:%g %a' /proc/self/fd/3; echo y > r; chown 9:9 r; exec 4<r; "
                 "mv r r2; stat -L -c '%u:%g' /proc/self/fd/4; rm r2")
    assert out.splitlines() == ["7:8 604", "9:9"], out


def test_dpkg_installs_and_removes_a_package(nox, local_deb):
    cp = nox.runner.run(["-d", "deb", "--", f"cat > /tmp/{LOCAL_DEB.filename}"],
                        input=local_deb.read_bytes(), timeout=60)
    assert cp.returncode == 0, describe(cp)
    nox.sh(f"dpkg -i /tmp/{LOCAL_DEB.filename}")
    out = nox.sh(f"dpkg -s {LOCAL_DEB.package} | grep '^Status:'; {LOCAL_DEB.command}; "
                 f"stat -c '%u:%g %a' {LOCAL_DEB.chowned}")
    uid, gid = LOCAL_DEB.chowned_owner
    assert out.splitlines()[0] == "Status: install ok installed", out
    assert LOCAL_DEB.output in out, out
    assert out.splitlines()[-1] == f"{uid}:{gid} {LOCAL_DEB.chowned_mode:o}", out
    nox.sh(f"dpkg --purge {LOCAL_DEB.package}")
    assert "not installed" in nox.sh(f"dpkg -s {LOCAL_DEB.package} 2>&1 || true")


def test_export_then_import_gives_the_same_tree(nox):
    nox.sh("set -e; rm -rf /tmp/rt; mkdir /tmp/rt; cd /tmp/rt; mkfifo -m 640 p; chown 1:2 p; "
           "ln -s /etc/passwd l; chown -h 3:4 l; mknod c c 5 1; touch s; chmod 6755 s; "
           "chown 5:6 s; chmod 6755 s; ln s h")
    listing = ("find /etc /usr/bin /var/lib/dpkg /tmp/rt -xdev "
               "-printf '%p %U %G %m %y %T@ %n\\n' | sort")
    before = nox.sh(listing)
    tar = nox.runner.root / "in" / "deb.tar"
    cp = nox.runner.run(["--export", "deb", str(tar)], timeout=600)
    assert cp.returncode == 0, describe(cp)
    cp = nox.runner.import_distro("deb2", tar, nox.mount / "deb2", check=False)
    assert cp.returncode == 0, describe(cp)
    try:
        assert nox.entry("deb2")["meta_db"]
        after = nox.sh(listing, name="deb2")
        assert after == before
        assert "/tmp/rt/p 1 2 640 p" in after and "/tmp/rt/l 3 4 777 l" in after, after
    finally:
        nox.runner.run(["--unregister", "deb2"], timeout=120)
    assert not (nox.backing / "deb2").exists()


def _big_deb(where: Path, files: int) -> Path:
    """A package with many small files, so that a kill lands in its unpacking."""
    tree = where / "nox-big"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        "Package: nox-big\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@localhost>\n"
        "Description: many files\n many files\n")
    share = tree / "usr/share/nox-big"
    for d in range(files // 100):
        sub = share / f"d{d}"
        sub.mkdir(parents=True)
        for i in range(100):
            (sub / f"f{i}").write_text(f"{d}/{i}\n")
    out = where / "nox-big.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Znone", "-b", str(tree), str(out)],
                   check=True, capture_output=True)
    os.chmod(out, 0o644)
    return out


def test_kill_9_in_the_middle_of_dpkg_then_restart(nox, tmp_path):
    """The provider dies with SIGKILL while dpkg unpacks: after the next
    start, every file has its record and every record its file, and dpkg
    finishes the job."""
    deb = _big_deb(tmp_path, 1000)
    cp = nox.runner.run(["-d", "deb", "--", "cat > /tmp/big.deb"], input=deb.read_bytes(),
                        timeout=120)
    assert cp.returncode == 0, describe(cp)
    unpacked = nox.rootfs() / "usr/share/nox-big"
    client = nox.runner.popen(["-d", "deb", "-e", "dpkg", "-i", "/tmp/big.deb"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: unpacked.is_dir() and len(os.listdir(unpacked)) >= 5, timeout=240,
                 what="dpkg unpacking nox-big")
        os.kill(nox.runner.serving_instance("deb"), signal.SIGKILL)
        client.communicate(timeout=60)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode != 0
    tree_now, db_now = tree_inos(nox.rootfs()), db_inos(nox.db())
    # A host program, too, changed the tree while no instance ran.
    (nox.rootfs() / "tmp" / "host-made").write_text("h")
    print(f"after the kill: {len(tree_now - db_now)} files without record, "
          f"{len(db_now - tree_now)} records without file")

    nox.sh("true")                       # the next start reconciles
    assert db_inos(nox.db()) == tree_inos(nox.rootfs())
    assert nox.sh("stat -c '%U %a' /tmp/host-made").split() == ["root", "644"]
    nox.sh("dpkg --configure -a; dpkg -i /tmp/big.deb", timeout=600)
    out = nox.sh("dpkg -s nox-big | grep '^Status:'; find /usr/share/nox-big -type f | wc -l; "
                 "stat -c '%U:%G %a' /usr/share/nox-big/d7/f7")
    assert out.splitlines() == ["Status: install ok installed", "1000", "root:root 644"], out
    nox.sh("dpkg --purge nox-big", timeout=600)
    assert db_inos(nox.db()) == tree_inos(nox.rootfs())


def test_the_fuse_view_uses_the_distros_store(nox):
    """`lx --mount`: a second user of the database while the instance runs;
    what a host program does through it shows inside, and back."""
    runner = nox.runner
    point = runner.root / "view"
    point.mkdir(exist_ok=True)
    runner.user.give(point)
    nox.sh("set -e; rm -rf /tmp/v; mkdir /tmp/v; mkfifo -m 600 /tmp/v/in; chown 1:5 /tmp/v/in; "
           "echo x > /tmp/v/gone; chown 8:8 /tmp/v/gone")
    cp = runner.run(["--mount", "deb", str(point)], timeout=60)
    if cp.returncode == 72 and b"/dev/fuse" in cp.stderr:     # EXIT_OSFILE: test_hostmount's case
        pytest.skip(f"{runner.user} cannot open /dev/fuse: {cp.stderr.decode().strip()}")
    assert cp.returncode == 0, describe(cp)
    try:
        def host_sh(command: str) -> str:
            cp = runner.run_host(runner.user.wrap(["sh", "-c", command]), cwd=point, timeout=60)
            assert cp.returncode == 0, describe(cp)
            return cp.stdout.decode()
        assert host_sh("stat -c '%u %g %a %F' tmp/v/in").split() == ["1", "5", "600", "fifo"]
        host_sh("mkfifo tmp/v/out && chown 3:3 tmp/v/out && ln -s in tmp/v/link && "
                "chown -h 4:4 tmp/v/link && rm tmp/v/gone")
        got = _stat_lines(nox, "/tmp/v/out /tmp/v/link")
        assert got[0].startswith("/tmp/v/out 3 3 "), got
        assert got[1].startswith("/tmp/v/link 4 4 777 symbolic link"), got
    finally:
        runner.run(["--umount", str(point)], timeout=60)
    nox.runner.run(["--terminate", "deb"], timeout=60, check=True)
    assert db_inos(nox.db()) == tree_inos(nox.rootfs())      # nothing left of tmp/v/gone


def _apt_cache_of(runner: LxRunner) -> Path:
    """The XDG cache with the test cache's Debian package lists and .debs
    (test_lifecycle's), the user's own: the installer locks and writes it."""
    shared = cache_dir() / "lx-cache"
    if runner.user.is_self:
        return shared
    own = runner.root / "lx-cache"
    if not own.exists():
        shutil.copytree(shared, own, symlinks=True)
        for dirpath, dirs, files in os.walk(own):
            for name in [dirpath, *(os.path.join(dirpath, n) for n in dirs + files)]:
                os.lchown(name, runner.user.uid, runner.user.gid)
    return own


def test_lx_install_debian_onto_it(nox):
    """`lx --install debian` there: dpkg, inside, replaces the running
    libc and shell while they are open (FUSE keeps them under hidden names
    and deletes them unseen), mkdir -p meets the directories that are
    there, the installer cleans up. Every record left without its file is
    one the store was told it may have lost (unsure), and the first start
    drops them: every file has its record and every record its file."""
    runner = nox.runner
    cp = runner.run(["--install", "debian", "--name", "inst", "--location",
                     str(nox.mount / "inst")],
                    env={"XDG_CACHE_HOME": str(_apt_cache_of(runner))}, timeout=3600)
    assert cp.returncode == 0, describe(cp)
    try:
        db, rootfs = nox.db("inst"), nox.rootfs("inst")
        assert nox.entry("inst")["meta_db"] == str(db)
        tree, records = tree_inos(rootfs), db_inos(db)
        assert tree <= records, f"{len(tree - records)} files without record"
        assert records - tree <= unsure_inos(db)
        out = nox.sh("dpkg -s coreutils | grep '^Status:'; "
                     "stat -c '%U %G %a' /usr/bin/passwd /etc/shadow /bin", name="inst")
        assert out.splitlines() == ["Status: install ok installed", "root root 4755",
                                    "root shadow 640", "root root 777"], out
        assert db_inos(db) == tree_inos(rootfs)
        assert not unsure_inos(db)
    finally:
        runner.run(["--unregister", "inst"], timeout=300)
