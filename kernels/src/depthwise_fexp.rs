//! Float depthwise convolution by exponent add (`fexp`), vectorized along
//! output rows.
//!
//! The tiled float kernels put `k` in the lanes, which a depthwise layer
//! (`k` = 9) cannot fill; those layers ran `scalar`, at 0.13 G MACs/s on
//! MobileNetV2 (its 112x112 x 32 depthwise layer took 28 ms of a 243 ms
//! float inference on Zen 4). Here each weight tap of a channel runs along
//! a run of output columns at once: `acc[ox] += x[iy][ox * s + off] * w`,
//! the product an integer add of `p << 23` to the activation's bits and an
//! XOR of the weight's sign ([`crate::fexp`]), zero activations masked so
//! they stay (signed) zeros. The compiler vectorizes the run for the ISA
//! its wrapper enables (`x86_64::avx2::dw`, `x86_64::avx512::dw`,
//! `aarch64::neon::dw`); the run's function is named `fexp_rows` there and
//! `scripts/check-no-mul.sh` finds no multiply in it.
//!
//! Each output pixel adds its taps in the order of
//! [`crate::scalar::conv_shift_f32`] (kernel rows, then columns), starting
//! from `+0.0`, and every product is the exact one, so the result is
//! bit-identical to `scalar`, not just within the float bound; but for
//! stride 1 ([`flat`]) padded taps add a zero rather than being skipped,
//! which can flip the sign of an output that is itself a zero. A run holding a value the fast path would get wrong (a
//! subnormal, or an exponent that overflows with the weight's, infinities
//! and NaNs included) is added by [`crate::fexp::mul_pow2`] instead.

// Only the x86-64 and aarch64 kernels instantiate the bodies.
#![cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]

use crate::depthwise::valid_cols;
use crate::scalar::Affine;
use crate::{Conv2dGeom, PackedRows};

/// Output columns accumulated at once (a stack buffer of `f32`).
const CHUNK: usize = 256;

/// Most taps per channel whose decoded weights stay on the stack; larger
/// kernels run [`crate::scalar::conv_shift_f32`].
const MAX_TAPS: usize = 64;

/// Widest input row of a layer strided along x (its column phases are a
/// stack buffer); wider ones run [`crate::scalar::conv_shift_f32`].
const MAX_W: usize = 4096;

/// The exponent field of an `f32`.
const EXP: u32 = 0x7f80_0000;
/// Mantissa bits of an `f32`.
const MANT: u32 = 0x007f_ffff;

/// One tap along a run: `acc[i] += src[i] * (±2^p)` by exponent add for
/// every `i < acc.len()`, or, when some value of the run needs the exact
/// path (subnormal input, or `e + p >= 255`: overflow, infinity, NaN),
/// nothing and `false`. `src` holds at least `acc.len()` values.
#[inline(always)]
pub(crate) fn tap(acc: &mut [f32], src: &[f32], neg: bool, p: u32) -> bool {
    let (sgn, pe) = ((neg as u32) << 31, p << 23);
    let src = &src[..acc.len()];
    // Two passes over the run, so the add loop has no exit: the check is
    // an OR-reduction the compiler vectorizes as well.
    let bad = src.iter().fold(false, |a, v| {
        let b = v.to_bits();
        let e = (b & EXP) >> 23;
        a | ((e == 0) & (b & MANT != 0)) | (e + p >= 255)
    });
    if bad {
        return false;
    }
    for (a, v) in acc.iter_mut().zip(src) {
        let b = v.to_bits();
        // Zero stays a zero (its sign flipped by the weight's).
        let m = if b & !(1 << 31) != 0 { pe } else { 0 };
        *a += f32::from_bits((b ^ sgn).wrapping_add(m));
    }
    true
}

