"""fanotify(7) groups, kept by the provider for the instance.

A host fanotify group needs the host's CAP_SYS_ADMIN, which lxsub never
has, so the groups, their marks and their event queues live here. The
group descriptor a program holds is one end of a Unix stream socket pair
whose other end the provider keeps: the program reads, polls and epolls it
natively, and the provider writes struct fanotify_event_metadata records
into it. The provider's end reports EOF when the program's last copy
closes, and the group goes (fanotify_release). What else a program
might do with a socket fails on the group as on Linux's anonymous-inode
file (ENOTSOCK, splice's EINVAL; fstat shows the anonymous inode): see
the group filter below.

Where events come from: the opens the provider serves (FAN_OPEN) and the
executables it opens for execve (FAN_OPEN | FAN_OPEN_EXEC), with the
caller's instance pid (its tid with FAN_REPORT_TID); reads, writes and
closes run natively in the programs, so FAN_ACCESS, FAN_MODIFY and
FAN_CLOSE_* come from the host's inotify, as inotify(7) inside does: one
host inotify instance of the provider watches every marked inode that
asks for them. inotify names no process, so such an event carries the
pid of the inode's last opener the provider saw. FAN_OPEN_PERM makes
the open wait (on a worker) for every group's answer, written to the group
as struct fanotify_response. Reads run natively, so a process that opens
a file some group wants FAN_ACCESS_PERM for gets an extra seccomp filter
that stops its read calls (ptrace); such a read waits stopped for the
answers (not on the ptrace platform yet: see raise_open).

An event carries a descriptor of the object, opened with the group's
event_f_flags in the reader's own table. The provider can put one there
while a process holding the group waits in a call it serves (ADDFD), or by
stopping one of its threads (PTRACE_INTERRUPT) and running openat of the
provider's O_PATH descriptor's /proc link in it (platform/inject.py); the
records are written once the descriptors are in.
"""

from __future__ import annotations

import errno
import fcntl as _fcntl
import os
import socket
import stat
import struct
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from lxsub.abi.fanotify import (FAN_EVENT_ON_CHILD, FAN_MARK_IGNORED_SURV_MODIFY, FAN_ACCESS_PERM, FAN_DENY, FAN_NOFD, FAN_ONDIR, FAN_OPEN,
                                FAN_OPEN_EXEC, FAN_OPEN_EXEC_PERM, FAN_OPEN_PERM,
                                FAN_ACCESS, FAN_MODIFY, FAN_CLOSE_WRITE, FAN_CLOSE_NOWRITE,
                                FAN_Q_OVERFLOW, FAN_REPORT_TID, FAN_UNLIMITED_MARKS, FAN_UNLIMITED_QUEUE,
                                FANOTIFY_METADATA_VERSION, FANOTIFY_PERM_EVENTS, METADATA)
from lxsub.abi.fcntl import AT_FDCWD
from lxsub.abi.sysno import NUMBERS, SYS_OPENAT
from lxsub.kernel import extra_filter
from lxsub.kernel.call import Call, Held, Native
from lxsub.kernel.vfs import lookup
from lxsub.platform import bpf, hostfd, libc
from lxsub.platform.inject import Scratch, SysCall
from lxsub.platform.livefiles import LiveFiles

if TYPE_CHECKING:
    from lxsub.kernel.task import Task

# fs/notify/fanotify/fanotify_user.c defaults: fs.fanotify.max_user_groups,
# max_queued_events, and the per-group mark limit of kernels before 5.13.
MAX_USER_GROUPS = 128
MAX_QUEUED_EVENTS = 16384
MAX_MARKS = 8192
_SIOCOUTQ = 0x5411
_EVENT_BITS = 0x00FFFFFF           # the event bits, without ON_CHILD and ONDIR
# The events only the host's inotify sees; their bits are inotify's too
# (IN_ACCESS, IN_MODIFY, IN_CLOSE_WRITE, IN_CLOSE_NOWRITE).
_HOST_EVENTS = FAN_ACCESS | FAN_MODIFY | FAN_CLOSE_WRITE | FAN_CLOSE_NOWRITE
_IN_ISDIR = 0x40000000
_IN_IGNORED = 0x8000
_IN_Q_OVERFLOW = 0x4000
_INOTIFY_EVENT = struct.Struct("<iIII")
_RESPONSE = struct.Struct("<iI")           # struct fanotify_response
_MAX_OPENERS = 4096
_COALESCE = 0.002                  # seconds: see schedule()
_COALESCE_MAX = 0.05               # seconds a running holder may put its delivery off
_FULL_RETRY = 0.1                  # seconds between looks at a full group socket

