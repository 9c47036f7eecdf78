//! The ISA-independent half of every SIMD conv/linear kernel.
//!
//! Per group of output channels, output pixels are taken in tiles of
//! [`P`]; each tile's patches (the `k` activations one output reads, in the
//! weight order `(ic, ky, kx)`, zero for padded taps) are gathered once
//! into a 64-byte-aligned 16 KB stack buffer, converted to the element type
//! the row kernel wants (i8, i16, i32, f32 bits), and then reused by every
//! output channel of the call: the row kernel decodes a row's packed codes
//! in registers and accumulates against the `P` patches at once, so the
//! decode cost is shared by `P` pixels. A linear layer is the 1x1 case
//! (one pixel, the patch is the input).
//!
//! `k` is cut into chunks that fit the buffer (a multiple of [`KALIGN`]
//! codes, so every chunk starts on a byte of every packed row); with more
//! than one chunk, partial sums of a block of [`CB`] rows live in a stack
//! array. Each chunk's patch is zero beyond its last code up to a multiple
//! of `KALIGN`, so row kernels may run whole blocks past the end.

use crate::{fexp, Bits, Conv2dGeom, PackedRows};

/// Bytes of the stack activation buffer.
const BUF_BYTES: usize = 16 * 1024;
/// Output pixels per tile.
pub(crate) const P: usize = 4;
/// Rows per block of chunk accumulators.
const CB: usize = 32;
/// Chunks of `k` are multiples of this many codes.
pub(crate) const KALIGN: usize = 64;

#[repr(C, align(64))]
struct Buf([u8; BUF_BYTES]);

/// A SIMD row kernel: the ISA-specific inner loop.
///
/// # Safety
/// `X` must be a primitive integer or float type (every bit pattern valid,
/// alignment at most 64): the driver views its byte buffer as `[X]`.
pub(crate) unsafe trait RowKernel {
    /// Activation type of the layer (`i8` or `f32`).
    type In: Copy;
    /// Element of the gathered patch.
    type X: Copy + Default;
    /// Accumulator (`i32`, exact; or `f32`).
    type Acc: Copy + Default + core::ops::AddAssign;
    /// Planes per patch (fexp keeps a mask plane after the values).
    const PLANES: usize;

    /// Store activation `v` at index `i` of a patch whose planes hold
    /// `len` elements each (the patch was zero-filled first). Returns
    /// `false` when this activation needs the exact scalar path.
    fn put(slot: &mut [Self::X], len: usize, i: usize, v: Self::In) -> bool;

    /// The sums over one chunk for `NP` pixels: `codes` are the chunk's
    /// bytes of one packed row (`ceil(kc * b / 8)` bytes), pixel `j`'s patch
    /// starts at `xs[j * stride]` (planes of `stride / PLANES` elements,
    /// zero beyond `kc` up to a multiple of [`KALIGN`]).
    ///
    /// # Safety
    /// The CPU runs the kernel's ISA; `xs` holds `NP` patches as described.
    unsafe fn dot<const NP: usize>(
        codes: &[u8],
        bits: Bits,
        kc: usize,
        xs: &[Self::X],
        stride: usize,
    ) -> [Self::Acc; NP];
}

/// The argument checks of the scalar kernels (same panics).
pub(crate) fn check(
    g: &Conv2dGeom,
    in_len: usize,
    w: &PackedRows,
    oc0: usize,
    ep: usize,
    out: usize,
) {
    let n = w.rows();
    assert!(oc0 + n <= g.c_out, "channel range out of bounds");
    assert_eq!(out, n * g.out_plane(), "output length");
    assert_eq!(w.k(), g.k());
    assert_eq!(ep, n);
    assert_eq!(in_len, g.in_len());
}

