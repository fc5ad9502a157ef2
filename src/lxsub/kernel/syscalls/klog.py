"""syslog(2): the instance's own kernel log (kernel/printk/printk.c do_syslog);
reboot(2) of the instance.

An instance is a kernel of its own to its programs; lxsub writes nothing
to that kernel's log, so it is empty, and its console level is the
instance's. The host's log is never read: it is the host's, like the
host's processes. The checks and answers are Linux's: the actions other
than SYSLOG_ACTION_READ_ALL and SIZE_BUFFER need CAP_SYSLOG (or
CAP_SYS_ADMIN), argument errors are EINVAL, and a READ of an empty log
waits for a message (here: until a signal).
"""

from __future__ import annotations

import errno
import time
from dataclasses import dataclass

from lxsub.abi.sysno import NUMBERS
from lxsub.kernel import creds as caps
from lxsub.kernel.call import Blocking, Call
from lxsub.kernel.sysctl import sysctls_of
from lxsub.platform import libc
from lxsub.platform.memory import USER_END

(ACTION_CLOSE, ACTION_OPEN, ACTION_READ, ACTION_READ_ALL, ACTION_READ_CLEAR, ACTION_CLEAR,
 ACTION_CONSOLE_OFF, ACTION_CONSOLE_ON, ACTION_CONSOLE_LEVEL, ACTION_SIZE_UNREAD,
 ACTION_SIZE_BUFFER) = range(11)
CONSOLE_LOGLEVEL_DEFAULT, CONSOLE_LOGLEVEL_MIN = 7, 1
MESSAGE_LOGLEVEL_DEFAULT = 4
_LOG_BUF_LEN_DEFAULT = 1 << 17      # CONFIG_LOG_BUF_SHIFT=17


@dataclass
class KernelLog:
    """One instance's log state: printk's four levels (/proc/sys/kernel/printk:
    the console's, the default for messages, the console's lowest and its
    default) and the level CONSOLE_OFF saved."""
    console_level: int = CONSOLE_LOGLEVEL_DEFAULT
    message_level: int = MESSAGE_LOGLEVEL_DEFAULT
    minimum_console_level: int = CONSOLE_LOGLEVEL_MIN
    default_console_level: int = CONSOLE_LOGLEVEL_DEFAULT
    saved_level: int = -1

    _LEVELS = ("console_level", "message_level", "minimum_console_level", "default_console_level")

    def printk(self) -> bytes:
        """/proc/sys/kernel/printk."""
        return "\t".join(str(getattr(self, n)) for n in self._LEVELS).encode() + b"\n"

    def set_printk(self, data: bytes) -> None:
        """A write to /proc/sys/kernel/printk (proc_dointvec): up to four
        integers, the levels in order; those not written stay."""
        try:
            values = [int(w) for w in data.split()]
        except ValueError:
            raise OSError(errno.EINVAL, "not a number") from None
        if not 1 <= len(values) <= len(self._LEVELS) or any(abs(v) > 0x7FFFFFFF for v in values):
            raise OSError(errno.EINVAL, "one to four integers")
        for name, value in zip(self._LEVELS, values):
            setattr(self, name, value)


def kernel_log(inst) -> KernelLog:
    """The instance's log, made on first use."""
    log = getattr(inst, "klog", None)
    if log is None:
        log = inst.klog = KernelLog()
    return log


def _log_buf_len() -> int:
    """The buffer's size: the running kernel's (SIZE_BUFFER is allowed to
    anyone), else the kernel's default."""
    try:
        return libc.syscall(NUMBERS["syslog"], ACTION_SIZE_BUFFER, 0, 0)
    except OSError:
        return _LOG_BUF_LEN_DEFAULT


