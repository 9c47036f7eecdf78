//! Portable pieces of the panels of the pixel-lane int8 GEMMs that share
//! one layout, `neondot/gemm-dot` (`crate::aarch64::gemm`) and
//! `avxvnni/gemm-dot` (`crate::x86_64::gemm_vnni`): for a block of up to
//! [`PX_MAX`] output pixels, sub-blocks of [`SUB`] pixels, each step of
//! four weights one 32-byte vector (`[pixels / SUB][k / 4][SUB][4]`
//! bytes). The runs of a block's pixels within output rows, the gather of
//! one tap for them, and the panel of a linear layer's batch rows; the
//! per-ISA builders interleave the gathered taps.

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
    pub l0: usize,
    /// Pixels in the run.
    pub len: usize,
    /// Output row.
    pub oy: usize,
    /// Output column of lane `l0`.
    pub ox: usize,
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
/// = pixel of the block); lanes of padded taps are left as they are (the
/// caller zeroes `t`).
pub(crate) fn gather(
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
        let iy = (s.oy as isize) * sy + (ky * g.dilation[0]) as isize - g.pads[0] as isize;
        if iy < 0 || iy >= h {
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
        let (a, b) = (lo, hi.min(s.len as isize));
        if a >= b {
            continue;
        }
        let (a, b) = (a as usize, b as usize);
        // In bounds: 0 <= ix0 + i * sx < w for i in [a, b).
        let src = plane + iy as usize * g.w + (ix0 + a as isize * sx) as usize;
        let dst = &mut t[s.l0 + a..s.l0 + b];
        if sx == 1 {
            dst.copy_from_slice(&x[src..src + (b - a)]);
        } else {
            for (i, d) in dst.iter_mut().enumerate() {
                *d = x[src + i * sx as usize];
            }
        }
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
