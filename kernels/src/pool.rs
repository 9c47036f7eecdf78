//! Int8 max pooling vectorized along the output row.
//!
//! [`crate::scalar::maxpool`] visits one window at a time (ResNet-18's
//! 3x3 stride-2 pool took 5% of the network). Here, per output row, each
//! tap `(ky, kx)` runs across all output columns whose windows lie inside
//! the row horizontally: `acc[ox] = max(acc[ox], x[iy][ox * s + off])`, a
//! loop the compiler vectorizes (contiguous for stride 1, a de-interleave
//! for stride 2). Integer max is associative and commutative, so the
//! result equals the scalar reference bit for bit whatever the order; the
//! few border columns use the reference's own window walk. Portable Rust,
//! no `unsafe`.

use crate::scalar::PoolGeom;

/// Output columns accumulated at once (a stack buffer).
const CHUNK: usize = 256;

/// Max pooling of int8 planes: equal to
/// [`crate::scalar::maxpool`]`(g, x, i8::MIN, out)`.
pub fn maxpool_i8(g: &PoolGeom, x: &[i8], out: &mut [i8]) {
    assert_eq!(x.len(), g.in_len());
    assert_eq!(out.len(), g.out_len());
    if g.kh == 0 || g.kw == 0 || g.stride[1] == 0 {
        return crate::scalar::maxpool(g, x, i8::MIN, out);
    }
    let (sx, dx) = (g.stride[1], g.dilation[1]);
    let span_x = (g.kw - 1) * dx;
    // Columns whose every tap lies inside the input: `ox * sx >= pads[1]`
    // and `ox * sx + span_x < w + pads[1]`.
    let lo = g.pads[1].div_ceil(sx).min(g.out_w);
    let hi = if g.w + g.pads[1] > span_x {
        (g.w + g.pads[1] - span_x).div_ceil(sx).min(g.out_w)
    } else {
        0
    }
    .max(lo);
    let mut acc = [i8::MIN; CHUNK];
    for c in 0..g.c {
        let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for oy in 0..g.out_h {
            let orow = &mut out[(c * g.out_h + oy) * g.out_w..][..g.out_w];
            for ox in (0..lo).chain(hi..g.out_w) {
                orow[ox] = g.window_max(c, oy, ox, x);
            }
            let mut x0 = lo;
            while x0 < hi {
                let x1 = hi.min(x0 + CHUNK);
                let a = &mut acc[..x1 - x0];
                a.fill(i8::MIN);
                for ky in 0..g.kh {
                    let iy = (oy * g.stride[0] + ky * g.dilation[0]) as isize - g.pads[0] as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let row = &plane[iy as usize * g.w..][..g.w];
                    for kx in 0..g.kw {
                        // In bounds for every column of `lo .. hi`.
                        let start = x0 * sx + kx * dx - g.pads[1];
                        max_strided(a, &row[start..], sx);
                    }
                }
                orow[x0..x1].copy_from_slice(a);
                x0 = x1;
            }
        }
    }
}

/// `a[i] = max(a[i], xs[i * s])`, with the strides pooling uses written
/// so that the compiler vectorizes them.
#[inline(always)]
fn max_strided(a: &mut [i8], xs: &[i8], s: usize) {
    match s {
        1 => {
            let n = a.len();
            for (v, &x) in a.iter_mut().zip(&xs[..n]) {
                *v = (*v).max(x);
            }
        }
        2 => {
            // The last column's pair may end past the row: its tap is the
            // pair's first element, which is in bounds.
            let n = a.len();
            let (body, last) = a.split_at_mut(n - 1);
            for (v, p) in body.iter_mut().zip(xs.chunks_exact(2)) {
                *v = (*v).max(p[0]);
            }
            last[0] = last[0].max(xs[2 * (n - 1)]);
        }
        _ => {
            for (i, v) in a.iter_mut().enumerate() {
                *v = (*v).max(xs[i * s]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(g: PoolGeom, seed: u64) {
        let mut r = seed | 1;
        let x: Vec<i8> = (0..g.in_len())
            .map(|_| {
                r ^= r << 13;
                r ^= r >> 7;
                r ^= r << 17;
                r as i8
            })
            .collect();
        let (mut want, mut got) = (vec![0i8; g.out_len()], vec![0i8; g.out_len()]);
        crate::scalar::maxpool(&g, &x, i8::MIN, &mut want);
        maxpool_i8(&g, &x, &mut got);
        assert_eq!(got, want, "{g:?}");
    }

    /// Every combination of small windows, strides, dilations, pads
    /// (including pads wider than the window, whose border windows are
    /// empty) and `ceil_mode` outputs past the padded input, on widths
    /// around the vector lengths and past [`CHUNK`].
    #[test]
    fn equals_scalar() {
        let mut seed = 1;
        for &(h, w) in &[(1, 1), (5, 7), (9, 33), (4, 300), (3, 600)] {
            for kh in 1..4 {
                for kw in 1..4 {
                    for s in 1..4 {
                        for d in 1..3 {
                            for p in [0, 1, 3] {
                                let pads = [p, p, p.min(1), (p + 1) % 3];
                                let span = |k: usize| (k - 1) * d + 1;
                                let out = |n: usize, k: usize, lo: usize, hi: usize| {
                                    (n + lo + hi).saturating_sub(span(k)) / s + 1
                                };
                                let (oh, ow) =
                                    (out(h, kh, pads[0], pads[2]), out(w, kw, pads[1], pads[3]));
                                for extra in 0..2 {
                                    let g = PoolGeom {
                                        c: 2,
                                        h,
                                        w,
                                        kh,
                                        kw,
                                        stride: [s, s],
                                        pads,
                                        dilation: [d, d],
                                        out_h: oh + extra,
                                        out_w: ow + extra,
                                        count_include_pad: false,
                                    };
                                    seed += 1;
                                    check(g, seed);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
