// Test workload for module identity: main calls WORK, which calls LEAF, a busy loop. The tests
// build it more than once with -D to get files that share a build id (forged with
// -Wl,--build-id=0x...) but not their code or names:
//   -DWORK=NAME -DLEAF=NAME  the two function names (default twin_work, twin_leaf);
//   -DVARIANT_B              another loop body and an extra function in front: other code at
//                            other offsets, not just other names.
// Built by the tests with clang -fno-omit-frame-pointer -mno-omit-leaf-frame-pointer
// -fno-optimize-sibling-calls -mllvm -enable-shrink-wrap=false so frame-pointer stacks are complete.
// Usage: identity SECONDS [wait]  (with "wait": block until a byte arrives on stdin, then work,
// so the test decides when the profiler first samples this process)
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifndef WORK
#define WORK twin_work
#endif
#ifndef LEAF
#define LEAF twin_leaf
#endif

#define UNIT 1000000ULL

static volatile uint64_t sink;

#ifdef VARIANT_B
// Never hot: only there to move the hot functions to other offsets.
__attribute__((noinline)) uint64_t variant_padding(uint64_t n) {
    uint64_t x = n;
    for (int i = 0; i < 64; i++) {
        x = (x << 7) ^ (x >> 3) ^ (uint64_t)i;
        __asm__ volatile("" : "+r"(x));
    }
    return x;
}

__attribute__((noinline)) uint64_t LEAF(uint64_t n) {
    uint64_t x = 88172645463325252ULL;
    for (uint64_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        __asm__ volatile("" : "+r"(x));
    }
    return x;
}
#else
__attribute__((noinline)) uint64_t LEAF(uint64_t n) {
    uint64_t x = 1;
    for (uint64_t i = 0; i < n; i++) {
        x = x * 6364136223846793005ULL + i;
        __asm__ volatile("" : "+r"(x));
    }
    return x;
}
#endif

__attribute__((noinline)) void WORK(uint64_t n) {
    sink = LEAF(n);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 10;
    if (argc > 2 && strcmp(argv[2], "wait") == 0) {
        char c;
        if (read(0, &c, 1) != 1) {
            return 1;
        }
    }
#ifdef VARIANT_B
    sink = variant_padding((uint64_t)argc);
#endif
    double end = now() + seconds;
    while (now() < end) {
        WORK(UNIT);
    }
    return 0;
}
