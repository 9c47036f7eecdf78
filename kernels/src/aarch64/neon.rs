//! NEON kernels ([`Isa::Neon`], and [`Isa::NeonDot`] for `sdot`).
//!
//! Codes are decoded in registers, 16 per block, natural order: `tbl`
//! spreads the packed bytes (b = 2, 4) or 16-bit windows (b = 3) into
//! lanes, `ushl` by negative per-lane counts moves each code down, `and`
//! masks it.
//!
//! * `shift`: `sshl` on i16 lanes (`x << p`), XOR with the sign mask,
//!   `sadalp` (pairwise widen-accumulate to i32): no multiply, no overflow
//!   to manage. Correction as on x86: `sum s*(x << p) = sum ((x << p) ^ m)
//!   + count_neg`.
//! * `dot` (dotprod): `tbl` code -> signed int8 weight, `sdot`. A 4-bit
//!   weight of ±128 does not fit int8, so for b = 4 each weight is split in
//!   two halves that do (`±2^p` for p <= 6 plus 0; `±64` plus `±64` for
//!   p = 7) and two `sdot`s run; b = 2, 3 need one.
//! * `lut`: as on x86 (lanes are 16 output channels, a 16-byte table of
//!   `x << p` per activation, `tbl` with index words `(p, p + 8)`, XOR
//!   sign, i16 adds widened with `saddw`); the 16 rows' codes are decoded
//!   and transposed in registers (`zip1`/`zip2`). No multiply.
//! * `w8` (int8 weights of kept layers, `B = 8`): `sdot` with dotprod;
//!   plain NEON: `smull`/`smull2` + `sadalp` (an i8 product fits i16).
//! * `fexp`: as on x86 (`bits + (p << 23)` masked for zeros, XOR sign,
//!   `fadd`; edge-case activations send their pixel to the exact scalar
//!   path).

use core::arch::aarch64::*;

use crate::dispatch::tile::{self, each_row, fexp_put, RowKernel, LUT_TABLES};
use crate::dispatch::Isa;
use crate::scalar::Affine;
use crate::{Conv2dGeom, PackedRows, Requant};

/// Decode 16 codes of `B` bits from the first `2 * B` of 16 readable bytes
/// (`B = 8`: 16 int8 weights as they are).
///
/// # Safety
/// NEON available (always on aarch64); `p .. p + 16` readable.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn decode16<const B: u32>(p: *const u8) -> uint8x16_t {
    // SAFETY: 16 readable bytes (caller).
    let src = unsafe { vld1q_u8(p) };
    match B {
        8 => src,
        4 => {
            const IDX: [u8; 16] = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7];
            const SH: [i8; 16] = [0, -4, 0, -4, 0, -4, 0, -4, 0, -4, 0, -4, 0, -4, 0, -4];
            // SAFETY: constant arrays of 16 bytes.
            let (idx, sh) = unsafe { (vld1q_u8(IDX.as_ptr()), vld1q_s8(SH.as_ptr())) };
            vandq_u8(vshlq_u8(vqtbl1q_u8(src, idx), sh), vdupq_n_u8(0x0f))
        }
        2 => {
            const IDX: [u8; 16] = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3];
            const SH: [i8; 16] = [0, -2, -4, -6, 0, -2, -4, -6, 0, -2, -4, -6, 0, -2, -4, -6];
            // SAFETY: constant arrays of 16 bytes.
            let (idx, sh) = unsafe { (vld1q_u8(IDX.as_ptr()), vld1q_s8(SH.as_ptr())) };
            vandq_u8(vshlq_u8(vqtbl1q_u8(src, idx), sh), vdupq_n_u8(0x03))
        }
        _ => {
            // B = 3: code j of 8 sits at bit 3j of a 3-byte group; take the
            // 16-bit window starting at its byte and shift right.
            const IDXA: [u8; 16] = [0, 1, 0, 1, 0, 1, 1, 2, 1, 2, 1, 2, 2, 3, 2, 3];
            const IDXB: [u8; 16] = [3, 4, 3, 4, 3, 4, 4, 5, 4, 5, 4, 5, 5, 6, 5, 6];
            const SH: [i16; 8] = [0, -3, -6, -1, -4, -7, -2, -5];
            // SAFETY: constant arrays of 16 bytes.
            let (ia, ib, sh) = unsafe {
                (
                    vld1q_u8(IDXA.as_ptr()),
                    vld1q_u8(IDXB.as_ptr()),
                    vld1q_s16(SH.as_ptr()),
                )
            };
            let a = vshlq_u16(vreinterpretq_u16_u8(vqtbl1q_u8(src, ia)), sh);
            let b = vshlq_u16(vreinterpretq_u16_u8(vqtbl1q_u8(src, ib)), sh);
            vandq_u8(
                vuzp1q_u8(vreinterpretq_u8_u16(a), vreinterpretq_u8_u16(b)),
                vdupq_n_u8(0x07),
            )
        }
    }
}

