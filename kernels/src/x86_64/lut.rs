//! The AVX-512 `lut` kernel, `avx512/lut` ([`Isa::Avx512`]; uses F, BW,
//! VL and VBMI): int8 activations, shift codes, table lookups in the style
//! of T-MAC, no multiply. Bit-identical to
//! [`crate::scalar::conv_shift_i8`]; run only when `lut` is forced.
//!
//! Tables. Each activation `x` of a gathered patch becomes 8 signed `i16`
//! words, word `e = 4s + l` holding `±(x << l)` (`l` in 0..4, `s` the
//! sign). The sign sits in the table, so a lookup yields the term itself:
//! no XOR, no count of negative weights. One table serves every code
//! width: a code `(s, p)` looks up `(s, p & 3)`, and with b = 4 the high
//! exponent bit `h = p >> 2` picks which of two `i16` accumulators the
//! term goes to (a masked `vpaddw` each); the `h = 1` one is weighted by
//! 16 when it is widened. So every term is at most 1024 in magnitude and
//! 24 of them (three 64-code blocks) fit an `i16` lane before the
//! accumulators are widened to `i32` (shifts and adds). The gather copies
//! activations as they are; `prepare` expands them in place (16 bytes
//! each, `vpermw` + `vpsllvw` + a masked negate per 4 activations), once
//! per chunk for all rows.
//!
//! Lookups. Two registers hold the tables of 8 consecutive activations
//! (64 words), and one `vpermi2w` looks up 32 terms: 4 rows times those 8
//! activations, the word index being `8t + e` for activation `t` of the
//! 8. (The AVX2 kernel's `vpshufb` gives 16 terms per instruction and
//! needs an XOR for the sign.)
//!
//! Indices. Packed codes are row-major; a lookup wants 4 rows of the same
//! 8 activations. Per 4 rows and 64 codes: masked loads put the rows'
//! bytes in the halves of two registers, four `vpermt2b` put the bytes
//! of 8 codes of one row into each quadword (two groups of 8 activations
//! per output, one row per 128-bit lane), `vpmultishiftqb` moves each code
//! to its own byte, a `vpermb` maps it to `e` (plus `h` in bit 7) and an
//! OR adds `8t`; `vpunpck{l,h}bw` of the result with itself makes the
//! index words (`vpermi2w` reads their low 6 bits) of the two groups. That
//! depends only on the codes, so it is done once per call into a stack
//! scratch and shared by the tile's pixels, two of which run together to
//! share each load of index words and masks.
//!
//! Per pixel, 32 MACs cost one `vpermi2w` and one `vpaddw` (two masked
//! ones with b = 4), where `avx512/shift` spends a `vpsllvw`, an XOR and
//! one or two adds.
//!
//! Limit: a table is 16 bytes, so the driver's 16 KB patch buffer holds
//! chunks of 256 codes for 4 pixels, and layers with `k > 256` take the
//! driver's per-run gather for chunked patches (about a fifth of the time
//! on a 3x3 conv with 64 input channels, by `perf`), where `dot` and
//! `shift` gather whole patches in one pass.

use core::arch::x86_64::*;
use core::mem::MaybeUninit;

use super::avx512::{add_term, shift_control, widen_add};
use crate::dispatch::tile::{self, RowKernel};
use crate::dispatch::Isa;
use crate::{Conv2dGeom, PackedRows, Requant};

/// Rows per call: 4 quads of 4 rows (the driver's [`tile::MAX_ROWS`]).
const ROWS: usize = 16;

/// Blocks of 64 codes whose index words are prepared at once (8 KB of
/// scratch); the driver's chunks are at most 256 codes (4 blocks) long,
/// so a chunk is one segment.
const SEG: usize = 4;

/// Blocks between widenings of the `i16` accumulators: a block adds 8
/// terms of at most 1024 in magnitude to each lane, 24 fit (32 would not:
/// `32 * 1024` overflows).
const FLUSH: usize = 3;

/// The signed table of activation `x` (the reference for
/// [`build_tables`]): word `4s + l` is `x << l`, negated for `s = 1`
/// (`-(-128 << 3)` = 1024 fits an `i16`).
#[cfg(test)]
const fn signed_table(x: i8) -> [i16; 8] {
    let mut t = [0i16; 8];
    let mut e = 0;
    while e < 8 {
        let v = (x as i16) << (e & 3);
        t[e] = if e >= 4 { -v } else { v };
        e += 1;
    }
    t
}

