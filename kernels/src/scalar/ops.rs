//! Reference kernels for the non-MAC operators: pooling, elementwise
//! integer requantization, table lookups and (de)quantization.

use crate::requant::round_f64;
use crate::Requant;

/// Pooling window geometry over one CHW image. Output sizes are explicit
/// because `ceil_mode` lets windows run past the padded input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PoolGeom {
    /// Channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Window height.
    pub kh: usize,
    /// Window width.
    pub kw: usize,
    /// Stride (y, x).
    pub stride: [usize; 2],
    /// Padding: top, left, bottom, right.
    pub pads: [usize; 4],
    /// Dilation (y, x).
    pub dilation: [usize; 2],
    /// Output height.
    pub out_h: usize,
    /// Output width.
    pub out_w: usize,
    /// Average pooling divides by the whole window inside the padded input
    /// (ONNX `count_include_pad = 1`) instead of the in-bounds taps.
    pub count_include_pad: bool,
}

impl PoolGeom {
    /// Elements of one input image.
    pub const fn in_len(&self) -> usize {
        self.c * self.h * self.w
    }
    /// Elements of one output image.
    pub const fn out_len(&self) -> usize {
        self.c * self.out_h * self.out_w
    }

    /// Visit the in-bounds input indices of window `(c, oy, ox)`; returns the
    /// divisor for averaging.
    #[inline]
    fn window(&self, c: usize, oy: usize, ox: usize, mut f: impl FnMut(usize)) -> usize {
        let mut n = 0;
        let mut padded = 0;
        for ky in 0..self.kh {
            let iy = (oy * self.stride[0] + ky * self.dilation[0]) as isize - self.pads[0] as isize;
            let y_in_pad = iy < (self.h + self.pads[2]) as isize;
            for kx in 0..self.kw {
                let ix =
                    (ox * self.stride[1] + kx * self.dilation[1]) as isize - self.pads[1] as isize;
                if y_in_pad && ix < (self.w + self.pads[3]) as isize {
                    padded += 1;
                }
                if iy < 0 || ix < 0 || iy >= self.h as isize || ix >= self.w as isize {
                    continue;
                }
                n += 1;
                f((c * self.h + iy as usize) * self.w + ix as usize);
            }
        }
        if self.count_include_pad {
            padded
        } else {
            n
        }
    }
}

impl PoolGeom {
    /// Max of window `(c, oy, ox)` of an int8 image, `i8::MIN` when it has
    /// no in-bounds tap: [`maxpool`] of one output (for the border columns
    /// of [`crate::pool::maxpool_i8`]).
    pub(crate) fn window_max(&self, c: usize, oy: usize, ox: usize, x: &[i8]) -> i8 {
        let mut m = i8::MIN;
        self.window(c, oy, ox, |i| m = m.max(x[i]));
        m
    }
}

/// Max pooling; windows with no in-bounds tap yield `empty`.
pub fn maxpool<T: Copy + PartialOrd>(g: &PoolGeom, x: &[T], empty: T, out: &mut [T]) {
    assert_eq!(x.len(), g.in_len());
    assert_eq!(out.len(), g.out_len());
    let (sy, sx) = (g.stride[0], g.stride[1]);
    let (dy, dx) = (g.dilation[0], g.dilation[1]);
    let span_y = (g.kh.max(1) - 1) * dy;
    let span_x = (g.kw.max(1) - 1) * dx;
    for c in 0..g.c {
        for oy in 0..g.out_h {
            let y0 = oy * sy;
            let rows_in = g.kh > 0 && y0 >= g.pads[0] && y0 + span_y < g.h + g.pads[0];
            for ox in 0..g.out_w {
                let x0 = ox * sx;
                if rows_in && g.kw > 0 && x0 >= g.pads[1] && x0 + span_x < g.w + g.pads[1] {
                    // Interior window: every tap in bounds, visited in the
                    // same order as `window` (so NaN handling is the same),
                    // without its per-tap bounds checks.
                    let base = (c * g.h + y0 - g.pads[0]) * g.w + x0 - g.pads[1];
                    let mut m = x[base];
                    for ky in 0..g.kh {
                        let row = &x[base + ky * dy * g.w..][..span_x + 1];
                        for kx in 0..g.kw {
                            let v = row[kx * dx];
                            if v > m {
                                m = v;
                            }
                        }
                    }
                    out[(c * g.out_h + oy) * g.out_w + ox] = m;
                    continue;
                }
                let mut m: Option<T> = None;
                g.window(c, oy, ox, |i| {
                    if m.is_none_or(|v| x[i] > v) {
                        m = Some(x[i])
                    }
                });
                out[(c * g.out_h + oy) * g.out_w + ox] = m.unwrap_or(empty);
            }
        }
    }
}