/// Decode block `blk` (16 codes) of a chunk, through a zeroed copy when
/// fewer than 16 bytes remain.
///
/// # Safety
/// NEON available.
#[target_feature(enable = "neon")]
#[inline]
pub(super) unsafe fn block<const B: u32>(codes: &[u8], blk: usize) -> uint8x16_t {
    let off = blk * 2 * B as usize;
    if off + 16 <= codes.len() {
        // SAFETY: 16 bytes from `off` are inside `codes`.
        unsafe { decode16::<B>(codes.as_ptr().add(off)) }
    } else {
        let mut t = [0u8; 16];
        let rest = &codes[off.min(codes.len())..];
        let n = rest.len().min(16);
        t[..n].copy_from_slice(&rest[..n]);
        // SAFETY: `t` has 16 readable bytes.
        unsafe { decode16::<B>(t.as_ptr()) }
    }
}

// --------------------------------------------------------------------------
// shift

struct Shift;

#[target_feature(enable = "neon")]
unsafe fn shift_rows<const B: u32, const NP: usize>(
    codes: &[u8],
    kc: usize,
    xs: &[i16],
    stride: usize,
) -> [i32; NP] {
    let pmask = vdupq_n_u16((1 << (B - 1)) - 1);
    let sbit = vdupq_n_u16(1 << (B - 1));
    let mut acc = [vdupq_n_s32(0); NP];
    let mut cnt = vdupq_n_s32(0);
    let nblk = kc.div_ceil(16);
    assert!(xs.len() >= (NP - 1) * stride + nblk * 16);
    let xp = xs.as_ptr();
    for blk in 0..nblk {
        // SAFETY: NEON available.
        let c = unsafe { block::<B>(codes, blk) };
        let halves = [vmovl_u8(vget_low_u8(c)), vmovl_high_u8(c)];
        for (h, c16) in halves.into_iter().enumerate() {
            let p = vreinterpretq_s16_u16(vandq_u16(c16, pmask));
            let sm = vreinterpretq_s16_u16(vtstq_u16(c16, sbit));
            cnt = vpadalq_s16(cnt, sm);
            for (j, a) in acc.iter_mut().enumerate() {
                // SAFETY: in bounds by the assert above.
                let xv = unsafe { vld1q_s16(xp.add(j * stride + blk * 16 + h * 8)) };
                *a = vpadalq_s16(*a, veorq_s16(vshlq_s16(xv, p), sm));
            }
        }
    }
    let neg = vaddvq_s32(cnt);
    acc.map(|a| vaddvq_s32(a).wrapping_sub(neg))
}

// SAFETY: X = i16, a primitive integer.
unsafe impl RowKernel for Shift {
    type In = i8;
    type X = i16;
    type Acc = i32;
    const PLANES: usize = 1;
    #[inline]
    fn put(slot: &mut [i16], _len: usize, i: usize, v: i8) -> bool {
        slot[i] = v as i16;
        true
    }
    unsafe fn dot<const B: u32, const NP: usize>(
        rows: &[&[u8]],
        kc: usize,
        xs: &[i16],
        stride: usize,
        out: &mut [[i32; NP]],
        _mode: u32,
    ) {
        // SAFETY: NEON is available on every aarch64 CPU.
        each_row(rows, out, |c| unsafe {
            shift_rows::<B, NP>(c, kc, xs, stride)
        })
    }
}

