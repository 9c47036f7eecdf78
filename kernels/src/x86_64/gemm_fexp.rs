//! `avx512/gemm-fexp`: the multiplication-free pixel-lane GEMM of float
//! mode, on the packed codes as they are (no repack at load).
//!
//! The blocks are those of `avx512/gemm-dot` ([`super::gemm`]): output
//! pixels run along the lanes, so no horizontal sum is ever needed and
//! the outputs store straight into the channel-major plane.
//!
//! * **Panel.** For a block of up to 64 output pixels, each weight tap's
//!   activations are `NV` vectors of 16 `f32` (`[k][16 * NV]`), read with
//!   one masked load per run of pixels within an output row (stride 2:
//!   two loads and a `vpermt2ps`; larger strides: a masked gather), using
//!   the block's tap tables. The panel is built once per block and read by
//!   every output channel of the call.
//! * **Decode.** Per block of `MR` rows, 64 codes of each row at a time
//!   become 64 broadcast constants, `(p << 23) | (s << 31)`, by the
//!   `vpermb`/`vpmultishiftqb` decode of `avx512/fexp` and a 16-entry
//!   `vpermd` table, into a small stack buffer.
//! * **Microkernel** (`fexp_rows`). `MR` rows by `NV` vectors (6 x 4,
//!   8 x 3, 12 x 2, 12 x 1: 24 or fewer accumulators); per weight tap,
//!   `NV` panel loads and `NV` masks of the nonzero activations (computed
//!   once when the panel is built, loaded by `kmovw`), then per row one
//!   broadcast constant and, per vector, `vpaddd` of it to the activation
//!   bits (adding the sign bit flips the sign) and a `vaddps` into the
//!   accumulator, merge-masked so that a zero activation adds nothing.
//!   Two vector instructions per 16 MACs where the FMA kernel has one, but
//!   on Zen4 `vpaddd` issues on the pipes `vaddps` leaves free. No
//!   multiply.
//! * **Fast-path rule** (that of `avx512/fexp`): an activation that is not
//!   zero and not a normal number with a biased exponent of at most
//!   `FEXP_MAX_E` (a subnormal, a huge value, inf, NaN) would not survive
//!   the exponent add, so every output pixel whose patch reads one is
//!   recomputed by the exact scalar loop. A scan of the input once per
//!   call spares the panel the per-lane check when there is none.
//! * **Epilogue.** The row's [`Affine`] on 16 pixels at once (a multiply
//!   and an add, separately rounded, as [`Affine::apply`]), masked stores.
//!
//! [`conv_gemm_fma_f32`] is the same kernel with the weight as a float and
//! `vfmadd231ps`: the baseline the `fexp` target is measured against.
//!
//! The panel shares the stack buffer of the int8 GEMM (`PANEL_BYTES`):
//! `k * 64` bytes per vector of 16 pixels, so up to 64 pixels per block
//! for `k <= 1152`, 16 for `k <= 4608`; beyond that the call runs the
//! tiled `avx512/fexp` (or its FMA baseline) instead.
//!
//! A batched linear layer ([`linear_gemm_fexp_f32`]) is the 1x1 conv of
//! its batch: the batch rows take the place of pixels in the lanes (the
//! panel is gathered from the `[m][k]` input, one `vgatherdps` per weight
//! and 16 rows), the same microkernel runs every output over it, and the
//! outputs scatter to the `[m][n]` rows.

use core::arch::x86_64::*;
use core::mem::MaybeUninit;

use super::avx512::{decode64, fexp_table, quarters, weight_bits};
use super::gemm::{batch_lanes, for_blocks, row_offsets, Block, Panel, PANEL_BYTES};
use crate::dispatch::tile::{fexp_slow, FEXP_MAX_E};
use crate::dispatch::Isa;
use crate::scalar::Affine;
use crate::{Conv2dGeom, PackedRows};

/// Codes of a row decoded to broadcast constants at a time: one
/// [`decode64`] block.
const KR: usize = 64;

/// Largest `k` whose panel holds one vector of 16 pixels (4608): the
/// GEMM's `k` limit; beyond it the entry points run the tiled
/// `avx512/fexp`.
pub const PANEL_K: usize = PANEL_BYTES / 64;

/// `|bits| - 2^23` below this: a normal activation that stays normal
/// under `* 2^7` (biased exponent `1 ..= FEXP_MAX_E`).
const FAST_SPAN: u32 = FEXP_MAX_E << 23;

