"""Provider workers: path queries of different processes answered at once,
on different CPUs.

The provider's loop (platform/engine.py) is one Python thread, and Python
runs one thread at a time, so a second CPU needs a second process. At
start the provider forks `count` workers. Every worker receives from every
seccomp listener (platform/fanout.py: one notification goes to exactly one
receiver) and answers the calls it can answer exactly; anything else it
passes to the provider, which answers it on its own descriptor of the same
listener. Either the worker or the provider answers, never both.

What a worker answers: the read-only path queries (SERVED: stat, lstat,
newfstatat, statx, readlink(at), access, faccessat(2)), most of a build's
trapped calls. What they read, and how the worker's copy is kept exact:

- the caller's credentials, root and working directory: asked of the
  provider per thread, kept while the TASKS epoch stands. The provider
  bumps it *before* any event that may change a task (every event but the
  QUIET notifications: the served calls themselves and open), so a call
  received after a change became visible to any program sees the new
  state, and a host thread id reused by a new process is never taken for
  the old one (its exit bumped the epoch);
- the mount table and VolFs's records in memory: the fork's copy, good
  while the SNAPSHOT epoch stands; the provider bumps it before changing
  either (MountTable.attach/umount/pivot/tuck, VolFs.watch_memory). A worker that sees
  it moved passes the call on and exits; the provider forks a new one;
- everything else from the host, afresh: the distro tree, its metadata
  attribute, the caller's memory and descriptors (pidfd_getfd).

Every other file system (procfs, tmpfs, devpts, DrvFs...) keeps its state
in the provider's memory: in a worker it is a `_Refused` stand-in, and a
call that reaches it is passed on (NotCurrent). ptrace stays with the
provider (the tracer thread), and so does every call that changes state.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import pickle
import signal
import socket
import struct
import traceback
from typing import TYPE_CHECKING

from lxsub.abi.sysno import NUMBERS
from lxsub.kernel import table
from lxsub.kernel.call import Call
from lxsub.kernel.creds import Creds
from lxsub.kernel.task import Process, Task
from lxsub.kernel.vfs.caller import FsContext
from lxsub.kernel.vfs.filesystem import NotCurrent
from lxsub.kernel.vfs.node import Node
from lxsub.platform import affinity
from lxsub.platform.fanout import MAX_SLOTS, SNAPSHOT, TASKS, Epochs, Receivers, become_worker, socket_pair
from lxsub.platform.memory import MemoryFault
from lxsub.platform.notify import KILLABLE_WAIT, LISTENERS, Listener, Notification

if TYPE_CHECKING:
    from lxsub.kernel.instance import Instance

SERVED = frozenset(NUMBERS[n] for n in (
    "stat", "lstat", "newfstatat", "statx", "readlink", "readlinkat",
    "access", "faccessat", "faccessat2"))
# Served in the provider without a change to any task or to the mount table.
QUIET = SERVED | frozenset(NUMBERS[n] for n in ("open", "openat", "openat2", "getcwd"))

_NOTE = struct.Struct("<iQIi6Q")       # provider's listener fd, id, pid, nr, args
_TID = struct.Struct("<I")
_FDS_SPACE = socket.CMSG_SPACE(4 * 4)   # up to 4 descriptors with a message
_FD = struct.Struct("<i")
_STALE_EXIT = 3                       # a worker's exit status: its snapshot is out of date
_RESPAWN_GAP_S = 0.05                 # at most one fork per slot in this time
_CRASH_GAP_S = 1.0
_CREDS_FIELDS = tuple(f.name for f in dataclasses.fields(Creds) if not f.name.endswith("keyring"))


def wanted_count() -> int:
    """LX_WORKERS=N (in the manager's environment): N workers; `auto`: one
    per CPU the provider may use (none on one CPU). Unset or 0: none, the
    provider serves every call itself. Off by default: on the 2-CPU
    development VM, shared with other work, no speed-up could be shown yet
    (docs/ARCHITECTURE.md, "Concurrency")."""
    if not LISTENERS:
        return 0         # workers receive from listeners: the ptrace platform has none
    if not KILLABLE_WAIT:
        # Without WAIT_KILLABLE_RECV a signal can wake the caller while its
        # call is on the way from a worker to the provider, and the repair
        # of lost answers (dispatch) counts on the provider answering at
        # once: a passed-on call would lose far more answers than it can
        # repair (tests/integration/test_interrupted_calls.py).
        return 0
    value = os.environ.get("LX_WORKERS", "")
    if value == "auto":
        cpus = affinity.usable_cpus()
        return min(cpus, MAX_SLOTS) if cpus > 1 else 0
    return min(int(value), MAX_SLOTS) if value.isdigit() else 0


# -- the provider's side ----------------------------------------------------------

class _Handle:
    __slots__ = ("slot", "pid", "sock")

    def __init__(self, slot: int, pid: int, sock: socket.socket) -> None:
        self.slot, self.pid, self.sock = slot, pid, sock


class WorkerPool:
    """The provider's workers; see the module's docstring."""

    def __init__(self, inst: "Instance", count: int) -> None:
        self.inst = inst
        self.count = count
        self.epochs = Epochs()
        self.live: dict[int, _Handle] = {}
        self.last_fork: dict[int, float] = {}
        self.stopping = False
        self.forks = 0
        self.questions = 0             # task states asked for by workers

    def start(self) -> None:
        engine = self.inst.engine
        engine.quiet_nrs = QUIET
        engine.before_change = self._tasks_changing
        engine.on_new_listener = self._new_listener
        self._watch_snapshot()
        for slot in range(self.count):
            try:
                self._fork(slot)
            except OSError as e:       # EAGAIN, ENOMEM: serve with fewer, or alone
                self.inst.log.warn(f"provider worker {slot} not started: {e}")
        if self.live:
            engine.receive_here(False)

    def _tasks_changing(self) -> None:
        self.epochs.bump(TASKS)

    def _snapshot_changing(self) -> None:
        self.epochs.bump(SNAPSHOT)

    def _watch_snapshot(self) -> None:
        """Bump SNAPSHOT before the mount table or a file system's records
        in memory change (before: the change cannot be seen yet)."""
        table_ = self.inst.vfs.mounts
        attach, umount, pivot, tuck = table_.attach, table_.umount, table_.pivot, table_.tuck

        def attaching(m, *args):           # (MountTable.mount attaches too)
            self._snapshot_changing()
            m.fs.watch_memory(self._snapshot_changing)
            return attach(m, *args)

        def changing(change):
            def run(*args):
                self._snapshot_changing()
                return change(*args)
            return run

        # (Only the instance's first mount namespace: a worker passes on
        # the calls of a task in another, whose mounts it does not know.)
        table_.attach = attaching
        table_.umount, table_.pivot, table_.tuck = changing(umount), changing(pivot), changing(tuck)
        for m in table_.mounts:
            m.fs.watch_memory(self._snapshot_changing)

    def _fork(self, slot: int) -> None:
        import time
        self.last_fork[slot] = time.monotonic()
        self.forks += 1
        mine, theirs = socket_pair()
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                mine.close()
                status = _Worker(self.inst, slot, theirs, self.epochs).run()
            except BaseException:
                self.inst.log.warn(f"provider worker {slot} failed: {traceback.format_exc()}")
            finally:
                os._exit(status)
        theirs.close()
        h = _Handle(slot, pid, mine)
        self.live[slot] = h
        engine = self.inst.engine
        engine.watch_fd(mine.fileno(), lambda: self._from_worker(h), quiet=True)
        engine.watch_child(pid, lambda status: self._ended(h, status))

    def _ended(self, h: _Handle, status: int) -> None:
        self._from_worker(h)           # what it passed on before it left
        engine = self.inst.engine
        engine.unwatch_fd(h.sock.fileno())
        h.sock.close()
        self.live.pop(h.slot, None)
        if not self.live:
            engine.receive_here(True)  # nobody else receives meanwhile
        if self.stopping:
            return
        stale = os.WIFEXITED(status) and os.WEXITSTATUS(status) == _STALE_EXIT
        if not stale:
            self.inst.log.warn(f"provider worker {h.slot} ended (status {status:#x}); forking another")
        import time
        gap = _RESPAWN_GAP_S if stale else _CRASH_GAP_S
        delay = max(0.0, self.last_fork.get(h.slot, 0) + gap - time.monotonic())
        engine.call_later(delay, lambda: self._respawn(h.slot))

    def _respawn(self, slot: int) -> None:
        if self.stopping or slot in self.live:
            return
        try:
            self._fork(slot)
        except OSError as e:
            self.inst.log.warn(f"provider worker {slot} not started again: {e}")
            self.inst.engine.call_later(_CRASH_GAP_S, lambda: self._respawn(slot))
            return
        self.inst.engine.receive_here(False)

    def _new_listener(self, fd: int) -> None:
        for h in list(self.live.values()):
            try:
                h.sock.sendmsg([b"L" + _FD.pack(fd)],
                               [(socket.SOL_SOCKET, socket.SCM_RIGHTS, _FD.pack(fd))])
            except OSError:
                pass          # it is ending: its successor inherits the listener

    def _from_worker(self, h: _Handle) -> None:
        while True:
            try:
                msg = h.sock.recv(256, socket.MSG_DONTWAIT)
            except (BlockingIOError, OSError):
                return
            if not msg:
                return
            if msg[:1] == b"N":
                self._serve_passed_on(msg[1:])
            elif msg[:1] == b"T":
                self._tell_task(h, _TID.unpack(msg[1:])[0])

    def _serve_passed_on(self, data: bytes) -> None:
        v = _NOTE.unpack(data)
        engine = self.inst.engine
        lst = engine.listeners.get(v[0])
        if lst is None:
            return            # its filter is gone, and with it every caller
        n = Notification(v[1], v[2], v[3], v[4:])
        if engine.answer_if_injected(lst, n):
            return
        if n.nr not in QUIET:
            engine.before_change()
        engine.kernel.on_notification(lst, n)

    def _tell_task(self, h: _Handle, tid: int) -> None:
        """A worker asks for a thread's credentials, root and working
        directory: sent with copies of the two nodes' descriptors."""
        self.questions += 1
        task = self.inst.pids.tasks_by_host.get(tid)
        fs = task.fs if task is not None else None
        if fs is None or fs.root.fd is None or fs.cwd.fd is None:
            state, fds = None, []
        else:
            creds = tuple(getattr(task.creds, name) for name in _CREDS_FIELDS)
            state = (task.tid, task.process.pid, task.process.host_pid, creds, fs.umask,
                     fs.root.mount.id, fs.cwd.mount.id)
            fds = [fs.root.fd, fs.cwd.fd]
        body = b"S" + pickle.dumps((self.epochs.get(TASKS), tid, state))
        try:
            h.sock.sendmsg([body], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"<{len(fds)}i", *fds))]
                           if fds else [])
        except OSError:
            pass

    def counts(self) -> tuple[int, int]:
        return self.epochs.counts(self.count)

    def stop(self) -> None:
        self.stopping = True
        for h in list(self.live.values()):
            try:
                os.kill(h.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        served, passed = self.counts()
        self.inst.log.write("INFO", f"provider workers: {served} calls answered, {passed} passed on, "
                                   f"{self.forks} forks, {self.questions} task questions")


def start(inst: "Instance") -> WorkerPool | None:
    """Start the instance's workers, if it should have any (wanted_count)
    and its root file system can be shared with them."""
    count = wanted_count()
    if count == 0:
        return None
    pool = WorkerPool(inst, count)
    pool.start()
    return pool


# -- a worker's side --------------------------------------------------------------

class _Refused:
    """A worker's stand-in for a file system whose state is the provider's:
    every use passes the call on. What the Vfs asks of every file system to
    find a host descriptor's file stays answerable: a file of a served
    tree is never another file system's own (pseudo files are memfds and
    scratch files under /dev/shm, TmpFs keeps its own host directory)."""

    def __init__(self, real, served_roots: tuple[str, ...]) -> None:
        self.host_claim = real.host_claim
        self.host_root = real.host_root
        self._served = served_roots

    def node_from_host(self, mount, fd: int, host: str, s: os.stat_result):
        own = self.host_root
        if host.startswith(self._served) and not (own and (host + "/").startswith(own.rstrip("/") + "/")):
            return None
        raise NotCurrent("a file system the provider keeps")

    def __getattr__(self, name: str):
        raise NotCurrent("a file system the provider keeps")


class _RefusedDevices:
    def node_of(self, fd: int, s: os.stat_result):
        raise NotCurrent("devices opened through their own nodes are the provider's")


class _Worker:
    def __init__(self, inst: "Instance", slot: int, sock: socket.socket, epochs: Epochs) -> None:
        self.inst, self.slot, self.sock, self.epochs = inst, slot, sock, epochs
        self.snapshot = epochs.get(SNAPSHOT)
        self.task_epoch = -1
        self.tasks: dict[int, Task | None] = {}
        self.stale = False

    def run(self) -> int:
        listeners = list(self.inst.engine.listeners)
        become_worker({self.sock.fileno(), *listeners})
        self._keep_only_exact_state()
        self.receivers = Receivers(self.sock.fileno(), self._serve)
        for fd in listeners:
            self.receivers.add(fd, fd)
        try:
            return self._watch()
        finally:
            self.receivers.stop()   # each thread answers or passes on what it holds first

    def _watch(self) -> int:
        """The main thread: messages from the provider and the listeners'
        ends, until the snapshot is stale or a receiving thread failed."""
        receivers = self.receivers
        while not self.stale and receivers.failure is None:
            for fd in receivers.wait():
                if fd != self.sock.fileno():
                    receivers.drop(fd)          # every process of its filter is gone
                    continue
                with receivers.turn:
                    if not self._from_provider():
                        return 0
        if receivers.failure is not None:
            err = receivers.failure
            self.inst.log.warn("provider worker failed: " + "".join(traceback.format_exception(err)))
            return 1
        return _STALE_EXIT

    def _keep_only_exact_state(self) -> None:
        vfs = self.inst.vfs
        still = self._snapshot_current
        served = {id(m) for m in vfs.mounts.mounts if m.fs.host_root and m.fs.worker_copy(still)}
        roots = tuple(m.fs.host_root.rstrip("/") + "/" for m in vfs.mounts.mounts if id(m) in served)
        for m in vfs.mounts.mounts:
            if id(m) not in served:
                m.fs = _Refused(m.fs, roots)
        vfs.anon_mount.fs = _Refused(vfs.anon_mount.fs, roots)
        vfs.opened_devices = _RefusedDevices()

    def _snapshot_current(self) -> bool:
        return self.epochs.get(SNAPSHOT) == self.snapshot

    # -- messages from the provider ---------------------------------------------

    def _from_provider(self) -> bool:
        """Take the messages waiting (a receiving thread asking about a task
        may have read them already); False when the provider is gone."""
        while True:
            msg, fds = self._receive_message(socket.MSG_DONTWAIT)
            if msg is None:
                return False
            if not msg:
                return True
            if msg[:1] == b"L":
                self.receivers.add(fds[0], _FD.unpack(msg[1:5])[0])

    def _receive_message(self, flags: int = 0) -> tuple[bytes | None, list[int]]:
        """(message, descriptors); None when the provider is gone, b"" when
        nothing waits (with MSG_DONTWAIT)."""
        try:
            # (socket.recv_fds drops its flags argument before Python 3.12.)
            msg, ancillary, _, _ = self.sock.recvmsg(4096, _FDS_SPACE, flags)
        except BlockingIOError:
            return b"", []
        except OSError:
            return None, []
        fds: list[int] = []
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.extend(struct.unpack(f"<{len(data) // 4}i", data[:len(data) - len(data) % 4]))
        return (msg or None), fds

    def _task(self, tid: int) -> Task | None:
        epoch = self.epochs.get(TASKS)
        if epoch != self.task_epoch:
            self._forget_tasks()
            self.task_epoch = epoch
        try:
            return self.tasks[tid]
        except KeyError:
            pass
        try:
            self.sock.send(b"T" + _TID.pack(tid))
        except OSError:
            raise NotCurrent("the provider is gone") from None
        while True:
            msg, fds = self._receive_message()
            if msg is None:
                raise NotCurrent("the provider is gone")
            if msg[:1] == b"L":
                self.receivers.add(fds[0], _FD.unpack(msg[1:5])[0])
                continue
            epoch, asked, state = pickle.loads(msg[1:])
            break
        task = self._make_task(asked, state, fds)
        if epoch != self.task_epoch:
            self._forget_tasks()       # the answer is newer than our copies
            self.task_epoch = epoch
        self.tasks[asked] = task
        return task

    def _make_task(self, host_tid: int, state, fds: list[int]) -> Task | None:
        if state is None:
            return None
        vtid, vpid, host_pid, creds, umask, root_mount, cwd_mount = state
        mounts = {m.id: m for m in self.inst.vfs.mounts.mounts}
        if root_mount not in mounts or cwd_mount not in mounts:
            for fd in fds:
                os.close(fd)
            return None
        root = Node(mounts[root_mount], fds[0], os.fstat(fds[0]))
        cwd = Node(mounts[cwd_mount], fds[1], os.fstat(fds[1]))
        proc = Process(vpid, host_pid, None)
        fs = FsContext(root, cwd, umask).attach()
        return Task(vtid, host_tid, proc, Creds(**dict(zip(_CREDS_FIELDS, creds))), fs)

    def _forget_tasks(self) -> None:
        for task in self.tasks.values():
            if task is not None:
                task.fs.detach()
                task.process.close_pidfd()
        self.tasks.clear()

    # -- serving ------------------------------------------------------------------

    def _serve(self, n: Notification, lst: Listener, provider_fd: int) -> None:
        """On a receiving thread, holding the turn: answer n or pass it on."""
        current = self._snapshot_current()
        if n.nr not in SERVED or not current:
            if not current:
                self.stale = True
                self.receivers.wake_main()
            self._pass_on(n, provider_fd)
            return
        try:
            task = self._task(n.pid)
            if task is None:
                self._pass_on(n, provider_fd)
                return
            result = table.BY_NR[n.nr].handler(Call(self.inst, task, n.nr, n.args))
        except NotCurrent:
            self._pass_on(n, provider_fd)
            return
        except MemoryFault:
            result = -errno.EFAULT
        except OSError as e:
            result = -(e.errno or errno.EIO)
        except Exception:
            # The provider answers it (and logs its own error if it has one).
            self.inst.log.warn(f"provider worker: {traceback.format_exc()}")
            self._pass_on(n, provider_fd)
            return
        if not isinstance(result, int):
            self._pass_on(n, provider_fd)
            return
        self.epochs.count(self.slot, False)
        try:
            lst.reply(n.id, result if result >= 0 else 0, result if result < 0 else 0)
        except OSError as e:
            # ENOENT: the caller was killed. Anything else: never leave a
            # caller waiting for an answer that will not come (dispatch._answer).
            if e.errno != errno.ENOENT:
                try:
                    lst.reply(n.id, 0, -(e.errno or errno.EIO))
                except OSError:
                    pass

    def _pass_on(self, n: Notification, provider_fd: int) -> None:
        self.epochs.count(self.slot, True)
        self.sock.send(b"N" + _NOTE.pack(provider_fd, n.id, n.pid, n.nr, *n.args))

