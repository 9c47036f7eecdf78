//! Shift codes decoded once, at load, to int8 rows for the pixel-lane VNNI
//! GEMM (`avx512/gemm-dot`, `crate::x86_64::gemm`), and the portable half of
//! that kernel: the layout, its checks, the decoder and a reference.
//!
//! Why decode at all: `vpdpbusd` multiplies unsigned bytes by signed ones.
//! With output pixels in the lanes and a broadcast word of four weights of
//! one row as the signed operand, one instruction does 64 MACs for 16
//! pixels, and a block of rows x pixels keeps 24 accumulators busy; the
//! weights must then be plain int8 in memory, since a broadcast operand
//! cannot be decoded on the way. Decoding in the inner loop instead (as
//! `avx512/dot` does) shares each decode by only a few pixels. The decoded
//! rows cost `n * k` bytes beside the file's `n * k * b / 8`; the runtime
//! decodes only the layers this kernel runs (`shiftnn inspect` reports the
//! bytes).
//!
//! The layout ([`DecodedRows`]):
//! * `w`: `n` rows of `kp = k` rounded up to a multiple of 4, zero past
//!   `k`, row `r` at `w[r * kp ..]`. 4-bit codes reach +128, which int8
//!   cannot hold, so each row takes one of two forms (`shift`), whichever
//!   needs fewer [`Fix`] blocks:
//!   * `shift[r] = 0`: a weight `s * 2^p` is stored as is, except +128,
//!     stored as 127 with the missing 1 in a fix;
//!   * `shift[r] = 1`: halved. `s * 2^p` is stored as `s * 2^(p - 1)`,
//!     except +-1, stored as 0 with the +-1 in a fix. The kernel doubles
//!     the row's sums before it adds the fixes.
//! * `fix`: per row (`fix_at[r] .. fix_at[r + 1]`), the blocks of four
//!   weights that need one, with a word of four int8 addends. The kernel
//!   applies one as a broadcast, a panel load and one more `vpdpbusd` per
//!   16 pixels. A layer whose weights crowd the top exponent needs many:
//!   in `benches/peers`' 4096 x 4096 linear layer, 33% of the blocks hold
//!   a +128 and the fixes took 45% of the layer's time; halved, its rows
//!   need fixes in 4% of their blocks. ResNet-18's convs go from 5% to
//!   3.7%.
//! * `corr`: per row, what its sums start at: `-128 * sum(w)` over the
//!   true weights, shifted right by `shift[r]` (a multiple of 128 halves
//!   exactly). The kernel feeds activations as unsigned `x + 128`
//!   (`x ^ 0x80`), and `sum w * (x + 128) - 128 * sum w = sum w * x`. Sums
//!   wrap in `i32` like the hardware's, and the true sum fits, so the
//!   result is exact.

use crate::{Conv2dGeom, PackedRows, Requant};

/// A block of four weights of one row that needs a fix (see the module
/// documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Fix {
    /// The block: weights `4 * kb .. 4 * kb + 4` of the row.
    pub kb: u32,
    /// Int8 addends of the four weights, as a little-endian word.
    pub word: i32,
}

/// `k` rounded up to the kernel's step of four weights.
#[inline]
pub const fn padded_k(k: usize) -> usize {
    k.div_ceil(4) * 4
}

/// How a decoded row orders its weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Order {
    /// As the codes, `(c, ky, kx)`, zero-padded at the end to a multiple
    /// of 4 ([`padded_k`]): a step of four weights spans taps, and the
    /// kernel gathers each step's activations into a panel.
    #[default]
    Codes,
    /// Tap-major, `(ky, kx, c)`, each tap's channels zero-padded to `cp`
    /// (a multiple of 4): a step is four channels of one tap, so its
    /// activations are one word of a channel-interleaved copy of the input
    /// at a fixed offset per tap, and the x86 kernel reads them in place
    /// instead of building a panel ([`direct_applies`]).
    Taps {
        /// Kernel taps, `kh * kw`.
        taps: usize,
        /// Input channels per group rounded up to a multiple of 4.
        cp: usize,
    },
}

impl Order {
    /// Stored weights per row for `k` weights.
    #[inline]
    pub const fn kp(self, k: usize) -> usize {
        match self {
            Order::Codes => padded_k(k),
            Order::Taps { taps, cp } => taps * cp,
        }
    }

