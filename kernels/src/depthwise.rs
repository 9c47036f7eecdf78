//! Direct depthwise convolution (one input channel per output channel),
//! vectorized along the flattened output plane instead of along `k`.
//!
//! The tiled driver ([`crate::dispatch`]'s `tile`) vectorizes over the `k`
//! weights of an output channel, which is right for dense layers but leaves
//! a depthwise 3x3 layer (k = 9) with one row per group, a 64-code padded
//! chunk and a full patch gather per 4 pixels: measured at 0.03 MAC/cycle
//! on AVX2, slower than `scalar`. The first version of this kernel ran
//! each weight tap along one output row; on MobileNetV2's 7x7 and 14x14
//! planes the rows are shorter than two vectors and loop overhead ruled
//! (0.66 G MAC/s on a 7x7 layer of 960 channels, 640 us).
//!
//! Here each channel's input band is first copied into a zero-padded
//! buffer (one plane per row phase of the stride; column phases too for
//! strides along x past 2), rows `step * P` bytes apart, `P` the output
//! width plus the kernel's reach. Output pixel `(oy, ox)` is then lane
//! `q = oy * P + ox` of a flattened plane, and tap `(ky, kx)` reads buffer
//! byte `off + step * q` for one constant `off` per tap: every tap is a
//! shifted contiguous slice (every other byte for stride 2), no masks, no
//! border cases, dilations included. `accumulate` adds all the taps of a
//! chunk of lanes at once (`±(x << p)`: sign-extend, shift, xor and add
//! vectors of the ISA it is instantiated for; in `i16` lanes when the
//! channel's sums provably fit, all nine taps or three groups of three);
//! the lanes `ox >= out_w` of each row are computed and dropped. No
//! multiply; the requantizing epilogue is [`Requant::apply`]'s rule, as in
//! `scalar`, so results are bit-identical (integer sums do not depend on
//! order).
//!
//! MobileNetV2 b4 int8 on AVX-512 (Zen 4, one thread, shared machine):
//! the depthwise layers went from 14.9 to 2.1 ms of the profile (7x7 x 960:
//! 668 -> 91 us; 112x112 x 32: 936 -> 250-280 us), the model from 16.2 to
//! 5.7-6.0 ms; the `dw3x3_64x56x56` bench (b4) from 715-845 to 125-148 us.
//!
//! The bodies are `#[inline(always)]` so that the per-ISA wrappers
//! (`x86_64::avx2::dw`, `aarch64::neon::dw`) compile them with their
//! target features; `accumulate` is instantiated in each wrapper's
//! out-of-line `shift_rows`, the function `scripts/check-no-mul.sh`
//! disassembles (so it must not divide by a constant either: that
//! compiles to a multiply).

// Only the x86-64 and aarch64 kernels instantiate the bodies; elsewhere
// (Cortex-M) just `applies` is used, by the dispatcher.
#![cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]

use crate::{Conv2dGeom, PackedRows, Requant};

/// Output lanes accumulated at once (a stack buffer of `i32`).
const CHUNK: usize = 512;

/// Bytes of the padded, phase-split copy of an input band (a stack
/// buffer; 112x112 planes fit whole, with a 3x3 kernel).
const BUF: usize = 14 * 1024;

/// Bytes of the block moves that fill the band buffer and the output: a
/// row is copied in whole blocks, whatever lands past its end is
/// rewritten by the rows after it.
const BLOCK: usize = 32;

/// Most taps per channel (7x7 kernels fit); larger kernels run
/// [`crate::scalar::conv_shift_i8`].
const MAX_TAPS: usize = 64;

/// True when `g` is a depthwise layer these kernels compute: every group
/// has one input and one output channel.
pub const fn applies(g: &Conv2dGeom) -> bool {
    g.groups > 1 && g.c_in_g() == 1 && g.c_out_g() == 1
}

/// Output columns `ox` in `x0 .. x1` whose input column `ox * s + off`
/// lies in `0 .. w`.
#[inline(always)]
pub(crate) fn valid_cols(off: isize, s: usize, w: usize, x0: usize, x1: usize) -> (usize, usize) {
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

/// One weight tap of a channel as [`accumulate`] reads it: lane `q` gets
/// `((src[off + q] as i32) << p) ^ s`. `s` is 0, or -1 for a negative
/// weight: `t ^ -1 = -t - 1`, and the caller's `init` pays back the `-1`s,
/// which spares the vector loop a subtract per tap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tap {
    /// Offset of lane 0's input in `src`.
    pub(crate) off: usize,
    /// Exponent of the weight.
    pub(crate) p: u32,
    /// 0 for a positive weight, -1 for a negative one.
    pub(crate) s: i32,
}