/// Int8 average pooling at an unchanged scale: exact integer sum, divided
/// with rounding half away from zero.
pub fn avgpool_i8(g: &PoolGeom, x: &[i8], out: &mut [i8]) {
    assert_eq!(x.len(), g.in_len());
    assert_eq!(out.len(), g.out_len());
    for c in 0..g.c {
        for oy in 0..g.out_h {
            for ox in 0..g.out_w {
                let mut s = 0i32;
                let n = g.window(c, oy, ox, |i| s += x[i] as i32) as i32;
                let v = if n == 0 { 0 } else { div_round(s, n) };
                out[(c * g.out_h + oy) * g.out_w + ox] = v.clamp(-128, 127) as i8;
            }
        }
    }
}

/// Float average pooling.
pub fn avgpool_f32(g: &PoolGeom, x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), g.in_len());
    assert_eq!(out.len(), g.out_len());
    for c in 0..g.c {
        for oy in 0..g.out_h {
            for ox in 0..g.out_w {
                let mut s = 0f32;
                let n = g.window(c, oy, ox, |i| s += x[i]);
                out[(c * g.out_h + oy) * g.out_w + ox] = if n == 0 { 0.0 } else { s / n as f32 };
            }
        }
    }
}

/// `s / n` rounded half away from zero (`n > 0`).
#[inline]
pub fn div_round(s: i32, n: i32) -> i32 {
    if s >= 0 {
        (s + n / 2) / n
    } else {
        -((-s + n / 2) / n)
    }
}

/// Per-channel requantization of an int8 tensor (a standalone BatchNorm, a
/// multiply by a constant, or a change of scale): `plane` elements per
/// channel, one [`Requant`] per channel.
pub fn requant_i8(x: &[i8], plane: usize, rq: &[Requant], out: &mut [i8]) {
    assert_eq!(x.len(), out.len());
    assert_eq!(x.len(), plane * rq.len());
    for (c, r) in rq.iter().enumerate() {
        for i in c * plane..(c + 1) * plane {
            out[i] = r.apply(x[i] as i32);
        }
    }
}

/// Elementwise function of an int8 tensor through a 256-entry table built
/// at load (sigmoid, hard-swish, leaky ReLU, ...): exact on every ISA.
pub fn lut_i8(x: &[i8], table: &[i8; 256], out: &mut [i8]) {
    assert_eq!(x.len(), out.len());
    for (o, &v) in out.iter_mut().zip(x) {
        *o = table[(v as u8) as usize];
    }
}

/// Integer sum of two int8 tensors at different scales:
/// `y = clamp((a * ma + b * mb + offset) >> shift)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AddRequant {
    /// Multiplier of `a`.
    pub ma: i32,
    /// Multiplier of `b`.
    pub mb: i32,
    /// Right shift.
    pub shift: u32,
    /// Rounding half plus any offset.
    pub offset: i64,
    /// Lower clamp (fused ReLU).
    pub lo: i8,
    /// Upper clamp.
    pub hi: i8,
}

impl AddRequant {
    /// Shift used for the two multipliers: with `|x| <= 128` and
    /// `|m| < 2^31` the sum stays far inside i64.
    pub const SHIFT: u32 = 24;

    /// `y = ga * a + gb * b`, clamped to `lo..=hi`.
    pub fn from_real(ga: f64, gb: f64, lo: i8, hi: i8) -> AddRequant {
        let s = crate::requant::pow2(Self::SHIFT as i32);
        let lim = i32::MAX as f64;
        let m = |g: f64| {
            if g.is_finite() {
                (g * s).clamp(-lim, lim)
            } else {
                0.0
            }
        };
        AddRequant {
            ma: round_f64(m(ga)) as i32,
            mb: round_f64(m(gb)) as i32,
            shift: Self::SHIFT,
            offset: 1 << (Self::SHIFT - 1),
            lo,
            hi,
        }
    }

    /// Apply to one pair.
    #[inline]
    pub fn apply(&self, a: i8, b: i8) -> i8 {
        let v = (a as i64 * self.ma as i64 + b as i64 * self.mb as i64 + self.offset) >> self.shift;
        v.clamp(self.lo as i64, self.hi as i64) as i8
    }
}

