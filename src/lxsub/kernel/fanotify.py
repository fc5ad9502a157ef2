"""fanotify(7) groups, kept by the provider for the instance.

A host fanotify group needs the host's CAP_SYS_ADMIN, which lxsub never
has, so the groups, their marks and their event queues live here. The
group descriptor a program holds is one end of a Unix stream socket pair
whose other end the provider keeps: the program reads, polls and epolls it
natively, and the provider writes struct fanotify_event_metadata records
into it. The provider's end reports EOF when the program's last copy
closes, and the group goes (fanotify_release).

Events are raised where the provider sees the operation: the opens it
serves (FAN_OPEN) and the executables it opens for execve (FAN_OPEN |
FAN_OPEN_EXEC), with the caller's instance pid (its tid with
FAN_REPORT_TID). An event carries a descriptor of the object, opened with
the group's event_f_flags in the reader's own descriptor table; the
provider can only put one there while a process holding the group waits
in a trapped call, so events queue here and are handed over (descriptors
installed, records written) at the next call of such a process that the
provider serves (`deliver`). Reads and writes that run natively are not
seen, so FAN_ACCESS, FAN_MODIFY, FAN_CLOSE_* and the permission events are
accepted in marks but not raised (see the issue's notes).
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

from lxsub.abi.fanotify import (FAN_EVENT_ON_CHILD, FAN_MARK_IGNORED_SURV_MODIFY, FAN_NOFD, FAN_ONDIR, FAN_OPEN,
                                FAN_Q_OVERFLOW, FAN_REPORT_TID, FAN_UNLIMITED_MARKS, FAN_UNLIMITED_QUEUE,
                                FANOTIFY_METADATA_VERSION, FANOTIFY_PERM_EVENTS, METADATA)
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


@dataclass(eq=False)
class Group:
    flags: int
    event_f_flags: int
    end: int                             # the provider's end of the pair
    prog_ino: int                        # the inode of the program's end
    marks: dict = field(default_factory=dict)
    pending: deque = field(default_factory=deque)
    overflowed: bool = False

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

    def wanted(self, obj: "Object", mask: int) -> int:
        """fanotify_group_event_mask: the object's marks, its parent
        directory's when that mark has FAN_EVENT_ON_CHILD, its mount's and
        file system's; an event on a directory needs FAN_ONDIR."""
        marks = [self.marks.get(obj.key), self.marks.get(("mnt", obj.dev)), self.marks.get(("sb", obj.dev))]
        parent = self.marks.get(obj.parent()) if self.marks else None
        if parent is not None and parent.mask & FAN_EVENT_ON_CHILD and obj.parent() != obj.key:
            marks.append(parent)
        want = ignore = 0
        for m in marks:
            if m is not None:
                want |= m.mask
                ignore |= m.ignore
        if obj.is_dir and not want & FAN_ONDIR:
            return 0
        return mask & want & ~ignore & _EVENT_BITS

    def queue(self, event: Event) -> None:
        last = self.pending[-1] if self.pending else None
        if (last is not None and last.key == event.key and last.pid == event.pid
                and not (last.mask | event.mask) & FANOTIFY_PERM_EVENTS):
            last.mask |= event.mask          # fanotify_merge: same object, same process
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

    def hand_over(self, install: Callable[[int, bool], int]) -> None:
        """Install the queued events' descriptors in the waiting caller and
        write their records, as many as the socket takes now."""
        records = []
        room = self._room()
        while self.pending and room >= METADATA.size:
            ev = self.pending.popleft()
            records.append(self._record(ev, install))
            room -= METADATA.size
        if not self.pending:
            self.overflowed = False
        if records:
            os.write(self.end, b"".join(records))

    def _room(self) -> int:
        """What the socket still takes: its send buffer less what is queued."""
        # SIOCOUTQ of a Unix socket counts the unread buffers' full size.
        queued = struct.unpack("i", _fcntl.ioctl(self.end, _SIOCOUTQ, b"\0" * 4))[0]
        return max(0, _SNDBUF // 2 - queued)

    def _record(self, ev: Event, install: Callable[[int, bool], int]) -> bytes:
        fd = FAN_NOFD
        if ev.obj >= 0:
            try:
                mine = os.open(f"/proc/self/fd/{ev.obj}", (self.event_f_flags & ~os.O_CLOEXEC) | os.O_CLOEXEC)
            except OSError:
                mine = -1
            finally:
                _close(ev.obj)
            if mine >= 0:
                try:
                    fd = install(mine, bool(self.event_f_flags & os.O_CLOEXEC))
                except OSError:
                    fd = FAN_NOFD
                finally:
                    os.close(mine)
        return METADATA.pack(METADATA.size, FANOTIFY_METADATA_VERSION, 0, METADATA.size, ev.mask, fd, ev.pid)

    def close(self) -> None:
        while self.pending:
            _close(self.pending.popleft().obj)
        os.close(self.end)


_SNDBUF = 212992   # net.core.wmem_default, what the pair is given below


class Object:
    """What an event is about: a file the provider holds a descriptor of."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        st = os.fstat(fd)
        self.dev = st.st_dev
        self.key: Key = ("ino", st.st_dev, st.st_ino)
        self.is_dir = stat.S_ISDIR(st.st_mode)
        self._parent: Key | None = None

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


class Groups:
    """The instance's groups, and how many each user has open."""

    def __init__(self) -> None:
        self.live: list[Group] = []
        self.counts = LiveFiles()
        self.lock = threading.RLock()

    def by_ino(self, ino: int) -> Group | None:
        for g in self.live:
            if g.prog_ino == ino:
                return g
        return None


def groups_of(inst) -> Groups:
    found = getattr(inst, "fanotify_groups", None)
    if found is None:
        found = inst.fanotify_groups = Groups()
    return found


def new_group(inst, user: int, flags: int, event_f_flags: int, nonblock: bool) -> int:
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
        group = Group(flags, event_f_flags, mine.detach(), os.fstat(prog).st_ino)
        groups.counts.add(prog, user)
        groups.live.append(group)
    inst.engine.watch_fd(group.end, lambda: _on_group_readable(inst, group))
    return prog


def _on_group_readable(inst, group: Group) -> None:
    """Answers written to the group (read and dropped: no permission
    events are raised), or EOF: the program's last descriptor closed."""
    try:
        data = os.read(group.end, 4096)
    except BlockingIOError:
        return
    except OSError:
        data = b""
    if data:
        return
    groups = groups_of(inst)
    with groups.lock:
        if group in groups.live:
            groups.live.remove(group)
    inst.engine.unwatch_fd(group.end)
    group.close()


def raise_open(inst, task: "Task", fd: int, extra: int = 0) -> None:
    """FAN_OPEN (with `extra`: FAN_OPEN_EXEC) of the file the provider
    opened as `fd` for the task."""
    groups = getattr(inst, "fanotify_groups", None)
    if groups is None or not groups.live:
        return
    _raise(groups, task, fd, FAN_OPEN | extra)


def _raise(groups: Groups, task: "Task", fd: int, mask: int) -> None:
    try:
        obj = Object(fd)
    except OSError:
        return
    with groups.lock:
        for g in groups.live:
            got = g.wanted(obj, mask)
            if got:
                pid = task.tid if g.flags & FAN_REPORT_TID else task.process.pid
                g.queue(Event(got, obj.key, pid, _opath(fd)))


def _opath(fd: int) -> int:
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return -1


def deliver(inst, task: "Task", install: Callable[[int, bool], int]) -> None:
    """At a served call of `task`: hand over the queued events of the
    groups its process holds (their descriptors go into its table)."""
    groups = getattr(inst, "fanotify_groups", None)
    if groups is None or not groups.live:
        return
    with groups.lock:
        for g in groups.live:
            if g.pending and g.held_by(task.process.host_pid):
                g.hand_over(install)


def _close(fd: int) -> None:
    if fd >= 0:
        os.close(fd)
