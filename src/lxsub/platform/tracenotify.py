"""The ptrace platform: the notify rows of the filter served at ptrace stops.

For kernels without seccomp user-notify with descriptor injection (before
Linux 5.9/5.14; RHEL 8 runs 4.18) the same filter from the same table is
installed with SECCOMP_RET_TRACE | NOTIFY_DATA wherever it says
SECCOMP_RET_USER_NOTIF. The call then stops its thread (PTRACE_EVENT_SECCOMP,
every pico process is the provider's tracee already); the engine hands the
stop to the kernel as a `Notification` with a `TraceListener` whose reply
methods are those of the notify platform's `Listener`:

- an answer goes into the registers: orig_rax = -1 skips the call, rax is
  its result; `CONTINUE` lets the call run untouched;
- a descriptor is handed over without ADDFD: the provider sends it with
  SCM_RIGHTS on a Unix socket whose other end sits at FD_SLOT in the
  tracee, and a recvmsg run in the tracee at its stop (an injected syscall,
  `_Injection`) installs it, at the lowest free number like open(2);
- pidfd_getfd's fallback (platform/hostfd.py): a stopped tracee sends its
  descriptor with an injected sendmsg.

The channel of a process is made the first time one is needed, by
syscalls injected at a stop (socket, dup3 to FD_SLOT, connect to the
provider's abstract listening socket); fork children share it. Memory of
the tracee is read and written with process_vm_readv/writev as on the
notify platform. Nothing here needs Linux > 4.8.

Replies may come from other threads (blocking calls): ptrace requests
must come from the tracer thread, so those are passed to the loop through
a pipe the engine watches.
"""

from __future__ import annotations

import errno
import os
import queue
import socket
import struct
import threading
from typing import TYPE_CHECKING, Callable

from lxsub.abi.sysno import NUMBERS, SYS_CLOSE, SYS_CONNECT, SYS_DUP3, SYS_RECVMSG, SYS_SENDMSG, SYS_SOCKET
from lxsub.platform import bpf, hostfd, memory, ptrace
from lxsub.platform.notify import USER_NOTIF_FLAG_CONTINUE, Notification
from lxsub.platform.ptrace import Regs

if TYPE_CHECKING:
    from lxsub.platform.engine import Engine

SYS_GETPID = NUMBERS["getpid"]
NOTIFY_DATA = 1                      # SECCOMP_RET_DATA of the rows the provider answers
_TRACE_NOTIFY = bpf.RET_TRACE | NOTIFY_DATA
_RET_K = 0x06                         # BPF_RET | BPF_K
_INSN = struct.Struct("<HBBI")
_MASK64 = 0xFFFFFFFFFFFFFFFF
_MSG_DONTWAIT = 0x40
_MSG_CMSG_CLOEXEC = 0x40000000
_SCM_RIGHTS = 1


def _fd_slot() -> int:
    """The descriptor number of the channel in every pico process: high,
    below the RLIMIT_NOFILE the processes inherit from the provider."""
    import resource
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return min(soft, 1024) - 1


FD_SLOT = _fd_slot()
# Where a channel may sit: the first free of these when it is made (a
# program may have put a descriptor of its own at FD_SLOT).
SLOTS = tuple(range(FD_SLOT, FD_SLOT - 8, -1))


def trace_filter(prog: bytes) -> bytes:
    """The same filter with TRACE | NOTIFY_DATA wherever it asks for user-notify."""
    out = bytearray(prog)
    for off in range(0, len(out), _INSN.size):
        code, jt, jf, k = _INSN.unpack_from(out, off)
        if code == _RET_K and k == bpf.RET_USER_NOTIF:
            _INSN.pack_into(out, off, code, jt, jf, _TRACE_NOTIFY)
    return bytes(out)


class _Gone(Exception):
    """The tracee ended (or left the stop) while we worked on it."""


class _Stop:
    """One thread stopped at a notify row: the registers it stopped with,
    and whether an injected syscall has moved it to a syscall-exit stop."""
    __slots__ = ("tid", "regs", "at_exit", "signals")

    def __init__(self, tid: int, regs: Regs) -> None:
        self.tid = tid
        self.regs = Regs.from_buffer_copy(regs)
        self.at_exit = False
        self.signals: list[int] = []