// --------------------------------------------------------------------------
// dot (sdot)

struct SDot;

/// `acc += sdot(a, b)` (four 4-way int8 dot products).
///
/// # Safety
/// The CPU has `dotprod`.
#[target_feature(enable = "neon,dotprod")]
#[inline]
unsafe fn sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: `sdot` exists with dotprod (caller); registers only.
    unsafe {
        core::arch::asm!(
            "sdot {0:v}.4s, {1:v}.16b, {2:v}.16b",
            inout(vreg) acc,
            in(vreg) a,
            in(vreg) b,
            options(pure, nomem, nostack)
        );
    }
    acc
}

/// Weight tables by code: `(a, b)` with `a + b = value`, both in int8.
const fn sdot_tables(b: u32) -> ([i8; 16], [i8; 16]) {
    let mut ta = [0i8; 16];
    let mut tb = [0i8; 16];
    let maxp = (1u32 << (b - 1)) - 1;
    let mut c = 0;
    while c < (1 << b) {
        let p = c & maxp;
        let s: i32 = if (c >> (b - 1)) & 1 == 1 { -1 } else { 1 };
        if p == 7 {
            ta[c as usize] = (s * 64) as i8;
            tb[c as usize] = (s * 64) as i8;
        } else {
            ta[c as usize] = (s << p) as i8;
        }
        c += 1;
    }
    (ta, tb)
}

#[target_feature(enable = "neon,dotprod")]
unsafe fn sdot_rows<const B: u32, const NP: usize>(
    codes: &[u8],
    kc: usize,
    xs: &[i8],
    stride: usize,
) -> [i32; NP] {
    // B = 8: int8 weights go to `sdot` as they are (`min` keeps the unused
    // tables well-formed).
    let (ta, tb) = sdot_tables(B.min(4));
    // SAFETY: 16-byte arrays.
    let (ta, tb) = unsafe { (vld1q_s8(ta.as_ptr()), vld1q_s8(tb.as_ptr())) };
    let mut acc = [vdupq_n_s32(0); NP];
    let nblk = kc.div_ceil(16);
    assert!(xs.len() >= (NP - 1) * stride + nblk * 16);
    let xp = xs.as_ptr();
    for blk in 0..nblk {
        // SAFETY: NEON available.
        let c = unsafe { block::<B>(codes, blk) };
        let wa = if B == 8 {
            vreinterpretq_s8_u8(c)
        } else {
            vqtbl1q_s8(ta, c)
        };
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: in bounds by the assert above; dotprod (caller).
            unsafe {
                let xv = vld1q_s8(xp.add(j * stride + blk * 16));
                *a = sdot(*a, wa, xv);
            }
        }
        if B == 4 {
            let wb = vqtbl1q_s8(tb, c);
            for (j, a) in acc.iter_mut().enumerate() {
                // SAFETY: as above.
                unsafe {
                    let xv = vld1q_s8(xp.add(j * stride + blk * 16));
                    *a = sdot(*a, wb, xv);
                }
            }
        }
    }
    acc.map(|a| vaddvq_s32(a))
}

// SAFETY: X = i8, a primitive integer.
unsafe impl RowKernel for SDot {
    type In = i8;
    type X = i8;
    type Acc = i32;
    const PLANES: usize = 1;
    crate::dispatch::tile::copy_put!(i8);
    unsafe fn dot<const B: u32, const NP: usize>(
        rows: &[&[u8]],
        kc: usize,
        xs: &[i8],
        stride: usize,
        out: &mut [[i32; NP]],
        _mode: u32,
    ) {
        // SAFETY: the caller guarantees dotprod.
        each_row(rows, out, |c| unsafe {
            sdot_rows::<B, NP>(c, kc, xs, stride)
        })
    }
}

// --------------------------------------------------------------------------
// fexp

struct Fexp;

