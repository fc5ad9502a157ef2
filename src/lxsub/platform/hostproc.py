"""What the host's /proc says about a pico process's thread: its signals."""

from __future__ import annotations

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


def signal_pending(tid: int) -> bool:
    """Whether a signal waits for tid that it neither blocks nor ignores:
    one that would interrupt a blocking call of tid's."""
    m = signal_masks(tid)
    return bool((m["SigPnd"] | m["ShdPnd"]) & ~(m["SigBlk"] | m["SigIgn"]))
