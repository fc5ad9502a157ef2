"""Kernel calls that query without privilege, as LTP's syscall tests check
them: sched_get_priority_min/max (sched_get_priority_max(2)),
remap_file_pages (the kernel still emulates it), sysfs(2) over the
instance's /proc/filesystems, ustat(2) over the instance's mounts; and
the clock, which anyone may read (adjtimex(2) modes 0 or
ADJ_OFFSET_SS_READ) and only the instance's root may set (the instance's
own, tests/integration/test_instance_clock.py). The
program is tests/fixtures/programs/kernel_queries.c, built static on the
host and run in BusyBox; before these calls were implemented each answered
ENOSYS (-38), and every adjtimex/clock_adjtime EPERM."""

from __future__ import annotations

import errno
import textwrap
from pathlib import Path

import pytest

from tests.fixtures.cbuild import PROGRAMS, gcc_static
from tests.integration.distros import describe, run_probe

DIR = "/kernel-queries"


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> bytes:
    tmp = tmp_path_factory.mktemp("queries")
    return gcc_static(tmp, "kernel_queries", PROGRAMS / "kernel_queries.c").read_bytes()


def _run(busybox, program: bytes, *args: str) -> dict[str, str]:
    return run_probe(busybox, program, f"{DIR}/q", *args)


def test_priority_ranges_and_remap_file_pages(busybox, program):
    out = _run(busybox, program)
    einval = -errno.EINVAL
    # sched(7): static priorities 1..99 for the real-time policies, 0 otherwise
    assert out["prio fifo"] == "1 99" and out["prio rr"] == "1 99", out
    assert out["prio other"] == "0 0", out
    assert out["prio bad"] == f"{einval} {einval}", out
    # remap_file_pages(2): the first page of the window now shows file page 3
    assert out["remap 0"] == "DB", out


def test_sysfs_numbers_the_types_of_proc_filesystems(busybox, program):
    out = _run(busybox, program)
    cp = busybox.lx(["--", "cat /proc/filesystems"], timeout=60)
    types = [line.split()[-1] for line in cp.stdout.decode().splitlines() if line.strip()]
    assert out["sysfs count"] == str(len(types)), out
    # option 2 names each index in /proc/filesystems order; option 1 maps it back
    assert out["sysfs names"].split() == types, out
    assert out["sysfs errors"] == " ".join(
        str(-e) for e in (errno.EINVAL, errno.EINVAL, errno.EINVAL, errno.EFAULT)), out


def test_ustat_of_the_root_device(busybox, program):
    out = _run(busybox, program)
    assert out["ustat 0"] == "inodes_close 1 fname_zero 1", out
    assert out["ustat errors"] == f"{-errno.EINVAL} {-errno.EFAULT}", out



def test_the_clock_is_read_by_anyone_and_set_by_instance_root(busybox, program):
    cp = busybox.lx(["--", f"mkdir -p {DIR} && cat > {DIR}/q && chmod 755 {DIR}/q"],
                    input=program, timeout=60)
    assert cp.returncode == 0, describe(cp)
    cp = busybox.lx(["--", f"{DIR}/q clock"], timeout=60)
    assert cp.returncode == 0, describe(cp)
    einval, eperm, efault, eopnotsupp = (-e for e in (errno.EINVAL, errno.EPERM, errno.EFAULT,
                                                       errno.EOPNOTSUPP))
    # adjust: ADJ_ADJTIME without the single-shot bit (EINVAL for anyone), a
    # far-off ADJ_TICK (EINVAL for a caller with CAP_SYS_TIME, as root inside
    # has; EPERM for others), a real change (root's changes the instance's
    # NTP state; EPERM for others), CLOCK_MONOTONIC (no clock_adj), clock
    # 1234, a bad pointer. settime: CLOCK_MONOTONIC (no clock_set), NULL,
    # tv_nsec -1, a real change (the instance's clock for root, to now).
    expected = []
    for who, tick_err, change in (("root", einval, 0), ("user", eperm, eperm)):
        expected += [
            f"clock {who} query 1 ss_read 1 adjtimex 1",
            f"clock {who} adjust {einval} {tick_err} {change} {eopnotsupp} {einval} {efault}",
            f"clock {who} settime {einval} {efault} {einval} {change}",
        ]
    assert cp.stdout.decode().splitlines() == expected, describe(cp)


