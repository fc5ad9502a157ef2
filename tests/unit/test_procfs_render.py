"""/proc/<pid>/stat and /proc/<pid>/status as the instance sees them: the
host's lines for a real process (a `sleep` child), with ids, names,
credentials and times rewritten into the instance's (proc(5))."""

from __future__ import annotations

import os
import subprocess
import time
from types import SimpleNamespace

import pytest

from lxsub.kernel.creds import Creds
from lxsub.kernel.fs.procfs import InitDir, ProcessDir
from lxsub.kernel.ptrace import Ptrace
from lxsub.kernel.task import FsContext, PidSpace, Process, Task


@pytest.fixture
def sleeper():
    """A real host process leading its own session and process group."""
    p = subprocess.Popen(["sleep", "60"], start_new_session=True)
    _wait_asleep(p.pid)      # its fault counters and times stop moving once it sleeps
    yield p
    p.kill()
    p.wait()


def _wait_asleep(pid: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        with open(f"/proc/{pid}/stat") as f:
            comm, _, rest = f.read().rpartition(")")
        if comm.endswith("(sleep") and rest.split()[0] == "S":
            return
        assert time.monotonic() < deadline, "sleep never went to sleep"
        time.sleep(0.01)


def _host_stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()


def _world(sleeper):
    pids = PidSpace()
    parent = Process(pids.allocate(), 1, None)                  # 2
    proc = Process(pids.allocate(), sleeper.pid, parent, comm="napper")       # 3
    pids.add_process(proc)
    creds = Creds(ruid=1000, euid=1001, suid=1002, fsuid=1003, rgid=100, egid=101, sgid=102, fsgid=103,
                  groups=(24, 27), cap_effective=0x5, cap_permitted=0x7, cap_inheritable=0)
    task = Task(proc.pid, sleeper.pid, proc, creds, FsContext(None, None, umask=0o027),
                no_new_privs=True, seccomp_mode=2, seccomp_filters=1)
    pids.add_task(task)
    fs = SimpleNamespace(inst=SimpleNamespace(pids=pids, ptrace=Ptrace(None)), start_jiffies=100)
    return fs, proc, task


def test_stat_line_names_the_instances_ids(sleeper):
    fs, proc, _ = _world(sleeper)
    host = _host_stat(sleeper.pid)
    line = ProcessDir(fs, f"/proc/{proc.pid}", proc, None)._stat(None).decode()
    head, _, rest = line.rpartition(")")
    f = rest.split()
    assert head == f"{proc.pid} (napper"
    assert line.endswith("\n") and len(f) == len(host)
    assert f[0] == host[0]                         # state: the host's (S)
    assert f[1] == str(proc.parent.pid)            # ppid
    assert f[2] == f[3] == str(proc.pid)           # pgrp and session: it leads both
    assert f[5] == host[5] == "-1"                 # tpgid: no terminal
    assert int(f[19]) == max(0, int(host[19]) - 100)   # starttime since the instance's boot
    assert f[6:19] == host[6:19] and f[20:] == host[20:]


def test_stat_of_the_caller_itself_is_running(sleeper):
    """Reading its own stat, a task is in the system call: R, as on Linux."""
    fs, proc, task = _world(sleeper)
    line = ProcessDir(fs, f"/proc/{proc.pid}", proc, None)._stat(task).decode()
    assert line.rpartition(")")[2].split()[0] == "R"


def test_status_names_the_instances_ids_and_credentials(sleeper):
    fs, proc, task = _world(sleeper)
    text = ProcessDir(fs, f"/proc/{proc.pid}", proc, None)._status(None).decode()
    assert text.endswith("\n")
    rows = dict(line.split(":", 1) for line in text.splitlines())
    v = str(proc.pid)
    assert rows["Name"] == "\tnapper"
    assert rows["Pid"] == rows["Tgid"] == rows["NSpid"] == rows["NStgid"] == "\t" + v
    assert rows["NSpgid"] == rows["NSsid"] == "\t" + v
    assert rows["PPid"] == "\t2" and rows["TracerPid"] == "\t0"
    assert rows["Uid"] == "\t1000\t1001\t1002\t1003"
    assert rows["Gid"] == "\t100\t101\t102\t103"
    assert rows["Groups"] == "\t24 27 "
    assert rows["CapEff"] == "\t0000000000000005" and rows["CapPrm"] == "\t0000000000000007"
    assert rows["CapInh"] == rows["CapAmb"] == "\t0000000000000000"
    assert rows["Umask"] == "\t0027"
    assert (rows["Seccomp"], rows["Seccomp_filters"], rows["NoNewPrivs"]) == ("\t2", "\t1", "\t1")
    assert str(sleeper.pid) not in (rows["Pid"], rows["Tgid"], rows["NSpid"])


def test_a_thread_directory_shows_the_threads_id(sleeper):
    fs, proc, task = _world(sleeper)
    thread = Task(7, sleeper.pid, proc, task.creds, task.fs)
    d = ProcessDir(fs, f"/proc/{proc.pid}/task/7", proc, thread)
    assert d._stat(None).decode().startswith("7 (napper) ")
    rows = dict(line.split(":", 1) for line in d._status(None).decode().splitlines())
    assert rows["Pid"] == "\t7" and rows["Tgid"] == "\t" + str(proc.pid)


def test_init_stat_has_the_52_fields_of_proc_5():
    """pid, comm and 50 more, as many as the host's (a program indexes them)."""
    line = InitDir(SimpleNamespace(), "/proc/1")._stat(None).decode()
    assert line.startswith("1 (init) S 0 1 1 ") and line.endswith("\n")
    assert len(line.split()) == 52 == 2 + len(_host_stat(os.getpid()))