    /// Where weight `i` (in code order) is stored.
    #[inline]
    pub const fn stored(self, i: usize) -> usize {
        match self {
            Order::Codes => i,
            Order::Taps { taps, cp } => (i % taps) * cp + i / taps,
        }
    }

    /// `f(s, i)` for every stored position `s` in ascending order, `i`
    /// the weight (in code order) stored there or `None` for padding:
    /// no division per weight (decoding at load runs it on every weight
    /// of the model).
    #[inline(always)]
    pub fn each_stored(self, k: usize, mut f: impl FnMut(usize, Option<usize>)) {
        match self {
            Order::Codes => (0..padded_k(k)).for_each(|s| f(s, (s < k).then_some(s))),
            Order::Taps { taps, cp } => {
                let cin = k / taps.max(1);
                for t in 0..taps {
                    for c in 0..cp {
                        f(t * cp + c, (c < cin).then_some(c * taps + t));
                    }
                }
            }
        }
    }
}

/// Why a decoded layout is inconsistent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodedError {
    /// `w.len()` is not `rows * order.kp(k)`, `rows` being `corr.len()`,
    /// or a tap-major order does not match `k`.
    Weights,
    /// `fix_at` is not `rows + 1` non-decreasing indices within `fix`.
    FixIndex,
    /// `shift` is not one entry of 0 or 1 per row.
    Shift,
    /// A fix names a block past the row's end, or a row's fixes are not
    /// in ascending block order.
    FixBlock,
}

/// Read-only view of decoded rows (see the module documentation).
#[derive(Clone, Copy, Debug)]
pub struct DecodedRows<'a> {
    w: &'a [i8],
    corr: &'a [i32],
    shift: &'a [u8],
    fix_at: &'a [u32],
    fix: &'a [Fix],
    k: usize,
    order: Order,
}

impl<'a> DecodedRows<'a> {
    /// View decoded rows of `k` weights stored in `order`; checks every
    /// length and index.
    pub fn new(
        w: &'a [i8],
        corr: &'a [i32],
        shift: &'a [u8],
        fix_at: &'a [u32],
        fix: &'a [Fix],
        k: usize,
        order: Order,
    ) -> Result<Self, DecodedError> {
        let rows = corr.len();
        if shift.len() != rows || shift.iter().any(|&s| s > 1) {
            return Err(DecodedError::Shift);
        }
        if let Order::Taps { taps, cp } = order {
            let fits = taps > 0 && k.is_multiple_of(taps) && cp.is_multiple_of(4) && k / taps <= cp;
            if !fits || taps.checked_mul(cp).is_none() {
                return Err(DecodedError::Weights);
            }
        }
        if Some(w.len()) != rows.checked_mul(order.kp(k)) {
            return Err(DecodedError::Weights);
        }
        if fix_at.len() != rows + 1
            || fix_at.windows(2).any(|p| p[0] > p[1])
            || fix_at[rows] as usize > fix.len()
        {
            return Err(DecodedError::FixIndex);
        }
        let blocks = order.kp(k) / 4;
        let (a, b) = (fix_at[0] as usize, fix_at[rows] as usize);
        let ascending = fix_at.windows(2).all(|p| {
            fix[p[0] as usize..p[1] as usize]
                .windows(2)
                .all(|f| f[0].kb < f[1].kb)
        });
        if !ascending || fix[a..b].iter().any(|f| f.kb as usize >= blocks) {
            return Err(DecodedError::FixBlock);
        }
        Ok(DecodedRows {
            w,
            corr,
            shift,
            fix_at,
            fix,
            k,
            order,
        })
    }

    /// [`DecodedRows::new`] without its checks (which read every fix),
    /// for data checked once at load and viewed on every inference.
    ///
    /// # Safety
    /// The same arguments passed [`DecodedRows::new`] before (kernels
    /// read their activation panel at the fixes' blocks unchecked).
    pub unsafe fn new_unchecked(
        w: &'a [i8],
        corr: &'a [i32],
        shift: &'a [u8],
        fix_at: &'a [u32],
        fix: &'a [Fix],
        k: usize,
        order: Order,
    ) -> Self {
        debug_assert!(DecodedRows::new(w, corr, shift, fix_at, fix, k, order).is_ok());
        DecodedRows {
            w,
            corr,
            shift,
            fix_at,
            fix,
            k,
            order,
        }
    }

