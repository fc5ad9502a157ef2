"""DrvFs, TmpFs, devices and mount/umount, with real programs from the Debian
fixture, as root and as an unprivileged host user."""

from __future__ import annotations

import errno
import os
import subprocess
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.distros import describe
from tests.integration.test_interop import _lx_conf

pytestmark = [pytest.mark.debian, pytest.mark.slow]


def text(cp) -> str:
    return cp.stdout.decode(errors="replace")


def _host_dir(debian, name: str) -> Path:
    """A fresh host directory the host user owns, and its /mnt/host path."""
    d = debian.runner.root / name / uuid.uuid4().hex[:8]
    d.mkdir(parents=True)
    for p in (d.parent, d):
        debian.user.give(p)
    return d


def _inside(path: Path) -> str:
    return "/mnt/host" + str(path.resolve())


def _wait_for(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


# -- DrvFs --------------------------------------------------------------------

def test_drvfs_changes_are_seen_at_once_both_ways(debian):
    d = _host_dir(debian, "drv")
    inside = _inside(d)
    script = textwrap.dedent(f"""
        d={inside}
        for i in $(seq 600); do [ -e $d/from-host ] && break; sleep 0.05; done
        cat $d/from-host
        echo from-instance > $d/from-instance.tmp && mv $d/from-instance.tmp $d/from-instance
        for i in $(seq 600); do [ -e $d/done ] && break; sleep 0.05; done
        cat $d/done
        """)
    proc = debian.runner.popen(["-d", debian.name, "--", script],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)        # the instance is running and polling by now
        (d / "tmp").write_text("written by the host\n")
        os.rename(d / "tmp", d / "from-host")
        _wait_for(d / "from-instance")
        assert (d / "from-instance").read_text() == "from-instance\n"
        (d / "tmp").write_text("host saw it\n")
        os.rename(d / "tmp", d / "done")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode(errors="replace")
    assert out.decode() == "written by the host\nhost saw it\n", err.decode(errors="replace")


def test_drvfs_chmod_and_chown_are_eperm_without_metadata(debian):
    d = _host_dir(debian, "drv")
    f = d / "f"
    f.write_text("x")
    os.chmod(f, 0o644)
    debian.user.give(f)
    cp = debian.exe("python3", "-c", textwrap.dedent(f"""
        import os
        for what, call in (("chmod", lambda: os.chmod("{_inside(f)}", 0o600)),
                           ("chown", lambda: os.chown("{_inside(f)}", 1, 1))):
            try:
                call()
                print(what, "ok")
            except OSError as e:
                print(what, e.errno)
        print(oct(os.stat("{_inside(f)}").st_mode & 0o777))
        """))
    assert cp.returncode == 0, describe(cp)
    assert text(cp).split() == ["chmod", "1", "chown", "1", "0o644"], describe(cp)
    assert f.stat().st_mode & 0o777 == 0o644


def test_drvfs_metadata_follows_the_linux_rules(debian):
    """With `[automount] options = metadata` chmod and chown are kept in the
    attribute, by the rules VolFs follows (kernel/fs/linuxmeta.py): a setgid
    directory gives new files its group (inode_init_owner), chown clears
    setuid, a device node is an empty host file that shows as one."""
    d = _host_dir(debian, "drvmeta")
    script = textwrap.dedent(f"""\
        set -e
        cd {_inside(d)}
        mkdir shared && chown 0:50 shared && chmod 2775 shared
        mkdir shared/sub && touch shared/f
        touch x && chmod 4755 x && chown 1000:1000 x
        mknod null c 1 3
        stat -c '%n %a %u %g %F' shared/sub shared/f x null
        """)
    with _lx_conf(debian, "[automount]\noptions = metadata\n"):
        cp = debian.lx(["-u", "root", "-e", "sh", "-c", "umask 022; " + script])
    assert cp.returncode == 0, describe(cp)
    assert text(cp).splitlines() == [
        "shared/sub 2755 0 50 directory",
        "shared/f 644 0 50 regular empty file",
        "x 755 1000 1000 regular empty file",
        "null 644 0 0 character special file"], describe(cp)
    assert (d / "null").is_file() and (d / "x").stat().st_mode & 0o7777 == 0o755


def test_drvfs_host_permissions_bind_root_inside(debian):
    if debian.user.is_self and os.geteuid() == 0:
        pytest.skip("the host user is root: every host file is readable")
    d = _host_dir(debian, "drv")
    secret = d / "secret"
    secret.write_text("not for you\n")
    os.chown(secret, 0, 0)
    os.chmod(secret, 0o600)
    public = d / "public"
    public.write_text("read only\n")
    os.chown(public, 0, 0)
    os.chmod(public, 0o644)
    cp = debian.exe("python3", "-c", textwrap.dedent(f"""
        import os
        print(os.getuid())
        for path, flags in (("{_inside(secret)}", os.O_RDONLY), ("{_inside(public)}", os.O_WRONLY),
                            ("{_inside(public)}", os.O_RDONLY)):
            try:
                os.close(os.open(path, flags))
                print("opened")
            except OSError as e:
                print(e.errno)
        """))
    assert cp.returncode == 0, describe(cp)
    assert text(cp).split() == ["0", "13", "13", "opened"], describe(cp)
    assert secret.read_text() == "not for you\n" and public.read_text() == "read only\n"


def test_drvfs_does_not_enter_host_proc_and_dotdot_stays_inside(debian):
    out = debian.out("ls /mnt/host/proc/1 >/dev/null 2>&1 || echo no-host-proc; "
                     "cd /mnt/host/../.. && pwd; cd /mnt/host && cd .. && pwd; "
                     "stat -f -c %T /mnt/host/ | grep -qv tmpfs && echo statfs-ok")
    assert out.split() == ["no-host-proc", "/", "/mnt", "statfs-ok"], out


# -- TmpFs ----------------------------------------------------------------------

def test_shared_memory_and_pool(debian):
    program = textwrap.dedent("""
        import os
        from multiprocessing import Pool, shared_memory

        def work(args):
            name, i = args
            shm = shared_memory.SharedMemory(name=name)
            shm.buf[i] = i * 3
            shm.close()
            return os.getpid()

        if __name__ == "__main__":
            shm = shared_memory.SharedMemory(create=True, size=4096)
            with Pool(3) as pool:
                pids = pool.map(work, [(shm.name, i) for i in range(30)])
            print(list(shm.buf[:30]) == [i * 3 for i in range(30)], len(set(pids)) > 1,
                  os.path.exists("/dev/shm/" + shm.name))
            shm.close()
            shm.unlink()
            print(os.path.exists("/dev/shm/" + shm.name))
        """)
    cp = debian.exe("python3", "-c", program, timeout=180)
    assert cp.returncode == 0, describe(cp)
    assert text(cp).split() == ["True", "True", "True", "False"], describe(cp)


def test_dev_shm_and_run_are_tmpfs_with_linux_metadata(debian):
    out = debian.out("stat -f -c %T /dev/shm /run; stat -c '%a %U' /dev/shm /run /run/lock; "
                     "cd /dev/shm && mkfifo p && ln -s p l && mkdir d && chmod 1750 d && "
                     "touch f && chown nobody:nogroup f && mknod n c 1 3 && echo x > n && "
                     "stat -c '%F %a %U:%G' p l d f n && rm -r p l d f n && ls -A")
    assert out.splitlines() == [
        "tmpfs", "tmpfs", "1777 root", "755 root", "1777 root",
        "fifo 644 root:root", "symbolic link 777 root:root", "directory 1750 root:root",
        "regular empty file 644 nobody:nogroup", "character special file 644 root:root",
    ], out


def test_tmpfs_over_its_size_is_enospc(debian):
    script = textwrap.dedent("""
        set -e
        mkdir -p /mnt/small && mount -t tmpfs -o size=1m small /mnt/small
        df -k /mnt/small | tail -1 | awk '{print $2}'
        python3 - <<'EOF'
        import errno, os
        fd = os.open("/mnt/small/f", os.O_CREAT | os.O_WRONLY, 0o644)
        written = 0
        try:
            while True:
                written += os.write(fd, b"x" * 65536)
        except OSError as e:
            print(written, errno.errorcode[e.errno])
        g = os.open("/mnt/small/g", os.O_CREAT | os.O_WRONLY, 0o644)
        try:
            os.posix_fallocate(g, 0, 4 << 20)
        except OSError as e:
            print("fallocate", errno.errorcode[e.errno])
        EOF
        umount /mnt/small
        """)
    cp = debian.lx(["--cd", "/", "-e", "bash", "-c", script])
    if cp.returncode != 0 and b"Operation not permitted" in cp.stderr:
        pytest.fail("mount as root inside failed: " + describe(cp))
    assert cp.returncode == 0, describe(cp)
    size, (written, err), fall = text(cp).splitlines()[0], text(cp).splitlines()[1].split(), \
        text(cp).splitlines()[2]
    assert size == "1024", describe(cp)
    assert err == "ENOSPC" and int(written) == 1 << 20, describe(cp)
    assert fall == "fallocate ENOSPC", describe(cp)


def test_nothing_of_tmpfs_remains_on_the_host(debian):
    marker = "lxsub-tmpfs-" + uuid.uuid4().hex
    cp = debian.sh(f"echo data > /dev/shm/{marker} && echo data > /run/{marker} && "
                   f"mkdir -p /mnt/m && mount -t tmpfs m /mnt/m && echo data > /mnt/m/{marker} && "
                   f"cat /dev/shm/{marker} /run/{marker} /mnt/m/{marker}")
    assert cp.returncode == 0 and text(cp) == "data\n" * 3, describe(cp)
    for top in ("/dev/shm", "/run", "/tmp", str(debian.runner.root)):
        for dirpath, dirnames, filenames in os.walk(top):
            assert marker not in filenames, f"{marker} left in {dirpath}"


# -- devices and ptys ---------------------------------------------------------------

def test_script_runs_in_a_pty(debian):
    cp = debian.sh("script -qc 'tty; echo in-pty' /dev/null < /dev/null; echo rc=$?")
    assert cp.returncode == 0, describe(cp)
    lines = [l.strip() for l in text(cp).splitlines()]
    assert lines[0].startswith("/dev/pts/") and lines[1:] == ["in-pty", "rc=0"], describe(cp)


def test_openpty_talks_both_ways(debian):
    program = textwrap.dedent("""
        import os, pty, tty
        pid, master = pty.fork()
        if pid == 0:
            line = input()
            print("child got", line, os.isatty(0), os.ttyname(0).startswith("/dev/pts/"),
                  flush=True)
            os._exit(0)
        os.write(master, b"hello\\n")
        out = b""
        while b"child got" not in out or not out.endswith(b"\\n"):
            try:
                chunk = os.read(master, 1024)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        os.waitpid(pid, 0)
        print(out.decode().splitlines()[-1].strip())
        """)
    cp = debian.exe("python3", "-c", program)
    assert cp.returncode == 0, describe(cp)
    assert text(cp).strip() == "child got hello True True", describe(cp)


def test_device_links_and_mknod_devices(debian):
    out = debian.out("readlink /dev/fd /dev/stdin /dev/stdout /dev/stderr; "
                     "{ echo via-fd > /dev/fd/1; } | cat; "   # a pipe of the instance's own
                     "rm -f /root/mynull /root/myzero && mknod /root/mynull c 1 3 && "
                     "mknod /root/myzero c 1 5 && echo x > /root/mynull && "
                     "head -c 2 /root/myzero | od -An -tx1; (echo x > /dev/full) 2>&1 | "
                     "grep -c 'No space'; rm /root/mynull /root/myzero")
    assert out.split() == ["/proc/self/fd", "/proc/self/fd/0", "/proc/self/fd/1",
                           "/proc/self/fd/2", "via-fd", "00", "00", "1"], out


# -- mount / umount ----------------------------------------------------------------------

def test_mount_bind_and_umount_as_root(debian):
    script = textwrap.dedent("""
        set -e
        mkdir -p /mnt/bsrc/sub /mnt/bdst /mnt/t /mnt/p
        echo bound > /mnt/bsrc/sub/f
        mount --bind /mnt/bsrc /mnt/bdst
        cat /mnt/bdst/sub/f
        cd /mnt/bdst/sub && pwd && cd /
        mount -t tmpfs -o size=2m,mode=700 tt /mnt/t
        stat -c '%a' /mnt/t
        mount -t proc proc /mnt/p
        test -e /mnt/p/self/status && echo proc-ok
        grep -E ' /mnt/(bdst|t|p) ' /proc/mounts | awk '{print $2, $3}'
        df -k /mnt/t | tail -1 | awk '{print $2}'
        cd /mnt/t && (umount /mnt/t 2>/dev/null || echo busy) && cd /
        umount /mnt/bdst && umount /mnt/t && umount /mnt/p
        grep -cE ' /mnt/(bdst|t|p) ' /proc/mounts || true
        test -e /mnt/bdst/sub || echo unbound
        """)
    cp = debian.lx(["--cd", "/", "-e", "bash", "-c", script])
    assert cp.returncode == 0, describe(cp)
    assert text(cp).splitlines() == [
        "bound", "/mnt/bdst/sub", "700", "proc-ok",
        "/mnt/bdst lxfs", "/mnt/t tmpfs", "/mnt/p proc", "2048", "busy", "0", "unbound",
    ], describe(cp)


def test_mount_makes_the_types_of_proc_filesystems_the_instance_may_make(debian):
    """mount(2) and /proc/filesystems come from one registry
    (kernel/fs/registry.py): every type it lists that is not the provider's
    own mounts; the rootfs, DrvFs and devtmpfs types and unknown ones are
    ENODEV, as Linux's get_fs_type() failing."""
    program = textwrap.dedent("""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        listed = [line.split()[-1] for line in open("/proc/filesystems")]
        print(" ".join(listed))
        for fstype in listed + ["ext4", "nosuchfs"]:
            where = "/mnt/reg-" + fstype
            os.makedirs(where, exist_ok=True)
            r = libc.mount(b"none", where.encode(), fstype.encode(), 0, None)
            err = ctypes.get_errno()
            shown = any(l.split()[1] == where and l.split()[2] == fstype for l in open("/proc/mounts"))
            print(fstype, r, err if r else "", "shown" if shown else "")
            if r == 0:
                libc.umount2(where.encode(), 0)
        """)
    cp = debian.lx(["--cd", "/", "-e", "python3", "-c", program])
    assert cp.returncode == 0, describe(cp)
    lines = [" ".join(line.split()) for line in text(cp).splitlines()]
    assert lines[0] == "lxfs drvfs tmpfs proc sysfs cgroup2 devtmpfs devpts", describe(cp)
    enodev = str(errno.ENODEV)
    assert lines[1:] == [
        f"lxfs -1 {enodev}", f"drvfs -1 {enodev}", "tmpfs 0 shown", "proc 0 shown",
        "sysfs 0 shown", "cgroup2 0 shown", f"devtmpfs -1 {enodev}", "devpts 0 shown",
        f"ext4 -1 {enodev}", f"nosuchfs -1 {enodev}"], describe(cp)


def test_mount_is_eperm_for_a_non_root_user(debian):
    program = textwrap.dedent("""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        for args in ((b"none", b"/tmp", b"tmpfs", 0, None), (b"/etc", b"/tmp", None, 4096, None)):
            r = libc.mount(*args)
            print(r, ctypes.get_errno())
        print(libc.umount2(b"/proc", 0), ctypes.get_errno())
        """)
    cp = debian.lx(["-u", "nobody", "--cd", "/", "-e", "python3", "-c", program])
    assert cp.returncode == 0, describe(cp)
    assert text(cp).split() == ["-1", "1"] * 3, describe(cp)


def test_sticky_tmp_keeps_another_users_file_from_being_replaced(debian):
    """rename(2) EPERM: in a sticky directory a file may be replaced only
    by its owner, the directory's owner or a privileged process (Linux's
    vfs_rename() runs may_delete() on the target). Natively, uid 1 renaming
    over a file of nobody's in /tmp gets EPERM."""
    name = f"/tmp/sticky-{uuid.uuid4().hex[:8]}"
    cp = debian.lx(["-u", "nobody", "--cd", "/", "-e", "python3", "-c", f"open('{name}', 'w').write('mine')"])
    assert cp.returncode == 0, describe(cp)
    program = textwrap.dedent(f"""
        import errno, os
        open('{name}.x', 'w').write('theirs')
        for how in (os.rename, os.replace):
            try:
                how('{name}.x', '{name}')
            except OSError as e:
                print(errno.errorcode[e.errno])
            else:
                print('replaced')
        os.unlink('{name}.x')
        """)
    cp = debian.lx(["-u", "daemon", "--cd", "/", "-e", "python3", "-c", program])
    assert cp.returncode == 0, describe(cp)
    assert text(cp).split() == ["EPERM", "EPERM"], describe(cp)
    assert debian.out(f"cat {name}; rm {name}") == "mine"


RO_PROGRAM = textwrap.dedent("""
    import errno, os, subprocess
    def run(*argv):
        subprocess.run(argv, check=True)
    def err(f, *a):
        try:
            f(*a)
            return "ok"
        except OSError as e:
            return errno.errorcode[e.errno]
    os.makedirs("/mnt/ro", exist_ok=True)
    run("mount", "-t", "tmpfs", "tt", "/mnt/ro")
    os.mkdir("/mnt/ro/dir")
    with open("/mnt/ro/file", "w") as f:
        f.write("content")
    run("mount", "-o", "remount,ro", "/mnt/ro")
    print("shown", [l.split()[3].split(",")[0] for l in open("/proc/mounts") if l.split()[1] == "/mnt/ro"])
    print("read", open("/mnt/ro/file").read())
    fd = os.open("/mnt/ro/file", os.O_RDONLY)
    print("changes", " ".join([
        err(os.open, "/mnt/ro/new", os.O_CREAT | os.O_WRONLY), err(os.open, "/mnt/ro/file", os.O_WRONLY),
        err(os.open, "/mnt/ro/file", os.O_RDONLY | os.O_TRUNC), err(os.mkdir, "/mnt/ro/d2"),
        err(os.mkdir, "/mnt/ro/dir"), err(os.unlink, "/mnt/ro/file"), err(os.rmdir, "/mnt/ro/dir"),
        err(os.chmod, "/mnt/ro/file", 0o600), err(os.fchmod, fd, 0o600), err(os.chown, "/mnt/ro/file", 1, 1),
        err(os.utime, "/mnt/ro/file"), err(os.link, "/mnt/ro/file", "/mnt/ro/l"),
        err(os.symlink, "x", "/mnt/ro/s"), err(os.rename, "/mnt/ro/file", "/mnt/ro/f2"),
        err(os.truncate, "/mnt/ro/file", 0), err(os.mkfifo, "/mnt/ro/p"),
        err(os.setxattr, "/mnt/ro/file", "user.a", b"1")]))
    print("access", os.access("/mnt/ro/file", os.R_OK), os.access("/mnt/ro/file", os.W_OK))
    run("mount", "-o", "remount,rw", "/mnt/ro")
    os.unlink("/mnt/ro/file")
    print("rw again", sorted(os.listdir("/mnt/ro")))
    run("umount", "/mnt/ro")
    """)


def test_a_tmpfs_remounted_read_only_refuses_every_change(debian):
    """mount(2) MS_REMOUNT|MS_RDONLY (mount -o remount,ro; LTP's .needs_rofs
    tests): reads go on; every change is EROFS (mnt_want_write), an existing
    name's EEXIST before it; /proc/mounts says ro; a remount rw undoes it."""
    cp = debian.lx(["--cd", "/", "-e", "python3", "-c", RO_PROGRAM])
    assert cp.returncode == 0, describe(cp)
    lines = text(cp).splitlines()
    assert lines[0] == "shown ['ro']", describe(cp)
    assert lines[1] == "read content", describe(cp)
    changes = lines[2].split()[1:]
    assert changes == ["EROFS"] * 4 + ["EEXIST"] + ["EROFS"] * 12, describe(cp)
    assert lines[3:] == ["access True False", "rw again ['dir']"], describe(cp)


XATTR_PROGRAM = textwrap.dedent("""
    import errno, os, socket
    def err(f, *a):
        try:
            f(*a)
            return "ok"
        except OSError as e:
            return errno.errorcode[e.errno]
    os.makedirs("/xattr-kinds", exist_ok=True)
    os.chdir("/xattr-kinds")
    for name in ("file", "dir", "chr", "fifo", "sock"):
        if os.path.lexists(name):
            os.unlink(name) if name != "dir" else os.rmdir(name)
    open("file", "w").close()
    os.mkdir("dir")
    os.mknod("chr", 0o600 | 0o020000, os.makedev(1, 3))
    os.mkfifo("fifo")
    s = socket.socket(socket.AF_UNIX)
    s.bind("sock")
    print(" ".join(f"{n}:{err(os.setxattr, n, 'user.k', b'v')}"
                   f":{err(os.getxattr, n, 'user.k')}"
                   for n in ("file", "dir", "chr", "fifo", "sock")))
    """)


def test_user_xattrs_belong_to_files_and_directories(debian):
    """xattr_permission: user.* attributes on a device, FIFO or socket are
    EPERM to set and ENODATA to read (VolFs keeps those as plain host files,
    which would take them; LTP setxattr02)."""
    cp = debian.lx(["--cd", "/", "-e", "python3", "-c", XATTR_PROGRAM])
    assert cp.returncode == 0, describe(cp)
    assert text(cp).split() == ["file:ok:ok", "dir:ok:ok", "chr:EPERM:ENODATA", "fifo:EPERM:ENODATA",
                                "sock:EPERM:ENODATA"], describe(cp)


def test_mount_on_a_proc_fd_link_itself_is_enoent(debian):
    """A /proc/<pid>/fd/N entry is no mount point (Linux d80b065bb172,
    LTP mount08): a target that leads to the link itself (through an
    O_PATH|O_NOFOLLOW descriptor of it) is ENOENT, while a bind over the
    file a descriptor names, reached through /proc/self/fd/N, still
    works. Before, the first bind succeeded."""
    program = textwrap.dedent("""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        os.makedirs("/mnt/m8", exist_ok=True)
        for name in ("foo", "bar"):
            open("/mnt/m8/" + name, "w").close()
        fd = os.open("/mnt/m8/foo", os.O_RDONLY | os.O_NONBLOCK)
        link = os.open(f"/proc/self/fd/{fd}", os.O_PATH | os.O_NOFOLLOW)
        MS_BIND = 4096
        r = libc.mount(b"/mnt/m8/bar", f"/proc/{os.getpid()}/fd/{link}".encode(), b"", MS_BIND, None)
        print("link", r, ctypes.get_errno() if r else 0)
        r = libc.mount(b"/mnt/m8/bar", f"/proc/self/fd/{fd}".encode(), b"", MS_BIND, None)
        print("file", r, ctypes.get_errno() if r else 0)
        if r == 0:
            libc.umount2(b"/mnt/m8/foo", 0)
        """)
    cp = debian.lx(["--cd", "/", "-e", "python3", "-c", program])
    assert cp.returncode == 0, describe(cp)
    assert text(cp).splitlines() == [f"link -1 {errno.ENOENT}", "file 0 0"], describe(cp)
