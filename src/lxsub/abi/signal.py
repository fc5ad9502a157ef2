"""include/uapi/asm-generic/signal.h and siginfo.h: x86_64 values."""

NSIG = 65                        # _NSIG + 1: valid numbers are 0 (a probe) .. 64
SIGCONT = 18

# si_code of a sent signal
SI_USER = 0
SI_QUEUE = -1
SI_MESGQ = -3
SI_TKILL = -6
