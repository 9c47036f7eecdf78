//! The ISA-independent half of every SIMD conv/linear kernel: everything
//! but the inner loop, which each ISA file supplies as a [`RowKernel`].
//!
//! Per group of output channels, output pixels are taken in tiles of
//! [`P`]; each tile's patches (the `k` activations one output reads, in the
//! weight order `(ic, ky, kx)`, zero for padded taps) are gathered once
//! into a 64-byte-aligned 16 KB stack buffer, converted to the element type
//! the row kernel wants (i8, i16, i32, f32 bits, or a 16-byte lookup table
//! per activation for `lut`), and then reused by every output channel of
//! the call: the row kernel decodes the packed codes in registers and
//! accumulates against the `P` patches at once, so the decode cost is
//! shared by `P` pixels. A linear layer is the 1x1 case (one pixel, the
//! patch is the input).
//!
//! `k` is cut into chunks that fit the buffer (a multiple of [`KALIGN`]
//! codes, so every chunk starts on a byte of every packed row); with more
//! than one chunk, partial sums of a block of [`CB`] rows live in a stack
//! array. Each chunk's patch is zero beyond its last code up to a multiple
//! of `KALIGN`, so row kernels may run whole blocks past the end.
//!
//! Weights are seen as rows of bytes ([`Rows`]): packed `b`-bit codes
//! (b = 2, 3, 4), or plain int8 weights as "8-bit codes" (`B = 8`), so the
//! int8-weight kernels of kept layers share this driver.
//!
//! The entry points [`shift_i8`], [`w8_i8`] and [`shift_f32`] do the
//! checks and the epilogue every ISA's public kernel needs; an ISA file
//! holds only its row kernels and one-line entry points.

use crate::dispatch::Isa;
use crate::scalar::Affine;
use crate::{fexp, Conv2dGeom, PackedRows, Requant};

/// Bytes of the stack activation buffer.
const BUF_BYTES: usize = 16 * 1024;
/// Output pixels per tile.
pub(crate) const P: usize = 4;
/// Rows per block of chunk accumulators.
const CB: usize = 256;
/// Most rows one [`RowKernel::dot`] call may take ([`RowKernel::ROWS`]).
pub(crate) const MAX_ROWS: usize = 16;
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
    /// Rows one [`RowKernel::dot`] call computes at most (`<= MAX_ROWS`):
    /// 1 for kernels whose lanes run along `k`, 16 for `lut`, whose lanes
    /// are output channels.
    const ROWS: usize = 1;

    /// Store activation `v` at index `i` of a patch whose planes hold
    /// `len` elements each (the patch was zero-filled first). Returns
    /// `false` when this activation needs the exact scalar path.
    fn put(slot: &mut [Self::X], len: usize, i: usize, v: Self::In) -> bool;

    /// Store the run `src[..n]` (activations of consecutive taps, one
    /// input row) at indices `i .. i + n`, as `n` calls of
    /// [`RowKernel::put`] would. When `src` has 8 or more elements the
    /// kernel may also store `src[n..8]` at `i + n .. i + 8` (if below
    /// `len`): the driver passes such a `src` only when later runs of the
    /// same patch overwrite those indices. Kernels whose `put` is a plain
    /// copy override this with [`copy_run`].
    #[inline(always)]
    fn put_run(slot: &mut [Self::X], len: usize, i: usize, src: &[Self::In], n: usize) -> bool {
        let mut ok = true;
        for (t, &v) in src[..n].iter().enumerate() {
            ok &= Self::put(slot, len, i + t, v);
        }
        ok
    }

    /// Called once on each gathered chunk (`np` patches of `kc` elements
    /// at `xs[j * stride]`) before the chunk's [`RowKernel::dot`] calls,
    /// whose cost it shares over all rows: a kernel may reorder each patch
    /// within blocks of [`KALIGN`] elements to match its decode order, and
    /// tell the row kernel (the returned `mode`) a property of the
    /// activations, e.g. that a faster exact path applies.
    ///
    /// # Safety
    /// The CPU runs the kernel's ISA.
    #[inline]
    unsafe fn prepare<const B: u32>(
        xs: &mut [Self::X],
        np: usize,
        stride: usize,
        kc: usize,
    ) -> u32 {
        let _ = (xs, np, stride, kc);
        0
    }

    /// Add the sums over one chunk for `NP` pixels and `rows.len() <=
    /// ROWS` rows to `out`: `rows[r]` holds the chunk's bytes of one row
    /// (`ceil(kc * B / 8)` bytes; `B = 8`: int8 weights), pixel `j`'s patch
    /// starts at `xs[j * stride]` (planes of `stride / PLANES` elements,
    /// zero beyond `kc` up to a multiple of [`KALIGN`]), as
    /// [`RowKernel::prepare`] left it and returned `mode` for.
    ///
    /// # Safety
    /// The CPU runs the kernel's ISA; `xs` holds `NP` patches as described.
    unsafe fn dot<const B: u32, const NP: usize>(
        rows: &[&[u8]],
        kc: usize,
        xs: &[Self::X],
        stride: usize,
        out: &mut [[Self::Acc; NP]],
        mode: u32,
    );
}