    /// Number of rows.
    #[inline]
    pub fn rows(&self) -> usize {
        self.corr.len()
    }

    /// Weights per row (before padding).
    #[inline]
    pub fn k(&self) -> usize {
        self.k
    }

    /// Stored weights per row: [`Order::kp`].
    #[inline]
    pub fn kp(&self) -> usize {
        self.order.kp(self.k)
    }

    /// How the rows order their weights.
    #[inline]
    pub fn order(&self) -> Order {
        self.order
    }

    /// Row `r`'s stored weights (`kp` of them).
    #[inline]
    pub fn row(&self, r: usize) -> &'a [i8] {
        let kp = self.kp();
        &self.w[r * kp..(r + 1) * kp]
    }

    /// What row `r`'s sums start at: its offset correction `-128 *
    /// sum(w)`, shifted right by [`DecodedRows::shift`].
    #[inline]
    pub fn corr(&self, r: usize) -> i32 {
        self.corr[r]
    }

    /// Row `r`'s form: 1 if its weights are stored halved (its sums are
    /// doubled before its fixes are added), else 0.
    #[inline]
    pub fn shift(&self, r: usize) -> u32 {
        self.shift[r] as u32
    }

    /// Row `r`'s fixes.
    #[inline]
    pub fn fixes(&self, r: usize) -> &'a [Fix] {
        &self.fix[self.fix_at[r] as usize..self.fix_at[r + 1] as usize]
    }

    /// Rows `start .. start + n`.
    pub fn sub_rows(&self, start: usize, n: usize) -> DecodedRows<'a> {
        let kp = self.kp();
        DecodedRows {
            w: &self.w[start * kp..(start + n) * kp],
            corr: &self.corr[start..start + n],
            shift: &self.shift[start..start + n],
            fix_at: &self.fix_at[start..start + n + 1],
            fix: self.fix,
            k: self.k,
            order: self.order,
        }
    }

    /// The true weight `r, i` (`i < k`, in code order).
    #[inline]
    pub fn weight(&self, r: usize, i: usize) -> i32 {
        let s = self.order.stored(i);
        let fixes = self.fixes(r);
        let fix = fixes
            .binary_search_by_key(&(s as u32 / 4), |f| f.kb)
            .map_or(0, |j| fixes[j].word.to_le_bytes()[s % 4] as i8 as i32);
        ((self.row(r)[s] as i32) << self.shift(r)) + fix
    }
}

/// Row `r` of `w` in `order`: its blocks that hold a +128 and those that
/// hold a +-1, the fixes of its two forms (`value`: each code's value).
fn row_fix_blocks(w: &PackedRows, r: usize, order: Order, value: &[i32; 256]) -> (usize, usize) {
    let (codes, bits) = (w.row(r), w.bits());
    let (mut top, mut one, mut ht, mut ho) = (0, 0, false, false);
    order.each_stored(w.k(), |s, i| {
        if let Some(i) = i {
            let v = value[crate::codes::code_at(codes, bits, i) as usize];
            ht |= v == 128;
            ho |= v == 1 || v == -1;
        }
        if s % 4 == 3 {
            (top, one) = (top + ht as usize, one + ho as usize);
            (ht, ho) = (false, false);
        }
    });
    (top, one)
}

/// Each code's value, looked up: decoding runs over every weight of the
/// model at load.
fn code_values(bits: crate::Bits) -> [i32; 256] {
    let mut value = [0i32; 256];
    for (c, v) in value.iter_mut().enumerate().take(1 << bits.get()) {
        *v = bits.value(c as u8);
    }
    value
}

/// Row `r`'s form ([`DecodedRows::shift`]) and its fix count: halved
/// where that needs fewer fixes. Codes without +128 (below 4 bits) need
/// none as they are.
fn row_form(w: &PackedRows, r: usize, order: Order, value: &[i32; 256]) -> (u8, usize) {
    if value[w.bits().encode(false, w.bits().max_exp()) as usize] != 128 {
        return (0, 0);
    }
    match row_fix_blocks(w, r, order, value) {
        (top, one) if one < top => (1, one),
        (top, _) => (0, top),
    }
}

/// How many [`Fix`] entries [`decode`] writes for `w` in `order`.
pub fn fix_count(w: &PackedRows, order: Order) -> usize {
    let value = code_values(w.bits());
    (0..w.rows()).map(|r| row_form(w, r, order, &value).1).sum()
}

