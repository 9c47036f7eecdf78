//! The driver shared by the Cortex-M int8 kernels: patch gathering and the
//! tile loop.
//!
//! Per group of output channels, output pixels are taken in tiles of [`P`].
//! A tile's patches (the taps one output reads, in the weight order
//! `(ic, ky, kx)`, zero for padded taps) are gathered once as int16 into a
//! 2 KiB stack buffer and reused by every output channel of the group; a
//! row kernel reads them as int16 pairs (one `SMLAD` operand each), the
//! tile's pixels' words of one pair adjacent (two `LDRD` load all four). Which kernel rows and columns fall inside the
//! image is worked out once per pixel: no tap is bounds-tested on its own.
//!
//! A patch longer than the buffer is cut into chunks of whole input
//! channels whose tap count is a multiple of 8, so every chunk starts on a
//! byte of every packed code row (8 codes of `b` bits are `b` bytes). The
//! partial sums of a block of [`CB`] rows then live on the stack. If even
//! one chunk per pixel cannot be made to fit (huge kernels), the caller
//! runs the scalar kernel.

use crate::Conv2dGeom;

#[cfg(not(target_endian = "little"))]
compile_error!("the Cortex-M kernels read int16 pairs little-endian");

/// Output pixels per tile: with 4 accumulators, 4 patch pairs, one weight
/// pair and the pointers, the inner loop still fits the 13 usable
/// registers of Thumb-2.
pub(crate) const P: usize = 4;
/// Words (int16 pairs) of the stack patch buffer: 2 KiB, 256 taps per
/// pixel for four pixels. Small, because a Cortex-M's stack is small.
const BUF_WORDS: usize = 512;
/// Rows whose partial sums are kept when a patch needs several chunks.
const CB: usize = 16;

/// `n` rounded up to a multiple of 8 (a group of codes).
#[inline]
const fn round8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

/// A row kernel: one output channel's sum over one chunk of taps.
pub(crate) trait RowDot {
    /// Sum of row `r` (relative to the call's first channel) over taps
    /// `c0 .. c0 + kc` for `NP` pixels. Taps are int16, two per word: word
    /// `i * NP + j` holds taps `2i` (low half) and `2i + 1` of pixel `j`;
    /// they are zero from `kc` up to the next multiple of 8. `c0` is 0 or
    /// a multiple of 8.
    fn dot<const NP: usize>(&self, r: usize, c0: usize, kc: usize, xs: &[u32]) -> [i32; NP];
}

/// How a layer's patches fit the buffer.
#[derive(Clone, Copy)]
struct Plan {
    /// Pixels per tile (`P`, or 1 when only a single pixel's patch fits).
    np: usize,
    /// Input channels per chunk.
    cpc: usize,
}

const fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn plan(g: &Conv2dGeom) -> Option<Plan> {
    let khw = g.kh * g.kw;
    for np in [P, 1] {
        let cap = 2 * BUF_WORDS / np;
        let k8 = round8(g.k());
        if k8 <= cap {
            return Some(Plan {
                np,
                cpc: g.c_in_g(),
            });
        }
        // Chunks of `cpc` channels: `cpc * khw` must be a multiple of 8.
        let u = 8 / gcd(khw, 8);
        let cpc = cap / (khw * u) * u;
        if cpc > 0 {
            return Some(Plan { np, cpc });
        }
    }
    None
}

/// The tile's interleaved patches, and one pixel's patch before
/// interleaving.
struct Bufs {
    tile: [u32; BUF_WORDS],
    stage: [u32; BUF_WORDS / P],
}

struct Ctx<'a> {
    g: &'a Conv2dGeom,
    x: &'a [i8],
    plan: Plan,
}