/// Bytes per activation in a prepared patch: its table of 8 words.
const TABLE_BYTES: usize = 16;

/// `vpermw` indices of [`build_tables`]: output `u` takes activation
/// `4u + t` (of 32 sign-extended ones) into words `8t .. 8t + 8`.
const fn spread_index(u: usize) -> [u16; 32] {
    let mut t = [0u16; 32];
    let mut w = 0;
    while w < 32 {
        t[w] = (4 * u + w / 8) as u16;
        w += 1;
    }
    t
}

/// Turn the activations of one gathered patch (`n` bytes at the start of
/// `p`, `n` a multiple of 64, at most 256) into their tables in place:
/// activation `i`'s 8 words at bytes `16i .. 16i + 16`. The table of 0 is
/// all zeros, so the patch's zero padding adds nothing whatever the codes
/// there.
///
/// # Safety
/// AVX-512 (F, BW) available.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn build_tables(p: &mut [i8], n: usize) {
    assert!(n.is_multiple_of(64) && n <= 256 && n * TABLE_BYTES <= p.len());
    let zero = _mm512_setzero_si512();
    // Every activation is read before the first table overwrites it.
    let mut x = [zero; 4];
    for (b, v) in x.iter_mut().enumerate().take(n / 64) {
        // SAFETY: `64b + 64 <= n <= p.len()`.
        *v = unsafe { _mm512_loadu_si512(p.as_ptr().add(64 * b).cast()) };
    }
    let idx = const {
        [
            spread_index(0),
            spread_index(1),
            spread_index(2),
            spread_index(3),
            spread_index(4),
            spread_index(5),
            spread_index(6),
            spread_index(7),
        ]
    };
    let mut iv = [zero; 8];
    for (v, t) in iv.iter_mut().zip(idx.iter()) {
        // SAFETY: 64 readable bytes.
        *v = unsafe { _mm512_loadu_si512(t.as_ptr().cast()) };
    }
    let sh = _mm512_set1_epi64(0x0003_0002_0001_0000);
    let dst = p.as_mut_ptr();
    for (b, &xb) in x.iter().enumerate().take(n / 64) {
        let halves = [
            _mm512_cvtepi8_epi16(_mm512_castsi512_si256(xb)),
            _mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64::<1>(xb)),
        ];
        for (h, &x16) in halves.iter().enumerate() {
            for (u, &ix) in iv.iter().enumerate() {
                let v = _mm512_sllv_epi16(_mm512_permutexvar_epi16(ix, x16), sh);
                // Words 4..8 of each table: the negative weights.
                let v = _mm512_mask_sub_epi16(v, 0xf0f0_f0f0, zero, v);
                let at = (64 * b + 32 * h + 4 * u) * TABLE_BYTES;
                // SAFETY: `at + 64 <= n * TABLE_BYTES <= p.len()`.
                unsafe { _mm512_storeu_si512(dst.add(at).cast(), v) };
            }
        }
    }
}

/// `vpermb` table from a code byte (the code in its low `b` bits, anything
/// above: the table repeats every `2^b` entries) to `4s + (p & 3)`, with
/// `p >> 2` (b = 4 only) in bit 7.
const fn code_map(b: u32) -> [u8; 64] {
    let mut t = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        let c = i as u32 & ((1 << b) - 1);
        let s = c >> (b - 1);
        let p = c & ((1 << (b - 1)) - 1);
        t[i] = ((s << 2) | (p & 3) | ((p >> 2) << 7)) as u8;
        i += 1;
    }
    t
}

/// `8t` for byte `t` of every quadword: the activation's table within the
/// 8 of a lookup.
const fn slot_offsets() -> [u8; 64] {
    let mut t = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        t[i] = ((i % 8) * 8) as u8;
        i += 1;
    }
    t
}

/// `vpermt2b` indices for output `m` of a quad: quadword `Q` (row
/// `L = Q / 2` of the quad, group `2m + Q % 2` of 8 codes) gets the `b`
/// bytes of that group from the sources (rows 0, 1 in the low and high
/// halves of the first, rows 2, 3 of the second). Bytes past the `b` of a
/// quadword are read but only land above a code's bits.
const fn gather_index(b: u32, m: usize) -> [u8; 64] {
    let mut t = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        let (q, u) = (i / 8, i % 8);
        let (row, grp) = (q / 2, 2 * m + q % 2);
        t[i] = ((32 * row + grp * b as usize + u) & 127) as u8;
        i += 1;
    }
    t
}