/// True for an activation the exponent add handles: zero, or normal with
/// a biased exponent of at most [`FEXP_MAX_E`].
#[inline(always)]
fn fast(v: f32) -> bool {
    let a = v.to_bits() & 0x7fff_ffff;
    a == 0 || a.wrapping_sub(1 << 23) < FAST_SPAN
}

/// True when every activation of `x` takes the fast path: then the panel
/// needs no per-lane check. The fold (no early exit) vectorizes.
fn all_fast(x: &[f32]) -> bool {
    x.chunks(1024)
        .all(|c| c.iter().fold(true, |ok, &v| ok & fast(v)))
}

/// The lanes of `v` (activation bits) that [`fast`] refuses.
#[target_feature(enable = "avx512f")]
#[inline]
fn slow_lanes(v: __m512i) -> __mmask16 {
    let a = _mm512_and_si512(v, _mm512_set1_epi32(0x7fff_ffff));
    let off = _mm512_sub_epi32(a, _mm512_set1_epi32(1 << 23));
    let out = _mm512_cmpge_epu32_mask(off, _mm512_set1_epi32(FAST_SPAN as i32));
    _mm512_mask_test_epi32_mask(out, a, a)
}

/// `vpermt2ps` indices: lane `j` takes element `2j` of the 32-float pair.
const EVEN: [i32; 16] = {
    let mut t = [0i32; 16];
    let mut j = 0;
    while j < 16 {
        t[j] = 2 * j as i32;
        j += 1;
    }
    t
};

/// Build the panel of group `grp` for `nv` vectors of the block `blk`:
/// `k` steps of `nv * 16` activation bits at `panel` (zero for padded
/// taps and lanes past the block), and at `nz` the `k * nv` masks of
/// their nonzero lanes (-0.0 counts as zero: its sign bit would survive
/// the exponent add). With `CHECK`, returns the lanes whose patch reads
/// an activation [`fast`] refuses.
///
/// # Safety
/// AVX-512 F/BW and BMI2 available; `panel` is 64-byte aligned and valid
/// for writes of `k * nv * 16` `u32`, `nz` for writes of `k * nv` `u16`;
/// `x.len() == g.in_len()`; `nv <= 4`.
#[target_feature(enable = "avx512f,avx512bw,bmi2")]
unsafe fn build_panel<const CHECK: bool>(
    g: &Conv2dGeom,
    x: &[f32],
    grp: usize,
    blk: &Block,
    nv: usize,
    panel: *mut u32,
    nz: *mut u16,
) -> u64 {
    let plane = g.h * g.w;
    let sx = g.stride[1];
    // SAFETY: EVEN is 16 `i32`.
    let even = unsafe { _mm512_loadu_si512(EVEN.as_ptr().cast()) };
    // Lane offsets of a gather (strides of 3 and more): `j * sx`.
    let gidx: [i32; 16] = core::array::from_fn(|j| (j * sx) as i32);
    // SAFETY: `gidx` is 16 `i32`.
    let gidx = unsafe { _mm512_loadu_si512(gidx.as_ptr().cast()) };
    let mut slow = [0u16; 4];
    let mut i = 0;
    for ic in 0..g.c_in_g() {
        let cplane = ((grp * g.c_in_g() + ic) * plane) as isize;
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let mut t = [_mm512_setzero_ps(); 4];
                for s in 0..blk.ns {
                    let (ro, col) = blk.at(g, s, ky, kx);
                    if ro < 0 || col.m == 0 {
                        continue;
                    }
                    // Enabled lane l reads x[base + l * sx]: a row inside
                    // the image (ro >= 0), a column inside the row (the
                    // lanes of m).
                    let base = cplane + ro + col.off;
                    for (v, tv) in t.iter_mut().enumerate().take(nv) {
                        let m = (col.m >> (16 * v)) as u16;
                        if m == 0 {
                            continue;
                        }
                        let p = x.as_ptr().wrapping_offset(base + (16 * v * sx) as isize);
                        match sx {
                            1 => {
                                // SAFETY: only the lanes of m are read, at
                                // in-bounds indices (above).
                                *tv = unsafe { _mm512_mask_loadu_ps(*tv, m, p) };
                            }
                            2 => {
                                // Element 2j of the pair is lane j: the
                                // masks put lane j's bit at 2j.
                                let lo = _pdep_u32(m as u32 & 0xff, 0x5555) as u16;
                                let hi = _pdep_u32(m as u32 >> 8, 0x5555) as u16;
                                // SAFETY: the enabled elements are the
                                // columns of enabled lanes, in bounds.
                                let (a, b) = unsafe {
                                    (
                                        _mm512_maskz_loadu_ps(lo, p),
                                        _mm512_maskz_loadu_ps(hi, p.wrapping_add(16)),
                                    )
                                };
                                let e = _mm512_permutex2var_ps(a, even, b);
                                *tv = _mm512_mask_mov_ps(*tv, m, e);
                            }
                            _ => {
                                // SAFETY: only the lanes of m are read, at
                                // in-bounds indices (above).
                                *tv = unsafe {
                                    _mm512_mask_i32gather_ps::<4>(*tv, m, gidx, p.cast())
                                };
                            }
                        }
                    }
                }
                for (v, tv) in t.iter().enumerate().take(nv) {
                    // SAFETY: step i's vector v lies within the panel
                    // and its mask within `nz`.
                    unsafe { put_step::<CHECK>(*tv, panel, nz, i * nv + v, &mut slow[v]) };
                }
                i += 1;
            }
        }
    }
    join_slow(&slow)
}

