"""The provider's Linux view, checked from inside with the distro's own programs:
execve and the auxiliary vector, PIDs and orphans, identity, uname, devices,
and no stray process once the provider is gone."""

from __future__ import annotations

import os
import textwrap
import time

import pytest

from tests.integration.distros import describe

AUXV_C = textwrap.dedent("""\
    #include <stdio.h>
    #include <sys/auxv.h>
    #include <unistd.h>
    int main(int argc, char **argv) {
        char exe[256]; ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
        exe[n > 0 ? n : 0] = 0;
        printf("%s %s %s\\n", argv[0], (char *)getauxval(AT_EXECFN), exe);
        return 0;
    }
    """)


def test_execve_argv0_auxv_and_proc_self_exe(debian):
    """Static and dynamic programs, through a relative path and a symlink."""
    cp = debian.sh(
        "set -e; mkdir -p /tmp/ax && cd /tmp/ax && cat > ax.c && "
        "gcc -o dyn ax.c && gcc -static -o sta ax.c && ln -sf dyn link && "
        "./dyn && /tmp/ax/sta && ./link", input=AUXV_C.encode(), timeout=180)
    assert cp.returncode == 0, describe(cp)
    assert cp.stdout.decode().splitlines() == [
        "./dyn /tmp/ax/dyn /tmp/ax/dyn",
        "/tmp/ax/sta /tmp/ax/sta /tmp/ax/sta",
        "./link /tmp/ax/dyn /tmp/ax/dyn",
    ], describe(cp)


def test_shebang_script_sees_its_own_path_as_dollar0(busybox):
    cp = busybox.sh("printf '#!/bin/sh\\necho \"$0 $1\"\\n' > /tmp/s.sh && chmod +x /tmp/s.sh "
                    "&& /tmp/s.sh arg && cd /tmp && ./s.sh two")
    assert cp.returncode == 0, describe(cp)
    assert cp.stdout.decode().splitlines() == ["/tmp/s.sh arg", "./s.sh two"], describe(cp)


def test_orphans_are_reparented_to_init(debian):
    cp = debian.sh("(sleep 30 & echo $! > /tmp/orphan); sleep 0.3; "
                   "ps -o ppid= -p $(cat /tmp/orphan)")
    assert cp.returncode == 0, describe(cp)
    assert cp.stdout.decode().split() == ["1"], describe(cp)


def test_pids_are_the_instance_own(debian):
    program = ("import os; p = os.fork()\n"
               "if p == 0:\n    print('child', os.getpid(), os.getppid(), flush=True); os._exit(5)\n"
               "q, st = os.waitpid(p, 0); print('parent', p == q, os.WEXITSTATUS(st), os.getpid())\n")
    cp = debian.exe("python3", "-c", program)
    assert cp.returncode == 0, describe(cp)
    lines = dict(line.split(" ", 1) for line in cp.stdout.decode().splitlines())
    child_pid, child_ppid = map(int, lines["child"].split())
    same, status, parent_pid = lines["parent"].split()
    assert same == "True" and status == "5", describe(cp)
    assert child_ppid == int(parent_pid) and child_pid < 100 and int(parent_pid) < 100, describe(cp)


def test_sessions_and_process_groups(debian):
    cp = debian.sh("setsid -w sh -c 'echo $$; ps -o pid=,pgid=,sid= -p $$'")
    assert cp.returncode == 0, describe(cp)
    lines = cp.stdout.decode().split()
    assert lines[0] == lines[1] == lines[2] == lines[3], describe(cp)