def test_calls_naming_other_processes_check_them_like_linux(busybox, program):
    """getpriority(2) of a negative pid finds no process (ESRCH, not EINVAL);
    get_robust_list(2) of another process needs the ptrace read check with
    real ids (EPERM for an unprivileged user reading root's, including
    /init's), and a missing process is ESRCH; setpriority(2) checks each
    target like set_one_prio (the host sees one user)."""
    cp = busybox.lx(["--", f"mkdir -p {DIR} && cat > {DIR}/q && chmod 755 {DIR}/q"],
                    input=program, timeout=60)
    assert cp.returncode == 0, describe(cp)
    cp = busybox.lx(["--", f"{DIR}/q pids"], timeout=60)
    assert cp.returncode == 0, describe(cp)
    esrch, eperm = -errno.ESRCH, -errno.EPERM
    assert cp.stdout.decode().splitlines() == [
        f"getpriority {esrch}",
        f"robust root 0 0 {esrch}",
        f"robust user {eperm} {eperm} 0",
        # the group holds root's parent too: its EPERM comes last
        f"setpriority user {-errno.EACCES} {eperm} {eperm} 0",
        # migrate_pages and prlimit64 of root's process (LTP migrate_pages01)
        f"other root {eperm} {eperm} own 0 0",
    ], describe(cp)


def test_capget_and_capset_check_their_arguments_like_linux(busybox, program):
    """kernel/capability.c: a bad version writes the preferred one back
    (and capget with no data pointer then answers 0); a negative pid is
    EINVAL; cap_capset: without CAP_SETPCAP the inheritable set may not
    grow beyond the old inheritable and permitted sets."""
    cp = busybox.lx(["--", f"mkdir -p {DIR} && cat > {DIR}/q && chmod 755 {DIR}/q"],
                    input=program, timeout=60)
    assert cp.returncode == 0, describe(cp)
    cp = busybox.lx(["--", f"{DIR}/q caps"], timeout=60)
    assert cp.returncode == 0, describe(cp)
    assert cp.stdout.decode().splitlines() == [
        "capget badversion-null 0 0x20080522",
        f"capset badversion {-errno.EINVAL} 0x20080522",
        f"capget negative-pid {-errno.EINVAL}",
        "capset kill-only 0",
        f"capset raise-inheritable {-errno.EPERM}",
    ], describe(cp)


def test_chroot_checks_the_directory_before_the_capability(busybox, program):
    """ksys_chroot: lookup (ENOTDIR), search permission (EACCES), then
    CAP_SYS_CHROOT (EPERM), for a user without privilege."""
    cp = busybox.lx(["--", f"mkdir -p {DIR} && cat > {DIR}/q && chmod 755 {DIR}/q"],
                    input=program, timeout=60)
    assert cp.returncode == 0, describe(cp)
    cp = busybox.lx(["--", f"{DIR}/q chroot"], timeout=60)
    assert cp.returncode == 0, describe(cp)
    assert cp.stdout.decode().splitlines() == [
        f"chroot user {-errno.EACCES} {-errno.ENOTDIR} {-errno.EPERM}"], describe(cp)


def test_a_path_in_unreadable_memory_is_efault(busybox, program):
    """A path in a PROT_NONE page (which /proc/<pid>/mem reads through, as
    zeros: an empty name, ENOENT) or in no mapping is EFAULT, as
    strncpy_from_user faults on both."""
    cp = busybox.lx(["--", f"mkdir -p {DIR} && cat > {DIR}/q && chmod 755 {DIR}/q"],
                    input=program, timeout=60)
    assert cp.returncode == 0, describe(cp)
    cp = busybox.lx(["--", f"{DIR}/q badpath"], timeout=60)
    assert cp.returncode == 0, describe(cp)
    efault = " ".join([str(-errno.EFAULT)] * 4)
    assert cp.stdout.decode().splitlines() == [
        f"badpath prot_none {efault}", f"badpath unmapped {efault}"], describe(cp)


def test_flags_masks_and_the_file_size_limit(busybox, program):
    """do_faccessat and do_fchmodat refuse unknown flags (EINVAL), statx a
    reserved mask bit and both sync types at once; truncate growing a file
    past the caller's RLIMIT_FSIZE is EFBIG (inode_newsize_ok), shrinking
    it is not."""
    cp = busybox.lx(["--", f"mkdir -p {DIR} && cat > {DIR}/q && chmod 755 {DIR}/q"],
                    input=program, timeout=60)
    assert cp.returncode == 0, describe(cp)
    cp = busybox.lx(["--", f"{DIR}/q args"], timeout=60)
    assert cp.returncode == 0, describe(cp)
    einval = -errno.EINVAL
    assert cp.stdout.decode().splitlines() == [
        f"faccessat2 {einval} {einval}",
        f"fchmodat2 {einval} 0",
        f"statx {einval} {einval} 0",
        f"fstatat {einval} {einval} 0",
        f"fchownat {einval} utimensat {-errno.EFAULT} mkdir {-errno.EEXIST}",
        f"negative pid {-errno.ESRCH} {-errno.ESRCH} {einval}",
        f"truncate {-errno.EFBIG} 0",
    ], describe(cp)


