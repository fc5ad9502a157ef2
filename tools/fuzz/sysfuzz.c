/* sysfuzz SEED SECONDS [CALLS_PER_BATCH]: random system calls with random
 * arguments, in batches: each batch is a forked child (alarm 2 s) making
 * CALLS_PER_BATCH calls, so that a call that blocks, crashes or exits ends
 * only its batch.  Arguments are drawn from small numbers, -1, random
 * 64-bit values, NULL, addresses no program can map, the last page of a
 * mapping, and a valid buffer holding a path.  Calls that would end or
 * multiply the fuzzer itself (fork and friends, exec, signals to others)
 * are not made.  Prints one summary line: batches, calls, crashed batches.
 * Part of lxsub's tools/fuzz (see syscalls.py). */
#define _GNU_SOURCE
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

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: sysfuzz SEED SECONDS [CALLS]\n"); return 64; }
    uint64_t seed = strtoull(argv[1], NULL, 0);
    double seconds = atof(argv[2]);
    int calls = argc > 3 ? atoi(argv[3]) : 200;
    buf = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    edge = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    munmap(edge + 4096, 4096);                 /* edge's page is followed by a hole */
    memset(edge, 'a', 4096);
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long batches = 0, crashed = 0;
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9 >= seconds) break;
        state = seed + (uint64_t)batches * 0x9E3779B97F4A7C15ULL + 1;
        strcpy(buf, (next() & 1) ? "/tmp/fuzz-file" : ".");
        pid_t pid = fork();
        if (pid < 0) { sleep(1); continue; }
        if (pid == 0) {
            setpgid(0, 0);
            batch(calls);
            _exit(0);
        }
        /* The batch may block, ignore or cancel its alarm: 3 s, then SIGKILL. */
        int status = 0;
        struct timespec tick = {0, 10 * 1000 * 1000};
        for (int waited = 0; waitpid(pid, &status, WNOHANG) == 0; waited++) {
            if (waited == 300) {
                kill(pid, SIGKILL);
                waitpid(pid, &status, 0);
                break;
            }
            nanosleep(&tick, NULL);
        }
        kill(-pid, SIGKILL);                   /* whatever the batch left running */
        batches++;
        if (WIFSIGNALED(status)) crashed++;
    }
    printf("batches %ld calls %ld crashed %ld\n", batches, batches * calls, crashed);
    return 0;
}
