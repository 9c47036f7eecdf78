//! How a conv or linear layer is split across threads.
//!
//! Two splits, chosen per layer:
//!
//! - **By output rows** (spatial): each thread computes a band of output
//!   rows for every channel, as a smaller conv over its band of input rows
//!   (plus the kernel's halo, with the padding the band really has). Every
//!   SIMD kernel gathers each output pixel's patch once per call, so this
//!   split gathers each patch once in total. Bands run in scratch kept by
//!   the session: a band's task copies its input rows in, and its output
//!   back into NCHW. The one allocation of a split layer is the list of
//!   those output slices, a pointer and a length per band and channel.
//! - **By output channels**: each thread computes a channel range of the
//!   whole map, writing its own contiguous slice of NCHW. Every thread
//!   gathers every patch again, which is cheap only when a thread's range
//!   has many channels per patch: linear layers (one pixel) and small maps.
//!
//! Pooling splits by channels, elementwise ops by contiguous chunks.
//!
//! A whole run goes to worker 0 of the pool ([`drive`]) while the other
//! workers spin, stealing the chunks its layers push: a sleeping rayon
//! worker took over 300 us to wake here, longer than most layers, and
//! ResNet-18's stem ran its two bands one after the other. A model whose
//! layers are all too small to split stops being driven after its first
//! run.
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
use alloc::{sync::Arc, vec::Vec};
#[cfg(feature = "std")]
use core::sync::atomic::{AtomicBool, Ordering};
#[cfg(feature = "std")]
use rayon::prelude::*;

/// Without `std`: no worker threads.
#[cfg(not(feature = "std"))]
pub(crate) type Threads = ();

/// A session's worker threads and the scratch their row bands use.
#[cfg(feature = "std")]
pub(crate) struct Threads {
    /// Shared so that [`drive`] can broadcast on it while worker 0 holds
    /// these `Threads`.
    pub(crate) pool: Arc<rayon::ThreadPool>,
    /// Input and output bands of every thread (grown, never shrunk).
    scratch: Vec<u64>,
    /// Some layer of the current run split across the pool.
    split: bool,
    /// Runs go through [`drive`]: true until a driven run splits no
    /// layer (a model of small layers), whose spinning workers would only
    /// cost.
    pub(crate) drive: bool,
    /// The session allows spinning workers (`Session::set_spinning`).
    pub(crate) spin: bool,
}

#[cfg(feature = "std")]
impl Threads {
    /// A pool of `n` worker threads, with no scratch yet.
    pub(crate) fn new(n: usize) -> Result<Threads, rayon::ThreadPoolBuildError> {
        Ok(Threads {
            pool: Arc::new(rayon::ThreadPoolBuilder::new().num_threads(n).build()?),
            scratch: Vec::new(),
            split: false,
            drive: true,
            spin: true,
        })
    }
}

#[cfg(feature = "std")]
impl Threads {
    /// The least size of an op worth splitting: `spinning` when the
    /// workers spin through the run ([`drive`]), `sleeping` when each
    /// split pays a wake-up (`Session::set_spinning(false)`).
    fn least(&self, spinning: usize, sleeping: usize) -> usize {
        if self.spin {
            spinning
        } else {
            sleeping
        }
    }
}

/// Idle rounds (a failed steal and a pause, about 0.1 us each) a spinning
/// worker of [`drive`] makes before it yields its core to the OS between
/// rounds: when other processes want the cores, pure spinning made
/// ResNet-18 at 2 threads twice as slow as sleeping workers.
#[cfg(feature = "std")]
const SPIN_ROUNDS: u32 = 1000;

/// Run `f` (a whole inference) on worker 0 of `th`'s pool while every
/// other worker spins, taking the jobs that `f`'s parallel layers push,
/// and return its result.
///
/// Why: a rayon worker that finds no work sleeps, and on this class of
/// machine (a 2-vCPU VM) a sleeping worker took more than 300 us to steal
/// a newly pushed job, longer than most layers. Measured on ResNet-18
/// int8 at 2 threads: the 7x7 stem, which follows two serial ops, ran its
/// two row bands one after the other (853 us, against 460 us per band);
/// a `join` of two 300 us spins after a 1 ms pause took 610 us. Spinning
/// through the inference is what ONNX Runtime's intra-op pool does by
/// default; the cost is that the other workers keep their cores busy
/// while the inference runs, and only then.
#[cfg(feature = "std")]
pub(crate) fn drive<R: Send>(th: &mut Threads, f: impl FnOnce(&mut Threads) -> R + Send) -> R {
    /// Sets `done` even if `f` panics, so the spinners stop and the
    /// broadcast can return (and rethrow).
    struct Done<'a>(&'a AtomicBool);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    th.split = false;
    let pool = Arc::clone(&th.pool);
    let done = AtomicBool::new(false);
    let job = std::sync::Mutex::new(Some((f, &mut *th)));
    let out = pool.broadcast(|ctx| {
        if ctx.index() != 0 {
            let mut idle = 0u32;
            while !done.load(Ordering::Acquire) {
                if rayon::yield_now() == Some(rayon::Yield::Executed) {
                    idle = 0;
                } else if idle < SPIN_ROUNDS {
                    idle += 1;
                    core::hint::spin_loop();
                } else {
                    // Long serial stretch: stay runnable (no wake-up
                    // latency) but let other processes have the core.
                    std::thread::yield_now();
                }
            }
            return None;
        }
        let _done = Done(&done);
        // Worker 0 runs the broadcast once: the job is there.
        let (f, th) = job.lock().ok()?.take()?;
        Some(f(th))
    });
    drop(job);
    th.drive = th.split;
    out.into_iter()
        .flatten()
        .next()
        .expect("worker 0 of the pool ran the inference")
}