Key = tuple   # ("ino", dev, ino) | ("mnt", dev) | ("sb", dev)


@dataclass
class Mark:
    mask: int = 0
    ignore: int = 0
    ignore_survives_modify: bool = False


@dataclass
class Event:
    mask: int
    key: Key | None
    pid: int
    obj: int = -1        # an O_PATH descriptor of the object, reopened at delivery
    # The group also wants what runs natively on the object: hand it over
    # with those events (after _COALESCE), not alone at once.
    with_native: bool = False
    # A permission event: set once answered (or the group gone), and how.
    answered: threading.Event | None = None
    allowed: bool = True
    on_answer: Callable[[], None] | None = None     # called in the provider's loop


@dataclass(eq=False)
class Group:
    flags: int
    event_f_flags: int
    end: int                             # the provider's end of the pair
    prog_ino: int                        # the inode of the program's end
    owner: int                           # the host pid of the process that made it
    marks: dict = field(default_factory=dict)
    pending: deque = field(default_factory=deque)
    overflowed: bool = False
    delivering: bool = False             # a thread of a holder is being stopped for it
    awaiting: dict = field(default_factory=dict)   # event fd in the reader -> permission Event
    answers: bytes = b""                 # a partial struct fanotify_response written

    def mark_for(self, key: Key, create: bool) -> Mark | None:
        found = self.marks.get(key)
        if found is None and create:
            if len(self.marks) >= MAX_MARKS and not self.flags & FAN_UNLIMITED_MARKS:
                raise OSError(errno.ENOSPC, "too many fanotify marks")
            found = self.marks[key] = Mark()
        return found

    def add(self, key: Key, mask: int, ignored: bool, flags: int) -> None:
        m = self.mark_for(key, create=True)
        if ignored:
            m.ignore |= mask
            m.ignore_survives_modify |= bool(flags & FAN_MARK_IGNORED_SURV_MODIFY)
        else:
            m.mask |= mask

    def remove(self, key: Key, mask: int, ignored: bool) -> None:
        m = self.mark_for(key, create=False)
        if m is None:
            raise OSError(errno.ENOENT, "no such mark")
        if ignored:
            m.ignore &= ~mask
        else:
            m.mask &= ~mask
        if not m.mask and not m.ignore:
            del self.marks[key]

    def flush(self, kind: str) -> None:
        for key in [k for k in self.marks if k[0] == kind]:
            del self.marks[key]

    def wanted(self, obj: "Object", mask: int, probe: bool = False) -> int:
        """fanotify_group_event_mask: the object's marks, its parent
        directory's when that mark has FAN_EVENT_ON_CHILD, its mount's and
        file system's; an event on a directory needs FAN_ONDIR. A modify
        clears ignore masks not marked FAN_MARK_IGNORED_SURV_MODIFY."""
        marks = [self.marks.get(obj.key), self.marks.get(("mnt", obj.dev)), self.marks.get(("sb", obj.dev))]
        parent = self.marks.get(obj.parent()) if self.marks else None
        if parent is not None and parent.mask & FAN_EVENT_ON_CHILD and obj.parent() != obj.key:
            marks.append(parent)
        want = ignore = 0
        for m in marks:
            if m is not None:
                want |= m.mask
                ignore |= m.ignore
                if mask & FAN_MODIFY and not m.ignore_survives_modify and not probe:
                    m.ignore = 0
        if obj.is_dir and not want & FAN_ONDIR:
            return 0
        return mask & want & ~ignore & _EVENT_BITS

    def queue(self, event: Event) -> None:
        last = self.pending[-1] if self.pending else None
        if (last is not None and last.key == event.key and last.pid == event.pid
                and not (last.mask | event.mask) & FANOTIFY_PERM_EVENTS):
            last.mask |= event.mask          # fanotify_merge: same object, same process
            last.with_native |= event.with_native
            _close(event.obj)
            return
        if len(self.pending) >= MAX_QUEUED_EVENTS and not self.flags & FAN_UNLIMITED_QUEUE:
            _close(event.obj)
            if not self.overflowed:
                self.overflowed = True
                self.pending.append(Event(FAN_Q_OVERFLOW, None, 0))
            return
        self.pending.append(event)

    def held_by(self, host_pid: int) -> bool:
        """Whether the process holds a descriptor of the group."""
        want = f"socket:[{self.prog_ino}]"
        base = f"/proc/{host_pid}/fd"
        try:
            names = os.listdir(base)
        except OSError:
            return False
        for name in names:
            try:
                if os.readlink(f"{base}/{name}") == want:
                    return True
            except OSError:
                continue
        return False

    def take(self) -> list[Event]:
        """The queued events the socket has room for now, off the queue."""
        room = self.room() // METADATA.size
        batch = []
        while self.pending and len(batch) < room:
            batch.append(self.pending.popleft())
        if not self.pending:
            self.overflowed = False
        return batch

    def room(self) -> int:
        """What the socket still takes: its send buffer less what is queued."""
        # SIOCOUTQ of a Unix socket counts the unread buffers' full size.
        queued = struct.unpack("i", _fcntl.ioctl(self.end, _SIOCOUTQ, b"\0" * 4))[0]
        return max(0, _SNDBUF // 2 - queued)

    def write(self, events: list[Event], fds: list[int]) -> None:
        for ev, fd in zip(events, fds):
            if ev.answered is not None:
                if fd == FAN_NOFD:
                    _answered(ev)            # nothing to answer by: allowed
                else:
                    self.awaiting[fd] = ev
        if events:
            os.write(self.end, b"".join(
                METADATA.pack(METADATA.size, FANOTIFY_METADATA_VERSION, 0, METADATA.size, ev.mask, fd, ev.pid)
                for ev, fd in zip(events, fds)))

    def open_flags(self) -> int:
        return self.event_f_flags

    def answer(self, data: bytes) -> None:
        """struct fanotify_response records: FAN_ALLOW or FAN_DENY for the
        permission event whose descriptor the reader was given."""
        data = self.answers + data
        whole = len(data) - len(data) % _RESPONSE.size
        for fd, response in _RESPONSE.iter_unpack(data[:whole]):
            ev = self.awaiting.pop(fd, None)
            if ev is not None and ev.answered is not None:
                ev.allowed = response & 0xFF != FAN_DENY
                _answered(ev)
        self.answers = data[whole:]

    def close(self) -> None:
        """fanotify_release: permission events still waiting are allowed."""
        for ev in list(self.awaiting.values()) + list(self.pending):
            if ev.answered is not None:
                _answered(ev)
        self.awaiting.clear()
        while self.pending:
            _close(self.pending.popleft().obj)
        os.close(self.end)


_SNDBUF = 212992   # net.core.wmem_default, what the pair is given below


class Object:
    """What an event is about: a file the provider holds a descriptor of."""

    def __init__(self, fd: int, parent: Key | None = None) -> None:
        self.fd = fd
        st = os.fstat(fd)
        self.dev = st.st_dev
        self.key: Key = ("ino", st.st_dev, st.st_ino)
        self.is_dir = stat.S_ISDIR(st.st_mode)
        self._parent = parent

    def parent(self) -> Key | None:
        """The directory the file was opened in (its host path's parent)."""
        if self._parent is None:
            try:
                path = os.readlink(f"/proc/self/fd/{self.fd}")
                st = os.stat(os.path.dirname(path) or "/")
                self._parent = ("ino", st.st_dev, st.st_ino)
            except OSError:
                self._parent = ("none",)
        return self._parent


@dataclass
class Watch:
    """A host inotify watch of the provider's: the inode and an O_PATH of it."""
    key: Key
    opath: int


class Groups:
    """The instance's groups, how many each user has open, the host
    inotify instance that sees native reads and writes, and who last
    opened each inode (the pid such events carry)."""

    def __init__(self) -> None:
        self.live: list[Group] = []
        self.counts = LiveFiles()
        self.lock = threading.RLock()
        self.inotify = -1
        self.watches: dict[int, Watch] = {}      # wd -> watch
        self.openers: dict[Key, tuple[int, int]] = {}   # key -> (pid, tid)
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def poke(self) -> None:
        """From a worker thread: let the engine's loop hand over what was queued."""
        try:
            os.write(self.wake_w, b"x")
        except BlockingIOError:
            pass

    def by_ino(self, ino: int) -> Group | None:
        for g in self.live:
            if g.prog_ino == ino:
                return g
        return None

    def watched(self, key: Key) -> bool:
        return any(w.key == key for w in self.watches.values())


def groups_of(inst) -> Groups:
    found = getattr(inst, "fanotify_groups", None)
    if found is None:
        found = inst.fanotify_groups = Groups()
        inst.engine.watch_fd(found.wake_r, lambda: _poked(inst, found))
    return found


def _live_groups(inst) -> Groups | None:
    """The instance's groups while at least one lives, else None (most
    instances never make one: the callers return at once)."""
    groups = getattr(inst, "fanotify_groups", None)
    return groups if groups is not None and groups.live else None


def _poked(inst, groups: Groups) -> None:
    try:
        os.read(groups.wake_r, 4096)
    except BlockingIOError:
        pass
    after_call(inst)


def new_group(inst, task: "Task", user: int, flags: int, event_f_flags: int, nonblock: bool) -> int:
    """A group charged to `user`; returns the program's end (EMFILE past
    max_user_groups)."""
    groups = groups_of(inst)
    with groups.lock:
        if groups.counts.count(user) >= MAX_USER_GROUPS:
            raise OSError(errno.EMFILE, "too many fanotify groups")
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        mine.setblocking(False)
        theirs.setblocking(not nonblock)
        mine.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SNDBUF // 2)   # the kernel doubles it
        prog = theirs.detach()
        group = Group(flags, event_f_flags, mine.detach(), os.fstat(prog).st_ino, task.process.host_pid)
        groups.counts.add(prog, user)
        groups.live.append(group)
    inst.engine.watch_fd(group.end, lambda: _on_group_readable(inst, group))
    return prog


def _on_group_readable(inst, group: Group) -> None:
    """Answers written to the group (to permission events), or EOF: the
    program's last descriptor closed."""
    try:
        data = os.read(group.end, 4096)
    except BlockingIOError:
        return
    except OSError:
        data = b""
    groups = groups_of(inst)
    if data:
        with groups.lock:
            group.answer(data)
        return
    with groups.lock:
        if group in groups.live:
            groups.live.remove(group)
        drop_stale_watches(groups)
    inst.engine.unwatch_fd(group.end)
    group.close()


# -- host inotify: what runs natively -------------------------------------------------

def watch_for(inst, key: Key, own: int) -> None:
    """After a mark change on `key` (the provider's descriptor `own` of
    it): watch it on the host if some group's marks there want native
    events, and drop watches no mark wants any more."""
    groups = groups_of(inst)
    with groups.lock:
        if any(_wants_host(g.marks.get(key)) for g in groups.live) and not groups.watched(key):
            _add_watch(inst, groups, key, own)
        drop_stale_watches(groups)


def _wants_host(m: Mark | None) -> bool:
    return m is not None and bool(m.mask & _HOST_EVENTS)


def _add_watch(inst, groups: Groups, key: Key, own: int) -> None:
    if groups.inotify < 0:
        groups.inotify = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        inst.engine.watch_fd(groups.inotify, lambda: _host_events(inst))
    opath = os.open(f"/proc/self/fd/{own}", os.O_PATH | os.O_CLOEXEC)
    try:
        wd = libc.inotify_add_watch(groups.inotify, f"/proc/self/fd/{opath}".encode(), _HOST_EVENTS)
    except OSError:
        os.close(opath)
        return                      # nothing to watch on (a pseudo file): no native events
    old = groups.watches.pop(wd, None)
    if old is not None:
        os.close(old.opath)
    groups.watches[wd] = Watch(key, opath)


def drop_stale_watches(groups: Groups) -> None:
    for wd, w in list(groups.watches.items()):
        if not any(_wants_host(g.marks.get(w.key)) for g in groups.live):
            del groups.watches[wd]
            try:
                libc.inotify_rm_watch(groups.inotify, wd)
            except OSError:
                pass
            os.close(w.opath)


def _host_events(inst) -> None:
    """The host inotify is readable: queue its events, then hand them over."""
    groups = groups_of(inst)
    with groups.lock:
        drain(groups)
        for g in groups.live:
            schedule(inst, g)


def drain(groups: Groups) -> None:
    """Queue what the host's inotify saw so far (before anything newer)."""
    if groups.inotify < 0:
        return
    while True:
        try:
            data = os.read(groups.inotify, 65536)
        except BlockingIOError:
            return
        off = 0
        while off + _INOTIFY_EVENT.size <= len(data):
            wd, mask, _cookie, length = _INOTIFY_EVENT.unpack_from(data, off)
            name = data[off + 16:off + 16 + length].rstrip(b"\0")
            off += 16 + length
            w = groups.watches.get(wd)
            if w is not None and mask & _HOST_EVENTS:
                _host_event(groups, w, name, mask & _HOST_EVENTS)


def _host_event(groups: Groups, w: Watch, name: bytes, mask: int) -> None:
    if name:
        try:
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=w.opath)
        except OSError:
            return                  # gone already
        parent: Key | None = w.key
    else:
        fd, parent = os.open(f"/proc/self/fd/{w.opath}", os.O_PATH | os.O_CLOEXEC), None
    try:
        obj = Object(fd, parent)
        if name and groups.watched(obj.key):
            return                  # its own watch reports it
        pid, tid = groups.openers.get(obj.key, (0, 0))
        _queue_all(groups, obj, mask, pid, tid)
    finally:
        os.close(fd)