/// The packed bytes of block `blk` (64 codes of `B <= 4` bits) of a row,
/// zero past its end (zero codes meet the patch's zero tables there).
///
/// # Safety
/// AVX-512 (F, BW, VL) available.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
unsafe fn load_row<const B: u32>(row: &[u8], blk: usize) -> __m256i {
    let nb = 8 * B as usize;
    let off = blk * nb;
    let rest = &row[off.min(row.len())..];
    let n = rest.len().min(nb);
    let mask = if n >= 32 { u32::MAX } else { (1u32 << n) - 1 };
    // SAFETY: the mask enables only the first `n <= rest.len()` bytes;
    // masked-off bytes are neither read nor able to fault.
    unsafe { _mm256_maskz_loadu_epi8(mask, rest.as_ptr().cast()) }
}

/// Index words of one segment, per block, group of 8 codes and quad, and
/// (b = 4) the masks of their `h = 1` lanes.
struct Scratch<const Q: usize> {
    idx: MaybeUninit<[[[__m512i; Q]; 8]; SEG]>,
    msk: [[[u32; Q]; 8]; SEG],
}

/// `Q` quads of rows (`rows.len() <= 4 * Q`) against `NP` patches of
/// tables over one chunk.
///
/// # Safety
/// AVX-512 (F, BW, VL, VBMI) available; `xs` holds `NP` patches of
/// `stride` tables, zero from `kc` to a multiple of 64; `B <= 4`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi")]
unsafe fn lut_rows<const B: u32, const NP: usize, const Q: usize>(
    rows: &[&[u8]],
    kc: usize,
    xs: &[i8],
    stride: usize,
    out: &mut [[i32; NP]],
) {
    const { assert!(Q >= 1 && Q <= 4) };
    let n = rows.len();
    assert!(n <= 4 * Q && out.len() == n);
    let nblk = kc.div_ceil(64);
    assert!(xs.len() >= (NP - 1) * stride + nblk * 64 * TABLE_BYTES);
    // B = 8 (int8 weights) never reaches this kernel; `bb` keeps its
    // unused instantiation well-formed.
    let consts = const {
        let bb = if B < 8 { B } else { 4 };
        [
            gather_index(bb, 0),
            gather_index(bb, 1),
            gather_index(bb, 2),
            gather_index(bb, 3),
            shift_control(bb),
            code_map(bb),
            slot_offsets(),
        ]
    };
    let mut c = [_mm512_setzero_si512(); 7];
    for (v, t) in c.iter_mut().zip(consts.iter()) {
        // SAFETY: 64 readable bytes.
        *v = unsafe { _mm512_loadu_si512(t.as_ptr().cast()) };
    }
    let (ctl, map, slot) = (c[4], c[5], c[6]);
    // Rows past `n` read as empty: zero codes, whose lanes are not output.
    let mut quad: [[&[u8]; 4]; Q] = [[&[]; 4]; Q];
    for (i, r) in rows.iter().enumerate() {
        quad[i / 4][i % 4] = r;
    }
    let mut sc = Scratch::<Q> {
        idx: MaybeUninit::uninit(),
        msk: [[[0; Q]; 8]; SEG],
    };
    let ip = sc.idx.as_mut_ptr().cast::<[[__m512i; Q]; 8]>();
    let mut s0 = 0;
    while s0 < nblk {
        let ns = (nblk - s0).min(SEG);
        for (bi, mb) in sc.msk.iter_mut().enumerate().take(ns) {
            for (q, rq) in quad.iter().enumerate() {
                let mut r = [_mm256_setzero_si256(); 4];
                for (v, row) in r.iter_mut().zip(rq) {
                    // SAFETY: AVX-512 available (caller).
                    *v = unsafe { load_row::<B>(row, s0 + bi) };
                }
                let p01 = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(r[0]), r[1]);
                let p23 = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(r[2]), r[3]);
                for m in 0..4 {
                    let z = _mm512_permutex2var_epi8(p01, c[m], p23);
                    let z = _mm512_multishift_epi64_epi8(ctl, z);
                    let z = _mm512_or_si512(_mm512_permutexvar_epi8(z, map), slot);
                    let w = [_mm512_unpacklo_epi8(z, z), _mm512_unpackhi_epi8(z, z)];
                    for (h, &v) in w.iter().enumerate() {
                        // SAFETY: `bi < SEG`; `pixels` reads only what
                        // this loop wrote (`bi < ns`, every `g` and `q`).
                        unsafe { (*ip.add(bi))[2 * m + h][q] = v };
                        if B == 4 {
                            mb[2 * m + h][q] = _mm512_movepi16_mask(v);
                        }
                    }
                }
            }
        }
        // Two pixels at a time share each load of index words and masks.
        let (mut j, mut at) = (0, 0);
        while j < NP {
            // SAFETY (both): AVX-512 available (caller); the scratch's
            // first `ns` blocks are written; patches `j .. j + W` are in
            // `xs` for blocks `s0 .. s0 + ns` (assert above).
            let v = if j + 2 <= NP {
                unsafe { pixels::<B, Q, 2>(&sc, ns, xs, at, stride, s0 * 64 * TABLE_BYTES) }
            } else {
                let [a] =
                    unsafe { pixels::<B, Q, 1>(&sc, ns, xs, at, stride, s0 * 64 * TABLE_BYTES) };
                [a, [0; 16]]
            };
            for (d, vd) in v.iter().enumerate().take(NP - j) {
                for (r, o) in out.iter_mut().enumerate() {
                    o[j + d] = o[j + d].wrapping_add(vd[4 * (r & 3) + (r >> 2)]);
                }
            }
            // A running offset: `j * stride` would be a multiply.
            j += 2;
            at += 2 * stride;
        }
        s0 += ns;
    }
}