#[target_feature(enable = "neon")]
unsafe fn fexp_rows<const B: u32, const NP: usize>(
    codes: &[u8],
    kc: usize,
    xs: &[u32],
    stride: usize,
) -> [f32; NP] {
    let pmask = vdupq_n_u32((1 << (B - 1)) - 1);
    let sdown = vdupq_n_s32(-(B as i32 - 1));
    let mut acc = [vdupq_n_f32(0.0); NP];
    let nblk = kc.div_ceil(16);
    let half = stride / 2;
    assert!(xs.len() >= (NP - 1) * stride + half + nblk * 16);
    let xp = xs.as_ptr();
    for blk in 0..nblk {
        // SAFETY: NEON available.
        let c = unsafe { block::<B>(codes, blk) };
        let c16 = [vmovl_u8(vget_low_u8(c)), vmovl_high_u8(c)];
        let quarters = [
            vmovl_u16(vget_low_u16(c16[0])),
            vmovl_high_u16(c16[0]),
            vmovl_u16(vget_low_u16(c16[1])),
            vmovl_high_u16(c16[1]),
        ];
        for (s, c32) in quarters.into_iter().enumerate() {
            let pe = vshlq_n_u32::<23>(vandq_u32(c32, pmask));
            let sg = vshlq_n_u32::<31>(vshlq_u32(c32, sdown));
            for (j, a) in acc.iter_mut().enumerate() {
                let o = j * stride + blk * 16 + s * 4;
                // SAFETY: in bounds by the assert above.
                let (xv, mv) = unsafe { (vld1q_u32(xp.add(o)), vld1q_u32(xp.add(o + half))) };
                let t = veorq_u32(vaddq_u32(xv, vandq_u32(pe, mv)), sg);
                *a = vaddq_f32(*a, vreinterpretq_f32_u32(t));
            }
        }
    }
    acc.map(|a| vaddvq_f32(a))
}

// SAFETY: X = u32, a primitive integer.
unsafe impl RowKernel for Fexp {
    type In = f32;
    type X = u32;
    type Acc = f32;
    const PLANES: usize = 2;
    #[inline]
    fn put(slot: &mut [u32], len: usize, i: usize, v: f32) -> bool {
        fexp_put(slot, len, i, v)
    }
    unsafe fn dot<const B: u32, const NP: usize>(
        rows: &[&[u8]],
        kc: usize,
        xs: &[u32],
        stride: usize,
        out: &mut [[f32; NP]],
        _mode: u32,
    ) {
        // SAFETY: NEON is available on every aarch64 CPU.
        each_row(rows, out, |c| unsafe {
            fexp_rows::<B, NP>(c, kc, xs, stride)
        })
    }
}

// --------------------------------------------------------------------------
// w8 without dotprod: smull + sadalp

struct W8;

#[target_feature(enable = "neon")]
unsafe fn w8_rows<const NP: usize>(codes: &[u8], kc: usize, xs: &[i8], stride: usize) -> [i32; NP] {
    let mut acc = [vdupq_n_s32(0); NP];
    let nblk = kc.div_ceil(16);
    assert!(xs.len() >= (NP - 1) * stride + nblk * 16);
    let xp = xs.as_ptr();
    for blk in 0..nblk {
        // SAFETY: NEON available.
        let w = vreinterpretq_s8_u8(unsafe { block::<8>(codes, blk) });
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: in bounds by the assert above.
            let xv = unsafe { vld1q_s8(xp.add(j * stride + blk * 16)) };
            // |i8 * i8| <= 2^14 fits i16; sadalp widens pairs to i32.
            *a = vpadalq_s16(*a, vmull_s8(vget_low_s8(w), vget_low_s8(xv)));
            *a = vpadalq_s16(*a, vmull_high_s8(w, xv));
        }
    }
    acc.map(|a| vaddvq_s32(a))
}