/// Run `kern` over output channels `oc0 .. oc0 + n`, calling
/// `finish(r, q, acc)` for row `r` (relative to `oc0`) and output pixel
/// `q` (`oy * out_w + ox`). Returns `false`, having done nothing, when the
/// layer's patches cannot be chunked to fit the buffer.
///
/// The caller has checked the arguments as the scalar kernel does.
pub(crate) fn conv<K: RowDot>(
    g: &Conv2dGeom,
    x: &[i8],
    n: usize,
    oc0: usize,
    kern: &K,
    mut finish: impl FnMut(usize, usize, i32),
) -> bool {
    let Some(plan) = plan(g) else {
        return false;
    };
    let plane = g.out_plane();
    if n == 0 || plane == 0 {
        return true;
    }
    let mut buf = Bufs {
        tile: [0; BUF_WORDS],
        stage: [0; BUF_WORDS / P],
    };
    let d = Ctx { g, x, plan };
    let cog = g.c_out_g();
    let mut r = 0;
    while r < n {
        let grp = (oc0 + r) / cog;
        let r_end = n.min((grp + 1) * cog - oc0);
        let mut q = 0;
        while q < plane {
            if plan.np == P && plane - q >= P {
                d.tile::<K, P>(&mut buf, grp, r, r_end, q, kern, &mut finish);
                q += P;
            } else {
                d.tile::<K, 1>(&mut buf, grp, r, r_end, q, kern, &mut finish);
                q += 1;
            }
        }
        r = r_end;
    }
    true
}