/// Store vector `at` of the panel (`t`'s bits) and its nonzero mask;
/// with `CHECK`, add the lanes [`fast`] refuses to `slow`.
///
/// # Safety
/// AVX-512 F available; vector `at` (`16 * at ..` of `panel`) and mask
/// `at` of `nz` are valid for writes, the vector 64-byte aligned.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn put_step<const CHECK: bool>(
    t: __m512,
    panel: *mut u32,
    nz: *mut u16,
    at: usize,
    slow: &mut u16,
) {
    let bits = _mm512_castps_si512(t);
    if CHECK {
        *slow |= slow_lanes(bits);
    }
    // SAFETY: the caller's contract.
    unsafe {
        _mm512_store_si512(panel.add(at * 16).cast(), bits);
        *nz.add(at) = _mm512_test_epi32_mask(bits, _mm512_set1_epi32(0x7fff_ffff));
    }
}

/// Per-vector slow lanes as one mask of a block's 64 lanes.
fn join_slow(slow: &[u16; 4]) -> u64 {
    slow.iter()
        .enumerate()
        .fold(0u64, |a, (v, &s)| a | (s as u64) << (16 * v))
}

/// Build the panel of batch rows `j0 .. j0 + cnt` of `x` (`[m][k]`, a
/// linear layer's input), the layout of [`build_panel`] with batch rows
/// in the place of pixels (zero past `cnt`): one masked `vgatherdps` per
/// weight and vector of 16 rows (built once per block and read by every
/// output, so the gathers are a small share). With `CHECK`, returns the
/// lanes whose row holds an activation [`fast`] refuses.
///
/// # Safety
/// AVX-512 F available; `panel` is 64-byte aligned and valid for writes
/// of `k * nv * 16` `u32`, `nz` for writes of `k * nv` `u16`;
/// `x.len() >= (j0 + cnt) * k`, `cnt <= 16 * nv`, `nv <= 4`,
/// `16 * k < 2^31`.
#[target_feature(enable = "avx512f")]
unsafe fn build_rows_panel<const CHECK: bool>(
    x: &[f32],
    k: usize,
    j0: usize,
    cnt: usize,
    nv: usize,
    panel: *mut u32,
    nz: *mut u16,
) -> u64 {
    let offs = row_offsets(k);
    let mut slow = [0u16; 4];
    for (v, slow) in slow.iter_mut().enumerate().take(nv) {
        let (_, mask) = batch_lanes(cnt, v);
        // Row j0 + 16 v may be past the batch (no lane of it is read then).
        let base = x.as_ptr().wrapping_add((j0 + 16 * v) * k);
        for i in 0..k {
            // SAFETY: an enabled lane l reads row j0 + 16 v + l < j0 + cnt,
            // column i < k; step i's vector v lies within the panel and
            // its mask within `nz`.
            unsafe {
                let t = _mm512_mask_i32gather_ps::<4>(
                    _mm512_setzero_ps(),
                    mask,
                    offs,
                    base.wrapping_add(i).cast(),
                );
                put_step::<CHECK>(t, panel, nz, i * nv + v, slow);
            }
        }
    }
    join_slow(&slow)
}

/// The panel's nonzero masks: one per weight tap and vector.
#[repr(C, align(64))]
struct Masks([u16; 4 * PANEL_K]);

/// A stack buffer of one block of rows' broadcast constants.
#[repr(C, align(64))]
struct Consts<const MR: usize>([[u32; KR]; MR]);

