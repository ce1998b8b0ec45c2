// The unwinder's hard cases, each in a process of its own, built without frame pointers (see
// tests/tests/unwind.rs). Usage: cases MODE SECONDS [LIBRARY]
//   qsort   main → sort_loop → glibc's qsort → compare_slow (a callback through glibc)
//   signal  main → signal_loop, interrupted by SIGPROF → on_signal → signal_work: the handler's
//           stacks cross the kernel's signal frame (__restore_rt)
//   thread  a thread: start_thread → thread_body → thread_work; its stacks end at clone3
//   dlopen  after 1 s, dlopen(LIBRARY) and main → dl_caller → dl_work (in the library)
//   chain   main → chain_outer → chain_inner (for the static, non-PIE and -z lazy builds)
//   deep    main → recurse × DEPTH (default 2000) → deep_work: 2000 is deeper than any walker goes
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

volatile unsigned long sink;

// Burns CPU with the stack in use and rbp as a general register (no frame pointers).
__attribute__((noinline)) static unsigned long burn(unsigned long seed, int rounds) {
    volatile unsigned long buf[8];
    unsigned long acc = seed;
    for (int r = 0; r < rounds; r++) {
        for (int i = 0; i < 8; i++) {
            buf[i] = acc * 2654435761u + i;
            acc ^= buf[i] >> 3;
        }
    }
    return acc;
}

// --- qsort: the comparator runs under glibc's sort, itself without frame pointers.
__attribute__((noinline)) int compare_slow(const void *a, const void *b) {
    unsigned long x = *(const unsigned long *)a, y = *(const unsigned long *)b;
    sink = burn(x ^ y, 40);
    return (x > y) - (x < y);
}

__attribute__((noinline)) void sort_loop(double end) {
    enum { N = 512 };
    static unsigned long items[N];
    while (now() < end) {
        for (int i = 0; i < N; i++) items[i] = (unsigned long)rand();
        qsort(items, N, sizeof items[0], compare_slow);
    }
}

// --- signal: the handler does the work, so most samples are inside it.
__attribute__((noinline)) void signal_work(void) {
    double until = now() + 0.01;
    while (now() < until) sink = burn(sink, 50);
}

__attribute__((noinline)) void on_signal(int sig) {
    (void)sig;
    signal_work();
}

__attribute__((noinline)) void signal_loop(double end) {
    while (now() < end) sink = burn(sink, 100);
}

// --- thread: the work runs in a second thread while main sleeps in join.
__attribute__((noinline)) void thread_work(double end) {
    while (now() < end) sink = burn(sink, 1000);
}

__attribute__((noinline)) void *thread_body(void *arg) {
    thread_work(*(double *)arg);
    return NULL;
}

// --- dlopen: the library's function, called through a pointer from our own code.
__attribute__((noinline)) void dl_caller(void (*work)(double), double end) {
    work(end);
    sink++;
}

// --- chain: the plain chain, for the link variants.
__attribute__((noinline)) void chain_inner(double end) {
    while (now() < end) sink = burn(sink, 1000);
}

__attribute__((noinline)) void chain_outer(double end) {
    chain_inner(end);
    sink++;
}

// --- deep: a recursion as deep as asked (by default far deeper than a sample holds).
__attribute__((noinline)) void deep_work(double end) {
    while (now() < end) sink = burn(sink, 1000);
}

__attribute__((noinline)) void recurse(int depth, double end) {
    if (depth == 0)
        deep_work(end);
    else
        recurse(depth - 1, end);
    sink++;  // not a tail call: every level stays on the stack
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: cases qsort|signal|thread|dlopen|chain|deep SECONDS [LIBRARY|DEPTH]\n");
        return 2;
    }
    const char *mode = argv[1];
    double end = now() + atof(argv[2]);
    if (!strcmp(mode, "qsort")) {
        sort_loop(end);
    } else if (!strcmp(mode, "signal")) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigaction(SIGPROF, &sa, NULL);
        // Every 2 ms of CPU: the handler's 10 ms of work keeps most samples inside it.
        struct itimerval it = {{0, 2000}, {0, 2000}};
        setitimer(ITIMER_PROF, &it, NULL);
        signal_loop(end);
    } else if (!strcmp(mode, "thread")) {
        pthread_t t;
        if (pthread_create(&t, NULL, thread_body, &end) != 0) return 1;
        pthread_join(t, NULL);
    } else if (!strcmp(mode, "dlopen")) {
        if (argc < 4) return 2;
        // Loaded after the profiler has seen the process: the library's tables come later.
        sleep(1);
        void *lib = dlopen(argv[3], RTLD_NOW);
        if (!lib) {
            fprintf(stderr, "dlopen: %s\n", dlerror());
            return 1;
        }
        void (*work)(double) = (void (*)(double))dlsym(lib, "dl_work");
        if (!work) return 1;
        dl_caller(work, end);
    } else if (!strcmp(mode, "chain")) {
        chain_outer(end);
    } else if (!strcmp(mode, "deep")) {
        recurse(argc > 3 ? atoi(argv[3]) : 2000, end);
    } else {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    return 0;
}
