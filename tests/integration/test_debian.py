"""Real workloads on the Debian bookworm fixture, as root and as an unprivileged host user."""

from __future__ import annotations

import os
import textwrap

import pytest

from tests.fixtures.rootfs import LOCAL_DEB
from tests.integration.distros import describe

pytestmark = [pytest.mark.debian, pytest.mark.slow]


def text(cp) -> str:
    return cp.stdout.decode(errors="replace")


def test_bash_script_with_pipes_and_subshells(debian):
    script = textwrap.dedent(r"""
        set -euo pipefail
        count() { wc -l | tr -d ' '; }
        words=$(printf '%s\n' delta alpha charlie bravo | sort | tr '\n' ' ')
        echo "sorted: ${words% }"
        (cd /etc && echo "in subshell: $PWD")
        echo "after subshell: $PWD"
        n=$(seq 1 100 | grep -c 7)
        echo "sevens: $n"
        arr=(x y z); echo "array: ${#arr[@]} ${arr[1]}"
        { echo a; echo b; } | count
        while read -r line; do echo "read: $line"; done <<< "here-string"
        diff <(echo same) <(echo same) && echo "process substitution ok"
        ( exit 4 ) || echo "subshell failed with $?"
        """)
    cp = debian.lx(["--cd", "/", "-e", "bash", "-c", script])
    assert cp.returncode == 0, describe(cp)
    assert text(cp).splitlines() == [
        "sorted: alpha bravo charlie delta",
        "in subshell: /etc",
        "after subshell: /",
        "sevens: 19",
        "array: 3 y",
        "2",
        "read: here-string",
        "process substitution ok",
        "subshell failed with 4",
    ], describe(cp)


def test_bash_script_file(debian):
    cp = debian.sh("mkdir -p /tmp/scripts && cat > /tmp/scripts/s.sh && chmod +x /tmp/scripts/s.sh",
                   input=b"#!/bin/bash\necho \"args: $# $1\"\nexit 5\n")
    assert cp.returncode == 0, describe(cp)
    cp = debian.exe("/tmp/scripts/s.sh", "first", "second")
    assert cp.returncode == 5, describe(cp)
    assert text(cp) == "args: 2 first\n"


def test_coreutils_on_a_real_tree(debian):
    cp = debian.sh("find /usr/share -name '*.txt' | sort | head")
    assert cp.returncode == 0, describe(cp)
    lines = text(cp).splitlines()
    assert 1 <= len(lines) <= 10, describe(cp)
    assert lines == sorted(lines) and all(l.startswith("/usr/share/") and l.endswith(".txt")
                                          for l in lines), describe(cp)
    # The same, cross-checked against the host view of the tree.
    host = sorted("/" + os.path.relpath(os.path.join(d, f), debian.rootfs)
                  for d, _, files in os.walk(debian.rootfs / "usr" / "share")
                  for f in files if f.endswith(".txt"))
    # find also reports symlinks named *.txt: compare only the regular files.
    assert set(lines) <= set(host) | set(_symlinks_named_txt(debian)), describe(cp)

    cp = debian.sh("du -s /usr/bin | cut -f1; ls /usr/bin | wc -l; stat -c %F /usr/bin/ls /bin")
    assert cp.returncode == 0, describe(cp)
    du, count, kind_ls, kind_bin = text(cp).splitlines()
    assert int(du) > 1000 and int(count) > 100, describe(cp)
    assert kind_ls == "regular file" and kind_bin == "symbolic link", describe(cp)


def _symlinks_named_txt(debian):
    for d, dirs, files in os.walk(debian.rootfs / "usr" / "share"):
        for f in files + dirs:
            if f.endswith(".txt") and os.path.islink(os.path.join(d, f)):
                yield "/" + os.path.relpath(os.path.join(d, f), debian.rootfs)


def test_grep_sed_awk(debian):
    cp = debian.sh(
        "grep -E '^(root|daemon):' /etc/passwd | sed -e 's/:.*//' | sort; "
        "awk -F: '$3 == 0 { print \"uid0=\" $1 }' /etc/passwd; "
        "printf 'a 1\\nb 2\\nc 3\\n' | awk '{ s += $2 } END { print \"sum=\" s }'; "
        "echo hello | sed 's/l/L/g'; "
        "grep -c . /etc/os-release >/dev/null && grep -q bookworm /etc/os-release && echo bookworm")
    assert cp.returncode == 0, describe(cp)
    assert text(cp).splitlines() == ["daemon", "root", "uid0=root", "sum=6", "heLLo",
                                     "bookworm"], describe(cp)


