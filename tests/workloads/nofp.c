// A call chain main → outer → middle → inner built with `-O2 -fomit-frame-pointer` (see
// tests/tests/unwind.rs): only unwind tables can walk it. The functions use the stack and rbp as
// a general register, so a frame-pointer walk goes astray. Usage: nofp SECONDS
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

volatile unsigned long sink;

__attribute__((noinline)) unsigned long inner(unsigned long seed) {
    volatile unsigned long buf[16];
    unsigned long acc = seed;
    for (int r = 0; r < 20000; r++) {
        for (int i = 0; i < 16; i++) {
            buf[i] = acc * 2654435761u + i;
            acc ^= buf[i] >> 3;
        }
    }
    return acc;
}

__attribute__((noinline)) unsigned long middle(unsigned long seed) {
    volatile unsigned long pad[8];
    pad[0] = seed;
    unsigned long r = inner(pad[0] + 1);
    pad[1] = r;
    return pad[1] + 1;
}

__attribute__((noinline)) unsigned long outer(unsigned long seed) {
    volatile unsigned long pad[32];
    pad[3] = seed;
    unsigned long r = middle(pad[3] * 3);
    pad[4] = r;
    return pad[4] ^ seed;
}

int main(int argc, char **argv) {
    double end = now() + (argc > 1 ? atof(argv[1]) : 10);
    unsigned long seed = 1;
    while (now() < end) {
        seed = outer(seed);
        sink = seed;
    }
    return 0;
}
