//! `avx512/gemm-dot`: the pixel-lane int8 GEMM on decoded rows
//! ([`crate::gemm`]), with `vpdpbusd` (AVX-512 VNNI).
//!
//! Output pixels run along the lanes, as ONNX Runtime's MLAS and XNNPACK
//! do for their int8 GEMMs, so no horizontal sum is ever needed and the
//! output stores straight into the channel-major plane:
//!
//! * **Panel.** For a block of up to 64 consecutive output pixels, the
//!   im2col patches are laid out `[k / 4][pixels][4]` as unsigned bytes
//!   `x ^ 0x80` (padded taps are `x = 0`, i.e. 0x80). Each weight tap is one
//!   masked byte load per run of pixels within an output row (a shifted
//!   window of the input row; stride 2 adds one `vpermt2b`), and four taps
//!   interleave into pixel-major words with four `vpermt2b`/`vpermt2w`.
//!   The panel is built once per pixel block and read by every output
//!   channel of the call. Blocks whose taps are one permute of a small
//!   plane or window take a builder that tabulates each kernel tap once
//!   per block (`build_panel_perm`).
//! * **Microkernel.** `MR` rows by `NV` vectors of 16 pixels (6 x 4, 8 x 3,
//!   12 x 2 or 12 x 1) in 24 or fewer `zmm` accumulators; per step of four
//!   weights, `NV` panel loads, `MR` broadcast words of weights, `MR * NV`
//!   `vpdpbusd`, each 64 MACs.
//! * **Epilogue.** Per row: the offset correction `-128 * sum(w)` (where
//!   the sums start), a halved row's doubling, the row's fixes (one
//!   `vpdpbusd` each per vector; see [`crate::gemm`]), and requantization
//!   of the pixels present, stored as one 64-byte move per full block.
//! * **Tail.** Up to `TAIL_MAX` (8) pixels past a block's whole vectors (a
//!   7x7 plane is 3 vectors and 1 pixel) do not get a vector of their
//!   own, which would cost as much as 16 pixels: their patches are copied
//!   out of the panel and each row meets them GEMV-style, 16 steps per
//!   `vpdpbusd` and a horizontal sum (`tail`). ResNet-18's 7x7 layers
//!   went from 870 to 750 us (b = 4, one thread). A single pixel past one
//!   to three whole vectors (a 7x7 plane) is summed in the same pass over
//!   the weights as the vectors (`run_rows_tail`): 593 -> 567 us.
//!
//! The panel (at most 288 KiB, `k` up to [`crate::gemm::MAX_K`]) is on the
//! stack: the kernel crate never allocates. Fewer pixels per block (down to
//! 16) keep large-`k` panels within it. Stride-2 layers whose input fits
//! 192 KiB read it through a phase-split copy on the stack (`Phases`),
//! in a frame of its own.

use core::arch::x86_64::*;
use core::mem::MaybeUninit;

use crate::dispatch::Isa;
use crate::gemm::{
    check_conv, check_linear, direct_pitch, direct_reach, padded_k, taps_order, DecodedRows, Order,
    DIRECT_BYTES, MAX_K,
};
use crate::{Conv2dGeom, Requant};

/// Bytes of the stack panel: `MAX_K` weights of one 16-pixel vector.
pub(super) const PANEL_BYTES: usize = padded_k(MAX_K) * 16;

/// The stack panel of the pixel-lane GEMMs.
#[repr(C, align(64))]
pub(super) struct Panel(pub(super) [u8; PANEL_BYTES]);

/// A 64-byte aligned stack buffer of `N` bytes: the direct kernel's band.
#[repr(C, align(64))]
struct Buf<const N: usize>([u8; N]);

/// Band bytes and steps of the small instance of [`direct`]. A stack
/// frame is probed page by page on entry, so the 288 KiB one cost every
/// call 72 page touches, and its 18 KiB step table a memset: together
/// 3-4% of ResNet-20, whose layers take 13-21 us. Its 3x3 layers need
/// at most 19 KiB (16 channels on 34 x 34) and 144 steps.
const SMALL_BAND: usize = 32 * 1024;
const SMALL_STEPS: usize = 1024;

/// One run of consecutive output pixels of a block within one output row.
#[derive(Clone, Copy, Default)]
struct Seg {
    /// First lane.
    l0: u8,
    /// One past the last lane.
    l1: u8,
    /// Output row.
    oy: u32,
    /// Output column of lane `l0`.
    ox: u32,
}

/// Lanes `0 .. n` (`n <= 64`) as a byte mask.
#[inline(always)]
fn lanes_upto(n: usize) -> u64 {
    if n == 0 {
        0
    } else {
        u64::MAX >> (64 - n)
    }
}

/// Lanes `a .. b` (`a < b <= 64`) as a byte mask.
#[inline(always)]
fn lanes(a: usize, b: usize) -> u64 {
    (u64::MAX >> (64 - (b - a))) << a
}

/// `vpermt2b` indices: lane `l` takes byte `2l` of the 128-byte pair.
const EVEN: [u8; 64] = {
    let mut t = [0u8; 64];
    let mut l = 0;
    while l < 64 {
        t[l] = (2 * l) as u8;
        l += 1;
    }
    t
};

/// `vpermt2b` indices interleaving bytes of two rows: pixels `32h .. 32h + 32`.
const fn pair_bytes(h: usize) -> [u8; 64] {
    let mut t = [0u8; 64];
    let mut l = 0;
    while l < 32 {
        t[2 * l] = (32 * h + l) as u8;
        t[2 * l + 1] = (64 + 32 * h + l) as u8;
        l += 1;
    }
    t
}

/// `vpermt2w` indices interleaving words of two vectors: pixels `16h .. 16h + 16`.
const fn pair_words(h: usize) -> [u16; 32] {
    let mut t = [0u16; 32];
    let mut l = 0;
    while l < 16 {
        t[2 * l] = (16 * h + l) as u16;
        t[2 * l + 1] = (32 + 16 * h + l) as u16;
        l += 1;
    }
    t
}

const BYTES_LO: [u8; 64] = pair_bytes(0);
const BYTES_HI: [u8; 64] = pair_bytes(1);
const WORDS_LO: [u16; 32] = pair_words(0);
const WORDS_HI: [u16; 32] = pair_words(1);

/// Largest kernel height and width whose taps a [`Block`] tabulates;
/// larger kernels compute each tap's lanes when they read it (same code).
const TAB: usize = 16;

/// Where one run of a block reads for one kernel column: the lanes whose
/// input column is inside the row (`m`; for stride 2 also the bytes of the
/// two 64-byte loads, `mlo` and `mhi`), and `off`, the column lane 0 would
/// read: lane `l` reads column `off + l * stride`.
#[derive(Clone, Copy, Default)]
pub(super) struct Col {
    pub(super) m: u64,
    mlo: u64,
    mhi: u64,
    pub(super) off: isize,
}

impl Col {
    fn new(g: &Conv2dGeom, s: &Seg, kx: usize) -> Col {
        let (w, sx) = (g.w as isize, g.stride[1] as isize);
        let (l0, l1) = (s.l0 as isize, s.l1 as isize);
        // Input column of lane l0; lane l reads ix0 + (l - l0) * sx.
        let ix0 = s.ox as isize * sx + (kx * g.dilation[1]) as isize - g.pads[1] as isize;
        // Lanes whose column is inside the row: l - l0 in [lo, hi).
        let lo = if ix0 >= 0 { 0 } else { (-ix0 + sx - 1) / sx };
        let hi = if ix0 >= w { 0 } else { (w - ix0 + sx - 1) / sx };
        let (a, b) = (l0 + lo, l1.min(l0 + hi));
        let off = ix0 - sx * l0;
        if a >= b {
            return Col {
                off,
                ..Col::default()
            };
        }
        let m = lanes(a as usize, b as usize);
        // Stride 2: lane l takes byte 2l of the 128 bytes at column `off`;
        // bytes 2a ..= 2(b - 1) are inside the row.
        let (j0, j1) = (2 * a as usize, 2 * b as usize - 1);
        let mlo = if j0 < 64 { lanes(j0, j1.min(64)) } else { 0 };
        let mhi = if j1 > 64 {
            lanes(j0.max(64) - 64, j1 - 64)
        } else {
            0
        };
        Col { m, mlo, mhi, off }
    }
}

/// Offset `iy * w` of the input row a run reads for kernel row `ky`, or
/// -1 when that row is padding.
fn row_of(g: &Conv2dGeom, s: &Seg, ky: usize) -> isize {
    let iy =
        s.oy as isize * g.stride[0] as isize + (ky * g.dilation[0]) as isize - g.pads[0] as isize;
    if iy < 0 || iy >= g.h as isize {
        -1
    } else {
        iy * g.w as isize
    }
}

/// How a block's taps are read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Perm {
    /// A masked load per run of the block's lanes within an output row.
    No,
    /// One `vpermb` of the whole input plane (at most 64 bytes).
    Plane,
    /// One `vpermi2b` of the input rows the block's output rows span at
    /// one kernel row (at most 128 bytes; ResNet-18's 14x14 layers), from
    /// the first of them inside the image.
    Window,
}

/// A block of output pixels: its runs within output rows and, for kernels
/// up to [`TAB`] wide and high, each run's [`row_of`] and [`Col`] per
/// kernel row and column, computed once per block instead of once per
/// tap and channel.
pub(super) struct Block {
    segs: [Seg; 64],
    pub(super) ns: usize,
    cnt: usize,
    tab: bool,
    rows: [[isize; TAB]; 64],
    cols: [[Col; TAB]; 64],
    /// An input channel plane fits one vector (`h * w <= 64`).
    small: bool,
    /// How this block's taps are read: with a permute (kernels up to
    /// [`TAB`], blocks of 3 or more runs), a tap's lanes are `base +
    /// off(ky, kx)` of the plane or window under the lanes of `rowm[ky]
    /// & colm[kx]`, instead of a masked load per run (8 runs a tap on an
    /// 8x8 plane, where building the panel took 40% of the layer). Below
    /// 3 runs the loads are as cheap: blocks within one output row of
    /// MobileNetV2's 112-wide 1x1 layers (one load a tap) ran 20-40%
    /// slower with the window.
    perm: Perm,
    /// With [`Perm::Window`], the input row of the block's first output
    /// row at kernel row 0 (may lie in the padding); else 0.
    wrow0: isize,
    /// Plane index of each lane's tap (0, 0) (from the start of row
    /// `wrow0` with a `window`), wrapping: only its low six (seven) bits
    /// matter where the lane is inside the plane.
    base: [i8; 64],
    rowm: [u64; TAB],
    colm: [u64; TAB],
}

impl Block {
    fn new(g: &Conv2dGeom) -> Block {
        let tab = g.kh <= TAB && g.kw <= TAB;
        Block {
            segs: [Seg::default(); 64],
            ns: 0,
            cnt: 0,
            tab,
            rows: [[-1; TAB]; 64],
            cols: [[Col::default(); TAB]; 64],
            small: tab && g.h * g.w <= 64,
            perm: Perm::No,
            wrow0: 0,
            base: [0; 64],
            rowm: [0; TAB],
            colm: [0; TAB],
        }
    }

    /// The lanes' plane indices and tap masks of a `small` or `window`
    /// block (`wrow0` set for the latter, 0 for the former).
    fn set_lanes(&mut self, g: &Conv2dGeom, q0: usize) {
        let ow = g.out_w();
        let (h, w) = (g.h as isize, g.w as isize);
        self.rowm = [0; TAB];
        self.colm = [0; TAB];
        for l in 0..self.cnt {
            let (oy, ox) = ((q0 + l) / ow, (q0 + l) % ow);
            let iy0 = (oy * g.stride[0]) as isize - g.pads[0] as isize;
            let ix0 = (ox * g.stride[1]) as isize - g.pads[1] as isize;
            self.base[l] = ((iy0 - self.wrow0) * w + ix0) as i8;
            for ky in 0..g.kh {
                let iy = iy0 + (ky * g.dilation[0]) as isize;
                self.rowm[ky] |= u64::from((0..h).contains(&iy)) << l;
            }
            for kx in 0..g.kw {
                let ix = ix0 + (kx * g.dilation[1]) as isize;
                self.colm[kx] |= u64::from((0..w).contains(&ix)) << l;
            }
        }
    }

