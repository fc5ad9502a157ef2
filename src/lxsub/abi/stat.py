"""include/uapi/linux/stat.h: statx(2) masks and the struct's size."""

STATX_BASIC_STATS = 0x7FF
STATX_BTIME = 0x800
STATX_MNT_ID = 0x1000
STATX__RESERVED = 0x80000000
STATX_SIZE = 256                 # sizeof(struct statx)