/// Decode codes `64 blk ..` of each row to the constants of `tab` (one
/// `u32` per code).
///
/// # Safety
/// AVX-512 F/BW/VBMI available.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
#[inline]
unsafe fn decode_run<const B: u32, const MR: usize>(
    rows: &[&[u8]; MR],
    blk: usize,
    tab: __m512i,
    wb: &mut Consts<MR>,
) {
    for (row, w) in rows.iter().zip(wb.0.iter_mut()) {
        // SAFETY: features forwarded.
        let c = unsafe { decode64::<B>(row, blk) };
        // SAFETY: features forwarded.
        for (s, cq) in unsafe { quarters(c) }.into_iter().enumerate() {
            // SAFETY: quarter s is lanes 16 s .. 16 s + 16 of a 64-lane,
            // 64-byte aligned row.
            unsafe {
                _mm512_store_si512(
                    w.as_mut_ptr().add(16 * s).cast(),
                    _mm512_permutexvar_epi32(cq, tab),
                )
            };
        }
    }
}

/// `acc + t` in the lanes of `k` (`t`: float bits), `acc` elsewhere: one
/// merge-masked `vaddps`. Written as assembly because LLVM turns the
/// intrinsic (and a zero-masked `vpaddd`) into an unmasked add of a
/// masked move, three instructions a term where two do.
#[target_feature(enable = "avx512f")]
#[inline]
fn masked_add(mut acc: __m512, k: __mmask16, t: __m512i) -> __m512 {
    // SAFETY: a register-only AVX-512F instruction (enabled on this
    // function); no memory, stack or flags.
    unsafe {
        core::arch::asm!(
            "vaddps {a} {{{k}}}, {a}, {t}",
            a = inout(zmm_reg) acc,
            k = in(kreg) k,
            t = in(zmm_reg) t,
            options(pure, nomem, nostack, preserves_flags),
        )
    };
    acc
}

/// The sums of `MR` rows (codes of `B` bits) over the panel's `k` steps
/// of `NV` vectors, the shared body of [`fexp_rows`] and [`fma_rows`]:
/// per run of [`KR`] codes the rows' codes become broadcast constants
/// through `tab` ([`decode_run`]), then per step, row and vector
/// `acc = term(acc, m, x, c)` with `x` the activation bits, `c` the
/// constant and `m` the step's nonzero mask (loaded only if `MASKED`).
///
/// # Safety
/// AVX-512 F/BW/VBMI available; the panel holds `k * NV * 16` initialized
/// `u32` at `panel` (64-byte aligned) and, if `MASKED`, their `k * NV`
/// nonzero masks at `nz` ([`build_panel`]).
#[inline(always)]
unsafe fn sum_rows<const B: u32, const NV: usize, const MR: usize, const MASKED: bool>(
    rows: &[&[u8]; MR],
    k: usize,
    panel: *const u32,
    nz: *const u16,
    tab: &[u32; 16],
    term: impl Fn(__m512, __mmask16, __m512i, __m512i) -> __m512,
) -> [[__m512; NV]; MR] {
    // SAFETY (the intrinsics): the features are available (contract).
    unsafe {
        let tab = _mm512_loadu_si512(tab.as_ptr().cast());
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        let mut wb = Consts([[0u32; KR]; MR]);
        let (mut k0, mut blk) = (0, 0);
        while k0 < k {
            let len = (k - k0).min(KR);
            decode_run::<B, MR>(rows, blk, tab, &mut wb);
            let pp = panel.wrapping_add(k0 * NV * 16);
            let mp = nz.wrapping_add(k0 * NV);
            for kb in 0..len {
                // Step k0 + kb < k lies within the panel and the masks.
                let a: [__m512i; NV] =
                    core::array::from_fn(|v| _mm512_load_si512(pp.add((kb * NV + v) * 16).cast()));
                // Masks from memory rather than `vptestmd`: a load instead
                // of one more vector instruction per step and vector.
                let m: [__mmask16; NV] =
                    core::array::from_fn(|v| if MASKED { *mp.add(kb * NV + v) } else { !0 });
                for (acc, w) in acc.iter_mut().zip(&wb.0) {
                    let c = _mm512_set1_epi32(w[kb] as i32);
                    for v in 0..NV {
                        acc[v] = term(acc[v], m[v], a[v], c);
                    }
                }
            }
            k0 += len;
            blk += 1;
        }
        acc
    }
}