/// True when every partial and final sum `accumulate` forms over `taps`
/// fits an `i16` lane for any int8 input: wrapping `i16` adds are then
/// exact. Always true for 3x3 kernels with b <= 3, and for b = 4 when a
/// channel's weights are small enough (sum of `2^p` below about 256).
#[inline(always)]
fn narrow(taps: &[Tap]) -> bool {
    // Bounds of one term with `m = 2^p`: `x << p` is in [-128 m, 127 m];
    // its complement `-(x << p) - 1` in [-128 m + (m - 1), 127 m + (m - 1)].
    // So the sum is in [-128 M + D, 127 M + D] with `M` the sum of the
    // `m` and `D` that of `m - 1` over negative taps. Without branches:
    // this runs once or four times per channel, on 7x7 planes as often
    // as a tenth of the vector work. Exponents are at most 7 (4-bit
    // codes), so the sums cannot overflow.
    let (mut m, mut d) = (0i32, 0i32);
    for t in taps {
        debug_assert!(t.p <= 7);
        let e = 1 << t.p;
        m += e;
        d += (e - 1) & t.s;
    }
    d - (m << 7) >= i16::MIN as i32 && (m << 7) - m + d <= i16::MAX as i32
}

/// Lanes of one block of [`accumulate`]: its callers round their lane
/// counts up to a multiple, so the vector loops have no scalar tails
/// (a 7x7 plane is 63 lanes; a tail of 15 scalar lanes per tap cost as
/// much as the vectors).
pub(crate) const LANES: usize = 32;

/// The taps of one channel as [`accumulate`] takes them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Taps {
    /// The taps, `n` of them in use (in kernel order, or as `triples`
    /// dealt them).
    tap: [Tap; MAX_TAPS],
    /// Taps in use (`kh * kw`).
    n: usize,
    /// Number of negative taps (pays back their `-1`s).
    init: i32,
    /// Buffer bytes a tap's read advances per lane: 1, or 2 for layers
    /// of stride 2 along x.
    step: usize,
    /// How the sums are formed, chosen once per channel.
    mode: Mode,
}

/// How [`accumulate`] sums a channel's nine taps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// All in `i16` lanes ([`narrow`] holds for the nine), through
    /// [`Scratch`].
    Narrow,
    /// Three groups of three (taps `3g .. 3g + 3`) in `i16` lanes, each
    /// [`narrow`], widened and added: three-quarters of the `i32`
    /// instructions, for most 4-bit channels.
    Triples,
    /// In `i32` lanes.
    Wide,
}

/// `acc[q] = k.init + sum over taps t of ((src[t.off + k.step * q] as i32) << t.p) ^ t.s`
/// for every lane `q` of `acc` (whose length is a multiple of [`LANES`]):
/// the inner loop of the depthwise kernels. 3x3 kernels take one pass
/// (all nine taps summed in registers, in `i16` lanes as `k.mode` says),
/// others passes of three taps over `acc`. Panics if a tap's slice
/// leaves `src`.
#[inline(always)]
pub(crate) fn accumulate(acc: &mut [i32], tmp: &mut Scratch, src: &[i8], k: &Taps) {
    let taps = &k.tap[..k.n];
    if k.step == 2 {
        taps_of::<2>(acc, tmp, src, taps, k.init, k.mode)
    } else {
        taps_of::<1>(acc, tmp, src, taps, k.init, k.mode)
    }
}

/// The `i16` sums of [`Mode::Narrow`], widened in a second loop: a loop
/// that also widened them was vectorized at the `i32` width, with
/// half-filled `i16` vectors, no faster than `i32` lanes (this way is a
/// quarter faster on 56x56 planes).
pub(crate) struct Scratch([i16; CHUNK + LANES]);

impl Scratch {
    /// Zeroed scratch.
    pub(crate) const fn new() -> Scratch {
        Scratch([0; CHUNK + LANES])
    }
}

/// [`accumulate`] with the step `S` known.
#[inline(always)]
fn taps_of<const S: usize>(
    acc: &mut [i32],
    tmp: &mut Scratch,
    src: &[i8],
    taps: &[Tap],
    init: i32,
    mode: Mode,
) {
    debug_assert_eq!(acc.len() % LANES, 0);
    if let Ok(t9) = <&[Tap; 9]>::try_from(taps) {
        match mode {
            Mode::Narrow => pass16::<S>(acc, tmp, src, t9, init),
            Mode::Triples => pass16x3::<S>(acc, src, t9, init),
            Mode::Wide => pass32::<9, false, S>(acc, src, t9, init),
        }
        return;
    }
    // Groups of three by hand: `chunks_exact(3)` divides the length by
    // three, with a multiply (the no-multiply check disassembles this).
    let mut add = false;
    let mut i = 0;
    while i + 3 <= taps.len() {
        let t3 = <&[Tap; 3]>::try_from(&taps[i..i + 3]).expect("three taps");
        if add {
            pass32::<3, true, S>(acc, src, t3, init);
        } else {
            pass32::<3, false, S>(acc, src, t3, init);
        }
        add = true;
        i += 3;
    }
    for t in &taps[i..] {
        if add {
            pass32::<1, true, S>(acc, src, core::array::from_ref(t), init);
        } else {
            pass32::<1, false, S>(acc, src, core::array::from_ref(t), init);
        }
        add = true;
    }
    if !add {
        acc.fill(init);
    }
}

