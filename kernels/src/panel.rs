//! Portable pieces of the panels of the pixel-lane int8 GEMMs that share
//! one layout, `neondot/gemm-dot` (`crate::aarch64::gemm`) and
//! `avxvnni/gemm-dot` (`crate::x86_64::gemm_vnni`): for a block of up to
//! [`PX_MAX`] output pixels, sub-blocks of [`SUB`] pixels, each step of
//! four weights one 32-byte vector (`[pixels / SUB][k / 4][SUB][4]`
//! bytes). The block loop, the runs of a block's pixels within output
//! rows, the taps of each step gathered for them ([`StepTaps`]: tabulated
//! per block by [`TapRuns`], the generic [`gather`] otherwise), the panel
//! of a linear layer's batch rows, and the output stores; the per-ISA
//! builders interleave the gathered taps. `avx2/gemm-dot`
//! (`crate::x86_64::gemm_avx2`) uses the block loop and the taps for its
//! own 16-bit panel.

use crate::gemm::padded_k;
use crate::Conv2dGeom;

/// Pixels of a panel sub-block: one 32-byte vector of four-byte words.
pub(crate) const SUB: usize = 8;

/// Most pixels of a block.
pub(crate) const PX_MAX: usize = 64;

/// One run of consecutive output pixels of a block within one output row.
#[derive(Clone, Copy, Default)]
pub(crate) struct Seg {
    /// First lane (pixel of the block).
    l0: usize,
    /// Pixels in the run.
    len: usize,
    /// Output row.
    oy: usize,
    /// Output column of lane `l0`.
    ox: usize,
}

/// The runs of pixels `q0 .. q0 + cnt` (`cnt <= PX_MAX`); returns how many.
fn segments(g: &Conv2dGeom, q0: usize, cnt: usize, segs: &mut [Seg; PX_MAX]) -> usize {
    let ow = g.out_w();
    let (mut q, mut ns) = (q0, 0);
    while q < q0 + cnt {
        let (oy, ox) = (q / ow, q % ow);
        let len = (ow - ox).min(q0 + cnt - q);
        segs[ns] = Seg {
            l0: q - q0,
            len,
            oy,
            ox,
        };
        ns += 1;
        q += len;
    }
    ns
}

/// Activations of tap `(c, ky, kx)` for the block's pixels into `t` (lane
/// = pixel of the block): every lane of `segs`, zero where the tap falls
/// in the padding. Lanes past the segments are left as they are.
fn gather(
    g: &Conv2dGeom,
    x: &[i8],
    segs: &[Seg],
    c: usize,
    ky: usize,
    kx: usize,
    t: &mut [i8; PX_MAX],
) {
    let (h, w) = (g.h as isize, g.w as isize);
    let (sy, sx) = (g.stride[0] as isize, g.stride[1] as isize);
    let plane = c * g.h * g.w;
    for s in segs {
        let run = &mut t[s.l0..s.l0 + s.len];
        let iy = (s.oy as isize) * sy + (ky * g.dilation[0]) as isize - g.pads[0] as isize;
        if iy < 0 || iy >= h {
            zero_run(run);
            continue;
        }
        // Input column of lane l0; lane l0 + i reads ix0 + i * sx.
        let ix0 = (s.ox as isize) * sx + (kx * g.dilation[1]) as isize - g.pads[1] as isize;
        // Lanes whose column is inside the row: i in [lo, hi).
        let (lo, hi) = if sx == 1 {
            ((-ix0).max(0), w - ix0)
        } else {
            (
                if ix0 >= 0 { 0 } else { (-ix0 + sx - 1) / sx },
                if ix0 >= w { 0 } else { (w - ix0 + sx - 1) / sx },
            )
        };
        let (a, b) = (lo.min(s.len as isize), hi.min(s.len as isize));
        if a >= b {
            zero_run(run);
            continue;
        }
        let (a, b) = (a as usize, b as usize);
        zero_run(&mut run[..a]);
        zero_run(&mut run[b..]);
        // In bounds: 0 <= ix0 + i * sx < w for i in [a, b).
        let src = plane + iy as usize * g.w + (ix0 + a as isize * sx) as usize;
        let dst = &mut run[a..b];
        if sx == 1 {
            copy_run(dst, &x[src..src + (b - a)]);
        } else {
            for (i, d) in dst.iter_mut().enumerate() {
                *d = x[src + i * sx as usize];
            }
        }
    }
}