/// [`sum_rows`] with `c = (p << 23) | (s << 31)`: `bits(x) + c`, added by
/// a `vaddps` merge-masked where `x` is zero. The inner loop, kept out of
/// line so that `scripts/check-no-mul.sh` finds it and checks it has no
/// multiply.
///
/// # Safety
/// As [`sum_rows`], masked.
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn fexp_rows<const B: u32, const NV: usize, const MR: usize>(
    rows: &[&[u8]; MR],
    k: usize,
    panel: *const u32,
    nz: *const u16,
) -> [[__m512; NV]; MR] {
    let tab = const { fexp_table(B) };
    // SAFETY: forwarded.
    unsafe {
        sum_rows::<B, NV, MR, true>(rows, k, panel, nz, &tab, |acc, m, x, c| {
            masked_add(acc, m, _mm512_add_epi32(x, c))
        })
    }
}

/// [`sum_rows`] with the weight as a float (`1.0` with the code's
/// exponent and sign) and `vfmadd231ps`: the FMA baseline.
///
/// # Safety
/// As [`sum_rows`], unmasked.
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn fma_rows<const B: u32, const NV: usize, const MR: usize>(
    rows: &[&[u8]; MR],
    k: usize,
    panel: *const u32,
) -> [[__m512; NV]; MR] {
    let tab = const { weight_bits(B) };
    // SAFETY: forwarded; the masks are not read.
    unsafe {
        sum_rows::<B, NV, MR, false>(rows, k, panel, core::ptr::null(), &tab, |acc, _, x, c| {
            _mm512_fmadd_ps(_mm512_castsi512_ps(x), _mm512_castsi512_ps(c), acc)
        })
    }
}

/// [`Affine::apply`] on 16 accumulators: the same separately rounded
/// multiply and add, then the clamps (NaN passes, as in the scalar rule).
#[target_feature(enable = "avx512f")]
#[inline]
fn affine16(acc: __m512, ep: &Affine) -> __m512 {
    let v = _mm512_add_ps(
        _mm512_mul_ps(acc, _mm512_set1_ps(ep.scale)),
        _mm512_set1_ps(ep.bias),
    );
    let (lo, hi) = (_mm512_set1_ps(ep.lo), _mm512_set1_ps(ep.hi));
    // `v < lo` wins over `v > hi`, as in the scalar rule.
    let v = _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, hi), hi);
    _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask::<_CMP_LT_OQ>(v, lo), lo)
}

/// Where a block's outputs go, and the exact value of one that reads an
/// activation off the fast path: a conv's pixels ([`ConvOut`]) or a
/// linear layer's batch rows ([`LinOut`]).
trait Dest {
    /// Store lanes `16 v .. 16 v + n` (`0 < n <= 16`) of `y` as row `r`'s.
    ///
    /// # Safety
    /// AVX-512 F available; `r` is a row of the call and the lanes are in
    /// its block.
    unsafe fn put(&mut self, r: usize, v: usize, y: __m512, n: usize);

    /// Store `y` as row `r`'s output at lane `l`.
    fn set(&mut self, r: usize, l: usize, y: f32);

    /// Row `r`'s sum at lane `l` by the exact scalar loop.
    fn exact(&self, r: usize, l: usize) -> f32;
}

/// A conv block: channel `oc0 + r`, pixels `q0 ..` of its plane.
struct ConvOut<'a> {
    g: &'a Conv2dGeom,
    x: &'a [f32],
    w: &'a PackedRows<'a>,
    oc0: usize,
    q0: usize,
    out: &'a mut [f32],
}

impl Dest for ConvOut<'_> {
    #[inline(always)]
    unsafe fn put(&mut self, r: usize, v: usize, y: __m512, n: usize) {
        let o = &mut self.out[r * self.g.out_plane() + self.q0 + 16 * v..][..n];
        // SAFETY: the n <= 16 enabled lanes are `o`; the feature is
        // available (the caller).
        unsafe { _mm512_mask_storeu_ps(o.as_mut_ptr(), (u32::MAX >> (32 - n)) as u16, y) };
    }

    fn set(&mut self, r: usize, l: usize, y: f32) {
        self.out[r * self.g.out_plane() + self.q0 + l] = y;
    }

    fn exact(&self, r: usize, l: usize) -> f32 {
        fexp_slow(self.g, self.x, self.w, self.oc0 + r, r, self.q0 + l)
    }
}

