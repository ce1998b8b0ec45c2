// Calls through chains of shared libraries in random orders, so that samples have deep stacks
// over many mappings and few of them are alike. Usage: chain SECONDS LIB.so...
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

// The chain is an array of `step` pointers (C cannot name a function type that takes itself).
typedef void (*step_fn)(void **chain, int i, int n, unsigned seed);

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: chain SECONDS LIB.so...\n");
        return 2;
    }
    int libs = argc - 2;
    step_fn *steps = calloc(libs, sizeof(step_fn));
    void **chain = calloc(libs, sizeof(void *));
    for (int i = 0; i < libs; i++) {
        void *handle = dlopen(argv[i + 2], RTLD_NOW | RTLD_LOCAL);
        if (!handle || !(steps[i] = (step_fn)dlsym(handle, "step"))) {
            fprintf(stderr, "cannot load %s: %s\n", argv[i + 2], dlerror());
            return 1;
        }
    }
    double end = now() + atof(argv[1]);
    unsigned seed = 1;
    while (now() < end) {
        seed = seed * 1103515245u + 12345u;
        int n = libs / 2 + (int)(seed >> 16) % (libs / 2 + 1);
        for (int i = 0; i < n; i++) {
            seed = seed * 1103515245u + 12345u;
            chain[i] = (void *)steps[(seed >> 16) % libs];
        }
        ((step_fn)chain[0])(chain, 0, n, seed);
    }
    return 0;
}