/// `dst.copy_from_slice(src)` for runs of at most [`PX_MAX`] bytes: at
/// most two overlapping fixed-size moves, where a variable-length copy is
/// a call to `memcpy` (a tenth of the AVX-VNNI GEMM's time on ResNet-18).
#[inline(always)]
fn copy_run(dst: &mut [i8], src: &[i8]) {
    let n = src.len();
    debug_assert!(n == dst.len() && n <= PX_MAX);
    match n {
        32.. => {
            mv::<32>(dst, src, 0);
            mv::<32>(dst, src, n - 32);
        }
        16..=31 => {
            mv::<16>(dst, src, 0);
            mv::<16>(dst, src, n - 16);
        }
        8..=15 => {
            mv::<8>(dst, src, 0);
            mv::<8>(dst, src, n - 8);
        }
        4..=7 => {
            mv::<4>(dst, src, 0);
            mv::<4>(dst, src, n - 4);
        }
        _ => {
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = v;
            }
        }
    }
}

/// `dst[at..at + N] = src[at..at + N]`, one fixed-size move.
#[inline(always)]
fn mv<const N: usize>(dst: &mut [i8], src: &[i8], at: usize) {
    let v: [i8; N] = src[at..at + N].try_into().unwrap();
    dst[at..at + N].copy_from_slice(&v);
}

/// Zero a run of at most [`PX_MAX`] bytes (padding lanes: usually none or
/// one), without a call to `memset`.
#[inline(always)]
fn zero_run(dst: &mut [i8]) {
    for d in dst.iter_mut() {
        *d = 0;
    }
}

/// Build the panel of batch rows `j0 .. j0 + cnt` of `x` (`[m][k]`, a
/// linear layer's input; `cnt <= PX_MAX`): the layout of the conv panel
/// with batch rows for pixels, each step one 4-byte word of a row (zero
/// past `k` and past `cnt` rows up to the next 16), every byte XORed
/// with `flip` (`0x80` makes the unsigned `x + 128` of the x86 kernels).
///
/// # Safety
/// `panel` valid for writes of `16 * cnt.div_ceil(16) * padded_k(k)`
/// bytes; `x.len() >= (j0 + cnt) * k`.
pub(crate) unsafe fn build_rows_panel(
    x: &[i8],
    k: usize,
    j0: usize,
    cnt: usize,
    flip: u8,
    panel: *mut i8,
) {
    let steps = padded_k(k) / 4;
    let full = k / 4;
    for p in 0..16 * cnt.div_ceil(16) {
        let (sb, lane) = (p / SUB, p % SUB);
        let at = |kb: usize| ((sb * steps + kb) * SUB + lane) * 4;
        let put = |kb: usize, wd: [i8; 4]| {
            // SAFETY: sub-block sb < 2 cnt.div_ceil(16), step kb < steps,
            // lane < 8: within 16 * cnt.div_ceil(16) * kp bytes.
            unsafe { panel.add(at(kb)).cast::<[i8; 4]>().write_unaligned(wd) }
        };
        if p >= cnt {
            for kb in 0..steps {
                put(kb, [flip as i8; 4]);
            }
            continue;
        }
        let row = &x[(j0 + p) * k..][..k];
        for (kb, wd) in row.chunks_exact(4).enumerate() {
            put(kb, [wd[0], wd[1], wd[2], wd[3]].map(|v| v ^ flip as i8));
        }
        if steps > full {
            // The last, partial step: k % 4 weights, the rest padding.
            let mut wd = [0i8; 4];
            wd[..k - 4 * full].copy_from_slice(&row[4 * full..]);
            put(full, wd.map(|v| v ^ flip as i8));
        }
    }
}

