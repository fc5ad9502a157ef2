"""Interop: host programs run from Linux, paths and environment across.

Running a host program (WSL 1 runs Windows programs from bash the same way)
---------------------------------------------------------------------------
An execve whose target (after symlinks and `#!` chains, see
kernel/exec/plan.py) is a file on a DrvFs mount, in an instance whose
`[interop] enabled` is true, does not load the file into the pico process.
The provider starts the file as an ordinary *host* process
(platform/hostexec.py): outside the instance, not traced, no seccomp
filter, as the host user, with

- argv as the caller gave it; the environment of the instance process (the
  host environment the manager was started with) plus the variables the
  caller's `LXENV` lists (below);
- the caller's descriptors 0, 1, 2 (copied with pidfd_getfd: pipes, files,
  the pty; a closed one stays closed);
- as working directory the host directory behind the caller's, when that is
  on DrvFs; else (VolFs, tmpfs... have no host path a host program may
  write through) the host user's home directory ($HOME), else `/`;
- the caller's signal mask, and its ignored signals ignored (as an exec
  keeps them); every other disposition default.

The caller stays in the instance as the host program's stand-in (a Linux
parent waits for *it*): its execve really executes a tiny static program
(in a sealed memfd; see _STANDIN_CODE) that waits in pause(), so that, as
with any exec, its close-on-exec descriptors close and a vfork parent goes
on; /proc shows the host program's path and argv for it. While the host
program runs, every signal that comes for the stand-in (Ctrl-C on its
terminal, `kill` from another Linux process, `lx` forwarding SIGINT) is
suppressed at its signal-delivery stop and sent to the host program's
process group instead (a signal the caller ignored is dropped, as it would
be ignored after an exec).

When the host program ends (the provider's wait loop reaps it:
Engine.watch_child), the stand-in is made to end the same way: at the stop
a PTRACE_INTERRUPT brings, it is sent to `exit_group(N)` for an exit code
N, or, for death by signal S, to code that makes S's action the default,
unblocks it and sends it to itself (the hook lets S through). If the
stand-in dies first (SIGKILL, the instance ending), the host program's
process group is killed: no strays.

Not done: other threads of a multi-threaded caller keep running while the
host program runs (a Linux exec would end them first).

Paths and environment
---------------------
Translated by lxsub/hostpath.py (`lx --path` uses it without the kernel),
here over the instance's DrvFs mounts as they are (mounts_of).
"""

from __future__ import annotations

import os
import signal
import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lxsub.abi.limits import MAX_ARG_STRLEN
from lxsub.hostpath import (HostMount, env_to_host, env_to_linux, host_path_suffix, join,
                             normalize, to_linux)
from lxsub.kernel.call import Call
from lxsub.platform import hostexec, hostfd, hostproc, libc, memory

if TYPE_CHECKING:
    from lxsub.kernel.exec.plan import HostPlan
    from lxsub.kernel.instance import Instance
    from lxsub.kernel.vfs.node import Node
    from lxsub.platform.ptrace import Regs

MAX_ENV_STRLEN = MAX_ARG_STRLEN


# -- paths ----------------------------------------------------------------------

def mounts_of(inst: "Instance") -> list[HostMount]:
    """The instance's DrvFs mounts as they are now."""
    out = []
    for m in inst.vfs.mounts.mounts:
        if m.fs.host_view:
            out.append(HostMount(normalize(join(m.fs.host_root, m.root_path.lstrip("/"))),
                                 normalize(m.path)))
    return out


def session_env(inst: "Instance", env: dict[str, str], host_env: dict[str, str],
                creds=None) -> dict[str, str]:
    """A login environment with what interop adds from the client's host
    environment (LXENV variables; the host PATH appended when
    `appendHostPath` asks for it and the user, `creds`, may run host
    programs: a PATH of directories one may not enter only turns
    'command not found' into 'Permission denied')."""
    mounts = mounts_of(inst)
    out = dict(env)
    out.update(env_to_linux(host_env, mounts))
    cfg = inst.config.interop
    may_run = creds is None or (inst.interop_door.allows(creds)
                                and inst.drvfs_door.allows(creds))
    if cfg.enabled and may_run and host_env.get("PATH"):
        suffix = host_path_suffix(host_env["PATH"], mounts)
        if suffix and cfg.append_host_path:
            out["PATH"] = (out["PATH"] + ":" + suffix) if out.get("PATH") else suffix
        elif suffix:
            # Not searched; only named by the shell hook when a command is
            # missing (HOST_COMMANDS_HOOK).
            out[HOST_PATH_VAR] = suffix
    return out