/// Decode `w` into the layout of [`DecodedRows`] in `order`: `out` holds
/// `rows * order.kp(k)` weights, `corr`, `shift` and `fix_at` `rows`,
/// `rows` and `rows + 1` entries, `fix` exactly [`fix_count`] entries.
/// Panics on other lengths.
pub fn decode(
    w: &PackedRows,
    order: Order,
    out: &mut [i8],
    corr: &mut [i32],
    shift: &mut [u8],
    fix_at: &mut [u32],
    fix: &mut [Fix],
) {
    let (n, k, kp, bits) = (w.rows(), w.k(), order.kp(w.k()), w.bits());
    assert_eq!(out.len(), n * kp, "decode: weights length");
    assert_eq!(corr.len(), n, "decode: corrections length");
    assert_eq!(shift.len(), n, "decode: shifts length");
    assert_eq!(fix_at.len(), n + 1, "decode: fix index length");
    let value = code_values(bits);
    let mut nf = 0usize;
    for r in 0..n {
        fix_at[r] = nf as u32;
        let half = row_form(w, r, order, &value).0;
        shift[r] = half;
        let (row, codes) = (&mut out[r * kp..(r + 1) * kp], w.row(r));
        let mut sum = 0i32;
        let mut word = [0u8; 4];
        order.each_stored(k, |s, i| {
            let v = i.map_or(0, |j| value[crate::codes::code_at(codes, bits, j) as usize]);
            sum += v;
            let (stored, fixed) = match (half, v) {
                (0, 128) => (127, 1),
                (0, v) => (v, 0),
                (_, v @ (-1 | 1)) => (0, v),
                (_, v) => (v / 2, 0),
            };
            row[s] = stored as i8;
            word[s % 4] = fixed as i8 as u8;
            if s % 4 == 3 && word != [0; 4] {
                fix[nf] = Fix {
                    kb: (s / 4) as u32,
                    word: i32::from_le_bytes(word),
                };
                nf += 1;
                word = [0; 4];
            }
        });
        // A multiple of 128: halving it is exact.
        corr[r] = sum.wrapping_mul(-128) >> half;
    }
    fix_at[n] = nf as u32;
    assert_eq!(nf, fix.len(), "decode: fix length");
}

/// True when the pixel-lane GEMM is worth running: a
/// dense or grouped conv whose groups have at least 4 output channels and
/// whose output plane fills a 16-pixel vector; `k` at most [`MAX_K`].
/// Depthwise layers, linear layers (one pixel) and tiny planes keep the
/// tiled kernels.
pub const fn applies(g: &Conv2dGeom) -> bool {
    g.c_out_g() >= 4 && g.out_plane() >= 16 && g.k() <= MAX_K && g.c_in_g() >= 2
}

/// Bytes of the channel-interleaved input band the direct (tap-major)
/// kernel reads its steps from: the stack buffer of the panel it replaces.
pub const DIRECT_BYTES: usize = MAX_K * 16;

/// Lanes per row of the direct kernel's band for layer `g`: the padded
/// input width, split into `stride[1]` column phases (a phase holds every
/// `stride[1]`-th column, so consecutive output columns are consecutive
/// lanes).
pub const fn direct_pitch(g: &Conv2dGeom) -> usize {
    (g.w + g.pads[1] + g.pads[3]).div_ceil(g.stride[1])
}

/// Rows of a phase of the direct kernel's band past its output rows: the
/// vertical reach of the kernel in rows of its row phase.
pub const fn direct_reach(g: &Conv2dGeom) -> usize {
    (g.kh - 1) * g.dilation[0] / g.stride[0]
}

/// The tap-major order ([`Order::Taps`]) of layer `g` if the x86 GEMM
/// can run its rows that way: strides of at most 2, one group,
/// `kp <= MAX_K`, and the channel-interleaved, phase-split input rows one
/// output row reads fit [`DIRECT_BYTES`].
pub const fn taps_order(g: &Conv2dGeom) -> Option<Order> {
    let (sy, sx) = (g.stride[0], g.stride[1]);
    let cp = g.c_in.div_ceil(4) * 4;
    let strides = sy >= 1 && sy <= 2 && sx >= 1 && sx <= 2;
    let fits = strides
        && g.groups == 1
        && g.kh * g.kw * cp <= MAX_K
        && cp * sy * sx * (direct_reach(g) + 1) * direct_pitch(g) + 64 <= DIRECT_BYTES;
    if fits {
        Some(Order::Taps {
            taps: g.kh * g.kw,
            cp,
        })
    } else {
        None
    }
}

