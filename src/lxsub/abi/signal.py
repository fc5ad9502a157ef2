"""include/uapi/asm-generic/signal.h and siginfo.h: x86_64 values."""

NSIG = 65                        # _NSIG + 1: valid numbers are 0 (a probe) .. 64
SIGKILL, SIGSTOP = 9, 19
SIGCHLD, SIGCONT, SIGURG, SIGWINCH = 17, 18, 23, 28
# sig_kernel_ignore(): the signals whose default action is to do nothing.
IGNORED_BY_DEFAULT = frozenset((SIGCONT, SIGCHLD, SIGURG, SIGWINCH))

# si_code of a sent signal
SI_USER = 0
SI_QUEUE = -1
SI_MESGQ = -3
SI_TKILL = -6
# SIGCHLD's si_code
CLD_EXITED, CLD_KILLED, CLD_DUMPED, CLD_TRAPPED, CLD_STOPPED, CLD_CONTINUED = 1, 2, 3, 4, 5, 6