// SAFETY: X = i8, a primitive integer.
unsafe impl RowKernel for W8 {
    type In = i8;
    type X = i8;
    type Acc = i32;
    const PLANES: usize = 1;
    crate::dispatch::tile::copy_put!(i8);
    unsafe fn dot<const B: u32, const NP: usize>(
        rows: &[&[u8]],
        kc: usize,
        xs: &[i8],
        stride: usize,
        out: &mut [[i32; NP]],
        _mode: u32,
    ) {
        debug_assert_eq!(B, 8);
        // SAFETY: NEON is available on every aarch64 CPU.
        each_row(rows, out, |c| unsafe { w8_rows::<NP>(c, kc, xs, stride) })
    }
}

// --------------------------------------------------------------------------
// lut

struct Lut;

/// Transpose a 16x16 byte matrix: `m[r]` byte `i` becomes `out[i]` byte `r`.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn transpose16(m: &[uint8x16_t; 16]) -> [uint8x16_t; 16] {
    let z = vdupq_n_u8(0);
    let mut a = [z; 16];
    for i in 0..8 {
        a[i] = vzip1q_u8(m[2 * i], m[2 * i + 1]);
        a[i + 8] = vzip2q_u8(m[2 * i], m[2 * i + 1]);
    }
    // a[g * 8 + i]: rows 2i, 2i+1, columns 8g .. 8g + 8.
    let mut b = [z; 16];
    for g in 0..2 {
        for i in 0..4 {
            let x = vreinterpretq_u16_u8(a[g * 8 + 2 * i]);
            let y = vreinterpretq_u16_u8(a[g * 8 + 2 * i + 1]);
            b[(2 * g) * 4 + i] = vreinterpretq_u8_u16(vzip1q_u16(x, y));
            b[(2 * g + 1) * 4 + i] = vreinterpretq_u8_u16(vzip2q_u16(x, y));
        }
    }
    // b[q * 4 + i]: rows 4i .. 4i + 4, columns 4q .. 4q + 4.
    let mut c = [z; 16];
    for q in 0..4 {
        for i in 0..2 {
            let x = vreinterpretq_u32_u8(b[q * 4 + 2 * i]);
            let y = vreinterpretq_u32_u8(b[q * 4 + 2 * i + 1]);
            c[(2 * q) * 2 + i] = vreinterpretq_u8_u32(vzip1q_u32(x, y));
            c[(2 * q + 1) * 2 + i] = vreinterpretq_u8_u32(vzip2q_u32(x, y));
        }
    }
    // c[cp * 2 + i]: rows 8i .. 8i + 8, columns 2cp, 2cp + 1.
    let mut o = [z; 16];
    for cp in 0..8 {
        let x = vreinterpretq_u64_u8(c[cp * 2]);
        let y = vreinterpretq_u64_u8(c[cp * 2 + 1]);
        o[2 * cp] = vreinterpretq_u8_u64(vzip1q_u64(x, y));
        o[2 * cp + 1] = vreinterpretq_u8_u64(vzip2q_u64(x, y));
    }
    o
}