/// `N` taps summed in `i32` lanes, added to `acc` (`ADD`) or to `init`,
/// lane `q` reading `src[off + S * q]`.
#[inline(always)]
fn pass32<const N: usize, const ADD: bool, const S: usize>(
    acc: &mut [i32],
    src: &[i8],
    taps: &[Tap; N],
    init: i32,
) {
    // Blocks of a constant length: the compiler's vector loop over a
    // runtime length was unrolled past `LANES` and left a scalar tail.
    let n = acc.len();
    let xs: [&[i8]; N] = core::array::from_fn(|t| &src[taps[t].off..][..S * n]);
    let p: [u32; N] = core::array::from_fn(|t| taps[t].p);
    let s: [i32; N] = core::array::from_fn(|t| taps[t].s);
    for (b, a) in acc.chunks_exact_mut(LANES).enumerate() {
        let q = b * S * LANES;
        let mut v = [init; LANES];
        if ADD {
            v.copy_from_slice(a);
        }
        for t in 0..N {
            let x = &xs[t][q..q + S * LANES];
            for l in 0..LANES {
                v[l] = v[l].wrapping_add(((x[S * l] as i32) << p[t]) ^ s[t]);
            }
        }
        a.copy_from_slice(&v);
    }
}

/// Nine taps summed in wrapping `i16` lanes, exact when [`narrow`]
/// holds, then widened; lane `q` reads `src[off + S * q]`.
#[inline(always)]
fn pass16<const S: usize>(
    acc: &mut [i32],
    tmp: &mut Scratch,
    src: &[i8],
    taps: &[Tap; 9],
    init: i32,
) {
    let n = acc.len();
    let xs: [&[i8]; 9] = core::array::from_fn(|t| &src[taps[t].off..][..S * n]);
    let p: [u32; 9] = core::array::from_fn(|t| taps[t].p);
    let s: [i16; 9] = core::array::from_fn(|t| taps[t].s as i16);
    let v16 = &mut tmp.0[..n];
    for (b, o) in v16.chunks_exact_mut(LANES).enumerate() {
        let q = b * S * LANES;
        let mut v = [0i16; LANES];
        for t in 0..9 {
            let x = &xs[t][q..q + S * LANES];
            for l in 0..LANES {
                v[l] = v[l].wrapping_add(((x[S * l] as i16) << p[t]) ^ s[t]);
            }
        }
        o.copy_from_slice(&v);
    }
    for (a, v) in acc.chunks_exact_mut(LANES).zip(v16.chunks_exact(LANES)) {
        for l in 0..LANES {
            a[l] = init + v[l] as i32;
        }
    }
}

/// Nine taps in three groups of three (`3g .. 3g + 3`), each summed in
/// wrapping `i16` lanes, exact when [`narrow`] holds for each group,
/// widened and added in `i32` lanes; lane `q` reads `src[off + S * q]`.
/// (Through [`Scratch`] like [`pass16`], the three groups' stores and
/// loads cost more than the half-filled vectors do here: 338 against
/// 243 us on a 112x112 layer.)
#[inline(always)]
fn pass16x3<const S: usize>(acc: &mut [i32], src: &[i8], taps: &[Tap; 9], init: i32) {
    let n = acc.len();
    let xs: [&[i8]; 9] = core::array::from_fn(|t| &src[taps[t].off..][..S * n]);
    let p: [u32; 9] = core::array::from_fn(|t| taps[t].p);
    let s: [i16; 9] = core::array::from_fn(|t| taps[t].s as i16);
    for (b, a) in acc.chunks_exact_mut(LANES).enumerate() {
        let q = b * S * LANES;
        let mut w = [init; LANES];
        for g in 0..3 {
            let mut v = [0i16; LANES];
            for t in 3 * g..3 * g + 3 {
                let x = &xs[t][q..q + S * LANES];
                for l in 0..LANES {
                    v[l] = v[l].wrapping_add(((x[S * l] as i16) << p[t]) ^ s[t]);
                }
            }
            for l in 0..LANES {
                w[l] += v[l] as i32;
            }
        }
        a.copy_from_slice(&w);
    }
}

