//! Int8 max pooling, vectorized along the row, for every ISA level.
//!
//! [`crate::scalar::maxpool`] visits one window at a time (ResNet-18's
//! 3x3 stride-2 pool took 5% of the network). Here the window max is
//! taken in two passes per output row:
//! 1. vertical: `v[p] = max over ky of x[iy][p - pad]` over the padded
//!    input columns the row's windows cover (contiguous, no shuffles);
//! 2. horizontal: `out[ox] = max over kx of v[ox * s + kx * d]`, once per
//!    output row rather than once per kernel row. The common windows
//!    (width 2 or 3, stride 1 or 2) are one fused pass; stride 2 takes the
//!    3-tap max of every column and keeps the even ones, which compiles to
//!    a truncating pack instead of a byte de-interleave.
//!
//! Padding and `ceil_mode` columns past the input hold `i8::MIN` in `v`,
//! the identity of `max` and the reference's value for a window with no
//! in-bounds tap, so border windows need no special case. Integer max is
//! associative and commutative, so the result equals the reference bit for
//! bit whatever the order.
//!
//! Rows are short (56 to 112 columns in ResNet-18), too short for the
//! compiler's vectorized loops, whose scalar remainders took as long as
//! their vector bodies. So every pass runs in fixed-width blocks (`Pass`,
//! `run`) that compile to whole vectors, the last block overlapping its
//! predecessor instead of being shorter. The body is compiled once per
//! x86-64 level (without AVX2 there is not even a byte max: SSE2 lacks
//! `pmaxsb`); portable Rust, no `unsafe` in the loops.

use crate::dispatch::{self, Isa};
use crate::scalar::PoolGeom;

/// Padded input columns one vertical pass holds (a stack buffer). Rows
/// wider than this are done in column chunks; a window wider than this
/// (a huge dilation) is done one window at a time.
const COLS: usize = 512;

/// Max pooling of int8 planes: equal to
/// [`crate::scalar::maxpool`]`(g, x, i8::MIN, out)`, at the level
/// [`dispatch::isa`] chooses.
pub fn maxpool_i8(g: &PoolGeom, x: &[i8], out: &mut [i8]) {
    maxpool_i8_at(dispatch::isa(), g, x, out)
}

/// [`maxpool_i8`] built for level `isa` (levels without their own build,
/// such as `scalar` or `neon`, run the portable one). Panics if the CPU
/// lacks `isa`.
pub fn maxpool_i8_at(isa: Isa, g: &PoolGeom, x: &[i8], out: &mut [i8]) {
    assert_eq!(x.len(), g.in_len());
    assert_eq!(out.len(), g.out_len());
    assert!(isa.available(), "maxpool: CPU lacks {}", isa.name());
    if g.kh == 0 || g.kw == 0 || g.stride[1] == 0 {
        return crate::scalar::maxpool(g, x, i8::MIN, out);
    }
    if (g.kw - 1) * g.dilation[1] + 2 > COLS {
        // One window (and the slack column of `pool_body`) does not fit
        // the buffer.
        for c in 0..g.c {
            for oy in 0..g.out_h {
                for ox in 0..g.out_w {
                    out[(c * g.out_h + oy) * g.out_w + ox] = g.window_max(c, oy, ox, x);
                }
            }
        }
        return;
    }
    match isa {
        // SAFETY: the CPU has the level (asserted above), which implies
        // the wrapper's target features.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::avx512(g, x, out) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::AvxVnni => unsafe { x86::avx2(g, x, out) },
        _ => pool_body(g, x, out),
    }
}

/// Int8 average pooling: equal to [`crate::scalar::avgpool_i8`]. Global
/// pooling (one unpadded window over the whole plane, the head of ResNet
/// and MobileNet) sums each channel as one contiguous run, which the
/// compiler vectorizes; the reference visits the window tap by tap
/// through a closure, 33 us for ResNet-18's 512 x 7 x 7 head. The sums
/// are the same integers, so the results are equal bit for bit. Other
/// windows run the reference.
pub fn avgpool_i8(g: &PoolGeom, x: &[i8], out: &mut [i8]) {
    let plane = g.h * g.w;
    let global =
        g.out_h == 1 && g.out_w == 1 && (g.kh, g.kw) == (g.h, g.w) && g.pads == [0; 4] && plane > 0;
    if !global {
        return crate::scalar::avgpool_i8(g, x, out);
    }
    assert_eq!(x.len(), g.in_len());
    assert_eq!(out.len(), g.out_len());
    for (o, x) in out.iter_mut().zip(x.chunks_exact(plane)) {
        // Wrapping like the reference's release build; a plane of 2^24
        // int8 values cannot overflow.
        let s = x.iter().fold(0i32, |s, &v| s.wrapping_add(v as i32));
        *o = crate::scalar::div_round(s, plane as i32).clamp(-128, 127) as i8;
    }
}