# -- raising and handing over --------------------------------------------------------

def raise_open(inst, task: "Task", fd: int, extra: int = 0, may_wait: bool = True) -> "Permission | None":
    """FAN_OPEN (with `extra`: FAN_OPEN_EXEC) of the file the provider
    opened as `fd` for the task. With FAN_OPEN_PERM marks on it, the open
    must first wait for the groups' answers: the Permission returned says
    how (FAN_OPEN is then raised once allowed). An exec (`may_wait`
    False: it is served at a ptrace stop, which cannot wait) asks none."""
    groups = _live_groups(inst)
    if groups is None:
        return None
    try:
        obj = Object(fd)
    except OSError:
        return None
    with groups.lock:
        drain(groups)             # what ran natively before this open comes first
        if len(groups.openers) >= _MAX_OPENERS:
            groups.openers.clear()
        groups.openers[obj.key] = (task.process.pid, task.tid)
        if (not task.process.access_filter and inst.engine.trace_listener is None
                and any(g.wanted(obj, FAN_ACCESS_PERM, probe=True) for g in groups.live)):
            # Not on the ptrace platform: there the filter's injection and
            # the open's (an injected recvmsg) do not go together yet, and
            # the opener hung: FAN_ACCESS_PERM is not raised there.
            _give_access_filter(inst, task)
        perm = FAN_OPEN_PERM | (FAN_OPEN_EXEC_PERM if extra & FAN_OPEN_EXEC else 0)
        asked = _queue_all(groups, obj, perm, task.process.pid, task.tid, permission=True) if may_wait else []
        if asked:
            return Permission(inst, asked, obj, FAN_OPEN | extra, task)
        _queue_all(groups, obj, FAN_OPEN | extra, task.process.pid, task.tid)
    return None