impl Ctx<'_> {
    /// Rows `r0 .. r1` (one group) for pixels `q0 .. q0 + NP`.
    #[allow(clippy::too_many_arguments)]
    fn tile<K: RowDot, const NP: usize>(
        &self,
        buf: &mut Bufs,
        grp: usize,
        r0: usize,
        r1: usize,
        q0: usize,
        kern: &K,
        finish: &mut impl FnMut(usize, usize, i32),
    ) {
        let g = self.g;
        let cig = g.c_in_g();
        let khw = g.kh * g.kw;
        let cpc = self.plan.cpc;
        let nch = cig.div_ceil(cpc);
        if nch == 1 {
            self.gather::<NP>(buf, grp, q0, 0, cig);
            for r in r0..r1 {
                let a = kern.dot::<NP>(r, 0, cig * khw, &buf.tile);
                for (j, &v) in a.iter().enumerate() {
                    finish(r, q0 + j, v);
                }
            }
            return;
        }
        let mut rs = r0;
        while rs < r1 {
            let re = r1.min(rs + CB);
            let mut acc = [[0i32; NP]; CB];
            for c in 0..nch {
                let ic0 = c * cpc;
                let ic1 = cig.min(ic0 + cpc);
                self.gather::<NP>(buf, grp, q0, ic0, ic1);
                for (r, a) in (rs..re).zip(acc.iter_mut()) {
                    let part = kern.dot::<NP>(r, ic0 * khw, (ic1 - ic0) * khw, &buf.tile);
                    for (aj, pj) in a.iter_mut().zip(part) {
                        // The scalar kernel's `+=` wraps the same way in
                        // release builds; exact sums never get near it.
                        *aj = aj.wrapping_add(pj);
                    }
                }
            }
            for (r, a) in (rs..re).zip(acc.iter()) {
                for (j, &v) in a.iter().enumerate() {
                    finish(r, q0 + j, v);
                }
            }
            rs = re;
        }
    }

    /// Gather input channels `ic0 .. ic1` (of group `grp`) of the patches
    /// of pixels `q0 .. q0 + NP` into `buf.tile`, interleaved (see
    /// [`RowDot::dot`]).
    fn gather<const NP: usize>(
        &self,
        buf: &mut Bufs,
        grp: usize,
        q0: usize,
        ic0: usize,
        ic1: usize,
    ) {
        if NP == 1 {
            // One pixel: the interleaved layout is the plain one.
            self.gather_pixel(as_i16(&mut buf.tile), grp, q0, ic0, ic1);
            return;
        }
        let pairs = round8((ic1 - ic0) * self.g.kh * self.g.kw) / 2;
        assert!(pairs <= buf.stage.len() && pairs * NP <= buf.tile.len());
        for j in 0..NP {
            self.gather_pixel(as_i16(&mut buf.stage), grp, q0 + j, ic0, ic1);
            let mut d = buf.tile.as_mut_ptr().wrapping_add(j);
            for &v in &buf.stage[..pairs] {
                // SAFETY: `d` is word `i * NP + j < pairs * NP <=
                // tile.len()` for pair `i` (asserted above).
                unsafe { *d = v };
                d = d.wrapping_add(NP);
            }
        }
    }

    /// Taps of input channels `ic0 .. ic1` (group `grp`) of pixel `q` into
    /// `dst`, zero for padded taps and from the last tap up to a multiple
    /// of 8. The kernel rows and columns that land inside the image are
    /// found once per pixel, so no tap is tested on its own.
    fn gather_pixel(&self, dst: &mut [i16], grp: usize, q: usize, ic0: usize, ic1: usize) {
        let g = self.g;
        let x = self.x;
        let (h, w, kh, kw) = (g.h, g.w, g.kh, g.kw);
        let (dy, dx) = (g.dilation[0], g.dilation[1]);
        let hw = h * w;
        let ow = g.out_w();
        let kc = (ic1 - ic0) * kh * kw;
        let dst = &mut dst[..round8(kc)];
        let (oy, ox) = (q / ow, q % ow);
        let iy0 = (oy * g.stride[0]) as isize - g.pads[0] as isize;
        let ix0 = (ox * g.stride[1]) as isize - g.pads[1] as isize;
        // Kernel rows `ky0 .. ky1` (columns `kx0 .. kx1`) are inside.
        let first = |i0: isize, d: usize, n: usize| {
            if i0 >= 0 {
                0
            } else {
                n.min(i0.unsigned_abs().div_ceil(d))
            }
        };
        let end = |i0: isize, d: usize, n: usize, size: usize| {
            if i0 >= size as isize {
                0
            } else {
                n.min((size as isize - 1 - i0) as usize / d + 1)
            }
        };
        let (ky0, ky1) = (first(iy0, dy, kh), end(iy0, dy, kh, h));
        let (kx0, kx1) = (first(ix0, dx, kw), end(ix0, dx, kw, w));
        if ky0 == 0 && ky1 == kh && kx0 == 0 && kx1 == kw {
            dst[kc..].fill(0);
        } else {
            dst.fill(0);
            if ky0 >= ky1 || kx0 >= kx1 {
                return;
            }
        }
        // Inside: `iy0 + ky * dy >= 0` for `ky >= ky0`, likewise for x.
        let cbase = (grp * g.c_in_g() + ic0) * hw;
        if kh == 1 && kw == 1 {
            // 1x1 (and linear): one tap per channel, a strided read.
            let src = &x[cbase + iy0 as usize * w + ix0 as usize..];
            for (o, &v) in dst[..kc].iter_mut().zip(src.iter().step_by(hw)) {
                *o = v as i16;
            }
            return;
        }
        let nx = kx1 - kx0;
        let ncin = ic1 - ic0;
        // The first inside tap of channel 0, and the last of the last one.
        let first_src =
            cbase + (iy0 + (ky0 * dy) as isize) as usize * w + (ix0 + (kx0 * dx) as isize) as usize;
        let last_src = first_src + (ncin - 1) * hw + (ky1 - 1 - ky0) * dy * w + (nx - 1) * dx;
        assert!(last_src < x.len() && kc <= dst.len());
        let (xp, dp) = (x.as_ptr(), dst.as_mut_ptr());
        // Pointer walks, not indexing: at opt-level "s" the bounds checks
        // and index arithmetic of a 3-tap row cost several times the copy.
        for ic in 0..ncin {
            let mut sp = xp.wrapping_add(first_src + ic * hw);
            let mut dq = dp.wrapping_add((ic * kh + ky0) * kw + kx0);
            for _ in ky0..ky1 {
                // SAFETY: `sp + i * dx` (i < nx) runs over the inside taps
                // of one kernel row, all at most `last_src < x.len()`;
                // `dq + i` over the taps `t < kc <= dst.len()` of that row
                // (asserted above).
                unsafe {
                    if dx == 1 && nx == 3 {
                        *dq = *sp as i16;
                        *dq.add(1) = *sp.add(1) as i16;
                        *dq.add(2) = *sp.add(2) as i16;
                    } else {
                        for i in 0..nx {
                            *dq.add(i) = *sp.add(i * dx) as i16;
                        }
                    }
                }
                sp = sp.wrapping_add(dy * w);
                dq = dq.wrapping_add(kw);
            }
        }
    }
}

/// A word buffer as twice as many int16 (little-endian: tap `2i` in the
/// low half of word `i`).
fn as_i16(buf: &mut [u32]) -> &mut [i16] {
    // SAFETY: the same bytes, alignment 4 >= 2, every bit pattern valid;
    // the returned borrow stands in for `buf`'s for its whole lifetime.
    unsafe { core::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<i16>(), 2 * buf.len()) }
}