    /// Take pixels `q0 .. q0 + cnt` (`cnt <= 64`).
    fn set(&mut self, g: &Conv2dGeom, q0: usize, cnt: usize) {
        let ow = g.out_w();
        let (mut q, mut ns) = (q0, 0);
        while q < q0 + cnt {
            let (oy, ox) = (q / ow, q % ow);
            let len = (ow - ox).min(q0 + cnt - q);
            let l0 = q - q0;
            let s = Seg {
                l0: l0 as u8,
                l1: (l0 + len) as u8,
                oy: oy as u32,
                ox: ox as u32,
            };
            if self.tab {
                for ky in 0..g.kh {
                    self.rows[ns][ky] = row_of(g, &s, ky);
                }
                for kx in 0..g.kw {
                    self.cols[ns][kx] = Col::new(g, &s, kx);
                }
            }
            self.segs[ns] = s;
            ns += 1;
            q += len;
        }
        self.ns = ns;
        self.cnt = cnt;
        let (oy0, oy1) = (q0 / g.out_w(), (q0 + cnt - 1) / g.out_w());
        let span = ((oy1 - oy0) * g.stride[0] + 1) * g.w;
        self.perm = match () {
            _ if ns < 3 || !self.tab => Perm::No,
            _ if self.small => Perm::Plane,
            _ if span <= 128 => Perm::Window,
            _ => Perm::No,
        };
        self.wrow0 = match self.perm {
            Perm::Window => (oy0 * g.stride[0]) as isize - g.pads[0] as isize,
            _ => 0,
        };
        if self.perm != Perm::No {
            self.set_lanes(g, q0);
        }
    }

    /// Pixels in the block.
    pub(super) fn pixels(&self) -> usize {
        self.cnt
    }

    /// Run `s`'s row offset and [`Col`] for kernel tap `(ky, kx)`.
    #[inline(always)]
    pub(super) fn at(&self, g: &Conv2dGeom, s: usize, ky: usize, kx: usize) -> (isize, Col) {
        if self.tab {
            (self.rows[s][ky], self.cols[s][kx])
        } else {
            let seg = &self.segs[s];
            (row_of(g, seg, ky), Col::new(g, seg, kx))
        }
    }
}

/// The body of [`tap`], spelled out where it is used: `tap` is
/// `#[inline]`, and whether LLVM inlined it into the panel builder moved
/// with unrelated changes to the kernels around it (out of line, the stem
/// ran 20% slower); `#[inline(always)]` is not allowed with target
/// features, and without them it compiled to slower code (3% on the
/// stem). A macro expands in the caller, with the caller's features.
macro_rules! tap_lanes {
    ($g:expr, $x:expr, $blk:expr, $c:expr, $ky:expr, $kx:expr) => {{
        let (g, x, blk, c, ky, kx): (&Conv2dGeom, &[i8], &Block, usize, usize, usize) =
            ($g, $x, $blk, $c, $ky, $kx);
        let plane = (c * g.h * g.w) as isize;
        let mut v = _mm512_setzero_si512();
        if blk.perm == Perm::Plane {
            let off = (ky * g.dilation[0] * g.w + kx * g.dilation[1]) as i8;
            // SAFETY: `base` is 64 bytes; the plane's h * w <= 64 bytes
            // are inside x (c < c_in), masked-off bytes not accessed.
            let (base, src) = unsafe {
                (
                    _mm512_loadu_si512(blk.base.as_ptr().cast()),
                    _mm512_maskz_loadu_epi8(lanes(0, g.h * g.w), x.as_ptr().wrapping_offset(plane)),
                )
            };
            let idx = _mm512_add_epi8(base, _mm512_set1_epi8(off));
            v = _mm512_maskz_permutexvar_epi8(blk.rowm[ky] & blk.colm[kx], idx, src);
        } else if blk.perm == Perm::Window {
            // From the first of the tap's rows inside the image; the
            // window's bytes past the plane are not read.
            let row = blk.wrow0 + (ky * g.dilation[0]) as isize;
            let first = row.max(0);
            let off = ((row - first) * g.w as isize + (kx * g.dilation[1]) as isize) as i8;
            let left = (g.h as isize - first).max(0) as usize * g.w;
            let p = x.as_ptr().wrapping_offset(plane + first * g.w as isize);
            // SAFETY: `base` is 64 bytes; the enabled bytes are the
            // first `left` bytes of channel c from row `first`, inside x.
            let (base, lo, hi) = unsafe {
                (
                    _mm512_loadu_si512(blk.base.as_ptr().cast()),
                    _mm512_maskz_loadu_epi8(lanes_upto(left.min(64)), p),
                    _mm512_maskz_loadu_epi8(
                        lanes_upto(left.saturating_sub(64).min(64)),
                        p.wrapping_add(64),
                    ),
                )
            };
            let idx = _mm512_add_epi8(base, _mm512_set1_epi8(off));
            let m = blk.rowm[ky] & blk.colm[kx];
            v = _mm512_maskz_permutex2var_epi8(m, lo, idx, hi);
        }
        for s in 0..if blk.perm == Perm::No { blk.ns } else { 0 } {
            let (ro, col) = blk.at(g, s, ky, kx);
            if ro < 0 || col.m == 0 {
                continue;
            }
            // Enabled lane l reads x[base + l * stride]: row iy inside the
            // image (ro >= 0) and a column inside the row (the lanes of m).
            let base = plane + ro + col.off;
            let p = x.as_ptr().wrapping_offset(base);
            match g.stride[1] {
                1 => {
                    // SAFETY: only the lanes of m are read, at in-bounds
                    // indices (above); masked-off bytes cannot fault.
                    v = unsafe { _mm512_mask_loadu_epi8(v, col.m, p) };
                }
                2 => {
                    // SAFETY: the enabled bytes (mlo, mhi) lie between the
                    // columns of the first and last lane of m, inside the row.
                    let (vlo, vhi) = unsafe {
                        (
                            _mm512_maskz_loadu_epi8(col.mlo, p),
                            _mm512_maskz_loadu_epi8(col.mhi, p.wrapping_add(64)),
                        )
                    };
                    // SAFETY: EVEN is 64 bytes.
                    let idx = unsafe { _mm512_loadu_si512(EVEN.as_ptr().cast()) };
                    v = _mm512_mask_mov_epi8(v, col.m, _mm512_permutex2var_epi8(vlo, idx, vhi));
                }
                sx => {
                    let mut t = [0i8; 64];
                    // SAFETY: `t` is 64 bytes.
                    unsafe { _mm512_storeu_si512(t.as_mut_ptr().cast(), v) };
                    let mut m = col.m;
                    while m != 0 {
                        let l = m.trailing_zeros() as usize;
                        t[l] = x[(base + (l * sx) as isize) as usize];
                        m &= m - 1;
                    }
                    // SAFETY: as above.
                    v = unsafe { _mm512_loadu_si512(t.as_ptr().cast()) };
                }
            }
        }
        v
    }};
}

/// The four vectors of pixel-major words of four taps `t` (64 lanes
/// each): vector `v` holds pixels `16 v .. 16 v + 16`, each the word of
/// its four taps' bytes. Interleaved with the index tables `[BYTES_LO,
/// BYTES_HI, WORDS_LO, WORDS_HI]` (as [`step_tables`] loads them). A
/// macro for the reason [`tap_lanes`] is one.
macro_rules! step_words {
    ($t:expr, $tabs:expr) => {{
        let (t, [blo, bhi, wlo, whi]): ([__m512i; 4], [__m512i; 4]) = ($t, $tabs);
        let (a_lo, b_lo) = (
            _mm512_permutex2var_epi8(t[0], blo, t[1]),
            _mm512_permutex2var_epi8(t[2], blo, t[3]),
        );
        let (a_hi, b_hi) = (
            _mm512_permutex2var_epi8(t[0], bhi, t[1]),
            _mm512_permutex2var_epi8(t[2], bhi, t[3]),
        );
        [
            _mm512_permutex2var_epi16(a_lo, wlo, b_lo),
            _mm512_permutex2var_epi16(a_lo, whi, b_lo),
            _mm512_permutex2var_epi16(a_hi, wlo, b_hi),
            _mm512_permutex2var_epi16(a_hi, whi, b_hi),
        ]
    }};
}

/// Step `dst` of a panel from its four taps `t`: the first `nv` vectors
/// of [`step_words!`].
///
/// Safety (the caller's): `dst` is 64-byte aligned and valid for writes of
/// `nv * 64` bytes.
macro_rules! put_step {
    ($t:expr, $tabs:expr, $nv:expr, $dst:expr) => {{
        let (y, nv, dst): ([__m512i; 4], usize, *mut u8) = (step_words!($t, $tabs), $nv, $dst);
        _mm512_store_si512(dst.cast(), y[0]);
        if nv > 1 {
            _mm512_store_si512(dst.add(64).cast(), y[1]);
        }
        if nv > 2 {
            _mm512_store_si512(dst.add(128).cast(), y[2]);
        }
        if nv > 3 {
            _mm512_store_si512(dst.add(192).cast(), y[3]);
        }
    }};
}

/// Activations (raw int8) of tap `(c, ky, kx)` for the block's pixels, in
/// their lanes; zero for padded taps and lanes past the block.
///
/// # Safety
/// AVX-512 F/BW/VBMI available; `c < g.c_in`, `x.len() == g.in_len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
#[inline]
pub(super) unsafe fn tap(
    g: &Conv2dGeom,
    x: &[i8],
    blk: &Block,
    c: usize,
    ky: usize,
    kx: usize,
) -> __m512i {
    tap_lanes!(g, x, blk, c, ky, kx)
}

/// Build the panel of group `grp` for `nv` vectors of the block `blk`:
/// `kp / 4` steps of `nv * 64` bytes at `panel`. With `ph`, `x` is the
/// phase split of the input ([`split_phases`]) and `blk` a block of its
/// geometry.
///
/// # Safety
/// AVX-512 F/BW/VBMI available; `panel` is valid for writes of
/// `kp / 4 * nv * 64` bytes; `x.len()` is `g.in_len()`, or with `ph`,
/// `ph.gv.in_len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn build_panel<const PH: bool>(
    g: &Conv2dGeom,
    ph: Option<&Phases>,
    x: &[i8],
    grp: usize,
    blk: &Block,
    nv: usize,
    panel: *mut u8,
) {
    let k = g.k();
    let kp = padded_k(k);
    let (kh, kw) = (g.kh, g.kw);
    // An instance per `PH`: the stem, without a split, ran 1% slower
    // with the test in the tap loop.
    let gx = match ph {
        Some(ph) if PH => &ph.gv,
        _ => g,
    };
    let c_base = grp * g.c_in_g();
    let flip = _mm512_set1_epi8(0x80u8 as i8);
    let tabs = step_tables();
    // Tap counters of weight index i = (ic * kh + ky) * kw + kx.
    let (mut ic, mut ky, mut kx) = (0, 0, 0);
    for kb in 0..kp / 4 {
        let mut t = [_mm512_setzero_si512(); 4];
        for tv in &mut t {
            if ic < g.c_in_g() {
                // Tap (ky, kx) of channel c reads phase (ky % 2, kx % 2)
                // of c at its tap (ky / 2, kx / 2).
                let (c, tky, tkx) = match ph {
                    Some(ph) if PH => (
                        ((c_base + ic) * ph.py + ky % 2) * ph.px + kx % 2,
                        ky / 2,
                        kx / 2,
                    ),
                    _ => (c_base + ic, ky, kx),
                };
                // SAFETY: c < gx.c_in; features forwarded.
                *tv = _mm512_xor_si512(tap_lanes!(gx, x, blk, c, tky, tkx), flip);
                kx += 1;
                if kx == kw {
                    kx = 0;
                    ky += 1;
                    if ky == kh {
                        ky = 0;
                        ic += 1;
                    }
                }
            }
        }
        let dst = panel.wrapping_add(kb * nv * 64);
        // SAFETY: step kb's nv * 64 bytes lie within the panel's
        // kp / 4 * nv * 64 bytes.
        unsafe { put_step!(t, tabs, nv, dst) };
    }
}

