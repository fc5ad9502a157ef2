"""<linux/kcmp.h>: what kcmp(2) compares."""

KCMP_FILE = 0
