"""Calls that reach into another process of the instance, as LTP's kcmp,
cma (process_vm_readv/writev) and unshare tests check them: kcmp(2) and
process_vm_readv(2)/process_vm_writev(2) by virtual pid under ptrace's
access rule, and unshare(2) of the things that are no namespaces
(CLONE_FILES, CLONE_FS, CLONE_SYSVSEM). The program is
tests/fixtures/programs/crossproc.c, built static on the host and run as
root in BusyBox (it drops to nobody for the permission checks). Before
these were implemented kcmp and process_vm_* were EPERM for everything and
unshare EPERM for every flag."""

from __future__ import annotations

import errno

import pytest

from tests.fixtures.cbuild import PROGRAMS, gcc_static
from tests.integration.distros import describe, run_probe

DIR = "/crossproc"


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> bytes:
    tmp = tmp_path_factory.mktemp("crossproc")
    return gcc_static(tmp, "crossproc", PROGRAMS / "crossproc.c").read_bytes()


def _run(busybox, program: bytes, *args: str) -> dict[str, str]:
    return run_probe(busybox, program, f"{DIR}/p", *args, user="root")


def test_kcmp_compares_the_objects_of_instance_processes(busybox, program):
    out = _run(busybox, program, "kcmp")
    # kcmp(2): 0 equal, 1/2 ordered when different
    assert out["kcmp file-inherited"] == "0" and out["kcmp file-dup"] == "0", out
    assert out["kcmp file-other"] == "1" and out["kcmp vm-self"] == "0", out
    assert out["kcmp vm-child"] == "1" and out["kcmp files-child"] == "1", out
    assert out["kcmp badfd"] == str(-errno.EBADF), out
    assert out["kcmp badtype"] == str(-errno.EINVAL), out
    assert out["kcmp nopid"] == str(-errno.ESRCH), out
    # PTRACE_MODE_READ_REALCREDS: nobody may not look at root's process
    assert out["kcmp nobody"] == str(-errno.EPERM), out


def test_process_vm_copies_between_instance_processes(busybox, program):
    out = _run(busybox, program, "vm")
    # the child reads 14 bytes over two local iovecs, writes 12 into its parent
    assert out["vm read"] == "14 'parent' ''s words'", out
    assert out["vm write"] == "12" and out["vm written"] == "'child wrote'", out
    # a remote range that runs into PROT_NONE gives the bytes before it; none: EFAULT
    assert out["vm partial"] == "4096", out
    assert out["vm fault"] == str(-errno.EFAULT), out
    assert out["vm flags"] == str(-errno.EINVAL) and out["vm badlen"] == str(-errno.EINVAL), out
    assert out["vm nopid"] == str(-errno.ESRCH), out
    assert out["vm nothing"] == "0", out
    # /init is the provider: never reachable (Linux would let root read it)
    assert out["vm init"] in (str(-errno.ESRCH), str(-errno.EPERM)), out
    # PTRACE_MODE_ATTACH_REALCREDS: nobody may not read root's memory
    assert out["vm nobody"] == str(-errno.EPERM), out


def test_unshare_of_what_is_no_namespace(busybox, program):
    out = _run(busybox, program, "unshare")
    assert out["unshare files-fs-sysvsem"] == "0", out
    assert out["unshare bad"] == str(-errno.EINVAL), out
    # a mount namespace of its own is the provider's (test_namespaces.py)
    assert out["unshare newns"] == "0", out
    # the clone(CLONE_FS) child unshared its context before its chdir: ours stays
    assert out["unshare fs"] == "0 /", out
    assert out["shared fs"] == "/tmp", out