/// True when layer `g` is decoded tap-major for the x86 GEMM
/// ([`taps_order`]), which then reads each step's activations in place
/// from a zero-padded, channel-interleaved copy of the input, split into
/// `sy * sx` stride phases: output pixel `(oy, ox)` is lane `oy * P + ox`
/// with `P` = [`direct_pitch`], tap `(ky, kx)` reads phase
/// `(ky dy % sy, kx dx % sx)` at lane `+ (ky dy / sy) P + kx dx / sx`, and
/// the `P - out_w` lanes past each output row are computed and dropped.
/// That waste has to cost less than the panel it saves, whose share of a
/// layer's time falls with its output channels (measured on ResNet-18
/// b4: 16% at 64 channels, 8% at 128): taken when `waste < 8 / n`.
/// ResNet-18's 28x28 128-channel layers (`waste = 2 / 30`, `8.5 / n`)
/// ran 595 us direct and 588 us on the panel once the panel builder
/// tabulated its taps; its 3x3/2 layer to 28x28 (`4.4 / n`) 311 against
/// 344 us, its 56x56 ones (`2.2 / n`) 590 against 724 us. Not
/// for 1x1 kernels: their panel is the interleave itself, built once per
/// pixel block from one tap, so there is nothing to save, and the direct
/// kernel's bands cut the plane into more partial blocks. Not when
/// padding the channels to 4 adds a tenth to the steps (ResNet's 3-channel
/// stem: 49 steps against the panel's 37).
pub const fn direct_applies(g: &Conv2dGeom) -> bool {
    let pitch = direct_pitch(g);
    let cp = g.c_in.div_ceil(4) * 4;
    applies(g)
        && g.kh * g.kw > 1
        && taps_order(g).is_some()
        && (pitch - g.out_w()) * g.c_out < 8 * pitch
        && 10 * g.kh * g.kw * cp <= 11 * padded_k(g.k())
}

/// Largest `k` of the GEMM kernel: its activation panel (`k` rounded to
/// four, times 16 pixels per vector, up to 4 vectors) lives on the stack;
/// 288 KiB holds ResNet's `k = 4608` at 64 pixels.
pub const MAX_K: usize = 18 * 1024;

/// The argument checks every decoded-row conv kernel makes (`name` in the
/// messages): `k` matches the geometry and is at most [`MAX_K`], and the
/// lengths of `crate::dispatch::check_call`. Tap-major rows are the
/// caller's to check: only some kernels take them.
pub fn check_conv(
    name: &str,
    g: &Conv2dGeom,
    x_len: usize,
    d: &DecodedRows,
    oc0: usize,
    rq_len: usize,
    out_len: usize,
) {
    assert_eq!(d.k(), g.k(), "decoded rows: k");
    assert!(g.k() <= MAX_K, "{name}: k above MAX_K");
    crate::dispatch::check_call(g, x_len, d.k(), d.rows(), oc0, rq_len, out_len);
}

/// The argument checks of a batched linear kernel on decoded rows (`name`
/// in the messages): rows in code order, `k` in `1 ..= MAX_K`, `x` of `m`
/// rows of `k`, `out` of `m` rows of `d.rows()`, one requantizer per
/// output.
pub fn check_linear(
    name: &str,
    x_len: usize,
    m: usize,
    d: &DecodedRows,
    rq_len: usize,
    out_len: usize,
) {
    assert_eq!(d.order(), Order::Codes, "{name}: linear rows in code order");
    check_batch(name, x_len, m, d.k(), d.rows(), MAX_K, rq_len, out_len);
}