def _sigwaitinfo_from_a_child(debian, reap_first: bool) -> list[str]:
    """A forked child sends its parent SIGUSR1; the parent takes it with
    sigwaitinfo, after reaping the child or before; prints whether si_pid
    is the child's pid, and si_uid and si_code."""
    wait_then_take = ("os.waitpid(p, 0); info = signal.sigwaitinfo({signal.SIGUSR1})" if reap_first
                      else "info = signal.sigwaitinfo({signal.SIGUSR1}); os.waitpid(p, 0)")
    program = ("import os, signal\n"
               "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})\n"
               "p = os.fork()\n"
               "if p == 0:\n    os.kill(os.getppid(), signal.SIGUSR1); os._exit(0)\n"
               f"{wait_then_take}\n"
               "print(info.si_pid == p, info.si_uid, info.si_code)\n")
    cp = debian.exe("python3", "-c", program)
    assert cp.returncode == 0, describe(cp)
    return cp.stdout.decode().split()


def test_signal_sender_pid_is_virtual(debian):
    assert _sigwaitinfo_from_a_child(debian, reap_first=False) == ["True", "0", "0"]


def test_signal_sender_pid_outlives_the_sender(debian):
    """si_pid is the sender's pid when it sent the signal, also once the
    sender has exited and been reaped (LTP rt_sigtimedwait01)."""
    assert _sigwaitinfo_from_a_child(debian, reap_first=True) == ["True", "0", "0"]


def test_programs_start_with_every_signal_at_its_default(debian):
    """A program started in the instance ignores no signal (as one Linux's
    init starts): not SIGXFSZ, which the provider's Python ignores and which
    an ignored signal would keep across execve (LTP kill11: a process
    sent SIGXFSZ ends with a core dump)."""
    cp = debian.exe("grep", "SigIgn", "/proc/self/status")
    assert cp.returncode == 0, describe(cp)
    assert cp.stdout.decode().split() == ["SigIgn:", "0" * 16], describe(cp)


LANDLOCK_PY = textwrap.dedent("""\
    import ctypes, errno, os
    libc = ctypes.CDLL(None, use_errno=True)
    attr = ctypes.c_uint64(1)                       # handled: LANDLOCK_ACCESS_FS_EXECUTE
    ruleset = libc.syscall(444, ctypes.byref(attr), 8, 0)
    if ruleset < 0:
        print("no landlock", ctypes.get_errno()); raise SystemExit
    def restrict():
        r = libc.syscall(446, ruleset, 0)
        return r if r == 0 else errno.errorcode[ctypes.get_errno()]
    os.setgroups([]); os.setgid(65534); os.setuid(65534)     # no CAP_SYS_ADMIN
    print("without no_new_privs", restrict())
    libc.prctl(38, 1, 0, 0, 0)                               # PR_SET_NO_NEW_PRIVS
    print("with no_new_privs", restrict())
    """)


def test_landlock_restrict_self_needs_no_new_privs(debian):
    """landlock_restrict_self(2) without CAP_SYS_ADMIN needs the thread's
    no_new_privs (EPERM), the program's own bit, not the host's (LTP
    landlock03)."""
    assert _landlock_lines(debian, LANDLOCK_PY, "the host kernel has no Landlock") == [
        "without no_new_privs EPERM", "with no_new_privs 0"]