/// Elementwise int8 add (residual connections).
pub fn add_i8(a: &[i8], b: &[i8], rq: &AddRequant, out: &mut [i8]) {
    assert_eq!(a.len(), out.len());
    assert_eq!(b.len(), out.len());
    for i in 0..out.len() {
        out[i] = rq.apply(a[i], b[i]);
    }
}

/// Quantize `f32` to int8 with `q = round(x * inv_scale)`, saturating; NaN
/// maps to 0.
pub fn quantize_i8(x: &[f32], inv_scale: f32, out: &mut [i8]) {
    assert_eq!(x.len(), out.len());
    for (o, &v) in out.iter_mut().zip(x) {
        let q = v * inv_scale;
        *o = if q.is_nan() {
            0
        } else {
            round_f64(q as f64).clamp(-128, 127) as i8
        };
    }
}

/// Dequantize int8 to `f32`.
pub fn dequantize_i8(x: &[i8], scale: f32, out: &mut [f32]) {
    assert_eq!(x.len(), out.len());
    for (o, &v) in out.iter_mut().zip(x) {
        *o = v as f32 * scale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn div_round_half_away() {
        assert_eq!(div_round(5, 2), 3);
        assert_eq!(div_round(-5, 2), -3);
        assert_eq!(div_round(4, 3), 1);
        assert_eq!(div_round(-4, 3), -1);
        assert_eq!(div_round(0, 9), 0);
    }

    #[test]
    fn pooling_counts_padding_as_asked() {
        let mut g = PoolGeom {
            c: 1,
            h: 2,
            w: 2,
            kh: 2,
            kw: 2,
            stride: [1, 1],
            pads: [1, 1, 0, 0],
            dilation: [1, 1],
            out_h: 2,
            out_w: 2,
            count_include_pad: false,
        };
        let x = [4i8, 8, 12, 16];
        let mut o = [0i8; 4];
        avgpool_i8(&g, &x, &mut o);
        assert_eq!(o, [4, 6, 8, 10]);
        g.count_include_pad = true;
        avgpool_i8(&g, &x, &mut o);
        assert_eq!(o, [1, 3, 4, 10]);
        let mut m = [0i8; 4];
        maxpool(&g, &x, i8::MIN, &mut m);
        assert_eq!(m, [4, 8, 12, 16]);
    }

    /// The interior fast path of `maxpool` against a direct max over
    /// `window`, on many shapes (strides, dilations, asymmetric pads).
    #[test]
    fn maxpool_matches_window_max() {
        let mut seed = 0x9e37_79b9_u32;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for case in 0..400 {
            let (kh, kw) = (1 + rnd() as usize % 4, 1 + rnd() as usize % 4);
            let dilation = [1 + rnd() as usize % 2, 1 + rnd() as usize % 2];
            let stride = [1 + rnd() as usize % 3, 1 + rnd() as usize % 3];
            let pads = [0, 1, 2, 3].map(|_| rnd() as usize % kh.min(kw));
            let (h, w) = (kh * 3 + rnd() as usize % 9, kw * 3 + rnd() as usize % 9);
            let out_h = (h + pads[0] + pads[2] - (kh - 1) * dilation[0] - 1) / stride[0] + 1;
            let out_w = (w + pads[1] + pads[3] - (kw - 1) * dilation[1] - 1) / stride[1] + 1;
            let g = PoolGeom {
                c: 2,
                h,
                w,
                kh,
                kw,
                stride,
                pads,
                dilation,
                out_h,
                out_w,
                count_include_pad: false,
            };
            let x: Vec<i8> = (0..g.in_len()).map(|_| rnd() as i8).collect();
            let mut got = vec![0i8; g.out_len()];
            maxpool(&g, &x, i8::MIN, &mut got);
            for c in 0..g.c {
                for oy in 0..out_h {
                    for ox in 0..out_w {
                        let mut m = i8::MIN;
                        g.window(c, oy, ox, |i| m = m.max(x[i]));
                        assert_eq!(got[(c * out_h + oy) * out_w + ox], m, "case {case}: {g:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn add_requant_matches_real() {
        let r = AddRequant::from_real(0.5, 0.25, -128, 127);
        assert_eq!(r.apply(10, 4), 6);
        assert_eq!(r.apply(127, 127), 95);
        assert_eq!(r.apply(-128, -128), -96);
    }
}
