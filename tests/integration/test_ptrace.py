"""ptrace(2) between processes of an instance, emulated by the provider
(kernel/ptrace.py): the provider is the host's tracer of every pico process,
so before this the table denied ptrace (EPERM for everything).

tests/fixtures/programs/ptracer.c is a small tracer built static on the
host and run as root in BusyBox; each mode traces a child the way strace
and gdb do. The values asserted are the ones the same program prints run
natively on Linux (yama's ptrace_scope 1 where the host has none)."""

from __future__ import annotations

import errno
import re

import pytest

from tests.fixtures.cbuild import PROGRAMS, gcc_static
from tests.integration.distros import describe, run_probe

PATH = "/ptrace/tracer"


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> bytes:
    tmp = tmp_path_factory.mktemp("ptrace")
    return gcc_static(tmp, "ptracer", PROGRAMS / "ptracer.c").read_bytes()


def _run(busybox, program: bytes, mode: str) -> dict[str, str]:
    out = run_probe(busybox, program, PATH, mode, user="root")
    assert not any(k.startswith("error") for k in out), out
    return out


def test_syscall_stops_of_native_and_trapped_calls(busybox, program):
    out = _run(busybox, program, "syscall")
    assert out["syscall setoptions"] == "0", out
    # write(2) runs natively, getpid(2) is answered by the provider: both
    # stop at entry and exit, in order, with the number the tracee made
    assert out["syscall write"] == "1 1", out
    assert out["syscall getpid"] == "2 child", out        # the child's virtual pid
    assert "syscall order-wrong" not in out and "syscall info-wrong" not in out, out
    assert out["syscall exit"] == "7", out


def test_peek_poke_and_registers(busybox, program):
    out = _run(busybox, program, "peekpoke")
    assert out["peekpoke peek"] == "1234", out
    assert out["peekpoke poke"] == "0" and out["peekpoke poketext"] == "0", out
    assert out["peekpoke badaddr"] == str(-errno.EIO), out
    assert out["peekpoke getregs"] == "0" and out["peekpoke peekuser"] == "same", out
    assert out["peekpoke setregs"] == "0", out
    assert out["peekpoke exit"] == "42", out             # the poked value


def test_proc_pid_mem_of_a_tracee(busybox, program):
    out = _run(busybox, program, "procmem")
    assert out["procmem open"] == "0", out
    assert out["procmem read"] == "8 1234" and out["procmem write"] == "8", out
    assert out["procmem text"] == "1", out                 # a breakpoint's way into text
    assert out["procmem exit"] == "42", out
    assert out["procmem init"] == str(-errno.ENOENT) or out["procmem init"] == str(-errno.EACCES), out


def test_signal_delivery_stops_suppress_and_inject(busybox, program):
    out = _run(busybox, program, "signal")
    assert out["signal first"] == "User defined signal 1", out
    assert out["signal siginfo"] == "10 child", out       # si_pid: the virtual pid
    assert out["signal second"] == "User defined signal 2", out
    # SIGUSR1 suppressed, SIGUSR2 replaced by SIGUSR1: one SIGUSR1 handled
    assert out["signal exit"] == "1", out


def test_the_tracers_sigchld_says_trapped(busybox, program):
    """do_notify_parent_cldstop for a tracer: SIGCHLD with CLD_TRAPPED,
    the tracee's pid and its stop signal as si_status; then CLD_EXITED."""
    out = _run(busybox, program, "sigchld")
    assert out["sigchld first"] == "4 child 19", out        # CLD_TRAPPED, SIGSTOP
    assert out["sigchld signal"] == "4 child 10", out       # SIGUSR1
    assert out["sigchld exit"] == "1 child 5", out          # CLD_EXITED


def test_attach_detach_and_tracer_pid(busybox, program):
    out = _run(busybox, program, "attach")
    assert out["attach before"] == "0" and out["attach attach"] == "0", out
    assert out["attach again"] == str(-errno.EPERM), out
    assert out["attach stop"] == "child Stopped (signal)", out
    assert out["attach tracerpid"] == "me t", out
    assert out["attach held"] == "yes", out
    assert out["attach detach"] == "0" and out["attach after"] == "0", out
    assert out["attach notraced"] == str(-errno.ESRCH), out
    assert out["attach end"] == "Terminated", out


def test_seize_and_interrupt(busybox, program):
    out = _run(busybox, program, "seize")
    assert out["seize badopt"] == str(-errno.EIO), out
    assert out["seize seize"] == "0", out
    assert out["seize notstopped"] == str(-errno.ESRCH), out
    assert out["seize interrupt"] == "0" and out["seize event"] == "128", out
    assert out["seize detach"] == "0" and out["seize end"] == "Killed", out