def test_a_privileged_port_needs_cap_net_bind_service(busybox, program):
    """bind(2) to an inet port below ip_unprivileged_port_start needs
    CAP_NET_BIND_SERVICE (ip(7), inet_bind): the instance's, so a user
    inside gets EACCES even where the host user (root) could bind it (LTP
    bind02). Port 0 and high ports are anyone's; root inside binds below
    1024 where the host lets its user."""
    cp = busybox.lx(["--", f"mkdir -p {DIR} && cat > {DIR}/q && chmod 755 {DIR}/q"],
                    input=program, timeout=60)
    assert cp.returncode == 0, describe(cp)
    cp = busybox.lx(["-u", "root", "--", f"{DIR}/q bind"], timeout=60)
    assert cp.returncode == 0, describe(cp)
    root, user = cp.stdout.decode().splitlines()
    start = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    host_may = busybox.user.uid == 0 or start <= 463
    low = "0 0" if host_may else f"{-errno.EACCES} {-errno.EACCES}"
    assert root == f"bind root {low} 0 0", describe(cp)
    assert user == f"bind user {-errno.EACCES} {-errno.EACCES} 0 0", describe(cp)


def test_setfsuid_from_root_drops_the_file_capabilities(busybox, program):
    """capabilities(7): setfsuid away from 0 clears CAP_DAC_OVERRIDE and the
    other file system capabilities from the effective set, so root's 0600
    file is EACCES to that fsuid; setfsuid(0) gives them back (LTP
    setfsuid04)."""
    cp = busybox.lx(["--", f"mkdir -p {DIR} && cat > {DIR}/q && chmod 755 {DIR}/q"],
                    input=program, timeout=60)
    assert cp.returncode == 0, describe(cp)
    cp = busybox.lx(["-u", "root", "--", f"{DIR}/q fsuid"], timeout=60)
    assert cp.returncode == 0, describe(cp)
    assert cp.stdout.decode().splitlines() == [f"fsuid away {-errno.EACCES} back 0"], describe(cp)


def test_execveat_of_a_descriptor_and_its_errors(busybox, program):
    """execveat(2) with AT_EMPTY_PATH runs the descriptor's file (Python's
    os.fexecve; an O_PATH descriptor too) -- it gave ENOTDIR; with
    AT_SYMLINK_NOFOLLOW a symlink is ELOOP; a relative path from a file's
    descriptor is ENOTDIR; an empty path without the flag ENOENT. The child
    exits 7 when the exec worked, 100 + errno when it did not."""
    cp = busybox.lx(["--", f"mkdir -p {DIR} && cat > {DIR}/q && chmod 755 {DIR}/q"],
                    input=program, timeout=60)
    assert cp.returncode == 0, describe(cp)
    cp = busybox.lx(["--", f"{DIR}/q exec {DIR}/q"], timeout=60)
    assert cp.returncode == 0, describe(cp)
    assert cp.stdout.decode().splitlines() == [
        f"execveat fd 7 opath 7 nofollow {100 + errno.ELOOP} notdir {100 + errno.ENOTDIR} "
        f"empty {100 + errno.ENOENT}"], describe(cp)


VHANGUP_PY = textwrap.dedent("""\
    import ctypes, errno, os, pty, signal
    libc = ctypes.CDLL(None, use_errno=True)
    VHANGUP = 153
    def outcome(result):
        return result if result != -1 else errno.errorcode[ctypes.get_errno()]
    child = os.fork()
    if child == 0:
        os.setsid()                       # no controlling terminal
        print("no tty", outcome(libc.syscall(VHANGUP)), flush=True)
        os.seteuid(1000)
        print("user", outcome(libc.syscall(VHANGUP)), flush=True)
        os._exit(0)
    os.waitpid(child, 0)
    report, told = os.pipe()              # the child's 0, 1 and 2 are the pty
    child, master = pty.fork()
    if child == 0:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)   # the hang-up's SIGHUP to the session leader
        result = outcome(libc.syscall(VHANGUP))
        try:
            os.write(1, b"after the hang-up")
            after = "written"
        except OSError as e:
            after = errno.errorcode[e.errno]
        os.write(told, f"own tty {result} {after}".encode())
        os._exit(0)
    os.close(told)
    os.waitpid(child, 0)
    print(os.read(report, 100).decode())
    """)


def test_vhangup_hangs_up_the_controlling_terminal(debian, host_user):
    """vhangup(2): EPERM without CAP_SYS_TTY_CONFIG; root without a
    controlling terminal has nothing to hang up and succeeds (LTP
    vhangup01, vhangup02); root's own pty is hung up, its descriptors
    then fail with EIO. The host's TIOCVHANGUP needs the host's
    CAP_SYS_ADMIN: for an unprivileged host user the hang-up is EPERM and
    the terminal stays as it was."""
    cp = debian.exe("python3", "-c", VHANGUP_PY, timeout=120)
    assert cp.returncode == 0, describe(cp)
    own = "own tty 0 EIO" if host_user.uid == 0 else "own tty EPERM written"
    assert cp.stdout.decode().splitlines() == ["no tty 0", "user EPERM", own], describe(cp)
