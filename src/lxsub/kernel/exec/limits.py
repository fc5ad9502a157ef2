"""Linux's limits on a new program's command line and environment (E2BIG).

fs/exec.c: each string, its NUL included, is at most MAX_ARG_STRLEN (32
pages); all strings plus one pointer per string must fit in a quarter of
the stack limit, at most 3/4 of _STK_LIM and at least ARG_MAX (32 pages)
(bprm_stack_limits). With the usual 8 MiB stack that is 2 MiB.
Imported by the `lx` client too, so kept free of the kernel's modules.
"""

from __future__ import annotations

import errno
import resource

from lxsub.abi.limits import MAX_ARG_STRLEN, PAGE_SIZE as PAGE

ARG_MAX = 32 * PAGE                  # the floor of the total
_STK_LIM = 8 * 1024 * 1024
POINTER = 8


def total_limit() -> int:
    """Bytes argv and envp may take, strings and pointers (bprm_stack_limits)."""
    stack = resource.getrlimit(resource.RLIMIT_STACK)[0]
    limit = _STK_LIM // 4 * 3
    if stack != resource.RLIM_INFINITY:
        limit = min(limit, stack // 4)
    return max(limit, ARG_MAX)


def check(argv: list[bytes], envp: list[bytes]) -> None:
    """OSError(E2BIG) when Linux's execve would refuse this command line;
    the message says which limit."""
    used = (max(len(argv), 1) + len(envp)) * POINTER
    for s in (*argv, *envp):
        if len(s) + 1 > MAX_ARG_STRLEN:
            raise OSError(errno.E2BIG, f"one argument or variable is {len(s) + 1} bytes, more "
                          f"than Linux's {MAX_ARG_STRLEN} (MAX_ARG_STRLEN)")
        used += len(s) + 1
    limit = total_limit()
    if used > limit:
        raise OSError(errno.E2BIG, f"the arguments and environment take {used} bytes, more "
                      f"than Linux's {limit} (a quarter of the stack limit, ARG_MAX)")
