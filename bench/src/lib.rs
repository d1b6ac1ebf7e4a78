//! metac benchmarks
