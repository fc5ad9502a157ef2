"""What the host's /proc says about a pico process's thread: its signals."""

from __future__ import annotations

import signal

_MASKS = ("SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")


_KEYS = tuple((name, b"\n" + name.encode() + b":") for name in _MASKS)


def signal_masks(tid: int) -> dict[str, int]:
    """tid's signal masks from /proc/<tid>/status, as bit masks (bit s-1
    for signal s); all zero if the thread is gone. (Asked for each signal
    sent: found by search in the raw text, not parsed line by line.)"""
    out = dict.fromkeys(_MASKS, 0)
    try:
        with open(f"/proc/{tid}/status", "rb", buffering=0) as f:
            text = f.read(8192)
    except OSError:
        return out
    for name, key in _KEYS:
        at = text.find(key)
        if at >= 0:
            start = at + len(key)
            end = text.find(b"\n", start)
            out[name] = int(text[start:end if end >= 0 else len(text)], 16)
    return out


def handling_masks(tid: int, sig: int) -> dict[str, int]:
    """SigBlk, SigIgn and SigCgt of tid, as signal_masks gives them, for
    asking about signal `sig`. For a standard signal they come from
    /proc/<tid>/stat, which the kernel makes several times faster than
    status (it shows those masks for signals 1-31 only: fs/proc/array.c
    do_task_stat masks them with 0x7fffffff)."""
    if not 0 < sig < 32:
        return signal_masks(tid)
    out = {"SigBlk": 0, "SigIgn": 0, "SigCgt": 0}
    try:
        with open(f"/proc/{tid}/stat", "rb", buffering=0) as f:
            text = f.read(4096)
    except OSError:
        return out
    # After the command name, which may hold spaces and parentheses: field
    # 3 (state) on; blocked, sigignore, sigcatch are fields 32-34.
    fields = text[text.rfind(b")") + 2:].split()
    if len(fields) >= 32:
        out["SigBlk"], out["SigIgn"], out["SigCgt"] = (int(v) for v in fields[29:32])
    return out


# Signals whose default action is to do nothing: uncaught, they never
# interrupt a call in Linux (a tracer still gets them queued).
_QUIET_BY_DEFAULT = sum(1 << (s - 1) for s in (signal.SIGCHLD, signal.SIGCONT, signal.SIGURG,
                                               signal.SIGWINCH))


def signal_pending(tid: int) -> bool:
    """Whether a signal waits for tid that would interrupt a blocking call
    of tid's in Linux: not blocked, not ignored, and caught or with a
    default action that does something (end, stop)."""
    m = signal_masks(tid)
    pending = (m["SigPnd"] | m["ShdPnd"]) & ~(m["SigBlk"] | m["SigIgn"])
    return bool(pending & (m["SigCgt"] | ~_QUIET_BY_DEFAULT))
