"""PidSpace: the instance's own process ids and their host counterparts."""

from __future__ import annotations

import errno

import pytest

from lxsub.kernel import task as task_mod
from lxsub.kernel.creds import Creds
from lxsub.kernel.task import FsContext, PidSpace, Process, Task


def _process(pids: PidSpace, host_pid: int, parent: Process | None = None) -> Process:
    proc = Process(pids.allocate(), host_pid, parent)
    pids.add_process(proc)
    return proc


def _thread(pids: PidSpace, proc: Process, host_tid: int) -> Task:
    t = Task(pids.allocate(), host_tid, proc, Creds(), FsContext(None, None))
    pids.add_task(t)
    return t


def test_ids_start_at_2_and_are_not_given_twice():
    """1 is the instance's init (the provider), so the first program is 2."""
    pids = PidSpace()
    a = _process(pids, 5001)
    b = _process(pids, 5002)
    t = _thread(pids, b, 5003)
    assert (a.pid, b.pid, t.tid) == (2, 3, 4)
    assert pids.vpid_of_host(5001) == 2 and pids.host_of_vpid(3) == 5002
    assert pids.vpid_of_host(5003) == 4           # a thread's host tid: its own id
    assert pids.host_of_vpid(4) is None           # ... which names no process
    assert pids.host_of_vtid(4) == 5003
    assert pids.vpid_of_host(9999) is None


def _host_groups(monkeypatch, groups: dict[int, int]) -> None:
    """The host's process group and session of each fake host pid."""
    def group(host_pid: int) -> int:
        if host_pid not in groups:
            raise ProcessLookupError(errno.ESRCH, "no such process")
        return groups[host_pid]
    monkeypatch.setattr(task_mod.os, "getpgid", group)
    monkeypatch.setattr(task_mod.os, "getsid", group)


def test_allocation_wraps_past_pid_max_and_skips_ids_in_use(monkeypatch):
    """alloc_pid() wraps at pid_max to the bottom of the range, past ids
    still held (kernel/pid.c)."""
    monkeypatch.setattr(task_mod, "PID_MAX", 6)
    _host_groups(monkeypatch, {6002: 6000, 6003: 6003})
    pids = PidSpace()
    leader = _process(pids, 6000)                   # 2
    thread = _thread(pids, leader, 6001)            # 3
    assert (_process(pids, 6002).pid, _process(pids, 6003).pid) == (4, 5)
    pids.forget_process(leader)                     # 2 lives on as 6002's group id
    pids.remove_task(thread)                        # 3 is free
    assert pids.allocate() == 3                     # wrapped; 2 skipped, 4 and 5 in use


def test_a_pid_no_group_holds_is_given_again(monkeypatch):
    """A reaped process's pid is free once no process has it as its group
    or session (kernel/pid.c free_pid), so ns_last_pid can bring it back."""
    _host_groups(monkeypatch, {7001: 7001})
    pids = PidSpace()
    gone = _process(pids, 7000)                     # 2
    _process(pids, 7001)                            # 3, its own group
    pids.forget_process(gone)
    pids.set_last(gone.pid - 1)
    assert pids.allocate() == gone.pid
    assert pids.group_to_host(gone.pid) is None     # no longer an alias


def test_a_full_space_is_eagain(monkeypatch):
    monkeypatch.setattr(task_mod, "PID_MAX", 4)
    pids = PidSpace()
    _process(pids, 1)
    _process(pids, 2)
    with pytest.raises(OSError) as e:
        pids.allocate()
    assert e.value.errno == errno.EAGAIN


def test_a_gone_leader_keeps_its_id_as_group_and_session():
    """setsid(); exit(): the session id stays the leader's pid."""
    pids = PidSpace()
    leader = _process(pids, 8000)
    member = _process(pids, 8001, leader)
    pids.forget_process(leader)
    assert pids.vpid_of_host(8000) is None
    assert pids.group_to_virtual(8000) == leader.pid
    assert pids.group_to_host(leader.pid) == 8000
    assert _process(pids, 8002).pid not in (leader.pid, member.pid)


def test_foreign_group_ids_get_a_stable_virtual_id():
    """A host group no instance process leads (the terminal's session) gets
    one id, the same each time, that names it back."""
    pids = PidSpace()
    v = pids.group_to_virtual(4242)
    assert v == pids.group_to_virtual(4242)
    assert pids.group_to_host(v) == 4242
    assert _process(pids, 9000).pid != v