/// Run kernel `K` over output channels `oc0 .. oc0 + w.rows()`: calls
/// `finish(r, q, acc)` for row `r` (relative to `oc0`) and output pixel `q`
/// (`oy * out_w + ox`). Pixels with an activation that `K::put` refused
/// get `slow(r, q)` instead.
///
/// # Safety
/// The CPU runs `K`'s ISA. Arguments were checked with [`check`].
pub(crate) unsafe fn conv<K: RowKernel>(
    g: &Conv2dGeom,
    x: &[K::In],
    w: &PackedRows,
    oc0: usize,
    mut finish: impl FnMut(usize, usize, K::Acc),
    slow: impl Fn(usize, usize) -> K::Acc,
) {
    let n = w.rows();
    let plane = g.out_plane();
    let k = g.k();
    if n == 0 || plane == 0 || k == 0 {
        return;
    }
    let mut buf = Buf([0; BUF_BYTES]);
    let elems = BUF_BYTES / core::mem::size_of::<K::X>();
    // SAFETY: `Buf` is 64-byte aligned and `K::X` is a primitive type of
    // alignment <= 64 for which every bit pattern is valid (RowKernel's
    // contract); `elems * size_of::<X>() <= BUF_BYTES`.
    let xs: &mut [K::X] =
        unsafe { core::slice::from_raw_parts_mut(buf.0.as_mut_ptr().cast::<K::X>(), elems) };
    let per_px = elems / (P * K::PLANES);
    let kc_max = (per_px / KALIGN * KALIGN).min(k.div_ceil(KALIGN) * KALIGN);
    debug_assert!(kc_max >= KALIGN);
    let d = Driver {
        g,
        x,
        w,
        k,
        kc_max,
        stride: K::PLANES * kc_max,
        nchunks: k.div_ceil(kc_max),
    };
    let cog = g.c_out_g();
    let mut r = 0;
    while r < n {
        let grp = (oc0 + r) / cog;
        let r_end = n.min((grp + 1) * cog - oc0);
        let mut q = 0;
        while q < plane {
            if plane - q >= P {
                // SAFETY: forwarded from this function's contract.
                unsafe { d.tile::<K, P>(xs, grp, r, r_end, q, &mut finish, &slow) };
                q += P;
            } else {
                // SAFETY: as above.
                unsafe { d.tile::<K, 1>(xs, grp, r, r_end, q, &mut finish, &slow) };
                q += 1;
            }
        }
        r = r_end;
    }
}

struct Driver<'a, 'w, In> {
    g: &'a Conv2dGeom,
    x: &'a [In],
    w: &'a PackedRows<'w>,
    k: usize,
    kc_max: usize,
    stride: usize,
    nchunks: usize,
}

impl<In: Copy> Driver<'_, '_, In> {
    /// Gather chunk `c` of the patches of pixels `q0 .. q0 + NP` (group
    /// `grp`); returns which pixels took only fast-path activations.
    fn gather<K: RowKernel<In = In>, const NP: usize>(
        &self,
        xs: &mut [K::X],
        grp: usize,
        q0: usize,
        c: usize,
    ) -> [bool; NP] {
        let g = self.g;
        let c0 = c * self.kc_max;
        let kc = self.kc_max.min(self.k - c0);
        let (kh, kw) = (g.kh, g.kw);
        let khw = kh * kw;
        let cig = g.c_in_g();
        let mut ok = [true; NP];
        for (j, okj) in ok.iter_mut().enumerate() {
            let slot = &mut xs[j * self.stride..(j + 1) * self.stride];
            slot.fill(K::X::default());
            let q = q0 + j;
            let (oy, ox) = (q / g.out_w(), q % g.out_w());
            let ic0 = c0 / khw;
            let ic1 = cig.min((c0 + kc).div_ceil(khw));
            for ic in ic0..ic1 {
                let ch = grp * cig + ic;
                for ky in 0..kh {
                    let iy = (oy * g.stride[0] + ky * g.dilation[0]) as isize - g.pads[0] as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let base = (ch * g.h + iy as usize) * g.w;
                    let kbase = (ic * kh + ky) * kw;
                    for kx in 0..kw {
                        let ki = kbase + kx;
                        if ki < c0 || ki >= c0 + kc {
                            continue;
                        }
                        let ix =
                            (ox * g.stride[1] + kx * g.dilation[1]) as isize - g.pads[1] as isize;
                        if ix < 0 || ix >= g.w as isize {
                            continue;
                        }
                        *okj &= K::put(slot, self.kc_max, ki - c0, self.x[base + ix as usize]);
                    }
                }
            }
        }
        ok
    }