/// The body compiled for each x86-64 level.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use crate::scalar::PoolGeom;

    #[target_feature(enable = "avx2")]
    pub(super) fn avx2(g: &PoolGeom, x: &[i8], out: &mut [i8]) {
        super::pool_body(g, x, out)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) fn avx512(g: &PoolGeom, x: &[i8], out: &mut [i8]) {
        super::pool_body(g, x, out)
    }
}

/// [`maxpool_i8`] for `kh, kw, stride[1] >= 1` and windows at most
/// `COLS - 1` wide; `#[inline(always)]` (as are its helpers) so that each
/// per-ISA wrapper compiles it with its own features.
#[inline(always)]
fn pool_body(g: &PoolGeom, x: &[i8], out: &mut [i8]) {
    let (sx, dx) = (g.stride[1], g.dilation[1]);
    let span_x = (g.kw - 1) * dx;
    // Output columns per chunk: their windows cover
    // `(n - 1) * sx + span_x + 1` padded columns, plus one slack column
    // that the fused stride-2 pass reads (and ignores).
    let per_chunk = (COLS - 2 - span_x) / sx + 1;
    let v_len = |n: usize| (n - 1) * sx + span_x + 2;
    // Software-pipelined: the row pass of a chunk runs after the column
    // pass of the next one, from the other buffer. Reading `v` right
    // after writing it stalled on store forwarding (the row pass's loads
    // straddle two of the column pass's stores; a third of the time);
    // the column pass in between gives those stores time to reach the
    // cache.
    let [mut v0, mut v1] = [[i8::MIN; COLS]; 2];
    // The chunk waiting for its row pass: output offset, columns, buffer.
    let mut pending: Option<(usize, usize, bool)> = None;
    let mut flip = false;
    for c in 0..g.c {
        let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for oy in 0..g.out_h {
            let row_at = (c * g.out_h + oy) * g.out_w;
            let mut x0 = 0;
            while x0 < g.out_w {
                let n = per_chunk.min(g.out_w - x0);
                let (cur, prev) = if flip { (&mut v1, &v0) } else { (&mut v0, &v1) };
                // Padded column `x0 * sx` is input column `x0 * sx - pads[1]`.
                let start = (x0 * sx) as isize - g.pads[1] as isize;
                column_max(g, plane, oy, start, &mut cur[..v_len(n)]);
                if let Some((at, m, _)) = pending {
                    row_max(&prev[..v_len(m)], sx, dx, g.kw, &mut out[at..at + m]);
                }
                pending = Some((row_at + x0, n, flip));
                flip = !flip;
                x0 += n;
            }
        }
    }
    if let Some((at, m, in_v1)) = pending {
        let v = if in_v1 { &v1 } else { &v0 };
        row_max(&v[..v_len(m)], sx, dx, g.kw, &mut out[at..at + m]);
    }
}

/// `v[j] = max over the in-bounds kernel rows of output row `oy` of
/// `plane[iy][start + j]`, `i8::MIN` where the column is outside the input
/// or no kernel row is inside it.
#[inline(always)]
fn column_max(g: &PoolGeom, plane: &[i8], oy: usize, start: isize, v: &mut [i8]) {
    let w = g.w as isize;
    let i0 = start.clamp(0, w);
    let i1 = (start + v.len() as isize).clamp(0, w).max(i0);
    let (a, b) = ((i0 - start) as usize, (i1 - start) as usize);
    let (i0, i1) = (i0 as usize, i1 as usize);
    v[..a].fill(i8::MIN);
    v[b..].fill(i8::MIN);
    let v = &mut v[a..b];
    let mut rows = (0..g.kh).filter_map(|ky| {
        let iy = (oy * g.stride[0] + ky * g.dilation[0]) as isize - g.pads[0] as isize;
        (iy >= 0 && iy < g.h as isize).then(|| &plane[iy as usize * g.w..][i0..i1])
    });
    // Up to three rows in one pass that only reads them: a pass that
    // reads back the `v` it writes stalls on store forwarding where its
    // overlapping last block straddles two earlier stores (it took 40% of
    // the time). More rows (kh > 3) are folded in afterwards.
    match (rows.next(), rows.next(), rows.next()) {
        (None, _, _) => v.fill(i8::MIN),
        (Some(r), None, _) => v.copy_from_slice(r),
        (Some(a), Some(b), None) => run(&mut MaxOf { o: v, rows: [a, b] }),
        (Some(a), Some(b), Some(c)) => {
            run(&mut MaxOf {
                o: &mut *v,
                rows: [a, b, c],
            });
            for a in rows {
                run(&mut MaxInto { o: &mut *v, a });
            }
        }
    }
}