def test_seize_of_a_stopped_task_and_listen(busybox, program):
    out = _run(busybox, program, "stopped")
    assert out["stopped seize"] == "0", out
    assert out["stopped getregs"] == "0", out          # in a ptrace stop when SEIZE returns
    assert out["stopped report"] == "128 Stopped (signal)", out     # a group-stop
    assert out["stopped listen"] == "0", out
    assert out["stopped listen-again"] == str(-errno.ESRCH), out    # listening: not stopped
    assert out["stopped exit"] == "9", out             # SIGCONT woke it


def test_group_stops_of_a_tracee(busybox, program):
    out = _run(busybox, program, "groupstop")
    # SIGSTOP first stops at its delivery (with a siginfo); delivered, the
    # group stops and the tracer sees a group-stop: no siginfo (EINVAL)
    assert out["groupstop delivery"] == "Stopped (signal) 0", out
    assert out["groupstop delivery-siginfo"] == "0", out
    assert out["groupstop stop"] == "Stopped (signal) 0", out
    assert out["groupstop siginfo"] == str(-errno.EINVAL), out
    assert out["groupstop exit"] == "8", out                  # a restart ended it
    # seized: PTRACE_EVENT_STOP in the status, a siginfo, and LISTEN
    assert out["groupstop seized-delivery"] == "Stopped (signal) 0", out
    assert out["groupstop seized-stop"] == "Stopped (signal) 128", out
    assert out["groupstop seized-siginfo"] == "0", out
    assert out["groupstop listen"] == "0" and out["groupstop listening"] == "0", out
    assert out["groupstop seized-exit"] == "9", out


def test_exit_and_vfork_done_events(busybox, program):
    out = _run(busybox, program, "exitevent")
    assert out["exitevent options"] == "0", out
    assert out["exitevent vforkdone"] == "child", out         # its message: the child's pid
    assert out["exitevent exiting"] == "6 0", out             # exit status, registers readable
    assert out["exitevent exit"] == "6", out


def test_peeksiginfo_reads_queued_signals(busybox, program):
    out = _run(busybox, program, "peeksiginfo")
    sigrtmin = "34"
    assert out["peeksiginfo private"] == "0", out             # kill and sigqueue: shared queue
    assert out["peeksiginfo shared"] == "3", out
    assert out["peeksiginfo 0"] == f"{sigrtmin} 77 child", out
    assert out["peeksiginfo 1"] == f"{sigrtmin} 78 child", out
    assert out["peeksiginfo 2"] == "10 0 child", out          # SIGUSR1
    assert out["peeksiginfo off1"] == "1 78", out
    assert out["peeksiginfo past"] == "0", out
    assert out["peeksiginfo badflags"] == str(-errno.EINVAL), out
    assert out["peeksiginfo negative"] == str(-errno.EINVAL), out
    assert out["peeksiginfo fault"] == str(-errno.EFAULT), out
    assert out["peeksiginfo badargs"] == str(-errno.EFAULT), out
    assert out["peeksiginfo exit"] == "1", out                # still queued: not dequeued


def test_seccomp_ret_trace_of_the_tracees_own_filter(busybox, program):
    out = _run(busybox, program, "seccomp")
    assert out["seccomp first"] == "User defined signal 1", out
    assert out["seccomp options"] == "0", out
    # PTRACE_EVENT_SECCOMP with the filter's SECCOMP_RET_DATA, at the call
    assert out["seccomp event"] == "7 0x55 sched_yield", out
    assert out["seccomp exit"] == "11", out      # ENOSYS without TRACESECCOMP, then it ran


def test_fork_and_exec_events_auto_attach(busybox, program):
    out = _run(busybox, program, "events")
    assert out["events fork"] == "child", out
    assert out["events stop"].startswith(("grandchild Stopped", "child Child exited")), out
    # the auto-attached grandchild's exit goes to its tracer, not only its parent
    assert out["events exit"] in ("grandchild 3", "child 0"), out
    assert out["events exec"] == "child same", out


def test_waitid_reports_stops_and_exits_of_tracees(busybox, program):
    out = _run(busybox, program, "waitid")
    assert out["waitid stop"] == "0" and out["waitid trapped"] == "1 10 child", out   # SIGUSR1
    assert out["waitid exit"] == "0" and out["waitid exited"] == "1 5 child", out


