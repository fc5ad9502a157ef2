"""include/uapi/asm-generic/fcntl.h, linux/fcntl.h, linux/openat2.h,
linux/stat.h (UTIME_*), linux/fs.h (RENAME_*): x86_64 values."""

# open(2) flags
O_RDONLY = 0
O_WRONLY = 1
O_RDWR = 2
O_ACCMODE = 3
O_CREAT = 0o100
O_EXCL = 0o200
O_TRUNC = 0o1000
O_NONBLOCK = 0o4000
O_DIRECTORY = 0o200000
O_NOFOLLOW = 0o400000
O_NOATIME = 0o1000000
O_CLOEXEC = 0o2000000
O_PATH = 0o10000000
O_TMPFILE = 0o20000000 | O_DIRECTORY

# The *at() calls' dirfd and flags
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_EACCESS = 0x200               # faccessat(2); shares its bit with AT_REMOVEDIR
AT_REMOVEDIR = 0x200
AT_SYMLINK_FOLLOW = 0x400
AT_NO_AUTOMOUNT = 0x800
AT_EMPTY_PATH = 0x1000
AT_STATX_SYNC_TYPE = 0x6000

# name_to_handle_at(2): struct file_handle's limit and its flags
MAX_HANDLE_SZ = 128
AT_HANDLE_FID = AT_REMOVEDIR     # a handle to identify, not to open (Linux 6.5)
AT_HANDLE_CONNECTABLE = 0x002    # a handle whose file is reached by a path (Linux 6.13)

# openat2(2) struct open_how.resolve
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
RESOLVE_CACHED = 0x20

# utimensat(2) tv_nsec
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2

# renameat2(2) flags
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4

# fcntl(2) commands
F_GETLK = 5
F_SETOWN = 8
F_GETOWN = 9
F_SETOWN_EX = 15
F_GETOWN_EX = 16
F_SETPIPE_SZ, F_GETPIPE_SZ = 1031, 1032     # F_LINUX_SPECIFIC_BASE + 7, + 8
F_CREATED_QUERY = 1028                      # F_LINUX_SPECIFIC_BASE + 4 (Linux 6.12)
F_OFD_GETLK = 36
F_OWNER_TID, F_OWNER_PID, F_OWNER_PGRP = 0, 1, 2
F_UNLCK = 2