/// Elementwise and pooling ops below this many outputs run on the calling
/// thread. With workers that slept between layers this had to be 2^20
/// (ResNet-18's residual adds of 100-200 K ran up to 1.6x slower on 2
/// threads); with [`drive`]'s spinning workers those adds split at 1.8x
/// (ResNet-18, 2 threads: 37 -> 20 us at 56 x 56, 18 -> 10 at 28 x 28).
const MIN_MACS: usize = 1 << 16;
/// Conv layers below this many MACs run on the calling thread: at the
/// pixel-lane GEMM's 110-180 G MACs/s such a layer takes under 20 us,
/// and the band copies cost about what the second thread saves. With
/// [`drive`]'s spinning workers, 2^21 lets ResNet-20's 2.4 M MAC layers
/// split: on 2 threads it went 0.366 -> 0.310 ms (2^22: no layer split;
/// 2^20, which adds its 1.2 M MAC layers, measured the same as 2^21).
/// With sleeping workers even 2^22 is too low for such layers (at 2^16
/// ResNet-20 ran 1.6x slower on 2 threads than on 1).
const MIN_CONV_MACS: usize = 1 << 21;
/// [`MIN_CONV_MACS`] for workers that sleep between layers: the limit
/// measured before [`drive`] existed.
const SLEEPING_CONV_MACS: usize = 1 << 22;
/// [`MIN_MACS`] for workers that sleep between layers (as above).
const SLEEPING_MACS: usize = 1 << 20;
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