# -- a missing command names the host's program of that name -------------------------

HOST_PATH_VAR = "LX_HOST_PATH"
HOST_COMMANDS_HOOK = "/etc/profile.d/lx-host-commands.sh"

HOST_COMMANDS_SCRIPT = r'''# lx: a command missing from this distro is "command not found" and is
# not looked for on the host (interop's appendHostPath is off); when the host
# has a program of that name, this says where, for whoever means to run it.
# Written by lxsub when the instance starts (interop enabled); do not edit.
if [ -n "${BASH_VERSION-}" ] && ! declare -F command_not_found_handle >/dev/null 2>&1; then
    command_not_found_handle() {
        printf '%s: command not found\n' "$1" >&2
        case "$1" in */*) return 127 ;; esac
        _lx_ifs=$IFS; IFS=:
        for _lx_dir in ${LX_HOST_PATH-}; do
            if [ -f "$_lx_dir/$1" ] && [ -x "$_lx_dir/$1" ]; then
                printf 'lx: the host has %s; run it by that path, or set %s\n' \
                    "$_lx_dir/$1" "appendHostPath = true under [interop] in /etc/lx.conf" >&2
                break
            fi
        done
        IFS=$_lx_ifs
        return 127
    }
fi
'''


def install_host_commands_hook(inst: "Instance") -> bool:
    """Write HOST_COMMANDS_HOOK (read by login shells) when interop is on and
    the host's PATH is not appended; remove ours otherwise. True if written."""
    cfg = inst.config.interop
    if not cfg.enabled or cfg.append_host_path:
        _remove_ours(inst, b"lx-host-commands.sh", _OURS, "/etc/profile.d")
        return False
    if not _is_dir(inst, "/etc/profile.d"):
        return False            # a distro whose shells do not read it (BusyBox)
    return _install_script(inst, b"lx-host-commands.sh", HOST_COMMANDS_SCRIPT.encode(),
                           only_ours=_OURS, where="/etc/profile.d", mode=0o644)


# -- running host programs --------------------------------------------------------

def host_target(inst: "Instance"):
    """For kernel/exec/plan.py: a function giving the host path of an
    executable that runs on the host, or None (interop off: nothing does).

    Only a caller holding the interop door (`[interop] users`, see
    kernel/doors.py) may run one: for the others the execve is EACCES,
    however the file was reached (its path, a symlink to it, PATH, a
    script's `#!` line naming it)."""
    if not inst.config.interop.enabled:
        return None

    def target(node: "Node", creds) -> str | None:
        if node.fs.host_view:
            inst.interop_door.check(creds)
            return node.fs.host_path(node)
        return None
    return target


@dataclass(eq=False)
class HostCall:
    """A Linux process standing in for the host program it executed."""
    tid: int                  # the caller's host tid
    host_pid: int             # the host program (leader of its process group)
    ignored: set[int] = field(default_factory=set)
    ready: bool = False       # the caller runs the stand-in program
    ended: bool = False       # the host program has ended
    exit_code: int = 0
    dying_by: int = 0         # the signal the caller is to die of


class HostPrograms:
    """An instance's interop state: the host programs running for Linux
    callers (by the caller's host tid) and the stand-in program's memfd."""

    def __init__(self) -> None:
        self.calls: dict[int, HostCall] = {}
        self._standin: int | None = None

    def forget(self, call: HostCall) -> None:
        """The caller no longer stands in for `call`."""
        if self.calls.get(call.tid) is call:
            del self.calls[call.tid]

    def standin_fd(self) -> int:
        """A new read-only open of the stand-in (a sealed memfd made once)."""
        if self._standin is None:
            flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
            try:
                fd = os.memfd_create("lxsub-interop", flags | 0x10)      # MFD_EXEC
            except OSError:
                fd = os.memfd_create("lxsub-interop", flags)
            os.write(fd, _standin_elf())
            import fcntl
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                        fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
            self._standin = fd
        return os.open(f"/proc/self/fd/{self._standin}", os.O_RDONLY | os.O_CLOEXEC)


