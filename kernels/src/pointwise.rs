//! Pointwise convolution (1x1, stride 1, unpadded, one group) with output
//! pixels in the SIMD lanes.
//!
//! The tiled driver ([`crate::dispatch`]'s `tile`) puts `k` in the lanes:
//! right for 3x3 layers, but a pointwise layer's `k` is its input channel
//! count, often 16-64 in mobile networks, so most of each 64-code block is
//! padding, and every patch is a strided NCHW gather. Here the layer is a
//! GEMM `out[r][q] = sum_i w[r][i] * x[i][q]` whose `q` runs along
//! contiguous memory: pairs of input channels are interleaved as `i16`
//! once per block of pixels, each pair of weights is one broadcast `i32`
//! (two `i16`), and `vpmaddwd`-style dot products sum exact `i32` terms
//! (|w| <= 128, |x| <= 128), so the result is bit-identical to `scalar`.
//!
//! This file holds what is ISA-independent: which layers qualify and the
//! weight-pair table. The AVX2 kernel is `x86_64::pointwise`.

// Only the x86-64 kernel uses the tables; elsewhere `applies` is used, by
// the dispatcher.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use crate::{Bits, Conv2dGeom, PackedRows};

/// Largest `k` (input channels) the kernel takes: its stack buffers hold a
/// pixel block's interleaved input (`k / 2` pairs of 32 pixels, 32 KB at
/// this limit). Wider pointwise layers run the tiled `dot` kernel, whose
/// 64-code blocks are then nearly full.
pub const MAX_K: usize = 512;

/// Fewest output pixels: the weight table is built once per call, which
/// a small map cannot amortize.
pub const MIN_PLANE: usize = 16;

/// Largest `k` on maps under 64 pixels. Measured per layer on MobileNetV2
/// (int8, 4-bit, one thread, against the tiled `avx2/dot` in the same
/// session): every pointwise layer of 14x14 or more ran 1.45-17x faster
/// here (16 -> 96 channels at 112x112: 14.5 -> 1.4 ms); at 7x7 the
/// 160 -> 960 layers ran 1.6-1.8x faster but 320 -> 1280 ran 0.4-0.8x
/// (its weight decode, `n * k` pairs per call, is then as large as the
/// 49-pixel GEMM).
pub const MAX_K_SMALL_MAP: usize = 256;

/// True when `g` is a layer the pointwise kernels compute.
pub const fn applies(g: &Conv2dGeom) -> bool {
    g.groups == 1
        && g.kh == 1
        && g.kw == 1
        && g.stride[0] == 1
        && g.stride[1] == 1
        && g.pads[0] == 0
        && g.pads[1] == 0
        && g.pads[2] == 0
        && g.pads[3] == 0
        && g.c_in <= MAX_K
        && g.h * g.w >= MIN_PLANE
        && (g.h * g.w >= 64 || g.c_in <= MAX_K_SMALL_MAP)
}

/// True when `g` is a dense conv other than pointwise with a `k` small
/// enough for the pixel-lane kernels (a network's stem: 3 input channels,
/// `k` = 27 or 147), which the tiled `dot` kernel pads to a multiple of 64
/// codes and finishes with a horizontal sum per output.
pub const fn small_k(g: &Conv2dGeom) -> bool {
    g.groups == 1 && !applies(g) && g.k() <= MAX_K_STEM && g.out_h() * g.out_w() >= 64
}

/// Largest `k` of [`small_k`] layers. Per layer (int8, 4-bit, one thread,
/// same session, against `avx2/dot`): stems of k = 27 ran 3-5x faster,
/// ResNet-18's 7x7 stem (k = 147) 1.4x, 1x1 stride-2 shortcuts (k =
/// 16-128) 1.4-6x, ResNet-20's k = 144 convs 1.0-1.4x, but its k = 288
/// convs 0.55-0.6x: the per-pixel tap gather costs as much as `dot`'s once
/// `k` fills its 64-code blocks.
pub const MAX_K_STEM: usize = 160;

/// Largest `k` of the small-`k` layers the AVX-512 pixel-lane kernel
/// takes ([`Layers::TinyK`](crate::dispatch::Layers::TinyK)): against
/// `avx512/dot` (whose `vpdpbusd` fills its 64-code blocks better than
/// `avx2/dot`), measured per layer (int8, 4-bit, one thread, same session):
/// ResNet-20's k = 27 stem 55 against 91 us and its 1x1 stride-2
/// shortcuts (k = 16, 32) 11 / 8 against 38 / 18 us, ResNet-18's (k = 64,
/// 128) 168 / 214 against 456 / 257 us; but k = 144 convs 73-245 against
/// 64-188 us and ResNet-18's 7x7 stem (k = 147) 5.9 against 4.6 ms.
pub const MAX_K_TINY: usize = 128;

