"""Issue 18: nothing a user or a Linux program sends takes lxsub down.

Each test feeds one kind of hostile or unusual input (bytes that are not
UTF-8, requests a client makes up, Linux-sized command lines, bad
pointers, odd names, a provider killed mid-create) and checks that the
answer is Linux's (or one clear `lx:` line) and that everything keeps
working afterwards.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import stat
import time
import subprocess
import sys

import pytest

from tests.fixtures.runner import describe

# Bytes that are not UTF-8, as Python hands them to subprocess (surrogateescape).
NOT_UTF8 = "A\udcff\udcfeB"
NOT_UTF8_BYTES = b"A\xff\xfeB"


# -- 1. bytes in argv, the environment, LANG and --cd arrive byte-exact ------------------

def test_non_utf8_argv_arrives_byte_exact(busybox):
    cp = busybox.exe("printf", "%s", NOT_UTF8)
    assert cp.returncode == 0, describe(cp)
    assert cp.stdout == NOT_UTF8_BYTES
    cp = busybox.sh(f"printf %s {NOT_UTF8}")           # through the shell too
    assert cp.returncode == 0, describe(cp)
    assert cp.stdout == NOT_UTF8_BYTES


def test_non_utf8_environment_arrives_byte_exact(busybox):
    env = {"LANG": "C.\udcff", "LC_ALL": NOT_UTF8, "LXENV": "ODD", "ODD": NOT_UTF8}
    cp = busybox.runner.run(["-d", busybox.name, "-e", "env"], env=env)
    assert cp.returncode == 0, describe(cp)
    lines = cp.stdout.split(b"\n")
    for line in (b"LANG=C.\xff", b"LC_ALL=" + NOT_UTF8_BYTES, b"ODD=" + NOT_UTF8_BYTES):
        assert line in lines, describe(cp)


def test_non_utf8_cd_arrives_byte_exact(busybox):
    cp = busybox.sh("mkdir -p /tmp/robust-cd && cd /tmp/robust-cd && mkdir -p \"$(printf 'A\\377\\376B')\"")
    assert cp.returncode == 0, describe(cp)
    cp = busybox.lx(["--cd", f"/tmp/robust-cd/{NOT_UTF8}", "-e", "pwd"])
    assert cp.returncode == 0, describe(cp)
    assert cp.stdout == b"/tmp/robust-cd/" + NOT_UTF8_BYTES + b"\n"
    # The instance survived all of it: a plain command still runs.
    assert busybox.exe("true").returncode == 0


# -- 2. the manager and instances survive any bytes, serve clients independently ---------

def _as_user_python(lx, code: str, timeout: float = 60):
    """Run Python code as the runner's user, with its LX_HOME and lxsub."""
    return lx.run_host(lx.user.wrap([lx.python, "-c", code]), timeout=timeout)


_HOSTILE_CLIENTS = r'''
import socket, time, json
from lxsub.manager import paths, protocol
path = str(paths.manager_socket())
def conn():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); s.settimeout(5); s.connect(path); return s
for data in (b"[" * 65000, b'{"v":1,"op":"hello","x":' + b"[" * 60000 + b"]" * 60000 + b"}",
             b'{"v":true,"op":"hello"}', b"\xff" * 100):
    s = conn(); s.send(data[:65536]); print(json.loads(s.recv(70000))["error"]["code"]); s.close()
slow = conn(); slow.setblocking(False)
for _ in range(500):
    try: slow.send(b'{"v":1,"op":"status"}')
    except BlockingIOError: break
t0 = time.monotonic(); s = conn(); protocol.send(s, {"v": 1, "op": "hello"})
reply, _ = protocol.receive(s)
print("hello", reply["ok"], round(time.monotonic() - t0, 2))
'''