def sys_syslog(c: Call):
    kind, buf, length = c.int(0), c.ptr(1), c.int(2)
    cr = c.task.creds
    if kind not in (ACTION_READ_ALL, ACTION_SIZE_BUFFER) and not (
            cr.capable(caps.CAP_SYSLOG) or cr.capable(caps.CAP_SYS_ADMIN)):
        raise OSError(errno.EPERM, "CAP_SYSLOG needed")     # check_syslog_permissions
    log = kernel_log(c.inst)
    if kind in (ACTION_CLOSE, ACTION_OPEN, ACTION_CLEAR, ACTION_SIZE_UNREAD):
        return 0
    if kind in (ACTION_READ, ACTION_READ_ALL, ACTION_READ_CLEAR):
        if not buf or length < 0:
            raise OSError(errno.EINVAL, "bad buffer")
        if not length:
            return 0
        if buf + length > USER_END:
            raise OSError(errno.EFAULT, "bad address")       # access_ok
        return _wait_for_a_message() if kind == ACTION_READ else 0
    if kind == ACTION_CONSOLE_OFF:
        if log.saved_level == -1:
            log.saved_level, log.console_level = log.console_level, log.minimum_console_level
        return 0
    if kind == ACTION_CONSOLE_ON:
        if log.saved_level != -1:
            log.console_level, log.saved_level = log.saved_level, -1
        return 0
    if kind == ACTION_CONSOLE_LEVEL:
        if not 1 <= length <= 8:
            raise OSError(errno.EINVAL, "bad console level")
        log.console_level, log.saved_level = max(length, log.minimum_console_level), -1
        return 0
    if kind == ACTION_SIZE_BUFFER:
        return _log_buf_len()
    raise OSError(errno.EINVAL, "bad action")


def _wait_for_a_message() -> Blocking:
    """syslog_print waits (interruptibly) until the log has something to
    read; nothing is ever logged, so only a signal ends the wait."""
    job: Blocking

    def work():
        while job.still_wanted is None or job.still_wanted():
            time.sleep(0.2)
        raise OSError(errno.EINTR, "interrupted")
    job = Blocking(work)
    return job


# -- reboot(2): the instance is the machine its programs reboot ------------

LINUX_REBOOT_MAGIC1 = 0xFEE1DEAD
LINUX_REBOOT_MAGIC2S = (672274793, 85072278, 369367448, 537993216)
LINUX_REBOOT_CMD_RESTART, LINUX_REBOOT_CMD_RESTART2 = 0x01234567, 0xA1B2C3D4
LINUX_REBOOT_CMD_HALT, LINUX_REBOOT_CMD_POWER_OFF = 0xCDEF0123, 0x4321FEDC
LINUX_REBOOT_CMD_CAD_ON, LINUX_REBOOT_CMD_CAD_OFF = 0x89ABCDEF, 0x00000000
_ENDS_THE_INSTANCE = (LINUX_REBOOT_CMD_RESTART, LINUX_REBOOT_CMD_RESTART2, LINUX_REBOOT_CMD_HALT,
                      LINUX_REBOOT_CMD_POWER_OFF)


def sys_reboot(c: Call) -> int:
    """reboot(2) (kernel/reboot.c): CAP_SYS_BOOT (EPERM), the magic numbers
    (EINVAL), then the command. The instance is the machine: a restart,
    halt or power-off ends it (every process in it is killed, the caller
    too; the host is never rebooted), CAD_ON/CAD_OFF set its Ctrl-Alt-Del
    flag; any other command (kexec, suspend: nothing of the kind is
    loaded or possible) is EINVAL."""
    if not c.task.creds.capable(caps.CAP_SYS_BOOT):
        raise OSError(errno.EPERM, "CAP_SYS_BOOT needed")
    if c.uint(0) != LINUX_REBOOT_MAGIC1 or c.uint(1) not in LINUX_REBOOT_MAGIC2S:
        raise OSError(errno.EINVAL, "bad magic")
    cmd = c.uint(2)
    if cmd in (LINUX_REBOOT_CMD_CAD_ON, LINUX_REBOOT_CMD_CAD_OFF):
        sysctls_of(c.inst).set("kernel/ctrl-alt-del", int(cmd == LINUX_REBOOT_CMD_CAD_ON))
        return 0
    if cmd not in _ENDS_THE_INSTANCE:
        raise OSError(errno.EINVAL, "not a reboot command")
    c.inst.end()
    return 0
