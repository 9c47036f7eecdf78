//! How a conv or linear layer is split across threads.
//!
//! Two splits, chosen per layer:
//!
//! - **By output rows** (spatial): each thread computes a band of output
//!   rows for every channel, as a smaller conv over its band of input rows
//!   (plus the kernel's halo, with the padding the band really has). Every
//!   SIMD kernel gathers each output pixel's patch once per call, so this
//!   split gathers each patch once in total. Bands run in per-thread
//!   scratch (the input band is copied in, the output band copied back),
//!   kept by the session so steady-state runs do not allocate.
//! - **By output channels**: each thread computes a channel range of the
//!   whole map, writing its own contiguous slice of NCHW. Every thread
//!   gathers every patch again, which is cheap only when a thread's range
//!   has many channels per patch: linear layers (one pixel) and small maps.
//!
//! Pooling splits by channels, elementwise ops by contiguous chunks.
//!
//! Measured on ResNet-18 int8 (2 threads against 1, `benches/peers/run.py`,
//! 2026-11-28): the channel split scaled 1.34x because the gather (a third
//! of the time) ran twice; the row split scales 1.73x, its conv layers
//! 1.7-2.2x each.
//!
//! Without `std` there are no worker threads ([`Threads`] is `()`): every
//! function here then runs its op on the calling thread.

// Without `std` only the single-thread fallbacks remain.
#![cfg_attr(not(feature = "std"), allow(dead_code, unused_variables))]

use crate::kernels::Conv2dGeom;
#[cfg(feature = "std")]
use alloc::vec::Vec;
#[cfg(feature = "std")]
use rayon::prelude::*;

/// Without `std`: no worker threads.
#[cfg(not(feature = "std"))]
pub(crate) type Threads = ();

/// A session's worker threads and the scratch their row bands use.
#[cfg(feature = "std")]
pub(crate) struct Threads {
    pub(crate) pool: rayon::ThreadPool,
    /// Input and output bands of every thread (grown, never shrunk).
    scratch: Vec<u64>,
}

#[cfg(feature = "std")]
impl Threads {
    /// A pool of `n` worker threads, with no scratch yet.
    pub(crate) fn new(n: usize) -> Result<Threads, rayon::ThreadPoolBuildError> {
        Ok(Threads {
            pool: rayon::ThreadPoolBuilder::new().num_threads(n).build()?,
            scratch: Vec::new(),
        })
    }
}

/// Elementwise and pooling ops below this many outputs run on the calling
/// thread: waking the pool costs more than it saves. At 2^16, ResNet-18's
/// and MobileNetV2's input quantize (150 K) ran 1.2-1.8x slower on 2
/// threads than on 1 in every run (ResNet-18 74 -> 93 us, MobileNetV2 67
/// -> 96 us), ResNet-18's residual adds (100-200 K) up to 1.6x.
const MIN_MACS: usize = 1 << 20;
/// Conv layers below this many MACs run on the calling thread: at the
/// pixel-lane GEMM's 130-160 G MACs/s such a layer takes under 30 us,
/// and waking the pool plus the band copies cost more than the second
/// thread saves (ResNet-20, whose layers are 2.4 M MACs, ran 1.6x slower
/// on 2 threads than on 1 with the old limit of 2^16).
const MIN_CONV_MACS: usize = 1 << 22;
/// Least channels per thread for the channel split: more, smaller chunks
/// measured slower (each gathers every patch again; ResNet-20's 16-channel
/// layers ran slower on 2 threads than on 1 with 4 chunks).
const MIN_SPLIT_ROWS: usize = 16;

/// The conv over output rows `oy0 .. oy1` of `g`, as a conv of its own:
/// its geometry and the input rows `iy0 .. iy1` it reads.
pub(crate) fn row_band(g: &Conv2dGeom, oy0: usize, oy1: usize) -> (Conv2dGeom, usize, usize) {
    debug_assert!(oy0 < oy1 && oy1 <= g.out_h());
    let (s, d, pt) = (g.stride[0], g.dilation[0], g.pads[0]);
    // First and one-past-last rows of the padded input the band reads.
    let a = oy0 * s;
    let e = (oy1 - 1) * s + (g.kh - 1) * d + 1;
    // The band's rows of top padding, image and bottom padding.
    let top = e.min(pt).saturating_sub(a);
    let lo = a.max(pt);
    let hi = e.min(pt + g.h).max(lo);
    let bottom = e.saturating_sub(a.max(pt + g.h));
    let (iy0, iy1) = ((lo - pt).min(g.h), (hi - pt).min(g.h));
    let mut band = *g;
    band.h = iy1 - iy0;
    band.pads[0] = top;
    band.pads[2] = bottom;
    (band, iy0, iy1)
}

