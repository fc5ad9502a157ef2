"""LxBus: the socket-like bus between host processes and a distro's instance.

Host side: `register_server`, `connect`, `Server`, `Port` (see ports.py).
Linux side: the `/dev/lxbus` device (kernel/fs/lxbusdev.py,
kernel/syscalls/ioctl.py). The design and the ioctls: docs/LXBUS.md.
"""

from lxsub.lxbus.ports import (LxBusError, NoSuchServer, Port, Server, connect,
                               register_server)

__all__ = ["LxBusError", "NoSuchServer", "Port", "Server", "connect", "register_server"]
