/* One send + recvmsg pair on a datagram socketpair, timed: microseconds
 * per pair (best of 5 rounds of N). With "passcred" the receiver turns
 * SO_PASSCRED on first (under lxsub: its recvmsg then stops in the
 * provider, docs/SECURITY.md); "plain" never does.
 *
 *   gcc -O2 -o scm_pair scm_pair.c && ./scm_pair plain|passcred [N]
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    int sv[2], on = 1, n = argc > 2 ? atoi(argv[2]) : 2000;
    if (argc < 2 || socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) < 0)
        return 2;
    if (strcmp(argv[1], "passcred") == 0 && setsockopt(sv[1], SOL_SOCKET, SO_PASSCRED, &on, sizeof on) < 0)
        return 2;
    char data[64], ctl[64];
    struct iovec iov = {data, sizeof data};
    struct msghdr m = {0};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    double best = 1e9;
    for (int round = 0; round < 6; round++) {
        double t = now();
        for (int i = 0; i < n; i++) {
            m.msg_control = ctl;
            m.msg_controllen = sizeof ctl;
            if (send(sv[0], "x", 1, 0) != 1 || recvmsg(sv[1], &m, 0) != 1)
                return 1;
        }
        t = (now() - t) / n * 1e6;
        if (round > 0 && t < best)      /* the first round warms up */
            best = t;
    }
    printf("%s %.1f us per send+recvmsg\n", argv[1], best);
    return 0;
}
