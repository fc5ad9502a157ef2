/* A program the provider injects calls into (tests/integration/test_inject.py).
 * `probe` makes getppid with known values in every register the syscall
 * ABI keeps and a pattern in the red zone, and counts what changed. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

long probe(void);
long probe_ppid;

asm(".globl probe\n"
    "probe:\n"
    "  push %rbx; push %rbp; push %r12; push %r13; push %r14; push %r15\n"
    "  mov $16, %ecx\n"
    "1: mov %rcx, %rax; neg %rax; mov %rcx, (%rsp,%rax,8); dec %ecx; jnz 1b\n"
    "  mov $0x1001, %rdi; mov $0x1002, %rsi; mov $0x1003, %rdx; mov $0x1004, %r10\n"
    "  mov $0x1005, %r8; mov $0x1006, %r9; mov $0x1007, %rbx; mov $0x1008, %rbp\n"
    "  mov $0x1009, %r12; mov $0x100a, %r13; mov $0x100b, %r14; mov $0x100c, %r15\n"
    "  mov $110, %eax\n"                      /* getppid */
    "  syscall\n"
    "  mov %rax, %r11; xor %ecx, %ecx\n"
    "  cmp $0x1001, %rdi; je 2f; inc %ecx\n2:\n"
    "  cmp $0x1002, %rsi; je 2f; inc %ecx\n2:\n"
    "  cmp $0x1003, %rdx; je 2f; inc %ecx\n2:\n"
    "  cmp $0x1004, %r10; je 2f; inc %ecx\n2:\n"
    "  cmp $0x1005, %r8; je 2f; inc %ecx\n2:\n"
    "  cmp $0x1006, %r9; je 2f; inc %ecx\n2:\n"
    "  cmp $0x1007, %rbx; je 2f; inc %ecx\n2:\n"
    "  cmp $0x1008, %rbp; je 2f; inc %ecx\n2:\n"
    "  cmp $0x1009, %r12; je 2f; inc %ecx\n2:\n"
    "  cmp $0x100a, %r13; je 2f; inc %ecx\n2:\n"
    "  cmp $0x100b, %r14; je 2f; inc %ecx\n2:\n"
    "  cmp $0x100c, %r15; je 2f; inc %ecx\n2:\n"
    "  mov $16, %edi\n"
    "3: mov %rdi, %rax; neg %rax; cmp %rdi, (%rsp,%rax,8); je 4f; inc %ecx\n"
    "4: dec %edi; jnz 3b\n"
    "  mov %r11, probe_ppid(%rip)\n"
    "  mov %rcx, %rax\n"
    "  pop %r15; pop %r14; pop %r13; pop %r12; pop %rbp; pop %rbx\n"
    "  ret\n");

static volatile sig_atomic_t got_sig, got_code, got_pid;

static void handler(int sig, siginfo_t *si, void *uc) {
    (void)uc;
    got_sig = sig;
    got_code = si->si_code;
    got_pid = si->si_pid;
}

int main(void) {
    struct sigaction sa = {0};
    sa.sa_sigaction = handler;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);
    long changed = probe();
    printf("changed %ld ppid %ld\n", changed, probe_ppid);
    errno = 0;
    long uid = syscall(SYS_getuid);
    printf("getuid %ld errno %d\n", uid, errno);
    printf("signal %d code %d pid %d\n", (int)got_sig, (int)got_code, (int)got_pid);
    return 0;
}
