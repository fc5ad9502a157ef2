"""Errors that reach the user, each with its own exit status.

`lx` passes the Linux command's own status through (128+N when it was
killed by signal N), so its own failures use the sysexits range, which
Linux commands rarely return, plus the shell's 126/127 for commands that
cannot be executed or found.
"""

from __future__ import annotations

EXIT_USAGE = 64          # bad command line
EXIT_DATAERR = 65        # corrupt input (tarball, config file)
EXIT_NOINPUT = 66        # a named input file or directory does not exist
EXIT_NOUSER = 67         # -u names a user the distro does not have
EXIT_UNAVAILABLE = 69    # unknown or unusable distro
EXIT_SOFTWARE = 70       # a bug in lxsub
EXIT_OSERR = 71          # the host cannot run pico processes (seccomp/ptrace)
EXIT_OSFILE = 72         # a host facility lx needs is missing (FUSE for --mount)
EXIT_CANTCREAT = 73      # target exists or cannot be written
EXIT_IOERR = 74          # an input/output error no check foresaw (disk full...)
EXIT_TEMPFAIL = 75       # busy: another change to the distro is in progress
EXIT_NOPERM = 77         # a directory lx must trust is not private (runtime.py)
EXIT_CANNOT_EXEC = 126   # found but not executable (ENOEXEC, EACCES)
EXIT_NOT_FOUND = 127     # command not found in the distro


class LxError(Exception):
    """A failure explained to the user in one line, with a distinct exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_SOFTWARE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message
