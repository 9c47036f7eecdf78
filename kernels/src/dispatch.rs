//! Runtime kernel dispatch: CPU feature detection (once, cached in atomics,
//! no locks), the one registry of every kernel, the per-layer choice, and
//! entry points with exactly the signatures of the [`crate::scalar`]
//! reference kernels.
//!
//! * [`Isa`]: the instruction-set level. Detected once per process; the
//!   `std` feature reads `SHIFTNN_ISA=scalar|avx2|avxvnni|avx512|neon|neondot` to
//!   cap it (tests, benchmarks, a multiplication-free build). Cortex-M
//!   has no runtime detection: [`Isa::Dsp`] is decided at compile time
//!   (see `build.rs`).
//! * [`Family`]: `scalar`, `shift`, `dot`, `lut`, `fexp`; `SHIFTNN_KERNEL`
//!   (or [`set_family`]) forces one. A forced family that has no kernel for
//!   a layer falls back to the next multiplication-free one (`lut` ->
//!   `shift`; `shift`/`dot`/`lut` in float mode -> `fexp`), then `scalar`;
//!   depthwise layers under a forced `lut` take `shift`'s depthwise kernel.
//! * [`kernels`]: every kernel, listed once in one registry; `tests/simd_equality.rs` runs
//!   each entry against `scalar`.
//! * [`kernel_name`]: which kernel a layer will run, for `inspect`/`bench`.
//! * [`set_fp16`] (or `SHIFTNN_FP16=1`): allow f16 arithmetic in float
//!   layers where the CPU has it ([`has_fp16`]; [`Op::ShiftF16`]).
//!
//! Int8 kernels are bit-identical to `scalar`; float (`fexp`) kernels agree
//! within the recursive-summation bound stated in `tests/simd_equality.rs`.
//! On 32-bit Arm with the DSP extension the `arm::dsp` kernels are
//! registered; on other targets every entry point runs `scalar`.

use core::sync::atomic::{AtomicU8, Ordering};

use crate::gemm::DecodedRows;
use crate::lists::ExpLists;
use crate::scalar::{self, Affine};
use crate::{Conv2dGeom, PackedRows, Requant};

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) mod tile;

/// Instruction-set level. Levels of one architecture are ordered: a CPU
/// that runs a level runs every lower one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Isa {
    /// Portable Rust, every target.
    Scalar = 1,
    /// x86-64 with AVX2, FMA and BMI2 (Haswell, Zen and later).
    Avx2 = 2,
    /// [`Isa::Avx2`] plus the int8 dot products on 256-bit vectors
    /// (`vpdpbusd`, `vpdpwssd`): AVX-VNNI (VEX; Alder Lake and later
    /// client cores, Sierra Forest, Zen 5) or AVX-512 VL + VNNI (EVEX;
    /// Cascade Lake, and every CPU of [`Isa::Avx512`]). The AVX2 `dot`
    /// kernels with the dot product instead of `vpmaddubsw` + `vpmaddwd`
    /// (`avxvnni/*`); each picks the encoding the CPU has, VEX first.
    AvxVnni = 3,
    /// x86-64 with AVX-512 F/BW/VL/VBMI/VNNI (Ice Lake, Sapphire Rapids,
    /// Zen4): the `crate::x86_64::avx512` kernels (`dot` by `vpdpbusd`,
    /// `shift` by `vpsllvw`, `fexp`), `lut` by `vpermi2w`
    /// (`crate::x86_64::lut`) and `vpdpwssd` pixel-lane kernels.
    Avx512 = 4,
    /// aarch64 Advanced SIMD (baseline on every aarch64 CPU).
    Neon = 5,
    /// aarch64 with the `dotprod` extension (`sdot`).
    NeonDot = 6,
    /// 32-bit Arm (Cortex-M4/M7/M33/M55) with the DSP extension (SIMD32:
    /// `SMLAD`); known at compile time (`cfg(shiftnn_dsp)`).
    Dsp = 7,
}

impl Isa {
    /// Every level, lowest first.
    pub const ALL: [Isa; 7] = [
        Isa::Scalar,
        Isa::Avx2,
        Isa::AvxVnni,
        Isa::Avx512,
        Isa::Neon,
        Isa::NeonDot,
        Isa::Dsp,
    ];

    /// Lower-case name as in `SHIFTNN_ISA` and kernel names.
    pub const fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::AvxVnni => "avxvnni",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
            Isa::NeonDot => "neondot",
            Isa::Dsp => "dsp",
        }
    }

    /// Parse a name (`scalar`, `avx2`, `avxvnni`, `avx512`, `neon`,
    /// `neondot`, `dsp`; also `avx-vnni` and `dotprod`).
    pub fn parse(s: &str) -> Option<Isa> {
        let s = s.trim();
        Isa::ALL
            .into_iter()
            .find(|i| i.name().eq_ignore_ascii_case(s))
            .or_else(|| s.eq_ignore_ascii_case("dotprod").then_some(Isa::NeonDot))
            .or_else(|| s.eq_ignore_ascii_case("avx-vnni").then_some(Isa::AvxVnni))
    }

    const fn from_u8(v: u8) -> Option<Isa> {
        match v {
            1 => Some(Isa::Scalar),
            2 => Some(Isa::Avx2),
            3 => Some(Isa::AvxVnni),
            4 => Some(Isa::Avx512),
            5 => Some(Isa::Neon),
            6 => Some(Isa::NeonDot),
            7 => Some(Isa::Dsp),
            _ => None,
        }
    }

    /// True if code for level `self` runs on a CPU of level `cpu`.
    pub const fn runs_on(self, cpu: Isa) -> bool {
        match self {
            Isa::Scalar => true,
            Isa::Avx2 | Isa::AvxVnni | Isa::Avx512 => {
                matches!(cpu, Isa::Avx2 | Isa::AvxVnni | Isa::Avx512) && self as u8 <= cpu as u8
            }
            Isa::Neon | Isa::NeonDot => {
                matches!(cpu, Isa::Neon | Isa::NeonDot) && self as u8 <= cpu as u8
            }
            Isa::Dsp => matches!(cpu, Isa::Dsp),
        }
    }

    /// True if this CPU has the level (whatever `SHIFTNN_ISA` says).
    /// Every SIMD kernel checks this before running.
    #[inline]
    pub fn available(self) -> bool {
        self.runs_on(detected())
    }
}

/// Kernel family (see `DESIGN.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Family {
    /// The reference kernels.
    Scalar = 1,
    /// Int8, variable shifts + sign + add; no multiply.
    Shift = 2,
    /// Int8, decode to int8 weights + the ISA's int8 dot product.
    Dot = 3,
    /// Int8, table lookup (T-MAC style); no multiply.
    Lut = 4,
    /// Float, exponent-field add + sign XOR; no multiply.
    Fexp = 5,
}

impl Family {
    /// Every family.
    pub const ALL: [Family; 5] = [
        Family::Scalar,
        Family::Shift,
        Family::Dot,
        Family::Lut,
        Family::Fexp,
    ];

    /// Lower-case name as in `SHIFTNN_KERNEL` and kernel names.
    pub const fn name(self) -> &'static str {
        match self {
            Family::Scalar => "scalar",
            Family::Shift => "shift",
            Family::Dot => "dot",
            Family::Lut => "lut",
            Family::Fexp => "fexp",
        }
    }

    /// Parse a family name.
    pub fn parse(s: &str) -> Option<Family> {
        let s = s.trim();
        Family::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s))
    }

    const fn from_u8(v: u8) -> Option<Family> {
        match v {
            1 => Some(Family::Scalar),
            2 => Some(Family::Shift),
            3 => Some(Family::Dot),
            4 => Some(Family::Lut),
            5 => Some(Family::Fexp),
            _ => None,
        }
    }

    /// True for the families that never multiply in their inner loops.
    pub const fn multiplication_free(self) -> bool {
        matches!(self, Family::Shift | Family::Lut | Family::Fexp)
    }
}