/// [`RowKernel::dot`] for kernels of one row at a time: `f` computes one
/// row's sums.
#[inline(always)]
pub(crate) fn each_row<A: Copy + core::ops::AddAssign, const NP: usize>(
    rows: &[&[u8]],
    out: &mut [[A; NP]],
    mut f: impl FnMut(&[u8]) -> [A; NP],
) {
    for (row, o) in rows.iter().zip(out.iter_mut()) {
        let s = f(row);
        for j in 0..NP {
            o[j] += s[j];
        }
    }
}

/// [`RowKernel::put_run`] for kernels whose patch element is the
/// activation itself: runs of up to 8 (a 3x3 or 7x7 kernel row) move as
/// one 8-element copy when `src` and the plane have room, which is what
/// makes the gather cheap next to the row kernel.
#[inline(always)]
pub(crate) fn copy_run<T: Copy>(slot: &mut [T], len: usize, i: usize, src: &[T], n: usize) {
    if n <= 8 && src.len() >= 8 && i + 8 <= len {
        copy_n::<T, 8>(&mut slot[i..], src, 0);
    } else {
        copy_short(&mut slot[i..i + n], &src[..n]);
    }
}

/// [`RowKernel::put`] and [`RowKernel::put_run`] of a kernel whose patch
/// element is the activation itself (`X = In = $t`): a plain store and
/// [`copy_run`]. The `dot` kernels of every ISA and `avx512/lut` (which
/// builds its tables later, in `prepare`) share them.
macro_rules! copy_put {
    ($t:ty) => {
        #[inline]
        fn put(slot: &mut [$t], _len: usize, i: usize, v: $t) -> bool {
            slot[i] = v;
            true
        }
        #[inline(always)]
        fn put_run(slot: &mut [$t], len: usize, i: usize, src: &[$t], n: usize) -> bool {
            $crate::dispatch::tile::copy_run(slot, len, i, src, n);
            true
        }
    };
}
pub(crate) use copy_put;

/// `dst.copy_from_slice(src)` for the short copies of the gather and the
/// row tails (up to 32 elements): two overlapping fixed-size moves instead
/// of a call to `memcpy`, which dominated such copies.
#[inline(always)]
pub(crate) fn copy_short<T: Copy>(dst: &mut [T], src: &[T]) {
    let n = src.len();
    match n {
        0 => {}
        1 => dst[0] = src[0],
        2..=3 => {
            copy_n::<T, 2>(dst, src, 0);
            copy_n::<T, 2>(dst, src, n - 2);
        }
        4..=7 => {
            copy_n::<T, 4>(dst, src, 0);
            copy_n::<T, 4>(dst, src, n - 4);
        }
        8..=15 => {
            copy_n::<T, 8>(dst, src, 0);
            copy_n::<T, 8>(dst, src, n - 8);
        }
        16..=32 => {
            copy_n::<T, 16>(dst, src, 0);
            copy_n::<T, 16>(dst, src, n - 16);
        }
        _ => dst.copy_from_slice(src),
    }
}