class Permission:
    """An open waiting for the answers to its permission events."""

    def __init__(self, inst, asked: list[Event], obj: Object, then: int, task: "Task") -> None:
        self.inst, self.asked, self.obj, self.then = inst, asked, obj, then
        self.pid, self.tid = task.process.pid, task.tid

    def wait(self, still_wanted: Callable[[], bool] | None) -> bool:
        """Block (a worker thread) until every group answered; whether all
        allowed. Then the open's FAN_OPEN, if allowed."""
        for ev in self.asked:
            while not ev.answered.wait(0.05):
                if still_wanted is not None and not still_wanted():
                    raise OSError(errno.EINTR, "interrupted")
        allowed = all(ev.allowed for ev in self.asked)
        if allowed:
            groups = groups_of(self.inst)
            with groups.lock:
                _queue_all(groups, self.obj, self.then, self.pid, self.tid)
            groups.poke()
        return allowed


def _queue_all(groups: Groups, obj: Object, mask: int, pid: int, tid: int,
               permission: bool = False) -> list[Event]:
    queued = []
    for g in groups.live:
        got = g.wanted(obj, mask)
        if got:
            ev = Event(got, obj.key, tid if g.flags & FAN_REPORT_TID else pid, _opath(obj.fd),
                       bool(g.wanted(obj, _HOST_EVENTS, probe=True)))
            if permission:
                ev.answered = threading.Event()
            g.queue(ev)
            queued.append(ev)
    return queued