/// A linear block: output `r` of batch rows `j0 ..` (`out` is `[m][n]`).
struct LinOut<'a> {
    x: &'a [f32],
    w: &'a PackedRows<'a>,
    j0: usize,
    out: &'a mut [f32],
}

impl Dest for LinOut<'_> {
    #[inline(always)]
    unsafe fn put(&mut self, r: usize, v: usize, y: __m512, n: usize) {
        let mut t = [0f32; 16];
        // SAFETY: `t` is 16 floats; the feature is available (the caller).
        unsafe { _mm512_storeu_ps(t.as_mut_ptr(), y) };
        for (j, &t) in t[..n].iter().enumerate() {
            self.set(r, 16 * v + j, t);
        }
    }

    fn set(&mut self, r: usize, l: usize, y: f32) {
        self.out[(self.j0 + l) * self.w.rows() + r] = y;
    }

    fn exact(&self, r: usize, l: usize) -> f32 {
        let k = self.w.k();
        let x = &self.x[(self.j0 + l) * k..][..k];
        fexp_slow(&Conv2dGeom::linear(k, self.w.rows()), x, self.w, r, r, 0)
    }
}

/// Rows `r0 .. r1` of `w` against the panel (`NV` vectors, `cnt` pixels),
/// `MR` rows at a time, into `dst`; the lanes of `slow` take the exact
/// scalar path.
///
/// # Safety
/// AVX-512 F/BW/VBMI available; the panel holds the block's `k * NV * 16`
/// initialized `u32` and `nz` their masks; rows `r0 .. r1` within `w`
/// and `ep`, lanes below `cnt <= 16 * NV` within `dst`'s block.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn rows<const B: u32, const FMA: bool, const NV: usize, const MR: usize>(
    w: &PackedRows,
    ep: &[Affine],
    r0: usize,
    r1: usize,
    panel: *const u32,
    nz: *const u16,
    cnt: usize,
    slow: u64,
    dst: &mut impl Dest,
) {
    let k = w.k();
    let mut rb = r0;
    while rb < r1 {
        // Rows past r1 repeat the last one; their sums are dropped.
        let rs: [&[u8]; MR] = core::array::from_fn(|i| w.row((rb + i).min(r1 - 1)));
        // SAFETY: forwarded.
        let acc = unsafe {
            if FMA {
                fma_rows::<B, NV, MR>(&rs, k, panel)
            } else {
                fexp_rows::<B, NV, MR>(&rs, k, panel, nz)
            }
        };
        for (i, acc) in acc.iter().enumerate() {
            let r = rb + i;
            if r >= r1 {
                break;
            }
            for (v, a) in acc.iter().enumerate() {
                let n = cnt.saturating_sub(16 * v).min(16);
                if n == 0 {
                    break;
                }
                // SAFETY: lanes 16 v .. 16 v + n < cnt of row r (contract).
                unsafe { dst.put(r, v, affine16(*a, &ep[r]), n) };
            }
            let mut s = slow & (u64::MAX >> (64 - cnt));
            while s != 0 {
                let l = s.trailing_zeros() as usize;
                let y = ep[r].apply(dst.exact(r, l));
                dst.set(r, l, y);
                s &= s - 1;
            }
        }
        rb += MR;
    }
}

/// [`rows`] over a block of `nv` vectors, with its register blocking.
///
/// # Safety
/// As [`rows`], with `NV = nv`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn block_rows<const B: u32, const FMA: bool>(
    nv: usize,
    w: &PackedRows,
    ep: &[Affine],
    r0: usize,
    r1: usize,
    panel: *const u32,
    nz: *const u16,
    cnt: usize,
    slow: u64,
    dst: &mut impl Dest,
) {
    // SAFETY: forwarded.
    unsafe {
        match nv {
            4 => rows::<B, FMA, 4, 6>(w, ep, r0, r1, panel, nz, cnt, slow, dst),
            3 => rows::<B, FMA, 3, 8>(w, ep, r0, r1, panel, nz, cnt, slow, dst),
            2 => rows::<B, FMA, 2, 12>(w, ep, r0, r1, panel, nz, cnt, slow, dst),
            _ => rows::<B, FMA, 1, 12>(w, ep, r0, r1, panel, nz, cnt, slow, dst),
        }
    }
}

/// Vectors of 16 lanes per block for `k` weights: as many as the panel
/// holds, up to 4.
fn vectors(k: usize) -> usize {
    (PANEL_K / k.max(1)).clamp(1, 4)
}