def test_tar_round_trip_of_etc(debian):
    cp = debian.sh(timeout=60, command=textwrap.dedent("""\
        set -e
        rm -rf /tmp/tarrt && mkdir /tmp/tarrt && cd /tmp/tarrt
        tar -czf etc.tgz -C / etc
        mkdir out && tar -xzf etc.tgz -C out
        n=0
        cd /etc
        find . -type f > /tmp/tarrt/files
        while read -r f; do cmp "$f" "/tmp/tarrt/out/etc/$f"; n=$((n+1)); done < /tmp/tarrt/files
        echo "compared $n"
        find . | sort > /tmp/tarrt/a
        (cd /tmp/tarrt/out/etc && find . | sort) > /tmp/tarrt/b
        cmp /tmp/tarrt/a /tmp/tarrt/b && echo "same tree"
        stat -c '%a %u %h' /etc/shadow; stat -c '%a %u %h' /tmp/tarrt/out/etc/shadow
        """))
    assert cp.returncode == 0, describe(cp)
    out = text(cp).splitlines()
    assert out[0].startswith("compared ") and int(out[0].split()[1]) > 50, describe(cp)
    assert out[1] == "same tree", describe(cp)
    assert out[2] == out[3], describe(cp)  # tar kept /etc/shadow's mode and owner


def test_gzip(debian):
    cp = debian.sh("set -e; rm -rf /tmp/gz; mkdir /tmp/gz; cd /tmp/gz; "
                   "seq 1 200000 > data; cp data orig; gzip -9 data; test ! -e data; "
                   "test -s data.gz; gzip -t data.gz; gunzip data.gz; cmp data orig; "
                   "gzip -c orig | gzip -dc | cmp - orig && echo ok")
    assert cp.returncode == 0, describe(cp)
    assert text(cp) == "ok\n"


def test_id(debian):
    cp = debian.exe("id")
    assert cp.returncode == 0, describe(cp)
    assert text(cp).startswith("uid=0(root) gid=0(root) groups=0(root)"), describe(cp)
    cp = debian.lx(["-u", "nobody", "-e", "id", "-un"])
    assert cp.returncode == 0, describe(cp)
    assert text(cp) == "nobody\n", describe(cp)


def test_python3(debian):
    program = textwrap.dedent("""\
        import os, subprocess, sys, tempfile, threading
        print("pid1", os.getpid() > 1, os.getuid())
        print("child", subprocess.run(["echo", "from child"], capture_output=True,
                                      text=True, check=True).stdout.strip())
        results = []
        lock = threading.Lock()
        def work(i):
            s = sum(range(10000 * (i + 1)))
            with lock:
                results.append(i)
        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads: t.start()
        for t in threads: t.join()
        print("threads", sorted(results))
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "f")
            with open(p, "w") as f:
                f.write("temp")
            print("tempfile", open(p).read(), d.startswith("/tmp/"))
        print("exists after", os.path.exists(d))
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(w, b"forked"); os._exit(3)
        _, status = os.waitpid(pid, 0)
        print("fork", os.read(r, 100).decode(), os.waitstatus_to_exitcode(status))
        """)
    cp = debian.exe("python3", "-c", program)
    assert cp.returncode == 0, describe(cp)
    assert text(cp).splitlines() == [
        "pid1 True 0",
        "child from child",
        "threads [0, 1, 2, 3]",
        "tempfile temp True",
        "exists after False",
        "fork forked 3",
    ], describe(cp)


def test_perl(debian):
    cp = debian.exe("perl", "-e",
                    'my %h = map { $_ => length } qw(a bb ccc); '
                    'print join(",", map { "$_=$h{$_}" } sort keys %h), "\\n"; '
                    'open(my $f, "<", "/etc/hostname") or die; print "open ok\\n";')
    assert cp.returncode == 0, describe(cp)
    assert text(cp) == "a=1,bb=2,ccc=3\nopen ok\n", describe(cp)