/// `o[i] = max over kx < kw of v[i * s + kx * d]`; `v` holds
/// `(o.len() - 1) * s + (kw - 1) * d + 2` columns (one of slack).
#[inline(always)]
fn row_max(v: &[i8], s: usize, d: usize, kw: usize, o: &mut [i8]) {
    match (s, d, kw) {
        (2, 1, 3) => run(&mut Stride2::<3> { o, v }),
        (2, 1, 2) => run(&mut Stride2::<2> { o, v }),
        (1, 1, 3) => run(&mut Stride1::<3> { o, v }),
        (1, 1, 2) => run(&mut Stride1::<2> { o, v }),
        _ => {
            o.fill(i8::MIN);
            for kx in 0..kw {
                max_strided(o, &v[kx * d..], s);
            }
        }
    }
}

/// One pass over the columns of an output slice, computed a fixed-width
/// block at a time. A block's outputs must depend only on the pass's
/// inputs (or be `max` with them, which is idempotent), so that computing
/// a column twice, as the overlapping last block does, changes nothing.
trait Pass {
    /// Output columns.
    fn len(&self) -> usize;
    /// Compute output columns `j .. j + L`.
    fn block<const L: usize>(&mut self, j: usize);
}

/// Run `p` over all its columns in blocks of 64, else 32, else 16, else 1 (rows
/// narrower than 16 columns).
#[inline(always)]
fn run<P: Pass>(p: &mut P) {
    #[inline(always)]
    fn go<const L: usize, P: Pass>(p: &mut P) {
        let n = p.len();
        let mut j = 0;
        while j < n {
            p.block::<L>(j.min(n - L));
            j += L;
        }
    }
    match p.len() {
        n if n >= 64 => go::<64, P>(p),
        n if n >= 32 => go::<32, P>(p),
        n if n >= 16 => go::<16, P>(p),
        _ => go::<1, P>(p),
    }
}

/// `o = max of rows` (`R >= 1`).
struct MaxOf<'a, const R: usize> {
    o: &'a mut [i8],
    rows: [&'a [i8]; R],
}

impl<const R: usize> Pass for MaxOf<'_, R> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.o.len()
    }
    #[inline(always)]
    fn block<const L: usize>(&mut self, j: usize) {
        let o: &mut [i8; L] = (&mut self.o[j..j + L]).try_into().unwrap();
        let r: [&[i8; L]; R] = self.rows.map(|r| r[j..j + L].try_into().unwrap());
        for k in 0..L {
            o[k] = r[0][k];
            for r in &r[1..] {
                o[k] = o[k].max(r[k]);
            }
        }
    }
}

/// `o = max(o, a)`.
struct MaxInto<'a> {
    o: &'a mut [i8],
    a: &'a [i8],
}

impl Pass for MaxInto<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.o.len()
    }
    #[inline(always)]
    fn block<const L: usize>(&mut self, j: usize) {
        let o: &mut [i8; L] = (&mut self.o[j..j + L]).try_into().unwrap();
        let a: &[i8; L] = self.a[j..j + L].try_into().unwrap();
        for k in 0..L {
            o[k] = o[k].max(a[k]);
        }
    }
}

/// `o[i] = max(v[2i], v[2i + 1] (, v[2i + 2]))`: width `K` (2 or 3),
/// stride 2.
struct Stride2<'a, const K: usize> {
    o: &'a mut [i8],
    v: &'a [i8],
}

impl<const K: usize> Pass for Stride2<'_, K> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.o.len()
    }
    #[inline(always)]
    fn block<const L: usize>(&mut self, j: usize) {
        let o: &mut [i8; L] = (&mut self.o[j..j + L]).try_into().unwrap();
        // Every column's window max, odd ones too: contiguous loads, where
        // reading only the even windows' taps compiles to byte shuffles
        // and a scalar tail. Needs `2L + K - 1` columns (for `K = 3` the
        // last block's final one is `pool_body`'s slack column).
        let p = &self.v[2 * j..][..2 * L + K - 1];
        let mut m = [[0i8; L]; 2];
        let m = m.as_flattened_mut();
        for i in 0..2 * L {
            m[i] = if K == 3 {
                p[i].max(p[i + 1]).max(p[i + 2])
            } else {
                p[i].max(p[i + 1])
            };
        }
        // Keep the even ones: a truncating pack of 16-bit lanes.
        for k in 0..L {
            o[k] = m[2 * k];
        }
    }
}

/// `o[i] = max(v[i], v[i + 1] (, v[i + 2]))`: width `K` (2 or 3),
/// stride 1.
struct Stride1<'a, const K: usize> {
    o: &'a mut [i8],
    v: &'a [i8],
}

