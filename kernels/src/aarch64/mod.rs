//! aarch64 SIMD kernels (NEON; `sdot` where `dotprod` is detected). Every
//! public function here is safe: it checks the CPU's level and panics
//! without it. Tested under qemu-user (`scripts/test-aarch64.sh`) with
//! `-cpu cortex-a72` (no dotprod) and the default `max`.

pub mod gemm;
pub mod neon;
