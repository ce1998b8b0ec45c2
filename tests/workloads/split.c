// Test workload with a known CPU split: hot_a, hot_b and hot_c do 6:3:1 of the work.
// Each round's size is drawn at random (0.5-1.5 units, fixed seed so ITERATIONS is a fixed
// amount of work): with rounds of one length the sampling period can lock onto the round
// (7 rounds per 5 samples gave 57/29/14% instead of 60/30/10 once).
// Built by the tests with clang -fno-omit-frame-pointer -mno-omit-leaf-frame-pointer
// -fno-optimize-sibling-calls -mllvm -enable-shrink-wrap=false so frame-pointer stacks are complete.
// Usage: split SECONDS [ITERATIONS]  (with ITERATIONS: exactly that much work, then exit)
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#define UNIT 200000ULL

static volatile uint64_t sink;

// The same loop in each function: the split of CPU time follows the iteration counts.
#define HOT_LOOP(n)                                  \
    uint64_t x = 1;                                  \
    for (uint64_t i = 0; i < (n); i++) {             \
        x = x * 6364136223846793005ULL + i;          \
        __asm__ volatile("" : "+r"(x));              \
    }                                                \
    sink = x;

__attribute__((noinline)) void hot_a(uint64_t n) { HOT_LOOP(n) }
__attribute__((noinline)) void hot_b(uint64_t n) { HOT_LOOP(n) }
__attribute__((noinline)) void hot_c(uint64_t n) { HOT_LOOP(n) }

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 10;
    long iterations = argc > 2 ? atol(argv[2]) : -1;
    double end = now() + seconds;
    uint64_t rng = 0x9e3779b97f4a7c15ULL;
    for (long i = 0; iterations < 0 ? now() < end : i < iterations; i++) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        uint64_t unit = UNIT / 2 + rng % UNIT;
        hot_a(6 * unit);
        hot_b(3 * unit);
        hot_c(1 * unit);
    }
    return 0;
}
