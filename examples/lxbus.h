/* lxbus.h — LxBus for Linux programs running under lxsub (see docs/LXBUS.md).
 *
 * Open /dev/lxbus, then:
 *   int srv  = ioctl(bus, LXBUS_IOC_REGISTER_SERVER, &(struct lxbus_name){"demo"});
 *   int port = ioctl(srv, LXBUS_IOC_WAIT_FOR_CONNECTION, &(uint32_t){0});
 *   int port = ioctl(bus, LXBUS_IOC_CONNECT, &(struct lxbus_name){"svc"});
 * Each returns a new descriptor or -1 with errno set. A message port is a
 * connected SOCK_SEQPACKET socket: read/write keep message boundaries;
 * sendmsg/recvmsg with SCM_RIGHTS pass descriptors. Closing a server port
 * unregisters its name.
 *
 * errno: ENOTTY (not /dev/lxbus, or not a server port), EINVAL (bad name,
 * flags or reserved field), EADDRINUSE (name registered by a live server),
 * ENOENT (connect: no server of that name), EACCES (the server belongs to
 * another host user), EFAULT, EMFILE, EINTR (a signal interrupted a wait).
 */
#ifndef LXBUS_H
#define LXBUS_H

#include <stdint.h>
#include <sys/ioctl.h>

#define LXBUS_DEVICE    "/dev/lxbus"
#define LXBUS_NAME_MAX  64          /* including the terminating NUL */
#define LXBUS_CLOEXEC   1u          /* flags: the new descriptor is close-on-exec */

struct lxbus_name {
    char     name[LXBUS_NAME_MAX];  /* NUL-terminated, 1 to 63 bytes */
    uint32_t flags;                 /* 0 or LXBUS_CLOEXEC */
    uint32_t reserved;              /* must be 0 */
};

#define LXBUS_IOC_MAGIC 'L'
/* on a /dev/lxbus descriptor: returns a server port */
#define LXBUS_IOC_REGISTER_SERVER     _IOW(LXBUS_IOC_MAGIC, 0xB1, struct lxbus_name)  /* 0x40484cb1 */
/* on a /dev/lxbus descriptor: returns a message port connected to the server NAME */
#define LXBUS_IOC_CONNECT             _IOW(LXBUS_IOC_MAGIC, 0xB2, struct lxbus_name)  /* 0x40484cb2 */
/* on a server port, with a uint32_t flags: waits, returns a message port */
#define LXBUS_IOC_WAIT_FOR_CONNECTION _IOW(LXBUS_IOC_MAGIC, 0xB3, uint32_t)           /* 0x40044cb3 */

#endif