impl<const K: usize> Pass for Stride1<'_, K> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.o.len()
    }
    #[inline(always)]
    fn block<const L: usize>(&mut self, j: usize) {
        let o: &mut [i8; L] = (&mut self.o[j..j + L]).try_into().unwrap();
        let p = &self.v[j..][..L + K - 1];
        for k in 0..L {
            o[k] = if K == 3 {
                p[k].max(p[k + 1]).max(p[k + 2])
            } else {
                p[k].max(p[k + 1])
            };
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
        let mut want = vec![0i8; g.out_len()];
        crate::scalar::maxpool(&g, &x, i8::MIN, &mut want);
        // Every build this CPU runs (portable, AVX2, AVX-512), and the
        // dispatching entry point.
        for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
            let mut got = vec![0x55i8; g.out_len()];
            maxpool_i8_at(isa, &g, &x, &mut got);
            assert_eq!(got, want, "{} {g:?}", isa.name());
        }
        let mut got = vec![0x55i8; g.out_len()];
        maxpool_i8(&g, &x, &mut got);
        assert_eq!(got, want, "{g:?}");
    }

    fn geom(h: usize, w: usize, k: [usize; 2], s: usize, d: [usize; 2], p: usize) -> PoolGeom {
        let span = |k: usize, d: usize| (k - 1) * d + 1;
        PoolGeom {
            c: 3,
            h,
            w,
            kh: k[0],
            kw: k[1],
            stride: [s, s],
            pads: [p; 4],
            dilation: d,
            out_h: (h + 2 * p).saturating_sub(span(k[0], d[0])) / s + 1,
            out_w: (w + 2 * p).saturating_sub(span(k[1], d[1])) / s + 1,
            count_include_pad: false,
        }
    }

    /// Global average pools (and windows that look global but are not:
    /// padded, or smaller than the plane) against the reference.
    #[test]
    fn global_avgpool_equals_scalar() {
        for (h, w, p, k) in [
            (7, 7, 0, 7),
            (1, 1, 0, 1),
            (13, 11, 0, 13),
            (7, 7, 1, 9),
            (8, 8, 0, 7),
        ] {
            let mut g = geom(h, w, [k, k.min(w + 2 * p)], 1, [1, 1], p);
            g.c = 37;
            if (h, w) == (13, 11) {
                g.kw = 11;
                g.out_w = 1;
            }
            let x: Vec<i8> = (0..g.in_len())
                .map(|i| {
                    if i % 5 == 0 {
                        -128
                    } else {
                        (i * 37 % 256) as u8 as i8
                    }
                })
                .collect();
            let mut want = vec![0i8; g.out_len()];
            crate::scalar::avgpool_i8(&g, &x, &mut want);
            let mut got = vec![0x55i8; g.out_len()];
            avgpool_i8(&g, &x, &mut got);
            assert_eq!(got, want, "{g:?}");
        }
    }

    /// ResNet's stem pool (3x3, stride 2, pad 1: the fused row pass) on
    /// its own size and on odd and tiny ones, and the 2x2 stride-2 pool.
    #[test]
    fn resnet_pools_equal_scalar() {
        for (h, w) in [(112, 112), (111, 113), (1, 2), (2, 1), (3, 3), (7, 1030)] {
            check(geom(h, w, [3, 3], 2, [1, 1], 1), (h * w) as u64);
            check(geom(h, w, [2, 2], 2, [1, 1], 0), (h + w) as u64);
        }
    }

    /// Windows as wide as the column buffer (one output column per chunk)
    /// and wider (one window at a time).
    #[test]
    fn widest_windows_equal_scalar() {
        for (kw, d) in [(2, COLS - 1), (3, (COLS - 1) / 2), (3, COLS / 2), (2, COLS)] {
            for p in [0, 2] {
                check(
                    geom(3, COLS + 40, [2, kw], 1, [2, d], p),
                    (kw * d + p) as u64,
                );
            }
        }
    }

    /// Inputs of only `i8::MIN` and `i8::MAX` (the extremes) with padding.
    #[test]
    fn extreme_values_equal_scalar() {
        let g = geom(9, 70, [3, 3], 2, [1, 1], 1);
        for fill in [i8::MIN, i8::MAX] {
            let x = vec![fill; g.in_len()];
            let mut want = vec![0i8; g.out_len()];
            crate::scalar::maxpool(&g, &x, i8::MIN, &mut want);
            for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
                let mut got = vec![0i8; g.out_len()];
                maxpool_i8_at(isa, &g, &x, &mut got);
                assert_eq!(got, want, "{}", isa.name());
            }
        }
    }

    /// Every combination of small windows, strides, dilations, pads
    /// (including pads wider than the window, whose border windows are
    /// empty) and `ceil_mode` outputs past the padded input, on widths
    /// around the vector lengths and past [`COLS`].
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