class _Injection:
    """Running syscalls in a stopped tracee (a minimal injection primitive:
    only from this platform's stops; platform/ may grow a general one)."""

    def __init__(self, engine: "Engine") -> None:
        self.engine = engine

    def run(self, stop: _Stop, nr: int, *args: int) -> int:
        """Run syscall nr(args) in stop.tid; its result (negative errno)."""
        regs = Regs.from_buffer_copy(stop.regs)
        regs.orig_rax = nr
        regs.rax = nr
        regs.set_args(*args)
        if stop.at_exit:
            regs.rip = stop.regs.rip - 2          # back onto the `syscall` instruction
        try:
            ptrace.set_regs(stop.tid, regs)
            ptrace.cont_to_syscall_exit(stop.tid)
        except ProcessLookupError:
            raise _Gone() from None
        self._wait_exit(stop, expect_entry=stop.at_exit)
        stop.at_exit = True
        out = ptrace.get_regs(stop.tid, Regs())
        return ptrace.signed64(out.rax)

    def back_to_entry(self, stop: _Stop) -> None:
        """From the exit of an injected call, back to the seccomp stop the
        thread first came to, with its own registers: it runs its
        `syscall` again, which stops in the filter again."""
        regs = Regs.from_buffer_copy(stop.regs)
        regs.rip -= 2
        regs.rax = regs.orig_rax
        tid = stop.tid
        try:
            ptrace.set_regs(tid, regs)
            ptrace.cont(tid)
            while True:
                _, status = os.waitpid(tid, ptrace.WALL)
                if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                    self.engine._on_wait_status(tid, status)
                    raise _Gone()
                sig, event = (status >> 8) & 0xFF, status >> 16
                if event == ptrace.EVENT_SECCOMP:
                    break
                if event == 0 and sig != ptrace.SYSCALL_STOP:
                    stop.signals.append(sig)
                ptrace.cont(tid)
        except (ProcessLookupError, ChildProcessError):
            raise _Gone() from None
        stop.at_exit = False
        for sig in stop.signals:       # pending again: delivered after the call
            os.kill(tid, sig)
        stop.signals.clear()

    def _wait_exit(self, stop: _Stop, expect_entry: bool) -> None:
        tid = stop.tid
        while True:
            try:
                _, status = os.waitpid(tid, ptrace.WALL)
            except ChildProcessError:
                raise _Gone() from None
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                self.engine._on_wait_status(tid, status)
                raise _Gone()
            sig, event = (status >> 8) & 0xFF, status >> 16
            if sig == ptrace.SYSCALL_STOP:
                if expect_entry:
                    expect_entry = False
                else:
                    return
            elif event == 0:
                # A signal came before the injected call (it was pending
                # when the thread went back to its `syscall`): kept for
                # the thread's resume after the answer.
                stop.signals.append(sig)
            ptrace.cont_to_syscall_exit(tid)


