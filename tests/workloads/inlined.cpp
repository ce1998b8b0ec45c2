// Test workload for inlined-frame naming: an optimized C++ program whose hot loop lives in an
// always-inline template member function inside a namespace, inlined into a noinline caller.
// Usage: inlined SECONDS
#include <chrono>
#include <cstdlib>

namespace shapes {

template <typename T>
struct Accumulator {
    T state = 1;
    __attribute__((always_inline)) inline T step(T x) {
        for (int i = 0; i < 64; i++) {
            state = state * 6364136223846793005ULL + x + i;
            __asm__ volatile("" : "+r"(state));
        }
        return state;
    }
};

__attribute__((noinline)) unsigned long compute(unsigned long n) {
    Accumulator<unsigned long> acc;
    unsigned long sum = 0;
    for (unsigned long i = 0; i < n; i++) {
        sum += acc.step(i);  // CALL_SITE
    }
    return sum;
}

}  // namespace shapes

static volatile unsigned long sink;

int main(int argc, char **argv) {
    double seconds = argc > 1 ? std::atof(argv[1]) : 10;
    auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < end) {
        sink = shapes::compute(100000);
    }
    return 0;
}
