"""include/linux/statfs.h (ST_* of statfs(2) f_flags, as sys/statvfs.h)."""

ST_RDONLY = 0x0001
ST_NOSUID = 0x0002
ST_NODEV = 0x0004
ST_NOEXEC = 0x0008
ST_SYNCHRONOUS = 0x0010
ST_VALID = 0x0020                # f_flags is filled in (kernel-only name)
ST_MANDLOCK = 0x0040
ST_NOATIME = 0x0400
ST_NODIRATIME = 0x0800
ST_RELATIME = 0x1000
