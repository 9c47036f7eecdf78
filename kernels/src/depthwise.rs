//! Direct depthwise convolution (one input channel per output channel),
//! vectorized along the output row instead of along `k`.
//!
//! The tiled driver ([`crate::dispatch`]'s `tile`) vectorizes over the `k`
//! weights of an output channel, which is right for dense layers but leaves
//! a depthwise 3x3 layer (k = 9) with one row per group, a 64-code padded
//! chunk and a full patch gather per 4 pixels: measured at 0.03 MAC/cycle
//! on AVX2, slower than `scalar`. Here each weight tap instead runs across a
//! whole output row: `acc[ox] += ±(x[iy][ox * s + off] << p)`, a loop with a
//! uniform shift count that the compiler turns into sign-extend, shift and
//! add (or subtract) vectors of the ISA it is instantiated for. No
//! multiply; the requantizing epilogue is the same [`Requant::apply`] as
//! `scalar`, so results are bit-identical (integer sums do not depend on
//! order).
//!
//! The bodies are `#[inline(always)]` so that the per-ISA wrappers
//! (`x86_64::avx2::dw`, `aarch64::neon::dw`) compile them with their
//! target features.

// Only the x86-64 and aarch64 kernels instantiate the bodies; elsewhere
// (Cortex-M) just `applies` is used, by the dispatcher.
#![cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]

use crate::{Conv2dGeom, PackedRows, Requant};

/// Output pixels accumulated at once (a stack buffer of `i32`).
const CHUNK: usize = 256;

/// Kernel widths whose valid column ranges are computed once per call.
const MAX_KW: usize = 16;

/// True when `g` is a depthwise layer these kernels compute: every group
/// has one input and one output channel.
pub const fn applies(g: &Conv2dGeom) -> bool {
    g.groups > 1 && g.c_in_g() == 1 && g.c_out_g() == 1
}

/// Output columns `ox` in `x0 .. x1` whose input column `ox * s + off`
/// lies in `0 .. w`.
#[inline(always)]
fn valid_cols(off: isize, s: usize, w: usize, x0: usize, x1: usize) -> (usize, usize) {
    let s = s as isize;
    let lo = if off >= 0 { 0 } else { (-off + s - 1) / s };
    let hi = if (w as isize) <= off {
        0
    } else {
        (w as isize - off + s - 1) / s
    };
    let (lo, hi) = ((lo as usize).max(x0), (hi as usize).min(x1));
    (lo, hi.max(lo))
}

/// Add `±(x << p)` of the input row `xs` (stride `s`) to `acc`.
/// `acc.len()` input elements are read starting at `xs[0]`.
#[inline(always)]
pub(crate) fn tap(acc: &mut [i32], xs: &[i8], s: usize, neg: bool, p: u32) {
    if s == 1 {
        let xs = &xs[..acc.len()];
        if neg {
            for (a, &v) in acc.iter_mut().zip(xs) {
                *a -= (v as i32) << p;
            }
        } else {
            for (a, &v) in acc.iter_mut().zip(xs) {
                *a += (v as i32) << p;
            }
        }
    } else if s == 2 {
        // Written as pairs so that the compiler vectorizes it (a plain
        // `step_by(2)` stayed scalar). The last pair may end past the row:
        // its tap is the pair's first element, which is in bounds.
        let n = acc.len();
        if n == 0 {
            return;
        }
        let (body, last) = acc.split_at_mut(n - 1);
        let pairs = xs.chunks_exact(2);
        if neg {
            for (a, v) in body.iter_mut().zip(pairs) {
                *a -= (v[0] as i32) << p;
            }
            last[0] -= (xs[2 * (n - 1)] as i32) << p;
        } else {
            for (a, v) in body.iter_mut().zip(pairs) {
                *a += (v[0] as i32) << p;
            }
            last[0] += (xs[2 * (n - 1)] as i32) << p;
        }
    } else {
        let xs = xs.iter().step_by(s);
        if neg {
            for (a, &v) in acc.iter_mut().zip(xs) {
                *a -= (v as i32) << p;
            }
        } else {
            for (a, &v) in acc.iter_mut().zip(xs) {
                *a += (v as i32) << p;
            }
        }
    }
}

