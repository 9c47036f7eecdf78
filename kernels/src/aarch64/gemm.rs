//! `neondot/gemm-dot`: the pixel-lane int8 GEMM on decoded rows
//! ([`crate::gemm`]) with `sdot` by element (Armv8.2 `dotprod`); the
//! aarch64 twin of `avx512/gemm-dot` (`crate::x86_64::gemm`), with the
//! same contract and the same decoded rows.
//!
//! Output pixels run along the lanes, so no horizontal sum is ever needed
//! and each row's outputs store straight into its channel plane:
//!
//! * **Panel.** For a block of up to 64 consecutive output pixels (fewer
//!   for long `k`, down to 16, so that the panel fits [`PANEL_BYTES`]) the
//!   im2col patches are laid out in sub-blocks of 8 pixels,
//!   `[pixels / 8][k / 4][8][4]` signed bytes, so a sub-block's two
//!   vectors of one step are 32 contiguous bytes and the microkernel
//!   streams them in order. Activations stay signed (`sdot` is signed by
//!   signed), so there is no `0x80` offset and the rows' `corr` is not
//!   used; padded taps and weights past `k` are 0. Each tap is gathered
//!   into a byte row of the block's pixels (one copy per run of pixels
//!   within an output row, a strided loop for strides above 1; the runs
//!   of each of a block's taps worked out once, `crate::panel::TapRuns`,
//!   as they are the same for every input channel), and four
//!   taps interleave into pixel-major words with two rounds of `zip`
//!   (8 `zip1`/`zip2` per 16 pixels of a step). The panel is built once
//!   per pixel block and read by every row of the call.
//! * **Microkernel.** [`MR`] = 8 rows by 2 vectors of 4 pixels, 16
//!   accumulators. `sdot v.4s, p.16b, w.4b[l]` multiplies each pixel's 4
//!   activations of a step by the 4-weight word in lane `l` of `w`. One
//!   `ldr q` of a decoded row gives that row's words of 4 consecutive
//!   steps, one per lane, so the lane selects the *step* and the
//!   row-major decoded layout is used as it is: no transpose of weights
//!   (a register of 4 rows' words of one step, lane = row, would need
//!   4 loads and 8 `trn` per 4 rows per 4 steps, 3 instructions per step
//!   per 4 rows, a quarter of the inner loop). Per step of 4 weights, 8
//!   rows and 8 pixels: 16 `sdot` (256 MACs), one `ldp q` of the panel and
//!   8 / 4 = 2 `ldr q` of weights: 19 instructions, about 1.19 per `sdot`.
//!   The compiled loop (release, checked with `objdump`) runs 4 steps in
//!   79 instructions: 64 `sdot`, 4 `ldp q`, 8 `ldr q` and 3 of loop
//!   control (`add`, `subs`, `b.ne`), 0.077 per MAC, no spills (the
//!   4-row tail kernel: 43 per 512 MACs). Registers: 16
//!   accumulators, 8 weight vectors, 2 panel vectors, 26 of 32. Wider
//!   blocks do not fit: 8 x 3 needs 24 + 8 + 3 = 35 registers, 6 x 3
//!   (27) and 4 x 4 (24) give the same 1.19 per `sdot`; 8 x 2 keeps
//!   sub-blocks at a power of two pixels.
//! * **Epilogue.** Per row and sub-block: a halved row's sums doubled
//!   ([`crate::gemm`]), the row's fixes, each one more `sdot` per vector
//!   on the same panel step (the stored 127 plus 1 times the activation,
//!   or a halved row's +-1), then requantization in NEON (`requant8`,
//!   exact, the rule of [`Requant::apply`]) and an 8-byte store.
//!
//! The panel (at most [`PANEL_BYTES`] = 288 KiB, `k` up to
//! [`crate::gemm::MAX_K`]) is on the stack, as on x86: the kernel crate
//! never allocates.

use core::arch::aarch64::*;
use core::mem::MaybeUninit;

use crate::dispatch::Isa;
use crate::gemm::{check_conv, check_linear, padded_k, DecodedRows, Order, MAX_K};
use crate::panel::{
    block_pixels, build_rows_panel, for_each_block, put_outputs, Seg, StepTaps, PX_MAX, SUB,
};
use crate::{Conv2dGeom, Requant};

/// Rows of the microkernel.
pub const MR: usize = 8;