/// Run `f(geom, x, oc0, n, out)` (a conv kernel call computing channels
/// `oc0 .. oc0 + n` into `out`, `n` planes of `geom`'s output) over the
/// whole layer, split across `threads` as the module docs describe.
pub(crate) fn par_conv<T: bytemuck::Pod + Send + Sync>(
    threads: Option<&mut Threads>,
    g: &Conv2dGeom,
    x: &[T],
    out: &mut [T],
    f: impl Fn(&Conv2dGeom, &[T], usize, usize, &mut [T]) + Sync,
) {
    match threads {
        #[cfg(feature = "std")]
        Some(th) if th.pool.current_num_threads() > 1 && g.macs() >= MIN_CONV_MACS => {
            split(th, g, x, out, f);
        }
        _ => f(g, x, 0, g.c_out, out),
    }
}

/// How [`split`] ran a layer.
#[cfg(feature = "std")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Split {
    Rows,
    Channels,
    None,
}

/// [`par_conv`] on the pool, whatever the layer's size.
#[cfg(feature = "std")]
fn split<T: bytemuck::Pod + Send + Sync>(
    th: &mut Threads,
    g: &Conv2dGeom,
    x: &[T],
    out: &mut [T],
    f: impl Fn(&Conv2dGeom, &[T], usize, usize, &mut [T]) + Sync,
) -> Split {
    let c = g.c_out;
    let t = th.pool.current_num_threads();
    let (out_h, out_w) = (g.out_h(), g.out_w());
    let plane = out_h * out_w;
    let band_rows = out_h.div_ceil(t);
    let bands = out_h.div_ceil(band_rows.max(1));
    let band = |b: usize| row_band(g, b * band_rows, out_h.min((b + 1) * band_rows));
    // Rows split evenly enough (at most an eighth idle), and every band
    // reads at least one input row: then the tallest band's input rows.
    let rows_ok = out_h >= t && (out_h % t == 0 || out_h >= 8 * t) && bands > 1;
    let tallest = (0..bands).try_fold(0, |m, b| {
        let (bg, _, _) = band(b);
        (bg.h > 0 && bg.validate().is_ok()).then_some(m.max(bg.h))
    });
    if let (true, Some(tallest)) = (rows_ok, tallest) {
        // Per band: the input band, then the output band.
        let in_max = g.c_in * g.w * tallest;
        let per = in_max + c * band_rows * out_w;
        let words = (bands * per * core::mem::size_of::<T>()).div_ceil(8);
        if th.scratch.len() < words {
            th.scratch.resize(words, 0);
        }
        let elems = bytemuck::cast_slice_mut::<u64, T>(&mut th.scratch[..words]);
        let scratch = &mut elems[..bands * per];
        th.pool.install(|| {
            scratch
                .par_chunks_mut(per)
                .enumerate()
                .for_each(|(b, buf)| {
                    let (oy0, oy1) = (b * band_rows, out_h.min((b + 1) * band_rows));
                    let (bg, iy0, iy1) = band(b);
                    let (xin, yout) = buf.split_at_mut(in_max);
                    let rows = iy1 - iy0;
                    let xin = &mut xin[..g.c_in * rows * g.w];
                    for (ch, dst) in xin.chunks_exact_mut(rows * g.w).enumerate() {
                        let at = (ch * g.h + iy0) * g.w;
                        dst.copy_from_slice(&x[at..at + rows * g.w]);
                    }
                    let bp = (oy1 - oy0) * out_w;
                    f(&bg, xin, 0, c, &mut yout[..c * bp]);
                });
            // Back into NCHW, a channel per task.
            let scratch = &*scratch;
            out.par_chunks_mut(plane).enumerate().for_each(|(ch, o)| {
                for b in 0..bands {
                    let (oy0, oy1) = (b * band_rows, out_h.min((b + 1) * band_rows));
                    let bp = (oy1 - oy0) * out_w;
                    let src = &scratch[b * per + in_max + ch * bp..][..bp];
                    o[oy0 * out_w..oy1 * out_w].copy_from_slice(src);
                }
            });
        });
        return Split::Rows;
    }
    if c >= 2 * MIN_SPLIT_ROWS {
        let per = c.div_ceil(t).max(MIN_SPLIT_ROWS);
        th.pool.install(|| {
            out.par_chunks_mut(per * plane)
                .enumerate()
                .for_each(|(j, o)| f(g, x, j * per, o.len() / plane.max(1), o));
        });
        return Split::Channels;
    }
    f(g, x, 0, c, out);
    Split::None
}