/// What a layer computes: the four conv/linear entry points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Int8 activations, shift-code weights ([`conv_shift_i8`]).
    ShiftI8,
    /// Int8 activations, int8 weights ([`conv_w8_i8`]).
    W8I8,
    /// Float activations, shift-code weights ([`conv_shift_f32`]).
    ShiftF32,
    /// [`Op::ShiftF32`] in f16 arithmetic inside (f32 in and out), within
    /// a looser bound: opt-in ([`set_fp16`]); [`conv_shift_f32`] runs it
    /// when asked to and the CPU has it ([`has_fp16`]).
    ShiftF16,
    /// Float activations, float weights ([`conv_f32`]).
    F32,
    /// Int8 activations, shift codes decoded at load
    /// ([`crate::gemm::DecodedRows`], [`conv_decoded_i8`]).
    DecodedI8,
    /// Int8 activations, shift codes regrouped by exponent at load
    /// ([`crate::lists::ExpLists`], [`conv_lists_i8`]).
    ListsI8,
}

/// The argument checks every conv kernel shares with the scalar ones: `n`
/// weight rows of `k` for channels `oc0 ..`, one epilogue per row, the
/// input and output lengths of `g`.
pub(crate) fn check_call(
    g: &Conv2dGeom,
    in_len: usize,
    k: usize,
    n: usize,
    oc0: usize,
    ep: usize,
    out: usize,
) {
    assert_eq!(k, g.k());
    assert!(oc0 + n <= g.c_out, "channel range out of bounds");
    assert_eq!(out, n * g.out_plane(), "output length");
    assert_eq!(ep, n);
    assert_eq!(in_len, g.in_len());
}

/// Int8 kernel signature (that of [`scalar::conv_shift_i8`]).
pub type I8Fn = fn(&Conv2dGeom, &[i8], &PackedRows, usize, &[Requant], &mut [i8]);
/// Float kernel signature (that of [`scalar::conv_shift_f32`]).
pub type F32Fn = fn(&Conv2dGeom, &[f32], &PackedRows, usize, &[Affine], &mut [f32]);
/// Int8-weight kernel signature (that of [`scalar::conv_w8_i8`]).
pub type W8Fn = fn(&Conv2dGeom, &[i8], &[i8], usize, &[Requant], &mut [i8]);
/// Float-weight kernel signature (that of [`scalar::conv_f32`]).
pub type WfFn = fn(&Conv2dGeom, &[f32], &[f32], usize, &[Affine], &mut [f32]);
/// Decoded-row kernel signature (that of [`crate::gemm::conv_decoded_i8`]).
pub type DecFn = fn(&Conv2dGeom, &[i8], &DecodedRows, usize, &[Requant], &mut [i8]);
/// Exponent-list kernel signature (that of [`crate::lists::conv_lists_i8`]).
pub type ListFn = fn(&Conv2dGeom, &[i8], &ExpLists, usize, &[Requant], &mut [i8]);

/// A kernel's function.
#[derive(Clone, Copy, Debug)]
pub enum KernelFn {
    /// [`Op::ShiftI8`].
    ShiftI8(I8Fn),
    /// [`Op::ShiftF32`].
    ShiftF32(F32Fn),
    /// [`Op::ShiftF16`].
    ShiftF16(F32Fn),
    /// [`Op::W8I8`].
    W8I8(W8Fn),
    /// [`Op::F32`].
    F32(WfFn),
    /// [`Op::DecodedI8`].
    DecodedI8(DecFn),
    /// [`Op::ListsI8`].
    ListsI8(ListFn),
}

impl KernelFn {
    /// The op this function computes.
    pub const fn op(&self) -> Op {
        match self {
            KernelFn::ShiftI8(_) => Op::ShiftI8,
            KernelFn::ShiftF32(_) => Op::ShiftF32,
            KernelFn::ShiftF16(_) => Op::ShiftF16,
            KernelFn::W8I8(_) => Op::W8I8,
            KernelFn::F32(_) => Op::F32,
            KernelFn::DecodedI8(_) => Op::DecodedI8,
            KernelFn::ListsI8(_) => Op::ListsI8,
        }
    }
}

/// One registered kernel. Its function is safe to call on any CPU: a SIMD
/// kernel panics if the CPU lacks its [`Isa`] (check
/// [`Isa::available`] first).
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    /// `isa/family`, e.g. `avx2/dot`, `scalar/shift-i8`.
    pub name: &'static str,
    /// Level the kernel needs.
    pub isa: Isa,
    /// Family.
    pub family: Family,
    /// Which layers the kernel is chosen for. Every [`Layers::All`] kernel
    /// is correct for any layer and `k >= 1` (tests run all).
    pub layers: Layers,
    /// The function.
    pub f: KernelFn,
}

impl Kernel {
    /// The op this kernel computes.
    pub const fn op(&self) -> Op {
        self.f.op()
    }

    /// True if this kernel runs at level `at` on this CPU: its level
    /// runs there, and an f16 kernel also needs FEAT_FP16 ([`has_fp16`]),
    /// which no level implies.
    pub fn runs_on(&self, at: Isa) -> bool {
        self.isa.runs_on(at) && (self.op() != Op::ShiftF16 || self.isa == Isa::Scalar || has_fp16())
    }

    /// True if this CPU runs the kernel (whatever `SHIFTNN_ISA` says).
    pub fn available(&self) -> bool {
        self.runs_on(detected())
    }

    /// The order in which layer `g`'s codes are decoded for this
    /// ([`Op::DecodedI8`]) kernel: tap-major where the x86 GEMM then reads
    /// its steps in place ([`crate::gemm::direct_applies`]), else the
    /// codes' own. Every other decoded-row kernel, the scalar reference
    /// included, takes code order (the reference takes either).
    pub fn decoded_order(&self, g: &Conv2dGeom) -> crate::gemm::Order {
        match crate::gemm::taps_order(g) {
            Some(o) if TAP_MAJOR.contains(&self.name) && crate::gemm::direct_applies(g) => o,
            _ => crate::gemm::Order::Codes,
        }
    }

    /// True when this decoded-row kernel also runs tap-major rows (on
    /// layers with a [`crate::gemm::taps_order`]).
    pub fn takes_tap_major(&self) -> bool {
        TAP_MAJOR.contains(&self.name) || self.isa == Isa::Scalar
    }
}

/// The decoded-row kernels that run tap-major rows.
const TAP_MAJOR: &[&str] = &["avx512/gemm-dot"];

/// The layers a kernel handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layers {
    /// Any conv or linear layer.
    All,
    /// Only depthwise layers ([`crate::depthwise::applies`]); listed before
    /// the general kernels so it wins on them.
    Depthwise,
    /// Only pointwise layers ([`crate::pointwise::applies`]); listed before
    /// the general kernels so it wins on them.
    Pointwise,
    /// Only dense convs of small `k` ([`crate::pointwise::small_k`]).
    SmallK,
    /// Only dense convs of very small `k` ([`crate::pointwise::tiny_k`]).
    TinyK,
    /// Convs with enough pixels and channels for the pixel-lane GEMM
    /// ([`crate::gemm::applies`]).
    Gemm,
    /// The layers of [`Layers::Gemm`] whose `k` fits the exponent-list
    /// GEMM ([`crate::lists::applies`]).
    GemmShift,
    /// The layers of [`Layers::Gemm`] whose `k` fits the AVX2 GEMM's stack
    /// panel (`x86_64::gemm_avx2::applies`).
    GemmI16,
}