/// Bytes of the stack panel: `MAX_K` weights of 16 pixels.
pub const PANEL_BYTES: usize = padded_k(MAX_K) * 16;

/// The stack panel.
#[repr(C, align(64))]
struct Panel([i8; PANEL_BYTES]);

/// `acc += sdot(a, b.4b[L])`: lane `i` of `acc` gains the dot product of
/// bytes `4i .. 4i + 4` of `a` with bytes `4L .. 4L + 4` of `b`. Inline
/// assembly because the `vdotq_laneq_s32` intrinsic is not stable.
///
/// # Safety
/// The CPU has `dotprod`.
#[target_feature(enable = "neon,dotprod")]
#[inline]
unsafe fn sdot_lane<const L: u32>(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: `sdot` (by element) exists with dotprod (caller); registers
    // only, L < 4 by every call site.
    unsafe {
        core::arch::asm!(
            "sdot {0:v}.4s, {1:v}.16b, {2:v}.4b[{l}]",
            inout(vreg) acc,
            in(vreg) a,
            in(vreg) b,
            l = const L,
            options(pure, nomem, nostack)
        );
    }
    acc
}

/// Build the panel of group `grp` for the block of `cnt` pixels whose runs
/// are `segs`: `kp / 4` steps of every sub-block of 8 pixels up to
/// `16 * cnt.div_ceil(16)` pixels (see the module documentation).
///
/// # Safety
/// `panel` is valid for writes of `16 * cnt.div_ceil(16) * kp` bytes;
/// `x.len() == g.in_len()`, `grp < g.groups`, `cnt <= PX_MAX`.
#[target_feature(enable = "neon")]
unsafe fn build_panel(
    g: &Conv2dGeom,
    x: &[i8],
    grp: usize,
    segs: &[Seg],
    cnt: usize,
    panel: *mut i8,
) {
    let steps = padded_k(g.k()) / 4;
    let chunks = cnt.div_ceil(16);
    let mut taps = StepTaps::new(g, x, grp, segs, cnt);
    let mut t = [[0i8; PX_MAX]; 4];
    for kb in 0..steps {
        taps.next(&mut t);
        for ch in 0..chunks {
            // SAFETY: each `t` row has PX_MAX >= 16 * chunks bytes.
            let [a, b, c, d] = t
                .each_ref()
                .map(|r| unsafe { vld1q_s8(r.as_ptr().add(16 * ch)) });
            let (ab_lo, ab_hi) = (
                vreinterpretq_s16_s8(vzip1q_s8(a, b)),
                vreinterpretq_s16_s8(vzip2q_s8(a, b)),
            );
            let (cd_lo, cd_hi) = (
                vreinterpretq_s16_s8(vzip1q_s8(c, d)),
                vreinterpretq_s16_s8(vzip2q_s8(c, d)),
            );
            // Pixels 0-3, 4-7 (sub-block 2 ch) and 8-11, 12-15 (2 ch + 1).
            let v = [
                vzip1q_s16(ab_lo, cd_lo),
                vzip2q_s16(ab_lo, cd_lo),
                vzip1q_s16(ab_hi, cd_hi),
                vzip2q_s16(ab_hi, cd_hi),
            ];
            for (half, pair) in v.chunks_exact(2).enumerate() {
                let sb = 2 * ch + half;
                let dst = panel.wrapping_add((sb * steps + kb) * 32);
                // SAFETY: sub-block sb < 2 * chunks, step kb < steps: the
                // 32 bytes lie within 16 * chunks * kp bytes of the panel.
                unsafe {
                    vst1q_s8(dst, vreinterpretq_s8_s16(pair[0]));
                    vst1q_s8(dst.add(16), vreinterpretq_s8_s16(pair[1]));
                }
            }
        }
    }
}

/// One step of the microkernel: 2 vectors of the panel at `p` against
/// lane `L` (the step) of each row's weight vector.
///
/// # Safety
/// dotprod available; 32 readable bytes at `p`.
#[target_feature(enable = "neon,dotprod")]
#[inline]
unsafe fn step<const L: u32, const R: usize>(
    acc: &mut [[int32x4_t; 2]; R],
    w: &[int8x16_t; R],
    p: *const i8,
) {
    // SAFETY: 32 readable bytes (caller); dotprod (caller).
    unsafe {
        let (a, b) = (vld1q_s8(p), vld1q_s8(p.add(16)));
        for (acc, &w) in acc.iter_mut().zip(w) {
            acc[0] = sdot_lane::<L>(acc[0], a, w);
            acc[1] = sdot_lane::<L>(acc[1], b, w);
        }
    }
}