def test_a_reused_host_pid_drops_the_old_alias():
    pids = PidSpace()
    v = pids.group_to_virtual(4242)
    proc = _process(pids, 4242)
    assert pids.group_to_virtual(4242) == proc.pid != v
    assert pids.group_to_host(v) is None


def test_zero_and_negative_ids_pass_through():
    """0 means the caller's own group and -1 every process (kill(2))."""
    pids = PidSpace()
    for v in (0, -1):
        assert pids.group_to_virtual(v) == v
        assert pids.group_to_host(v) == v


def test_removing_a_task_keeps_a_newer_owner_of_its_id():
    pids = PidSpace()
    proc = _process(pids, 100)
    old = _thread(pids, proc, 101)
    newer = Task(old.tid, 102, proc, Creds(), FsContext(None, None))
    pids.add_task(newer)                 # same virtual id, another host thread
    pids.remove_task(old)
    assert pids.host_of_vtid(old.tid) == 102
    assert 101 not in proc.threads and 102 in proc.threads


def _in_namespace(pids: PidSpace, host_pid: int, ns, parent: Process | None = None) -> Process:
    """A process made in PID namespace ns (None: the instance's), as
    Instance._new_task makes one: its numbers at every level."""
    proc = Process(pids.allocate(), host_pid, parent, pid_ns=ns, ns_pids=pids.numbers_below(ns))
    pids.add_process(proc)
    return proc


def test_a_nested_pid_namespace_numbers_its_processes_from_1():
    """pid_namespaces(7): the first process of a new namespace is its pid
    1 there and its init; a namespace below has its own numbers too; each
    process is seen from its namespace and those above it, not from below."""
    pids = PidSpace()
    outer = _process(pids, 6001)
    ns1 = task_mod.PidNamespace(None)
    init1 = _in_namespace(pids, 6002, ns1, outer)
    child1 = _in_namespace(pids, 6003, ns1, init1)
    ns2 = task_mod.PidNamespace(ns1)
    init2 = _in_namespace(pids, 6004, ns2, child1)
    assert (ns1.level, ns2.level) == (1, 2)
    assert ns1.init is init1 and ns2.init is init2
    assert init1.ns_pids == (1,) and child1.ns_pids == (2,) and init2.ns_pids == (3, 1)
    # seen from each namespace
    assert [task_mod.pid_in(init2, ns) for ns in (None, ns1, ns2)] == [init2.pid, 3, 1]
    assert task_mod.pid_in(outer, ns1) == 0 and task_mod.pid_in(child1, ns2) == 0
    # looked up by each namespace's numbers
    assert pids.process_in(ns1, 1) is init1 and pids.process_in(ns2, 1) is init2
    assert pids.process_in(ns1, 3) is init2 and pids.process_in(ns2, 2) is None
    assert pids.process_in(None, init2.pid) is init2
    assert {p.pid for p in pids.visible(ns1)} == {init1.pid, child1.pid, init2.pid}
    assert task_mod.ns_within(ns2, ns1) and not task_mod.ns_within(ns1, ns2)
    assert task_mod.ns_within(None, None) and not task_mod.ns_within(None, ns1)
    # a process gone frees its numbers at every level
    pids.forget_process(init2)
    assert pids.process_in(ns1, 3) is None and pids.process_in(ns2, 1) is None


def test_ns_last_pid_of_a_nested_namespace_steers_its_own_numbers():
    """pid_ns_ctl_handler: the next pid of that namespace only."""
    pids = PidSpace()
    ns = task_mod.PidNamespace(None)
    _in_namespace(pids, 7001, ns)
    ns.set_last(41)
    proc = _in_namespace(pids, 7002, ns)
    assert proc.ns_pids == (42,) and ns.last() == 42
    assert proc.pid == 3                          # the instance's numbers go on as before


def test_a_namespace_whose_init_is_gone_takes_no_process():
    ns1 = task_mod.PidNamespace(None)
    ns2 = task_mod.PidNamespace(ns1)
    assert ns2.open_to_new()
    ns1.ended = True
    assert not ns2.open_to_new()                  # PIDNS_ADDING is cleared below too