impl Layers {
    /// True when a kernel of this kind computes layer `g`.
    pub const fn fits(self, g: &Conv2dGeom) -> bool {
        match self {
            Layers::All => true,
            Layers::Depthwise => crate::depthwise::applies(g),
            Layers::Pointwise => crate::pointwise::applies(g),
            Layers::SmallK => crate::pointwise::small_k(g),
            Layers::TinyK => crate::pointwise::tiny_k(g),
            Layers::Gemm => crate::gemm::applies(g),
            Layers::GemmShift => crate::lists::applies(g),
            #[cfg(target_arch = "x86_64")]
            Layers::GemmI16 => crate::x86_64::gemm_avx2::applies(g),
            #[cfg(not(target_arch = "x86_64"))]
            Layers::GemmI16 => false,
        }
    }

    /// Largest `k` a kernel of this kind takes on a layer of any shape
    /// (its stack buffers bound it), not only on those [`Layers::fits`]
    /// picks.
    pub const fn max_k(self) -> usize {
        match self {
            Layers::Gemm => crate::gemm::MAX_K,
            Layers::GemmShift => crate::lists::MAX_K,
            #[cfg(target_arch = "x86_64")]
            Layers::GemmI16 => crate::x86_64::gemm_avx2::MAX_K,
            #[cfg(not(target_arch = "x86_64"))]
            Layers::GemmI16 => 0,
            _ => usize::MAX,
        }
    }
}

/// Declare the registry: one line per kernel.
macro_rules! registry {
    ($name:ident: $( $kname:literal => $isa:ident, $fam:ident, $layers:ident, $kind:ident($f:path); )*) => {
        const $name: &[Kernel] = &[ $( Kernel {
            name: $kname,
            isa: Isa::$isa,
            family: Family::$fam,
            layers: Layers::$layers,
            f: KernelFn::$kind($f),
        }, )* ];
    };
}

// Listed best first: selection takes the first entry that fits. On x86 the
// AVX-512 `dot` comes before the AVX2 small-`k` kernel: it beats it on the
// k = 144-147 layers that `avx2/px-dot` takes on AVX2 (`pointwise::MAX_K_TINY`);
// the AVX-VNNI kernels follow the AVX-512 pattern.
#[cfg(target_arch = "x86_64")]
registry! { SIMD:
    "avx512/gemm-dot" => Avx512, Dot, Gemm, DecodedI8(crate::x86_64::gemm::conv_gemm_i8);
    "avx512/gemm-shift" => Avx512, Shift, GemmShift, ListsI8(crate::x86_64::gemm_shift::conv_gemm_shift_i8);
    "avxvnni/gemm-dot" => AvxVnni, Dot, Gemm, DecodedI8(crate::x86_64::gemm_vnni::conv_gemm_i8);
    "avx2/gemm-dot" => Avx2, Dot, GemmI16, DecodedI8(crate::x86_64::gemm_avx2::conv_gemm_i8);
    "avx512/dw-shift" => Avx512, Shift, Depthwise, ShiftI8(crate::x86_64::avx512::dw::conv_shift_i8);
    "avx2/dw-shift" => Avx2, Shift, Depthwise, ShiftI8(crate::x86_64::avx2::dw::conv_shift_i8);
    "avx512/dw-fexp" => Avx512, Fexp, Depthwise, ShiftF32(crate::x86_64::avx512::dw::conv_fexp_f32);
    "avx2/dw-fexp" => Avx2, Fexp, Depthwise, ShiftF32(crate::x86_64::avx2::dw::conv_fexp_f32);
    "avx512/pw-dot" => Avx512, Dot, Pointwise, ShiftI8(crate::x86_64::pointwise::conv_dot_i8_vnni);
    "avx512/px-dot" => Avx512, Dot, TinyK, ShiftI8(crate::x86_64::pointwise::conv_small_k_i8_vnni);
    "avxvnni/pw-dot" => AvxVnni, Dot, Pointwise, ShiftI8(crate::x86_64::pointwise::conv_dot_i8_avxvnni);
    "avx2/pw-dot" => Avx2, Dot, Pointwise, ShiftI8(crate::x86_64::pointwise::conv_dot_i8);
    "avx512/dot" => Avx512, Dot, All, ShiftI8(crate::x86_64::avx512::conv_dot_i8);
    "avxvnni/px-dot" => AvxVnni, Dot, SmallK, ShiftI8(crate::x86_64::pointwise::conv_small_k_i8_avxvnni);
    "avxvnni/dot" => AvxVnni, Dot, All, ShiftI8(crate::x86_64::avx2::conv_dot_i8_avxvnni);
    "avx2/px-dot" => Avx2, Dot, SmallK, ShiftI8(crate::x86_64::pointwise::conv_small_k_i8);
    "avx2/dot" => Avx2, Dot, All, ShiftI8(crate::x86_64::avx2::conv_dot_i8);
    "avx512/lut" => Avx512, Lut, All, ShiftI8(crate::x86_64::lut::conv_lut_i8);
    "avx2/lut" => Avx2, Lut, All, ShiftI8(crate::x86_64::avx2::conv_lut_i8);
    "avx512/shift" => Avx512, Shift, All, ShiftI8(crate::x86_64::avx512::conv_shift_i8);
    "avx2/shift" => Avx2, Shift, All, ShiftI8(crate::x86_64::avx2::conv_shift_i8);
    "avx512/gemm-fexp" => Avx512, Fexp, Gemm, ShiftF32(crate::x86_64::gemm_fexp::conv_gemm_fexp_f32);
    "avx512/fexp" => Avx512, Fexp, All, ShiftF32(crate::x86_64::avx512::conv_fexp_f32);
    "avx2/fexp" => Avx2, Fexp, All, ShiftF32(crate::x86_64::avx2::conv_fexp_f32);
    "avx512/w8" => Avx512, Dot, All, W8I8(crate::x86_64::avx512::conv_w8_i8);
    "avxvnni/w8" => AvxVnni, Dot, All, W8I8(crate::x86_64::avx2::conv_w8_i8_avxvnni);
    "avx2/w8" => Avx2, Dot, All, W8I8(crate::x86_64::avx2::conv_w8_i8);
}
#[cfg(target_arch = "aarch64")]
registry! { SIMD:
    "neondot/gemm-dot" => NeonDot, Dot, Gemm, DecodedI8(crate::aarch64::gemm::conv_gemm_i8);
    "neon/dw-shift" => Neon, Shift, Depthwise, ShiftI8(crate::aarch64::neon::dw::conv_shift_i8);
    "neon/dw-fexp" => Neon, Fexp, Depthwise, ShiftF32(crate::aarch64::neon::dw::conv_fexp_f32);
    "neondot/dot" => NeonDot, Dot, All, ShiftI8(crate::aarch64::neon::conv_sdot_i8);
    "neon/lut" => Neon, Lut, All, ShiftI8(crate::aarch64::neon::conv_lut_i8);
    "neon/shift" => Neon, Shift, All, ShiftI8(crate::aarch64::neon::conv_shift_i8);
    "neon/fexp" => Neon, Fexp, All, ShiftF32(crate::aarch64::neon::conv_fexp_f32);
    "neonfp16/fexp" => Neon, Fexp, All, ShiftF16(crate::aarch64::fp16::conv_fexp_f16);
    "neondot/w8" => NeonDot, Dot, All, W8I8(crate::aarch64::neon::conv_sdot_w8_i8);
    "neon/w8" => Neon, Dot, All, W8I8(crate::aarch64::neon::conv_w8_i8);
}
#[cfg(all(target_arch = "arm", shiftnn_dsp))]
registry! { SIMD:
    "dsp/dot" => Dsp, Dot, All, ShiftI8(crate::arm::dsp::conv_dot_i8);
    "dsp/shift" => Dsp, Shift, All, ShiftI8(crate::arm::dsp::conv_shift_i8);
    "dsp/w8" => Dsp, Dot, All, W8I8(crate::arm::dsp::conv_w8_i8);
}
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    all(target_arch = "arm", shiftnn_dsp)
)))]
registry! { SIMD: }