/// `R` rows (weights at `wp`, `4 * steps` bytes each) against one
/// sub-block of the panel (`steps` steps of 32 bytes at `pv`): the
/// accumulators of 8 pixels per row, before the fixes.
///
/// # Safety
/// dotprod available; `wp[i]` valid for reads of `4 * steps` bytes;
/// `pv` of `32 * steps` initialized bytes.
#[target_feature(enable = "neon,dotprod")]
#[inline]
unsafe fn tile<const R: usize>(
    wp: &[*const i8; R],
    pv: *const i8,
    steps: usize,
) -> [[int32x4_t; 2]; R] {
    let mut acc = [[vdupq_n_s32(0); 2]; R];
    let quads = steps / 4;
    for q in 0..quads {
        // SAFETY: 16 (q + 1) <= 4 steps bytes of each row; steps 4q .. 4q + 4
        // of the sub-block are 128 bytes within its 32 * steps.
        unsafe {
            let w: [int8x16_t; R] = core::array::from_fn(|i| vld1q_s8(wp[i].add(16 * q)));
            let p = pv.add(128 * q);
            step::<0, R>(&mut acc, &w, p);
            step::<1, R>(&mut acc, &w, p.add(32));
            step::<2, R>(&mut acc, &w, p.add(64));
            step::<3, R>(&mut acc, &w, p.add(96));
        }
    }
    let rem = steps % 4;
    if rem > 0 {
        // The last 1-3 steps: each row's last 4 * rem bytes, zero-extended
        // to a vector (reading 16 would run past the row).
        let w: [int8x16_t; R] = core::array::from_fn(|i| {
            let mut t = [0i8; 16];
            // SAFETY: bytes 16 quads .. 4 steps of row i are readable.
            let tail = unsafe { core::slice::from_raw_parts(wp[i].add(16 * quads), 4 * rem) };
            t[..4 * rem].copy_from_slice(tail);
            // SAFETY: `t` is 16 bytes.
            unsafe { vld1q_s8(t.as_ptr()) }
        });
        // SAFETY: steps 4 quads .. steps of the sub-block are within it.
        unsafe {
            let p = pv.add(128 * quads);
            step::<0, R>(&mut acc, &w, p);
            if rem > 1 {
                step::<1, R>(&mut acc, &w, p.add(32));
            }
            if rem > 2 {
                step::<2, R>(&mut acc, &w, p.add(64));
            }
        }
    }
    acc
}

/// [`Requant::apply`] on 8 accumulators, for an offset below 2^62 (so
/// `acc * mult + offset` cannot overflow and the scalar rule's saturating
/// add is a plain one, as in [`Requant::apply_run`]): `smull`/`smull2`
/// give the exact 64-bit products, then the add, an arithmetic shift
/// (`sshl` by `-shift`), a saturating narrow to 32 bits (which keeps the
/// order, so the clamp to `lo ..= hi`, both int8, is unchanged), the
/// clamp and narrows to 8 bits.
///
/// # Safety
/// NEON available (always on aarch64).
#[target_feature(enable = "neon")]
#[inline]
unsafe fn requant8(acc: &[int32x4_t; 2], rq: &Requant) -> int8x8_t {
    debug_assert!(rq.offset.unsigned_abs() < 1 << 62);
    let m2 = vdup_n_s32(rq.mult);
    let m4 = vdupq_n_s32(rq.mult);
    let off = vdupq_n_s64(rq.offset);
    let sh = vdupq_n_s64(-(rq.shift as i64));
    let (lo, hi) = (vdupq_n_s32(rq.lo as i32), vdupq_n_s32(rq.hi as i32));
    let one = |a: int32x4_t| {
        let pl = vshlq_s64(vaddq_s64(vmull_s32(vget_low_s32(a), m2), off), sh);
        let ph = vshlq_s64(vaddq_s64(vmull_high_s32(a, m4), off), sh);
        let n = vqmovn_high_s64(vqmovn_s64(pl), ph);
        vminq_s32(vmaxq_s32(n, lo), hi)
    };
    let y = vmovn_high_s32(vmovn_s32(one(acc[0])), one(acc[1]));
    vmovn_s16(y)
}