def test_a_tracers_end_lets_its_stopped_tracee_run(busybox, program):
    out = _run(busybox, program, "tracerdies")
    assert out["tracerdies tracer"] == "0", out           # it attached and saw the stop
    assert out["tracerdies tracee"] in ("0 S", "0 R"), out  # detached and running again


def test_who_may_attach(busybox, program):
    out = _run(busybox, program, "access")
    assert out["access self"] == str(-errno.EPERM), out
    assert out["access init"] == str(-errno.EPERM), out    # /init is the provider
    assert out["access nopid"] == str(-errno.ESRCH), out
    assert out["access root"] == str(-errno.EPERM), out    # nobody may not trace root
    assert out["access rootmem"] == str(-errno.EACCES), out  # nor open its /proc/<pid>/mem
    assert out["access scope"] == "1", out
    # yama ptrace_scope 1: a sibling may not, the parent may
    assert out["access sibling"] == str(-errno.EPERM), out
    assert out["access parent"] == "0", out


# -- Debian's strace ---------------------------------------------------------------

@pytest.fixture(scope="module")
def debugging(host_user, debian_tar, debugger_debs):
    """Debian with strace and gdb installed by dpkg -i, offline: an instance
    of its own ('debug'), since the .debs upgrade libraries (python3.11,
    libssl3, zlib) that the shared Debian fixture's other tests use."""
    from tests.integration.distros import imported
    debian = imported(host_user, "debug", debian_tar)
    for deb in debugger_debs:
        cp = debian.sh(f"mkdir -p /tmp/debs && cat > /tmp/debs/{deb.name}", input=deb.read_bytes())
        assert cp.returncode == 0, describe(cp)
    cp = debian.sh("dpkg -i /tmp/debs/*.deb && rm -r /tmp/debs", timeout=600)
    assert cp.returncode == 0, describe(cp)
    return debian


def test_strace_follows_a_pipeline(debugging):
    cp = debugging.sh("cd /tmp && strace -f -o log sh -c 'cat /etc/hostname | wc -c' "
                      "&& cat log && echo pids $$", timeout=120)
    assert cp.returncode == 0, describe(cp)
    out = cp.stdout.decode()
    log = out.split("\n", 1)[1]
    assert out.split("\n", 1)[0].strip() == str(len(debugging.out("cat /etc/hostname").strip()) + 1), out
    assert 'execve("/usr/bin/sh", ["sh", "-c", "cat /etc/hostname | wc -c"]' in log, log
    assert 'openat(AT_FDCWD, "/etc/hostname", O_RDONLY' in log, log
    assert "execve(\"/usr/bin/cat\"" in log and "execve(\"/usr/bin/wc\"" in log, log
    pids = {int(line.split()[0]) for line in log.splitlines() if line.split()[0].isdigit()}
    assert len(pids) == 3, log                      # sh, cat and wc
    # the pids clone/fork returned in sh are the ones strace names them by
    # (its wait4's): both virtual
    forked = {int(m.group(1)) for m in re.finditer(
        r"^\d+ +(?:(?:clone|fork|vfork)\(|<\.\.\. (?:clone|fork|vfork) resumed>).*= (\d+)$",
        log, re.M)}
    assert len(forked) == 2 and forked < pids, log
    assert all("wait4(-1, " in log and f"= {p}" in log for p in forked), log
    assert "wait4(" in log and ("clone(" in log or "fork(" in log or "vfork(" in log), log
    assert "read(" in log and "write(1, " in log, log
    assert "+++ exited with 0 +++" in log, log


def test_strace_counts_calls(debugging):
    cp = debugging.sh("strace -f -c -o /tmp/count.log ls / >/dev/null && cat /tmp/count.log", timeout=120)
    assert cp.returncode == 0, describe(cp)
    out = cp.stdout.decode()
    assert "% time" in out and "total" in out, out
    rows = {line.split()[-1]: line for line in out.splitlines() if line.strip()}
    assert "execve" in rows and "getdents64" in rows and "openat" in rows, out