registry! { SCALAR:
    "scalar/shift-i8" => Scalar, Scalar, All, ShiftI8(scalar::conv_shift_i8);
    "scalar/shift-f32" => Scalar, Scalar, All, ShiftF32(scalar::conv_shift_f32);
    // The f32 reference is within every f16 bound; [`select_float`] never
    // picks it (it takes the f32 kernels instead).
    "scalar/shift-f16" => Scalar, Scalar, All, ShiftF16(scalar::conv_shift_f32);
    "scalar/w8-i8" => Scalar, Scalar, All, W8I8(scalar::conv_w8_i8);
    "scalar/f32" => Scalar, Scalar, All, F32(scalar::conv_f32);
    "scalar/decoded-i8" => Scalar, Scalar, All, DecodedI8(crate::gemm::conv_decoded_i8);
    "scalar/lists-i8" => Scalar, Scalar, All, ListsI8(crate::lists::conv_lists_i8);
}

/// Every kernel of this target, best first, the scalar references last.
pub fn kernels() -> impl Iterator<Item = &'static Kernel> {
    SIMD.iter().chain(SCALAR.iter())
}

// ---------------------------------------------------------------------------
// Detection, cached. 0 = not yet known.

static DETECTED: AtomicU8 = AtomicU8::new(0);
static CAP: AtomicU8 = AtomicU8::new(0);
static FAMILY: AtomicU8 = AtomicU8::new(0);
/// 1: f16 arithmetic allowed in float layers ([`set_fp16`]); 0: not.
static FP16: AtomicU8 = AtomicU8::new(0);
/// 0: environment not read yet; 1: read.
static ENV_READ: AtomicU8 = AtomicU8::new(0);
/// `CAP`/`FAMILY` value meaning "none".
const NONE: u8 = 0xff;

/// True if this CPU has AVX-VNNI, the VEX encoding of the 256-bit dot
/// products: the [`Isa::AvxVnni`] kernels use it, and the EVEX one
/// (AVX-512 VL + VNNI) otherwise. Cached by `std`'s detection; without
/// `std`, the compile-time target features.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn vnni_vex() -> bool {
    #[cfg(feature = "std")]
    {
        std::arch::is_x86_feature_detected!("avxvnni")
    }
    #[cfg(not(feature = "std"))]
    {
        cfg!(target_feature = "avxvnni")
    }
}

fn detect() -> Isa {
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    {
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("bmi2")
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx512vbmi")
                && std::arch::is_x86_feature_detected!("avx512vnni")
                && std::arch::is_x86_feature_detected!("popcnt")
            {
                return Isa::Avx512;
            }
            if vnni_vex()
                || (std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512vnni"))
            {
                return Isa::AvxVnni;
            }
            return Isa::Avx2;
        }
        Isa::Scalar
    }
    #[cfg(all(target_arch = "x86_64", not(feature = "std")))]
    {
        // Without std there is no runtime detection: trust the compile-time
        // target features only.
        if cfg!(all(
            target_feature = "avx2",
            target_feature = "fma",
            target_feature = "bmi2",
            target_feature = "avx512f",
            target_feature = "avx512bw",
            target_feature = "avx512vl",
            target_feature = "avx512vbmi",
            target_feature = "avx512vnni",
            target_feature = "popcnt"
        )) {
            Isa::Avx512
        } else if cfg!(all(
            target_feature = "avx2",
            target_feature = "fma",
            target_feature = "bmi2",
            any(
                target_feature = "avxvnni",
                all(target_feature = "avx512vl", target_feature = "avx512vnni")
            )
        )) {
            Isa::AvxVnni
        } else if cfg!(all(
            target_feature = "avx2",
            target_feature = "fma",
            target_feature = "bmi2"
        )) {
            Isa::Avx2
        } else {
            Isa::Scalar
        }
    }
    #[cfg(all(target_arch = "aarch64", feature = "std"))]
    {
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            Isa::NeonDot
        } else {
            Isa::Neon
        }
    }
    #[cfg(all(target_arch = "aarch64", not(feature = "std")))]
    {
        if cfg!(target_feature = "dotprod") {
            Isa::NeonDot
        } else {
            Isa::Neon
        }
    }
    #[cfg(all(target_arch = "arm", shiftnn_dsp))]
    {
        Isa::Dsp
    }
    #[cfg(not(any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        all(target_arch = "arm", shiftnn_dsp)
    )))]
    {
        Isa::Scalar
    }
}

/// The CPU's level, detected on first use and cached (one relaxed atomic
/// load afterwards). Ignores `SHIFTNN_ISA`.
#[inline]
pub fn detected() -> Isa {
    match Isa::from_u8(DETECTED.load(Ordering::Relaxed)) {
        Some(i) => i,
        None => {
            let i = detect();
            DETECTED.store(i as u8, Ordering::Relaxed);
            i
        }
    }
}

#[inline]
fn ensure_env() {
    if ENV_READ.load(Ordering::Relaxed) == 0 {
        reload_env();
    }
}

/// Read `SHIFTNN_ISA`, `SHIFTNN_KERNEL` and `SHIFTNN_FP16` again (they
/// are read once, on first use). Unknown values are ignored. Without
/// `std` this clears all three.
pub fn reload_env() {
    #[cfg(feature = "std")]
    {
        let isa = std::env::var("SHIFTNN_ISA")
            .ok()
            .and_then(|v| Isa::parse(&v));
        let fam = std::env::var("SHIFTNN_KERNEL")
            .ok()
            .and_then(|v| Family::parse(&v));
        let fp16 = std::env::var("SHIFTNN_FP16")
            .is_ok_and(|v| matches!(v.trim(), "1" | "true" | "on" | "yes"));
        CAP.store(isa.map_or(NONE, |i| i as u8), Ordering::Relaxed);
        FAMILY.store(fam.map_or(NONE, |f| f as u8), Ordering::Relaxed);
        FP16.store(fp16 as u8, Ordering::Relaxed);
    }
    #[cfg(not(feature = "std"))]
    {
        CAP.store(NONE, Ordering::Relaxed);
        FAMILY.store(NONE, Ordering::Relaxed);
        FP16.store(0, Ordering::Relaxed);
    }
    ENV_READ.store(1, Ordering::Relaxed);
}

/// Cap the level (`None`: the CPU's). Overrides `SHIFTNN_ISA` for the
/// whole process; for a CLI flag.
pub fn set_isa_cap(cap: Option<Isa>) {
    ensure_env();
    CAP.store(cap.map_or(NONE, |i| i as u8), Ordering::Relaxed);
}

/// Force a family (`None`: choose per layer). Overrides `SHIFTNN_KERNEL`.
pub fn set_family(f: Option<Family>) {
    ensure_env();
    FAMILY.store(f.map_or(NONE, |f| f as u8), Ordering::Relaxed);
}

/// Allow (`true`) or forbid f16 arithmetic in float layers: with it, on
/// a CPU with FEAT_FP16 ([`has_fp16`]), [`conv_shift_f32`] runs the
/// [`Op::ShiftF16`] kernels (`neonfp16/fexp`), which round activations
/// and pairs of terms to f16 (the bound in `crate::aarch64::fp16`);
/// elsewhere it changes nothing. Off by default (ncnn's
/// `use_fp16_arithmetic` is on by default): results change, so the
/// caller chooses. Overrides `SHIFTNN_FP16=1`.
pub fn set_fp16(on: bool) {
    ensure_env();
    FP16.store(on as u8, Ordering::Relaxed);
}