/// `dst[o..][..N] = src[o..][..N]` as one fixed-size move.
#[inline(always)]
fn copy_n<T: Copy, const N: usize>(dst: &mut [T], src: &[T], o: usize) {
    let v: [T; N] = core::array::from_fn(|t| src[o + t]);
    dst[o..o + N].copy_from_slice(&v);
}

/// Weight rows as bytes: packed codes of `b` bits, or int8 weights (`b = 8`).
#[derive(Clone, Copy)]
pub(crate) struct Rows<'a> {
    data: &'a [u8],
    rb: usize,
    n: usize,
    k: usize,
    b: u32,
}

impl<'a> Rows<'a> {
    fn packed(w: &PackedRows<'a>) -> Self {
        Rows {
            data: w.bytes(),
            rb: w.bits().row_bytes(w.k()),
            n: w.rows(),
            k: w.k(),
            b: w.bits().get(),
        }
    }

    fn int8(w: &'a [i8], k: usize) -> Self {
        // SAFETY: i8 and u8 have the same size, alignment and validity.
        let data = unsafe { core::slice::from_raw_parts(w.as_ptr().cast::<u8>(), w.len()) };
        Rows {
            data,
            rb: k,
            n: w.len() / k.max(1),
            k,
            b: 8,
        }
    }

    #[inline]
    fn row(&self, r: usize) -> &'a [u8] {
        &self.data[r * self.rb..(r + 1) * self.rb]
    }
}

/// The argument checks of the scalar kernels (same panics).
fn check(g: &Conv2dGeom, in_len: usize, w: &Rows, oc0: usize, ep: usize, out: usize) {
    assert_eq!(w.data.len(), w.n * w.rb);
    crate::dispatch::check_call(g, in_len, w.k, w.n, oc0, ep, out);
}

fn require(isa: Isa) {
    assert!(
        isa.available(),
        "{} kernel called on a CPU without that level",
        isa.name()
    );
}

/// An int8 entry point with shift codes (`shift`, `dot`, `lut` families):
/// equal to [`crate::scalar::conv_shift_i8`]. Panics if the CPU lacks
/// `isa`, which must be `K`'s level.
pub(crate) fn shift_i8<K: RowKernel<In = i8, Acc = i32>>(
    isa: Isa,
    g: &Conv2dGeom,
    x: &[i8],
    w: &PackedRows,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    int8::<K>(isa, g, x, Rows::packed(w), oc0, rq, out)
}

/// An int8-weight entry point: equal to [`crate::scalar::conv_w8_i8`].
/// Panics if the CPU lacks `isa`, which must be `K`'s level.
pub(crate) fn w8_i8<K: RowKernel<In = i8, Acc = i32>>(
    isa: Isa,
    g: &Conv2dGeom,
    x: &[i8],
    w: &[i8],
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    let k = g.k();
    let n = w.len() / k.max(1);
    assert_eq!(w.len(), n * k);
    int8::<K>(isa, g, x, Rows::int8(w, k), oc0, rq, out)
}

fn int8<K: RowKernel<In = i8, Acc = i32>>(
    isa: Isa,
    g: &Conv2dGeom,
    x: &[i8],
    w: Rows,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    require(isa);
    check(g, x.len(), &w, oc0, rq.len(), out.len());
    let plane = g.out_plane();
    // SAFETY: the CPU runs `isa` (checked above), `K`'s level by this
    // function's contract; arguments checked.
    unsafe {
        conv::<K>(
            g,
            x,
            w,
            oc0,
            |r, q, a| rq[r].apply_run(a, &mut out[r * plane + q..][..a.len()]),
            |_, _| 0,
        )
    }
}