/// # Safety
/// AVX-512 F/BW/VBMI and BMI2 available; arguments checked by the entry
/// point; `g.k() <= PANEL_K`.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,bmi2")]
unsafe fn conv<const B: u32, const FMA: bool>(
    g: &Conv2dGeom,
    x: &[f32],
    w: &PackedRows,
    oc0: usize,
    ep: &[Affine],
    out: &mut [f32],
) {
    let (n, k) = (w.rows(), g.k());
    if n == 0 || g.out_plane() == 0 || k == 0 {
        return;
    }
    let nv_max = vectors(k);
    let check = !all_fast(x);
    let mut panel = MaybeUninit::<Panel>::uninit();
    let pp = panel.as_mut_ptr().cast::<u32>();
    let mut masks = MaybeUninit::<Masks>::uninit();
    let mp = masks.as_mut_ptr().cast::<u16>();
    for_blocks(g, n, oc0, 16 * nv_max, |grp, r, r_end, q0, blk| {
        let cnt = blk.pixels();
        let nv = cnt.div_ceil(16);
        let out = &mut *out;
        let mut dst = ConvOut {
            g,
            x,
            w,
            oc0,
            q0,
            out,
        };
        // SAFETY: k * nv * 64 bytes <= PANEL_BYTES by the choice of
        // nv_max (and k * nv masks <= 4 * PANEL_K); the panel and masks
        // are written before `rows` reads them; rows r .. r_end and
        // pixels q0 .. q0 + cnt are the call's.
        unsafe {
            let slow = if check {
                build_panel::<true>(g, x, grp, blk, nv, pp, mp)
            } else {
                build_panel::<false>(g, x, grp, blk, nv, pp, mp)
            };
            block_rows::<B, FMA>(nv, w, ep, r, r_end, pp, mp, cnt, slow, &mut dst);
        }
    });
}

/// # Safety
/// AVX-512 F/BW/VBMI available; arguments checked by the entry point;
/// `w.k() <= PANEL_K`.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn linear<const B: u32, const FMA: bool>(
    x: &[f32],
    m: usize,
    w: &PackedRows,
    ep: &[Affine],
    out: &mut [f32],
) {
    let (n, k) = (w.rows(), w.k());
    if n == 0 || m == 0 || k == 0 {
        return;
    }
    let nv_max = vectors(k);
    let check = !all_fast(x);
    let mut panel = MaybeUninit::<Panel>::uninit();
    let pp = panel.as_mut_ptr().cast::<u32>();
    let mut masks = MaybeUninit::<Masks>::uninit();
    let mp = masks.as_mut_ptr().cast::<u16>();
    let mut j0 = 0;
    while j0 < m {
        let cnt = (m - j0).min(16 * nv_max);
        let nv = cnt.div_ceil(16);
        let out = &mut *out;
        let mut dst = LinOut { x, w, j0, out };
        // SAFETY: as in `conv`: k * nv * 64 bytes <= PANEL_BYTES, the
        // panel written before it is read; x holds m rows of k (checked),
        // j0 + cnt <= m, 16 * k < 2^31 (k <= PANEL_K).
        unsafe {
            let slow = if check {
                build_rows_panel::<true>(x, k, j0, cnt, nv, pp, mp)
            } else {
                build_rows_panel::<false>(x, k, j0, cnt, nv, pp, mp)
            };
            block_rows::<B, FMA>(nv, w, ep, 0, n, pp, mp, cnt, slow, &mut dst);
        }
        j0 += cnt;
    }
}

/// The shared entry: checks, then the GEMM, or the tiled kernel for `k`
/// beyond the panel.
fn run<const FMA: bool>(
    g: &Conv2dGeom,
    x: &[f32],
    w: &PackedRows,
    oc0: usize,
    ep: &[Affine],
    out: &mut [f32],
) {
    assert!(
        Isa::Avx512.available(),
        "avx512/gemm-fexp on a CPU without AVX-512"
    );
    if g.k() > PANEL_K {
        return tiled::<FMA>()(g, x, w, oc0, ep, out);
    }
    assert_eq!(w.bytes().len(), w.rows() * w.bits().row_bytes(w.k()));
    crate::dispatch::check_call(g, x.len(), w.k(), w.rows(), oc0, ep.len(), out.len());
    // SAFETY: the level (AVX-512 F/BW/VBMI, with BMI2 below it) is
    // available (checked above); arguments checked; k <= PANEL_K.
    unsafe {
        match w.bits().get() {
            2 => conv::<2, FMA>(g, x, w, oc0, ep, out),
            3 => conv::<3, FMA>(g, x, w, oc0, ep, out),
            _ => conv::<4, FMA>(g, x, w, oc0, ep, out),
        }
    }
}