class TraceListener:
    """The notify platform's Listener, answered through registers."""

    fd = -1
    # A thread at a ptrace stop runs only when we let it: the descriptor is
    # installed and ours closed before it can see either.
    last_holder_safe = True

    def __init__(self, engine: "Engine") -> None:
        self.engine = engine
        self.stops: dict[int, _Stop] = {}
        self.by_tid: dict[int, int] = {}
        # Threads at a seccomp stop of a trace row, until the engine resumes them.
        self.trace_rows: dict[int, _Stop] = {}
        self._next = 1
        self.inject = _Injection(engine)
        self.channels = _Channels(self)
        self.loop_thread = threading.get_ident()
        self._calls: queue.Queue = queue.Queue()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        engine.watch_fd(self._wake_r, self._run_queued)
        hostfd.set_stopped_sender(self._send_from_stopped)

    # -- from the engine ----------------------------------------------------

    def claims(self, tid: int) -> bool:
        """Whether tid's seccomp stop is one of a notify row."""
        return ptrace.event_msg(tid) == NOTIFY_DATA

    def notification(self, tid: int, regs: Regs) -> Notification:
        nid = self._next
        self._next += 1
        self.stops[nid] = _Stop(tid, regs)
        self.by_tid[tid] = nid
        return Notification(nid, tid, regs.orig_rax, regs.args())

    def at_trace_row(self, tid: int, regs: Regs) -> None:
        """tid stopped at a trace row: its descriptors can be taken by an
        injected sendmsg until it runs on (`resumed`)."""
        self.trace_rows[tid] = _Stop(tid, regs)

    def resumed(self, tid: int) -> None:
        self.trace_rows.pop(tid, None)

    def forget_tid(self, tid: int) -> None:
        self.trace_rows.pop(tid, None)
        nid = self.by_tid.pop(tid, None)
        if nid is not None:
            self.stops.pop(nid, None)

    # -- the Listener's methods -----------------------------------------------

    def reply(self, nid: int, val: int = 0, error: int = 0, flags: int = 0) -> None:
        self._on_loop(lambda: self._reply(nid, val, error, flags))

    def reply_fd(self, nid: int, srcfd: int, cloexec: bool, tid: int = 0) -> int:
        def install() -> int:
            number = self._add_fd(nid, srcfd, cloexec)
            self._reply(nid, number, 0, 0)
            return number
        return self._on_loop(install)

    def reply_fd_last_holder(self, nid: int, srcfd: int, cloexec: bool, tid: int = 0) -> None:
        """As reply_fd, with our copy closed before the caller runs again:
        its close(2) is then the file's last (inotify's IN_CLOSE_WRITE,
        OFD locks, a FIFO's EOF happen when it returns)."""
        def install() -> None:
            try:
                number = self._add_fd(nid, srcfd, cloexec)
            finally:
                os.close(srcfd)
            self._reply(nid, number, 0, 0)
        try:
            self._on_loop(install)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise

    def add_fd(self, nid: int, srcfd: int, cloexec: bool, newfd: int | None = None) -> int:
        return self._on_loop(lambda: self._add_fd(nid, srcfd, cloexec, newfd))

    def still_valid(self, nid: int) -> bool:
        return nid in self.stops

    # -- on the loop ------------------------------------------------------------

    def _stop(self, nid: int) -> _Stop:
        stop = self.stops.get(nid)
        if stop is None:
            raise OSError(errno.ENOENT, "the caller is gone")
        return stop

    def _reply(self, nid: int, val: int, error: int, flags: int) -> None:
        stop = self._stop(nid)
        del self.stops[nid]
        if self.by_tid.get(stop.tid) == nid:
            del self.by_tid[stop.tid]
        regs = Regs.from_buffer_copy(stop.regs)
        if error in ptrace.RESTARTS:
            self._restart_answer(stop, regs, error)
            return
        if flags & USER_NOTIF_FLAG_CONTINUE:
            if stop.at_exit:            # run it again from the start, as it came
                regs.rip -= 2
                regs.rax = regs.orig_rax
                regs.orig_rax = _MASK64
                self._set(stop.tid, regs)
            self._resume(stop)
            return
        regs.rax = (error or val) & _MASK64
        if not stop.at_exit:
            regs.orig_rax = _MASK64               # skip the call
        self._set(stop.tid, regs)
        self._exit_stop_for_tracer(stop)
        self._resume(stop)

    def _restart_answer(self, stop: _Stop, regs: Regs, error: int) -> None:
        """-ERESTARTSYS for a caller a signal came for (a blocking call):
        the kernel's signal code restarts the call or makes it EINTR by the
        handler's SA_RESTART, as for an interrupted wait in Linux. It does
        that for a syscall's return value only, so the thread is first
        taken to a syscall exit (an injected getpid) where the value is
        written with the call's own number in orig_rax."""
        try:
            if not stop.at_exit:
                self.inject.run(stop, SYS_GETPID)
        except _Gone:
            self.forget_tid(stop.tid)
            raise OSError(errno.ENOENT, "the caller is gone") from None
        regs.rax = error & _MASK64
        self._set(stop.tid, regs)
        self._exit_stop_for_tracer(stop)
        self._resume(stop)

    def _exit_stop_for_tracer(self, stop: _Stop) -> None:
        """The thread is at the exit of an injected call, past its own
        syscall-exit stop: a Linux tracer asking for syscall stops
        (kernel/ptrace.py) gets this one as that."""
        if stop.at_exit and stop.tid in self.engine.resume_modes:
            self.engine.kernel.on_syscall_stop(stop.tid)

    def _resume(self, stop: _Stop) -> None:
        """Let the thread run on with the signals an injection kept."""
        first = stop.signals[0] if stop.signals else 0
        self.engine.resume(stop.tid, first)
        for sig in stop.signals[1:]:
            try:
                os.kill(stop.tid, sig)
            except ProcessLookupError:
                pass

    def _set(self, tid: int, regs: Regs) -> None:
        try:
            ptrace.set_regs(tid, regs)
        except ProcessLookupError:
            raise OSError(errno.ENOENT, "the caller is gone") from None

    def _add_fd(self, nid: int, srcfd: int, cloexec: bool, newfd: int | None = None) -> int:
        stop = self._stop(nid)
        try:
            number = self.channels.hand_over(stop, srcfd, cloexec)
            if newfd is not None and number != newfd:
                flags = os.O_CLOEXEC if cloexec else 0
                got = self.inject.run(stop, SYS_DUP3, number, newfd, flags)
                self.inject.run(stop, SYS_CLOSE, number)
                if got < 0:
                    raise OSError(-got, os.strerror(-got))
                number = newfd
        except _Gone:
            self.forget_tid(stop.tid)
            raise OSError(errno.ENOENT, "the caller is gone") from None
        return number

    def _send_from_stopped(self, tid: int, fd: int) -> int | None:
        """pidfd_getfd's fallback, for a thread at one of our stops."""
        if threading.get_ident() != self.loop_thread:
            return None
        nid = self.by_tid.get(tid)
        stop = self.stops[nid] if nid is not None else self.trace_rows.get(tid)
        if stop is None:
            return None
        try:
            try:
                return self.channels.take(stop, fd)
            finally:
                if nid is None and stop.at_exit:
                    # The kernel goes on with the trace row's own answer.
                    self.inject.back_to_entry(stop)
        except _Gone:
            self.forget_tid(tid)
            raise OSError(errno.ESRCH, "the process is gone") from None

    def _on_loop(self, fn: Callable[[], object]):
        if threading.get_ident() == self.loop_thread:
            return fn()
        done = threading.Event()
        box: list = []
        self._calls.put((fn, box, done))
        os.write(self._wake_w, b"x")
        done.wait()
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    def _run_queued(self) -> None:
        try:
            os.read(self._wake_r, 4096)
        except BlockingIOError:
            pass
        while True:
            try:
                fn, box, done = self._calls.get_nowait()
            except queue.Empty:
                return
            try:
                box.append(fn())
            except BaseException as e:      # handed to the waiting thread
                box.append(e)
            done.set()


