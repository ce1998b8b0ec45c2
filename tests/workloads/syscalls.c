// Test workload that spends its time in the kernel: do_writes issues write(2) on /dev/null with
// an inline syscall instruction, so the user frame under the kernel frames is do_writes itself.
// Usage: syscalls SECONDS
#include <fcntl.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>

static char buf[4096];

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noinline)) void do_writes(int fd, int n) {
    for (int i = 0; i < n; i++) {
        long ret;
        __asm__ volatile("syscall"
                         : "=a"(ret)
                         : "0"((long)SYS_write), "D"((long)fd), "S"(buf), "d"(sizeof buf)
                         : "rcx", "r11", "memory");
    }
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 10;
    int fd = open("/dev/null", O_WRONLY);
    if (fd < 0)
        return 1;
    double end = now() + seconds;
    while (now() < end)
        do_writes(fd, 1000);
    return 0;
}
