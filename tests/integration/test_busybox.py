"""Real workloads on the BusyBox fixture, as root and as an unprivileged host user."""

from __future__ import annotations

import os
import stat

import pytest

from tests.integration.distros import describe


def text(cp) -> str:
    return cp.stdout.decode(errors="replace")


def test_echo(busybox):
    cp = busybox.sh("echo hello world")
    assert cp.returncode == 0, describe(cp)
    assert text(cp) == "hello world\n"


def test_exec_directly(busybox):
    cp = busybox.exe("echo", "a b", "c")
    assert cp.returncode == 0, describe(cp)
    assert text(cp) == "a b c\n"


def test_pipes(busybox):
    cp = busybox.sh("printf 'c\\na\\nb\\n' | sort | tr a-z A-Z | head -n 2")
    assert cp.returncode == 0, describe(cp)
    assert text(cp) == "A\nB\n"


def test_redirections(busybox):
    cp = busybox.sh(
        "rm -rf /tmp/redir && mkdir /tmp/redir && cd /tmp/redir && "
        "echo one > f && echo two >> f && cat < f > g && "
        "ls /nonexistent 2> err; test -s err && echo err-ok; "
        "wc -l < g; cat g")
    assert cp.returncode == 0, describe(cp)
    assert text(cp).split() == ["err-ok", "2", "one", "two"]


def test_redirection_visible_on_host(busybox):
    cp = busybox.sh("echo from-inside > /tmp/hostvisible")
    assert cp.returncode == 0, describe(cp)
    assert (busybox.rootfs / "tmp" / "hostvisible").read_text() == "from-inside\n"


def test_subshells_and_command_substitution(busybox):
    cp = busybox.sh("x=outer; (x=inner; echo $x; exit 3); echo status=$? x=$x; "
                    "echo \"sub=$(echo nested $(echo deeper))\"")
    assert cp.returncode == 0, describe(cp)
    assert text(cp) == "inner\nstatus=3 x=outer\nsub=nested deeper\n"


def test_ls_root(busybox):
    cp = busybox.sh("ls /")
    assert cp.returncode == 0, describe(cp)
    names = text(cp).split()
    for expected in ("bin", "etc", "proc", "tmp", "usr"):
        assert expected in names, describe(cp)


def test_id_is_root(busybox):
    cp = busybox.exe("id")
    assert cp.returncode == 0, describe(cp)
    assert text(cp).startswith("uid=0(root) gid=0(root)"), describe(cp)


@pytest.mark.parametrize("command,status", [
    ("exit 7", 7),
    ("exit 0", 0),
    ("false", 1),
    ("kill -9 $$", 128 + 9),
    ("kill -TERM $$", 128 + 15),
])
def test_exit_status_passthrough(busybox, command, status):
    cp = busybox.sh(command)
    assert cp.returncode == status, describe(cp)


def test_missing_command_exits_127(busybox):
    cp = busybox.exe("nosuch")
    assert cp.returncode == 127, describe(cp)
    err = cp.stderr.decode(errors="replace").strip()
    assert err and len(err.splitlines()) == 1, describe(cp)
    assert "nosuch" in err, describe(cp)


def test_non_elf_executable_exits_126(busybox):
    cp = busybox.sh("printf 'just some text\\nno shebang here\\n' > /tmp/notelf && "
                    "chmod +x /tmp/notelf")
    assert cp.returncode == 0, describe(cp)
    cp = busybox.exe("/tmp/notelf")
    assert cp.returncode == 126, describe(cp)
    err = cp.stderr.decode(errors="replace").strip()
    assert err and len(err.splitlines()) == 1, describe(cp)
    assert "ENOEXEC" in err and "/tmp/notelf" in err, describe(cp)


def test_32bit_elf_exits_126(busybox):
    # A minimal ELFCLASS32 i386 header: enough for the loader to refuse it.
    hdr = bytearray(52)
    hdr[0:4] = b"\x7fELF"
    hdr[4], hdr[5], hdr[6] = 1, 1, 1            # ELFCLASS32, little endian, version
    hdr[16:18] = (2).to_bytes(2, "little")      # ET_EXEC
    hdr[18:20] = (3).to_bytes(2, "little")      # EM_386
    hdr[20:24] = (1).to_bytes(4, "little")
    cp = busybox.sh("cat > /tmp/elf32 && chmod +x /tmp/elf32", input=bytes(hdr))
    assert cp.returncode == 0, describe(cp)
    cp = busybox.exe("/tmp/elf32")
    assert cp.returncode == 126, describe(cp)
    err = cp.stderr.decode(errors="replace").strip()
    assert err and len(err.splitlines()) == 1, describe(cp)
    assert "ENOEXEC" in err, describe(cp)


def test_ps_shows_init_as_pid_1(busybox):
    cp = busybox.sh("ps")
    assert cp.returncode == 0, describe(cp)
    rows = [line.split(None, 2) for line in text(cp).splitlines()[1:]]
    by_pid = {int(r[0]): r[2] for r in rows if r and r[0].isdigit()}
    assert by_pid.get(1) == "/init", describe(cp)
    assert os.getpid() not in by_pid, describe(cp)  # no host process shows through


def test_stdin_piping(busybox):
    cp = busybox.exe("sort", "-r", input=b"a\nb\n")
    assert cp.returncode == 0, describe(cp)
    assert text(cp) == "b\na\n"


def test_stdin_piping_through_shell(busybox):
    data = b"".join(b"line %d\n" % i for i in range(5000))
    cp = busybox.sh("wc -l", input=data)
    assert cp.returncode == 0, describe(cp)
    assert text(cp).strip() == "5000"


def test_metadata_persists_and_host_files_stay_the_users(busybox):
    cp = busybox.sh(
        "rm -rf /tmp/meta && mkdir /tmp/meta && echo data > /tmp/meta/f && "
        "mknod /tmp/meta/n c 1 3 && chown 1000:1000 /tmp/meta/f && chmod 4755 /tmp/meta/f")
    assert cp.returncode == 0, describe(cp)

    # A second, separate lx run sees what the first one set.
    cp = busybox.sh("ls -ln /tmp/meta")
    assert cp.returncode == 0, describe(cp)
    rows = {line.split()[-1]: line.split() for line in text(cp).splitlines()
            if line and not line.startswith("total")}
    f, n = rows.get("f"), rows.get("n")
    assert f and n, describe(cp)
    assert f[0] == "-rwsr-xr-x" and f[2:4] == ["1000", "1000"], describe(cp)
    assert n[0].startswith("c") and n[2:4] == ["0", "0"], describe(cp)
    assert n[4].rstrip(",") == "1" and n[5] == "3", describe(cp)

    cp = busybox.sh("stat -c '%u:%g %a %t,%T' /tmp/meta/f /tmp/meta/n")
    assert cp.returncode == 0, describe(cp)
    assert text(cp).split("\n")[:2] == ["1000:1000 4755 0,0", "0:0 644 1,3"], describe(cp)

    # On the host the files belong to the user who ran lx, with no setuid
    # bit and no device node: Linux metadata lives elsewhere (VolFs).
    host_dir = busybox.rootfs / "tmp" / "meta"
    for name in ("f", "n"):
        st = os.lstat(host_dir / name)
        assert st.st_uid == busybox.user.uid, (name, st)
        assert st.st_gid == busybox.user.gid, (name, st)
        assert stat.S_ISREG(st.st_mode), (name, oct(st.st_mode))
        assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID), (name, oct(st.st_mode))
    assert (host_dir / "f").read_text() == "data\n"