/// Order nine taps for [`Mode::Triples`] and say whether it applies:
/// largest weights first, dealt to three groups back and forth (0 1 2
/// 2 1 0 0 1 2) so that their sums come out even, then each group
/// checked. On MobileNetV2's 4-bit depthwise channels that fits 88% of
/// them, as many as the best of all 280 partitions.
fn triples(t: &mut [Tap; 9]) -> bool {
    // Insertion sort, largest exponent first.
    for i in 1..9 {
        let mut j = i;
        while j > 0 && t[j - 1].p < t[j].p {
            t.swap(j - 1, j);
            j -= 1;
        }
    }
    let sorted = *t;
    for (k, &d) in [0usize, 3, 6, 7, 4, 1, 2, 5, 8].iter().enumerate() {
        t[d] = sorted[k];
    }
    t.chunks_exact(3).all(narrow)
}

/// Copy `n` bytes `src[0], src[s], ...` to `dst[..n]`. For `s = 1`,
/// whole blocks while both slices have room, so bytes of `dst` past `n`
/// (up to the next block) may be overwritten too.
#[inline(always)]
fn spread(dst: &mut [i8], src: &[i8], n: usize, s: usize) {
    let mut i = 0;
    if s == 1 {
        while i < n && i + BLOCK <= dst.len() && i + BLOCK <= src.len() {
            dst[i..i + BLOCK].copy_from_slice(&src[i..i + BLOCK]);
            i += BLOCK;
        }
        if i < n {
            dst[i..n].copy_from_slice(&src[i..n]);
        }
    } else {
        // Column phases of strides past 2 only: rare.
        for (d, v) in dst[..n].iter_mut().zip(src.iter().step_by(s)) {
            *d = *v;
        }
    }
}

/// Zero `dst[..n]`, in whole blocks while `dst` has room (so bytes past
/// `n` may be zeroed too).
#[inline(always)]
fn zero(dst: &mut [i8], n: usize) {
    let mut i = 0;
    while i < n && i + BLOCK <= dst.len() {
        dst[i..i + BLOCK].fill(0);
        i += BLOCK;
    }
    if i < n {
        dst[i..n].fill(0);
    }
}

/// The (negative, exponent) pairs of the codes of a packed row, into
/// `taps` (`s` = -1 when negative) with the offsets `offs` (in kernel
/// order); returns the number of negative ones.
/// One little-endian word read per row instead of a byte fetch per code.
#[inline(always)]
fn decode(row: &[u8], bits: crate::Bits, offs: &[usize], taps: &mut [Tap]) -> i32 {
    let b = bits.get();
    let mut neg = 0;
    if row.len() <= 8 {
        // Byte by byte: a copy into a word array became a memmove call.
        let mut v = 0u64;
        for (i, &byte) in row.iter().enumerate() {
            v |= (byte as u64) << (8 * i);
        }
        let mask = (1u64 << b) - 1;
        for (t, &off) in taps.iter_mut().zip(offs) {
            let (n, e) = bits.decode((v & mask) as u8);
            v >>= b;
            *t = Tap {
                off,
                p: e,
                s: -(n as i32),
            };
            neg += n as i32;
        }
    } else {
        for (i, (t, &off)) in taps.iter_mut().zip(offs).enumerate() {
            let (n, e) = bits.decode(crate::codes::code_at(row, bits, i));
            *t = Tap {
                off,
                p: e,
                s: -(n as i32),
            };
            neg += n as i32;
        }
    }
    neg
}

/// One stride phase's plane in the band buffer.
#[derive(Clone, Copy, Default)]
struct Phase {
    /// Offset of the plane in the buffer.
    base: usize,
    /// Row phase: plane row `j` is padded input row `(oy0 + j) * sy + py`
    /// for a band starting at output row `oy0`.
    py: usize,
    /// Column phase: plane column `c` is padded input column
    /// `x0 * sx + c * cstep + px` for a segment starting at output
    /// column `x0`.
    px: usize,
}

/// How a layer's channels are cut and laid out in the band buffer: bands
/// of `band` output rows, segments of `seg` output columns (the whole
/// row unless a row does not fit), one plane per stride phase the taps
/// use, each of rows of `step * pitch` bytes.
///
/// Strides along x of 1 and 2 keep the input columns as they are and
/// read every `step`-th byte in [`accumulate`] (for stride 2, a wide
/// load and an even-byte extract per tap beat splitting each row into
/// even and odd columns once: the byte-narrowing stores that split
/// compiled to were the larger cost on 7-wide rows). Larger strides
/// split columns into `cstep` phase planes.
struct Plan {
    /// Output rows per band.
    band: usize,
    /// Output columns per segment.
    seg: usize,
    /// Output lanes per row (`seg` plus the lanes dropped).
    pitch: usize,
    /// Buffer bytes a tap's read advances per lane (1 or 2).
    step: usize,
    /// Input columns per plane column.
    cstep: usize,
    /// Plane rows the taps read below a band's first output row
    /// (`(kh - 1) * dilation / stride`).
    reach_y: usize,
    /// The planes, `n_phases` of them in use.
    phases: [Phase; MAX_TAPS],
    n_phases: usize,
    /// Lanes per call of the tap accumulation: whole rows, unless a row
    /// is longer than [`CHUNK`].
    chunk: usize,
}

