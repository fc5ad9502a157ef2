"""<sys/socket.h>, <linux/netlink.h>: socket families, options, control
messages and send flags lxsub reads or rewrites."""

AF_UNIX = 1
AF_INET = 2
AF_INET6 = 10
AF_NETLINK = 16
NETLINK_AUDIT = 9

SOCK_STREAM = 1

SOL_SOCKET = 1
SO_TYPE = 3
SO_PASSCRED = 16
SO_PEERCRED = 17
SO_DOMAIN = 39
SO_PEERGROUPS = 59
SO_PASSPIDFD = 76          # Linux 6.5
SO_PEERPIDFD = 77          # Linux 6.5

SCM_RIGHTS = 1
SCM_CREDENTIALS = 2
SCM_MAX_FD = 253           # include/net/scm.h: descriptors one SCM_RIGHTS message carries

MSG_PEEK = 2
MSG_DONTWAIT = 0x40
MSG_NOSIGNAL = 0x4000