def _opath(fd: int) -> int:
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return -1


def deliver(inst, task: "Task", install: Callable[[int, bool], int]) -> None:
    """At a served call of `task`: hand over the queued events of the
    groups its process holds (their descriptors go into its table with
    `install`); the others' go by stopping a holder."""
    groups = _live_groups(inst)
    if groups is None:
        return
    with groups.lock:
        drain(groups)
        for g in groups.live:
            if not g.pending or g.delivering:
                continue
            if not any(ev.with_native for ev in g.pending) and _reader(inst, g, task.process.host_pid):
                batch = g.take()
                g.write(batch, [_install(g, ev, install) for ev in batch])
            schedule(inst, g)


def _reader(inst, g: Group, host_pid: int) -> bool:
    """Whether the process is the one to hand the group's events to: the
    records are read by whichever holder reads, but the descriptors are in
    one table, so the process that made the group while it holds it (a
    forked child holds it too, and is often the one causing the events),
    else any holder."""
    if host_pid == g.owner:
        return g.held_by(host_pid)
    owner = inst.pids.processes_by_host.get(g.owner)
    if owner is not None and owner.threads and not owner.exited and g.held_by(g.owner):
        return False
    return g.held_by(host_pid)


def _install(g: Group, ev: Event, install: Callable[[int, bool], int]) -> int:
    if ev.obj < 0:
        return FAN_NOFD
    try:
        mine = os.open(f"/proc/self/fd/{ev.obj}", g.open_flags() | os.O_CLOEXEC)
    except OSError:
        return FAN_NOFD
    finally:
        _close(ev.obj)
        ev.obj = -1
    try:
        return install(mine, bool(g.event_f_flags & os.O_CLOEXEC))
    except OSError:
        return FAN_NOFD
    finally:
        os.close(mine)


