//! Benchmarks live in `benches/`: `cargo bench -p shiftnn-benches`.