def test_scheduling_checks_use_the_instance_credentials(busybox, program):
    """The host sees one host user (root where the provider is root): the
    provider applies Linux's checks with the instance's ids. Before, nobody
    inside could take SCHED_FIFO on a root host and change root's process,
    and PRIO_USER named the host's users."""
    out = _run(busybox, program, "sched")
    # kernel/sys.c: PRIO_USER over the instance's processes of that uid
    assert out["prio user-none"] == str(-errno.ESRCH), out
    assert out["prio user-one"] == "0 0", out
    assert out["prio user-set"] == "0" and out["prio user-after"] == "5", out
    # user_check_sched_setscheduler: RLIMIT_RTPRIO 0, another owner: EPERM
    assert out["sched fifo"] == str(-errno.EPERM), out
    assert out["sched other"] == "0", out
    assert out["sched root-param"] == str(-errno.EPERM), out
    assert out["sched root-affinity"] == str(-errno.EPERM), out
    assert out["sched bad-policy"] == str(-errno.EINVAL), out


def test_cpu_clocks_name_instance_processes_only(busybox, program):
    """clock_getcpuclockid(3) clocks carry a pid: translated for the
    instance's processes; a thread clock of another process, an unknown pid
    and a host process's pid are EINVAL (pid_for_clock). Before, they went
    to the host untranslated: the program's own child had no clock and any
    host process's CPU time could be read."""
    import subprocess
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        out = _run(busybox, program, "clock", str(sleeper.pid))
    finally:
        sleeper.kill()
        sleeper.wait()
    assert out["clock getcpuclockid"] == "0 1", out
    assert out["clock child"] == "0" and out["clock child-res"] == "0", out
    assert out["clock thread"] == "0", out
    assert out["clock other-thread"] == str(-errno.EINVAL), out
    assert out["clock nopid"] == str(-errno.EINVAL), out
    assert out["clock host"] in (str(-errno.EINVAL), "is-an-instance-pid"), out


def test_the_capability_bounding_set_is_the_instances(busybox, program):
    """prctl(2) PR_CAPBSET_READ/DROP on the instance's own bounding set,
    seen in /proc/self/status CapBnd and by capset(2) (security/commoncap.c
    cap_capset, cap_prctl_drop). Before, the drop went to the host process
    and neither CapBnd nor capset saw it."""
    out = _run(busybox, program, "bset")
    assert out["bset read-kill"] == "1" and out["bset read-bad"] == str(-errno.EINVAL), out
    assert out["bset drop-kill"] == "0" and out["bset drop-bad"] == str(-errno.EINVAL), out
    assert out["bset read-after"] == "0" and out["bset status-kill"] == "0", out
    assert out["bset capset-pi"] == str(-errno.EPERM), out
    assert out["bset capset-ok"] == "0", out
    assert out["bset drop-nobody"] == str(-errno.EPERM), out
    # PR_SET_SECUREBITS (commoncap.c): SECURE_KEEP_CAPS is keep_caps; locked
    # bits, unknown bits and callers without CAP_SETPCAP: EPERM
    assert out["securebits keep"] == "0 1" and out["securebits get"] == str(0x30), out
    eperm = str(-errno.EPERM)
    assert out["securebits locked"] == f"{eperm} {eperm}", out
    assert out["securebits unknown"] == eperm and out["securebits nobody"] == eperm, out
    assert out["bset parent-kill"] == "1", out


def test_syslog_is_the_instances_own_empty_log(busybox, program):
    """syslog(2) (klogctl) checks as do_syslog: EINVAL for bad actions,
    buffers and console levels, EPERM for nobody except READ_ALL and
    SIZE_BUFFER; the log itself is the instance's, where nothing is logged.
    Before, every action was EPERM."""
    out = _run(busybox, program, "syslog")
    assert out["syslog size"] == "1" and out["syslog read-all"] == "0", out
    for name in ("bad-type", "null-read", "negative", "level-9"):
        assert out[f"syslog {name}"] == str(-errno.EINVAL), (name, out)
    assert out["syslog level-4"] == "0", out
    assert out["syslog read-waits"] == str(-errno.EINTR), out
    assert out["syslog nobody-read"] == str(-errno.EPERM), out
    assert out["syslog nobody-read-all"] == "0", out


