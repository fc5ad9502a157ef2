/* sysfuzz SEED SECONDS [CALLS_PER_BATCH]: random system calls with random
 * arguments, in batches: each batch is a forked child (alarm 2 s) making
 * CALLS_PER_BATCH calls, so that a call that blocks, crashes or exits ends
 * only its batch.  Arguments are drawn from small numbers, -1, random
 * 64-bit values, NULL, addresses no program can map, the last page of a
 * mapping, and a valid buffer holding a path.  Calls that would end or
 * multiply the fuzzer itself (fork and friends, exec, signals to others)
 * are not made.  Prints one summary line: batches, calls made at most (a batch may end early), crashed batches.
 * Part of lxsub's tools/fuzz (see syscalls.py). */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint64_t state;
static uint64_t next(void) {            /* xorshift64* */
    state ^= state >> 12; state ^= state << 25; state ^= state >> 27;
    return state * 2685821657736338717ULL;
}

static const long skipped[] = {
    SYS_fork, SYS_vfork, SYS_clone, SYS_clone3, SYS_execve, SYS_execveat,
    SYS_kill, SYS_tkill, SYS_tgkill, SYS_rt_sigqueueinfo, SYS_rt_tgsigqueueinfo,
    SYS_pidfd_send_signal, SYS_rt_sigreturn, SYS_vhangup, SYS_seccomp,
};

static int is_skipped(long nr) {
    for (size_t i = 0; i < sizeof skipped / sizeof *skipped; i++)
        if (skipped[i] == nr) return 1;
    return 0;
}

static char *buf, *edge;

static long arg(void) {
    switch (next() % 12) {
    case 0: return 0;
    case 1: return -1;
    case 2: return (long)(next() % 8);
    case 3: return (long)(next() % 4096);
    case 4: return (long)next();
    case 5: return (long)(uintptr_t)buf;                  /* a valid buffer with a path */
    case 6: return (long)(uintptr_t)(edge + 4096 - 1 - next() % 8);   /* page end */
    case 7: return (long)0xffffffffffff0000ULL;           /* kernel address */
    case 8: return (long)0x0000700000000000ULL;           /* unmapped user address */
    case 9: return (long)(next() % 3) - 100;              /* AT_FDCWD and kin */
    case 10: return (long)(1UL << (next() % 64));
    default: return (long)(next() % 1024);
    }
}

static void batch(int calls) {
    alarm(2);
    for (int i = 0; i < calls; i++) {
        long nr = (long)(next() % 460);
        if (is_skipped(nr)) continue;
        syscall(nr, arg(), arg(), arg(), arg(), arg(), arg());
    }
}

#define PARALLEL 4           /* batches running at once */
#define BATCH_LIMIT_NS (3LL * 1000 * 1000 * 1000)

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: sysfuzz SEED SECONDS [CALLS]\n"); return 64; }
    uint64_t seed = strtoull(argv[1], NULL, 0);
    long long end = now_ns() + (long long)(atof(argv[2]) * 1e9);
    int calls = argc > 3 ? atoi(argv[3]) : 200;
    buf = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    edge = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    munmap(edge + 4096, 4096);                 /* edge's page is followed by a hole */
    memset(edge, 'a', 4096);
    pid_t running[PARALLEL] = {0};
    long long started[PARALLEL] = {0};
    long batches = 0, crashed = 0;
    struct timespec tick = {0, 5 * 1000 * 1000};
    for (;;) {
        int busy = 0;
        for (int k = 0; k < PARALLEL; k++) {
            if (!running[k]) continue;
            int status;
            pid_t got = waitpid(running[k], &status, WNOHANG);
            if (got == 0 && now_ns() - started[k] > BATCH_LIMIT_NS) {
                /* It blocked, or ignored or cancelled its alarm. */
                kill(running[k], SIGKILL);
                got = waitpid(running[k], &status, 0);
            }
            if (got == running[k] || (got < 0 && errno == ECHILD)) {
                kill(-running[k], SIGKILL);    /* whatever the batch left running */
                if (got > 0 && WIFSIGNALED(status)) crashed++;
                running[k] = 0;
                batches++;
            } else {
                busy++;
            }
        }
        if (now_ns() >= end) {
            if (!busy) break;
            nanosleep(&tick, NULL);
            continue;
        }
        for (int k = 0; k < PARALLEL; k++) {
            if (running[k]) continue;
            state = seed + (uint64_t)(batches + k + 1) * 0x9E3779B97F4A7C15ULL;
            strcpy(buf, (next() & 1) ? "/tmp/fuzz-file" : ".");
            pid_t pid = fork();
            if (pid < 0) break;
            if (pid == 0) {
                setpgid(0, 0);
                batch(calls);
                _exit(0);
            }
            running[k] = pid;
            started[k] = now_ns();
        }
        nanosleep(&tick, NULL);
    }
    printf("batches %ld calls_up_to %ld crashed %ld\n", batches, batches * calls, crashed);
    return 0;
}