def after_call(inst) -> None:
    """After a call the provider served: events still queued go to a holder."""
    groups = _live_groups(inst)
    if groups is None:
        return
    with groups.lock:
        for g in groups.live:
            schedule(inst, g)


def schedule(inst, g: Group) -> None:
    """In _COALESCE, stop a thread of a process holding the group and open
    the queued events' objects in it (the caller holds groups.lock). The
    wait lets what the program does natively next (an open's read and
    close) join the open's event, as all would be queued when it reads in
    Linux."""
    if g.delivering or not g.pending:
        return
    g.delivering = True
    inst.engine.call_later(_COALESCE, lambda: _stop_holder(inst, g, _COALESCE))


def _stop_holder(inst, g: Group, waited: float) -> None:
    groups = groups_of(inst)
    with groups.lock:
        g.delivering = False
        if g not in groups.live or not g.pending:
            return
        proc = _holder(inst, g)
        if proc is not None and waited < _COALESCE_MAX and _running(proc):
            # Natively, what it does before it reads the group (an open's
            # read and close) is queued before that read: a holder that
            # still runs, or waits for a CPU, is let go on until it waits
            # (in a read or poll of the group, or anything else).
            g.delivering = True
            inst.engine.call_later(_COALESCE, lambda: _stop_holder(inst, g, waited + _COALESCE))
            return
        if g.room() < METADATA.size:
            # The reader has not read what it was given: look again later
            # rather than stop it for nothing.
            g.delivering = True
            inst.engine.call_later(_FULL_RETRY, lambda: _stop_holder(inst, g, waited))
            return
        if proc is None:
            return                  # they wait for a holder's next served call
        g.delivering = True
        tid = next(iter(proc.threads))
        if not inst.engine.interrupt(tid, lambda t, regs: _deliver_in(inst, g, t)):
            g.delivering = False