/// Depthwise int8 conv with shift weights; same contract and output as
/// [`crate::scalar::conv_shift_i8`] for layers where [`applies`] holds.
/// `tap` is the instantiation of [`tap`] for the caller's ISA.
#[inline(always)]
pub(crate) fn shift_i8(
    g: &Conv2dGeom,
    x: &[i8],
    w: &PackedRows,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
    tap: impl Fn(&mut [i32], &[i8], usize, bool, u32),
) {
    assert!(applies(g), "not a depthwise layer");
    let n = w.rows();
    crate::dispatch::check_call(g, x.len(), w.k(), n, oc0, rq.len(), out.len());
    let (oh, ow) = (g.out_h(), g.out_w());
    let (h, wd) = (g.h, g.w);
    let bits = w.bits();
    let mut acc = [0i32; CHUNK];
    // Valid output columns of each kernel column (a division each: hoisted
    // out of the row loop, where it was a sixth of a 56-wide layer's time).
    let mut cols = [(0usize, 0usize); MAX_KW];
    for (kx, c) in cols.iter_mut().enumerate().take(g.kw) {
        let off = (kx * g.dilation[1]) as isize - g.pads[1] as isize;
        *c = valid_cols(off, g.stride[1], wd, 0, ow);
    }
    for r in 0..n {
        let c = oc0 + r;
        let plane = &x[c * h * wd..(c + 1) * h * wd];
        let row = w.row(r);
        let o = &mut out[r * oh * ow..(r + 1) * oh * ow];
        for oy in 0..oh {
            let mut x0 = 0;
            while x0 < ow {
                let x1 = ow.min(x0 + CHUNK);
                let a = &mut acc[..x1 - x0];
                a.fill(0);
                for ky in 0..g.kh {
                    let iy = (oy * g.stride[0] + ky * g.dilation[0]) as isize - g.pads[0] as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    let xrow = &plane[iy as usize * wd..(iy as usize + 1) * wd];
                    for kx in 0..g.kw {
                        let code = crate::codes::code_at(row, bits, ky * g.kw + kx);
                        let (neg, p) = bits.decode(code);
                        let off = (kx * g.dilation[1]) as isize - g.pads[1] as isize;
                        let (lo, hi) = match cols.get(kx) {
                            Some(&(lo, hi)) => (lo.clamp(x0, x1), hi.clamp(x0, x1)),
                            None => valid_cols(off, g.stride[1], wd, x0, x1),
                        };
                        if lo == hi {
                            continue;
                        }
                        let start = (lo * g.stride[1]) as isize + off;
                        tap(
                            &mut a[lo - x0..hi - x0],
                            &xrow[start as usize..],
                            g.stride[1],
                            neg,
                            p,
                        );
                    }
                }
                rq[r].apply_run(a, &mut o[oy * ow + x0..oy * ow + x1]);
                x0 = x1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::valid_cols;

    #[test]
    fn valid_columns_match_a_direct_scan() {
        for s in 1..4 {
            for w in 1..9 {
                for off in -5isize..6 {
                    for (x0, x1) in [(0, 12), (2, 7), (5, 5)] {
                        let want: Vec<usize> = (x0..x1)
                            .filter(|&ox| {
                                let ix = (ox * s) as isize + off;
                                ix >= 0 && ix < w as isize
                            })
                            .collect();
                        let (lo, hi) = valid_cols(off, s, w, x0, x1);
                        assert_eq!((lo..hi).collect::<Vec<_>>(), want, "s{s} w{w} off{off}");
                    }
                }
            }
        }
    }
}