def test_gcc_compiles_and_runs(debian):
    source = textwrap.dedent("""\
        #include <stdio.h>
        #include <unistd.h>
        int main(int argc, char **argv) {
            printf("hello from gcc, argc=%d, uid=%d\\n", argc, (int)getuid());
            return 42;
        }
        """)
    cp = debian.sh("set -e; rm -rf /tmp/cc; mkdir /tmp/cc; cd /tmp/cc; "
                   "cat > hello.c; gcc -O2 -Wall -o hello hello.c; echo built",
                   input=source.encode(), timeout=300)
    assert cp.returncode == 0, describe(cp)
    cp = debian.exe("/tmp/cc/hello", "x")
    assert cp.returncode == 42, describe(cp)
    assert text(cp) == "hello from gcc, argc=2, uid=0\n", describe(cp)


def test_git(debian):
    cp = debian.sh(textwrap.dedent("""\
        set -e
        rm -rf /tmp/repo && mkdir /tmp/repo && cd /tmp/repo
        G="git -c user.name=Tester -c user.email=tester@example.org -c init.defaultBranch=main"
        $G init -q
        echo one > a.txt && $G add a.txt && $G commit -q -m first
        echo two >> a.txt && mkdir sub && echo three > sub/b.txt
        $G add -A && $G commit -q -m second
        $G log --format='%an <%ae> %s'
        $G status --porcelain | wc -l
        $G show HEAD:sub/b.txt
        $G rev-list --count HEAD
        """), timeout=300)
    assert cp.returncode == 0, describe(cp)
    assert text(cp).splitlines() == [
        "Tester <tester@example.org> second",
        "Tester <tester@example.org> first",
        "0",
        "three",
        "2",
    ], describe(cp)


def test_ps_ef_shows_only_the_instance(debian):
    cp = debian.sh("ps -ef")
    assert cp.returncode == 0, describe(cp)
    lines = text(cp).splitlines()
    assert lines[0].split()[:3] == ["UID", "PID", "PPID"], describe(cp)
    rows = [line.split(None, 7) for line in lines[1:]]
    by_pid = {int(r[1]): r for r in rows}
    assert 1 in by_pid and by_pid[1][7] == "/init", describe(cp)
    assert by_pid[1][2] == "0", describe(cp)
    assert os.getpid() not in by_pid, describe(cp)
    assert os.getppid() not in by_pid, describe(cp)
    # Only the instance's processes: init, the shell, ps itself.
    assert any("ps -ef" in r[7] for r in rows), describe(cp)
    assert len(rows) <= 4, describe(cp)


def test_dpkg_install_local_deb(debian, local_deb):
    tmp = debian.rootfs / "tmp"
    cp = debian.sh(f"cat > /tmp/{LOCAL_DEB.filename}", input=local_deb.read_bytes())
    assert cp.returncode == 0, describe(cp)
    assert (tmp / LOCAL_DEB.filename).read_bytes() == local_deb.read_bytes()

    cp = debian.sh(f"dpkg -i /tmp/{LOCAL_DEB.filename}", timeout=300)
    assert cp.returncode == 0, describe(cp)

    cp = debian.exe(LOCAL_DEB.command)
    assert cp.returncode == 0, describe(cp)
    assert text(cp).startswith(LOCAL_DEB.output + "\n"), describe(cp)

    cp = debian.sh(f"dpkg -s {LOCAL_DEB.package} | grep '^Status:'; cat {LOCAL_DEB.stamp}; "
                   f"ls -ln {LOCAL_DEB.chowned}; stat -c '%u:%g %a' {LOCAL_DEB.chowned}")
    assert cp.returncode == 0, describe(cp)
    status, stamp, ls, st = text(cp).splitlines()
    assert status == "Status: install ok installed", describe(cp)
    assert stamp + "\n" == LOCAL_DEB.stamp_content, describe(cp)
    uid, gid = LOCAL_DEB.chowned_owner
    assert ls.split()[0] == "-rw-r-----" and ls.split()[2:4] == [str(uid), str(gid)], describe(cp)
    assert st == f"{uid}:{gid} {LOCAL_DEB.chowned_mode:o}", describe(cp)

    # On the host it is the invoking user's file.
    host = debian.rootfs / LOCAL_DEB.chowned.lstrip("/")
    assert os.lstat(host).st_uid == debian.user.uid