def test_manager_survives_hostile_requests_and_slow_readers(lx, busybox_tar):
    lx.import_distro("bb", busybox_tar)
    assert lx.run(["-d", "bb", "-e", "true"]).returncode == 0       # the manager runs
    cp = _as_user_python(lx, _HOSTILE_CLIENTS)
    assert cp.returncode == 0, describe(cp)
    lines = cp.stdout.decode().split("\n")
    assert lines[:4] == ["bad-request", "bad-request", "version", "bad-request"], describe(cp)
    hello = lines[4].split()
    assert hello[:2] == ["hello", "True"] and float(hello[2]) < 2.0, describe(cp)
    cp = lx.run(["-d", "bb", "-e", "echo", "served"])
    assert cp.stdout == b"served\n", describe(cp)
    assert "Traceback" not in (lx.lx_home / "manager.log").read_text()


# -- 3. Linux-sized command lines, Linux's E2BIG -------------------------------------------

def test_linux_sized_command_line_runs(busybox):
    big = ["x" * 131071] * 12                  # 12 strings at MAX_ARG_STRLEN: 1.5 MiB
    cp = busybox.exe("sh", "-c", 'echo $#; for a; do echo ${#a}; done', "sh", *big)
    assert cp.returncode == 0, cp.stderr[-400:]
    assert cp.stdout.split() == [b"12"] + [b"131071"] * 12


def test_linux_sized_command_line_runs_through_the_loader(debian):
    """A dynamic program starts through the distro's ld.so, whose own
    arguments are added to the caller's: 1.5 MiB still goes through."""
    big = ["y" * 131071] * 12
    cp = debian.exe("sh", "-c", 'echo $#; for a; do echo ${#a}; done; '
                    r'exec /usr/bin/env sh -c "echo \$#" sh "$@"', "sh", *big)
    assert cp.returncode == 0, cp.stderr[-400:]
    assert cp.stdout.split() == [b"12"] + [b"131071"] * 12 + [b"12"]


def test_a_string_past_max_arg_strlen_is_e2big(busybox):
    # `lx -- ARGS` joins ARGS into the one string `sh -c` gets: 140 KB here.
    cp = busybox.lx(["--", "echo", "x" * 70000, "y" * 70000])
    assert cp.returncode == 126, (cp.returncode, cp.stderr[-400:])
    err = cp.stderr.decode()
    assert err.startswith("lx: argument list too long") and "MAX_ARG_STRLEN" in err
    assert err.count("\n") == 1


def test_a_command_line_past_the_instances_limit_is_e2big(busybox):
    """The instance's own limit (a quarter of its stack limit) decides: an
    lx with a larger stack limit passes its own check, the instance refuses."""
    assert busybox.exe("true").returncode == 0          # the instance runs, 8 MiB stack
    args = busybox.runner.root / "big-args"
    args.write_text(" ".join(["x" * 131000] * 20))       # 2.6 MB: over 2 MiB
    # The host shell reads them: our own exec could not pass them (E2BIG).
    cp = busybox.runner.run_host(["sh", "-c", 'ulimit -s 32768; exec "$@" $(cat "$0")', str(args),
                                  *busybox.runner.command(["-d", busybox.name, "-e", "echo"])])
    assert cp.returncode == 126, (cp.returncode, cp.stderr[-400:])
    err = cp.stderr.decode()
    assert err.startswith("lx: argument list too long") and "E2BIG" in err and err.count("\n") == 1
    assert busybox.exe("true").returncode == 0


# -- 4. every pointer argument of every trapped call: EFAULT where Linux says so ---------

# Calls the probe must not make: they replace, end or duplicate the probe itself.
_NOT_PROBED = {"fork", "vfork", "clone", "clone3", "exit", "exit_group", "execve", "execveat",
               "rt_sigreturn", "ptrace"}


@pytest.fixture(scope="module")
def bad_pointers_probe(tmp_path_factory):
    from tests.fixtures.cbuild import PROGRAMS, gcc_static
    out = tmp_path_factory.mktemp("probe")
    os.chmod(out, 0o755)
    return gcc_static(out, "bad_pointers", PROGRAMS / "bad_pointers.c")


def _probe_results(text: str) -> dict[tuple[str, str], list[str]]:
    return {tuple(line.split()[:2]): line.split()[2:] for line in text.splitlines() if line}


