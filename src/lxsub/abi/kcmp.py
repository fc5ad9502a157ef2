"""<linux/kcmp.h>: what kcmp(2) compares."""

KCMP_FILE = 0
KCMP_VM = 1
KCMP_FILES = 2
KCMP_FS = 3
KCMP_SIGHAND = 4
KCMP_IO = 5
KCMP_SYSVSEM = 6
KCMP_EPOLL_TFD = 7
KCMP_TYPES = 8