#[target_feature(enable = "neon")]
unsafe fn lut_rows<const B: u32, const NP: usize>(
    rows: &[&[u8]],
    kc: usize,
    xs: &[u128],
    stride: usize,
    out: &mut [[i32; NP]],
) {
    let n = rows.len();
    assert!(n <= 16);
    // B = 8 (int8 weights) never reaches this kernel; `min` keeps its
    // unused instantiation well-formed.
    let bb = B.min(4);
    let pmask = vdupq_n_u8((1u8 << (bb - 1)) - 1);
    let sbit = vdupq_n_u8(1u8 << (bb - 1));
    let eight = vdupq_n_u8(8);
    let z8 = vdupq_n_u8(0);
    let z16 = vdupq_n_s16(0);
    // Per pixel, i32 sums of rows 0-3, 4-7, 8-11, 12-15.
    let mut acc = [[vdupq_n_s32(0); 4]; NP];
    // Negative weights per row (i16; <= 256 per call).
    let mut neg = [z16; 2];
    let nblk = kc.div_ceil(16);
    assert!(xs.len() >= (NP - 1) * stride + nblk * 16);
    let xp = xs.as_ptr().cast::<u8>();
    // b = 4 terms reach +-2^14: two fit an i16 lane; b <= 3: all 16.
    let flush = if bb == 4 { 2 } else { 16 };
    for blk in 0..nblk {
        let mut m = [z8; 16];
        for (r, v) in m.iter_mut().enumerate().take(n) {
            // SAFETY: NEON available.
            *v = unsafe { block::<B>(rows[r], blk) };
        }
        // SAFETY: NEON available.
        let t = unsafe { transpose16(&m) };
        let mut a16 = [[z16; 2]; NP];
        for (j, &c) in t.iter().enumerate() {
            let p = vandq_u8(c, pmask);
            let p8 = vorrq_u8(p, eight);
            let sm = vtstq_u8(c, sbit);
            let idx = [vzip1q_u8(p, p8), vzip2q_u8(p, p8)];
            let ms = [
                vreinterpretq_s16_u8(vzip1q_u8(sm, sm)),
                vreinterpretq_s16_u8(vzip2q_u8(sm, sm)),
            ];
            neg[0] = vsubq_s16(neg[0], ms[0]);
            neg[1] = vsubq_s16(neg[1], ms[1]);
            for (px, a) in a16.iter_mut().enumerate() {
                // SAFETY: in bounds by the assert above (the 16-byte table
                // of element `blk * 16 + j` of pixel `px`'s patch).
                let tab = unsafe { vld1q_u8(xp.add((px * stride + blk * 16 + j) * 16)) };
                for h in 0..2 {
                    let v = veorq_s16(vreinterpretq_s16_u8(vqtbl1q_u8(tab, idx[h])), ms[h]);
                    a[h] = vaddq_s16(a[h], v);
                }
            }
            if (j + 1) % flush == 0 {
                for (a, s) in a16.iter_mut().zip(acc.iter_mut()) {
                    for h in 0..2 {
                        s[2 * h] = vaddw_s16(s[2 * h], vget_low_s16(a[h]));
                        s[2 * h + 1] = vaddw_high_s16(s[2 * h + 1], a[h]);
                        a[h] = z16;
                    }
                }
            }
        }
    }
    let mut negw = [0i16; 16];
    // SAFETY: 32 writable bytes.
    unsafe {
        vst1q_s16(negw.as_mut_ptr(), neg[0]);
        vst1q_s16(negw.as_mut_ptr().add(8), neg[1]);
    }
    for (px, s) in acc.iter().enumerate() {
        let mut v = [0i32; 16];
        for (i, q) in s.iter().enumerate() {
            // SAFETY: 16 writable bytes at `4 * i`.
            unsafe { vst1q_s32(v.as_mut_ptr().add(4 * i), *q) };
        }
        for (r, o) in out.iter_mut().enumerate() {
            o[px] = o[px].wrapping_add(v[r].wrapping_add(negw[r] as i32));
        }
    }
}

// SAFETY: X = u128, a primitive integer.
unsafe impl RowKernel for Lut {
    type In = i8;
    type X = u128;
    type Acc = i32;
    const PLANES: usize = 1;
    const ROWS: usize = 16;
    #[inline]
    fn put(slot: &mut [u128], _len: usize, i: usize, v: i8) -> bool {
        slot[i] = LUT_TABLES[v as u8 as usize];
        true
    }
    unsafe fn dot<const B: u32, const NP: usize>(
        rows: &[&[u8]],
        kc: usize,
        xs: &[u128],
        stride: usize,
        out: &mut [[i32; NP]],
        _mode: u32,
    ) {
        // SAFETY: NEON is available on every aarch64 CPU.
        unsafe { lut_rows::<B, NP>(rows, kc, xs, stride, out) }
    }
}

// --------------------------------------------------------------------------
// Entry points (the scalar signatures).

/// `neon/shift`: equal to [`crate::scalar::conv_shift_i8`]; no multiply.
pub fn conv_shift_i8(
    g: &Conv2dGeom,
    x: &[i8],
    w: &PackedRows,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    tile::shift_i8::<Shift>(Isa::Neon, g, x, w, oc0, rq, out)
}