def _running(proc) -> bool:
    """Whether a thread of the process runs or waits for a CPU (state R)."""
    for tid in list(proc.threads):
        try:
            with open(f"/proc/{proc.host_pid}/task/{tid}/stat", "rb") as f:
                if f.read().rpartition(b")")[2].split()[0] == b"R":
                    return True
        except (OSError, IndexError):
            continue
    return False


def _holder(inst, g: Group):
    procs = inst.pids.processes_by_host
    first = procs.get(g.owner)
    for proc in ([first] if first is not None else []) + list(procs.values()):
        if proc.threads and not proc.exited and g.held_by(proc.host_pid):
            return proc
    return None


def _deliver_in(inst, g: Group, tid: int) -> None:
    """At the stop: what ran natively so far is queued too, then each
    event's object is opened in the thread by its /proc link in ours."""
    groups = groups_of(inst)
    with groups.lock:
        drain(groups)
        if g not in groups.live:
            g.delivering = False
            return
        batch = g.take()
    todo = [i for i, ev in enumerate(batch) if ev.obj >= 0]
    fds = [FAN_NOFD] * len(batch)
    me = os.getpid()

    def call(i: int) -> SysCall:
        path = f"/proc/{me}/fd/{batch[i].obj}".encode() + b"\0"
        return SysCall(SYS_OPENAT, (AT_FDCWD & 0xFFFFFFFFFFFFFFFF, Scratch(0), g.open_flags(), 0), path)

    def after(result: int):
        i = todo.pop(0)
        fds[i] = result if result >= 0 else FAN_NOFD
        _close(batch[i].obj)
        batch[i].obj = -1
        return call(todo[0]) if todo else None

    def done() -> None:
        with groups.lock:
            g.delivering = False
            if g in groups.live:
                g.write(batch, fds)
                schedule(inst, g)

    def gone() -> None:
        with groups.lock:
            g.delivering = False
            for ev in batch:
                _close(ev.obj)
            schedule(inst, g)

    if not todo:
        done()
        return
    inst.engine.inject(tid, call(todo[0]), after, done, gone)


def _answered(ev: Event) -> None:
    if not ev.answered.is_set():
        ev.answered.set()
        if ev.on_answer is not None:
            ev.on_answer()


# -- the group descriptor: a socket to the host, not to the program ----------------
#
# Linux's group descriptor is an anonymous-inode file whose only
# operations are read, write, poll and FIONREAD (fanotify_fops): the socket
# calls fail with ENOTSOCK and splice and sendfile with EINVAL (no
# splice_read or splice_write). Here it is a Unix socket, on which those
# would act on the pair. The socket calls that reach the provider anyway
# (sendmsg, bind, connect, getsockname, ...) check their descriptor there;
# the ones that run natively, and splice and sendfile, are stopped by a
# filter a process holding a group is given (fanotify_init), as the
# access filter above: no other process pays for them. Whether a
# descriptor is a group is one readlink of its /proc link, made only when
# the instance has groups.

GROUP_FILTER_TRACES = frozenset(NUMBERS[n] for n in (
    "accept", "accept4", "listen", "shutdown", "recvfrom", "recvmsg", "recvmmsg", "getsockopt",
    "setsockopt", "sendto", "splice", "sendfile", "lseek"))

_GROUP_FILTER = extra_filter.seccomp_call(dict.fromkeys(GROUP_FILTER_TRACES, bpf.RET_TRACE))


def give_group_filter(inst, task: "Task") -> None:
    """The process of `task` now holds a group: its calls above stop, so
    that the provider answers for a group descriptor (not on the ptrace
    platform yet, as the access filter)."""
    if inst.engine.trace_listener is None:
        extra_filter.give(inst, task, "group_filter", _GROUP_FILTER, "fanotify descriptor")


def give_group_filter_to_holders(inst, holds: Callable[..., bool]) -> None:
    """A group's descriptor is on its way to whichever process `holds`
    says (an SCM_RIGHTS message to a socket it holds)."""
    if inst.engine.trace_listener is None:
        extra_filter.give_to_holders(inst, holds, "group_filter", _GROUP_FILTER, "fanotify descriptor")


def any_group(inst, fds: list[int]) -> bool:
    """Whether one of the provider's descriptors is a group's."""
    if _live_groups(inst) is None:
        return False
    for fd in fds:
        try:
            if is_group_file(inst, os.fstat(fd)):
                return True
        except OSError:
            continue
    return False