/// The index tables of [`put_step!`]: `[BYTES_LO, BYTES_HI, WORDS_LO,
/// WORDS_HI]`.
#[target_feature(enable = "avx512f")]
#[inline]
fn step_tables() -> [__m512i; 4] {
    // SAFETY (the four loads): the tables are 64 bytes each.
    unsafe {
        [
            _mm512_loadu_si512(BYTES_LO.as_ptr().cast()),
            _mm512_loadu_si512(BYTES_HI.as_ptr().cast()),
            _mm512_loadu_si512(WORDS_LO.as_ptr().cast()),
            _mm512_loadu_si512(WORDS_HI.as_ptr().cast()),
        ]
    }
}

/// Most taps per channel [`build_panel_perm`] takes (a 7x7 kernel): its
/// two tap tables take 4.6 KiB of stack.
const PERM_TAPS: usize = 49;

/// [`build_panel_perm`]'s modes: a [`Perm::Window`] block, a
/// [`Perm::Plane`] block, and a block of one run through a phase split
/// whose blocks keep within output rows ([`Phases::rows`]).
const WINDOW: u8 = 0;
const PLANE: u8 = 1;
const SEG: u8 = 2;

/// Where one kernel tap of every channel reads, in a block of
/// [`build_panel_perm`].
#[derive(Clone, Copy, Default)]
struct PermTap {
    /// Bytes from a channel's first (phase) plane to the plane or window
    /// the tap permutes.
    off: isize,
    /// Bytes of the first and of the second 64 of it inside the plane.
    mlo: u64,
    mhi: u64,
    /// Lanes whose tap is inside the image.
    m: u64,
}

/// [`build_panel`] for a kernel of at most [`PERM_TAPS`] taps and a block
/// of `MODE`: read with a permute of its plane ([`PLANE`]) or window
/// ([`WINDOW`]), or one run of a phase split ([`SEG`]). The lanes, masks
/// and window of each kernel tap are the same for every channel, so they
/// are tabulated once per block, and each step reads its four taps from
/// the tables. The generic builder recomputed them per tap and spent 27
/// cycles a tap on ResNet-18's 14x14 layers, a ninth of their time.
///
/// # Safety
/// As [`build_panel`]; `g.kh * g.kw <= PERM_TAPS`; `blk.perm` is
/// [`Perm::Plane`] for `PLANE` and [`Perm::Window`] for `WINDOW`; for
/// `SEG`, `blk` is one run (`ns == 1`) of a split `ph` with `rows`.
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn build_panel_perm<const MODE: u8>(
    g: &Conv2dGeom,
    ph: Option<&Phases>,
    x: &[i8],
    grp: usize,
    blk: &Block,
    nv: usize,
    panel: *mut u8,
) {
    let (gx, py, px) = match ph {
        Some(ph) => (&ph.gv, ph.py, ph.px),
        None => (g, 1, 1),
    };
    let taps = g.kh * g.kw;
    let pl = gx.h * gx.w;
    // Bytes of one input channel of x: its py * px phase planes.
    let chan = (pl * py * px) as isize;
    // Only the first `taps` entries are written and read: zeroing all of
    // them was a 4.6 KiB memset per block (1% of the stem).
    let mut tt = MaybeUninit::<[PermTap; PERM_TAPS]>::uninit();
    let mut idx = MaybeUninit::<[__m512i; PERM_TAPS]>::uninit();
    let (ttp, idxp) = (
        tt.as_mut_ptr().cast::<PermTap>(),
        idx.as_mut_ptr().cast::<__m512i>(),
    );
    // SAFETY: `base` is 64 bytes.
    let base = unsafe { _mm512_loadu_si512(blk.base.as_ptr().cast()) };
    for ky in 0..g.kh {
        for kx in 0..g.kw {
            let t = ky * g.kw + kx;
            // Through a split, tap (ky, kx) is tap (ky / 2, kx / 2) of
            // phase (ky % 2, kx % 2) (as in build_panel).
            let (pc, tky, tkx) = match ph {
                Some(_) => ((ky % 2) * px + kx % 2, ky / 2, kx / 2),
                None => (0, ky, kx),
            };
            let (dy, dx) = (tky * gx.dilation[0], tkx * gx.dilation[1]);
            let m = blk.rowm[tky] & blk.colm[tkx];
            let poff = (pc * pl) as isize;
            // As tap_lanes: the plane from its start, or the window from
            // the first of the tap's rows inside the image.
            let (e, off) = if MODE == SEG {
                // One run: lanes 0 .. cnt read consecutive bytes of a
                // phase plane, whose padding is in the plane.
                let s = &blk.segs[0];
                let e = PermTap {
                    off: poff + ((s.oy as usize + dy) * gx.w + s.ox as usize + dx) as isize,
                    mlo: lanes_upto(blk.cnt),
                    mhi: 0,
                    m: 0,
                };
                (e, 0)
            } else if MODE == PLANE {
                let e = PermTap {
                    off: poff,
                    mlo: lanes_upto(pl),
                    mhi: 0,
                    m,
                };
                (e, (dy * gx.w + dx) as i8)
            } else {
                let row = blk.wrow0 + dy as isize;
                let first = row.max(0);
                let left = (gx.h as isize - first).max(0) as usize * gx.w;
                let e = PermTap {
                    off: poff + first * gx.w as isize,
                    mlo: lanes_upto(left.min(64)),
                    mhi: lanes_upto(left.saturating_sub(64).min(64)),
                    m,
                };
                (e, ((row - first) * gx.w as isize + dx as isize) as i8)
            };
            // SAFETY: t < taps <= PERM_TAPS.
            unsafe {
                ttp.add(t).write(e);
                idxp.add(t)
                    .write(_mm512_add_epi8(base, _mm512_set1_epi8(off)));
            }
        }
    }
    let tabs = step_tables();
    let flip = _mm512_set1_epi8(0x80u8 as i8);
    let cig = g.c_in_g();
    let steps = padded_k(g.k()) / 4;
    let x0 = x.as_ptr().wrapping_offset((grp * cig) as isize * chan);
    // Channel and tap of weight index (ic * kh + ky) * kw + kx.
    let (mut ic, mut t) = (0, 0);
    for kb in 0..steps {
        let mut q = [_mm512_setzero_si512(); 4];
        for q in &mut q {
            if ic < cig {
                // SAFETY: entry t < taps was written above.
                let (e, ix) = unsafe { (&*ttp.add(t), idxp.add(t).read()) };
                let p = x0.wrapping_offset(ic as isize * chan + e.off);
                // SAFETY: channel grp * cig + ic of x (or its phase
                // planes); the enabled bytes are inside its plane (`mlo`,
                // `mhi` as in tap_lanes), masked-off bytes cannot fault.
                let v = unsafe {
                    if MODE == SEG {
                        _mm512_maskz_loadu_epi8(e.mlo, p)
                    } else if MODE == PLANE {
                        _mm512_maskz_permutexvar_epi8(e.m, ix, _mm512_maskz_loadu_epi8(e.mlo, p))
                    } else {
                        let lo = _mm512_maskz_loadu_epi8(e.mlo, p);
                        let hi = _mm512_maskz_loadu_epi8(e.mhi, p.wrapping_add(64));
                        _mm512_maskz_permutex2var_epi8(e.m, lo, ix, hi)
                    }
                };
                *q = _mm512_xor_si512(v, flip);
                t += 1;
                if t == taps {
                    t = 0;
                    ic += 1;
                }
            }
        }
        // SAFETY: step kb lies within the panel's steps.
        unsafe { put_step!(q, tabs, nv, panel.wrapping_add(kb * nv * 64)) };
    }
}

/// [`Requant::apply`] on 16 accumulators, for an offset below 2^62 (so `acc * mult + offset` cannot
/// overflow and the scalar rule's saturating add is a plain one, as in
/// [`Requant::apply_run`]): `vpmuldq` gives the exact 64-bit products of
/// the even and the odd lanes, then the same add, arithmetic shift and
/// clamp in 64-bit lanes. The epilogue was a tenth of a 3x3 layer's time
/// as a scalar loop.
///
/// # Safety
/// AVX-512 F/BW/VL available.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
pub(super) unsafe fn requant16(acc: __m512i, rq: &Requant) -> __m128i {
    // SAFETY: forwarded.
    _mm512_cvtepi32_epi8(unsafe { requant16_i32(acc, rq) })
}

/// [`requant16`] with the outputs left in their 32-bit lanes.
///
/// # Safety
/// As [`requant16`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
unsafe fn requant16_i32(acc: __m512i, rq: &Requant) -> __m512i {
    debug_assert!(rq.offset.unsigned_abs() < 1 << 62);
    let m = _mm512_set1_epi64(rq.mult as i64);
    let off = _mm512_set1_epi64(rq.offset);
    let sh = _mm_cvtsi64_si128(rq.shift as i64);
    let (lo, hi) = (
        _mm512_set1_epi64(rq.lo as i64),
        _mm512_set1_epi64(rq.hi as i64),
    );
    let one = |v: __m512i| {
        let p = _mm512_add_epi64(_mm512_mul_epi32(v, m), off);
        _mm512_min_epi64(_mm512_max_epi64(_mm512_sra_epi64(p, sh), lo), hi)
    };
    let even = one(acc);
    let odd = one(_mm512_srli_epi64::<32>(acc));
    _mm512_mask_blend_epi32(0xaaaa, even, _mm512_slli_epi64::<32>(odd))
}

/// `vpermt2d` indices putting the low dwords of the 64-bit lanes of `a`
/// (even outputs) and `b` (odd outputs) back in output order.
const INTERLEAVE_LOW: [u32; 16] = {
    let mut t = [0u32; 16];
    let mut j = 0;
    while j < 8 {
        t[2 * j] = 2 * j as u32;
        t[2 * j + 1] = 16 + 2 * j as u32;
        j += 1;
    }
    t
};

/// [`requant16`] for a requantizer with a [`Requant::window`] `(c0, c1)`:
/// the accumulators are clamped to the window in 32-bit lanes, and the
/// 64-bit results then need no clamp of their own (they are already in
/// `lo ..= hi`): 11 instructions per 16 outputs instead of 14. The
/// outputs stay in their 32-bit lanes ([`pack`] narrows them).
///
/// # Safety
/// AVX-512 F/BW/VL available; `(c0, c1)` is `rq.window()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
unsafe fn requant16_window(acc: __m512i, rq: &Requant, c0: i32, c1: i32) -> __m512i {
    let m = _mm512_set1_epi64(rq.mult as i64);
    let off = _mm512_set1_epi64(rq.offset);
    let sh = _mm_cvtsi64_si128(rq.shift as i64);
    let a = _mm512_min_epi32(
        _mm512_max_epi32(acc, _mm512_set1_epi32(c0)),
        _mm512_set1_epi32(c1),
    );
    let even = _mm512_sra_epi64(_mm512_add_epi64(_mm512_mul_epi32(a, m), off), sh);
    let a_odd = _mm512_srli_epi64::<32>(a);
    let odd = _mm512_sra_epi64(_mm512_add_epi64(_mm512_mul_epi32(a_odd, m), off), sh);
    // SAFETY: INTERLEAVE_LOW is 64 bytes.
    let idx = unsafe { _mm512_loadu_si512(INTERLEAVE_LOW.as_ptr().cast()) };
    _mm512_permutex2var_epi32(even, idx, odd)
}

/// Where each step's `NV` vectors of activations are: a panel built per
/// block ([`Strided`]) or, for tap-major rows, the channel-interleaved
/// input itself at a per-step offset ([`Table`]).
pub(super) trait Steps {
    /// Vector 0 of step `kb`; vector `v` follows at `+ 64 v`.
    fn at(&self, kb: usize) -> *const u8;
}

/// A panel: step `kb` at `base + kb * stride`.
pub(super) struct Strided {
    base: *const u8,
    stride: usize,
}

impl Steps for Strided {
    #[inline(always)]
    fn at(&self, kb: usize) -> *const u8 {
        self.base.wrapping_add(kb * self.stride)
    }
}

/// The direct kernel's steps: `base + offs[kb]`.
struct Table<'a> {
    base: *const u8,
    offs: &'a [u32],
}

impl Steps for Table<'_> {
    #[inline(always)]
    fn at(&self, kb: usize) -> *const u8 {
        // In bounds: kb < steps = offs.len() in every caller.
        self.base.wrapping_add(self.offs[kb] as usize)
    }
}