/// Pixels per block of a panel of `kp` weights per pixel in `panel_bytes`:
/// a multiple of 16 (two sub-blocks), 16 ..= [`PX_MAX`].
pub(crate) const fn block_pixels(panel_bytes: usize, kp: usize) -> usize {
    let px = panel_bytes / kp / 16 * 16;
    if px < 16 {
        16
    } else if px > PX_MAX {
        PX_MAX
    } else {
        px
    }
}

/// The blocks of a conv layer's pixel-lane GEMM over `n` rows (output
/// channels `oc0 ..`): per group, its rows `r .. r_end`, and per block of
/// up to `px` output pixels from `q0`, `f(grp, r, r_end, q0, segs)` with
/// the block's runs of pixels within output rows (`cnt` is the sum of
/// their lengths).
pub(crate) fn for_each_block(
    g: &Conv2dGeom,
    n: usize,
    oc0: usize,
    px: usize,
    mut f: impl FnMut(usize, usize, usize, usize, usize, &[Seg]),
) {
    let (plane, cog) = (g.out_plane(), g.c_out_g());
    let mut segs = [Seg::default(); PX_MAX];
    let mut r = 0;
    while r < n {
        let grp = (oc0 + r) / cog;
        let r_end = n.min((grp + 1) * cog - oc0);
        let mut q0 = 0;
        while q0 < plane {
            let cnt = (plane - q0).min(px);
            let ns = segments(g, q0, cnt, &mut segs);
            f(grp, r, r_end, q0, cnt, &segs[..ns]);
            q0 += cnt;
        }
        r = r_end;
    }
}

/// Most taps of one input channel (`kh * kw`) that [`TapRuns`] tabulates.
const MAX_TAPS: usize = 49;
/// Most runs of a block's pixels within output rows that [`TapRuns`]
/// tabulates.
const MAX_SEGS: usize = 12;

/// One in-bounds copy of a tap: lanes `dst .. dst + len` of the block
/// read `len` consecutive activations from offset `src` of a channel's
/// plane.
#[derive(Clone, Copy, Default)]
struct Run {
    dst: u8,
    len: u8,
    src: u32,
}

/// The copies of every tap of a layer of column stride 1 or 2 for one block, worked
/// out once per block: they are the same for every input channel, which
/// [`gather`] would redo per channel (bounds, padding, offsets).
pub(crate) struct TapRuns {
    runs: [[Run; MAX_SEGS]; MAX_TAPS],
    n: [u8; MAX_TAPS],
    plane: usize,
    /// Column stride, 1 or 2.
    sx: usize,
}