/// The depthwise conv of channels `oc0 ..` of `g` (every group one input
/// and one output channel) with `run` as [`tap`] compiled for an ISA.
/// Same contract as [`crate::scalar::conv_shift_f32`], bit-identical.
#[inline(always)]
pub(crate) fn fexp_f32(
    g: &Conv2dGeom,
    x: &[f32],
    w: &PackedRows,
    oc0: usize,
    ep: &[Affine],
    out: &mut [f32],
    run: impl Fn(&mut [f32], &[f32], bool, u32) -> bool,
) {
    assert!(
        crate::depthwise::applies(g),
        "depthwise kernel on a non-depthwise layer"
    );
    crate::dispatch::check_call(g, x.len(), w.k(), w.rows(), oc0, ep.len(), out.len());
    let taps = g.kh * g.kw;
    if taps > MAX_TAPS || (g.stride[1] > 1 && g.w > MAX_W) {
        return crate::scalar::conv_shift_f32(g, x, w, oc0, ep, out);
    }
    let (rows, pitch) = phase_dims(g);
    if g.stride[0] * g.stride[1] * rows * pitch <= FLAT {
        return flat(g, x, w, oc0, ep, out, run);
    }
    let (oh, ow, bits) = (g.out_h(), g.out_w(), w.bits());
    let (sy, sx) = (g.stride[0], g.stride[1]);
    let (dy, dx) = (g.dilation[0], g.dilation[1]);
    let (pt, pl) = (g.pads[0] as isize, g.pads[1] as isize);
    let plane = g.h * g.w;
    let mut wt = [(false, 0u32); MAX_TAPS];
    let mut acc = [0f32; CHUNK];
    let mut phases = [0f32; MAX_W];
    for r in 0..w.rows() {
        // One input channel per group: the output channel's own.
        let xc = &x[(oc0 + r) * plane..(oc0 + r + 1) * plane];
        let row = w.row(r);
        for (ki, t) in wt[..taps].iter_mut().enumerate() {
            *t = bits.decode(crate::codes::code_at(row, bits, ki));
        }
        for oy in 0..oh {
            let orow = &mut out[(r * oh + oy) * ow..(r * oh + oy + 1) * ow];
            let mut c0 = 0;
            while c0 < ow {
                let c1 = ow.min(c0 + CHUNK);
                let acc = &mut acc[..c1 - c0];
                acc.fill(0.0);
                for ky in 0..g.kh {
                    let iy = (oy * sy + ky * dy) as isize - pt;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let xr = &xc[iy as usize * g.w..(iy as usize + 1) * g.w];
                    // Strided columns: the row split into its column
                    // phases once, so every tap reads a contiguous run.
                    let xr: &[f32] = if sx == 1 {
                        xr
                    } else {
                        let mut at = 0;
                        for ph in 0..sx {
                            for &v in xr.iter().skip(ph).step_by(sx) {
                                phases[at] = v;
                                at += 1;
                            }
                        }
                        &phases[..g.w]
                    };
                    for kx in 0..g.kw {
                        let off = (kx * dx) as isize - pl;
                        let (lo, hi) = valid_cols(off, sx, g.w, c0, c1);
                        if lo == hi {
                            continue;
                        }
                        let (neg, p) = wt[ky * g.kw + kx];
                        // Input column of output column lo, inside the row
                        // (valid_cols), as are those up to hi - 1; in the
                        // phase split, its phase's run from there.
                        let ix = (lo as isize * sx as isize + off) as usize;
                        let start = if sx == 1 {
                            ix
                        } else {
                            let ph = ix % sx;
                            // Phase ph holds columns ph, ph + sx, ...: it
                            // starts after the ceil((w - q) / sx) columns
                            // of each phase q < ph.
                            (0..ph).map(|q| (g.w - q).div_ceil(sx)).sum::<usize>() + ix / sx
                        };
                        let src = &xr[start..];
                        let a = &mut acc[lo - c0..hi - c0];
                        if !run(a, src, neg, p) {
                            for (a, &v) in a.iter_mut().zip(src) {
                                *a += crate::fexp::mul_pow2(v, neg, p);
                            }
                        }
                    }
                }
                for (o, &a) in orow[c0..c1].iter_mut().zip(acc.iter()) {
                    *o = ep[r].apply(a);
                }
                c0 = c1;
            }
        }
    }
}

/// Floats of the zero-padded copy of a channel in [`flat`] (64 KiB: a
/// 112x112 plane with a 3x3 kernel's padding fits).
const FLAT: usize = 16 * 1024;

/// Lanes of the flattened plane accumulated at once.
const FLAT_CHUNK: usize = 1024;