/// Where requantized rows go.
pub(super) trait Store {
    /// Store lanes `a .. b` (`a < b <= 64`) of `v` as row `r`'s.
    ///
    /// # Safety
    /// AVX-512 F/BW available; those lanes' destinations (per the
    /// implementation) are valid for writes.
    unsafe fn put(&self, r: usize, v: __m512i, a: usize, b: usize);
}

/// Where a call's requantized outputs go: row `r`, lane `l` (pixel `l` of
/// the block) at `base + r * rs + l * ls`. A conv block: `rs` is the
/// output plane and `ls` 1, so a row's lanes are one masked store; a
/// linear batch: `rs` is 1 and `ls` the outputs per batch row. (A closure
/// here compiled without the kernel's target features, so it could not
/// be inlined: a call, a `memset` and a `memcpy` per row and block, 2.3%
/// of ResNet-18.)
#[derive(Clone, Copy)]
pub(super) struct Sink {
    base: *mut i8,
    rs: usize,
    ls: usize,
}

impl Store for Sink {
    #[inline(always)]
    unsafe fn put(&self, r: usize, v: __m512i, a: usize, b: usize) {
        let p = self.base.wrapping_add(r * self.rs);
        if self.ls == 1 && b - a == 64 {
            // SAFETY: all 64 lanes are valid (the caller). A plain store:
            // the masked one is slower on Zen 4 (the stem, 37 steps a
            // row, ran 8% slower with it).
            unsafe { _mm512_storeu_si512(p.cast(), v) };
        } else if self.ls == 1 {
            // SAFETY: the enabled bytes are lanes a .. b, valid (the
            // caller); masked-off bytes are not accessed.
            unsafe { _mm512_mask_storeu_epi8(p.cast(), lanes(a, b), v) };
        } else {
            let mut y = [0i8; 64];
            // SAFETY: `y` is 64 bytes; lane l's destination is valid.
            unsafe {
                _mm512_storeu_si512(y.as_mut_ptr().cast(), v);
                for (l, &y) in y.iter().enumerate().take(b).skip(a) {
                    *p.wrapping_add(l * self.ls) = y;
                }
            }
        }
    }
}

/// Row `r`'s epilogue for its accumulators of vectors `v0 .. v0 + NV` of
/// a block, and with `TL` of vector `v0 + NV` in `t` (a 1-pixel tail,
/// whose fixes then share the loop over the row's fixes): the offset
/// correction, the doubling of a halved row, the row's fixes (per fix
/// one broadcast, then per vector a load of the fix's step and a
/// `vpdpbusd`) and requantization: each vector's 16 outputs.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI available; vectors `v0 .. v0 + NV` (`+ 1` with
/// `TL`) of every step of `d` are at `st.at(kb) + 64 v`, initialized.
/// (Always inlined, hence no target features of its own: out of line,
/// the microkernel kept its 24 accumulators in memory, a store per
/// `vpdpbusd`, and ran at half speed.)
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn finish<const NV: usize, const TL: bool>(
    d: &DecodedRows,
    r: usize,
    mut a: [__m512i; NV],
    t: __m512i,
    add_corr: bool,
    st: &impl Steps,
    v0: usize,
    rq: &Requant,
) -> ([__m512i; NV], __m512i) {
    // SAFETY (the intrinsics): the features are available (contract).
    unsafe {
        let mut t = [t];
        if add_corr {
            let c = _mm512_set1_epi32(d.corr(r));
            for a in a.iter_mut() {
                *a = _mm512_add_epi32(*a, c);
            }
            t[0] = _mm512_add_epi32(t[0], c);
        }
        // A halved row's sums doubled, before its fixes (+-1) go in; by a
        // shift of 0 or 1 rather than a branch, which rows in a tile would
        // take at random.
        let sh = _mm_cvtsi32_si128(d.shift(r) as i32);
        for a in a.iter_mut() {
            *a = _mm512_sll_epi32(*a, sh);
        }
        t[0] = _mm512_sll_epi32(t[0], sh);
        // The fixes go round-robin into `sets` groups of accumulators, so
        // that at least four `vpdpbusd` chains are in flight: with one
        // chain per vector (the 1-pixel tail of a 7x7 plane, NV = 1) each
        // fix waited for the previous one's latency, 5% of ResNet-18's
        // 7x7 layers.
        let fixes = d.fixes(r);
        let vt = v0 + NV;
        match NV {
            1 => {
                let mut b = [[_mm512_setzero_si512(); NV]; 3];
                let mut it = fixes.chunks_exact(4);
                for q in &mut it {
                    fix1(&mut a, &q[0], st, v0);
                    fix1(&mut b[0], &q[1], st, v0);
                    fix1(&mut b[1], &q[2], st, v0);
                    fix1(&mut b[2], &q[3], st, v0);
                    if TL {
                        for f in q {
                            fix1(&mut t, f, st, vt);
                        }
                    }
                }
                for f in it.remainder() {
                    fix1(&mut a, f, st, v0);
                    if TL {
                        fix1(&mut t, f, st, vt);
                    }
                }
                for b in &b {
                    a[0] = _mm512_add_epi32(a[0], b[0]);
                }
            }
            2 | 3 => {
                let mut b = [_mm512_setzero_si512(); NV];
                let mut it = fixes.chunks_exact(2);
                for q in &mut it {
                    fix1(&mut a, &q[0], st, v0);
                    fix1(&mut b, &q[1], st, v0);
                    if TL {
                        fix1(&mut t, &q[0], st, vt);
                        fix1(&mut t, &q[1], st, vt);
                    }
                }
                for f in it.remainder() {
                    fix1(&mut a, f, st, v0);
                    if TL {
                        fix1(&mut t, f, st, vt);
                    }
                }
                for v in 0..NV {
                    a[v] = _mm512_add_epi32(a[v], b[v]);
                }
            }
            _ => {
                for f in fixes {
                    fix1(&mut a, f, st, v0);
                    if TL {
                        fix1(&mut t, f, st, vt);
                    }
                }
            }
        }
        let mut q = [_mm512_setzero_si512(); NV];
        for v in 0..NV {
            q[v] = requant_any(a[v], rq);
        }
        let qt = if TL {
            requant_any(t[0], rq)
        } else {
            _mm512_setzero_si512()
        };
        (q, qt)
    }
}

/// [`Requant::apply`] on 16 accumulators, by the fastest rule that is
/// exact for `rq`, in their 32-bit lanes.
///
/// # Safety
/// AVX-512 F/BW/VL available.
#[inline(always)]
unsafe fn requant_any(a: __m512i, rq: &Requant) -> __m512i {
    // SAFETY (the intrinsics): the features are available (contract).
    unsafe {
        if let Some((c0, c1)) = rq.window() {
            requant16_window(a, rq, c0, c1)
        } else if rq.offset.unsigned_abs() < 1 << 62 {
            requant16_i32(a, rq)
        } else {
            let (mut tile, mut y) = ([0i32; 16], [0i8; 16]);
            // `tile` has 16 i32 lanes, `y` 16 bytes.
            _mm512_storeu_si512(tile.as_mut_ptr().cast(), a);
            rq.apply_run(&tile, &mut y);
            _mm512_cvtepi8_epi32(_mm_loadu_si128(y.as_ptr().cast()))
        }
    }
}

/// One fix of [`finish`]: per vector a load of the fix's step and a
/// `vpdpbusd`.
///
/// No closures or iterator adaptors around intrinsics in these kernels:
/// once a kernel grew past LLVM's inlining budget, a closure was left out
/// of line, and in it (no target features) every intrinsic became a call;
/// the direct kernel ran 3x slower.
///
/// # Safety
/// As [`finish`] for the fix's step.
#[inline(always)]
unsafe fn fix1<const NV: usize>(
    a: &mut [__m512i; NV],
    f: &crate::gemm::Fix,
    st: &impl Steps,
    v0: usize,
) {
    // SAFETY: f.kb < steps (checked by DecodedRows::new); the caller
    // vouches for the steps and the features.
    unsafe {
        let (p, w) = (st.at(f.kb as usize), _mm512_set1_epi32(f.word));
        for (v, a) in a.iter_mut().enumerate() {
            let x = _mm512_loadu_si512(p.add(64 * (v0 + v)).cast());
            *a = _mm512_dpbusd_epi32(*a, x, w);
        }
    }
}

/// `vpermd` indices that undo the lane-wise order of two rounds of packs
/// (see [`pack`]): output dword `4 v + l` is input dword `4 l + v`.
const UNPACK_DWORDS: [u32; 16] = [0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15];

/// Up to four vectors of 16 outputs (in `i8` range, in 32-bit lanes) as
/// one of 64 bytes, vector `v` in lanes `16 v ..` (missing ones zero).
/// Three or four take two rounds of saturating packs, exact on `i8`
/// values, and a `vpermd`: 4 instructions where four `vpmovdb` (two uops
/// each on Zen 4) and three inserts took 11.
///
/// # Safety
/// AVX-512 F/BW available.
#[inline(always)]
unsafe fn pack(q: &[__m512i]) -> __m512i {
    // SAFETY: the features are available (contract); UNPACK_DWORDS is 64
    // bytes.
    unsafe {
        let z = _mm512_setzero_si512();
        let at = |v: usize| q.get(v).copied().unwrap_or(z);
        if q.len() >= 3 {
            let w01 = _mm512_packs_epi32(at(0), at(1));
            let w23 = _mm512_packs_epi32(at(2), at(3));
            let b = _mm512_packs_epi16(w01, w23);
            let idx = _mm512_loadu_si512(UNPACK_DWORDS.as_ptr().cast());
            _mm512_permutexvar_epi32(idx, b)
        } else {
            let mut y = _mm512_castsi128_si512(_mm512_cvtepi32_epi8(at(0)));
            if q.len() > 1 {
                y = _mm512_inserti32x4::<1>(y, _mm512_cvtepi32_epi8(at(1)));
            }
            y
        }
    }
}