def is_group_fd(inst, task: "Task", fd: int) -> bool:
    """Whether the task's descriptor `fd` is a fanotify group's."""
    if _live_groups(inst) is None or fd < 0:
        return False
    return _is_group_socket(inst, hostfd.socket_inode(task.host_tid, fd))


def is_group_file(inst, st: os.stat_result) -> bool:
    """Whether a provider copy of a descriptor, as fstat shows it, is a group's."""
    return stat.S_ISSOCK(st.st_mode) and _is_group_socket(inst, st.st_ino)


def link_name(inst, host: str) -> str:
    """/proc/<pid>/fd/N of a group descriptor reads as Linux's
    anon_inode:[fanotify], not as the socket it is on the host."""
    if _is_group_socket(inst, hostfd.socket_inode_of_link(host)):
        return "anon_inode:[fanotify]"
    return host


def _is_group_socket(inst, ino: int | None) -> bool:
    """Whether the socket of inode `ino` (None: no socket) is a live group's."""
    groups = _live_groups(inst)
    if groups is None or ino is None:
        return False
    with groups.lock:
        return groups.by_ino(ino) is not None


_anon_inode: os.stat_result | None = None


def anon_inode_stat() -> os.stat_result:
    """What fstat of a group descriptor shows in Linux: the anonymous inode
    every anon_inode_getfile file shares (an eventfd's is the same one)."""
    global _anon_inode
    if _anon_inode is None:
        fd = os.eventfd(0, os.EFD_CLOEXEC)
        try:
            _anon_inode = os.fstat(fd)
        finally:
            os.close(fd)
    return _anon_inode


# -- FAN_ACCESS_PERM: reads stopped by an extra filter -------------------------------

# The calls the filter below traces (its trace stops are the provider's).
ACCESS_FILTER_TRACES = frozenset(NUMBERS[n] for n in ("read", "readv", "pread64", "preadv", "preadv2"))


# The read calls stop (ptrace), everything else as the instance filter says.
_ACCESS_FILTER = extra_filter.seccomp_call(dict.fromkeys(ACCESS_FILTER_TRACES, bpf.RET_TRACE))


def _give_access_filter(inst, task: "Task") -> None:
    """A process that opens a file some group wants FAN_ACCESS_PERM for
    gets a filter that stops its reads (they run natively otherwise), at
    the stop an interrupt brings: before it runs on from the open. Its
    children inherit it, as any seccomp filter."""
    extra_filter.give(inst, task, "access_filter", _ACCESS_FILTER, "FAN_ACCESS_PERM")


def sys_read_watched(c: Call):
    """A read call of a process with the access filter (a ptrace stop):
    with FAN_ACCESS_PERM marks on its file, the thread stays stopped until
    every group answered, then reads, or fails with EPERM (FAN_DENY), as
    fsnotify_file_area_perm makes it wait in Linux; otherwise it reads."""
    groups = _live_groups(c.inst)
    if groups is None:
        return Native()
    try:
        own = lookup.copy_fd(c.task, c.int(0))
    except OSError:
        return Native()                 # the read itself says EBADF
    try:
        obj = Object(own)
        with groups.lock:
            drain(groups)
            asked = _queue_all(groups, obj, FAN_ACCESS_PERM, c.task.process.pid, c.task.tid, permission=True)
    except OSError:
        return Native()
    finally:
        os.close(own)
    if not asked:
        return Native()
    _resume_when_answered(c.inst, c.task.host_tid, c.regs, asked)
    with groups.lock:
        for g in groups.live:
            schedule(c.inst, g)
    return Held()


def _resume_when_answered(inst, tid: int, regs, asked: list[Event]) -> None:
    def one_answered() -> None:
        if not all(ev.answered.is_set() for ev in asked):
            return
        try:
            if all(ev.allowed for ev in asked):
                inst.engine.run_natively(tid, None, None)
            else:
                inst.engine.finish_syscall(tid, regs, -errno.EPERM)
        except (ProcessLookupError, ChildProcessError):
            pass                        # killed meanwhile
    for ev in asked:
        ev.on_answer = one_answered


def _close(fd: int) -> None:
    if fd >= 0:
        os.close(fd)