# The stand-in: a static x86-64 program that the caller really executes
# (so that close-on-exec descriptors close and a vfork parent goes on, as
# with any exec). Assembled from (intel syntax, position independent):
#
#   _start:    mov eax, 34; syscall; jmp _start           # pause() forever
#   exit_stub: mov eax, 231; syscall; jmp exit_stub       # exit_group(rdi)
#   die_stub:  mov r12, rdi                                # rdi = signal
#              rt_sigaction(r12, &dfl, NULL, 8)            # default action
#              rt_sigprocmask(SIG_UNBLOCK, &all, NULL, 8)  # nothing blocked
#              kill(getpid(), r12); jmp _start
#   dfl: .quad 0, 0, 0, 0;  all: .quad -1                  (at 0x60, 0x80)
_STANDIN_CODE = bytes.fromhex(
    "b8220000000f05ebf7b8e70000000f05ebf74989fcb80d000000488d353f00000031d2"
    "41ba080000000f05b80e000000bf01000000488d354400000031d241ba080000000f05"
    "b8270000000f0589c74c89e6b83e0000000f05eba50f1f44000000000000000000000000"
    "00000000000000000000000000000000000000000000ffffffffffffffff")
_STANDIN_BASE = 0x400000
_CODE_AT = 128                              # file offset of the code
_EXIT_STUB, _DIE_STUB = 0x09, 0x12


def _standin_elf() -> bytes:
    import struct
    size = _CODE_AT + len(_STANDIN_CODE)
    ehdr = struct.pack("<4sBBBBB7xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0,
                       2, 62, 1, _STANDIN_BASE + _CODE_AT, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, _STANDIN_BASE, _STANDIN_BASE, size, size, 0x1000)
    return (ehdr + phdr).ljust(_CODE_AT, b"\0") + _STANDIN_CODE


def _signal_state(tid: int) -> dict[str, set[int]]:
    masks = hostproc.signal_masks(tid)
    return {key: {s for s in range(1, 65) if masks[key] >> (s - 1) & 1}
            for key in ("SigBlk", "SigIgn", "SigCgt")}


def _read_env(c: Call, envp_ptr: int) -> dict[str, str]:
    env: dict[str, str] = {}
    for p in memory.read_ptr_array(c.pid, envp_ptr):
        k, eq, v = c.read_str(p, MAX_ENV_STRLEN).decode(errors="surrogateescape").partition("=")
        if eq and k not in env:
            env[k] = v
    return env


def _host_cwd(inst: "Instance", task) -> tuple[str, str]:
    """(host working directory, Linux cwd) for a host program."""
    node = task.fs.cwd
    linux_cwd = "/"
    try:
        linux_cwd = inst.vfs.vpath_of(node)
    except OSError:
        pass
    if node.fs.host_view:
        try:
            host = node.fs.host_path(node)
            if host and not host.endswith(" (deleted)"):
                return host, linux_cwd
        except OSError:
            pass
    home = os.environ.get("HOME")
    if home and os.path.isdir(home):
        return home, linux_cwd
    return "/", linux_cwd


def _caller_stdio(task) -> list[int | None]:
    fds: list[int | None] = []
    for n in (0, 1, 2):
        try:
            fds.append(hostfd.take_fd(task.host_pid, task.host_tid, n, task.process.pidfd))
        except OSError:
            fds.append(None)
    return fds


