/* The floor of a trapped stat() in lxsub's design, in C: what the kernel's
 * mechanisms cost with no Python at all.
 *
 *   floor_stat ROOT N [bare]
 *   floor_stat --loop N          (only the N stat calls: floor_stat.py's child)
 *
 * A child installs a seccomp filter that sends newfstatat (glibc's stat) to
 * a listener (SECCOMP_FILTER_FLAG_NEW_LISTENER, the listener with
 * SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP as lxsub's), then calls
 * stat("/etc/passwd") N times. The parent serves each call with the host
 * system calls lxsub's provider makes for it (platform/engine.py,
 * kernel/syscalls/stat.py, kernel/vfs/path.py _fast_walk):
 *   poll, SECCOMP_IOCTL_NOTIF_RECV, pread of the path from /proc/<pid>/mem,
 *   openat2(ROOT, path, O_PATH, RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS), fstat,
 *   close, process_vm_writev of the struct stat, SECCOMP_IOCTL_NOTIF_SEND.
 * With "bare" it answers 0 at once (poll, RECV, SEND only): the seccomp
 * round trip alone. Prints microseconds per call.
 * (lxsub keeps Linux owners in its own store; that lookup is a dict hit in
 * memory and is left out here.)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/openat2.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef SECCOMP_IOCTL_NOTIF_SET_FLAGS
#define SECCOMP_IOCTL_NOTIF_SET_FLAGS SECCOMP_IOW(4, __u64)
#endif
#ifndef SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
#define SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP 1
#endif

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int stat_loop(long n) {
    struct stat st;
    for (long i = 0; i < n; i++)
        if (stat("/etc/passwd", &st) != 0) return 1;
    return 0;
}

static int child(int report, long n) {
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_newfstatat, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {sizeof f / sizeof f[0], f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) return 2;
    int lfd = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
    if (lfd < 0) { perror("seccomp"); return 2; }
    if (write(report, &lfd, sizeof lfd) != sizeof lfd) return 2;
    char go;
    if (read(report, &go, 1) != 1) return 2;
    return stat_loop(n);
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "--loop")) return stat_loop(atol(argv[2]));
    if (argc < 3) { fprintf(stderr, "usage: floor_stat ROOT N [bare]\n"); return 64; }
    long n = atol(argv[2]);
    int bare = argc > 3 && !strcmp(argv[3], "bare");
    int root = open(argv[1], O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (root < 0) { perror(argv[1]); return 66; }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) return 70;
    pid_t pid = fork();
    if (pid == 0) { close(sv[0]); _exit(child(sv[1], n)); }
    close(sv[1]);
    int cfd;
    if (read(sv[0], &cfd, sizeof cfd) != sizeof cfd) return 70;
    int pidfd = syscall(SYS_pidfd_open, pid, 0);
    int lfd = syscall(SYS_pidfd_getfd, pidfd, cfd, 0);
    if (lfd < 0) { perror("pidfd_getfd"); return 70; }
    ioctl(lfd, SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP);
    char mempath[64];
    snprintf(mempath, sizeof mempath, "/proc/%d/mem", pid);
    int mem = open(mempath, O_RDONLY | O_CLOEXEC);
    struct seccomp_notif req;
    struct seccomp_notif_resp resp;
    struct open_how how = {.flags = O_PATH | O_CLOEXEC, .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS};
    struct pollfd pfd = {lfd, POLLIN, 0};
    char path[256];
    double t0 = now();
    if (write(sv[0], "g", 1) != 1) return 70;
    for (long i = 0; i < n; i++) {
        if (poll(&pfd, 1, -1) != 1) return 70;
        memset(&req, 0, sizeof req);
        if (ioctl(lfd, SECCOMP_IOCTL_NOTIF_RECV, &req)) { perror("recv"); return 70; }
        memset(&resp, 0, sizeof resp);
        resp.id = req.id;
        if (!bare) {
            ssize_t got = pread(mem, path, 255, req.data.args[1]);
            if (got <= 0) return 70;
            path[got] = 0;
            const char *rel = path[0] == '/' ? path + 1 : path;
            int fd = syscall(SYS_openat2, root, rel, &how, sizeof how);
            struct stat st;
            if (fd < 0 || fstat(fd, &st)) { resp.error = -errno; }
            else {
                struct iovec local = {&st, sizeof st}, remote = {(void *)req.data.args[2], sizeof st};
                if (process_vm_writev(req.pid, &local, 1, &remote, 1, 0) != sizeof st) resp.error = -EFAULT;
            }
            if (fd >= 0) close(fd);
        }
        if (ioctl(lfd, SECCOMP_IOCTL_NOTIF_SEND, &resp)) { perror("send"); return 70; }
    }
    int status;
    waitpid(pid, &status, 0);
    double t = now() - t0;
    if (!WIFEXITED(status) || WEXITSTATUS(status)) { fprintf(stderr, "child failed\n"); return 70; }
    printf("%.2f\n", t / n * 1e6);
    return 0;
}