/// The sums of `W` pixels (tables at bytes `xs[at + d * stride + o ..]`)
/// over the first `ns` blocks of the scratch: per pixel 16 `i32`,
/// element `4L + q` for row `4q + L`.
///
/// # Safety
/// AVX-512 (F, BW) available; `sc` holds `ns` blocks.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn pixels<const B: u32, const Q: usize, const W: usize>(
    sc: &Scratch<Q>,
    ns: usize,
    xs: &[i8],
    at: usize,
    stride: usize,
    o: usize,
) -> [[i32; 16]; W] {
    let zero = _mm512_setzero_si512();
    let bb = 64 * TABLE_BYTES;
    assert!(ns <= SEG && xs.len() >= at + (W - 1) * stride + o + ns * bb);
    let ip = sc.idx.as_ptr().cast::<[[__m512i; Q]; 8]>();
    // Per pixel and quad: i16 sums of the `h = 0` and `h = 1` terms, and
    // their widened i32 sums (128-bit lane `L`: row `4q + L`).
    let mut a16 = [[[zero; 2]; Q]; W];
    let mut a32 = [[zero; Q]; W];
    let mut left = FLUSH;
    for (bi, mb) in sc.msk.iter().enumerate().take(ns) {
        // SAFETY: the first `ns` blocks are written (caller).
        let ib = unsafe { &*ip.add(bi) };
        let tp: [*const i8; W] =
            core::array::from_fn(|d| xs.as_ptr().wrapping_add(at + d * stride + o + bi * bb));
        for g in 0..8 {
            let mut ta = [zero; W];
            let mut tb = [zero; W];
            for d in 0..W {
                // SAFETY: tables `8g .. 8g + 8` of block `bi` of pixel
                // `d` are in bounds by the assert above.
                unsafe {
                    ta[d] = _mm512_loadu_si512(tp[d].add(128 * g).cast());
                    tb[d] = _mm512_loadu_si512(tp[d].add(128 * g + 64).cast());
                }
            }
            for q in 0..Q {
                let (iv, hm) = (ib[g][q], mb[g][q]);
                for d in 0..W {
                    let v = _mm512_permutex2var_epi16(ta[d], iv, tb[d]);
                    // SAFETY: AVX-512 available (caller).
                    unsafe { add_term::<B>(&mut a16[d][q], hm, v) };
                }
            }
        }
        left -= 1;
        if left == 0 || bi + 1 == ns {
            left = FLUSH;
            for (s, a) in a32
                .as_flattened_mut()
                .iter_mut()
                .zip(a16.as_flattened_mut())
            {
                // SAFETY: AVX-512 available (caller).
                unsafe {
                    *s = widen_add::<0>(*s, a[0]);
                    if B == 4 {
                        *s = widen_add::<4>(*s, a[1]);
                    }
                }
                *a = [zero; 2];
            }
        }
    }
    let mut out = [[0i32; 16]; W];
    for (od, ad) in out.iter_mut().zip(a32.iter()) {
        // Transpose-add within 128-bit lanes: lane `L` ends as the sums
        // of rows `L`, `4 + L`, `8 + L`, `12 + L`.
        let mut a = [zero; 4];
        a[..Q].copy_from_slice(ad);
        let t01 = _mm512_add_epi32(
            _mm512_unpacklo_epi32(a[0], a[1]),
            _mm512_unpackhi_epi32(a[0], a[1]),
        );
        let t23 = _mm512_add_epi32(
            _mm512_unpacklo_epi32(a[2], a[3]),
            _mm512_unpackhi_epi32(a[2], a[3]),
        );
        let s = _mm512_add_epi32(
            _mm512_unpacklo_epi64(t01, t23),
            _mm512_unpackhi_epi64(t01, t23),
        );
        // SAFETY: 64 writable bytes.
        unsafe { _mm512_storeu_si512(od.as_mut_ptr().cast(), s) };
    }
    out
}

