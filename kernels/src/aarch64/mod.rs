//! aarch64 SIMD kernels (NEON; `sdot` where `dotprod` is detected; f16
//! arithmetic where FEAT_FP16 is, when asked for). Every
//! public function here is safe: it checks the CPU's level and panics
//! without it. Tested under qemu-user (`scripts/test-aarch64.sh`) with
//! `-cpu cortex-a72` (no dotprod, no FEAT_FP16) and the default `max`
//! (both).

pub mod fp16;
pub mod gemm;
pub mod neon;
