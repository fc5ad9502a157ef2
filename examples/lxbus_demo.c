/* lxbus_demo — the Linux side of the LxBus example (see examples/lxbus_host.py).
 *
 *   lxbus_demo client NAME   connect to the host's server NAME; receive a
 *                            message carrying a descriptor (a pipe's write
 *                            end), write a line into it, answer "done"
 *   lxbus_demo server NAME   register NAME, print "ready", wait for the
 *                            host; echo its message back, send it a pipe's
 *                            read end with a line in the pipe, wait for "bye"
 *   lxbus_demo connect NAME  connect and report the errno (ENOENT when no
 *                            server has NAME)
 *
 * Build (static, so that it does not need the host's libc inside the instance):
 *   gcc -static -O2 -Wall -o lxbus_demo examples/lxbus_demo.c
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lxbus.h"

static void die(const char *what)
{
    fprintf(stderr, "lxbus_demo: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* One message and at most one descriptor. Returns the length (0: closed). */
static ssize_t recv_msg(int port, char *buf, size_t len, int *fd)
{
    char control[CMSG_SPACE(sizeof(int))];
    struct iovec iov = { buf, len - 1 };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
                          .msg_control = control, .msg_controllen = sizeof control };
    ssize_t n = recvmsg(port, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0)
        die("recvmsg");
    buf[n] = 0;
    *fd = -1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
            memcpy(fd, CMSG_DATA(c), sizeof(int));
    return n;
}

static void send_msg(int port, const char *text, int fd)
{
    char control[CMSG_SPACE(sizeof(int))];
    struct iovec iov = { (void *)text, strlen(text) };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
    if (fd >= 0) {
        memset(control, 0, sizeof control);
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    if (sendmsg(port, &msg, 0) < 0)
        die("sendmsg");
}

static int open_bus(void)
{
    int bus = open(LXBUS_DEVICE, O_RDWR | O_CLOEXEC);
    if (bus < 0)
        die("open " LXBUS_DEVICE);
    return bus;
}

static void set_name(struct lxbus_name *req, const char *name)
{
    memset(req, 0, sizeof *req);
    if (strlen(name) >= sizeof req->name) {
        fprintf(stderr, "lxbus_demo: name too long\n");
        exit(2);
    }
    strcpy(req->name, name);
    req->flags = LXBUS_CLOEXEC;
}

static int client(const char *name)
{
    struct lxbus_name req;
    char buf[4096];
    int fd;
    set_name(&req, name);
    int port = ioctl(open_bus(), LXBUS_IOC_CONNECT, &req);
    if (port < 0)
        die("LXBUS_IOC_CONNECT");
    if (recv_msg(port, buf, sizeof buf, &fd) == 0) {
        fprintf(stderr, "lxbus_demo: the host closed the port\n");
        return 1;
    }
    if (fd < 0) {
        fprintf(stderr, "lxbus_demo: the message carried no descriptor\n");
        return 1;
    }
    printf("linux got: %s\n", buf);
    dprintf(fd, "written by Linux pid %d into the host's pipe: %s\n", (int)getpid(), buf);
    close(fd);
    send_msg(port, "done", -1);
    return 0;
}

static int server(const char *name)
{
    struct lxbus_name req;
    char buf[4096], reply[4200];
    int fd, pipefd[2];
    uint32_t flags = LXBUS_CLOEXEC;
    set_name(&req, name);
    int srv = ioctl(open_bus(), LXBUS_IOC_REGISTER_SERVER, &req);
    if (srv < 0)
        die("LXBUS_IOC_REGISTER_SERVER");
    printf("ready\n");
    fflush(stdout);
    int port = ioctl(srv, LXBUS_IOC_WAIT_FOR_CONNECTION, &flags);
    if (port < 0)
        die("LXBUS_IOC_WAIT_FOR_CONNECTION");
    close(srv);                                   /* unregisters the name */
    if (recv_msg(port, buf, sizeof buf, &fd) == 0)
        return 1;
    if (fd >= 0)
        close(fd);
    snprintf(reply, sizeof reply, "echo: %s", buf);
    send_msg(port, reply, -1);
    if (pipe(pipefd) < 0)
        die("pipe");
    dprintf(pipefd[1], "a line from Linux through a pipe it made\n");
    close(pipefd[1]);
    send_msg(port, "here is a pipe", pipefd[0]);
    close(pipefd[0]);
    while (recv_msg(port, buf, sizeof buf, &fd) > 0) {
        if (fd >= 0)
            close(fd);
        if (strcmp(buf, "bye") == 0) {
            printf("linux server: bye\n");
            return 0;
        }
    }
    return 1;
}

static int try_connect(const char *name)
{
    struct lxbus_name req;
    set_name(&req, name);
    int port = ioctl(open_bus(), LXBUS_IOC_CONNECT, &req);
    if (port >= 0) {
        printf("connected\n");
        return 0;
    }
    printf("errno %d %s\n", errno, errno == ENOENT ? "ENOENT" : strerror(errno));
    return 3;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "client") == 0)
        return client(argv[2]);
    if (argc == 3 && strcmp(argv[1], "server") == 0)
        return server(argv[2]);
    if (argc == 3 && strcmp(argv[1], "connect") == 0)
        return try_connect(argv[2]);
    fprintf(stderr, "usage: lxbus_demo client|server|connect NAME\n");
    return 2;
}