/// Rows `r0 .. r1` of `d` (`r1 - r0 <= R`; rows past `r1` repeat the last
/// one and are dropped) against the panel of `cnt` pixels; `emit(r, p,
/// y, n)` gets row `r`'s requantized outputs of pixels `p .. p + n` of
/// the block (`n <= 8`, in `y[..n]`).
///
/// # Safety
/// dotprod available; the panel at `panel` holds the initialized
/// sub-blocks of `cnt` pixels of `d.kp() / 4` steps; `r1 <= d.rows()`,
/// `rq.len() >= r1`.
#[target_feature(enable = "neon,dotprod")]
unsafe fn rows<const R: usize>(
    d: &DecodedRows,
    r0: usize,
    r1: usize,
    panel: *const i8,
    cnt: usize,
    rq: &[Requant],
    emit: &mut impl FnMut(usize, usize, &[i8; SUB], usize),
) {
    let steps = d.kp() / 4;
    let wp: [*const i8; R] = core::array::from_fn(|i| d.row((r0 + i).min(r1 - 1)).as_ptr());
    for sb in 0..cnt.div_ceil(SUB) {
        let pv = panel.wrapping_add(sb * steps * 32);
        let n = (cnt - SUB * sb).min(SUB);
        // SAFETY: rows of kp = 4 steps bytes; the sub-block's 32 * steps
        // bytes are initialized (caller).
        let mut acc = unsafe { tile::<R>(&wp, pv, steps) };
        for (i, acc) in acc.iter_mut().enumerate() {
            let r = r0 + i;
            if r >= r1 {
                break;
            }
            // A halved row's sums doubled before its fixes go in.
            let sh = vdupq_n_s32(d.shift(r) as i32);
            acc[0] = vshlq_s32(acc[0], sh);
            acc[1] = vshlq_s32(acc[1], sh);
            for f in d.fixes(r) {
                let fw = vreinterpretq_s8_s32(vdupq_n_s32(f.word));
                // SAFETY: f.kb < steps (checked by DecodedRows::new): the
                // step's 32 bytes are within the sub-block.
                unsafe {
                    let p = pv.add(32 * f.kb as usize);
                    acc[0] = sdot_lane::<0>(acc[0], vld1q_s8(p), fw);
                    acc[1] = sdot_lane::<0>(acc[1], vld1q_s8(p.add(16)), fw);
                }
            }
            let mut y = [0i8; SUB];
            if rq[r].offset.unsigned_abs() < 1 << 62 {
                // SAFETY: NEON available; `y` is 8 writable bytes.
                unsafe { vst1_s8(y.as_mut_ptr(), requant8(acc, &rq[r])) };
            } else {
                let mut t = [0i32; SUB];
                // SAFETY: `t` is 8 i32 lanes.
                unsafe {
                    vst1q_s32(t.as_mut_ptr(), acc[0]);
                    vst1q_s32(t.as_mut_ptr().add(4), acc[1]);
                }
                rq[r].apply_run(&t[..n], &mut y[..n]);
            }
            emit(r, SUB * sb, &y, n);
        }
    }
}

/// [`rows`] over rows `r .. r_end`, `MR` at a time (a tail of up to 4
/// rows takes the 4-row kernel).
///
/// # Safety
/// As [`rows`], with `r_end` for `r1`.
#[target_feature(enable = "neon,dotprod")]
unsafe fn all_rows(
    d: &DecodedRows,
    r: usize,
    r_end: usize,
    panel: *const i8,
    cnt: usize,
    rq: &[Requant],
    emit: &mut impl FnMut(usize, usize, &[i8; SUB], usize),
) {
    let mut rb = r;
    while rb < r_end {
        let re = r_end.min(rb + MR);
        // SAFETY: forwarded (caller).
        unsafe {
            if re - rb <= 4 {
                rows::<4>(d, rb, re, panel, cnt, rq, emit);
            } else {
                rows::<MR>(d, rb, re, panel, cnt, rq, emit);
            }
        }
        rb = re;
    }
}