def test_reboot_sets_the_instances_ctrl_alt_del_flag(busybox, program):
    """reboot(2) (kernel/reboot.c): EPERM without CAP_SYS_BOOT, EINVAL for
    a bad magic and an unknown command; CAD_OFF/CAD_ON set the instance's
    Ctrl-Alt-Del flag, which /proc/sys/kernel/ctrl-alt-del shows and root
    may write. Before, CAD_ON/CAD_OFF were EINVAL (as in a PID namespace)
    and the file did not exist."""
    out = _run(busybox, program, "reboot")
    assert out["reboot cad-off"] == "0" and out["reboot cad-off-flag"] == "0", out
    assert out["reboot cad-on"] == "0" and out["reboot cad-on-flag"] == "1", out
    assert out["reboot cad-write"] == "1" and out["reboot cad-written-flag"] == "0", out
    assert out["reboot bad-cmd"] == str(-errno.EINVAL), out
    assert out["reboot bad-magic"] == str(-errno.EINVAL), out
    assert out["reboot nobody"] == str(-errno.EPERM), out
    assert out["reboot nobody-cad"] == str(-errno.EPERM), out


def test_a_power_off_ends_the_instance_not_the_host(busybox, program):
    """A power-off ends the instance as it ends a PID namespace: every
    process in it is killed, the caller does not return; the next command
    starts a fresh instance."""
    import subprocess
    import time
    _run(busybox, program, "none")
    cp = busybox.lx(["--", f"sleep 4321 & {DIR}/p reboot-now; echo after"], timeout=60)
    assert b"reboot returned" not in cp.stdout and b"after" not in cp.stdout, describe(cp)
    for _ in range(50):
        left = subprocess.run(["pgrep", "-f", "sleep 4321"], capture_output=True).stdout
        if not left:
            break
        time.sleep(0.1)
    assert not left, "the instance's processes outlived its power-off"
    cp = busybox.lx(["--", "echo", "again"], timeout=60)
    assert cp.returncode == 0 and cp.stdout.strip() == b"again", describe(cp)


def test_a_seccomp_filter_is_read_before_the_right_is_checked(busybox, program):
    """kernel/seccomp.c seccomp_prepare_user_filter: EFAULT for an
    unreadable struct sock_fprog and EINVAL for an empty one come before
    EACCES (no CAP_SYS_ADMIN, no no_new_privs). Before, all were EACCES."""
    out = _run(busybox, program, "seccomp")
    assert out["seccomp bad-addr"] == str(-errno.EFAULT), out
    assert out["seccomp empty"] == str(-errno.EINVAL), out
    assert out["seccomp no-right"] == str(-errno.EACCES), out


def test_orphans_go_to_the_nearest_child_subreaper(busybox, program):
    """prctl(2) PR_SET_CHILD_SUBREAPER: an orphan's new parent is the
    nearest living subreaper ancestor (kernel/exit.c find_new_reaper), in
    getppid as on the host. Before, getppid said /init (1)."""
    out = _run(busybox, program, "subreaper")
    assert out["subreaper set"] == "0", out
    assert out["subreaper ppid-is-us"] == "1", out
    assert out["subreaper waited"] == "1 7", out
    assert out["wait int-min"] == str(-errno.ESRCH), out
    assert out["wait bad-options"] == str(-errno.EINVAL), out
    assert out["wait no-group"] == str(-errno.ECHILD), out


def test_pidfd_send_signal_checks_its_siginfo_and_init(busybox, program):
    """kernel/signal.c pidfd_send_signal: flags first (EINVAL); a siginfo
    whose si_signo is not the signal is EINVAL and one claiming SI_USER to
    another process EPERM; /init (root's) answers EPERM to nobody, for
    kill(2) too. Before, the siginfo went to the host unchecked (the other
    signal was delivered) and /init took anything."""
    out = _run(busybox, program, "pidfd")
    assert out["pidfd flags"] == str(-errno.EINVAL), out
    assert out["pidfd other-signo"] == str(-errno.EINVAL), out
    assert out["pidfd self"] == "0", out
    assert out["pidfd nobody-init"] == str(-errno.EPERM), out
    assert out["kill nobody-init"] == str(-errno.EPERM), out
    assert out["kill root-init"] == "0", out
    assert out["pidfd forged-origin"] == str(-errno.EPERM), out