/// The tiled kernel (`avx512/fexp`, or its FMA baseline).
fn tiled<const FMA: bool>() -> crate::dispatch::F32Fn {
    if FMA {
        super::avx512::conv_fma_f32
    } else {
        super::avx512::conv_fexp_f32
    }
}

/// The shared linear entry: checks, then the GEMM, or the tiled kernel row
/// by row for `k` beyond the panel.
fn run_linear<const FMA: bool>(
    x: &[f32],
    m: usize,
    w: &PackedRows,
    ep: &[Affine],
    out: &mut [f32],
) {
    assert!(
        Isa::Avx512.available(),
        "avx512/gemm-fexp on a CPU without AVX-512"
    );
    let (n, k) = (w.rows(), w.k());
    assert_eq!(w.bytes().len(), n * w.bits().row_bytes(k));
    let name = "avx512/gemm-fexp";
    crate::gemm::check_batch(name, x.len(), m, k, n, usize::MAX, ep.len(), out.len());
    if k > PANEL_K {
        let g = Conv2dGeom::linear(k, n);
        for (x, o) in x.chunks_exact(k).zip(out.chunks_exact_mut(n)) {
            tiled::<FMA>()(&g, x, w, 0, ep, o);
        }
        return;
    }
    // SAFETY: the level (AVX-512 F/BW/VBMI) is available (checked above);
    // arguments checked; k <= PANEL_K.
    unsafe {
        match w.bits().get() {
            2 => linear::<2, FMA>(x, m, w, ep, out),
            3 => linear::<3, FMA>(x, m, w, ep, out),
            _ => linear::<4, FMA>(x, m, w, ep, out),
        }
    }
}

/// `avx512/gemm-fexp`: [`crate::scalar::conv_shift_f32`] within the
/// summation bound, like `avx512/fexp` (same fast-path rule; pixels that
/// read a subnormal, huge, infinite or NaN activation are exact); no
/// multiply per MAC. Panics if the CPU lacks AVX-512 or on mismatched
/// arguments.
pub fn conv_gemm_fexp_f32(
    g: &Conv2dGeom,
    x: &[f32],
    w: &PackedRows,
    oc0: usize,
    ep: &[Affine],
    out: &mut [f32],
) {
    run::<false>(g, x, w, oc0, ep, out)
}

/// The FMA baseline of `avx512/gemm-fexp`: the same blocks, panel, code
/// decode and fast-path rule, but each weight is a float multiplied in by
/// `vfmadd231ps`. Not registered (it multiplies, so it belongs to no
/// family); benches and tests compare the two. Within the same bound of
/// [`crate::scalar::conv_shift_f32`].
pub fn conv_gemm_fma_f32(
    g: &Conv2dGeom,
    x: &[f32],
    w: &PackedRows,
    oc0: usize,
    ep: &[Affine],
    out: &mut [f32],
) {
    run::<true>(g, x, w, oc0, ep, out)
}

/// `avx512/gemm-fexp` for a linear layer over a batch: `x` holds `m` rows
/// of `k` inputs, `out` `m` rows of `n = w.rows()` outputs, each row
/// [`crate::scalar::conv_shift_f32`] on that input row (a 1x1 layer on
/// one pixel) within the summation bound, as [`conv_gemm_fexp_f32`]
/// (same fast-path rule: a batch row holding a subnormal, huge, infinite
/// or NaN activation is exact); the batch runs along the lanes, as the
/// pixels of a conv do; no multiply per MAC. `k` beyond the panel runs
/// `avx512/fexp` row by row. Panics if the CPU lacks AVX-512 or on
/// mismatched lengths (`k = 0` included).
pub fn linear_gemm_fexp_f32(x: &[f32], m: usize, w: &PackedRows, ep: &[Affine], out: &mut [f32]) {
    run_linear::<false>(x, m, w, ep, out)
}

/// The FMA baseline of [`linear_gemm_fexp_f32`] (see
/// [`conv_gemm_fma_f32`]): not registered; benches and tests compare the
/// two. Within the same bound.
pub fn linear_gemm_fma_f32(x: &[f32], m: usize, w: &PackedRows, ep: &[Affine], out: &mut [f32]) {
    run_linear::<true>(x, m, w, ep, out)
}
