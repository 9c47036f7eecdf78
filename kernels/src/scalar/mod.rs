//! Scalar reference kernels: simple, obviously correct, and the truth that
//! every other kernel is tested against (equality in int8 mode).
//!
//! Conv kernels compute output channels `oc0 .. oc0 + n` where `n` is the
//! number of weight rows passed, writing `n * out_h * out_w` outputs; a
//! caller splits the channel range across threads.

mod ops;
pub use ops::*;

use crate::{fexp, Bits, Conv2dGeom, PackedRows, Requant};

/// Float-mode per-channel epilogue: `y = clamp(acc * scale + bias, lo, hi)`
/// (channel scale, bias, BatchNorm and a fused activation clamp). One
/// multiply per output, none per MAC.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Affine {
    /// Multiplier of the accumulator.
    pub scale: f32,
    /// Added after scaling.
    pub bias: f32,
    /// Lower clamp (`-inf` for none, 0 for ReLU).
    pub lo: f32,
    /// Upper clamp (`+inf` for none, 6 for ReLU6).
    pub hi: f32,
}

impl Affine {
    /// Identity epilogue.
    pub const IDENTITY: Affine = Affine {
        scale: 1.0,
        bias: 0.0,
        lo: f32::NEG_INFINITY,
        hi: f32::INFINITY,
    };

    /// Apply to one accumulator. NaN propagates (no `clamp` panic).
    #[inline]
    pub fn apply(&self, acc: f32) -> f32 {
        let v = acc * self.scale + self.bias;
        if v < self.lo {
            self.lo
        } else if v > self.hi {
            self.hi
        } else {
            v
        }
    }
}

/// One int8 multiplication-free term: `s * (x << p)`.
#[inline]
pub fn shift_term(x: i8, bits: Bits, code: u8) -> i32 {
    let (neg, p) = bits.decode(code);
    let t = (x as i32) << p;
    if neg {
        -t
    } else {
        t
    }
}

fn check_rows(g: &Conv2dGeom, oc0: usize, n: usize, out_len: usize) {
    assert!(oc0 + n <= g.c_out, "channel range out of bounds");
    assert_eq!(out_len, n * g.out_plane(), "output length");
}

/// Int8 conv with shift weights: exact `i32` accumulation, then `rq`.
pub fn conv_shift_i8(
    g: &Conv2dGeom,
    x: &[i8],
    w: &PackedRows,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    let n = w.rows();
    check_rows(g, oc0, n, out.len());
    assert_eq!(w.k(), g.k());
    assert_eq!(rq.len(), n);
    assert_eq!(x.len(), g.in_len());
    let (oh, ow) = (g.out_h(), g.out_w());
    for r in 0..n {
        let row = w.row(r);
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = 0i32;
                g.for_each_tap(oc0 + r, oy, ox, |xi, ki| {
                    acc += shift_term(x[xi], w.bits(), crate::codes::code_at(row, w.bits(), ki))
                });
                out[(r * oh + oy) * ow + ox] = rq[r].apply(acc);
            }
        }
    }
}

/// Int8 conv with int8 per-channel weights (layers kept at higher precision).
/// `w` holds `n * g.k()` weights, row-major by output channel.
pub fn conv_w8_i8(g: &Conv2dGeom, x: &[i8], w: &[i8], oc0: usize, rq: &[Requant], out: &mut [i8]) {
    let k = g.k();
    let n = w.len() / k.max(1);
    assert_eq!(w.len(), n * k);
    check_rows(g, oc0, n, out.len());
    assert_eq!(rq.len(), n);
    assert_eq!(x.len(), g.in_len());
    let (oh, ow) = (g.out_h(), g.out_w());
    for r in 0..n {
        let row = &w[r * k..(r + 1) * k];
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = 0i32;
                g.for_each_tap(oc0 + r, oy, ox, |xi, ki| {
                    acc += x[xi] as i32 * row[ki] as i32
                });
                out[(r * oh + oy) * ow + ox] = rq[r].apply(acc);
            }
        }
    }
}

/// Float conv with shift weights: exponent add per MAC, `f32` accumulation
/// in tap order, then the epilogue.
pub fn conv_shift_f32(
    g: &Conv2dGeom,
    x: &[f32],
    w: &PackedRows,
    oc0: usize,
    ep: &[Affine],
    out: &mut [f32],
) {
    let n = w.rows();
    check_rows(g, oc0, n, out.len());
    assert_eq!(w.k(), g.k());
    assert_eq!(ep.len(), n);
    assert_eq!(x.len(), g.in_len());
    let (oh, ow) = (g.out_h(), g.out_w());
    for r in 0..n {
        let row = w.row(r);
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = 0f32;
                g.for_each_tap(oc0 + r, oy, ox, |xi, ki| {
                    acc +=
                        fexp::apply_code(x[xi], w.bits(), crate::codes::code_at(row, w.bits(), ki))
                });
                out[(r * oh + oy) * ow + ox] = ep[r].apply(acc);
            }
        }
    }
}

