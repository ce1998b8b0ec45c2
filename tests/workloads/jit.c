// Test workload for JIT naming: copies a machine-code loop into anonymous executable memory,
// announces it in /tmp/perf-PID.map (the convention of V8, the JVM's agents, .NET, LuaJIT) and
// runs it. Usage: jit SECONDS
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

// mov rcx, 20000000; loop: dec rcx; jnz loop; ret
static const unsigned char CODE[] = {0x48, 0xc7, 0xc1, 0x00, 0x2d, 0x31, 0x01,
                                     0x48, 0xff, 0xc9, 0x75, 0xfb, 0xc3};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 10;
    void *mem = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        return 1;
    memcpy(mem, CODE, sizeof CODE);
    char path[64];
    snprintf(path, sizeof path, "/tmp/perf-%d.map", getpid());
    FILE *map = fopen(path, "w");
    if (!map)
        return 1;
    fprintf(map, "%lx %zx jit_hot_loop\n", (unsigned long)(uintptr_t)mem, sizeof CODE);
    fclose(map);
    void (*fn)(void) = (void (*)(void))mem;
    double end = now() + seconds;
    while (now() < end)
        fn();
    unlink(path);
    return 0;
}