def test_strace_attaches_to_a_sleeper_and_leaves_it_running(debugging):
    # As root: yama's ptrace_scope 1 lets others attach only to descendants.
    script = ("sleep 60 & pid=$!; sleep 0.5; "
              "strace -o /tmp/attach.log -p $pid & tracer=$!; sleep 2; "
              "grep TracerPid /proc/$pid/status; kill -INT $tracer; wait $tracer; "
              "grep -E 'TracerPid|State' /proc/$pid/status; kill $pid; wait $pid; echo status $?; "
              "cat /tmp/attach.log")
    cp = debugging.lx(["-u", "root", "--", script], timeout=120)
    assert cp.returncode == 0, describe(cp)
    out = cp.stdout.decode()
    lines = out.splitlines()
    tracer = int(lines[0].split()[1])
    assert tracer > 0, out                                # traced, by strace's virtual pid
    after = dict(line.split(":", 1) for line in lines[1:3])
    assert after["TracerPid"].strip() == "0", out          # detached...
    assert after["State"].split()[0] == "S", out           # ...and sleeping again, not stopped
    assert lines[3] == "status 143", out                  # then ended by our SIGTERM
    assert "restart_syscall(" in out or "clock_nanosleep(" in out, out


# -- Debian's gdb ------------------------------------------------------------------
# Static programs, and dynamic (PIE) ones: those run on the host as the
# instance's ld.so, and lxsub maps the program and patches the auxv at
# the exec event (kernel/exec/mapping.py) so that gdb, which relocates the
# main program by AT_ENTRY there, finds it where Linux would put it.

DEBUGGEE = r"""
#include <stdio.h>
#include <stdlib.h>
int total;
int add(int a, int b)
{
    int sum = a + b;
    total += sum;
    return sum;
}
int main(int argc, char **argv)
{
    int local = 41;
    int r = add(local, 1);
    printf("r=%d\n", r);
    if (argc > 1)
        *(volatile int *)0 = r;          /* line 17: the crash */
    return 0;
}
"""


@pytest.fixture(scope="module")
def debuggee(debugging):
    cp = debugging.sh("mkdir -p /tmp/g && cat > /tmp/g/prog.c && gcc -g -O0 -static -o /tmp/g/prog /tmp/g/prog.c",
                      input=DEBUGGEE.encode(), timeout=300)
    assert cp.returncode == 0, describe(cp)
    return debugging


@pytest.fixture(scope="module")
def pie_debuggee(debugging):
    """The same program built PIE (gcc's default: dynamic, ET_DYN)."""
    cp = debugging.sh("mkdir -p /tmp/g && cat > /tmp/g/pie.c && gcc -g -O0 -o /tmp/g/pie /tmp/g/pie.c "
                      "&& file /tmp/g/pie", input=DEBUGGEE.encode(), timeout=300)
    assert cp.returncode == 0 and b"pie executable" in cp.stdout, describe(cp)
    return debugging


def _gdb(distro, *commands: str, args: str = "", prog: str = "/tmp/g/prog") -> str:
    ex = " ".join(f"-ex '{c}'" for c in commands)
    cp = distro.sh(f"gdb -nx -batch {ex} --args {prog} {args} 2>&1", timeout=180)
    return cp.stdout.decode()


def test_gdb_breakpoint_backtrace_print(debuggee):
    out = _gdb(debuggee, "break add", "run", "bt", "print a", "print b", "finish")
    assert "Breakpoint 1, add (a=41, b=1) at /tmp/g/prog.c:7" in out, out
    assert "#1  " in out and "in main (" in out, out          # bt: main is the caller
    assert "$1 = 41" in out and "$2 = 1" in out, out
    assert "Value returned is $3 = 42" in out, out            # finish


def test_gdb_next_step_and_watchpoints(debuggee):
    out = _gdb(debuggee, "break main", "run", "next", "step", "watch total", "continue",
               "set can-use-hw-watchpoints 0", "watch sum", "continue", "continue")
    assert "main (argc=1" in out and "13\t    int local = 41;" in out, out
    assert "14\t    int r = add(local, 1);" in out, out         # next
    assert "add (a=41, b=1) at /tmp/g/prog.c:7" in out, out     # step into add
    # a hardware watchpoint (debug registers through POKEUSER), then a software one
    assert "Hardware watchpoint 2: total" in out, out
    assert "Old value = 0\nNew value = 42" in out, out
    assert "Watchpoint 3: sum" in out, out
    assert "Watchpoint 3 deleted because the program has left the block" in out or \
        "New value = 42" in out.split("Watchpoint 3: sum", 1)[1], out