impl Plan {
    /// The plan of layer `g` and its taps' buffer offsets (in `taps`), or
    /// `None` when the kernel has more than [`MAX_TAPS`] taps or one
    /// output row of the shortest segment does not fit the buffer.
    fn new(g: &Conv2dGeom, taps: &mut [Tap; MAX_TAPS]) -> Option<Plan> {
        let (sy, sx) = (g.stride[0], g.stride[1]);
        let (dy, dx) = (g.dilation[0], g.dilation[1]);
        if g.kh * g.kw > MAX_TAPS {
            return None;
        }
        let (step, cstep) = if sx <= 2 { (sx, 1) } else { (1, sx) };
        let reach_y = (g.kh - 1) * dy / sy;
        let reach_x = (g.kw - 1) * dx / cstep;
        let mut phases = [Phase::default(); MAX_TAPS];
        let mut n_phases = 0;
        // Phase of each tap, before the plane size is known.
        let mut which = [0usize; MAX_TAPS];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let (py, px) = ((ky * dy) % sy, (kx * dx) % cstep);
                let found = phases[..n_phases]
                    .iter()
                    .position(|q| (q.py, q.px) == (py, px));
                which[ky * g.kw + kx] = found.unwrap_or_else(|| {
                    phases[n_phases] = Phase { base: 0, py, px };
                    n_phases += 1;
                    n_phases - 1
                });
            }
        }
        // A valid lane `ox < seg` reads plane columns up to
        // `step * (seg - 1) + reach_x`, inside its row when the row has
        // `step * pitch` bytes with `pitch = seg + reach_x / step`.
        // Bytes used: n_phases * rows * step * pitch, plus `reach_x` read
        // past the last row by the dropped lanes and less than
        // `step * LANES` more (lane counts are rounded up), plus slack
        // for the block moves.
        let room = (BUF - 2 * BLOCK - step * LANES).checked_sub(reach_x)?;
        let per_row = (n_phases * step).checked_mul(reach_y.checked_add(1)?)?;
        let ex = reach_x / step;
        let seg = g.out_w().min((room / per_row).checked_sub(ex)?);
        if seg == 0 {
            return None;
        }
        let pitch = seg + ex;
        let row_bytes = step * pitch;
        let band = g.out_h().min(room / (n_phases * row_bytes) - reach_y);
        let rows = band + reach_y;
        for (i, ph) in phases[..n_phases].iter_mut().enumerate() {
            ph.base = i * rows * row_bytes;
        }
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let i = ky * g.kw + kx;
                taps[i].off = phases[which[i]].base + (ky * dy / sy) * row_bytes + kx * dx / cstep;
            }
        }
        let chunk = if pitch <= CHUNK {
            CHUNK / pitch * pitch
        } else {
            CHUNK
        };
        Some(Plan {
            band,
            seg,
            pitch,
            step,
            cstep,
            reach_y,
            phases,
            n_phases,
            chunk,
        })
    }

    /// Where the input of output rows `oy0 .. oy0 + nb`, output columns
    /// from `x0`, goes in each phase plane (`geo[..n_phases]`). Divisions:
    /// computed once per layer when one band and segment cover a plane.
    fn geometry(&self, g: &Conv2dGeom, oy0: usize, nb: usize, x0: usize, geo: &mut [Fill]) {
        let sy = g.stride[0];
        let rows = nb + self.reach_y;
        for (ph, f) in self.phases[..self.n_phases].iter().zip(geo) {
            // Input column of the plane's column 0, and the columns that
            // hold input data.
            let col0 = (x0 * g.stride[1] + ph.px) as isize - g.pads[1] as isize;
            let (lo, hi) = valid_cols(col0, self.cstep, g.w, 0, self.step * self.pitch);
            // The same for rows.
            let row0 = (oy0 * sy + ph.py) as isize - g.pads[0] as isize;
            let (ja, jb) = if hi > lo {
                valid_cols(row0, sy, g.h, 0, rows)
            } else {
                (rows, rows)
            };
            let src = if ja < jb {
                let c = col0 + (lo * self.cstep) as isize;
                (row0 + (ja * sy) as isize) as usize * g.w + c as usize
            } else {
                0
            };
            *f = Fill {
                lo,
                n: hi - lo,
                ja,
                jb,
                rows,
                src,
            };
        }
    }

    /// Fill `buf` with the phase planes laid out by `geo` from the input
    /// plane starting at `plane[0]` (`plane` runs on to the end of the
    /// input, which the block copies may read). The rows of a plane are
    /// written in order, each whole (data, then zeros up to the next
    /// row's data), so what the block moves spill past a row's end is
    /// always rewritten.
    #[inline(always)]
    fn fill(&self, g: &Conv2dGeom, geo: &[Fill], buf: &mut [i8], plane: &[i8]) {
        let p = self.step * self.pitch;
        let next = g.stride[0] * g.w;
        for (ph, f) in self.phases[..self.n_phases].iter().zip(geo) {
            let (lo, n) = (f.lo, f.n);
            let base = ph.base + lo;
            zero(&mut buf[ph.base..], lo);
            for j in 0..f.ja {
                zero(&mut buf[base + j * p..], p);
            }
            let mut src = f.src;
            let rows = f.jb.saturating_sub(f.ja);
            // Rows of at most a block of data and a block of zeros (7 to
            // 28 wide): one move of each per row when the last row has
            // room for them, the common case, without `spread`'s checks.
            let room = rows > 0
                && base + (f.jb - 1) * p + n + BLOCK <= buf.len()
                && src + (rows - 1) * next + BLOCK <= plane.len();
            if self.cstep == 1 && n <= BLOCK && p - n <= BLOCK && room {
                let mut d = base + f.ja * p;
                for _ in 0..rows {
                    buf[d..d + BLOCK].copy_from_slice(&plane[src..src + BLOCK]);
                    buf[d + n..d + n + BLOCK].fill(0);
                    d += p;
                    src += next;
                }
            } else {
                for j in f.ja..f.jb {
                    let d = base + j * p;
                    spread(&mut buf[d..], &plane[src..], n, self.cstep);
                    zero(&mut buf[d + n..], p - n);
                    src += next;
                }
            }
            for j in f.jb.max(f.ja)..f.rows {
                zero(&mut buf[base + j * p..], p);
            }
        }
    }
}

