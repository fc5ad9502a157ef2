"""include/uapi/linux/auxvec.h: keys of the auxiliary vector."""

AT_NULL = 0
AT_SECURE = 23
AT_EXECFN = 31