/// [`fexp_f32`] on a flattened plane: each channel is copied into a
/// zero-padded plane split into its `sy * sx` stride phases (phase
/// `(a, b)` holds padded rows `a, a + sy, ...` and columns `b, b + sx,
/// ...`), all of row pitch `P`. Output pixel `(oy, ox)` is then lane
/// `q = oy * P + ox` of every phase, and tap `(ky, kx)` reads phase
/// `(ky dy mod sy, kx dx mod sx)` at `q + (ky dy / sy) P + kx dx / sx`:
/// one contiguous run covers every output row at once (the lanes
/// `ox >= out_w` of each row are computed and dropped), as
/// [`crate::depthwise`] does for int8. With a call per tap and output
/// row instead, 7x7 and 14x14 planes ran 0.3-2 G MACs/s: the calls cost
/// more than the adds.
///
/// The padded taps add `±0.0` instead of being skipped: a sum is
/// unchanged by that unless it is itself a zero, whose sign may then
/// differ from `scalar`'s. Every other output is bit-identical.
#[inline(always)]
fn flat(
    g: &Conv2dGeom,
    x: &[f32],
    w: &PackedRows,
    oc0: usize,
    ep: &[Affine],
    out: &mut [f32],
    run: impl Fn(&mut [f32], &[f32], bool, u32) -> bool,
) {
    let (oh, ow, bits) = (g.out_h(), g.out_w(), w.bits());
    let (sy, sx) = (g.stride[0], g.stride[1]);
    let (dy, dx) = (g.dilation[0], g.dilation[1]);
    let (pt, pl) = (g.pads[0], g.pads[1]);
    let (rows, pitch) = phase_dims(g);
    let phase = rows * pitch;
    let plane = g.h * g.w;
    // Lanes up to the last output pixel; every tap's read stays within
    // its phase (the last kept lane reads a padded row and column that
    // exist, and lanes stop there).
    let lanes = (oh - 1) * pitch + ow;
    let taps = g.kh * g.kw;
    let mut wt = [(false, 0u32, 0usize); MAX_TAPS];
    let mut buf = [0f32; FLAT];
    let mut acc = [0f32; FLAT_CHUNK];
    for r in 0..w.rows() {
        let xc = &x[(oc0 + r) * plane..(oc0 + r + 1) * plane];
        let row = w.row(r);
        for (ki, t) in wt[..taps].iter_mut().enumerate() {
            let (neg, p) = bits.decode(crate::codes::code_at(row, bits, ki));
            let (ry, rx) = ((ki / g.kw) * dy, (ki % g.kw) * dx);
            let ph = (ry % sy) * sx + rx % sx;
            *t = (neg, p, ph * phase + (ry / sy) * pitch + rx / sx);
        }
        // The phase split of the padded copy: the border stays zero from
        // the start (the image overwrites the same places every channel).
        for (iy, src) in xc.chunks_exact(g.w).enumerate() {
            let py = pt + iy;
            let base = (py % sy) * sx * phase + (py / sy) * pitch;
            if sx == 1 {
                buf[base + pl..base + pl + g.w].copy_from_slice(src);
                continue;
            }
            for b in 0..sx {
                // The first image column in phase b: (pl + ix) % sx == b.
                let first = (b + sx - pl % sx) % sx;
                let j0 = (pl + first) / sx;
                let dst = &mut buf[base + b * phase + j0..];
                for (d, &v) in dst.iter_mut().zip(src.iter().skip(first).step_by(sx)) {
                    *d = v;
                }
            }
        }
        let mut q0 = 0;
        while q0 < lanes {
            let q1 = lanes.min(q0 + FLAT_CHUNK);
            let acc = &mut acc[..q1 - q0];
            acc.fill(0.0);
            for &(neg, p, off) in &wt[..taps] {
                let src = &buf[q0 + off..q1 + off];
                if !run(acc, src, neg, p) {
                    for (a, &v) in acc.iter_mut().zip(src) {
                        *a += crate::fexp::mul_pow2(v, neg, p);
                    }
                }
            }
            // The kept lanes: the output rows' first out_w columns.
            let mut oy = q0 / pitch;
            while oy * pitch < q1 {
                let (a, b) = ((oy * pitch).max(q0), (oy * pitch + ow).min(q1));
                if a < b {
                    let o = &mut out[(r * oh + oy) * ow + (a - oy * pitch)..][..b - a];
                    for (o, &v) in o.iter_mut().zip(&acc[a - q0..b - q0]) {
                        *o = ep[r].apply(v);
                    }
                }
                oy += 1;
            }
            q0 = q1;
        }
    }
}

/// Rows and pitch of each stride phase of `g`'s padded input in [`flat`].
fn phase_dims(g: &Conv2dGeom) -> (usize, usize) {
    let rows = (g.h + g.pads[0] + g.pads[2]).div_ceil(g.stride[0]);
    let pitch = (g.w + g.pads[1] + g.pads[3]).div_ceil(g.stride[1]);
    (rows, pitch)
}