def test_gdb_on_a_pie_program(pie_debuggee):
    """Breakpoints, bt, print, next/step/finish and a hardware watchpoint
    in a dynamically linked PIE program, loaded where Linux loads it with
    gdb's ASLR off. Before the program was mapped at the exec (ld.so
    mapped it later), gdb's breakpoints missed: "Cannot insert breakpoint"."""
    out = _gdb(pie_debuggee, "break add", "run", "bt", "print a", "print b", "finish",
               prog="/tmp/g/pie")
    assert "Breakpoint 1, add (a=41, b=1) at /tmp/g/pie.c:7" in out, out
    assert "#1  0x00005555555" in out and "in main (" in out, out   # bt, at 0x555555554000 + offset
    assert "$1 = 41" in out and "$2 = 1" in out, out
    assert "Value returned is $3 = 42" in out, out
    out = _gdb(pie_debuggee, "break main", "run", "next", "step", "watch total", "continue",
               "continue", prog="/tmp/g/pie")
    assert "main (argc=1" in out and "13\t    int local = 41;" in out, out
    assert "14\t    int r = add(local, 1);" in out, out
    assert "add (a=41, b=1) at /tmp/g/pie.c:7" in out, out
    assert "Hardware watchpoint 2: total" in out and "Old value = 0\nNew value = 42" in out, out
    assert "r=42" in out and "exited normally]" in out, out


# od (a PIE) dumps its own /proc/self/auxv: "proc KEY VALUE" in hex.
PROC_AUXV = "od -A n -t x8 -w16 /proc/self/auxv | sed 's/^ */proc /'"


def test_a_pie_programs_auxv_and_cmdline_are_linuxs(pie_debuggee):
    """What the exec leaves is Linux's: the auxv, in memory (ld.so's
    LD_SHOW_AUXV) and in /proc/self/auxv, names the program (AT_ENTRY its
    entry, AT_PHDR its headers, near ELF_ET_DYN_BASE) and AT_BASE the
    loader; argv and /proc/self/cmdline are the program's own."""
    script = ("LD_SHOW_AUXV=1 /tmp/g/pie | grep -E '^AT_(ENTRY|PHDR|BASE|EXECFN)'; "
              "python3 -c 'import sys; print(sys.argv)' one two; "
              "python3 -c 'import sys; print(open(sys.argv[1]).read().split(chr(0)))' /proc/self/cmdline; "
              + PROC_AUXV)
    cp = pie_debuggee.sh(script, timeout=120)
    out = cp.stdout.decode()
    fields = dict(line.split(":", 1) for line in out.splitlines() if line.startswith("AT_"))
    entry, phdr, base = (int(fields[k].strip(), 16) for k in ("AT_ENTRY", "AT_PHDR", "AT_BASE"))
    assert entry >> 44 == 5 and phdr >> 44 == 5, out        # the program, near 0x555555554000
    assert base and base >> 44 == 7, out                    # the loader, in the mmap area
    assert fields["AT_EXECFN"].strip() == "/tmp/g/pie", out
    assert "['-c', 'one', 'two']" in out, out
    proc = {int(k, 16): int(v, 16) for k, v in
            (line.split()[1:3] for line in out.splitlines() if line.startswith("proc "))}
    assert proc[9] >> 44 == 5 and proc[3] >> 44 == 5 and proc[7] >> 44 == 7, out
    assert "['python3', '-c', 'import sys; print(open(sys.argv[1]).read().split(chr(0)))', " \
        "'/proc/self/cmdline', '']" in out, out


THREADS = r"""
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
#include <sys/wait.h>
static pthread_barrier_t barrier;
void stop_here(void) { }
static void *worker(void *arg) { pthread_barrier_wait(&barrier); pthread_barrier_wait(&barrier); return arg; }
int main(int argc, char **argv)
{
    pthread_t t[2];
    pthread_barrier_init(&barrier, NULL, 3);
    for (int i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, worker, NULL);
    pthread_barrier_wait(&barrier);
    stop_here();
    pthread_barrier_wait(&barrier);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    if (argc > 1) {
        pid_t pid = fork();
        if (pid == 0)
            execl("/bin/true", "true", (char *)0);
        waitpid(pid, NULL, 0);
    }
    if (argc > 2)
        sleep(60);
    return 0;
}
"""


@pytest.fixture(scope="module")
def threads_program(debugging):
    cp = debugging.sh("mkdir -p /tmp/g && cat > /tmp/g/threads.c && "
                      "gcc -g -O0 -static -pthread -o /tmp/g/threads /tmp/g/threads.c && "
                      "gcc -g -O0 -pthread -o /tmp/g/threads-pie /tmp/g/threads.c",
                      input=THREADS.encode(), timeout=300)
    assert cp.returncode == 0, describe(cp)
    return debugging