/// Rows `r0 .. r1` of `d` against the panel (`NV` vectors, `cnt` pixels,
/// a step every `pstride` bytes), `MR` rows at a time; `out` gets each
/// row's `cnt` requantized outputs. With `TL`, pixel `cnt - 1 = 16 NV`
/// is lane 0 of vector `NV`, summed from its patch at `tp`
/// ([`run_rows_tail`]); without, `tp` is not read.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI available; the panel holds `kp / 4` steps of
/// `pstride >= NV * 64` bytes at `panel` (64-byte aligned), their first
/// `NV * 64` bytes (with `TL`, `(NV + 1) * 64`) initialized; with `TL`,
/// `tp` holds `kp` initialized bytes; rows within `rq`; `out` valid for
/// rows `r0 .. r1`, lanes `0 .. cnt`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn rows<const NV: usize, const MR: usize, const PF: bool, const TL: bool>(
    d: &DecodedRows,
    r0: usize,
    r1: usize,
    st: &impl Steps,
    cnt: usize,
    rq: &[Requant],
    out: &impl Store,
    tp: *const u8,
) {
    let steps = d.kp() / 4;
    let mut rb = r0;
    while rb < r1 {
        // The last rows run a smaller tile rather than a whole one with
        // repeated rows: 64 output channels are 10 tiles of 6 and one of
        // 4, and two dropped rows of a 6-row tile cost 3% of such layers.
        let m = (r1 - rb).next_multiple_of(2);
        if m < MR && m <= 8 {
            // SAFETY: forwarded; rows rb .. r1.
            unsafe { rows_rest::<NV, PF, TL>(m, d, rb, r1, st, cnt, rq, out, tp) };
            return;
        }
        // Rows past r1 repeat the last one; their sums are dropped.
        let wp: [*const u8; MR] =
            core::array::from_fn(|i| d.row((rb + i).min(r1 - 1)).as_ptr().cast::<u8>());
        // Weights are read once per block of pixels, a row at a time 4
        // bytes per step: on a layer bigger than L2 they come from L3 or
        // DRAM, and the hardware prefetcher did not keep up with MR
        // streams. So there (PF) the tile fetches the next tile's rows
        // into L2, a line of each per 16 steps (a line of its own rows).
        // One 7x7 512-channel layer of ResNet-18 after a 64 MiB cache
        // flush: 742 -> 715 us (646 warm); in the model its 3x3/2 layer
        // went 380-394 -> 357-376 us. The fetches sit outside the inner
        // loop (state kept in it cost the microkernel registers), and in
        // an instance of their own (in the other, the stem ran 3% slower).
        let mut next = [core::ptr::null::<i8>(); MR];
        if PF {
            let last = d.rows() - 1;
            for (i, p) in next.iter_mut().enumerate() {
                *p = d.row((rb + MR + i).min(last)).as_ptr();
            }
        }
        // The sums start at the rows' offset corrections, which the
        // epilogue then need not add.
        let mut acc = [[_mm512_setzero_si512(); NV]; MR];
        for (i, acc) in acc.iter_mut().enumerate() {
            *acc = [_mm512_set1_epi32(d.corr((rb + i).min(r1 - 1))); NV];
        }
        // With TL, the sums of the tail pixel: per 16 steps, a `vpdpbusd`
        // of each row's next 64 weight bytes (in L1 from the broadcasts)
        // with the pixel's patch.
        let mut tacc = [_mm512_setzero_si512(); MR];
        let mut k0 = 0;
        while k0 < steps {
            let k1 = if PF || TL { steps.min(k0 + 16) } else { steps };
            if PF {
                for p in next {
                    _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(4 * k0));
                }
            }
            for kb in k0..k1 {
                // SAFETY: step kb's NV vectors are initialized panel bytes
                // (64-byte aligned); each row has kp = 4 * steps bytes.
                unsafe {
                    let pv = st.at(kb);
                    let mut a = [_mm512_setzero_si512(); NV];
                    for (v, a) in a.iter_mut().enumerate() {
                        *a = _mm512_loadu_si512(pv.add(64 * v).cast());
                    }
                    for i in 0..MR {
                        let wd = (wp[i].add(4 * kb) as *const i32).read_unaligned();
                        let b = _mm512_set1_epi32(wd);
                        for v in 0..NV {
                            acc[i][v] = _mm512_dpbusd_epi32(acc[i][v], a[v], b);
                        }
                    }
                }
            }
            if TL {
                let m = (u32::MAX >> (32 - (k1 - k0))) as u16;
                // SAFETY: the enabled words are steps k0 .. k1 of the
                // patch and of each row (kp = 4 * steps bytes each).
                unsafe {
                    let x = _mm512_maskz_loadu_epi32(m, tp.add(4 * k0).cast());
                    for i in 0..MR {
                        let w = _mm512_maskz_loadu_epi32(m, wp[i].add(4 * k0).cast());
                        tacc[i] = _mm512_dpbusd_epi32(tacc[i], x, w);
                    }
                }
            }
            k0 = k1;
        }
        // Copies for the dynamically indexed loop below: indexed only by
        // constants, `acc` itself stays in registers from the start
        // instead of being zeroed in memory (a 1.5 KiB memset per call).
        let (sums, tsums) = (acc, tacc);
        for (i, acc) in sums.iter().enumerate() {
            let r = rb + i;
            if r >= r1 {
                break;
            }
            // SAFETY: forwarded (vectors 0 .. NV, and with TL vector NV,
            // whose lane 0 is the tail pixel); lanes 0 .. cnt of row r
            // are the caller's to write.
            unsafe {
                // The tail's sum in lane 0 of vector NV (its other lanes
                // are past `cnt`).
                let t = if TL {
                    let s = _mm512_reduce_add_epi32(tsums[i]).wrapping_add(d.corr(r));
                    _mm512_mask_set1_epi32(_mm512_setzero_si512(), 1, s)
                } else {
                    _mm512_setzero_si512()
                };
                let (q, qt) = finish::<NV, TL>(d, r, *acc, t, false, st, 0, &rq[r]);
                if TL {
                    let mut qs = [_mm512_setzero_si512(); 4];
                    qs[..NV].copy_from_slice(&q);
                    qs[NV] = qt;
                    out.put(r, pack(&qs[..NV + 1]), 0, cnt);
                } else {
                    out.put(r, pack(&q), 0, cnt);
                }
            }
        }
        rb += MR;
    }
}

/// Weight bytes of a layer above which [`rows`] fetches the next tile's
/// rows ahead (its `PF` instance): about this machine's L2. Below, the
/// weights stay in L2 from one block of pixels to the next.
const PREFETCH_BYTES: usize = 1 << 19;

/// The last `r1 - r0 <= m` rows of [`rows`] as one tile of `m` rows
/// (2, 4, 6 or 8).
///
/// # Safety
/// As [`rows`].
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn rows_rest<const NV: usize, const PF: bool, const TL: bool>(
    m: usize,
    d: &DecodedRows,
    r0: usize,
    r1: usize,
    st: &impl Steps,
    cnt: usize,
    rq: &[Requant],
    out: &impl Store,
    tp: *const u8,
) {
    // SAFETY: forwarded.
    unsafe {
        match m {
            2 => rows::<NV, 2, PF, TL>(d, r0, r1, st, cnt, rq, out, tp),
            4 => rows::<NV, 4, PF, TL>(d, r0, r1, st, cnt, rq, out, tp),
            6 => rows::<NV, 6, PF, TL>(d, r0, r1, st, cnt, rq, out, tp),
            _ => rows::<NV, 8, PF, TL>(d, r0, r1, st, cnt, rq, out, tp),
        }
    }
}

/// [`rows`] with the register blocking of `nv` vectors.
///
/// # Safety
/// As [`rows`], with `NV = nv`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn run_rows(
    nv: usize,
    d: &DecodedRows,
    r0: usize,
    r1: usize,
    st: &impl Steps,
    cnt: usize,
    rq: &[Requant],
    out: &impl Store,
) {
    // SAFETY: forwarded; no tail.
    unsafe {
        if d.rows() * d.kp() > PREFETCH_BYTES {
            rows_nv::<true, false>(nv, d, r0, r1, st, cnt, rq, out, core::ptr::null())
        } else {
            rows_nv::<false, false>(nv, d, r0, r1, st, cnt, rq, out, core::ptr::null())
        }
    }
}

/// [`run_rows`] over `nv` whole vectors and one more pixel, lane 0 of
/// vector `nv` (`cnt = 16 nv + 1`; a 7x7 plane), whose patch is at `tp`:
/// the tail in the same pass over the weights ([`rows`] with `TL`). As a
/// second pass ([`tail`]) it read every weight again for one pixel's
/// MACs, from L2 at best, and took 9% of ResNet-18's 7x7 layers for 2%
/// of their MACs.
///
/// # Safety
/// As [`rows`] with `TL`, `NV = nv <= 3`.
#[inline(never)]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn run_rows_tail(
    nv: usize,
    d: &DecodedRows,
    r0: usize,
    r1: usize,
    st: &impl Steps,
    cnt: usize,
    rq: &[Requant],
    out: &impl Store,
    tp: *const u8,
) {
    // Four vectors and the tail's would take 30 accumulators.
    assert!((1..=3).contains(&nv), "run_rows_tail: nv");
    // SAFETY: forwarded.
    unsafe {
        if d.rows() * d.kp() > PREFETCH_BYTES {
            rows_nv::<true, true>(nv, d, r0, r1, st, cnt, rq, out, tp)
        } else {
            rows_nv::<false, true>(nv, d, r0, r1, st, cnt, rq, out, tp)
        }
    }
}

/// [`run_rows`] for one `PF` (and `TL`): the microkernel of `nv` vectors,
/// 24 accumulators with the tail's.
///
/// # Safety
/// As [`run_rows`].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn rows_nv<const PF: bool, const TL: bool>(
    nv: usize,
    d: &DecodedRows,
    r0: usize,
    r1: usize,
    st: &impl Steps,
    cnt: usize,
    rq: &[Requant],
    out: &impl Store,
    tp: *const u8,
) {
    // SAFETY: forwarded.
    unsafe {
        match (nv, TL) {
            (4, false) => rows::<4, 6, PF, TL>(d, r0, r1, st, cnt, rq, out, tp),
            (3, false) => rows::<3, 8, PF, TL>(d, r0, r1, st, cnt, rq, out, tp),
            (3, true) => rows::<3, 6, PF, TL>(d, r0, r1, st, cnt, rq, out, tp),
            (2, false) => rows::<2, 12, PF, TL>(d, r0, r1, st, cnt, rq, out, tp),
            (2, true) => rows::<2, 8, PF, TL>(d, r0, r1, st, cnt, rq, out, tp),
            _ => rows::<1, 12, PF, TL>(d, r0, r1, st, cnt, rq, out, tp),
        }
    }
}

/// Most pixels left over past a block's whole vectors that [`tail`] takes
/// instead of one more, mostly empty, panel vector. A vector costs a
/// `vpdpbusd` per row and step for its 16 lanes, the tail one per row and
/// 16 steps for each pixel, plus a horizontal sum per row and pixel.
/// ResNet-18's 7 x 7 layers have one such pixel per row (49 = 3 * 16 + 1),
/// its 14 x 14 layers four (196 = 3 * 64 + 4).
pub(super) const TAIL_MAX: usize = 8;

/// Pixels per pass of [`tail`]: 4 rows x 4 pixels of accumulators.
const TAIL_PX: usize = 4;

/// Rows per chunk when a block has a tail: 24 is a multiple of every
/// microkernel's `MR`, and 24 rows of `k = 4608` (108 KiB) stay in L2.
const TAIL_CHUNK: usize = 24;

/// Bytes of the tail's contiguous patches (pixels times `kp`); a block
/// whose tail needs more keeps the vector. 36 KiB holds one pixel at
/// ResNet's `k = 4608` and four at 2304.
const TAIL_BYTES: usize = 36 * 1024;

/// The contiguous patches of [`tail`], `kp` bytes apart.
#[repr(C, align(64))]
pub(super) struct Patches([u8; TAIL_BYTES]);

/// True when [`tail`] takes the `t` pixels left past a block's whole
/// vectors.
fn tail_fits(t: usize, kp: usize) -> bool {
    (1..=TAIL_MAX).contains(&t) && t * kp <= TAIL_BYTES
}

/// Copy the patches of the `t` pixels in lanes `0 .. t` of the panel's
/// vector `v` out into contiguous rows of `kp` bytes at `pp`.
///
/// # Safety
/// As [`rows`] for vector `v`; `t * kp <= TAIL_BYTES`, `t <= 16`.
unsafe fn tail_patches(kp: usize, st: &impl Steps, v: usize, t: usize, pp: *mut u8) {
    for j in 0..t {
        for kb in 0..kp / 4 {
            // SAFETY: step kb of vector v holds lane j < 16 at byte 4 j;
            // patch j is bytes j kp .. (j + 1) kp <= TAIL_BYTES.
            unsafe {
                let w = st.at(kb).add(64 * v + 4 * j).cast::<u32>().read_unaligned();
                pp.add(j * kp + 4 * kb).cast::<u32>().write_unaligned(w);
            }
        }
    }
}

/// Rows `r0 .. r1` of `d` for the `t` pixels in lanes `0 .. t` of the
/// panel's vector `v`, whose patches [`tail_patches`] put at `pp`, in
/// passes of `TAIL_PX` pixels: a row of weights and a patch meet 16
/// steps at a time in one `vpdpbusd` (the GEMV layout), summed across
/// lanes at the end. `out` gets lanes `16 v .. 16 v + t`.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI available; as [`tail_patches`], the patches
/// written; `out` valid for rows `r0 .. r1`, lanes `16 v .. 16 v + t`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tail(
    d: &DecodedRows,
    r0: usize,
    r1: usize,
    st: &impl Steps,
    v: usize,
    t: usize,
    pp: *const u8,
    rq: &[Requant],
    out: &impl Store,
) {
    let mut j0 = 0;
    while j0 < t {
        let tg = (t - j0).min(TAIL_PX);
        let pj = pp.wrapping_add(j0 * d.kp());
        // SAFETY: forwarded; patches j0 .. j0 + tg are written.
        unsafe {
            match tg {
                1 => tail_pass::<1>(d, r0, r1, st, v, j0, pj, rq, out),
                2 => tail_pass::<2>(d, r0, r1, st, v, j0, pj, rq, out),
                3 => tail_pass::<3>(d, r0, r1, st, v, j0, pj, rq, out),
                _ => tail_pass::<4>(d, r0, r1, st, v, j0, pj, rq, out),
            }
        }
        j0 += tg;
    }
}