def run_host(c: Call, plan: "HostPlan", envp_ptr: int):
    """Start `plan` on the host for the caller's execve (see the module's
    doc); returns (the ExecPlan of the stand-in the caller executes
    instead, what to call with the result if that execve fails)."""
    from lxsub.kernel.exec.plan import ExecPlan
    inst, task = c.inst, c.task
    linux_env = _read_env(c, envp_ptr)
    host_cwd, linux_cwd = _host_cwd(inst, task)
    env = dict(os.environ)
    env.update(env_to_host(linux_env, mounts_of(inst), linux_cwd))
    sig = _signal_state(task.host_tid)
    programs = inst.host_programs
    standin = programs.standin_fd()
    stdio = _caller_stdio(task)
    try:
        pid = hostexec.spawn(
            plan.host_path, plan.argv,
            {k.encode(errors="surrogateescape"): v.encode(errors="surrogateescape")
             for k, v in env.items()},
            host_cwd.encode(), (stdio[0], stdio[1], stdio[2]),
            sig["SigBlk"], sig["SigIgn"])
    except BaseException:
        os.close(standin)
        raise
    finally:
        for fd in stdio:
            if fd is not None:
                os.close(fd)
    inst.log.syscall(task.tid, f"interop: {plan.host_path.decode(errors='replace')} runs on "
                               f"the host as pid {pid} (cwd {host_cwd})")
    call = HostCall(task.host_tid, pid, sig["SigIgn"])
    programs.calls[task.host_tid] = call
    engine = inst.engine
    engine.watch_child(pid, lambda status: _host_ended(inst, call, status))
    engine.watch_child(task.host_tid, lambda _status: _caller_ended(inst, call))
    engine.hook_signals(task.host_tid, lambda s: _forward(call, s))
    s = os.fstat(standin)
    exe_plan = ExecPlan(standin, (s.st_dev, s.st_ino), plan.argv, plan.exe,
                        os.path.basename(plan.exe)[:15], False)

    def exec_done(_tid: int) -> None:
        # The exec event of the stand-in: it runs now.
        call.ready = True
        if call.ended:
            _finish(inst, call)

    def exec_failed(result: int) -> None:
        # The syscall exit of an execve that did not happen (E2BIG, ENOMEM...):
        # the caller stays in its old program with the error; no host program.
        if result < 0:
            _cancel(inst, call)
    engine.after_exec(task.host_tid, exec_done)
    return exe_plan, exec_failed


def _forward(call: HostCall, sig: int) -> int:
    """A signal for the caller: the host program's (0: not the caller's)."""
    if call.dying_by and sig == call.dying_by and call.ended:
        return sig
    if call.ended or sig == signal.SIGCHLD or sig in call.ignored:
        return 0
    libc.kill_group_or_process(call.host_pid, sig)
    return 0


def _host_ended(inst: "Instance", call: HostCall, status: int) -> None:
    call.ended = True
    if inst.host_programs.calls.get(call.tid) is not call:
        return      # the caller is gone already
    if os.WIFSIGNALED(status):
        call.dying_by = os.WTERMSIG(status)
    else:
        call.exit_code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1
    if call.ready:
        _finish(inst, call)


def _finish(inst: "Instance", call: HostCall) -> None:
    """End the stand-in as the host program ended: at its next stop it
    jumps to exit_group(code), or to making `sig` deadly and sending it."""
    if call.dying_by == signal.SIGKILL:
        try:
            os.kill(call.tid, signal.SIGKILL)
        except OSError:
            pass
        return

    def at_stop(tid: int, regs: "Regs") -> None:
        from lxsub.platform import ptrace
        regs.orig_rax = 0xFFFFFFFFFFFFFFFF      # no syscall restart: run from rip
        if call.dying_by:
            regs.rip = _STANDIN_BASE + _CODE_AT + _DIE_STUB
            regs.rdi = call.dying_by
        else:
            regs.rip = _STANDIN_BASE + _CODE_AT + _EXIT_STUB
            regs.rdi = call.exit_code
        ptrace.set_regs(tid, regs)
    inst.engine.interrupt(call.tid, at_stop)


def _cancel(inst: "Instance", call: HostCall) -> None:
    inst.host_programs.forget(call)
    inst.engine.hook_signals(call.tid, None)
    inst.engine.child_watchers.pop(call.tid, None)
    inst.engine.exec_hooks.pop(call.tid, None)
    if not call.ended:
        try:
            os.killpg(call.host_pid, signal.SIGKILL)
        except OSError:
            pass


def _caller_ended(inst: "Instance", call: HostCall) -> None:
    inst.host_programs.forget(call)
    if not call.ended:
        # The stand-in was killed (SIGKILL, the instance ending): so is the program.
        try:
            os.killpg(call.host_pid, signal.SIGKILL)
        except OSError:
            pass


# -- lxpath: path translation inside the instance -----------------------------------

LXPATH = "/usr/local/bin/lxpath"