def _tgid(tid: int) -> int:
    with open(f"/proc/{tid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"Tgid:"):
                return int(line.split()[1])
    raise _Gone()


class _Channels:
    """The Unix socket between the provider and each pico process (fork
    children share their parent's), found by the inode of the tracee's
    descriptor at one of SLOTS. A program that closes it (close_range,
    dup2 over it) only makes the next hand-over make a new one.
    /proc/<pid>/fd does not show it (hostfd.is_hidden)."""

    def __init__(self, owner: TraceListener) -> None:
        self.owner = owner
        self.ends: dict[int, socket.socket] = {}     # inode of the tracee's end -> ours
        hostfd.set_hidden_check(self.is_channel)
        self.name = b"\0lxsub-fdpass-%d-%s" % (os.getpid(), os.urandom(6).hex().encode())
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.server.bind(self.name)
        self.server.listen(64)
        self.server.setblocking(False)

    def is_channel(self, host_pid: int, fd: int) -> bool:
        if fd not in SLOTS:
            return False
        try:
            return os.stat(f"/proc/{host_pid}/fd/{fd}").st_ino in self.ends
        except OSError:
            return False

    def _end_of(self, stop: _Stop) -> tuple[int, socket.socket]:
        """The tracee's channel: its descriptor number and our end."""
        free = None
        for slot in SLOTS:
            try:
                ino = os.stat(f"/proc/{stop.tid}/fd/{slot}").st_ino
            except FileNotFoundError:
                free = slot if free is None else free
                continue
            except OSError:
                continue
            end = self.ends.get(ino)
            if end is not None:
                return slot, end
        if free is None:
            raise OSError(errno.EMFILE, "no descriptor number left for the provider's channel")
        return free, self._connect(stop, free)

    def _connect(self, stop: _Stop, slot: int) -> socket.socket:
        """Make the channel by syscalls injected in the stopped tracee."""
        run = self.owner.inject.run
        s = run(stop, SYS_SOCKET, socket.AF_UNIX, socket.SOCK_STREAM, 0)
        if s < 0:
            raise OSError(-s, os.strerror(-s))
        if s != slot:
            got = run(stop, SYS_DUP3, s, slot, 0)
            run(stop, SYS_CLOSE, s)
            if got < 0:
                raise OSError(-got, os.strerror(-got))
        addr = struct.pack("<H", socket.AF_UNIX) + self.name
        where = memory.write_below_sp(stop.tid, stop.regs.rsp, [addr])[0]
        got = run(stop, SYS_CONNECT, slot, where, len(addr))
        if got < 0:
            run(stop, SYS_CLOSE, slot)
            raise OSError(-got, os.strerror(-got))
        conn = self._accept_from(_tgid(stop.tid))
        self._forget_closed()
        self.ends[os.stat(f"/proc/{stop.tid}/fd/{slot}").st_ino] = conn
        return conn

    def _accept_from(self, tgid: int) -> socket.socket:
        """The connection the tracee just made. Anyone on the host may
        connect to an abstract name (and find it in /proc/net/unix): a
        connection from another process is closed, never given a file."""
        while True:
            try:
                conn, _ = self.server.accept()
            except BlockingIOError:
                raise OSError(errno.ECONNREFUSED, "the tracee's connection did not arrive") from None
            pid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
            if pid == tgid:
                conn.setblocking(True)
                return conn
            conn.close()

    def _forget_closed(self) -> None:
        """Close our ends whose every tracee end is gone (the process
        ended or closed it): a zero-byte read is the peer's close."""
        for ino, end in list(self.ends.items()):
            end.setblocking(False)
            try:
                gone = end.recv(1, socket.MSG_PEEK) == b""
            except BlockingIOError:
                gone = False
            except OSError:
                gone = True
            end.setblocking(True)
            if gone:
                end.close()
                del self.ends[ino]

    def hand_over(self, stop: _Stop, srcfd: int, cloexec: bool) -> int:
        """Install srcfd in the tracee at its lowest free number."""
        slot, end = self._end_of(stop)
        self._drain(end)
        socket.send_fds(end, [b"f"], [srcfd])
        flags = _MSG_DONTWAIT | (_MSG_CMSG_CLOEXEC if cloexec else 0)
        return self._recv_in_tracee(stop, slot, flags)

    def _recv_in_tracee(self, stop: _Stop, slot: int, flags: int) -> int:
        # struct msghdr, its iovec, one byte and a cmsg of one int, below the red zone.
        cmsg_len = 16 + 4
        base = (stop.regs.rsp - memory.RED_ZONE - 512) & ~15
        iov, data, ctl = base + 64, base + 96, base + 128
        msghdr = struct.pack("<QIIQQQQi4x", 0, 0, 0, iov, 1, ctl, 24, 0)
        memory.write(stop.tid, base, msghdr)
        memory.write(stop.tid, iov, struct.pack("<QQ", data, 1))
        memory.write(stop.tid, ctl, bytes(24))
        got = self.owner.inject.run(stop, SYS_RECVMSG, slot, base, flags)
        if got < 0:
            raise OSError(-got, os.strerror(-got))
        raw = memory.read(stop.tid, ctl, 24)
        length, level, kind = struct.unpack_from("<Qii", raw)
        if length < cmsg_len or level != socket.SOL_SOCKET or kind != _SCM_RIGHTS:
            raise OSError(errno.EIO, "no descriptor arrived")
        return struct.unpack_from("<i", raw, 16)[0]

    def take(self, stop: _Stop, fd: int) -> int:
        """A copy of the tracee's descriptor fd: it sends it (injected sendmsg)."""
        slot, end = self._end_of(stop)
        self._drain(end)
        base = (stop.regs.rsp - memory.RED_ZONE - 512) & ~15
        iov, data, ctl = base + 64, base + 96, base + 128
        cmsg = struct.pack("<Qii", 20, socket.SOL_SOCKET, _SCM_RIGHTS) + struct.pack("<i", fd) + bytes(4)
        memory.write(stop.tid, base, struct.pack("<QIIQQQQi4x", 0, 0, 0, iov, 1, ctl, 24, 0))
        memory.write(stop.tid, iov, struct.pack("<QQ", data, 1))
        memory.write(stop.tid, data, b"t")
        memory.write(stop.tid, ctl, cmsg)
        got = self.owner.inject.run(stop, SYS_SENDMSG, slot, base, _MSG_DONTWAIT)
        if got < 0:
            if got == -errno.EBADF:
                raise OSError(errno.EBADF, "bad file descriptor")
            raise OSError(-got, os.strerror(-got))
        end.setblocking(False)
        try:
            _, fds, _, _ = socket.recv_fds(end, 1, 1)
        finally:
            end.setblocking(True)
        if not fds:
            raise OSError(errno.EBADF, "bad file descriptor")
        return fds[0]

    @staticmethod
    def _drain(end: socket.socket) -> None:
        """Drop what a program may have sent on its end (it owns it)."""
        end.setblocking(False)
        try:
            while True:
                _, fds, _, _ = socket.recv_fds(end, 64, 8)
                for fd in fds:
                    os.close(fd)
        except (BlockingIOError, OSError):
            pass
        finally:
            end.setblocking(True)