/// One pass of [`tail`]: `TG` pixels from lane `j0` of vector `v`, their
/// patches at `pp` (`kp` bytes apart).
///
/// # Safety
/// As [`tail`]; patches `0 .. TG` hold `kp` initialized bytes.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tail_pass<const TG: usize>(
    d: &DecodedRows,
    r0: usize,
    r1: usize,
    st: &impl Steps,
    v: usize,
    j0: usize,
    pp: *const u8,
    rq: &[Requant],
    out: &impl Store,
) {
    const RB: usize = 4;
    let steps = d.kp() / 4;
    let mut rb = r0;
    while rb < r1 {
        let wp: [*const u8; RB] =
            core::array::from_fn(|i| d.row((rb + i).min(r1 - 1)).as_ptr().cast::<u8>());
        let mut acc = [[_mm512_setzero_si512(); TG]; RB];
        let mut c = 0;
        while c < steps {
            // The last chunk of fewer than 16 steps reads only its words.
            let m = if steps - c >= 16 {
                u16::MAX
            } else {
                (1u16 << (steps - c)) - 1
            };
            // SAFETY: the enabled words are steps c .. c + 16 < steps of
            // each patch and row (4 * steps = kp bytes each).
            unsafe {
                let mut x = [_mm512_setzero_si512(); TG];
                for (j, x) in x.iter_mut().enumerate() {
                    *x = _mm512_maskz_loadu_epi32(m, pp.add(j * 4 * steps + 4 * c).cast());
                }
                for i in 0..RB {
                    let w = _mm512_maskz_loadu_epi32(m, wp[i].add(4 * c).cast());
                    for j in 0..TG {
                        acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], x[j], w);
                    }
                }
            }
            c += 16;
        }
        // A copy for the dynamically indexed loop below: indexed only by
        // constants, `acc` itself stays in registers from the start
        // instead of being zeroed in memory (a 1.5 KiB memset per call).
        let sums = acc;
        for (i, acc) in sums.iter().enumerate() {
            let r = rb + i;
            if r >= r1 {
                break;
            }
            // The sums in their pixels' lanes, then the usual epilogue.
            // Put in with masked broadcasts: written to a stack array and
            // loaded back as a vector, they stalled on store forwarding,
            // 12% of a 7x7 1x1/2 layer of ResNet-18.
            let mut a = _mm512_setzero_si512();
            for (j, &s) in acc.iter().enumerate() {
                a = _mm512_mask_set1_epi32(a, 1 << (j0 + j), _mm512_reduce_add_epi32(s));
            }
            // SAFETY: panel as the caller vouches; lanes 16 v + j0 .. + TG
            // of row r are the caller's to write.
            unsafe {
                // Lane j of vector v is block lane 16 v + j.
                let mut q = [_mm512_setzero_si512(); 4];
                q[v] = finish::<1, false>(d, r, [a], a, true, st, v, &rq[r]).0[0];
                out.put(r, pack(&q[..v + 1]), 16 * v + j0, 16 * v + j0 + TG);
            }
        }
        rb += RB;
    }
}

/// # Safety
/// AVX-512 F/BW/VBMI/VNNI available; arguments checked by [`conv_gemm_i8`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi,avx512vnni")]
unsafe fn conv(
    g: &Conv2dGeom,
    x: &[i8],
    d: &DecodedRows,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    let n = d.rows();
    let plane = g.out_plane();
    if n == 0 || plane == 0 {
        return;
    }
    if let Order::Taps { cp, .. } = d.order() {
        let small = d.kp() / 4 <= SMALL_STEPS
            && direct_band(g, cp, SMALL_BAND).is_some_and(|(rows, _)| rows == g.out_h());
        // SAFETY: forwarded; conv_gemm_i8 checked the tap-major layout
        // against the geometry (direct_fits: a band fits DIRECT_BYTES),
        // and the small instance runs only where its band and steps fit.
        return unsafe {
            if small {
                direct::<SMALL_BAND, SMALL_STEPS>(g, x, d, cp, rq, out)
            } else {
                direct::<DIRECT_BYTES, { MAX_K / 4 }>(g, x, d, cp, rq, out)
            }
        };
    }
    // SAFETY: forwarded.
    unsafe { panel_conv(g, x, d, oc0, rq, out) }
}

/// Bytes of the stack copy of a stride-2 layer's input in [`Phases`].
const PHASE_BYTES: usize = 192 * 1024;

/// The stack buffer of [`split_phases`].
#[repr(C, align(64))]
struct PhaseBuf([i8; PHASE_BYTES]);

/// A stride-2 layer read as a stride-1 one. Its zero-padded input splits
/// into phases, phase `(a, b)` of a channel holding the padded input's
/// rows `2i + a` and columns `2j + b`; tap `(ky, kx)` of output pixel
/// `(oy, ox)` is then pixel `(oy + ky / 2, ox + kx / 2)` of phase
/// `(ky % 2, kx % 2)`. So the panel builder reads it as the stride-1,
/// unpadded layer `gv` over `py * px` phase planes per channel, whose
/// taps are plain loads, and on small planes one permute of the plane
/// or of a 128-byte window. Read with stride 2, a tap was two loads, a
/// `vpermt2b` and a blend per run of a block within an output row, and
/// building the panel took a quarter of ResNet-18's 3x3/2 and 1x1/2
/// layers.
pub(super) struct Phases {
    /// The stride-1 layer over the phase planes: channel `c`'s phase
    /// `(a, b)` is its input channel `(c * py + a) * px + b`, of
    /// `out_h + kh' - 1` rows and `out_w + kw' - 1` columns, `kh'` and
    /// `kw'` the kernel's halves rounded up (the taps of phase 0).
    pub(super) gv: Conv2dGeom,
    /// Row phases: 1 for a kernel of one row, else 2.
    pub(super) py: usize,
    /// Column phases, likewise.
    pub(super) px: usize,
    /// Blocks stay within an output row ([`for_blocks_in`]): output rows
    /// a multiple of 16 pixels and wider than a permute's window.
    pub(super) rows: bool,
}

impl Phases {
    /// The phase split of `g`, where it pays: `g` has stride 2, dilation
    /// 1 and more than one tap, the split fits [`PHASE_BYTES`], and a
    /// block of 64 output pixels spans at most 128 bytes of each phase
    /// plane (so that its taps are one permute). Measured, one thread:
    /// ResNet-18's 3x3/2 layers at 14x14 and 7x7 335 -> 323 and 340 ->
    /// 327 us. A 1x1/2 layer copies as many bytes into the split as into
    /// its panel, and ran 4-6 us slower (of 50-60). Wider blocks split
    /// too when the output rows are a multiple of 16 pixels: their blocks
    /// then keep within a row ([`Phases::rows`]), so that each tap is one
    /// load of a phase plane, its padding included ([`build_panel_perm`]
    /// `SEG`): ResNet-18's 7x7/2 stem 849 -> 742 us (read with stride 2,
    /// a tap was two or three runs of two loads, a `vpermt2b` and a blend).
    pub(super) fn of(g: &Conv2dGeom) -> Option<Phases> {
        if g.stride != [2, 2] || g.dilation != [1, 1] || g.kh * g.kw == 1 {
            return None;
        }
        let (khv, kwv) = (g.kh.div_ceil(2), g.kw.div_ceil(2));
        let (py, px) = (g.kh.min(2), g.kw.min(2));
        let gv = Conv2dGeom {
            c_in: g.c_in.checked_mul(py * px)?,
            h: g.out_h() + khv - 1,
            w: g.out_w() + kwv - 1,
            kh: khv,
            kw: kwv,
            stride: [1, 1],
            pads: [0; 4],
            ..*g
        };
        // The split's last store runs up to 64 bytes past it.
        let bytes = gv.c_in.checked_mul(gv.h)?.checked_mul(gv.w)?;
        let span = (64usize.div_ceil(g.out_w()) + 1) * gv.w;
        let rows = g.out_w().is_multiple_of(16) && span > 128;
        (bytes + 64 <= PHASE_BYTES && (span <= 128 || gv.h * gv.w <= 64 || rows))
            .then_some(Phases { gv, py, px, rows })
    }
}

/// Write the phase planes of [`Phases`] for input `x` of `g` at `buf`:
/// per input row that a row phase takes, the 128 bytes from the first
/// column the phases read, whose even and odd bytes (`vpermt2b`) are the
/// two column phases. The stores are whole vectors, running up to 64
/// bytes past the plane row they write into bytes written afterwards
/// (masked stores were a quarter of the split's time).
///
/// # Safety
/// AVX-512 F/BW/VBMI available; `x.len() == g.in_len()`; `buf` valid for
/// writes of `ph.gv.in_len() + 64` bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn split_phases(g: &Conv2dGeom, x: &[i8], ph: &Phases, buf: *mut i8) {
    let (hv, wv) = (ph.gv.h, ph.gv.w);
    let (w, h) = (g.w as isize, g.h as isize);
    // Plane (c, a, b) starts at ((c * py + a) * px + b) * hv * wv.
    let pl = hv * wv;
    // SAFETY: EVEN is 64 bytes.
    let even = unsafe { _mm512_loadu_si512(EVEN.as_ptr().cast()) };
    let odd = _mm512_add_epi8(even, _mm512_set1_epi8(1));
    let zero = _mm512_setzero_si512();
    for c in 0..g.c_in {
        for a in 0..ph.py {
            let plane = buf.wrapping_add((c * ph.py + a) * ph.px * pl);
            for i in 0..hv {
                let iy = (2 * i + a) as isize - g.pads[0] as isize;
                let row = x.as_ptr().wrapping_offset((c as isize * h + iy) * w);
                let dst = plane.wrapping_add(i * wv);
                let mut j0 = 0;
                while j0 < wv {
                    let (v0, v1) = if (0..h).contains(&iy) {
                        // Byte t of the pair is column s0 + t.
                        let s0 = (2 * j0) as isize - g.pads[1] as isize;
                        let t0 = (-s0).clamp(0, 128) as usize;
                        let t1 = (w - s0).clamp(0, 128) as usize;
                        let mlo = if t0 < t1.min(64) {
                            lanes(t0, t1.min(64))
                        } else {
                            0
                        };
                        let mhi = if t0.max(64) < t1 {
                            lanes(t0.max(64) - 64, t1 - 64)
                        } else {
                            0
                        };
                        let p = row.wrapping_offset(s0);
                        // SAFETY: the enabled bytes are columns 0 .. w of
                        // row iy of channel c, inside x.
                        let (lo, hi) = unsafe {
                            (
                                _mm512_maskz_loadu_epi8(mlo, p),
                                _mm512_maskz_loadu_epi8(mhi, p.wrapping_add(64)),
                            )
                        };
                        (
                            _mm512_permutex2var_epi8(lo, even, hi),
                            _mm512_permutex2var_epi8(lo, odd, hi),
                        )
                    } else {
                        (zero, zero)
                    };
                    // SAFETY: plane row i starts j0 < wv bytes before the
                    // stores, which end at most 64 bytes past their plane,
                    // inside the buffer (the caller's room past the last).
                    unsafe {
                        // Column phase 0's stores that would run into phase
                        // 1, which is written row by row beside it, are
                        // masked; all later planes are written afterwards.
                        if ph.px == 1 || i * wv + j0 + 64 <= pl {
                            _mm512_storeu_si512(dst.add(j0).cast(), v0);
                        } else {
                            let m = lanes_upto((wv - j0).min(64));
                            _mm512_mask_storeu_epi8(dst.add(j0), m, v0);
                        }
                        if ph.px == 2 {
                            _mm512_storeu_si512(dst.add(pl + j0).cast(), v1);
                        }
                    }
                    j0 += 64;
                }
            }
        }
    }
}

/// [`conv`] on code-order rows: a panel per block of pixels, read through
/// the phase split where that applies. Out of line so that the direct
/// kernel's calls do not probe this frame.
///
/// # Safety
/// As [`conv`]; `d.rows() > 0`, a non-empty output plane.
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi,avx512vnni")]
unsafe fn panel_conv(
    g: &Conv2dGeom,
    x: &[i8],
    d: &DecodedRows,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    // SAFETY (both): forwarded.
    match Phases::of(g) {
        Some(ph) => unsafe { panel_conv_split(g, &ph, x, d, oc0, rq, out) },
        None => unsafe { panel_conv_of(g, None, x, d, oc0, rq, out) },
    }
}

