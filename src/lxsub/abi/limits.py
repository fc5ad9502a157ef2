"""Sizes and ids Linux fixes: include/uapi/linux/limits.h, binfmts.h,
linux/highuid.h, and the x86_64 page."""

PAGE_SIZE = 4096
PATH_MAX = 4096
NAME_MAX = 255
MAXSYMLINKS = 40                 # include/linux/namei.h: links followed in one lookup
MAX_ARG_STRLEN = 32 * PAGE_SIZE  # one argv/envp string (include/uapi/linux/binfmts.h)
OVERFLOW_ID = 65534              # DEFAULT_OVERFLOWUID/GID: /proc/sys/kernel/overflowuid
UIO_MAXIOV = 1024          # linux/uio.h: iovecs one call takes (sysconf IOV_MAX)