impl TapRuns {
    /// The runs of the block whose pixel runs are `segs`, or `None` where
    /// the table does not apply (a column stride above 2, more than
    /// [`MAX_TAPS`] taps or [`MAX_SEGS`] runs).
    pub(crate) fn new(g: &Conv2dGeom, segs: &[Seg]) -> Option<TapRuns> {
        if g.stride[1] > 2 || g.kh * g.kw > MAX_TAPS || segs.len() > MAX_SEGS {
            return None;
        }
        let mut tab = TapRuns {
            runs: [[Run::default(); MAX_SEGS]; MAX_TAPS],
            n: [0; MAX_TAPS],
            plane: g.h * g.w,
            sx: g.stride[1],
        };
        let (h, w) = (g.h as isize, g.w as isize);
        let sx = g.stride[1] as isize;
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let tap = ky * g.kw + kx;
                for s in segs {
                    let iy =
                        (s.oy * g.stride[0] + ky * g.dilation[0]) as isize - g.pads[0] as isize;
                    // Lane l0 + i reads column ix0 + i * sx; those inside
                    // the row are i in [a, b).
                    let ix0 =
                        (s.ox * g.stride[1] + kx * g.dilation[1]) as isize - g.pads[1] as isize;
                    let a = if ix0 >= 0 { 0 } else { (-ix0 + sx - 1) / sx };
                    let b = if ix0 >= w { 0 } else { (w - ix0 + sx - 1) / sx };
                    let (a, b) = (a.min(s.len as isize), b.min(s.len as isize));
                    if iy < 0 || iy >= h || a >= b {
                        continue;
                    }
                    let run = &mut tab.runs[tap][tab.n[tap] as usize];
                    *run = Run {
                        dst: (s.l0 + a as usize) as u8,
                        len: (b - a) as u8,
                        src: (iy * w + ix0 + a * sx) as u32,
                    };
                    tab.n[tap] += 1;
                }
            }
        }
        Some(tab)
    }

    /// [`gather`] of tap `tap` (`ky * kw + kx`) of channel `c` into `t`:
    /// every lane of the block, and the lanes past it, zero where the tap
    /// falls in the padding.
    #[inline(always)]
    fn gather(&self, x: &[i8], c: usize, tap: usize, t: &mut [i8; PX_MAX]) {
        *t = [0; PX_MAX];
        let base = &x[c * self.plane..(c + 1) * self.plane];
        for r in &self.runs[tap][..self.n[tap] as usize] {
            let (d, n, s) = (r.dst as usize, r.len as usize, r.src as usize);
            if self.sx == 1 {
                copy_run(&mut t[d..d + n], &base[s..s + n]);
            } else {
                let src = &base[s..s + 2 * n - 1];
                for (i, v) in t[d..d + n].iter_mut().enumerate() {
                    *v = src[2 * i];
                }
            }
        }
    }
}

/// The taps of one block's panel in weight order, `(ic * kh + ky) * kw +
/// kx`, gathered four at a time: one step of the panel per call.
pub(crate) struct StepTaps<'a> {
    g: &'a Conv2dGeom,
    x: &'a [i8],
    segs: &'a [Seg],
    tab: Option<TapRuns>,
    c_base: usize,
    /// Lanes of a step: the block's pixels rounded up to 16.
    lanes: usize,
    ic: usize,
    ky: usize,
    kx: usize,
}

impl<'a> StepTaps<'a> {
    /// The taps of group `grp` for the block of `cnt` pixels whose runs
    /// are `segs`.
    pub(crate) fn new(
        g: &'a Conv2dGeom,
        x: &'a [i8],
        grp: usize,
        segs: &'a [Seg],
        cnt: usize,
    ) -> Self {
        StepTaps {
            g,
            x,
            segs,
            tab: TapRuns::new(g, segs),
            c_base: grp * g.c_in_g(),
            lanes: 16 * cnt.div_ceil(16),
            ic: 0,
            ky: 0,
            kx: 0,
        }
    }

    /// The next step's four taps into `t` (lane = pixel of the block):
    /// zero where a tap falls in the padding, past `k` and, if `t` was
    /// zero before the first call, past the block's pixels.
    pub(crate) fn next(&mut self, t: &mut [[i8; PX_MAX]; 4]) {
        let (g, cig) = (self.g, self.g.c_in_g());
        for tv in t {
            if self.ic >= cig {
                tv[..self.lanes].fill(0);
                continue;
            }
            let c = self.c_base + self.ic;
            match &self.tab {
                Some(tab) => tab.gather(self.x, c, self.ky * g.kw + self.kx, tv),
                None => gather(g, self.x, self.segs, c, self.ky, self.kx, tv),
            }
            self.kx += 1;
            if self.kx == g.kw {
                self.kx = 0;
                self.ky += 1;
                if self.ky == g.kh {
                    self.ky = 0;
                    self.ic += 1;
                }
            }
        }
    }
}

/// Store `n <= N` outputs `y[..n]` of one row at `out[at..]`: a whole
/// vector's as one fixed-size move, not a call to `memcpy`.
#[inline(always)]
pub(crate) fn put_outputs<const N: usize>(out: &mut [i8], at: usize, y: &[i8; N], n: usize) {
    let dst = &mut out[at..];
    if n == N {
        dst[..N].copy_from_slice(y);
    } else {
        dst[..n].copy_from_slice(&y[..n]);
    }
}
