"""What the host's /proc says about a pico process's thread: its signals."""

from __future__ import annotations

import signal

_MASKS = ("SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")


def signal_masks(tid: int) -> dict[str, int]:
    """tid's signal masks from /proc/<tid>/status, as bit masks (bit s-1
    for signal s); all zero if the thread is gone."""
    out = dict.fromkeys(_MASKS, 0)
    try:
        with open(f"/proc/{tid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in out:
                    out[key] = int(value, 16)
    except OSError:
        pass
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