LANDLOCK_SCOPE_PY = textwrap.dedent("""\
    import ctypes, errno, os, socket, struct
    libc = ctypes.CDLL(None, use_errno=True)
    def call(nr, *args):
        r = libc.syscall(nr, *args)
        return r if r >= 0 else -ctypes.get_errno()
    if call(444, None, 0, 1) < 6:                   # LANDLOCK_CREATE_RULESET_VERSION
        print("no landlock scopes"); raise SystemExit
    def scope():                                    # scoped: LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET
        attr = struct.pack("<QQQ", 0, 0, 1)
        fd = call(444, attr, len(attr), 0)
        libc.prctl(38, 1, 0, 0, 0)                  # PR_SET_NO_NEW_PRIVS
        assert call(446, fd, 0) == 0
        os.close(fd)
    keep = []
    def connect(name, where):
        if where == "client":
            scope()
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(name)
        except OSError as e:
            return errno.errorcode[e.errno]
        keep.append(s)                              # open until the server read SO_PEERCRED
        return "ok"
    def trial(where):                               # in a child of its own, as LTP landlock09
        r, w = os.pipe()
        ready_r, ready_w = os.pipe()
        peer_r, peer_w = os.pipe()
        asked_r, asked_w = os.pipe()
        if os.fork() == 0:
            if where == "both":
                scope()
            name = b"\\0lxsub-scope-" + where.encode()
            client = os.fork()
            if client == 0:                         # the client, before the server restricts itself
                os.close(ready_w); os.close(asked_w)
                got = os.read(ready_r, 1) and connect(name, where)
                os.write(w, (got or "no-server").encode())
                os.read(asked_r, 1); os._exit(0)
            if where == "server":
                scope()
            try:
                server = socket.socket(socket.AF_UNIX)
                server.bind(name); server.listen(1)
                os.write(ready_w, b"x")
                if where != "client":               # SO_PEERCRED names the client
                    conn = server.accept()[0]
                    cred = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
                    os.write(peer_w, b"" if struct.unpack("<i", cred[:4])[0] == client else b"-peer")
            finally:
                os.close(ready_w); os.close(asked_w)
                os.wait(); os._exit(0)
        os.close(w); os.close(peer_w); os.close(asked_w); os.wait()
        return os.read(r, 100).decode() + os.read(peer_r, 100).decode()
    print(" ".join(where + " " + trial(where) for where in ("client", "server", "both")))
    """)


def test_landlock_scopes_abstract_unix_sockets(debian):
    """LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET (ABI 6): a scoped client may not
    connect to an abstract socket made outside its domain (EPERM); a
    client outside a scoped server's domain may, and so may one in the
    same domain (LTP landlock09); the server's SO_PEERCRED names the
    client. Before, the scoped client's connect was the provider's and
    succeeded."""
    assert _landlock_lines(debian, LANDLOCK_SCOPE_PY, "the host kernel has no Landlock scopes") == [
        "client EPERM server ok both ok"]


def _landlock_lines(debian, program: str, missing: str) -> list[str]:
    """The lines a Landlock probe prints as root in the instance; a skip
    (with `missing`) where the host kernel lacks what it needs."""
    cp = debian.lx(["-u", "root", "-e", "python3", "-c", program], timeout=60)
    assert cp.returncode == 0, describe(cp)
    if cp.stdout.startswith(b"no landlock"):
        pytest.skip(missing)
    return cp.stdout.decode().splitlines()


LANDLOCK_WORK_PY = textwrap.dedent("""\
    import ctypes, errno, os, socket, struct
    libc = ctypes.CDLL(None, use_errno=True)
    def call(nr, *args):
        r = libc.syscall(nr, *args)
        return r if r >= 0 else -ctypes.get_errno()
    def ruleset(fs, net):                           # landlock_create_ruleset (ABI 4 attr)
        attr = struct.pack("<QQ", fs, net)
        return call(444, attr, len(attr), 0)
    def restrict(fd):
        libc.prctl(38, 1, 0, 0, 0)                  # PR_SET_NO_NEW_PRIVS
        assert call(446, fd, 0) == 0
    def outcome(f):
        try:
            f(); return "ok"
        except OSError as e:
            return errno.errorcode[e.errno]
    def in_child(f):                                # each restriction in a child of its own
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(w, f().encode()); os._exit(0)
        os.close(w); os.waitpid(pid, 0)
        return os.read(r, 200).decode()
    if call(444, None, 0, 1) < 4:                   # LANDLOCK_CREATE_RULESET_VERSION
        print("no landlock net"); raise SystemExit
    def files():                                    # handled: LANDLOCK_ACCESS_FS_WRITE_FILE, no rule
        restrict(ruleset(1 << 1, 0))
        return " ".join([outcome(lambda: os.close(os.open("/dev/null", os.O_WRONLY))),
                         outcome(lambda: os.close(os.open("/etc/hostname", os.O_RDONLY)))])
    print("files", in_child(files))
    def ports():                                    # handled: BIND_TCP, one port allowed
        free = socket.socket(); free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]; free.close()
        fd = ruleset(0, 1)
        assert call(445, fd, 2, struct.pack("<QQ", 1, port), 0) == 0   # LANDLOCK_RULE_NET_PORT
        restrict(fd)
        def bind(p):
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", p))
            finally:
                s.close()
        def bind_in_child(p):                       # the domain is inherited by fork
            return in_child(lambda: outcome(lambda: bind(p)))
        return " ".join([outcome(lambda: bind(port)), outcome(lambda: bind(port + 1)),
                         bind_in_child(port + 1)])
    print("ports", in_child(ports))
    """)


