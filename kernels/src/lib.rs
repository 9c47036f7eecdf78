//! Kernels for DenseShift networks: packed zero-free sign/power-of-two weight
//! codes, integer requantization, and the scalar reference kernels that every
//! faster kernel is tested against.
//!
//! This crate knows nothing about graphs or files. It is `no_std` and never
//! allocates: callers pass every buffer.
//!
//! Numeric contract (see `DESIGN.md`):
//! * a `b`-bit code holds a sign bit and `b-1` exponent bits, `w = s * 2^p`;
//!   no code means zero ([`codes`]);
//! * int8 mode accumulates `s * (x << p)` exactly in `i32` and requantizes
//!   once per output with an integer multiplier, shift and offset
//!   ([`requant`]); every kernel on every ISA equals [`scalar`] bit for bit;
//! * float mode applies a weight by adding `p` to the exponent field and
//!   XOR-ing the sign ([`fexp`]), accumulating in `f32`.
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(missing_docs)]

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
#[cfg(target_arch = "arm")]
pub mod arm;
pub mod codes;
pub mod depthwise;
pub(crate) mod depthwise_fexp;
pub mod dispatch;
pub mod elementwise;
pub mod fexp;
pub mod gemm;
pub mod geom;
pub mod lists;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) mod panel;
pub mod pointwise;
pub mod pool;
pub mod requant;
pub mod scalar;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

pub use codes::{Bits, PackedRows};
pub use geom::Conv2dGeom;
pub use requant::Requant;