/// The argument checks every batched linear kernel makes, whatever its
/// weight layout (`name` in the messages): `k` in `1 ..= max_k`, `x` of
/// `m` rows of `k`, `out` of `m` rows of `n`, one epilogue (requantizer
/// or affine) per output.
#[allow(clippy::too_many_arguments)]
pub fn check_batch(
    name: &str,
    x_len: usize,
    m: usize,
    k: usize,
    n: usize,
    max_k: usize,
    ep_len: usize,
    out_len: usize,
) {
    assert!((1..=max_k).contains(&k), "{name}: k outside 1..={max_k}");
    assert_eq!(Some(x_len), m.checked_mul(k), "linear input length");
    assert_eq!(Some(out_len), m.checked_mul(n), "linear output length");
    assert_eq!(ep_len, n, "one epilogue per output");
}

/// The reference of the decoded layout: equal to
/// [`crate::scalar::conv_shift_i8`] on the codes `d` was decoded from.
pub fn conv_decoded_i8(
    g: &Conv2dGeom,
    x: &[i8],
    d: &DecodedRows,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    assert_eq!(d.k(), g.k(), "decoded rows: k");
    crate::dispatch::check_call(g, x.len(), d.k(), d.rows(), oc0, rq.len(), out.len());
    let (oh, ow) = (g.out_h(), g.out_w());
    for r in 0..d.rows() {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = 0i32;
                g.for_each_tap(oc0 + r, oy, ox, |xi, ki| {
                    acc += x[xi] as i32 * d.weight(r, ki);
                });
                out[(r * oh + oy) * ow + ox] = rq[r].apply(acc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes::pack;
    use crate::Bits;

    extern crate std;
    use std::{vec, vec::Vec};

    #[test]
    fn decode_round_trips_every_code() {
        for bits in [Bits::B2, Bits::B3, Bits::B4] {
            // Code order with a padded last step; tap-major with channels
            // padded (5 -> 8) and not (8), 3 taps.
            let orders = [
                (2 * (1 << bits.get()) + 3, Order::Codes),
                (15, Order::Taps { taps: 3, cp: 8 }),
                (24, Order::Taps { taps: 3, cp: 8 }),
            ];
            for (k, order) in orders {
                let n = 3;
                let codes: Vec<u8> = (0..n * k).map(|i| (i % (1 << bits.get())) as u8).collect();
                let mut packed = vec![0u8; n * bits.row_bytes(k)];
                pack(&codes, bits, n, k, &mut packed);
                let w = PackedRows::new(&packed, bits, n, k).unwrap();
                let nf = fix_count(&w, order);
                assert_eq!(nf > 0, bits == Bits::B4);
                let (mut out, mut corr) = (vec![0i8; n * order.kp(k)], vec![0i32; n]);
                let (mut at, mut fix) = (vec![0u32; n + 1], vec![Fix::default(); nf]);
                let mut shift = vec![0u8; n];
                decode(
                    &w, order, &mut out, &mut corr, &mut shift, &mut at, &mut fix,
                );
                let d = DecodedRows::new(&out, &corr, &shift, &at, &fix, k, order).unwrap();
                for r in 0..n {
                    let mut sum = 0;
                    for i in 0..k {
                        assert_eq!(d.weight(r, i), bits.value(codes[r * k + i]));
                        sum += d.weight(r, i);
                    }
                    assert_eq!(d.corr(r) << d.shift(r), -128 * sum);
                    // Every stored weight is a true one or padding (zero).
                    let fixed: i32 = d
                        .fixes(r)
                        .iter()
                        .flat_map(|f| f.word.to_le_bytes())
                        .map(|b| b as i8 as i32)
                        .sum();
                    let stored: i32 = d.row(r).iter().map(|&v| v as i32).sum::<i32>();
                    assert_eq!((stored << d.shift(r)) + fixed, sum);
                    if order == Order::Codes {
                        assert!(d.row(r)[k..].iter().all(|&v| v == 0));
                    }
                }
                let s = d.sub_rows(1, 2);
                assert_eq!(s.weight(0, 5), d.weight(1, 5));
                assert_eq!(s.fixes(1), d.fixes(2));
            }
        }
    }

    /// Rows crowded at the top exponent are stored halved, their +-1 in
    /// fixes; rows with more +-1 blocks than +128 ones are not.
    #[test]
    fn decode_halves_rows_crowded_at_the_top() {
        let bits = Bits::B4;
        let (top, one) = (bits.encode(false, 7), bits.encode(true, 0));
        let k = 16;
        // Row 0: +128 in every block, one -1. Row 1: -1 in every block,
        // one +128. Row 2: as many of each (a tie keeps the row as is).
        let mut codes = vec![bits.encode(false, 3); 3 * k];
        for b in 0..4 {
            codes[4 * b] = top;
            codes[k + 4 * b + 1] = one;
        }
        codes[3] = one;
        codes[k + 2] = top;
        codes[2 * k] = top;
        codes[2 * k + 5] = one;
        let mut packed = vec![0u8; 3 * bits.row_bytes(k)];
        pack(&codes, bits, 3, k, &mut packed);
        let w = PackedRows::new(&packed, bits, 3, k).unwrap();
        let nf = fix_count(&w, Order::Codes);
        assert_eq!(nf, 1 + 1 + 1);
        let (mut out, mut corr, mut shift) = (vec![0i8; 3 * k], vec![0i32; 3], vec![9u8; 3]);
        let (mut at, mut fix) = (vec![0u32; 4], vec![Fix::default(); nf]);
        decode(
            &w,
            Order::Codes,
            &mut out,
            &mut corr,
            &mut shift,
            &mut at,
            &mut fix,
        );
        assert_eq!(shift, [1, 0, 0]);
        let d = DecodedRows::new(&out, &corr, &shift, &at, &fix, k, Order::Codes).unwrap();
        assert_eq!(d.row(0)[0], 64);
        assert_eq!(
            d.fixes(0),
            &[Fix {
                kb: 0,
                word: i32::from_le_bytes([0, 0, 0, 0xff])
            }]
        );
        for r in 0..3 {
            let mut sum = 0;
            for i in 0..k {
                assert_eq!(d.weight(r, i), bits.value(codes[r * k + i]), "{r} {i}");
                sum += d.weight(r, i);
            }
            assert_eq!(d.corr(r) << d.shift(r), -128 * sum);
        }
    }

    #[test]
    fn inconsistent_layouts_are_refused() {
        let w = [0i8; 8];
        let corr = [0i32; 2];
        let sh = [0u8, 1];
        let fix = [Fix { kb: 0, word: 1 }];
        for bad in [&[0u8][..], &[0, 2], &[0, 0, 0]] {
            assert_eq!(
                DecodedRows::new(&w, &corr, bad, &[0, 0, 1], &fix, 3, Order::Codes).err(),
                Some(DecodedError::Shift),
                "{bad:?}"
            );
        }
        assert!(DecodedRows::new(&w, &corr, &sh, &[0, 0, 1], &fix, 3, Order::Codes).is_ok());
        assert_eq!(
            DecodedRows::new(&w[..7], &corr, &sh, &[0, 0, 1], &fix, 3, Order::Codes).err(),
            Some(DecodedError::Weights)
        );
        assert_eq!(
            DecodedRows::new(&w, &corr, &sh, &[0, 1, 0], &fix, 3, Order::Codes).err(),
            Some(DecodedError::FixIndex)
        );
        assert_eq!(
            DecodedRows::new(&w, &corr, &sh, &[0, 0, 2], &fix, 3, Order::Codes).err(),
            Some(DecodedError::FixIndex)
        );
        let far = [Fix { kb: 1, word: 1 }];
        assert_eq!(
            DecodedRows::new(&w, &corr, &sh, &[0, 0, 1], &far, 3, Order::Codes).err(),
            Some(DecodedError::FixBlock)
        );
        let (w8, twice) = ([0i8; 16], [Fix { kb: 1, word: 1 }, Fix { kb: 0, word: 1 }]);
        assert_eq!(
            DecodedRows::new(&w8, &corr, &sh, &[0, 2, 2], &twice, 8, Order::Codes).err(),
            Some(DecodedError::FixBlock),
            "fixes out of order"
        );
        assert!(DecodedRows::new(&w8, &corr, &sh, &[0, 1, 2], &twice, 8, Order::Codes).is_ok());
        let taps = |taps, cp| Order::Taps { taps, cp };
        assert!(DecodedRows::new(&w8, &corr, &sh, &[0, 0, 0], &[], 4, taps(2, 4)).is_ok());
        for (k, order) in [
            (4, taps(3, 4)),
            (8, taps(2, 2)),
            (12, taps(2, 4)),
            (4, taps(0, 4)),
        ] {
            assert_eq!(
                DecodedRows::new(&w8, &corr, &sh, &[0, 0, 0], &[], k, order).err(),
                Some(DecodedError::Weights),
                "k {k}, {order:?}"
            );
        }
    }
}