def test_landlock_holds_for_the_providers_work(debian):
    """Opens, binds and connects the provider does for a Landlock-restricted
    thread are checked against the thread's domain, not the provider's
    (none): a write open of /dev/null and a bind to a port the rules leave
    out are EACCES, in the thread and in its children (LTP landlock07,
    landlock08)."""
    assert _landlock_lines(debian, LANDLOCK_WORK_PY, "the host kernel has no Landlock network rules") == [
        "files EACCES ok", "ports ok EACCES EACCES"]


ACCT_PY = textwrap.dedent("""\
    import ctypes, os, struct
    libc = ctypes.CDLL(None, use_errno=True)
    def acct(path):
        r = libc.acct(path)
        return r if r == 0 else os.strerror(ctypes.get_errno())
    open("/tmp/pacct", "wb").close()
    print("on", acct(b"/tmp/pacct"), "dir", acct(b"/tmp"), flush=True)
    child = os.fork()
    if child == 0:
        libc.prctl(15, b"acctprobe", 0, 0, 0)          # PR_SET_NAME
        os._exit(3)
    os.waitpid(child, 0)
    print("off", acct(None), flush=True)
    data = open("/tmp/pacct", "rb").read()
    mine = []
    for i in range(0, len(data) - len(data) % 64, 64):
        flag, version, tty, code, uid, gid, pid, ppid = struct.unpack_from("<BBHIIIII", data, i)
        comm = data[i + 48:i + 64].rstrip(b"\\0").decode()
        if pid == child:
            mine.append((version, code >> 8, uid, ppid == os.getpid(), comm))
    print("records", len(data) % 64, mine, flush=True)
    child = os.fork()
    if child == 0:
        os.setuid(65534)
        print("nobody", acct(None), flush=True)
        os._exit(0)
    os.waitpid(child, 0)
    """)


def test_acct_writes_a_record_per_ended_process(debian):
    """acct(2) names the instance's accounting file: each process that ends
    appends a struct acct_v3 (version 3, its wait status, real uid, pid,
    parent's pid and name as the instance knows them); a directory is
    EISDIR, a user without CAP_SYS_PACCT EPERM (LTP acct01, acct02)."""
    cp = debian.lx(["-u", "root", "-e", "python3", "-c", ACCT_PY], timeout=60)
    assert cp.returncode == 0, describe(cp)
    assert cp.stdout.decode().splitlines() == [
        "on 0 dir Is a directory", "off 0", "records 0 [(3, 3, 0, True, 'acctprobe')]",
        "nobody Operation not permitted"], describe(cp)