LXPATH_SCRIPT = r'''#!/bin/sh
# lxpath: translate paths between the host and this lxsub distro (like wslpath).
#   lxpath [-u] HOSTPATH    host path -> Linux path (the default)
#   lxpath -w LINUXPATH     Linux path -> host path
# Written by lxsub when the instance starts (interop enabled); do not edit.
# Exit status: 0 done, 1 the path has no translation, 2 bad usage.
usage() { echo "usage: lxpath [-u|-w] PATH" >&2; exit 2; }
mode=u
case "$1" in
    -u) mode=u; shift ;;
    -w) mode=w; shift ;;
    -h|--help) echo "usage: lxpath [-u|-w] PATH"; exit 0 ;;
    --) shift ;;
    -*) echo "lxpath: unknown option $1" >&2; usage ;;
esac
[ "$1" = "--" ] && shift
[ $# -eq 1 ] || usage
[ -n "$1" ] || { echo "lxpath: empty path" >&2; exit 1; }

# Fold ".", ".." and repeated slashes of an absolute path (no symlinks followed).
norm() {
    out=
    rest=$1
    while [ -n "$rest" ]; do
        case "$rest" in
            */*) part=${rest%%/*}; rest=${rest#*/} ;;
            *) part=$rest; rest= ;;
        esac
        case "$part" in
            ''|.) ;;
            ..) out=${out%/*} ;;
            *) out="$out/$part" ;;
        esac
    done
    echo "${out:-/}"
}

# The rest of $1 below directory $2, in $rest; false if it is not below.
below() {
    if [ "$2" = / ]; then rest=${1#/}; return 0; fi
    case "$1" in
        "$2") rest=; return 0 ;;
        "$2"/*) rest=${1#"$2"/}; return 0 ;;
    esac
    return 1
}

if [ "$mode" = u ]; then
    case "$1" in
        /*) ;;
        *) echo "lxpath: $1: not an absolute host path" >&2; exit 1 ;;
    esac
fi
case "$1" in
    /*) path=$(norm "$1") ;;
    *) path=$(norm "$PWD/$1") ;;
esac

best=; bestlen=-1
while read -r src mnt fstype _rest; do
    [ "$fstype" = drvfs ] || continue
    src=$(printf '%b' "$src"); mnt=$(printf '%b' "$mnt")
    # The source names the host directory as "host" (its /) or "host:a\b" (/a/b).
    case "$src" in
        host) src=/ ;;
        host:*) src="/$(printf '%s' "${src#host:}" | tr '\\' /)" ;;
    esac
    if [ "$mode" = u ]; then from=$src; to=$mnt; else from=$mnt; to=$src; fi
    if below "$path" "$from" && [ ${#from} -gt $bestlen ]; then
        bestlen=${#from}
        if [ -z "$rest" ]; then best=$to
        elif [ "$to" = / ]; then best="/$rest"
        else best="$to/$rest"; fi
    fi
done < /proc/mounts

if [ "$bestlen" -lt 0 ]; then
    if [ "$mode" = u ]; then
        echo "lxpath: $1: no host mount of this distro shows it" >&2
    else
        echo "lxpath: $1: not on a host (drvfs) mount; it has no host path" >&2
    fi
    exit 1
fi
echo "$best"
'''


def install_lxpath(inst: "Instance") -> bool:
    """Write /usr/local/bin/lxpath (root:root 0755) through the VFS when
    interop is on and it is missing or differs. True if written."""
    if not inst.config.interop.enabled:
        return False
    return _install_script(inst, b"lxpath", LXPATH_SCRIPT.encode())


# -- lx inside: the host's lx (as wsl.exe runs inside WSL) ---------------------------

LX_COMMAND = "/usr/local/bin/lx"