/// True if f16 arithmetic is allowed in float layers ([`set_fp16`]).
#[inline]
pub fn fp16_allowed() -> bool {
    ensure_env();
    FP16.load(Ordering::Relaxed) == 1
}

/// True if this CPU has half-precision arithmetic on vectors (aarch64
/// FEAT_FP16, `fp16` in Linux's `/proc/cpuinfo` as `fphp asimdhp`):
/// `std`'s cached detection, or the compile-time target features without
/// `std`. No x86 kernel uses f16 arithmetic yet: `false` there.
#[inline]
pub fn has_fp16() -> bool {
    #[cfg(all(target_arch = "aarch64", feature = "std"))]
    {
        std::arch::is_aarch64_feature_detected!("fp16")
    }
    #[cfg(all(target_arch = "aarch64", not(feature = "std")))]
    {
        cfg!(target_feature = "fp16")
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        false
    }
}

/// The level kernels are chosen at: the CPU's, capped by `SHIFTNN_ISA` /
/// [`set_isa_cap`]. A cap the CPU does not run (another architecture, or
/// higher than the CPU) is ignored beyond the CPU's level.
#[inline]
pub fn isa() -> Isa {
    ensure_env();
    let cpu = detected();
    match Isa::from_u8(CAP.load(Ordering::Relaxed)) {
        Some(cap) if cap.runs_on(cpu) => cap,
        _ => cpu,
    }
}

/// The forced family, if any.
#[inline]
pub fn forced_family() -> Option<Family> {
    ensure_env();
    Family::from_u8(FAMILY.load(Ordering::Relaxed))
}

/// The default family order of an int8 shift-code layer: the one place
/// where the measured per-layer choice lives.
///
/// Measured with `SHIFTNN_BENCH_SCALAR=0 cargo bench -p shiftnn-benches
/// --bench kernels` on the development machine (AMD EPYC Zen3, AVX2, no
/// AVX-512; 2026-11-28, one thread, machine shared, load ~6-10), MACs/s
/// for b = 2 / 3 / 4:
///
/// | layer                     | avx2/dot        | avx2/shift    | avx2/lut      |
/// |---------------------------|-----------------|---------------|---------------|
/// | GEMV 4096x4096            | 4.8 / 10.9 / 13.8 G | 0.83 / 2.1 / 1.7 G | 1.0 / 2.0 / 2.1 G |
/// | 1x1 conv 784x1152x128     | 13.1 / 5.9 / 6.5 G | 3.0 / 1.9 / 1.7 G | 2.3 / 1.6 / 1.7 G |
/// | 3x3 conv 128x28x28        | 7.8 / 7.7 / 9.7 G | 2.5 / 2.8 / 2.2 G | 1.9 / 2.4 / 1.8 G |
/// | 3x3 conv 64x56x56         | 2.3 / 3.0 / 4.7 G | 1.0 / 1.1 / 3.5 G | 0.8 / 0.6 / 2.4 G |
/// | depthwise 3x3 64x56x56    | 73 / 106 / 77 M | 73 / 107 / 81 M | 40 / 24 / 27 M |
///
/// At the AVX-512 level (Zen4, 2026-11-29, same bench, b = 4, one thread,
/// quiet machine), MACs/s:
///
/// | layer                  | avx512/dot | avx512/shift | avx512/fexp | FMA baseline | avx2/dot |
/// |------------------------|------------|--------------|-------------|--------------|----------|
/// | GEMV 4096x4096         | 40.1 G     | 7.4 G        | 9.1 G       | 9.9 G        | 34.0 G   |
/// | 1x1 conv 784x1152x128  | 33.4 G     | 12.8 G       | 11.5 G      | 14.0 G       | 30.4 G   |
/// | 3x3 conv 128x28x28     | 54.1 G     | 16.1 G       | 15.1 G      | 19.4 G       | 46.4 G   |
/// | 3x3 conv 64x56x56      | 39.1 G     | 13.4 G       | 13.2 G      | 15.6 G       | 34.4 G   |
/// | 7x7/2 stem, 3 channels | 26.8 G     | 9.4 G        | 10.4 G      | 12.4 G       | 16.4 G   |
///
/// (`avx2/lut`: 7-13 G; depthwise: `avx512/dw-shift` 3.6 G against 0.23 G
/// for the tiled kernels; pointwise 16 -> 96 at 112x112: `avx512/pw-dot`
/// 23.7 G, `avx512/dot` 4.5 G.) The same order as on AVX2, so the same
/// rule; the pixel-lane kernels' reach differs (`pointwise::MAX_K_TINY`).
///
/// Float layers (`Op::ShiftF32`) that fit the pixel-lane GEMM
/// ([`crate::gemm::applies`]) take `avx512/gemm-fexp`
/// (`crate::x86_64::gemm_fexp`): pixels in the lanes, an f32 panel per
/// block of 64 pixels, codes decoded in place to exponent constants, one
/// `vpaddd` and one masked `vaddps` per 16 MACs. Its unregistered FMA
/// baseline `avx512/gemm-fma-baseline` is the same kernel with
/// `vfmadd231ps`; the `fexp` target is 0.8x the MAC rate of an FMA kernel
/// on the same layout. `SHIFTNN_BENCH_BITS=4 SHIFTNN_BENCH_SCALAR=0 cargo
/// bench -p shiftnn-benches --bench kernels -- 'fexp|fma'` (Zen4,
/// 2026-11-29, one thread, machine shared, load 2-4; the second of two
/// runs, ratio of both), G MACs/s:
///
/// | layer                  | avx512/fexp | FMA baseline | gemm-fexp | gemm FMA baseline | ratio       |
/// |------------------------|-------------|--------------|-----------|-------------------|-------------|
/// | GEMV 4096x4096         | 7.5         | 8.5          | -         | -                 | -           |
/// | 1x1 conv 784x1152x128  | 11.2        | 13.4         | 38.3      | 44.2              | 0.97 / 0.87 |
/// | 3x3 conv 128x28x28     | 14.9        | 18.9         | 42.3      | 48.0              | 0.87 / 0.88 |
/// | 3x3 conv 64x56x56      | 13.0        | 16.0         | 40.0      | 46.1              | 0.94 / 0.87 |
/// | 3x3 conv 512x7x7       | 17.6        | 24.2         | 33.2      | 35.4              | 0.97 / 0.94 |
/// | 3x3/2 conv 128 -> 256  | 17.2        | 21.2         | 42.2      | 44.1              | 0.82 / 0.96 |
/// | pointwise 16 -> 96     | 2.7         | 2.9          | 26.1      | 23.7              | 1.13 / 1.10 |
/// | 7x7/2 stem, 3 channels | 9.3         | 11.4         | 32.2      | 36.5              | 0.90 / 0.88 |
///
/// Batched float linear layers take the same GEMM with the batch rows in
/// the lanes ([`fexp_linear`]). The tiled `avx512/fexp` stays for the
/// other float layers (linear layers of fewer than [`MIN_LINEAR_BATCH`]
/// rows, small planes, `k` above 4608, which the GEMM's panel does not
/// hold).
///
/// So: `dot` wherever a kernel of it runs (2.5-5x the multiplication-free
/// families on every dense layer), except depthwise convs (one input
/// channel per group, `k` = 9), where the tiled kernels are bound by the
/// patch gather and even `scalar` beats them. Depthwise layers take
/// `shift`, whose first entry there is the row-vectorized
/// [`crate::depthwise`] kernel (`avx2/dw-shift`, `neon/dw-shift`): same
/// bench, later run (load ~4), b = 2 / 3: avx2/dw-shift 1.6 / 2.6 G,
/// scalar 225 / 200 M, avx2/shift 138 / 145 M, avx2/dot 134 / 144 M MACs/s.
/// Pointwise layers (1x1, stride 1, unpadded) take `dot`'s pixel-lane
/// kernel `avx2/pw-dot` ([`crate::pointwise`], where its measurements and
/// limits are). Float depthwise layers run `*/dw-fexp`
/// ([`crate::depthwise_fexp`]: a flattened plane per channel, each tap
/// one exponent-add run; bit-identical to `scalar` but for the sign of a
/// zero sum): MobileNetV2 b4 float on AVX-512, its depthwise layers
/// 150 -> 10 ms of the profile, the model 243 -> 82 ms (2026-11-29,
/// machine shared); before, they ran `scalar`
/// (200 M against avx2/fexp's 97 M MACs/s). `lut` never won on AVX2 (one
/// `vpshufb` gives 16 MACs against 32 for `vpmaddubsw`, and the code
/// transpose is paid per pixel tile), so it runs only when forced. At the
/// AVX-512 level `avx512/lut` (`crate::x86_64::lut`: signed tables,
/// one `vpermi2w` per 32 MACs) beats `avx2/lut` and, narrowly,
/// `avx512/shift`, but not `dot`, so it too runs only when forced. Same
/// bench, `-- '/(avx512/lut|avx2/lut|avx512/shift)/'`, b = 4, Zen4, both
/// cores shared (load 3-5), G MACs/s avx512/lut / avx2/lut / avx512/shift:
/// 3x3 conv 128x28x28 14.9 / 11.1 / 14.4, 64x56x56 12.5 / 9.1 / 11.6,
/// 512x7x7 17.5 / 12.8 / 14.7, 7x7/2 stem 10.8 / 6.5 / 6.9, GEMV 7.8 /
/// 6.7 / 7.2. (At AVX-512 the convs that fit [`crate::gemm::applies`] run
/// `avx512/gemm-shift` under a forced `lut`, see below.) On NEON
/// without `dotprod` the order falls to `shift`; qemu timings mean nothing,
/// so that choice rests on instruction counts of the inner loops (`shift`
/// 4 per 8 MACs; `lut` 7 per 16 MACs plus about 14 per 16 MACs of code
/// transpose shared by 4 pixels), not on a measurement.
///
/// Above this rule, at the AVX-512 level, the runtime repacks the codes of
/// conv layers with enough pixels and channels ([`crate::gemm::applies`])
/// at load for a pixel-lane GEMM, and runs those layers through
/// [`Op::DecodedI8`] (`avx512/gemm-dot`, the default and under a forced
/// `dot`) or [`Op::ListsI8`] (`avx512/gemm-shift`, under a forced `shift`
/// or `lut`) instead of this op; batched linear layers likewise
/// ([`decoded_linear`], [`lists_linear`]). Same bench, b = 4, one thread,
/// quiet machine, 2026-11-29, G MACs/s (gemm-dot: the morning's version,
/// then the evening's with the direct stride-1 path and the tail, measured back to
/// back; the absolute level moves 10-20% between sessions, so compare
/// within a column pair):
///
/// | layer                  | gemm-dot   | avx512/dot | gemm-shift | avx512/shift |
/// |------------------------|------------|------------|------------|--------------|
/// | 1x1 conv 784x1152x128  | 123 -> 125 | 33.4       | 72         | 12.8         |
/// | 3x3 conv 128x28x28     | 129 -> 157 | 54.1       | 75         | 16.1         |
/// | 3x3 conv 64x56x56      | 116 -> 156 | 39.6       | 68         | 13.5         |
/// | 3x3 conv 512x7x7       | 102 -> 112 | 58.2       | 67         | 16.9         |
/// | 3x3/2 conv 128 -> 256  | 128 -> 128 | 62.4       | 63         | 17.3         |
/// | 7x7/2 stem, 3 channels | 103 -> 102 | 27.1       | 47-58      | 9.5          |
/// | pointwise 16 -> 96     | 41 -> 44   | 4.5        | 14.5       | 2.0          |
///
/// On aarch64 with `dotprod` ([`Isa::NeonDot`]) the same rule holds and
/// the same decoded rows feed `neondot/gemm-dot` ([`crate::gemm::applies`]
/// layers, under the default or a forced `dot`): pixels in the lanes,
/// `sdot` by element with the lane selecting the step, so one `ldr q` of a
/// row serves 4 steps. Its inner loop (8 rows x 8 pixels, 4 steps of 4
/// weights, 1024 MACs) is 64 `sdot`, 4 `ldp q` of the panel, 8 `ldr q` of
/// weights and 3 of loop control: 79 instructions, 0.077 per MAC (the
/// tiled `neondot/dot`: a load and an `sdot` per 16 MACs, two of each at
/// b = 4, plus the in-loop decode of the codes, 0.125-0.25 per MAC and
/// more).
/// Chosen on that count; qemu timings mean nothing, and no aarch64 board
/// has measured it yet.
///
/// The depthwise kernels ([`crate::depthwise`], a flattened plane per
/// channel since) run the 3x3 64x56x56 depthwise layer in 125 us, 14.5 G
/// MACs/s.
fn default_i8(g: &Conv2dGeom) -> &'static [Family] {
    use Family::*;
    if g.groups > 1 && g.c_in_g() == 1 {
        &[Shift, Dot, Scalar]
    } else {
        &[Dot, Shift, Scalar]
    }
}

