// One library of the dlopen/dlclose ring (tests/tests/hostile.rs): built once per LIB_ID, each
// with a function of its own name, `lib_fn_<LIB_ID>`. The libraries are the same size, so each
// lands where the previous one was unloaded.
#include <time.h>

#ifndef LIB_ID
#define LIB_ID 0
#endif
#define NAME2(a, b) a##b
#define NAME(a, b) NAME2(a, b)

static volatile unsigned long ring_sink;

static double ring_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

// Burns CPU until `end` (the entry point the ring calls through dlsym("lib_fn")).
__attribute__((noinline)) void NAME(lib_fn_, LIB_ID)(double end) {
    unsigned long x = LIB_ID;
    while (ring_now() < end) {
        for (int i = 0; i < 10000; i++) x = x * 6364136223846793005ULL + i;
        ring_sink = x;
    }
}

void lib_fn(double end) { NAME(lib_fn_, LIB_ID)(end); }
