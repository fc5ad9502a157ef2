"""include/uapi/linux/stat.h: statx(2) masks and the struct's size."""

STATX_BASIC_STATS = 0x7FF
STATX_BTIME = 0x800
STATX_MNT_ID = 0x1000
STATX_MNT_ID_UNIQUE = 0x4000        # Linux 6.8: stx_mnt_id is the 64-bit unique id
STATX__RESERVED = 0x80000000
SIZEOF_STATX = 256                # sizeof(struct statx) (STATX_SIZE is the mask bit for stx_size)