/// `neon/lut`: equal to [`crate::scalar::conv_shift_i8`]; no multiply.
pub fn conv_lut_i8(
    g: &Conv2dGeom,
    x: &[i8],
    w: &PackedRows,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    tile::shift_i8::<Lut>(Isa::Neon, g, x, w, oc0, rq, out)
}

/// `neondot/dot`: equal to [`crate::scalar::conv_shift_i8`].
/// Panics if the CPU lacks `dotprod`.
pub fn conv_sdot_i8(
    g: &Conv2dGeom,
    x: &[i8],
    w: &PackedRows,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    tile::shift_i8::<SDot>(Isa::NeonDot, g, x, w, oc0, rq, out)
}

/// `neon/w8`: equal to [`crate::scalar::conv_w8_i8`] (int8 weights).
pub fn conv_w8_i8(g: &Conv2dGeom, x: &[i8], w: &[i8], oc0: usize, rq: &[Requant], out: &mut [i8]) {
    tile::w8_i8::<W8>(Isa::Neon, g, x, w, oc0, rq, out)
}

/// `neondot/w8`: equal to [`crate::scalar::conv_w8_i8`] (int8 weights,
/// `sdot`). Panics if the CPU lacks `dotprod`.
pub fn conv_sdot_w8_i8(
    g: &Conv2dGeom,
    x: &[i8],
    w: &[i8],
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    tile::w8_i8::<SDot>(Isa::NeonDot, g, x, w, oc0, rq, out)
}

/// `neon/fexp`: [`crate::scalar::conv_shift_f32`] within the summation
/// bound; no multiply per MAC.
pub fn conv_fexp_f32(
    g: &Conv2dGeom,
    x: &[f32],
    w: &PackedRows,
    oc0: usize,
    ep: &[Affine],
    out: &mut [f32],
) {
    tile::shift_f32::<Fexp>(Isa::Neon, g, x, w, oc0, ep, out)
}

/// Depthwise layers: [`crate::depthwise`] compiled for NEON (baseline on
/// aarch64; the taps of a chunk of a channel's flattened plane at once;
/// no multiply in `dw::shift_rows`).
pub mod dw {
    use crate::depthwise::{Scratch, Taps};
    use crate::{Conv2dGeom, PackedRows, Requant};

    /// All taps of a chunk: `acc = init + sum ±(src << p)`, vectorized by
    /// the compiler with NEON. Out of line so the no-multiply check can
    /// find it.
    #[inline(never)]
    fn shift_rows(acc: &mut [i32], tmp: &mut Scratch, src: &[i8], taps: &Taps) {
        crate::depthwise::accumulate(acc, tmp, src, taps)
    }

    /// `neon/dw-shift`: equal to [`crate::scalar::conv_shift_i8`] on
    /// depthwise layers ([`crate::depthwise::applies`]); no multiply in
    /// the taps. Panics if the layer is not depthwise.
    pub fn conv_shift_i8(
        g: &Conv2dGeom,
        x: &[i8],
        w: &PackedRows,
        oc0: usize,
        rq: &[Requant],
        out: &mut [i8],
    ) {
        crate::depthwise::shift_i8(g, x, w, oc0, rq, out, shift_rows)
    }

    /// One float tap along a run of output columns
    /// ([`crate::depthwise_fexp::tap`]), out of line for the no-multiply
    /// check.
    #[inline(never)]
    fn fexp_rows(acc: &mut [f32], src: &[f32], neg: bool, p: u32) -> bool {
        crate::depthwise_fexp::tap(acc, src, neg, p)
    }

    /// `neon/dw-fexp`: equal, bit for bit, to
    /// [`crate::scalar::conv_shift_f32`] on depthwise layers
    /// ([`crate::depthwise::applies`]); no multiply in the taps. Panics if
    /// the layer is not depthwise.
    pub fn conv_fexp_f32(
        g: &Conv2dGeom,
        x: &[f32],
        w: &PackedRows,
        oc0: usize,
        ep: &[crate::scalar::Affine],
        out: &mut [f32],
    ) {
        crate::depthwise_fexp::fexp_f32(g, x, w, oc0, ep, out, fexp_rows)
    }
}