ACCT_AT_WAIT_PY = textwrap.dedent("""\
    import ctypes, os, signal, struct, threading, time
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open("/tmp/pacct-wait", os.O_RDWR | os.O_CREAT | os.O_TRUNC)   # read natively after each wait
    hold, release = os.pipe()
    blocked = os.fork()          # in a read when accounting goes on: its stop is asked for then
    if blocked == 0:
        os._exit(len(os.read(hold, 10)))
    time.sleep(0.3)
    assert libc.acct(b"/tmp/pacct-wait") == 0
    def records():
        data = os.pread(fd, 1 << 16, 0)
        return [struct.unpack_from("<BBHII", data, i) for i in range(0, len(data) - 63, 64)]
    def ended(child):            # the records there when wait returns, and the last one's flag and code
        os.waitpid(child, 0)
        found = records()
        return len(found), found[-1][0] & 0x10, found[-1][3]
    late = 0
    for i in range(60):          # the end of a pipe the child held: its files go after the record
        r, w = os.pipe()
        child = os.fork()
        if child == 0:
            os._exit(i)
        os.close(w)
        os.read(r, 1)
        found = records()
        late += len(found) != i + 1 or found[-1][3] != i << 8
        os.close(r)
        os.waitpid(child, 0)
    print("late", late, flush=True)
    child = os.fork()
    if child == 0:               # exit_group with a thread still running: one record
        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
        os._exit(7)
    print("threads", ended(child), flush=True)
    child = os.fork()
    if child == 0:               # the main thread leaves first, the last thread ends the process
        threading.Thread(target=lambda: (time.sleep(0.3), libc.syscall(60, 9))).start()
        libc.syscall(60, 0)
    print("last thread", ended(child), flush=True)
    child = os.fork()
    if child == 0:
        signal.pause()
    os.kill(child, signal.SIGTERM)
    print("signal", ended(child), flush=True)
    os.write(release, b"abc")
    print("blocked", ended(blocked), flush=True)
    libc.acct(None)
    """)


def test_acct_record_is_written_before_the_process_is_gone(debian):
    """Linux writes a process's record in do_exit before it closes the
    process's files and before its parent can reap it: the record is in
    the file once a pipe the child held reads end-of-file (60 children in
    a row) and when the parent's wait returns, for a process whose
    exit_group leaves a thread running (one record), one whose main thread
    leaves first (the last thread's end writes it), one a signal ends
    (AXSIG) and one that was blocked in a read when accounting went on
    (LTP acct02 reads the file right after its wait)."""
    cp = debian.lx(["-u", "root", "-e", "python3", "-c", ACCT_AT_WAIT_PY], timeout=120)
    assert cp.returncode == 0, describe(cp)
    assert cp.stdout.decode().splitlines() == [
        "late 0", "threads (61, 0, 1792)", "last thread (62, 0, 2304)", "signal (63, 16, 15)",
        "blocked (64, 0, 768)"], describe(cp)


SECCOMP_STRICT_PY = textwrap.dedent("""\
    import ctypes, errno, os, signal
    libc = ctypes.CDLL(None, use_errno=True)
    call = libc.syscall                              # looked up before strict mode
    def strict_child(then):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            buf = ctypes.create_string_buffer(b"in")
            if call(157, 22, 1, 0, 0, 0) != 0:       # prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT)
                call(60, 99)
            call(1, w, buf, 2)                        # write: allowed
            call(then, 7)                             # getpid: killed; exit: allowed
            call(60, 8)
        os.close(w)
        _, status = os.waitpid(pid, 0)
        said = os.read(r, 10).decode()
        if os.WIFSIGNALED(status):
            return said + " " + signal.Signals(os.WTERMSIG(status)).name
        return said + " exit %d" % os.WEXITSTATUS(status)
    print("getpid", strict_child(39))
    print("exit", strict_child(60))
    r = call(317, 0, 1, None)                        # seccomp(SECCOMP_SET_MODE_STRICT, flags=1)
    print("flags", errno.errorcode[ctypes.get_errno()] if r < 0 else r)
    """)


def test_seccomp_strict_mode(debian):
    """seccomp(2) SECCOMP_MODE_STRICT: read, write, _exit and sigreturn
    work, any other call kills the process with SIGKILL; the host refuses
    strict mode beside the provider's filter, so lxsub makes it from a
    filter of its own (LTP seccomp01)."""
    cp = debian.lx(["-u", "root", "-e", "python3", "-c", SECCOMP_STRICT_PY], timeout=60)
    assert cp.returncode == 0, describe(cp)
    assert cp.stdout.decode().splitlines() == ["getpid in SIGKILL", "exit in exit 7", "flags EINVAL"], \
        describe(cp)


