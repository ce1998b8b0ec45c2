// A dlopen/dlclose ring (tests/tests/hostile.rs): loads each library given in turn, runs its
// `lib_fn` for SLICE_MS, unloads it, and goes round until SECONDS pass. The libraries land at
// one address, so a profiler that keeps the first one's mappings names them all after it.
// Usage: ring SECONDS SLICE_MS LIB...
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: ring SECONDS SLICE_MS LIB...\n");
        return 2;
    }
    double end = now() + atof(argv[1]);
    double slice = atof(argv[2]) / 1000;
    for (int i = 3; now() < end; i = i + 1 < argc ? i + 1 : 3) {
        void *lib = dlopen(argv[i], RTLD_NOW | RTLD_LOCAL);
        if (!lib) {
            fprintf(stderr, "dlopen %s: %s\n", argv[i], dlerror());
            return 1;
        }
        void (*fn)(double) = (void (*)(double))dlsym(lib, "lib_fn");
        if (!fn) return 1;
        fn(now() + slice);
        dlclose(lib);
    }
    return 0;
}