def lx_command_script(inst: "Instance") -> str | None:
    """A POSIX sh script that runs the host's lx (this very lxsub, with the
    Python running it) on the host through interop, or None when no DrvFs
    mount shows that Python. The host lx gets the environment of the
    instance (LX_HOME, the runtime directory: the same manager) and the
    caller's terminal, so `lx -d other -- cmd` inside starts a session in
    another distro. Only users holding the interop door may run it: it is
    a host program."""
    import json
    import shlex
    import sys
    python = to_linux(os.path.realpath(sys.executable), mounts_of(inst))
    if python is None:
        return None
    # The host Python is run by its real path (interop executes the file a
    # symlink leads to), so a virtual environment's directories are given
    # explicitly, as this process has them.
    path = [p for p in sys.path if p and os.path.isdir(p)]
    code = (f"import sys; sys.path[:0] = {json.dumps(path)}; "
            "from lxsub.cli.main import run; run()")
    return ("#!/bin/sh\n"
            "# lx: the host's lx, run on the host through interop (like wsl.exe inside WSL).\n"
            "# Written by lxsub when the instance starts (interop enabled); do not edit.\n"
            f"exec {shlex.quote(python)} -c {shlex.quote(code)} \"$@\"\n")


def install_lx_command(inst: "Instance") -> bool:
    """Write /usr/local/bin/lx (root:root 0755) when interop is on and the
    distro has no `lx` of its own there; remove ours when interop is off
    (there is no host lx to reach then). True if written."""
    script = lx_command_script(inst) if inst.config.interop.enabled else None
    if script is None:
        _remove_ours(inst, b"lx", _OURS)
        return False
    return _install_script(inst, b"lx", script.encode(), only_ours=_OURS)


_OURS = b"# Written by lxsub"


def _is_dir(inst: "Instance", path: str) -> bool:
    from lxsub.kernel.creds import Creds
    from lxsub.kernel.vfs.caller import Caller
    try:
        node = inst.vfs.resolve(path.encode(), Caller(Creds()))
    except OSError:
        return False
    try:
        return node.is_dir()
    finally:
        node.release()


def _remove_ours(inst: "Instance", name: bytes, marker: bytes,
                 where: str = "/usr/local/bin") -> None:
    """Remove WHERE/NAME if it is a file lxsub wrote (has `marker`)."""
    from lxsub.kernel.creds import Creds
    from lxsub.kernel.vfs.caller import Caller
    from lxsub.kernel.vfs.open import open_regular
    from lxsub.kernel.vfs.path import Walker
    own = Caller(Creds())                 # the provider's own work
    try:
        cur = inst.vfs.resolve(where.encode(), own)
    except OSError:
        return
    try:
        try:
            node = Walker(inst.vfs.mounts, cur, own).resolve(cur, name, follow=False)
        except OSError:
            return
        try:
            try:
                fd = open_regular(node, os.O_RDONLY, own)
            except OSError:             # not a regular file: not one lxsub wrote
                return
            with os.fdopen(fd, "rb") as f:
                if marker not in f.read(4096):
                    return
        finally:
            node.release()
        cur.fs.unlink(cur, name)
    finally:
        cur.release()


def _install_script(inst: "Instance", name: bytes, data: bytes,
                    only_ours: bytes | None = None, where: str = "/usr/local/bin",
                    mode: int = 0o755) -> bool:
    """Write WHERE/NAME (root:root, `mode`) through the VFS when it is
    missing or differs; with `only_ours`, a file that does not contain it is
    the distro's own and is left alone. True if written."""
    from lxsub.kernel.creds import Creds
    from lxsub.kernel.fs.mounts import make_dirs
    from lxsub.kernel.vfs.caller import Caller
    from lxsub.kernel.vfs.open import open_regular
    from lxsub.kernel.vfs.path import Walker
    creds = Creds()
    own = Caller(creds)                   # the provider's own work
    cur = make_dirs(inst, where)
    walker = Walker(inst.vfs.mounts, cur, own)
    try:
        try:
            node = walker.resolve(cur, name, follow=False)
        except FileNotFoundError:
            node = None
        if node is not None:
            try:
                attr = node.fs.getattr(node, own)
                same = False
                old = b""
                if stat.S_ISREG(attr.mode):
                    fd = open_regular(node, os.O_RDONLY, own)
                    with os.fdopen(fd, "rb") as f:
                        old = f.read(max(len(data) + 1, 4096))
                    same = old == data
                if same and attr.mode & 0o7777 == mode and attr.uid == 0 and attr.gid == 0:
                    return False
                if only_ours is not None and only_ours not in old:
                    return False
            finally:
                node.release()
            cur.fs.unlink(cur, name)
        fd = cur.fs.create(cur, name, os.O_WRONLY, mode, creds)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    finally:
        cur.release()