IGNORED_SIGNAL_PY = textwrap.dedent("""\
    import ctypes, os, signal, time
    libc = ctypes.CDLL(None, use_errno=True)
    def rain(sig):          # a child that sends sig to us every 50 ms
        parent = os.getpid()
        child = os.fork()
        if child == 0:
            while True:
                time.sleep(0.05); os.kill(parent, sig)
        return child
    def timed_wait(mask, seconds):   # rt_sigtimedwait, no retry on EINTR
        ts = (ctypes.c_long * 2)(seconds, 0)
        r = libc.syscall(128, ctypes.byref(ctypes.c_ulong(mask)), None, ts, 8)
        return r if r >= 0 else os.strerror(ctypes.get_errno())
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    child = rain(signal.SIGUSR2)
    print("ignored:", timed_wait(0, 1))
    os.kill(child, 9); os.waitpid(child, 0)
    # Blocked before the wait, it is kept, and the wait takes it.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
    child = rain(signal.SIGUSR2)
    print("blocked:", timed_wait(1 << (signal.SIGUSR2 - 1), 5) == signal.SIGUSR2)
    os.kill(child, 9); os.waitpid(child, 0)
    """)


def test_an_ignored_signal_ends_no_wait(debian):
    """A signal its target ignores is dropped when sent (sig_ignored), so
    an rt_sigtimedwait for nothing ends by its timeout, EAGAIN; one the
    target blocked before the wait is kept for it (LTP rt_sigtimedwait01)."""
    cp = debian.exe("python3", "-c", IGNORED_SIGNAL_PY, timeout=60)
    assert cp.returncode == 0, describe(cp)
    assert cp.stdout.decode().splitlines() == [
        "ignored: Resource temporarily unavailable", "blocked: True"], describe(cp)

def test_identity_changes_follow_linux_rules(debian):
    program = ("import os\nos.setgroups([])\nos.setgid(65534); os.setuid(65534)\n"
               "print(os.getuid(), os.geteuid(), os.getgid())\n"
               "try:\n    os.setuid(0)\nexcept PermissionError:\n    print('EPERM')\n"
               "try:\n    open('/etc/shadow')\nexcept PermissionError:\n    print('EACCES')\n")
    cp = debian.exe("python3", "-c", program)
    assert cp.returncode == 0, describe(cp)
    assert cp.stdout.decode().split() == ["65534", "65534", "65534", "EPERM", "EACCES"], describe(cp)


def test_uname_and_hostname_are_the_instance_own(debian):
    out = debian.out("uname -s; uname -r; hostname; cat /proc/sys/kernel/osrelease")
    lines = out.splitlines()
    assert lines[0] == "Linux" and "lxsub" in lines[1] and lines[3] == lines[1], out
    assert lines[2] == debian.name, out


def test_devices(debian):
    out = debian.out("head -c 4096 /dev/urandom | wc -c; head -c 3 /dev/zero | od -An -tx1; "
                     "echo x > /dev/null && echo null-ok; "
                     "(echo x > /dev/full) 2>/dev/null || echo full-ENOSPC; "
                     "ls -l /dev/null | cut -c1")
    assert out.split() == ["4096", "00", "00", "00", "null-ok", "full-ENOSPC", "c"], out



USERFAULTFD_PY = textwrap.dedent("""\
    import ctypes, fcntl, os, stat
    s = os.stat("/dev/userfaultfd")
    print(stat.filemode(s.st_mode), s.st_uid, s.st_gid, os.major(s.st_rdev), os.minor(s.st_rdev))
    try:
        fd = os.open("/dev/userfaultfd", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        print("open", e.errno)
    else:
        uffd = fcntl.ioctl(fd, 0xAA00, 0o2000000)     # USERFAULTFD_IOC_NEW(O_CLOEXEC)
        print("uffd", os.readlink(f"/proc/self/fd/{uffd}"))
    """)