@pytest.mark.parametrize("build", ["static", "pie"])
def test_gdb_info_threads_of_a_pthread_program(threads_program, build):
    prog = "/tmp/g/threads" if build == "static" else "/tmp/g/threads-pie"
    cp = threads_program.sh("gdb -nx -batch -ex 'break stop_here' -ex run -ex 'info threads' "
                            f"{prog} 2>&1", timeout=180)
    out = cp.stdout.decode()
    assert "Breakpoint 1, stop_here ()" in out, out
    threads = re.findall(r"^[* ] +\d+ +Thread .*\(LWP \d+\)", out, re.M)
    assert len(threads) == 3, out
    assert any(line.startswith("* 1") for line in threads), out


def test_gdb_catches_fork_and_exec(threads_program):
    cp = threads_program.sh("gdb -nx -batch -ex 'catch fork' -ex 'catch exec' -ex run -ex continue "
                            "-ex 'info inferiors' --args /tmp/g/threads fork 2>&1", timeout=180)
    out = cp.stdout.decode()
    assert "Catchpoint 1 (fork)" in out and "Catchpoint 2 (exec)" in out, out
    assert "(forked process " in out, out


def test_gdb_attaches_and_detaches(threads_program):
    # As root: yama's ptrace_scope 1 lets others attach only to descendants.
    script = ("/tmp/g/threads fork sleep & pid=$!; sleep 1; "
              "gdb -nx -batch -p $pid -ex 'info threads' -ex detach 2>&1; "
              "grep -E 'TracerPid|State' /proc/$pid/status; kill $pid; wait $pid; echo status $?")
    cp = threads_program.lx(["-u", "root", "--", script], timeout=180)
    out = cp.stdout.decode()
    assert "in clock_nanosleep ()" in out, out                 # where sleep(3) was
    assert "[Inferior 1 (process" in out and "detached]" in out, out
    assert "TracerPid:\t0" in out and "State:\tS" in out, out
    assert "status 143" in out, out


def test_gdb_reports_a_crash_with_its_line(debuggee):
    out = _gdb(debuggee, "run", "bt", args="crash")
    assert "Program received signal SIGSEGV, Segmentation fault." in out, out
    assert "main (argc=2" in out and "prog.c:17" in out, out


def test_gdb_runs_python(debugging):
    cp = debugging.sh("gdb -nx -batch -ex run --args python3 -c 'print(6 * 7)' 2>&1", timeout=180)
    out = cp.stdout.decode()
    assert "42" in out.splitlines(), out
    assert "exited normally]" in out, out
    # python3 is dynamic (Debian's is not PIE): a breakpoint in its main
    # program is hit, the backtrace goes through libc to _start.
    cp = debugging.sh("gdb -nx -batch -ex 'break PyRun_SimpleStringFlags' -ex run -ex bt -ex continue "
                      "--args python3 -c 'print(6 * 7)' 2>&1", timeout=180)
    out = cp.stdout.decode()
    assert "Breakpoint 1, 0x" in out and "in PyRun_SimpleStringFlags ()" in out, out
    assert "in Py_BytesMain ()" in out and "in _start ()" in out, out
    assert "42" in out.splitlines() and "exited normally]" in out, out


_SIGTRAP_STATE = ("use POSIX; my $s = POSIX::SigSet->new; sigprocmask(SIG_BLOCK, undef, $s); "
                  "print $s->ismember(SIGTRAP), ($SIG{TRAP} // '') eq 'IGNORE' ? 1 : 0, qq{\\n}")


@pytest.mark.parametrize("setup, expected", [
    ("sigprocmask(SIG_BLOCK, POSIX::SigSet->new(SIGTRAP)); $SIG{TRAP} = 'IGNORE';", "11"),
    ("sigprocmask(SIG_BLOCK, POSIX::SigSet->new(SIGTRAP));", "10"),
    ("$SIG{TRAP} = 'IGNORE';", "01"),
    ("", "00")])
def test_a_dynamic_exec_keeps_a_blocked_or_ignored_sigtrap(debian, setup, expected):
    """execve(2) keeps the signal mask and ignored dispositions; the trap
    the exec mapping's code ends with (and a single step) is forced, which
    unblocks SIGTRAP and resets an ignored one: both are set back.
    Natively each line is the expected one."""
    script = f"use POSIX; {setup} exec '/usr/bin/perl', '-e', q{{{_SIGTRAP_STATE}}}"
    cp = debian.exe("/usr/bin/perl", "-e", script, timeout=120)
    assert cp.stdout.decode().strip() == expected, describe(cp)