/// # Safety
/// dotprod available; arguments checked by [`conv_gemm_i8`].
#[target_feature(enable = "neon,dotprod")]
unsafe fn conv(
    g: &Conv2dGeom,
    x: &[i8],
    d: &DecodedRows,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    let (n, plane) = (d.rows(), g.out_plane());
    if n == 0 || plane == 0 {
        return;
    }
    let px = block_pixels(PANEL_BYTES, d.kp());
    let mut panel = MaybeUninit::<Panel>::uninit();
    let pp = panel.as_mut_ptr().cast::<i8>();
    for_each_block(g, n, oc0, px, |grp, r, r_end, q0, cnt, segs| {
        // SAFETY: 16 * cnt.div_ceil(16) * kp <= px * kp <= PANEL_BYTES by
        // the choice of px; the panel is written before it is read.
        unsafe { build_panel(g, x, grp, segs, cnt, pp) };
        let mut emit = |r: usize, p: usize, y: &[i8; SUB], n: usize| {
            put_outputs(out, r * plane + q0 + p, y, n)
        };
        // SAFETY: the block's panel is built; rows and outputs are within
        // d, rq and out (checked by the caller).
        unsafe { all_rows(d, r, r_end, pp, cnt, rq, &mut emit) };
    });
}

/// `neondot/gemm-dot`: equal to [`crate::scalar::conv_shift_i8`] on the
/// codes `d` was decoded from ([`crate::gemm::decode`]), and so to
/// [`crate::gemm::conv_decoded_i8`]. Panics if the CPU lacks `dotprod`, on
/// mismatched arguments, or if `k` exceeds [`MAX_K`].
pub fn conv_gemm_i8(
    g: &Conv2dGeom,
    x: &[i8],
    d: &DecodedRows,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    assert!(
        Isa::NeonDot.available(),
        "neondot/gemm-dot on a CPU without dotprod"
    );
    check_conv("neondot/gemm-dot", g, x.len(), d, oc0, rq.len(), out.len());
    assert_eq!(
        d.order(),
        Order::Codes,
        "neondot/gemm-dot: rows in code order"
    );
    // SAFETY: dotprod is available (checked above) and the arguments
    // match the geometry.
    unsafe { conv(g, x, d, oc0, rq, out) }
}

/// # Safety
/// dotprod available; arguments checked by [`linear_gemm_i8`].
#[target_feature(enable = "neon,dotprod")]
unsafe fn linear(x: &[i8], m: usize, d: &DecodedRows, rq: &[Requant], out: &mut [i8]) {
    let (n, k) = (d.rows(), d.k());
    if n == 0 || m == 0 {
        return;
    }
    let px = block_pixels(PANEL_BYTES, d.kp());
    let mut panel = MaybeUninit::<Panel>::uninit();
    let pp = panel.as_mut_ptr().cast::<i8>();
    let mut j0 = 0;
    while j0 < m {
        let cnt = (m - j0).min(px);
        let mut emit = |r: usize, p: usize, y: &[i8; SUB], len: usize| {
            for (j, &v) in y[..len].iter().enumerate() {
                out[(j0 + p + j) * n + r] = v;
            }
        };
        // SAFETY: 16 * cnt.div_ceil(16) * kp <= px * kp <= PANEL_BYTES;
        // the panel is written before it is read; x holds m rows of k.
        unsafe {
            build_rows_panel(x, k, j0, cnt, 0, pp);
            all_rows(d, 0, n, pp, cnt, rq, &mut emit);
        }
        j0 += cnt;
    }
}

/// `neondot/gemm-dot` for a linear layer over a batch, the contract of
/// the x86 `linear_gemm_i8`: `x` holds `m` rows of `k` int8 inputs, `out`
/// `m` rows of `n = d.rows()` outputs, each row equal to
/// [`crate::scalar::conv_shift_i8`] on the codes `d` was decoded from (a
/// 1x1 layer on one pixel). The batch runs along the lanes, as the
/// pixels of a conv do. Panics if the CPU lacks `dotprod`, on mismatched
/// lengths, or if `k` is 0 or exceeds [`MAX_K`].
pub fn linear_gemm_i8(x: &[i8], m: usize, d: &DecodedRows, rq: &[Requant], out: &mut [i8]) {
    assert!(
        Isa::NeonDot.available(),
        "neondot/gemm-dot on a CPU without dotprod"
    );
    check_linear("neondot/gemm-dot", x.len(), m, d, rq.len(), out.len());
    // SAFETY: dotprod is available (checked above); lengths checked.
    unsafe { linear(x, m, d, rq, out) }
}
