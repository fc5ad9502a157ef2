"""include/uapi/linux/seccomp.h: seccomp(2) operations, modes and flags."""

SECCOMP_MODE_STRICT = 1
SECCOMP_MODE_FILTER = 2
SECCOMP_SET_MODE_STRICT = 0
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_GET_NOTIF_SIZES = 3
SECCOMP_FILTER_FLAG_TSYNC = 1 << 0
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV = 1 << 5
BPF_MAXINSNS = 4096        # linux/bpf_common.h: the longest filter
SYS_SECCOMP = 1                  # si_code of the SIGSYS a filter's SECCOMP_RET_TRAP sends