def test_every_pointer_argument_is_efault(busybox, bad_pointers_probe):
    """Each trapped call with a handler, each argument in turn (void *)-1 (the
    others 0): wherever Linux answers EFAULT, so does lxsub; and no handler
    fails with a provider bug. Linux's answers come from the same program
    run natively by an unprivileged host user."""
    from lxsub.kernel import table
    from tests.fixtures.runner import current_user, unprivileged_user
    nrs = sorted(r.nr for r in table.BY_NR.values()
                 if r.via in ("notify", "trace") and r.handler is not None
                 and r.name not in _NOT_PROBED)
    native_user = unprivileged_user() if os.geteuid() == 0 else current_user()
    native = subprocess.run(native_user.wrap([str(bad_pointers_probe), *map(str, nrs)]),
                            capture_output=True, timeout=300, cwd="/")
    assert native.returncode == 0, native.stderr
    inside = busybox.rootfs / "tmp" / "bad_pointers"
    shutil.copyfile(bad_pointers_probe, inside)
    os.chmod(inside, 0o755)
    log = busybox.runner.lx_home / "lx.log"
    before = log.read_text(errors="replace") if log.exists() else ""
    cp = busybox.lx(["-u", "user", "-e", "/tmp/bad_pointers", *map(str, nrs)], timeout=600)
    assert cp.returncode == 0, describe(cp)
    linux, ours = _probe_results(native.stdout.decode()), _probe_results(cp.stdout.decode())
    efault = str(errno.EFAULT)
    wrong = [(table.BY_NR[int(nr)].name, int(i), ours.get((nr, i)))
             for (nr, i), result in linux.items()
             if result[0] != "gone" and result[1] == efault and ours.get((nr, i), ["", ""])[1] != efault]
    assert len(linux) == 6 * len(nrs) and not wrong, wrong
    after = log.read_text(errors="replace") if log.exists() else ""
    assert "provider bug" not in after[len(before):]


# -- 8. manager.log says why every instance ended ------------------------------------------

def test_manager_log_says_why_each_instance_ended(lx, busybox_tar):
    from tests.fixtures.runner import wait_for
    lx.import_distro("bb", busybox_tar)
    lx.configure("[instance]\nidle_timeout = 1\n")
    log = lx.lx_home / "manager.log"
    assert lx.run(["-d", "bb", "-e", "true"]).returncode == 0          # ends idle
    wait_for(lambda: "ended: exit status 0" in log.read_text(), what="the idle end in manager.log")
    text = log.read_text()
    assert "instance bb" in text and "ending: idle" in text, text
    sleeper = lx.popen(["-d", "bb", "-e", "sleep", "1000"])              # killed
    try:
        os.kill(lx.serving_instance("bb"), signal.SIGKILL)
        wait_for(lambda: "ended: killed by SIGKILL" in log.read_text(), what="the kill in manager.log")
    finally:
        sleeper.kill()
        sleeper.wait()
    sleeper = lx.popen(["-d", "bb", "-e", "sleep", "1000"])              # terminated
    try:
        lx.serving_instance("bb")
        assert lx.run(["--terminate", "bb"]).returncode == 0
        wait_for(lambda: "ending: the manager asked" in log.read_text(), what="the terminate")
    finally:
        sleeper.kill()
        sleeper.wait()
    assert "Traceback" not in log.read_text()


# -- 5. the CLI: one line for odd names and unwritable state, nothing left behind ----------