/// A layer's MACs weighted by their cost relative to a dense conv's: a
/// depthwise MAC costs 16 (MobileNetV2's depthwise layers ran at 8-15 G
/// MACs/s against 130-180 for its dense ones), so that a 2.7 M MAC
/// depthwise layer taking 320 us splits like a dense one of that time.
fn work(g: &Conv2dGeom) -> usize {
    if g.groups > 1 && g.c_in_g() == 1 {
        g.macs().saturating_mul(16)
    } else {
        g.macs()
    }
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
        Some(th)
            if th.pool.current_num_threads() > 1
                && work(g) >= th.least(MIN_CONV_MACS, SLEEPING_CONV_MACS) =>
        {
            th.split |= split(th, g, x, out, f) != Split::None;
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
    // Grouped layers, and 1x1 layers with 64 or more channels per thread,
    // split by channels. A grouped thread reads only its own groups'
    // inputs: nothing is gathered twice. A 1x1 layer's patches are the
    // input itself, so a second gather is cheap, while row bands cost two
    // copies and cut a small plane into partial blocks (ResNet-18's
    // 1x1 / 2 shortcuts: 54 us per band of a 60 us layer, against 34 us
    // for half its channels). With fewer channels the bands win
    // (MobileNetV2's 192 -> 32 on 28 x 28: 26.5 us per band of a 45 us
    // layer, 30 us for half its channels).
    let by_channels =
        (g.groups > 1 && c >= 2 * MIN_SPLIT_ROWS) || (g.kh * g.kw == 1 && c >= 64 * t);
    let rows_ok = !by_channels && out_h >= t && (out_h % t == 0 || out_h >= 8 * t) && bands > 1;
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
        // Each band's rows of every output channel, disjoint slices of
        // `out`: a band's task puts its own output back into NCHW right
        // after computing it. A second parallel pass for the copy cost a
        // barrier per layer: ResNet-20 on 2 threads went 0.278-0.282 ->
        // 0.246-0.248 ms (ResNet-18, whose layers are 20-40x longer, did
        // not move measurably).
        let mut dsts: Vec<Vec<&mut [T]>> = (0..bands).map(|_| Vec::with_capacity(c)).collect();
        for o in out.chunks_mut(plane) {
            let mut rest = o;
            for (b, d) in dsts.iter_mut().enumerate() {
                let rows = out_h.min((b + 1) * band_rows) - b * band_rows;
                let (head, tail) = core::mem::take(&mut rest).split_at_mut(rows * out_w);
                d.push(head);
                rest = tail;
            }
        }
        th.pool.install(|| {
            scratch
                .par_chunks_mut(per)
                .zip(dsts.par_iter_mut())
                .enumerate()
                .for_each(|(b, (buf, dst))| {
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
                    let yout = &mut yout[..c * bp];
                    f(&bg, xin, 0, c, yout);
                    for (d, y) in dst.iter_mut().zip(yout.chunks_exact(bp)) {
                        d.copy_from_slice(y);
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
                && x.len() >= th.least(MIN_MACS, SLEEPING_MACS) / 4 =>
        {
            th.split = true;
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
        Some(th)
            if th.pool.current_num_threads() > 1
                && out.len() >= th.least(MIN_MACS, SLEEPING_MACS) =>
        {
            th.split = true;
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

    /// Random `bits`-bit codes for layer `g` (packed), an input,
    /// requantizers and the scalar reference's output.
    fn layer_case(
        r: &mut Rng,
        g: &Conv2dGeom,
        bits: Bits,
    ) -> (Vec<u8>, Vec<i8>, Vec<Requant>, Vec<i8>) {
        let codes: Vec<u8> = (0..g.c_out * g.k())
            .map(|_| (r.next() % (1 << bits.get())) as u8)
            .collect();
        let mut packed = vec![0u8; g.c_out * bits.row_bytes(g.k())];
        pack(&codes, bits, g.c_out, g.k(), &mut packed);
        let w = PackedRows::new(&packed, bits, g.c_out, g.k()).unwrap();
        let x: Vec<i8> = (0..g.in_len()).map(|_| r.next() as i8).collect();
        let rq: Vec<Requant> = (0..g.c_out)
            .map(|c| Requant::from_real(1.0 / (1 << (c % 9)) as f64, 0.5, -128, 127))
            .collect();
        let mut want = vec![0i8; g.out_len()];
        scalar::conv_shift_i8(g, &x, &w, 0, &rq, &mut want);
        (packed, x, rq, want)
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
                    // Depthwise layers wide enough to split by channels,
                    // and 1x1 layers with 64 channels per thread.
                    let (groups, c_in, c_out) = if dw {
                        let c = 1 + r.below(48);
                        (c, c, c * (1 + r.below(2)))
                    } else {
                        let gr = 1 + r.below(2);
                        let wide = kh * kw == 1 && case % 3 == 0;
                        let n = if wide {
                            64 * t + r.below(40)
                        } else {
                            1 + r.below(40)
                        };
                        (gr, cig * gr, n * gr)
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
                let (packed, x, rq, want) = layer_case(&mut r, &g, bits);
                let w = PackedRows::new(&packed, bits, g.c_out, g.k()).unwrap();
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

    /// Row bands of layers with strides 1 and 2 through the decoded-row
    /// kernels in both orders (tap-major where the layer has one, for the
    /// kernels that take it): a band's geometry has its own height and
    /// vertical padding, which the direct kernel's interleaved, phase-split
    /// input band must follow.
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
                stride: [1 + case % 2, 1 + r.below(2)],
                pads: [p, r.below(2), (p + case) % 3, r.below(2)],
                dilation: [d, 1 + r.below(2)],
                groups: 1,
            };
            if g.validate().is_err() {
                continue;
            }
            let bits = Bits::new(4).unwrap();
            let (packed, x, rq, want) = layer_case(&mut r, &g, bits);
            let w = PackedRows::new(&packed, bits, g.c_out, g.k()).unwrap();
            let orders = [Some(Order::Codes), gemm::taps_order(&g)];
            for order in orders.into_iter().flatten() {
                let n = g.c_out;
                let (mut dw, mut corr) = (vec![0i8; n * order.kp(g.k())], vec![0i32; n]);
                let (mut at, mut fix) = (
                    vec![0u32; n + 1],
                    vec![Fix::default(); gemm::fix_count(&w, order)],
                );
                let mut sh = vec![0u8; n];
                gemm::decode(&w, order, &mut dw, &mut corr, &mut sh, &mut at, &mut fix);
                let dr = DecodedRows::new(&dw, &corr, &sh, &at, &fix, g.k(), order).unwrap();
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

    /// `drive` runs the inference on worker 0 and returns its result;
    /// the layers inside it still split (their chunks all run); a panic in
    /// the inference reaches the caller instead of leaving the spinning
    /// workers waiting forever, and the pool works afterwards; a run that
    /// split nothing turns driving off.
    #[test]
    fn drive_runs_on_worker_zero_and_survives_a_panic() {
        let mut th = Threads::new(2).unwrap();
        let (idx, sum) = drive(&mut th, |th| {
            let mut out = vec![0u32; 3 * MIN_MACS + 5];
            par_elementwise(Some(th), &mut out, |start, o| {
                for (i, v) in o.iter_mut().enumerate() {
                    *v = ((start + i) % 7) as u32;
                }
            });
            (
                rayon::current_thread_index(),
                out.iter().map(|&v| v as u64).sum::<u64>(),
            )
        });
        assert_eq!(idx, Some(0));
        let want: u64 = (0..3 * MIN_MACS + 5).map(|i| (i % 7) as u64).sum();
        assert_eq!(sum, want);
        assert!(th.drive, "a run that split keeps driving");
        let hit = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            drive(&mut th, |_| -> u32 { panic!("inference failed") })
        }));
        assert!(hit.is_err());
        assert_eq!(drive(&mut th, |_| 7), 7);
        assert!(!th.drive, "a run that split nothing stops driving");
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
