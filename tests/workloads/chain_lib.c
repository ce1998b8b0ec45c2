// One link of a call chain that runs through many shared libraries: deep stacks over many
// mappings, the case where Pyroscope's converted profile grows fastest. Built once per library
// (clang -shared -fPIC, frame pointers, no sibling calls) and loaded by chain.c with dlopen.
#include <stdint.h>

// Each library is built with its own LIB_ID, so that no two are the same file content.
#ifndef LIB_ID
#define LIB_ID 0
#endif

// The chain is an array of `step` pointers (C cannot name a function type that takes itself).
typedef void (*step_fn)(void **chain, int i, int n, unsigned seed);

static volatile uint64_t sink;

__attribute__((noinline)) void step(void **chain, int i, int n, unsigned seed) {
    if (i + 1 < n) {
        ((step_fn)chain[i + 1])(chain, i + 1, n, seed);
    } else {
        uint64_t x = seed + LIB_ID;
        for (unsigned k = 0; k < 20000 + (seed % 64) * 500; k++) {
            x = x * 6364136223846793005ULL + k;
            __asm__ volatile("" : "+r"(x));
        }
        sink = x;
    }
    __asm__ volatile("");
}