def _one_line_error(cp, code: int) -> str:
    err = cp.stderr.decode()
    assert cp.returncode == code, describe(cp)
    assert err.startswith("lx: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("name", ["a" * 300, ".", "..", "a/b", "../up"])
def test_bad_distro_names_are_refused_in_one_line(lx, busybox_tar, name):
    cp = lx.run(["--import", name, str(lx.distros / "odd"), str(lx.readable(busybox_tar))])
    _one_line_error(cp, 64)
    assert not (lx.distros / "odd").exists()
    assert not any((lx.lx_home / "locks").glob("*")) if (lx.lx_home / "locks").exists() else True


def test_import_with_unwritable_state_is_one_line(lx, busybox_tar):
    assert lx.run(["--list"]).returncode == 0                 # LX_HOME exists
    if lx.user.uid == 0:
        # Root writes through modes: make lx's lock directory a file instead.
        (lx.lx_home / "locks").write_text("")
        code = 73
    else:
        os.chmod(lx.lx_home, 0o555)
        code = 73
    try:
        cp = lx.run(["--import", "ro", str(lx.distros / "ro" / "rootfs"), str(lx.readable(busybox_tar))])
    finally:
        os.chmod(lx.lx_home, 0o700)
    err = _one_line_error(cp, code)
    assert str(lx.lx_home) in err
    assert not (lx.distros / "ro").exists()


def test_failed_import_removes_every_directory_it_made(lx):
    bad = lx.root / "bad.tar"
    bad.write_bytes(b"not a tarball" * 100)
    lx.user.give(bad)
    target = lx.distros / "new1" / "new2" / "rootfs"
    cp = lx.run(["--import", "bad", str(target), str(bad)])
    _one_line_error(cp, 65)
    assert not (lx.distros / "new1").exists()
    assert not (lx.lx_home / "locks" / "bad.lock").exists()


def test_lock_file_of_an_unregistered_distro_is_deleted(lx, busybox_tar):
    lx.import_distro("gone", busybox_tar)
    assert (lx.lx_home / "locks" / "gone.lock").exists()
    assert lx.run(["--unregister", "gone"]).returncode == 0
    assert not (lx.lx_home / "locks" / "gone.lock").exists()


def test_mount_hint_names_a_command_that_installs_fusepy():
    from lxsub.distro import fusemount
    fix = fusemount._fusepy_fix()
    assert "lxsub[mount]" not in fix
    assert f"{sys.executable} -m pip install" in fix
    if sys.prefix == sys.base_prefix:
        assert "apt-get install python3-fusepy" in fix


# -- 6. export: sockets skipped with a note, a killed export's .part removed ---------------

def test_export_skips_a_unix_socket_with_a_note(busybox):
    runner = busybox.runner
    # A daemon's socket left in the tree (bound from the host: BusyBox has
    # no program that binds a named Unix socket).
    import socket as sk
    held = busybox.rootfs / "tmp" / "held.sock"
    with contextlib.suppress(FileNotFoundError):
        held.unlink()
    s = sk.socket(sk.AF_UNIX)
    s.bind(str(held))
    s.close()
    out = runner.root / "bb.tar"
    cp = runner.run(["--export", busybox.name, str(out)])
    assert cp.returncode == 0, describe(cp)
    assert b"./tmp/held.sock: socket ignored" in cp.stderr
    import tarfile
    with tarfile.open(out) as t:
        names = t.getnames()
    assert "./tmp/held.sock" not in names and "./bin/busybox" in names


def test_killed_export_leaves_no_part_file(busybox):
    runner = busybox.runner
    out = runner.root / "killed.tar.xz"        # xz: slow enough to be killed mid-way
    p = runner.popen(["--export", busybox.name, str(out)], stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    from tests.fixtures.runner import wait_for
    try:
        wait_for(lambda: list(runner.root.glob(".killed.tar.xz.*.part")), timeout=30,
                 what="the export's .part file")
    finally:
        p.kill()          # SIGKILL: no clean-up of its own
        p.wait()
    assert list(runner.root.glob(".killed.tar.xz.*.part"))
    cp = runner.run(["--list"])
    assert cp.returncode == 0, describe(cp)
    assert b"export was interrupted" in cp.stderr
    assert not list(runner.root.glob(".killed.tar.xz.*.part")) and not out.exists()


# -- 7. a new object never exists without its Linux metadata -------------------------------

_CREATE_LOOP = "cd /born && i=$$; while :; do echo > f$i; mkdir d$i; i=$((i+1)); done"


def test_objects_are_born_with_their_metadata_whenever_the_provider_dies(lx, busybox_tar):
    """A non-root user's create loop, the provider SIGKILLed at random moments
    many times: every file and directory shows its creator as owner and its
    mode (umask 022), as Linux makes them, none without its attribute."""
    import random
    from lxsub.kernel.fs import lxattr
    from tests.fixtures.runner import wait_for
    lx.import_distro("bb", busybox_tar)
    rootfs = lx.distros / "bb" / "rootfs"
    cp = lx.run(["-d", "bb", "-u", "root", "--", "mkdir /born && chown user:user /born"])
    assert cp.returncode == 0, describe(cp)
    rng = random.Random(18)
    for _ in range(12):
        loop = lx.popen(["-d", "bb", "-u", "user", "--", _CREATE_LOOP],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            pid = lx.serving_instance("bb")
            time.sleep(0.3 + rng.random() * 0.5)
            os.kill(pid, signal.SIGKILL)
            loop.wait(timeout=30)
            # Gone (reaped by the manager) before the next round looks for
            # its instance, which must not find this one.
            wait_for(lambda: not os.path.exists(f"/proc/{pid}"), what=f"instance {pid} to be reaped")
        finally:
            if loop.poll() is None:
                loop.kill()
                loop.wait()
    born = rootfs / "born"
    names = os.listdir(born)
    assert len(names) > 24
    wrong = []
    for name in names:
        st = os.lstat(born / name)
        meta = lxattr.read_meta_path(str(born / name))
        want = (stat.S_IFDIR | 0o755) if name.startswith("d") else (stat.S_IFREG | 0o644)
        if meta is None or (meta.mode, meta.uid, meta.gid) != (want, 1000, 1000):
            shown = None if meta is None else (oct(meta.mode), meta.uid, meta.gid)
            wrong.append((name, shown, oct(st.st_mode)))
    assert not wrong, wrong
    assert not [n for n in names if not n[1:].isdigit()], names     # no half-made stray


# -- 8. a provider stopped and continued answers every call right ------------------------------

_OPEN_LOOP = ("i=0; while [ $i -lt 4000 ]; do read line < /etc/passwd; case $line in root:*) ;; "
              "*) echo \"open $i read: $line\"; exit 1;; esac; i=$((i+1)); done; echo ok")


def test_opens_stay_right_while_the_provider_is_stopped_and_continued(lx, busybox_tar):
    """SIGSTOP and SIGCONT to the provider, over and over (what a debugger
    or profiler attaching does, or a batch scheduler suspending a job)
    while a shell opens a file thousands of times: every open gives the
    file. Before, a stop that came while the provider waited for a caller
    to install its descriptor (ADDFD with SEND) made the kernel take the
    descriptor back and answer 0: the shell read its stdin instead."""
    lx.import_distro("bb", busybox_tar)
    loop = lx.popen(["-d", "bb", "--", _OPEN_LOOP], stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stops = 0
    try:
        pid = lx.serving_instance("bb")
        while loop.poll() is None and stops < 3000:
            try:
                os.kill(pid, signal.SIGSTOP)
                time.sleep(0.0005)
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                # The instance has ended: the loop finished (idle_timeout 0)
                # and its lx has not exited yet, or the provider died;
                # the loop's output below tells which.
                break
            stops += 1
            time.sleep(0.002)
        out, err = loop.communicate(timeout=120)
    finally:
        if loop.poll() is None:
            os.kill(pid, signal.SIGCONT)
            loop.kill()
            loop.wait()
    assert (loop.returncode, out) == (0, b"ok\n"), (stops, loop.returncode, out, err)
    assert stops > 50, f"the loop ended after {stops} stops: too few to tell"


# -- the fuzzers (tools/fuzz), about half a minute each in CI ------------------------------

FUZZ_SECONDS = float(os.environ.get("LXSUB_FUZZ_SECONDS", "25"))


def _tools_for(runner) -> None:
    """tools/ where the runner's user can read it (the repository may not be)."""
    from tests.fixtures.runner import REPO_ROOT
    dest = runner.root / "tools"
    shutil.copytree(REPO_ROOT / "tools", dest, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    for dirpath, _dirs, files in os.walk(dest):
        os.chmod(dirpath, 0o755)
        for f in files:
            os.chmod(os.path.join(dirpath, f), 0o644)


def _fuzz(runner, *args: str):
    import json
    _tools_for(runner)
    cp = runner.run_host(runner.user.wrap([runner.python, "-m", "tools.fuzz", *args]),
                         cwd=runner.root, timeout=FUZZ_SECONDS * 4 + 120)
    assert cp.returncode == 0, describe(cp)
    return json.loads(cp.stdout.decode().strip().splitlines()[-1])


def test_request_fuzzer_keeps_manager_and_instance_up(lx, busybox_tar):
    lx.import_distro("bb", busybox_tar)
    lx.configure("[instance]\nidle_timeout = 600\n")
    session = lx.popen(["-d", "bb", "-e", "sleep", "1000"])        # an instance to fuzz too
    try:
        lx.serving_instance("bb")
        summary = _fuzz(lx, "requests", "--seconds", str(FUZZ_SECONDS), "--seed", "18")
        assert summary["sent"] > 100 and len(summary["pids"]) == 2 and not summary["lost"]
        for start, end in summary["rss_kib"].values():
            assert start and end - start < 8 * 1024, summary      # flat: no leak per request
        assert session.poll() is None                          # the session survived
        cp = lx.run(["-d", "bb", "-e", "echo", "still"])
        assert cp.stdout == b"still\n", describe(cp)
    finally:
        session.kill()
        session.wait()
    for log in ("manager.log", "lx.log"):
        path = lx.lx_home / log
        assert not path.exists() or "Traceback" not in path.read_text(errors="replace")


def test_syscall_fuzzer_as_a_non_root_user(lx, busybox_tar):
    from tests.fixtures.cbuild import gcc_static
    from tests.fixtures.runner import REPO_ROOT
    lx.import_distro("bb", busybox_tar)
    lx.configure("[instance]\nidle_timeout = 600\n")
    prog = gcc_static(lx.root, "sysfuzz", REPO_ROOT / "tools" / "fuzz" / "sysfuzz.c")
    os.chmod(prog, 0o755)
    summary = _fuzz(lx, "syscalls", "--distro", "bb", "--user", "user",
                    "--seconds", str(FUZZ_SECONDS), "--seed", "18", "--program", str(prog))
    assert not summary["problems"], summary
    assert summary["second_session_runs"] >= FUZZ_SECONDS / 4, summary
    batches = int(summary["fuzzer"].split()[1])
    assert batches >= 5, summary


def test_a_hostname_of_any_bytes_keeps_the_instance_usable(busybox, tmp_path):
    """sethostname(2) takes bytes: a NUL ends the name (the kernel keeps it
    in a zeroed buffer) and other bytes stay as they are. Before, a NUL was
    kept inside the name and every later `lx` session of the instance failed
    with "cannot start pico process: embedded null byte" (found by the
    syscall fuzzer as root); bytes not UTF-8 became U+FFFD."""
    from tests.fixtures.cbuild import PROGRAMS, gcc_static
    from tests.integration.distros import run_probe
    program = gcc_static(tmp_path, "odd_hostname", PROGRAMS / "odd_hostname.c").read_bytes()
    keeper = busybox.runner.hold(busybox.name, 1000)      # the instance lives on
    try:
        out = run_probe(busybox, program, "/odd/h", b"lx\0junk".hex(), user="root")
        assert out == {"set 0": "", "nodename 6c78": ""}, out
        cp = busybox.lx(["-e", "cat", "/proc/sys/kernel/hostname"])
        assert cp.returncode == 0 and cp.stdout == b"lx\n", describe(cp)
        out = run_probe(busybox, program, "/odd/h", b"h\xffx".hex(), user="root")
        assert out == {"set 0": "", "nodename 68ff78": ""}, out
        cp = busybox.lx(["--", 'printf %s "$HOSTNAME"; cat /proc/sys/kernel/hostname'])
        assert cp.returncode == 0 and cp.stdout == b"h\xffxh\xffx\n", describe(cp)
    finally:
        keeper.kill()
        keeper.wait()