/// True when `g` is a [`small_k`] layer with `k <= MAX_K_TINY`.
pub const fn tiny_k(g: &Conv2dGeom) -> bool {
    small_k(g) && g.k() <= MAX_K_TINY
}

/// The `i32` holding two weights as `i16` (low half: the even channel),
/// for every pair of `b`-bit codes `c0 | c1 << b`.
const fn pair_table<const N: usize>(b: u32) -> [u32; N] {
    let bits = match Bits::new(b) {
        Some(v) => v,
        None => panic!("b out of range"),
    };
    let mut t = [0u32; N];
    let mut i = 0;
    while i < N {
        let c0 = (i & ((1 << b) - 1)) as u8;
        let c1 = (i >> b) as u8;
        let v0 = bits.value(c0) as i16 as u16 as u32;
        let v1 = bits.value(c1) as i16 as u16 as u32;
        t[i] = v0 | v1 << 16;
        i += 1;
    }
    t
}

static PAIRS2: [u32; 16] = pair_table::<16>(2);
static PAIRS3: [u32; 64] = pair_table::<64>(3);
static PAIRS4: [u32; 256] = pair_table::<256>(4);

/// Fill `out[r * kp + t]` (for `kp = ceil(k / 2)`) with weight pair `t` of
/// row `r` of `w`, for rows `r0 .. r0 + out.len() / kp`: the even channel
/// in the low `i16`, the odd one (0 past `k`) in the high.
pub(crate) fn weight_pairs(w: &PackedRows, r0: usize, out: &mut [u32]) {
    let k = w.k();
    let kp = k.div_ceil(2);
    let b = w.bits().get() as usize;
    let table: &[u32] = match b {
        2 => &PAIRS2,
        3 => &PAIRS3,
        _ => &PAIRS4,
    };
    let mask = (1usize << (2 * b)) - 1;
    for (r, dst) in out.chunks_exact_mut(kp).enumerate() {
        let row = w.row(r0 + r);
        for (t, d) in dst.iter_mut().enumerate() {
            // Codes 2t and 2t + 1 are the 2b bits from bit 2tb (LSB
            // first), within two bytes since 2b <= 8.
            let bit = 2 * t * b;
            let byte = bit / 8;
            let lo = row[byte] as usize;
            let hi = row.get(byte + 1).map_or(0, |&v| v as usize);
            let mut pair = ((lo | hi << 8) >> (bit % 8)) & mask;
            if 2 * t + 1 >= k {
                // Past the row: no odd weight (its bits are padding).
                pair &= (1 << b) - 1;
                *d = table[pair] & 0xffff;
            } else {
                *d = table[pair];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes::{code_at, pack};

    #[test]
    fn weight_pairs_hold_both_values() {
        for b in 2..=4u32 {
            let bits = Bits::new(b).unwrap();
            for k in [1usize, 2, 3, 7, 8, 9, 33] {
                let rows = 3;
                let codes: Vec<u8> = (0..rows * k).map(|i| (i * 7 % (1 << b)) as u8).collect();
                let mut packed = vec![0u8; rows * bits.row_bytes(k)];
                pack(&codes, bits, rows, k, &mut packed);
                // Garbage in the padding bits must not leak into the table.
                let rb = bits.row_bytes(k);
                let used = k * b as usize % 8;
                if used != 0 {
                    for r in 0..rows {
                        packed[r * rb + rb - 1] |= (0xffu16 << used) as u8;
                    }
                }
                let w = PackedRows::new(&packed, bits, rows, k).unwrap();
                let kp = k.div_ceil(2);
                let mut t = vec![0u32; (rows - 1) * kp];
                weight_pairs(&w, 1, &mut t);
                for r in 0..rows - 1 {
                    for p in 0..kp {
                        let v = t[r * kp + p];
                        let c0 = code_at(w.row(r + 1), bits, 2 * p);
                        assert_eq!(v as u16 as i16 as i32, bits.value(c0), "b{b} k{k}");
                        let want1 = if 2 * p + 1 < k {
                            bits.value(code_at(w.row(r + 1), bits, 2 * p + 1))
                        } else {
                            0
                        };
                        assert_eq!((v >> 16) as u16 as i16 as i32, want1, "b{b} k{k}");
                    }
                }
            }
        }
    }
}