def test_ambient_capabilities_are_the_instances(busybox, program):
    """prctl(2) PR_CAP_AMBIENT (security/commoncap.c): a capability is
    raised only when permitted and inheritable, and a user's execve gives
    the ambient set as its permitted and effective sets
    (cap_bprm_creds_from_file); /proc/self/status CapAmb shows it. Before,
    it went to the host process, where the instance's sets mean nothing."""
    out = _run(busybox, program, "ambient")
    assert out["ambient not-inheritable"] == str(-errno.EPERM), out
    assert out["ambient capset"] == "0" and out["ambient raise"] == "0", out
    assert out["ambient is-set"] == "1", out
    assert out["ambient clear-bad"] == str(-errno.EINVAL), out
    assert out["ambient bad-cap"] == str(-errno.EINVAL), out
    bind = "%x" % (1 << 10)       # CAP_NET_BIND_SERVICE
    assert out["ambient CapPrm:"] == bind and out["ambient CapEff:"] == bind, out
    assert out["ambient CapAmb:"] == bind, out


def test_proc_ns_shows_the_instances_namespaces(busybox, program):
    """/proc/<pid>/ns/*: one namespace of each type for the instance, the
    same for every process in it; opened, they answer fs/nsfs.c's ioctls
    as inside a container: the user namespace's owner and parent and the
    PID namespace's parent are outside (EPERM), UTS has none (EINVAL), the
    owner uid is unmapped (overflowuid). Before, /proc/self/ns was missing."""
    out = _run(busybox, program, "ns")
    assert out["ns uts-link"] == "16 uts:", out
    assert out["ns same-as-parent"] == "1" and out["ns open"] == "1", out
    assert out["ns type"] == "1 1", out
    assert out["ns uts-parent"] == str(-errno.EINVAL), out
    assert out["ns pid-parent"] == str(-errno.EPERM), out
    assert out["ns uts-owner"] == str(-errno.EINVAL), out
    assert out["ns user-owner"] == "0 65534", out
    assert out["ns user-userns"] == str(-errno.EPERM), out
    assert out["ns uts-userns"] == "1", out
    assert out["ns not-ns"] == str(-errno.ENOTTY), out
    # setns(2) into them: the install checks, and the mount namespace's root
    assert out["setns uts"] == "0" and out["setns uts-any"] == "0", out
    einval = str(-errno.EINVAL)
    for name in ("wrong-type", "not-ns", "own-user"):
        assert out[f"setns {name}"] == einval, (name, out)
    assert out["setns bad-fd"] == str(-errno.EBADF), out
    assert out["setns mnt"] == "0 /", out
    assert out["setns nobody"] == str(-errno.EPERM), out


def test_uts_namespaces_are_kept_by_the_provider(busybox, program):
    """unshare(2)/clone(2) with CLONE_NEWUTS (CAP_SYS_ADMIN, else EPERM)
    give the task a copy of its host and domain names; sethostname then
    changes only that copy, /proc/self/ns/uts names another namespace, and
    setns(2) with the old one's file goes back. Before, both were EPERM."""
    out = _run(busybox, program, "uts")
    assert out["uts unshare"] == "0" and out["uts new-link"] == "1", out
    assert out["uts inner"] == "inner", out
    assert out["uts setns-back"] == "0" and out["uts back"] == "1", out
    assert out["uts nobody"] == str(-errno.EPERM), out
    assert out["uts clone"] == "1" and out["uts clone-child"] == "cloned", out
    assert out["uts outer-kept"] == "1", out