def test_dev_userfaultfd_is_the_hosts(debian):
    """/dev/userfaultfd (a misc device whose minor the host chose at boot)
    is there when the host has it, root's and 0600 as the host's, and makes
    userfaultfds as userfaultfd(2) does; the host decides who may open it
    (LTP userfaultfd03)."""
    host = os.stat("/dev/userfaultfd") if os.path.exists("/dev/userfaultfd") else None
    if host is None:
        pytest.skip("the host has no /dev/userfaultfd")
    cp = debian.lx(["-u", "root", "-e", "python3", "-c", USERFAULTFD_PY], timeout=60)
    assert cp.returncode == 0, describe(cp)
    lines = cp.stdout.decode().splitlines()
    assert lines[0] == f"crw------- 0 0 {os.major(host.st_rdev)} {os.minor(host.st_rdev)}", describe(cp)
    may_open = os.access("/dev/userfaultfd", os.R_OK | os.W_OK) and debian.user.kind == "self"
    assert lines[1] == ("uffd anon_inode:[userfaultfd]" if may_open else "open 13"), describe(cp)

CPU_MASKS_PY = textwrap.dedent("""\
    import os, sys
    expected = set(map(int, sys.argv[1].split(",")))
    seen = []
    for i in range(60):             # trapped calls, descriptors and forks, as the provider
        os.stat("/etc/passwd")      # moves threads around them
        os.close(os.open("/etc/hostname", os.O_RDONLY))
        seen.append(os.sched_getaffinity(0))
        if i % 10 == 0:
            p = os.fork()
            if p == 0:
                os._exit(0 if os.sched_getaffinity(0) == expected else 1)
            seen.append(expected if os.waitpid(p, 0)[1] == 0 else "child differs")
    print(all(m == expected for m in seen))
    os.sched_setaffinity(0, {min(expected)})     # a mask of its own is kept
    for i in range(30):
        os.close(os.open("/etc/hostname", os.O_RDONLY))
    print(os.sched_getaffinity(0) == {min(expected)})
    """)


def test_programs_see_their_own_cpu_mask(debian):
    """The provider pins threads to its CPU for wake-ups and back: a program
    never sees that, its children inherit its own mask, and a mask it sets
    stays; host programs started through interop get the whole mask too."""
    mask = sorted(os.sched_getaffinity(0))
    cp = debian.exe("python3", "-c", CPU_MASKS_PY, ",".join(map(str, mask)))
    assert cp.returncode == 0, describe(cp)
    assert cp.stdout.decode().split() == ["True", "True"], describe(cp)
    out = debian.out("for i in 1 2 3 4 5 6; do nproc; done; taskset -c 0 nproc; "
                     "/mnt/host/usr/bin/nproc")
    assert out.split() == [str(len(mask))] * 6 + ["1", str(len(mask))], out


def test_killing_the_provider_leaves_no_process(busybox):
    marker = f"{os.getpid() % 1000 + 1000}.5"     # a sleep argument no one else uses
    runner = busybox.runner
    proc = runner.popen(["-d", busybox.name, "--", f"sleep {marker} & (sleep {marker} &); sleep {marker}"])
    try:
        deadline = time.monotonic() + 30
        while len(_sleepers(marker)) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(_sleepers(marker)) == 3, "the three sleeps did not start"
        proc.kill()                      # SIGKILL the provider, nothing else
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _sleepers(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _sleepers(marker) == []
    finally:
        if proc.poll() is None:
            proc.kill()


def _sleepers(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                words = f.read().split(b"\0")
        except OSError:
            continue
        if b"sleep" in b" ".join(words[:2]) and marker.encode() in words:
            found.append(int(pid))
    return found