    /// Rows `r0 .. r1` (one group) for pixels `q0 .. q0 + NP`.
    ///
    /// # Safety
    /// The CPU runs `K`'s ISA.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<K: RowKernel<In = In>, const NP: usize>(
        &self,
        xs: &mut [K::X],
        grp: usize,
        r0: usize,
        r1: usize,
        q0: usize,
        finish: &mut impl FnMut(usize, usize, K::Acc),
        slow: &impl Fn(usize, usize) -> K::Acc,
    ) {
        let bits: Bits = self.w.bits();
        let b = bits.get() as usize;
        let rb = bits.row_bytes(self.k);
        let mut ok = [true; NP];
        if self.nchunks == 1 {
            ok = self.gather::<K, NP>(xs, grp, q0, 0);
        }
        let mut rs = r0;
        while rs < r1 {
            let re = r1.min(rs + CB);
            let mut acc = [[K::Acc::default(); NP]; CB];
            for c in 0..self.nchunks {
                if self.nchunks > 1 {
                    let o = self.gather::<K, NP>(xs, grp, q0, c);
                    for j in 0..NP {
                        ok[j] = (c == 0 || ok[j]) && o[j];
                    }
                }
                let c0 = c * self.kc_max;
                let kc = self.kc_max.min(self.k - c0);
                let b0 = c0 * b / 8;
                let b1 = ((c0 + kc) * b).div_ceil(8).min(rb);
                for (r, a) in (rs..re).zip(acc.iter_mut()) {
                    let row = &self.w.row(r)[b0..b1];
                    // SAFETY: the ISA is available (this function's
                    // contract); `xs` holds NP gathered patches of
                    // `stride` elements, zero-padded to KALIGN.
                    let s = unsafe { K::dot::<NP>(row, bits, kc, xs, self.stride) };
                    for j in 0..NP {
                        a[j] += s[j];
                    }
                }
            }
            for (r, a) in (rs..re).zip(acc.iter()) {
                for j in 0..NP {
                    let v = if ok[j] { a[j] } else { slow(r, q0 + j) };
                    finish(r, q0 + j, v);
                }
            }
            rs = re;
        }
    }
}

// ---------------------------------------------------------------------------
// Shared by the fexp kernels of every ISA.

/// Largest biased exponent an activation may have for the fast path with
/// any code (p <= 7 keeps the result normal).
pub(crate) const FEXP_MAX_E: u32 = 254 - 7;

/// Fast-path store shared with the other ISAs: value bits and an all-ones
/// mask for a normal `v` that stays normal under `* 2^7`; nothing (the patch
/// is zero) for a zero; `false` for anything else (subnormal, huge, inf,
/// NaN), whose pixel then takes the exact scalar path.
#[inline]
pub(crate) fn fexp_put(slot: &mut [u32], len: usize, i: usize, v: f32) -> bool {
    let b = v.to_bits();
    if b & 0x7fff_ffff == 0 {
        return true;
    }
    let e = (b >> 23) & 0xff;
    if e == 0 || e > FEXP_MAX_E {
        return false;
    }
    slot[i] = b;
    slot[len + i] = u32::MAX;
    true
}

/// Exact scalar value of one float output (for pixels with edge-case
/// activations): the reference's own loop.
pub(crate) fn fexp_slow(
    g: &Conv2dGeom,
    x: &[f32],
    w: &PackedRows,
    oc: usize,
    r: usize,
    q: usize,
) -> f32 {
    let (oy, ox) = (q / g.out_w(), q % g.out_w());
    let row = w.row(r);
    let mut acc = 0f32;
    g.for_each_tap(oc, oy, ox, |xi, ki| {
        acc += fexp::apply_code(x[xi], w.bits(), crate::codes::code_at(row, w.bits(), ki))
    });
    acc
}