/// A float entry point (`fexp`): [`crate::scalar::conv_shift_f32`] within
/// the summation bound; pixels with edge-case activations take the exact
/// scalar path. Panics if the CPU lacks `isa`, which must be `K`'s level.
pub(crate) fn shift_f32<K: RowKernel<In = f32, Acc = f32>>(
    isa: Isa,
    g: &Conv2dGeom,
    x: &[f32],
    w: &PackedRows,
    oc0: usize,
    ep: &[Affine],
    out: &mut [f32],
) {
    require(isa);
    let rows = Rows::packed(w);
    check(g, x.len(), &rows, oc0, ep.len(), out.len());
    let plane = g.out_plane();
    // SAFETY: the CPU runs `isa` (checked above), `K`'s level by this
    // function's contract; arguments checked.
    unsafe {
        conv::<K>(
            g,
            x,
            rows,
            oc0,
            |r, q, a| {
                for (o, &v) in out[r * plane + q..][..a.len()].iter_mut().zip(a) {
                    *o = ep[r].apply(v);
                }
            },
            |r, q| fexp_slow(g, x, w, oc0 + r, r, q),
        )
    }
}

/// Run kernel `K` over output channels `oc0 .. oc0 + w.n`: calls
/// `finish(r, q, accs)` for row `r` (relative to `oc0`) and the run of output pixels from `q`
/// (`oy * out_w + ox`). Pixels with an activation that `K::put` refused
/// get `slow(r, q)` instead.
///
/// # Safety
/// The CPU runs `K`'s ISA. Arguments were checked with [`check`].
unsafe fn conv<K: RowKernel>(
    g: &Conv2dGeom,
    x: &[K::In],
    w: Rows,
    oc0: usize,
    mut finish: impl FnMut(usize, usize, &[K::Acc]),
    slow: impl Fn(usize, usize) -> K::Acc,
) {
    let n = w.n;
    let plane = g.out_plane();
    let k = g.k();
    if n == 0 || plane == 0 || k == 0 {
        return;
    }
    debug_assert!(K::ROWS >= 1 && K::ROWS <= MAX_ROWS);
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
            // SAFETY (both calls): forwarded from this function's contract.
            if plane - q >= P {
                unsafe { d.tile::<K, P>(xs, grp, r, r_end, q, &mut finish, &slow) };
                q += P;
            } else {
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
    w: Rows<'w>,
    k: usize,
    kc_max: usize,
    stride: usize,
    nchunks: usize,
}

impl<In: Copy> Driver<'_, '_, In> {
    /// Gather chunk `c` of the patches of pixels `q0 .. q0 + NP` (group
    /// `grp`); returns which pixels took only fast-path activations.
    ///
    /// With dilation 1 along x, a tap row `(ic, ky)` of a patch is a run of
    /// consecutive input bytes, so patches are copied run by run
    /// ([`RowKernel::put_run`]) rather than tap by tap: the gather is what
    /// bounds layers with few output channels (a third of ResNet-18's
    /// time went to the per-tap gather).
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
        let len = self.kc_max;
        let (ic0, ic1) = (c0 / khw, cig.min((c0 + kc).div_ceil(khw)));
        let mut ok = [true; NP];
        for (j, okj) in ok.iter_mut().enumerate() {
            let slot = &mut xs[j * self.stride..(j + 1) * self.stride];
            slot.fill(K::X::default());
            let q = q0 + j;
            let (oy, ox) = (q / g.out_w(), q % g.out_w());
            if g.dilation[1] != 1 {
                *okj = self.gather_taps::<K>(slot, grp, oy, ox, c0, kc);
                continue;
            }
            let (y0, x0) = (oy * g.stride[0], ox * g.stride[1]);
            // Kernel columns inside the image: kx_lo .. kx_hi.
            let kx_lo = g.pads[1].saturating_sub(x0).min(kw);
            let kx_hi = (g.w + g.pads[1]).saturating_sub(x0).min(kw);
            if kx_lo >= kx_hi {
                continue;
            }
            let inside_y = y0 >= g.pads[0] && y0 + (kh - 1) * g.dilation[0] < g.h + g.pads[0];
            let plane = g.h * g.w;
            if inside_y && kx_lo == 0 && kx_hi == kw && kc == self.k {
                // Interior pixel, whole patch in this chunk: the runs tile
                // the patch end to end, so each may overrun into the next
                // and no tap needs a check.
                let row_step = g.dilation[0] * g.w;
                let start = (y0 - g.pads[0]) * g.w + x0 - g.pads[1];
                let mut ki = 0;
                for ic in 0..cig {
                    let mut at = (grp * cig + ic) * plane + start;
                    for _ in 0..kh {
                        // A run may spill 8 elements only where later
                        // runs overwrite them: not past the patch.
                        let end = if ki + 8 <= self.k {
                            self.x.len()
                        } else {
                            at + kw
                        };
                        *okj &= K::put_run(slot, len, ki, &self.x[at..end], kw);
                        ki += kw;
                        at += row_step;
                    }
                }
                continue;
            }
            for ic in ic0..ic1 {
                let base = (grp * cig + ic) * plane;
                for ky in 0..kh {
                    let kb = (ic * kh + ky) * kw;
                    let (a, e) = ((kb + kx_lo).max(c0), (kb + kx_hi).min(c0 + kc));
                    if a >= e {
                        continue;
                    }
                    let iy = (y0 + ky * g.dilation[0]) as isize - g.pads[0] as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let at = base + iy as usize * g.w + x0 + (a - kb) - g.pads[1];
                    let n = e - a;
                    *okj &= K::put_run(slot, len, a - c0, &self.x[at..at + n], n);
                }
            }
        }
        ok
    }

    /// One pixel's patch, tap by tap (dilated kernels, whose tap rows are
    /// not runs of the input); returns whether every activation took the
    /// fast path. `slot` was zero-filled.
    fn gather_taps<K: RowKernel<In = In>>(
        &self,
        slot: &mut [K::X],
        grp: usize,
        oy: usize,
        ox: usize,
        c0: usize,
        kc: usize,
    ) -> bool {
        let g = self.g;
        let (kh, kw) = (g.kh, g.kw);
        let khw = kh * kw;
        let cig = g.c_in_g();
        let mut ok = true;
        for ic in c0 / khw..cig.min((c0 + kc).div_ceil(khw)) {
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
                    let ix = (ox * g.stride[1] + kx * g.dilation[1]) as isize - g.pads[1] as isize;
                    if ix < 0 || ix >= g.w as isize {
                        continue;
                    }
                    ok &= K::put(slot, self.kc_max, ki - c0, self.x[base + ix as usize]);
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
        finish: &mut impl FnMut(usize, usize, &[K::Acc]),
        slow: &impl Fn(usize, usize) -> K::Acc,
    ) {
        // One monomorphization per code width, so row kernels see `B` as a
        // constant. SAFETY (every arm): forwarded from this function's
        // contract.
        match self.w.b {
            2 => unsafe { self.tile_b::<K, NP, 2>(xs, grp, r0, r1, q0, finish, slow) },
            3 => unsafe { self.tile_b::<K, NP, 3>(xs, grp, r0, r1, q0, finish, slow) },
            4 => unsafe { self.tile_b::<K, NP, 4>(xs, grp, r0, r1, q0, finish, slow) },
            _ => unsafe { self.tile_b::<K, NP, 8>(xs, grp, r0, r1, q0, finish, slow) },
        }
    }

    /// [`Driver::tile`] for codes of `B` bits.
    ///
    /// # Safety
    /// The CPU runs `K`'s ISA; `B` is the width of `self.w`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile_b<K: RowKernel<In = In>, const NP: usize, const B: u32>(
        &self,
        xs: &mut [K::X],
        grp: usize,
        r0: usize,
        r1: usize,
        q0: usize,
        finish: &mut impl FnMut(usize, usize, &[K::Acc]),
        slow: &impl Fn(usize, usize) -> K::Acc,
    ) {
        let b = B as usize;
        let rb = self.w.rb;
        let mut ok = [true; NP];
        let mut mode = 0;
        if self.nchunks == 1 {
            ok = self.gather::<K, NP>(xs, grp, q0, 0);
            // SAFETY: the ISA is available (this function's contract).
            mode = unsafe { K::prepare::<B>(xs, NP, self.stride, self.k) };
        }
        let mut rs = r0;
        while rs < r1 {
            let re = r1.min(rs + CB);
            let mut acc = [[K::Acc::default(); NP]; CB];
            for c in 0..self.nchunks {
                let c0 = c * self.kc_max;
                let kc = self.kc_max.min(self.k - c0);
                if self.nchunks > 1 {
                    let o = self.gather::<K, NP>(xs, grp, q0, c);
                    for j in 0..NP {
                        ok[j] = (c == 0 || ok[j]) && o[j];
                    }
                    // SAFETY: the ISA is available (this function's
                    // contract).
                    mode = unsafe { K::prepare::<B>(xs, NP, self.stride, kc) };
                }
                let b0 = c0 * b / 8;
                let b1 = ((c0 + kc) * b).div_ceil(8).min(rb);
                let mut r = rs;
                while r < re {
                    let rn = (re - r).min(K::ROWS);
                    let mut rows: [&[u8]; MAX_ROWS] = [&[]; MAX_ROWS];
                    for (i, row) in rows[..rn].iter_mut().enumerate() {
                        *row = &self.w.row(r + i)[b0..b1];
                    }
                    // SAFETY: the ISA is available (this function's
                    // contract); `xs` holds NP gathered patches of
                    // `stride` elements, zero-padded to KALIGN.
                    unsafe {
                        K::dot::<B, NP>(
                            &rows[..rn],
                            kc,
                            xs,
                            self.stride,
                            &mut acc[r - rs..r - rs + rn],
                            mode,
                        )
                    };
                    r += rn;
                }
            }
            let all_ok = ok.iter().all(|&o| o);
            for (r, a) in (rs..re).zip(acc.iter()) {
                if all_ok {
                    finish(r, q0, a);
                } else {
                    let mut v = *a;
                    for (j, vj) in v.iter_mut().enumerate() {
                        if !ok[j] {
                            *vj = slow(r, q0 + j);
                        }
                    }
                    finish(r, q0, &v);
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
    let ok = fexp_put_bits(slot, i, v);
    // The bits of a stored value are never 0 (it is normal).
    if slot[i] != 0 {
        slot[len + i] = u32::MAX;
    }
    ok
}

/// [`fexp_put`] for kernels without a mask plane (they test the value
/// for zero themselves): the value bits only.
#[inline]
pub(crate) fn fexp_put_bits(slot: &mut [u32], i: usize, v: f32) -> bool {
    let b = v.to_bits();
    if b & 0x7fff_ffff == 0 {
        return true;
    }
    let e = (b >> 23) & 0xff;
    if e == 0 || e > FEXP_MAX_E {
        return false;
    }
    slot[i] = b;
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

// ---------------------------------------------------------------------------
// Shared by the lut kernels of every ISA.

/// The lookup table of activation `x`: entry `p` (0..8) is the i16
/// `x << p`, its low byte at index `p` and its high byte at `p + 8`, so one
/// byte shuffle with indices `(p, p + 8)` per 16-bit lane yields the i16
/// term. The sign of a code is applied after the lookup (`t ^ m` with
/// `m = -1` for a negative weight, plus the count of negative weights), so
/// one table serves b = 2, 3 and 4, and a zero activation's table is all
/// zeros (the patch padding).
const fn lut_table(x: i8) -> u128 {
    let mut t = [0u8; 16];
    let mut p = 0;
    while p < 8 {
        let v = ((x as i16) << p) as u16;
        t[p] = v as u8;
        t[p + 8] = (v >> 8) as u8;
        p += 1;
    }
    u128::from_le_bytes(t)
}

/// Every activation's table, indexed by `x as u8`: building a patch's
/// tables is one 16-byte copy per activation.
pub(crate) static LUT_TABLES: [u128; 256] = {
    let mut all = [0u128; 256];
    let mut i = 0;
    while i < 256 {
        all[i] = lut_table(i as u8 as i8);
        i += 1;
    }
    all
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lut_tables_hold_the_shifted_activation() {
        for x in i8::MIN..=i8::MAX {
            let t = LUT_TABLES[x as u8 as usize].to_le_bytes();
            for p in 0..8 {
                let v = i16::from_le_bytes([t[p], t[p + 8]]);
                assert_eq!(v as i32, (x as i32) << p);
            }
        }
        assert_eq!(LUT_TABLES[0], 0);
    }
}