/// [`panel_conv`] through the phase split `ph`, in its own frame.
///
/// # Safety
/// As [`conv`]; `ph` is `Phases::of(g)`.
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi,avx512vnni")]
unsafe fn panel_conv_split(
    g: &Conv2dGeom,
    ph: &Phases,
    x: &[i8],
    d: &DecodedRows,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    let mut buf = MaybeUninit::<PhaseBuf>::uninit();
    let bp = buf.as_mut_ptr().cast::<i8>();
    let len = ph.gv.in_len();
    // SAFETY: len + 64 <= PHASE_BYTES (Phases::of); split_phases writes
    // all len bytes before the slice is made.
    unsafe {
        split_phases(g, x, ph, bp);
        let xs = core::slice::from_raw_parts(bp, len);
        panel_conv_of(g, Some(ph), xs, d, oc0, rq, out)
    }
}

/// The body of [`panel_conv`]: `x` is the input, or with `ph` its phase
/// split.
///
/// # Safety
/// As [`conv`], with `x` as [`build_panel`] takes it.
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi,avx512vnni")]
unsafe fn panel_conv_of(
    g: &Conv2dGeom,
    ph: Option<&Phases>,
    x: &[i8],
    d: &DecodedRows,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    let n = d.rows();
    let plane = g.out_plane();
    let nv_max = (PANEL_BYTES / (d.kp().max(4) * 16)).clamp(1, 4);
    let mut panel = MaybeUninit::<Panel>::uninit();
    let pp = panel.as_mut_ptr().cast::<u8>();
    let mut patches = MaybeUninit::<Patches>::uninit();
    let tp = patches.as_mut_ptr().cast::<u8>();
    // Written only through the sinks below, within rows and pixels of the
    // call (checked by conv_gemm_i8).
    let op = out.as_mut_ptr();
    // Blocks of the geometry the panel reads: the same output pixels.
    let gb = match ph {
        Some(ph) => &ph.gv,
        None => g,
    };
    let rows = ph.is_some_and(|ph| ph.rows);
    for_blocks_in(gb, n, oc0, 16 * nv_max, rows, |grp, r, r_end, q0, blk| {
        let cnt = blk.pixels();
        let nv = cnt.div_ceil(16);
        let (whole, t) = (cnt / 16, cnt % 16);
        let sink = Sink {
            base: op.wrapping_add(q0),
            rs: plane,
            ls: 1,
        };
        let st = Strided {
            base: pp,
            stride: nv * 64,
        };
        // SAFETY: kp / 4 * nv * 64 <= PANEL_BYTES by the choice of nv_max;
        // the panel (steps nv * 64 bytes apart) is written before `rows`
        // and `tail` read it; whole < nv, t < 16 and t * kp <= TAIL_BYTES
        // when the tail runs, its patches written first; the sink's rows
        // r .. r_end < n and lanes below cnt are pixels q0 .. q0 + cnt of
        // planes within `out` (conv_gemm_i8 checked its length).
        unsafe {
            let tabulated = g.kh * g.kw <= PERM_TAPS;
            match (blk.perm, ph) {
                (Perm::Plane, _) if tabulated => {
                    build_panel_perm::<PLANE>(g, ph, x, grp, blk, nv, pp)
                }
                (Perm::Window, _) if tabulated => {
                    build_panel_perm::<WINDOW>(g, ph, x, grp, blk, nv, pp)
                }
                (Perm::No, Some(p)) if tabulated && p.rows && blk.ns == 1 => {
                    build_panel_perm::<SEG>(g, ph, x, grp, blk, nv, pp)
                }
                (_, Some(_)) => build_panel::<true>(g, ph, x, grp, blk, nv, pp),
                (_, None) => build_panel::<false>(g, ph, x, grp, blk, nv, pp),
            }
            if t == 1 && (1..=3).contains(&whole) && tail_fits(t, d.kp()) {
                tail_patches(d.kp(), &st, whole, t, tp);
                run_rows_tail(whole, d, r, r_end, &st, cnt, rq, &sink, tp);
            } else if tail_fits(t, d.kp()) {
                tail_patches(d.kp(), &st, whole, t, tp);
                // Chunks of rows (a multiple of every MR) so that the tail
                // re-reads their weights from L2, not from L3.
                let mut rc = r;
                while rc < r_end {
                    let re = r_end.min(rc + TAIL_CHUNK);
                    if whole > 0 {
                        run_rows(whole, d, rc, re, &st, 16 * whole, rq, &sink);
                    }
                    tail(d, rc, re, &st, whole, t, tp, rq, &sink);
                    rc = re;
                }
            } else {
                run_rows(nv, d, r, r_end, &st, cnt, rq, &sink);
            }
        }
    });
}

/// Output rows of a direct band and the rows of each of its stride
/// phases, for layer `g` with input channels padded to `cp`: as many as
/// a buffer of `bytes` holds (a phase row is `cp * P` bytes over all quads,
/// `P` = [`direct_pitch`], and there are `sy * sx` phases, plus 64 bytes
/// for the last vector's overreach), or `None` if not one fits.
fn direct_band(g: &Conv2dGeom, cp: usize, bytes: usize) -> Option<(usize, usize)> {
    let phases = g.stride[0] * g.stride[1];
    let reach = direct_reach(g);
    let rows_in = (bytes - 64) / (cp * phases * direct_pitch(g)).max(1);
    let rows = rows_in.checked_sub(reach)?.min(g.out_h());
    (rows > 0).then_some((rows, rows + reach))
}

/// True when tap-major rows with `taps` and `cp` run layer `g` directly:
/// its [`taps_order`] (a band of one output row then fits).
fn direct_fits(g: &Conv2dGeom, taps: usize, cp: usize) -> bool {
    taps_order(g) == Some(Order::Taps { taps, cp }) && direct_band(g, cp, DIRECT_BYTES).is_some()
}

/// Where [`fill_band`] puts a band: `rows` rows of each stride phase,
/// starting at padded input row `iy0` (`iy0` may lie in the top padding,
/// `iy0 + j sy + psi` is row `j` of row phase `psi`), `pplane` bytes per
/// phase and `qplane = sy * sx * pplane` per channel quad.
struct BandAt {
    iy0: isize,
    rows: usize,
    pplane: usize,
    qplane: usize,
}

/// Copy a band of input rows into `buf`, channel-interleaved, zero-padded
/// and split into stride phases: phase `(psi, phi)` of quad `c4` at `buf +
/// c4 * qplane + (psi * sx + phi) * pplane`, its row `j` `4 * P` bytes in
/// (`P` = [`direct_pitch`]), lane `l` the word of channels `4 c4 .. 4 c4 +
/// 4` at input column `l sx + phi - pl`, as unsigned `x ^ 0x80` (padding
/// and channels past `c_in`: 0x80, i.e. 0). 64 lanes at a time, a load
/// per channel (a column stride of 2 loads twice the bytes and keeps the
/// even ones, `vpermt2b`) and the four channels interleaved as a panel
/// step: 16 lanes at a time, with a masked store each (slow on Zen 4),
/// the band took 3% of a 56x56 layer.
///
/// # Safety
/// AVX-512 F/BW/VL/VBMI available; `g.stride[1] <= 2`; `buf` valid for
/// writes of `cp / 4 * at.qplane` bytes, `at.pplane >= at.rows * 4 * P`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi")]
unsafe fn fill_band(g: &Conv2dGeom, x: &[i8], cp: usize, at: &BandAt, buf: *mut u8) {
    let (h, w, pl) = (g.h as isize, g.w as isize, g.pads[1] as isize);
    let (sy, sx) = (g.stride[0], g.stride[1]);
    let pitch = direct_pitch(g);
    let flip = _mm512_set1_epi8(0x80u8 as i8);
    let tabs = step_tables();
    // SAFETY: EVEN is 64 bytes.
    let even = unsafe { _mm512_loadu_si512(EVEN.as_ptr().cast()) };
    for c4 in 0..cp / 4 {
        for ph in 0..sy * sx {
            let (psi, phi) = (ph / sx, ph % sx);
            for j in 0..at.rows {
                let iy = at.iy0 + (j * sy + psi) as isize;
                let dst = buf.wrapping_add(c4 * at.qplane + ph * at.pplane + j * 4 * pitch);
                let mut px0 = 0;
                while px0 < pitch {
                    let npx = (pitch - px0).min(64);
                    // Bytes of the window (input columns col0 ..) that lie
                    // in the row and belong to the lanes present.
                    let col0 = (px0 * sx + phi) as isize - pl;
                    let span = (npx * sx) as isize;
                    let lo = (-col0).clamp(0, span) as usize;
                    let hi = (w - col0).clamp(0, span) as usize;
                    let inside = (0..h).contains(&iy) && lo < hi;
                    // Byte masks of the first and second 64 bytes.
                    let m0 = if inside && lo < 64 {
                        lanes(lo, hi.min(64))
                    } else {
                        0
                    };
                    let m1 = if inside && hi > 64 {
                        lanes(lo.max(64) - 64, hi - 64)
                    } else {
                        0
                    };
                    let mut q = [flip; 4];
                    for (i, q) in q.iter_mut().enumerate() {
                        let c = 4 * c4 + i;
                        if c >= g.c_in || !inside {
                            continue;
                        }
                        let p = x.as_ptr().wrapping_offset((c as isize * h + iy) * w + col0);
                        // SAFETY: the enabled bytes are columns col0 + lo
                        // .. col0 + hi of row iy of channel c, inside x;
                        // masked-off bytes are not accessed.
                        let v = unsafe {
                            if sx == 1 {
                                _mm512_maskz_loadu_epi8(m0, p)
                            } else {
                                let v0 = _mm512_maskz_loadu_epi8(m0, p);
                                let v1 = _mm512_maskz_loadu_epi8(m1, p.wrapping_add(64));
                                _mm512_permutex2var_epi8(v0, even, v1)
                            }
                        };
                        *q = _mm512_xor_si512(v, flip);
                    }
                    // The four channels' pixel-major words, as a panel
                    // step, stored whole but for the last.
                    let y = step_words!(q, tabs);
                    let d = dst.wrapping_add(4 * px0);
                    for (v, &y) in y.iter().enumerate().take(npx.div_ceil(16)) {
                        let n = (npx - 16 * v).min(16);
                        // SAFETY: bytes 4 (px0 + 16 v) .. + 4 n of row j of
                        // this phase of quad c4, within the buffer (the
                        // caller's pplane and qplane).
                        unsafe {
                            if n == 16 {
                                _mm512_storeu_si512(d.add(64 * v).cast(), y);
                            } else {
                                _mm512_mask_storeu_epi8(d.add(64 * v).cast(), lanes_upto(4 * n), y);
                            }
                        }
                    }
                    px0 += npx;
                }
            }
        }
    }
}

/// A direct block's lanes as output pixels: the runs of lanes that are
/// columns `0 .. out_w` of an output row (at most 64 / P + 2).
struct RowSegs {
    /// `(first lane, end lane, destination of lane 0 of the run's row)`.
    segs: [(usize, usize, *mut i8); 66],
    ns: usize,
    /// Output plane (row stride of a channel).
    rs: usize,
}

impl Store for RowSegs {
    #[inline(always)]
    unsafe fn put(&self, r: usize, v: __m512i, a: usize, b: usize) {
        for &(sa, sb, base) in &self.segs[..self.ns] {
            let (a, b) = (a.max(sa), b.min(sb));
            if a < b {
                // SAFETY: lanes a .. b of this run are output pixels of
                // row r (the caller vouches for rows; the run was built
                // from the band's pixels); masked-off bytes untouched.
                unsafe {
                    _mm512_mask_storeu_epi8(base.wrapping_add(r * self.rs).cast(), lanes(a, b), v)
                };
            }
        }
    }
}