/// Families tried, in order, for `op` on layer `g` when `forced` is set.
fn preference(op: Op, g: &Conv2dGeom, forced: Option<Family>) -> &'static [Family] {
    use Family::*;
    match (op, forced) {
        (_, Some(Scalar)) => &[Scalar],
        (Op::ShiftI8, None) | (Op::ShiftI8, Some(Fexp)) => default_i8(g),
        (Op::ShiftI8, Some(Dot)) => &[Dot, Scalar],
        (Op::ShiftI8, Some(Shift)) => &[Shift, Scalar],
        // Depthwise layers under a forced `lut` take the row-vectorized
        // `*/dw-shift`, also multiplication-free: the tiled `lut` kernels
        // build a table per activation for one output channel's taps
        // (MobileNetV2: 235 ms against 12 ms with `dw-shift`).
        (Op::ShiftI8, Some(Lut)) if crate::depthwise::applies(g) => &[Shift, Lut, Scalar],
        (Op::ShiftI8, Some(Lut)) => &[Lut, Shift, Scalar],
        // Float depthwise layers: the row-vectorized `*/dw-fexp` (the
        // tiled `fexp` kernels lose to `scalar` there), whatever family is
        // forced: they are the only float kernels, and multiplication-free.
        (Op::ShiftF32, _) if crate::depthwise::applies(g) => &[Fexp, Scalar],
        (Op::ShiftF32, _) => &[Fexp, Scalar],
        // No f16 depthwise kernel: [`select_float`] takes `*/dw-fexp`.
        (Op::ShiftF16, _) if crate::depthwise::applies(g) => &[Scalar],
        (Op::ShiftF16, _) => &[Fexp, Scalar],
        // Int8 weights (kept layers) multiply in every family, the scalar
        // reference included: a forced multiplication-free family cannot
        // change that, so they take the SIMD int8 dot kernel.
        (Op::W8I8, _) => &[Dot, Scalar],
        (Op::F32, _) => &[Scalar],
        // Decoding pays only for the SIMD GEMM; a forced
        // multiplication-free family keeps the codes.
        (Op::DecodedI8, None | Some(Dot) | Some(Fexp)) => &[Dot, Scalar],
        (Op::DecodedI8, _) => &[Scalar],
        // The multiplication-free GEMM runs only when a
        // multiplication-free int8 family is forced: by default `dot`'s
        // GEMM wins.
        (Op::ListsI8, Some(Shift) | Some(Lut)) => &[Shift, Scalar],
        (Op::ListsI8, _) => &[Scalar],
    }
}

