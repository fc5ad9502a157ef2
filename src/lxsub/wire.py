"""What crosses from `lx` to a distro's session, below every other floor:
which client variables a command sees (PASSED_ENV, INTEROP_ENV) and how
host bytes travel as protocol strings (wire_str, wire_bytes).

manager/protocol.py publishes them in its schema; kernel/session.py takes
them from here, so the kernel does not import the manager.
"""

from __future__ import annotations

import os

# What of the client's environment a command sees (the rest is a login environment).
PASSED_ENV = ("TERM", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "COLORTERM", "TZ")
# What else the client sends for interop: its PATH (appended, translated, to
# the Linux PATH with [interop] appendHostPath) and LXENV with the variables
# it names (see kernel/interop.py).
INTEROP_ENV = ("PATH", "LXENV")


# -- bytes on the wire -----------------------------------------------------------------
# In Linux argv, the environment and paths are bytes, not text.  JSON carries
# text, so a host byte string travels as its UTF-8 decoding with
# surrogateescape: every byte that is not part of valid UTF-8 becomes a lone
# surrogate U+DC80..U+DCFF (escaped as \udcXX by json), and wire_bytes gives
# the very bytes back.  Strings a peer sends that cannot be turned back into
# bytes (other lone surrogates) are refused by protocol.check_type.

def wire_str(value: str | bytes) -> str:
    """Host bytes (or a str Python decoded from them: sys.argv, os.environ)
    as a protocol string."""
    raw = value if isinstance(value, bytes) else os.fsencode(value)
    return raw.decode("utf-8", "surrogateescape")


def wire_bytes(value: str) -> bytes:
    """The bytes a protocol string stands for (see wire_str)."""
    return value.encode("utf-8", "surrogateescape")
