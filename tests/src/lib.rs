//! Integration tests of the profiler on the real kernel; see `tests/`.
