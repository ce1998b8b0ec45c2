// The library `cases dlopen` loads after start (tests/tests/unwind.rs): built without frame
// pointers, so only its own unwind table walks out of it.
#include <time.h>

static volatile unsigned long lib_sink;

static double lib_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noinline)) static unsigned long lib_burn(unsigned long seed) {
    volatile unsigned long buf[8];
    unsigned long acc = seed;
    for (int r = 0; r < 1000; r++) {
        for (int i = 0; i < 8; i++) {
            buf[i] = acc * 2654435761u + i;
            acc ^= buf[i] >> 3;
        }
    }
    return acc;
}

__attribute__((noinline)) void dl_work(double end) {
    while (lib_now() < end) lib_sink = lib_burn(lib_sink);
}