/// Run a per-channel op `f(channels, x, out)` (pooling: NCHW planes of
/// `in_plane` inputs and `out_plane` outputs) split by channel ranges when
/// the layer is big enough to pay for waking the pool.
pub(crate) fn par_planes<X: Sync, Y: Send>(
    threads: Option<&mut Threads>,
    c: usize,
    in_plane: usize,
    out_plane: usize,
    x: &[X],
    out: &mut [Y],
    f: impl Fn(usize, &[X], &mut [Y]) + Sync,
) {
    match threads {
        #[cfg(feature = "std")]
        Some(th)
            if th.pool.current_num_threads() > 1
                && c > 1
                && in_plane > 0
                && out_plane > 0
                && x.len() >= MIN_MACS / 4 =>
        {
            let per = c.div_ceil(th.pool.current_num_threads());
            th.pool.install(|| {
                out.par_chunks_mut(per * out_plane)
                    .zip(x.par_chunks(per * in_plane))
                    .for_each(|(o, x)| f(o.len() / out_plane, x, o));
            });
        }
        _ => f(c, x, out),
    }
}

/// Run an elementwise op `f(start, out_chunk)` (the chunk holds outputs
/// `start ..`) split into one contiguous chunk per thread when `out` is
/// big enough: the residual adds and the input quantize, which stayed on
/// one thread and were ~3% of ResNet-18's 2-thread time.
pub(crate) fn par_elementwise<Y: Send>(
    threads: Option<&mut Threads>,
    out: &mut [Y],
    f: impl Fn(usize, &mut [Y]) + Sync,
) {
    match threads {
        #[cfg(feature = "std")]
        Some(th) if th.pool.current_num_threads() > 1 && out.len() >= MIN_MACS => {
            let per = out.len().div_ceil(th.pool.current_num_threads());
            th.pool.install(|| {
                out.par_chunks_mut(per)
                    .enumerate()
                    .for_each(|(j, o)| f(j * per, o));
            });
        }
        _ => f(0, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::codes::pack;
    use crate::kernels::{dispatch, scalar, Bits, PackedRows, Requant};

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Both splits, on 2 and 3 threads, over random layers (depthwise,
    /// grouped, strided, padded, dilated, linear): the int8 output equals
    /// the single-call scalar reference bit for bit with the fastest
    /// kernel, and the float output of the scalar kernel is unchanged.
    #[test]
    fn split_layers_equal_one_call() {
        let mut seen = [0usize; 3];
        for t in [2, 3] {
            let mut th = Threads::new(t).unwrap();
            let mut r = Rng(0x9e37_79b9_7f4a_7c15 + t as u64);
            for case in 0..160 {
                let dw = case % 5 == 0;
                let g = if case % 11 == 3 {
                    Conv2dGeom::linear(1 + r.below(300), 1 + r.below(80))
                } else {
                    let (kh, kw) = (1 + r.below(4), 1 + r.below(4));
                    let d = 1 + r.below(2);
                    let cig = 1 + r.below(6);
                    let (groups, c_in, c_out) = if dw {
                        (cig, cig, cig * (1 + r.below(2)))
                    } else {
                        let gr = 1 + r.below(2);
                        (gr, cig * gr, (1 + r.below(40)) * gr)
                    };
                    let p = r.below(3);
                    Conv2dGeom {
                        c_in,
                        h: kh * d + r.below(30),
                        w: kw + r.below(12),
                        c_out,
                        kh,
                        kw,
                        stride: [1 + r.below(3), 1 + r.below(2)],
                        pads: [p, r.below(2), r.below(3), p.min(1)],
                        dilation: [d, 1],
                        groups,
                    }
                };
                if g.validate().is_err() {
                    continue;
                }
                let bits = Bits::new(2 + r.below(3) as u32).unwrap();
                let b = bits.get();
                let codes: Vec<u8> = (0..g.c_out * g.k())
                    .map(|_| (r.next() % (1 << b)) as u8)
                    .collect();
                let mut packed = vec![0u8; g.c_out * bits.row_bytes(g.k())];
                pack(&codes, bits, g.c_out, g.k(), &mut packed);
                let w = PackedRows::new(&packed, bits, g.c_out, g.k()).unwrap();
                let x: Vec<i8> = (0..g.in_len()).map(|_| r.next() as i8).collect();
                let rq: Vec<Requant> = (0..g.c_out)
                    .map(|c| Requant::from_real(1.0 / (1 << (c % 9)) as f64, 0.5, -128, 127))
                    .collect();
                let mut want = vec![0i8; g.out_len()];
                scalar::conv_shift_i8(&g, &x, &w, 0, &rq, &mut want);
                let mut got = vec![1i8; g.out_len()];
                let how = split(&mut th, &g, &x, &mut got, |g, x, oc0, n, o| {
                    dispatch::conv_shift_i8(g, x, &w.sub_rows(oc0, n), oc0, &rq[oc0..oc0 + n], o)
                });
                assert_eq!(got, want, "{g:?} on {t} threads, {how:?}");
                seen[how as usize] += 1;

                let xf: Vec<f32> = x.iter().map(|&v| v as f32 * 0.25).collect();
                let ep = vec![
                    scalar::Affine {
                        scale: 0.5,
                        bias: 0.25,
                        lo: f32::NEG_INFINITY,
                        hi: f32::INFINITY,
                    };
                    g.c_out
                ];
                let mut want = vec![0f32; g.out_len()];
                scalar::conv_shift_f32(&g, &xf, &w, 0, &ep, &mut want);
                let mut got = vec![1f32; g.out_len()];
                split(&mut th, &g, &xf, &mut got, |g, x, oc0, n, o| {
                    scalar::conv_shift_f32(g, x, &w.sub_rows(oc0, n), oc0, &ep[oc0..oc0 + n], o)
                });
                assert_eq!(got, want, "{g:?} float on {t} threads");
            }
        }
        assert!(seen.iter().all(|&n| n >= 10), "splits exercised: {seen:?}");
    }

    /// Row bands of stride-1 layers through the decoded-row kernels in
    /// both orders (tap-major where the layer has one, for the kernels that
    /// take it): a band's geometry has its own height and vertical padding,
    /// which the direct kernel's interleaved input band must follow.
    #[test]
    fn decoded_rows_split_equal_one_call() {
        use crate::kernels::dispatch::KernelFn;
        use crate::kernels::gemm::{self, DecodedRows, Fix, Order};
        let mut r = Rng(0x51ab_1e00);
        let mut th = Threads::new(2).unwrap();
        let mut ran = 0;
        for case in 0..40 {
            let (kh, kw, d) = (1 + r.below(3), 1 + r.below(3), 1 + r.below(2));
            let p = r.below(3);
            let g = Conv2dGeom {
                c_in: 2 + r.below(9),
                h: 8 + r.below(40),
                w: 5 + r.below(30),
                c_out: 4 + r.below(40),
                kh,
                kw,
                stride: [1, 1],
                pads: [p, r.below(2), (p + case) % 3, r.below(2)],
                dilation: [d, 1 + r.below(2)],
                groups: 1,
            };
            if g.validate().is_err() {
                continue;
            }
            let bits = Bits::new(4).unwrap();
            let codes: Vec<u8> = (0..g.c_out * g.k())
                .map(|_| (r.next() % 16) as u8)
                .collect();
            let mut packed = vec![0u8; g.c_out * bits.row_bytes(g.k())];
            pack(&codes, bits, g.c_out, g.k(), &mut packed);
            let w = PackedRows::new(&packed, bits, g.c_out, g.k()).unwrap();
            let x: Vec<i8> = (0..g.in_len()).map(|_| r.next() as i8).collect();
            let rq: Vec<Requant> = (0..g.c_out)
                .map(|c| Requant::from_real(1.0 / (1 << (c % 9)) as f64, 0.5, -128, 127))
                .collect();
            let mut want = vec![0i8; g.out_len()];
            scalar::conv_shift_i8(&g, &x, &w, 0, &rq, &mut want);
            let orders = [Some(Order::Codes), gemm::taps_order(&g)];
            for order in orders.into_iter().flatten() {
                let n = g.c_out;
                let (mut dw, mut corr) = (vec![0i8; n * order.kp(g.k())], vec![0i32; n]);
                let (mut at, mut fix) = (
                    vec![0u32; n + 1],
                    vec![Fix::default(); gemm::fix_count(&w, order)],
                );
                gemm::decode(&w, order, &mut dw, &mut corr, &mut at, &mut fix);
                let dr = DecodedRows::new(&dw, &corr, &at, &fix, g.k(), order).unwrap();
                for k in dispatch::kernels() {
                    let KernelFn::DecodedI8(f) = k.f else {
                        continue;
                    };
                    if !k.isa.available() || !(order == Order::Codes || k.takes_tap_major()) {
                        continue;
                    }
                    let mut got = vec![1i8; g.out_len()];
                    let how = split(&mut th, &g, &x, &mut got, |g, x, oc0, n, o| {
                        f(g, x, &dr.sub_rows(oc0, n), oc0, &rq[oc0..oc0 + n], o)
                    });
                    assert_eq!(got, want, "{} {order:?} {g:?}, {how:?}", k.name);
                    ran += (how == Split::Rows) as usize;
                }
            }
        }
        assert!(ran >= 20, "row bands exercised {ran} times");
    }

    fn geom(h: usize, kh: usize, s: usize, d: usize, pads: [usize; 4]) -> Conv2dGeom {
        Conv2dGeom {
            c_in: 3,
            h,
            w: 9,
            c_out: 5,
            kh,
            kw: 3,
            stride: [s, 1],
            pads,
            dilation: [d, 1],
            groups: 1,
        }
    }

    #[test]
    fn elementwise_chunks_see_their_offsets() {
        for t in [2, 3] {
            let mut th = Threads::new(t).unwrap();
            for len in [1, MIN_MACS - 1, MIN_MACS, MIN_MACS + 7, 3 * MIN_MACS + 1] {
                let mut out = vec![0u32; len];
                par_elementwise(Some(&mut th), &mut out, |at, o| {
                    for (i, v) in o.iter_mut().enumerate() {
                        *v += (at + i) as u32 + 1;
                    }
                });
                assert!(
                    out.iter().enumerate().all(|(i, &v)| v == i as u32 + 1),
                    "{t} {len}"
                );
            }
        }
    }

    /// Every band's conv has exactly the band's output rows and reads the
    /// input rows the full conv reads for them, padding included.
    #[test]
    fn row_bands_cover_the_output_with_the_right_padding() {
        for h in 1..20 {
            for kh in 1..5 {
                for s in 1..4 {
                    for d in 1..3 {
                        for pads in [[0, 1, 0, 1], [1, 1, 1, 1], [2, 0, 1, 0], [0, 0, 3, 0]] {
                            let g = geom(h, kh, s, d, pads);
                            if g.validate().is_err() {
                                continue;
                            }
                            for oy0 in 0..g.out_h() {
                                for oy1 in oy0 + 1..=g.out_h() {
                                    let (b, iy0, iy1) = row_band(&g, oy0, oy1);
                                    assert_eq!(b.out_h(), oy1 - oy0, "{g:?} {oy0}..{oy1}");
                                    assert_eq!(b.h, iy1 - iy0);
                                    // Band row r, tap ky reads padded row
                                    // r*s + ky*d of the band: the same input
                                    // row (or padding) as the full conv.
                                    for r in 0..oy1 - oy0 {
                                        for ky in 0..kh {
                                            let full = ((oy0 + r) * s + ky * d) as isize
                                                - g.pads[0] as isize;
                                            let part =
                                                (r * s + ky * d) as isize - b.pads[0] as isize;
                                            let full_in = full >= 0 && full < h as isize;
                                            let part_in = part >= 0 && part < b.h as isize;
                                            assert_eq!(full_in, part_in, "{g:?} {oy0}..{oy1}");
                                            if full_in {
                                                assert_eq!(full, part + iy0 as isize);
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