/// The conv on tap-major rows ([`Order::Taps`]): each step's activations
/// are read in place from a channel-interleaved, zero-padded, phase-split
/// copy of a band of input rows ([`fill_band`]): lane `q = oy * P + ox`
/// of the band, tap `(ky, kx)` at `q + (ky dy / sy) P + kx dx / sx` of
/// its phase, so no panel is built; the `P - out_w` lanes past each
/// output row are computed and dropped.
///
/// `B` is the band buffer's bytes, `S` the most steps its table holds:
/// an instance per size, so that small layers do not pay for the large
/// one's stack frame (see [`SMALL_BAND`]).
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI available; arguments checked by [`conv_gemm_i8`],
/// a band of `g` fits `B` bytes ([`direct_band`]), `d.kp() / 4 <= S`.
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi,avx512vnni")]
unsafe fn direct<const B: usize, const S: usize>(
    g: &Conv2dGeom,
    x: &[i8],
    d: &DecodedRows,
    cp: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    let (n, oh, ow) = (d.rows(), g.out_h(), g.out_w());
    let plane = oh * ow;
    let (sy, sx) = (g.stride[0], g.stride[1]);
    let pitch = direct_pitch(g);
    let Some((band, rows_ph)) = direct_band(g, cp, B) else {
        return;
    };
    let pplane = rows_ph * pitch * 4;
    let qplane = sy * sx * pplane;
    // Step s = tap t, quad c4 (the rows' order): its word of lane 0.
    let quads = cp / 4;
    let steps = d.kp() / 4;
    let mut offs = [0u32; S];
    for (s, o) in offs[..steps].iter_mut().enumerate() {
        let (t, c4) = (s / quads, s % quads);
        let (ty, tx) = (t / g.kw * g.dilation[0], t % g.kw * g.dilation[1]);
        let phase = (ty % sy) * sx + tx % sx;
        let lane = ty / sy * pitch + tx / sx;
        *o = (c4 * qplane + phase * pplane + 4 * lane) as u32;
    }
    let mut band_buf = MaybeUninit::<Buf<B>>::uninit();
    let buf = band_buf.as_mut_ptr().cast::<u8>();
    // The bytes past the last quad that a block's last vector may read
    // (lanes past the band's last pixel): initialized, then dropped.
    // SAFETY: quads * qplane + 64 <= B (direct_band).
    unsafe {
        _mm512_storeu_si512(
            buf.add(quads * qplane).cast(),
            _mm512_set1_epi8(0x80u8 as i8),
        )
    };
    let op = out.as_mut_ptr();
    let mut oy0 = 0;
    while oy0 < oh {
        let nb = band.min(oh - oy0);
        let at = BandAt {
            iy0: (oy0 * sy) as isize - g.pads[0] as isize,
            rows: nb + rows_ph - band,
            pplane,
            qplane,
        };
        // SAFETY: quads * qplane bytes of the buffer; nb + reach <=
        // rows_ph rows per phase; sx <= 2 (taps_order).
        unsafe { fill_band(g, x, cp, &at, buf) };
        let lanes_n = (nb - 1) * pitch + ow;
        let mut q0 = 0;
        while q0 < lanes_n {
            let cnt = (lanes_n - q0).min(64);
            let mut segs = RowSegs {
                segs: [(0, 0, core::ptr::null_mut()); 66],
                ns: 0,
                rs: plane,
            };
            let mut oy = q0 / pitch;
            while oy * pitch < q0 + cnt {
                let (a, b) = ((oy * pitch).max(q0), (oy * pitch + ow).min(q0 + cnt));
                if a < b {
                    // Lane l of this run is pixel (oy0 + oy, l + q0 - oy P).
                    let lane0 = ((oy0 + oy) * ow) as isize + q0 as isize - (oy * pitch) as isize;
                    segs.segs[segs.ns] = (a - q0, b - q0, op.wrapping_offset(lane0));
                    segs.ns += 1;
                }
                oy += 1;
            }
            let st = Table {
                base: buf.wrapping_add(4 * q0),
                offs: &offs[..steps],
            };
            // SAFETY: every step's vectors lie in the filled band (lanes
            // below lanes_n read input rows below nb + reach; the last
            // vector's extra lanes at most 64 bytes past the last quad,
            // initialized above); the runs are pixels of the band.
            unsafe { run_rows(cnt.div_ceil(16), d, 0, n, &st, cnt, rq, &segs) };
            q0 += cnt;
        }
        oy0 += nb;
    }
}

/// The blocks of a call over rows `0 .. n` (channels `oc0 ..`): per
/// group, its rows `r .. r_end`, and per block of at most `px` output
/// pixels from `q0`, `f(grp, r, r_end, q0, block)`.
pub(super) fn for_blocks(
    g: &Conv2dGeom,
    n: usize,
    oc0: usize,
    px: usize,
    f: impl FnMut(usize, usize, usize, usize, &Block),
) {
    for_blocks_in(g, n, oc0, px, false, f)
}

/// [`for_blocks`]; with `rows`, no block straddles two output rows.
pub(super) fn for_blocks_in(
    g: &Conv2dGeom,
    n: usize,
    oc0: usize,
    px: usize,
    rows: bool,
    mut f: impl FnMut(usize, usize, usize, usize, &Block),
) {
    let plane = g.out_plane();
    let mut blk = Block::new(g);
    let cog = g.c_out_g();
    let mut r = 0;
    while r < n {
        let grp = (oc0 + r) / cog;
        let r_end = n.min((grp + 1) * cog - oc0);
        let mut q0 = 0;
        while q0 < plane {
            let mut cnt = (plane - q0).min(px);
            if rows {
                cnt = cnt.min(g.out_w() - q0 % g.out_w());
            }
            blk.set(g, q0, cnt);
            f(grp, r, r_end, q0, &blk);
            q0 += cnt;
        }
        r = r_end;
    }
}

/// `avx512/gemm-dot`: equal to [`crate::scalar::conv_shift_i8`] on the codes
/// `d` was decoded from ([`crate::gemm::decode`]). Panics if the CPU lacks
/// AVX-512 (F/BW/VBMI/VNNI), on mismatched arguments, or if `k` exceeds
/// [`MAX_K`].
pub fn conv_gemm_i8(
    g: &Conv2dGeom,
    x: &[i8],
    d: &DecodedRows,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    assert!(
        Isa::Avx512.available(),
        "avx512/gemm-dot on a CPU without AVX-512"
    );
    check_conv("avx512/gemm-dot", g, x.len(), d, oc0, rq.len(), out.len());
    if let Order::Taps { taps, cp } = d.order() {
        assert!(
            direct_fits(g, taps, cp),
            "avx512/gemm-dot: tap-major rows on a layer they do not fit"
        );
    }
    // SAFETY: the level is available (checked above) and the arguments
    // match the geometry.
    unsafe { conv(g, x, d, oc0, rq, out) }
}

/// Element offsets `l * k` of the 16 lanes of a gather across consecutive
/// batch rows of `k` elements: lane `l` reads row `l`.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn row_offsets(k: usize) -> __m512i {
    let offs: [i32; 16] = core::array::from_fn(|l| (l * k) as i32);
    // SAFETY: `offs` is 64 bytes.
    unsafe { _mm512_loadu_si512(offs.as_ptr().cast()) }
}

/// The batch rows of vector `v` (lanes `16 v ..`) of a block of `cnt`
/// rows: how many there are, and as a lane mask.
#[inline(always)]
pub(super) fn batch_lanes(cnt: usize, v: usize) -> (usize, u16) {
    let valid = cnt.saturating_sub(16 * v).min(16);
    (valid, ((1u32 << valid) - 1) as u16)
}

/// Build the panel of batch rows `j0 .. j0 + cnt` of `x` (`[m][k]`, a
/// linear layer's input) for `nv` vectors: lane `l` of vector `v` is row
/// `j0 + 16 v + l`, whose four weights of a step are one `vpgatherdd`
/// element (the panel is built once per 64 rows and read by every output
/// channel, so the gather is a small share).
///
/// # Safety
/// AVX-512 F/BW available; `panel` valid for writes of
/// `padded_k(k) / 4 * nv * 64` bytes; `x.len() >= (j0 + cnt) * k`,
/// `cnt <= 16 * nv`, `16 * k < 2^31`.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn build_rows_panel(x: &[i8], k: usize, j0: usize, cnt: usize, nv: usize, panel: *mut u8) {
    let steps = padded_k(k) / 4;
    let full = k / 4;
    let flip = _mm512_set1_epi8(0x80u8 as i8);
    let offs = row_offsets(k);
    for v in 0..nv {
        let first = j0 + 16 * v;
        let (valid, mask) = batch_lanes(cnt, v);
        let base = x[first * k..].as_ptr();
        for kb in 0..full {
            let idx = _mm512_add_epi32(offs, _mm512_set1_epi32(4 * kb as i32));
            // SAFETY: an enabled lane l reads the 4 bytes at row
            // first + l < j0 + cnt, columns 4 kb .. 4 kb + 4 <= k.
            let w = unsafe {
                _mm512_mask_i32gather_epi32::<1>(_mm512_setzero_si512(), mask, idx, base.cast())
            };
            // SAFETY: step kb, vector v lies within the panel.
            unsafe {
                _mm512_store_si512(
                    panel.add((kb * nv + v) * 64).cast(),
                    _mm512_xor_si512(w, flip),
                )
            };
        }
        if steps > full {
            // The last, partial step: k % 4 weights, the rest padding.
            let mut t = [0i8; 64];
            for l in 0..valid {
                for c in 4 * full..k {
                    t[4 * l + c - 4 * full] = x[(first + l) * k + c];
                }
            }
            // SAFETY: `t` is 64 bytes; the last step's vector v lies within
            // the panel.
            unsafe {
                let w = _mm512_loadu_si512(t.as_ptr().cast());
                _mm512_store_si512(
                    panel.add((full * nv + v) * 64).cast(),
                    _mm512_xor_si512(w, flip),
                );
            }
        }
    }
}

/// # Safety
/// AVX-512 F/BW/VL/VNNI available; arguments checked by
/// [`linear_gemm_i8`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn linear(x: &[i8], m: usize, d: &DecodedRows, rq: &[Requant], out: &mut [i8]) {
    let (n, k) = (d.rows(), d.k());
    if n == 0 || m == 0 {
        return;
    }
    let nv_max = (PANEL_BYTES / (d.kp().max(4) * 16)).clamp(1, 4);
    let mut panel = MaybeUninit::<Panel>::uninit();
    let pp = panel.as_mut_ptr().cast::<u8>();
    // Written only through the sinks below: batch rows j0 .. j0 + cnt of
    // n outputs each (lengths checked by linear_gemm_i8).
    let op = out.as_mut_ptr();
    let mut j0 = 0;
    while j0 < m {
        let cnt = (m - j0).min(16 * nv_max);
        let nv = cnt.div_ceil(16);
        let sink = Sink {
            base: op.wrapping_add(j0 * n),
            rs: 1,
            ls: n,
        };
        let st = Strided {
            base: pp,
            stride: nv * 64,
        };
        // SAFETY: the panel holds kp / 4 * nv * 64 <= PANEL_BYTES bytes,
        // written before `rows` reads them; x holds m rows of k; the sink
        // writes outputs 0 .. n of batch rows j0 .. j0 + cnt <= m.
        unsafe {
            build_rows_panel(x, k, j0, cnt, nv, pp);
            run_rows(nv, d, 0, n, &st, cnt, rq, &sink);
        }
        j0 += cnt;
    }
}

/// `avx512/gemm-dot` for a linear layer over a batch: `x` holds `m` rows of
/// `k` int8 inputs, `out` `m` rows of `n = d.rows()` outputs, each row
/// equal to [`crate::scalar::conv_shift_i8`] on the codes `d` was decoded
/// from (a 1x1 layer on one pixel). The batch runs along the lanes, as the
/// pixels of a conv do. Panics if the CPU lacks AVX-512 (F/BW/VL/VNNI),
/// on mismatched lengths, or if `k` exceeds [`MAX_K`].
pub fn linear_gemm_i8(x: &[i8], m: usize, d: &DecodedRows, rq: &[Requant], out: &mut [i8]) {
    assert!(
        Isa::Avx512.available(),
        "avx512/gemm-dot on a CPU without AVX-512"
    );
    check_linear("avx512/gemm-dot", x.len(), m, d, rq.len(), out.len());
    // SAFETY: the level is available (checked above); lengths checked,
    // and 16 * k < 2^31 since k <= MAX_K.
    unsafe { linear(x, m, d, rq, out) }
}