/// Float conv with `f32` weights (layers kept at full precision).
pub fn conv_f32(g: &Conv2dGeom, x: &[f32], w: &[f32], oc0: usize, ep: &[Affine], out: &mut [f32]) {
    let k = g.k();
    let n = w.len() / k.max(1);
    assert_eq!(w.len(), n * k);
    check_rows(g, oc0, n, out.len());
    assert_eq!(ep.len(), n);
    assert_eq!(x.len(), g.in_len());
    let (oh, ow) = (g.out_h(), g.out_w());
    for r in 0..n {
        let row = &w[r * k..(r + 1) * k];
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = 0f32;
                g.for_each_tap(oc0 + r, oy, ox, |xi, ki| acc += x[xi] * row[ki]);
                out[(r * oh + oy) * ow + ox] = ep[r].apply(acc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::codes::pack;
    use std::{vec, vec::Vec};

    /// A conv computed the slow, obvious way with decoded integer weights
    /// and explicit zero padding, independent of `for_each_tap`.
    fn naive(g: &Conv2dGeom, x: &[i8], wv: &[i32], oc: usize, oy: usize, ox: usize) -> i32 {
        let grp = oc / g.c_out_g();
        let mut acc = 0;
        for ic in 0..g.c_in_g() {
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let iy = (oy * g.stride[0] + ky * g.dilation[0]) as i64 - g.pads[0] as i64;
                    let ix = (ox * g.stride[1] + kx * g.dilation[1]) as i64 - g.pads[1] as i64;
                    let xv = if iy < 0 || ix < 0 || iy >= g.h as i64 || ix >= g.w as i64 {
                        0
                    } else {
                        x[((grp * g.c_in_g() + ic) * g.h + iy as usize) * g.w + ix as usize] as i32
                    };
                    acc += xv * wv[((oc * g.c_in_g() + ic) * g.kh + ky) * g.kw + kx];
                }
            }
        }
        acc
    }

    #[test]
    fn shift_conv_equals_naive_integer_conv() {
        let g = Conv2dGeom {
            c_in: 6,
            h: 7,
            w: 5,
            c_out: 4,
            kh: 3,
            kw: 2,
            stride: [2, 1],
            pads: [1, 0, 2, 1],
            dilation: [1, 2],
            groups: 2,
        };
        g.validate().unwrap();
        let bits = Bits::B3;
        let codes: Vec<u8> = (0..g.c_out * g.k())
            .map(|i| ((i * 5 + 1) % 8) as u8)
            .collect();
        let wv: Vec<i32> = codes.iter().map(|&c| bits.value(c)).collect();
        let mut packed = vec![0u8; g.c_out * bits.row_bytes(g.k())];
        pack(&codes, bits, g.c_out, g.k(), &mut packed);
        let w = PackedRows::new(&packed, bits, g.c_out, g.k()).unwrap();
        let x: Vec<i8> = (0..g.in_len())
            .map(|i| (i as i32 * 37 % 255 - 127) as i8)
            .collect();
        // Identity requant over a wide range: check raw accumulators via a
        // gain of 1/64 so values stay in int8.
        let rq = vec![Requant::from_real(1.0 / 64.0, 0.0, -128, 127); g.c_out];
        let mut out = vec![0i8; g.out_len()];
        conv_shift_i8(&g, &x, &w, 0, &rq, &mut out);
        for oc in 0..g.c_out {
            for oy in 0..g.out_h() {
                for ox in 0..g.out_w() {
                    let acc = naive(&g, &x, &wv, oc, oy, ox);
                    assert_eq!(
                        out[(oc * g.out_h() + oy) * g.out_w() + ox],
                        rq[oc].apply(acc)
                    );
                }
            }
        }
        // The channel-range split gives the same bits.
        let mut hi = vec![0i8; 2 * g.out_plane()];
        conv_shift_i8(&g, &x, &w.sub_rows(2, 2), 2, &rq[2..], &mut hi);
        assert_eq!(&hi[..], &out[2 * g.out_plane()..]);
    }
}