/// Where one phase plane's input goes for a band and segment: columns
/// `lo .. lo + n` of rows `ja .. jb` (of `rows`) hold input, the first
/// from `plane[src]`; the rest is zero.
#[derive(Clone, Copy, Default)]
struct Fill {
    lo: usize,
    n: usize,
    ja: usize,
    jb: usize,
    rows: usize,
    src: usize,
}

/// Depthwise int8 conv with shift weights; same contract and output as
/// [`crate::scalar::conv_shift_i8`] for layers where [`applies`] holds.
/// `rows` is the instantiation of [`accumulate`] for the caller's ISA.
#[inline(always)]
pub(crate) fn shift_i8(
    g: &Conv2dGeom,
    x: &[i8],
    w: &PackedRows,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
    rows: impl Fn(&mut [i32], &mut Scratch, &[i8], &Taps),
) {
    assert!(applies(g), "not a depthwise layer");
    let n = w.rows();
    crate::dispatch::check_call(g, x.len(), w.k(), n, oc0, rq.len(), out.len());
    let mut k = Taps {
        tap: [Tap::default(); MAX_TAPS],
        n: g.k(),
        init: 0,
        step: 1,
        mode: Mode::Wide,
    };
    let Some(plan) = Plan::new(g, &mut k.tap) else {
        // Kernels past 8x8, or rows longer than the buffer: no
        // depthwise network has them; the reference computes them.
        crate::scalar::conv_shift_i8(g, x, w, oc0, rq, out);
        return;
    };
    let (oh, ow) = (g.out_h(), g.out_w());
    let plane_len = g.h * g.w;
    let (p, step) = (plan.pitch, plan.step);
    k.step = step;
    // Tap `i`'s offset: `triples` reorders a channel's taps, the next
    // channel's codes come in kernel order again.
    let offsets: [usize; MAX_TAPS] = core::array::from_fn(|i| k.tap[i].off);
    let (chunk_rows, chunk_cols) = (plan.chunk / p, plan.chunk % p);
    let mut buf = [0i8; BUF];
    let mut acc = [0i32; CHUNK + LANES];
    let mut scratch = Scratch::new();
    let mut tmp = [0i8; CHUNK + LANES + BLOCK];
    // A row may be written in whole blocks when every output byte after
    // it is written later: one segment per row, rows in order.
    let blocks = plan.seg == ow;
    let mut geo = [Fill::default(); MAX_TAPS];
    let single = plan.band >= oh && blocks;
    // Ordering the taps into triples costs about what the triples save
    // on a 14x14 plane; it pays from 28x28 on.
    let many = oh * p >= 512;
    if single {
        plan.geometry(g, 0, oh, 0, &mut geo);
    }
    for r in 0..n {
        k.init = decode(w.row(r), w.bits(), &offsets, &mut k.tap[..k.n]);
        k.mode = if narrow(&k.tap[..k.n]) {
            Mode::Narrow
        } else if many {
            let t9 = <&mut [Tap; 9]>::try_from(&mut k.tap[..k.n]);
            if t9.is_ok_and(triples) {
                Mode::Triples
            } else {
                Mode::Wide
            }
        } else {
            Mode::Wide
        };
        let plane = &x[(oc0 + r) * plane_len..];
        let o = &mut out[r * oh * ow..];
        // `while` loops: a `step_by` divides to count its steps, three
        // divisions per channel were a tenth of a 7x7 layer's time.
        let mut oy0 = 0;
        while oy0 < oh {
            let nb = plan.band.min(oh - oy0);
            let mut x0 = 0;
            while x0 < ow {
                let ns = plan.seg.min(ow - x0);
                if !single {
                    plan.geometry(g, oy0, nb, x0, &mut geo);
                }
                plan.fill(g, &geo, &mut buf, plane);
                let lanes = nb * p;
                // Lanes `ry * p ..` hold output row `oy0 + ry`, their
                // first `ns` the segment's columns.
                let (mut ry0, mut cx0) = (0, 0);
                let mut q0 = 0;
                while q0 < lanes {
                    let m = plan.chunk.min(lanes - q0);
                    let mr = m.next_multiple_of(LANES);
                    rows(&mut acc[..mr], &mut scratch, &buf[step * q0..], &k);
                    rq[r].apply_run(&acc[..mr], &mut tmp[..mr]);
                    let (mut ry, mut cx) = (ry0, cx0);
                    let mut i = 0;
                    // Chunks of whole rows of at most a block: one move
                    // per row when the last has room (as in
                    // `Plan::fill`).
                    if blocks && ns <= BLOCK && chunk_cols == 0 {
                        let at = (oy0 + ry) * ow + x0;
                        let rows_in = chunk_rows.min(nb - ry);
                        if at + (rows_in - 1) * ow + BLOCK <= o.len() {
                            let mut d = at;
                            while i < m {
                                o[d..d + BLOCK].copy_from_slice(&tmp[i..i + BLOCK]);
                                d += ow;
                                i += p;
                            }
                        }
                    }
                    while i < m {
                        let in_row = (p - cx).min(m - i);
                        if cx < ns {
                            let len = (ns - cx).min(in_row);
                            let dst = &mut o[(oy0 + ry) * ow + x0 + cx..];
                            if blocks {
                                spread(dst, &tmp[i..], len, 1);
                            } else {
                                dst[..len].copy_from_slice(&tmp[i..i + len]);
                            }
                        }
                        i += in_row;
                        ry += 1;
                        cx = 0;
                    }
                    ry0 += chunk_rows;
                    cx0 += chunk_cols;
                    if cx0 >= p {
                        cx0 -= p;
                        ry0 += 1;
                    }
                    q0 += m;
                }
                x0 += ns;
            }
            oy0 += nb;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn x(&mut self) -> i8 {
            match self.next() % 4 {
                0 => -128,
                1 => 127,
                _ => self.next() as i8,
            }
        }
    }

    /// `accumulate`'s result computed directly.
    fn direct(src: &[i8], taps: &[Tap], step: usize, n: usize) -> Vec<i32> {
        (0..n)
            .map(|q| {
                taps.iter()
                    .map(|t| {
                        let v = (src[t.off + step * q] as i32) << t.p;
                        if t.s == 0 {
                            v
                        } else {
                            -v
                        }
                    })
                    .sum()
            })
            .collect()
    }

    /// Every way of summing (`i32` lanes, nine in `i16` lanes, three
    /// groups of three) against a direct sum, on random and extreme taps
    /// and inputs, steps 1 and 2, and tap counts other than nine.
    #[test]
    fn accumulate_equals_a_direct_sum() {
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        let mut seen = [0usize; 3];
        for trial in 0..3000 {
            let step = 1 + trial % 2;
            let n_taps = [9, 9, 9, 1, 2, 4, 25, 49][trial % 8];
            let n = LANES * (1 + (r.next() % 3) as usize);
            let src: Vec<i8> = match trial % 5 {
                0 => vec![-128; 600],
                1 => vec![127; 600],
                _ => (0..600).map(|_| r.x()).collect(),
            };
            let top = 1 + r.next() % 7;
            let mut k = Taps {
                tap: [Tap::default(); MAX_TAPS],
                n: n_taps,
                init: 0,
                step,
                mode: Mode::Wide,
            };
            for t in &mut k.tap[..n_taps] {
                t.off = (r.next() % 200) as usize;
                t.p = (r.next() % (top + 1)) as u32;
                t.s = -((r.next() % 2) as i32);
                k.init -= t.s;
            }
            let want = direct(&src, &k.tap[..n_taps], step, n);
            let mut tmp = Scratch::new();
            let mut got = vec![0; n];
            accumulate(&mut got, &mut tmp, &src, &k);
            assert_eq!(got, want, "wide, trial {trial}");
            if n_taps != 9 {
                continue;
            }
            seen[0] += 1;
            if narrow(&k.tap[..9]) {
                seen[1] += 1;
                k.mode = Mode::Narrow;
                accumulate(&mut got, &mut tmp, &src, &k);
                assert_eq!(got, want, "narrow, trial {trial}");
            }
            let t9: &mut [Tap; 9] = (&mut k.tap[..9]).try_into().unwrap();
            if triples(t9) {
                seen[2] += 1;
                k.mode = Mode::Triples;
                accumulate(&mut got, &mut tmp, &src, &k);
                assert_eq!(got, want, "triples, trial {trial}");
            }
        }
        // Each way ran, and not always.
        assert!(
            seen[0] > seen[2] && seen[2] > seen[1] && seen[1] > 100,
            "{seen:?}"
        );
    }

    /// `narrow` holds exactly when the extreme sums fit an `i16`: the sum
    /// is monotone in each input, so its extremes take each input at
    /// -128 or 127.
    #[test]
    fn narrow_is_the_i16_range_of_the_extreme_sums() {
        let mut r = Rng(12345);
        let (mut yes, mut no) = (0, 0);
        for _ in 0..20000 {
            let n = 1 + (r.next() % 9) as usize;
            let taps: Vec<Tap> = (0..n)
                .map(|_| Tap {
                    off: 0,
                    p: (r.next() % 8) as u32,
                    s: -((r.next() % 2) as i32),
                })
                .collect();
            let term = |t: &Tap, x: i32| ((x << t.p) ^ t.s) as i64;
            let lo: i64 = taps.iter().map(|t| term(t, -128).min(term(t, 127))).sum();
            let hi: i64 = taps.iter().map(|t| term(t, -128).max(term(t, 127))).sum();
            let fits = lo >= i16::MIN as i64 && hi <= i16::MAX as i64;
            assert_eq!(narrow(&taps), fits, "{taps:?}");
            if fits {
                yes += 1;
            } else {
                no += 1;
            }
        }
        assert!(yes > 1000 && no > 1000);
    }

    fn dw(h: usize, w: usize, k: usize, s: usize, p: usize, d: [usize; 2]) -> Conv2dGeom {
        Conv2dGeom {
            c_in: 2,
            h,
            w,
            c_out: 2,
            kh: k,
            kw: k,
            stride: [s, s],
            pads: [p; 4],
            dilation: d,
            groups: 2,
        }
    }

    /// The plans the integration tests rely on to reach every path: one
    /// band and segment for MobileNet's planes, several bands, several
    /// segments, and none (the reference) for kernels past 8x8 and
    /// reaches past the buffer.
    #[test]
    fn plans_cut_long_planes_into_bands_and_segments() {
        let mut t = [Tap::default(); MAX_TAPS];
        for (hw, s) in [(7, 1), (14, 1), (14, 2), (56, 1), (112, 1), (112, 2)] {
            let g = dw(hw, hw, 3, s, 1, [1, 1]);
            let plan = Plan::new(&g, &mut t).unwrap();
            assert_eq!((plan.band, plan.seg), (g.out_h(), g.out_w()), "{hw} {s}");
            assert_eq!(plan.pitch, g.out_w() + 2 / s);
            assert_eq!(plan.step, s);
        }
        let plan = Plan::new(&dw(40, 400, 3, 1, 1, [1, 1]), &mut t).unwrap();
        assert!(plan.band < 40 && plan.seg == 400);
        let plan = Plan::new(&dw(60, 300, 3, 2, 1, [1, 1]), &mut t).unwrap();
        assert!(plan.band < 30 && plan.seg == 150);
        let plan = Plan::new(&dw(4, 6000, 3, 1, 1, [1, 1]), &mut t).unwrap();
        assert!(plan.seg < 6000);
        let plan = Plan::new(&dw(5, 12001, 3, 2, 1, [1, 1]), &mut t).unwrap();
        assert!(plan.seg < 6001);
        let plan = Plan::new(&dw(7, 7000, 5, 3, 2, [1, 1]), &mut t).unwrap();
        assert!(plan.seg < 2334 && plan.cstep == 3 && plan.n_phases == 9);
        assert!(Plan::new(&dw(12, 12, 9, 1, 4, [1, 1]), &mut t).is_none());
        let wide = Conv2dGeom {
            kh: 2,
            ..dw(3, 20000, 2, 1, 0, [1, 15000])
        };
        assert!(Plan::new(&wide, &mut t).is_none());
    }

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