/// The `lut` row kernel at the AVX-512 level.
struct Lut;

// SAFETY: X = i8, a primitive integer.
unsafe impl RowKernel for Lut {
    type In = i8;
    type X = i8;
    type Acc = i32;
    /// Not planes of values: room for a 16-byte table per activation.
    /// The gather copies activations as they are (as for `dot`), and
    /// `prepare` turns them into tables in place, once per chunk for all
    /// rows, with SIMD; a table per activation in `put` made the gather
    /// cost more than the lookups.
    const PLANES: usize = TABLE_BYTES;
    const ROWS: usize = ROWS;
    crate::dispatch::tile::copy_put!(i8);
    unsafe fn prepare<const B: u32>(xs: &mut [i8], np: usize, stride: usize, kc: usize) -> u32 {
        let n = kc.div_ceil(64) * 64;
        for j in 0..np {
            // SAFETY: the caller guarantees the ISA.
            unsafe { build_tables(&mut xs[j * stride..(j + 1) * stride], n) };
        }
        0
    }
    unsafe fn dot<const B: u32, const NP: usize>(
        rows: &[&[u8]],
        kc: usize,
        xs: &[i8],
        stride: usize,
        out: &mut [[i32; NP]],
        _mode: u32,
    ) {
        // SAFETY (every arm): the caller guarantees the ISA and the
        // patches; B is 2, 3 or 4 on this path (the driver sends int8
        // weights only to `w8` kernels).
        match rows.len().div_ceil(4) {
            0 => {}
            1 => unsafe { lut_rows::<B, NP, 1>(rows, kc, xs, stride, out) },
            2 => unsafe { lut_rows::<B, NP, 2>(rows, kc, xs, stride, out) },
            3 => unsafe { lut_rows::<B, NP, 3>(rows, kc, xs, stride, out) },
            _ => unsafe { lut_rows::<B, NP, 4>(rows, kc, xs, stride, out) },
        }
    }
}

/// `avx512/lut`: equal to [`crate::scalar::conv_shift_i8`]; no multiply.
/// Panics if the CPU lacks the AVX-512 level.
pub fn conv_lut_i8(
    g: &Conv2dGeom,
    x: &[i8],
    w: &PackedRows,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    tile::shift_i8::<Lut>(Isa::Avx512, g, x, w, oc0, rq, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_hold_the_signed_shifted_activation() {
        if !Isa::Avx512.available() {
            return;
        }
        let mut p = [0i8; 256 * TABLE_BYTES];
        for (i, v) in p[..256].iter_mut().enumerate() {
            *v = i as u8 as i8;
        }
        // SAFETY: AVX-512 available (checked above).
        unsafe { build_tables(&mut p, 256) };
        for i in 0..256 {
            let t = &p[i * TABLE_BYTES..][..TABLE_BYTES];
            let got: [i16; 8] =
                core::array::from_fn(|e| i16::from_le_bytes([t[2 * e] as u8, t[2 * e + 1] as u8]));
            assert_eq!(got, signed_table(i as u8 as i8), "x = {}", i as u8 as i8);
        }
        assert_eq!(
            signed_table(-128),
            [-128, -256, -512, -1024, 128, 256, 512, 1024]
        );
    }

    #[test]
    fn code_map_splits_sign_and_exponent() {
        // b = 4: code 0b1110 is s = 1, p = 6: e = 4 + 2, h = 1.
        assert_eq!(code_map(4)[0b1110], 6 | 0x80);
        assert_eq!(code_map(4)[0b1110 + 16], 6 | 0x80);
        // b = 3: code 0b101 is s = 1, p = 1.
        assert_eq!(code_map(3)[0b101], 5);
        // b = 2: code 0b01 is s = 0, p = 1.
        assert_eq!(code_map(2)[0b01], 1);
    }
}