/// The kernel `op` runs for geometry `g` at level `at` with family
/// preference `forced` (what [`select`] uses with the process settings).
pub fn select_with(op: Op, g: &Conv2dGeom, at: Isa, forced: Option<Family>) -> &'static Kernel {
    for &fam in preference(op, g, forced) {
        for k in kernels() {
            if k.op() == op && k.family == fam && k.runs_on(at) && k.layers.fits(g) {
                return k;
            }
        }
    }
    // The scalar reference of every op is registered.
    kernels()
        .find(|k| k.op() == op && k.isa == Isa::Scalar)
        .expect("scalar kernel registered for every op")
}

/// The kernel `op` runs for geometry `g` under the process settings.
#[inline]
pub fn select(op: Op, g: &Conv2dGeom) -> &'static Kernel {
    select_with(op, g, isa(), forced_family())
}

/// The kernel a float layer `g` with shift codes runs under the process
/// settings: the [`Op::ShiftF16`] kernel when f16 arithmetic is allowed
/// ([`set_fp16`]) and one runs here, else [`Op::ShiftF32`]'s.
pub fn select_float(g: &Conv2dGeom) -> &'static Kernel {
    if fp16_allowed() {
        let k = select(Op::ShiftF16, g);
        if k.isa != Isa::Scalar {
            return k;
        }
    }
    select(Op::ShiftF32, g)
}

/// The SIMD kernel of [`Op::DecodedI8`] for layer `g` under the process
/// settings, if one runs here: the runtime decodes a layer's codes at load
/// only then.
pub fn decoded_kernel(g: &Conv2dGeom) -> Option<&'static Kernel> {
    let k = select(Op::DecodedI8, g);
    (k.isa != Isa::Scalar).then_some(k)
}

/// The SIMD kernel of [`Op::ListsI8`] for layer `g` under the process
/// settings, if one runs here: the runtime regroups a layer's codes by
/// exponent at load only then.
pub fn lists_kernel(g: &Conv2dGeom) -> Option<&'static Kernel> {
    let k = select(Op::ListsI8, g);
    (k.isa != Isa::Scalar).then_some(k)
}

/// Dispatching [`crate::lists::conv_lists_i8`]: bit-identical output.
pub fn conv_lists_i8(
    g: &Conv2dGeom,
    x: &[i8],
    l: &ExpLists,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    match select(Op::ListsI8, g).f {
        KernelFn::ListsI8(f) => f(g, x, l, oc0, rq, out),
        _ => crate::lists::conv_lists_i8(g, x, l, oc0, rq, out),
    }
}

/// A batched linear kernel on decoded rows: `(x, m, rows, rq, out)` with
/// `x` of `m` rows of `k` and `out` of `m` rows of `rows.rows()`
/// (`crate::x86_64::gemm::linear_gemm_i8`).
pub type LinFn = fn(&[i8], usize, &DecodedRows, &[Requant], &mut [i8]);

/// Batches below this many rows stay row by row on the codes: with the
/// batch in the lanes of 16, fewer rows leave most lanes idle and the
/// in-register decode of `dot` wins.
pub const MIN_LINEAR_BATCH: usize = 8;

/// The pixel-lane GEMM for a linear layer of `m` rows, `k` inputs and `n`
/// outputs under the process settings, if it runs here (`(name, fn)`): the
/// runtime decodes such a layer's codes at load, as for convs
/// ([`decoded_kernel`]). Only with `dot` allowed (no forced
/// multiplication-free family), at the AVX-512 level (`avx512/gemm-dot`)
/// or on aarch64 with `dotprod` (`neondot/gemm-dot`,
/// `crate::aarch64::gemm::linear_gemm_i8`), for batches of at least
/// [`MIN_LINEAR_BATCH`] rows and 16 outputs.
pub fn decoded_linear(m: usize, k: usize, n: usize) -> Option<(&'static str, LinFn)> {
    let dot_ok = matches!(
        forced_family(),
        None | Some(Family::Dot) | Some(Family::Fexp)
    );
    let fits = linear_fits(m, k, n, crate::gemm::MAX_K);
    #[cfg(target_arch = "x86_64")]
    if dot_ok && fits && Isa::Avx512.runs_on(isa()) {
        return Some(("avx512/gemm-dot", crate::x86_64::gemm::linear_gemm_i8));
    }
    #[cfg(target_arch = "x86_64")]
    if dot_ok && fits && Isa::AvxVnni.runs_on(isa()) {
        return Some(("avxvnni/gemm-dot", crate::x86_64::gemm_vnni::linear_gemm_i8));
    }
    #[cfg(target_arch = "x86_64")]
    if dot_ok && linear_fits(m, k, n, Layers::GemmI16.max_k()) && Isa::Avx2.runs_on(isa()) {
        return Some(("avx2/gemm-dot", crate::x86_64::gemm_avx2::linear_gemm_i8));
    }
    #[cfg(target_arch = "aarch64")]
    if dot_ok && fits && Isa::NeonDot.runs_on(isa()) {
        return Some(("neondot/gemm-dot", crate::aarch64::gemm::linear_gemm_i8));
    }
    let _ = (dot_ok, fits);
    None
}

/// True when a batched linear layer of `m` rows, `k` inputs and `n`
/// outputs suits a pixel-lane GEMM whose `k` goes up to `max_k`: at least
/// [`MIN_LINEAR_BATCH`] rows and 16 outputs.
const fn linear_fits(m: usize, k: usize, n: usize, max_k: usize) -> bool {
    m >= MIN_LINEAR_BATCH && n >= 16 && k >= 1 && k <= max_k
}

/// A batched linear kernel on exponent lists: `(x, m, lists, rq, out)`
/// with `x` of `m` rows of `k` and `out` of `m` rows of `lists.rows()`
/// (`crate::x86_64::gemm_shift::linear_gemm_shift_i8`).
pub type ListLinFn = fn(&[i8], usize, &ExpLists, &[Requant], &mut [i8]);

/// The multiplication-free pixel-lane GEMM for an int8 linear layer of
/// `m` rows, `k` inputs and `n` outputs under the process settings, if it
/// runs here (`(name, fn)`): the runtime regroups such a layer's codes by
/// exponent at load, as for convs ([`lists_kernel`]). Under a forced
/// `shift` or `lut` family (where [`decoded_linear`] declines), at the
/// AVX-512 level (`avx512/gemm-shift`), for the batches of
/// [`decoded_linear`] up to `k` of [`crate::lists::MAX_K`].
pub fn lists_linear(m: usize, k: usize, n: usize) -> Option<(&'static str, ListLinFn)> {
    let shift = matches!(forced_family(), Some(Family::Shift) | Some(Family::Lut));
    let fits = linear_fits(m, k, n, crate::lists::MAX_K);
    #[cfg(target_arch = "x86_64")]
    if shift && fits && Isa::Avx512.runs_on(isa()) {
        return Some((
            "avx512/gemm-shift",
            crate::x86_64::gemm_shift::linear_gemm_shift_i8,
        ));
    }
    let _ = (shift, fits);
    None
}

