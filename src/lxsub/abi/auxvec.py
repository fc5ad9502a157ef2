"""include/uapi/linux/auxvec.h: keys of the auxiliary vector."""

AT_NULL = 0
AT_PHDR = 3
AT_PHENT = 4
AT_PHNUM = 5
AT_BASE = 7
AT_ENTRY = 9
AT_SECURE = 23
AT_EXECFN = 31
AT_SYSINFO_EHDR = 33