/// A batched float linear kernel on the packed codes: `(x, m, w, ep, out)`
/// with `x` of `m` rows of `k` and `out` of `m` rows of `w.rows()`
/// (`crate::x86_64::gemm_fexp::linear_gemm_fexp_f32`).
pub type F32LinFn = fn(&[f32], usize, &PackedRows, &[Affine], &mut [f32]);

/// The float pixel-lane GEMM for a float-mode linear layer of `m` rows,
/// `k` inputs and `n` outputs under the process settings, if it runs here
/// (`(name, fn)`); it reads the codes as they are, so nothing is decoded
/// at load. Whatever family is forced but `scalar` (the `fexp` kernels are
/// the only float ones, and multiplication-free), at the AVX-512 level
/// (`avx512/gemm-fexp`), for the batches of [`decoded_linear`] whose `k`
/// fits the GEMM's panel (`crate::x86_64::gemm_fexp::PANEL_K`).
pub fn fexp_linear(m: usize, k: usize, n: usize) -> Option<(&'static str, F32LinFn)> {
    let fexp = forced_family() != Some(Family::Scalar);
    #[cfg(target_arch = "x86_64")]
    if fexp && linear_fits(m, k, n, crate::x86_64::gemm_fexp::PANEL_K) && Isa::Avx512.runs_on(isa())
    {
        return Some((
            "avx512/gemm-fexp",
            crate::x86_64::gemm_fexp::linear_gemm_fexp_f32,
        ));
    }
    let _ = (fexp, m, k, n);
    None
}

/// Name of the kernel a layer runs (`avx2/dot`, `neon/shift`,
/// `scalar/shift-i8`, ...), for `inspect` and `bench`.
pub fn kernel_name(op: Op, g: &Conv2dGeom) -> &'static str {
    match op {
        Op::ShiftF32 => select_float(g).name,
        _ => select(op, g).name,
    }
}

// ---------------------------------------------------------------------------
// Entry points: the scalar signatures.

/// Dispatching [`scalar::conv_shift_i8`]: bit-identical output.
pub fn conv_shift_i8(
    g: &Conv2dGeom,
    x: &[i8],
    w: &PackedRows,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    match select(Op::ShiftI8, g).f {
        KernelFn::ShiftI8(f) => f(g, x, w, oc0, rq, out),
        _ => scalar::conv_shift_i8(g, x, w, oc0, rq, out),
    }
}

/// Dispatching [`scalar::conv_shift_f32`]: within the stated bound (the
/// f16 one when [`set_fp16`] allowed f16 arithmetic and it runs here).
pub fn conv_shift_f32(
    g: &Conv2dGeom,
    x: &[f32],
    w: &PackedRows,
    oc0: usize,
    ep: &[Affine],
    out: &mut [f32],
) {
    match select_float(g).f {
        KernelFn::ShiftF32(f) | KernelFn::ShiftF16(f) => f(g, x, w, oc0, ep, out),
        _ => scalar::conv_shift_f32(g, x, w, oc0, ep, out),
    }
}

/// Dispatching [`scalar::conv_w8_i8`]: bit-identical output.
pub fn conv_w8_i8(g: &Conv2dGeom, x: &[i8], w: &[i8], oc0: usize, rq: &[Requant], out: &mut [i8]) {
    match select(Op::W8I8, g).f {
        KernelFn::W8I8(f) => f(g, x, w, oc0, rq, out),
        _ => scalar::conv_w8_i8(g, x, w, oc0, rq, out),
    }
}

/// Dispatching [`crate::gemm::conv_decoded_i8`]: bit-identical output.
pub fn conv_decoded_i8(
    g: &Conv2dGeom,
    x: &[i8],
    w: &DecodedRows,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    match select(Op::DecodedI8, g).f {
        KernelFn::DecodedI8(f) => f(g, x, w, oc0, rq, out),
        _ => crate::gemm::conv_decoded_i8(g, x, w, oc0, rq, out),
    }
}

/// Dispatching [`scalar::conv_f32`] (scalar only for now).
pub fn conv_f32(g: &Conv2dGeom, x: &[f32], w: &[f32], oc0: usize, ep: &[Affine], out: &mut [f32]) {
    match select(Op::F32, g).f {
        KernelFn::F32(f) => f(g, x, w, oc0, ep, out),
        _ => scalar::conv_f32(g, x, w, oc0, ep, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back() {
        for i in Isa::ALL {
            assert_eq!(Isa::parse(i.name()), Some(i));
        }
        for f in Family::ALL {
            assert_eq!(Family::parse(f.name()), Some(f));
        }
        assert_eq!(Isa::parse("AVX2"), Some(Isa::Avx2));
        assert_eq!(Isa::parse("avx-vnni"), Some(Isa::AvxVnni));
        assert_eq!(Isa::parse("nope"), None);
    }

    #[test]
    fn level_order() {
        assert!(Isa::Scalar.runs_on(Isa::Avx2));
        assert!(Isa::Avx2.runs_on(Isa::Avx512));
        assert!(Isa::Avx2.runs_on(Isa::AvxVnni));
        assert!(Isa::AvxVnni.runs_on(Isa::Avx512));
        assert!(!Isa::AvxVnni.runs_on(Isa::Avx2));
        assert!(!Isa::Avx512.runs_on(Isa::AvxVnni));
        assert!(!Isa::Avx512.runs_on(Isa::Avx2));
        assert!(!Isa::Neon.runs_on(Isa::Avx512));
        assert!(Isa::Neon.runs_on(Isa::NeonDot));
        assert!(!Isa::NeonDot.runs_on(Isa::Neon));
        assert!(Isa::Scalar.available());
    }

    #[test]
    fn selection_respects_level_family_and_k() {
        let big = Conv2dGeom::linear(256, 8);
        let dw = Conv2dGeom {
            c_in: 8,
            h: 5,
            w: 5,
            c_out: 8,
            kh: 3,
            kw: 3,
            stride: [1, 1],
            pads: [1; 4],
            dilation: [1, 1],
            groups: 8,
        };
        for op in [
            Op::ShiftI8,
            Op::ShiftF32,
            Op::ShiftF16,
            Op::W8I8,
            Op::F32,
            Op::DecodedI8,
            Op::ListsI8,
        ] {
            let k = select_with(op, &big, Isa::Scalar, None);
            assert_eq!(k.isa, Isa::Scalar);
            assert_eq!(k.op(), op);
            assert_eq!(select_with(op, &dw, detected(), None).op(), op);
            assert_eq!(
                select_with(op, &big, detected(), Some(Family::Scalar)).isa,
                Isa::Scalar
            );
        }
        let cpu = detected();
        let k = select_with(Op::ShiftI8, &big, cpu, Some(Family::Shift));
        assert!(k.family == Family::Shift || k.family == Family::Scalar);
        let k = select_with(Op::ShiftI8, &big, cpu, Some(Family::Lut));
        assert!(k.family.multiplication_free() || k.family == Family::Scalar);
        for k in kernels() {
            assert!(k.name.starts_with(k.isa.name()), "{}", k.name);
        }
        // The measured default (`default_i8`): dot on dense layers,
        // shift on depthwise ones, wherever both kernels exist; a forced
        // `lut` keeps the depthwise `shift` kernel.
        for at in [Isa::Avx2, Isa::NeonDot] {
            if at.available() {
                assert_eq!(
                    select_with(Op::ShiftI8, &dw, at, Some(Family::Lut)).family,
                    Family::Shift
                );
                assert_eq!(
                    select_with(Op::ShiftI8, &big, at, Some(Family::Lut)).family,
                    Family::Lut
                );
                assert_eq!(select_with(Op::ShiftI8, &big, at, None).family, Family::Dot);
                assert_eq!(
                    select_with(Op::ShiftI8, &dw, at, None).family,
                    Family::Shift
                );
            }
        }
    }
}
