//! Kernels for Cortex-M with the DSP extension ([`Isa::Dsp`]: M4, M7, and
//! M33/M55/M85 built with DSP), bit-identical with [`crate::scalar`].
//!
//! Activations are gathered as int16 by the shared driver (`patch`); each
//! kernel consumes them two taps per word.
//!
//! * `dot` ([`conv_dot_i8`]): a row's packed codes are read 8 at a time (`b`
//!   bytes, one unaligned load) and turned, two codes at a time, into a
//!   pair of int16 weights `±2^p` by one lookup in a table of `2^(2b)`
//!   words; `SMLAD` (dual 16x16 multiply-accumulate) then adds both
//!   products to each of four pixels' accumulators: 35 instructions per
//!   32 MACs in the inner loop (`fast4`), 2.1 to 2.4 per MAC for whole
//!   3x3 layers with gathering and requantization. Every term `x * ±2^p`
//!   is exact in int32, as in `scalar`.
//! * `shift` ([`conv_shift_i8`]): multiplication-free, `(x << p) ^ m` plus
//!   the count of negative codes (`m = -1` for a negative weight, and
//!   `v ^ -1 = -v - 1`). Thumb-2 has no register-shifted add, so a tap
//!   costs a sign extension, a shift, an XOR and an add per pixel: 3.6
//!   times the instructions of `dot` on the Fashion-MNIST layers (measured
//!   under qemu with `-icount` by the firmware's `kernel-test`, see
//!   `firmware/README.md`). Registered for a forced `shift` family (no
//!   multiplier), never chosen by default.
//! * `w8` ([`conv_w8_i8`]): layers kept at int8 weights (first conv, last
//!   linear), pairs of int8 weights sign-extended into int16 pairs for
//!   `SMLAD`.
//!
//! [`Isa::Dsp`]: crate::dispatch::Isa::Dsp

use core::arch::asm;

use super::patch::{self, RowDot};
use crate::{scalar, Bits, Conv2dGeom, PackedRows, Requant};

/// `acc + lo(x) * lo(y) + hi(x) * hi(y)` on signed int16 halves, wrapping
/// (the Q flag it may set is never read).
#[inline(always)]
fn smlad(x: u32, y: u32, acc: i32) -> i32 {
    let r: i32;
    // SAFETY: SMLAD is register-only arithmetic, present on every core
    // this module is compiled for (`cfg(shiftnn_dsp)`); it reads and
    // writes no memory and leaves the stack alone.
    unsafe {
        asm!(
            "smlad {r}, {x}, {y}, {a}",
            r = lateout(reg) r,
            x = in(reg) x,
            y = in(reg) y,
            a = in(reg) acc,
            options(pure, nomem, nostack),
        );
    }
    r
}

/// The int16 weight of a `b`-bit code, as [`Bits::value`].
const fn code_value(b: u32, c: u32) -> i32 {
    match Bits::new(b) {
        Some(bits) => bits.value(c as u8),
        None => 0,
    }
}

/// Offsets of the tables for b = 2, 3, 4 in [`PAIRS`].
const PAIR_OFF: [usize; 3] = [0, 16, 16 + 64];

/// Weight-pair tables: for `b` bits, entry `i` (code `lo` in the low `b`
/// bits of `i`, code `hi` above) holds `value(lo)` in the low int16 half
/// and `value(hi)` in the high half. 336 words of flash.
static PAIRS: [u32; 16 + 64 + 256] = pair_tables();

const fn pair_tables() -> [u32; 336] {
    let mut t = [0u32; 336];
    let mut b = 2;
    while b <= 4 {
        let off = PAIR_OFF[b as usize - 2];
        let mut i = 0u32;
        while i < 1 << (2 * b) {
            let lo = code_value(b, i & ((1 << b) - 1));
            let hi = code_value(b, i >> b);
            t[off + i as usize] = (lo as u16 as u32) | ((hi as u32) << 16);
            i += 1;
        }
        b += 1;
    }
    t
}

/// The `g`-th group of 8 codes of `bytes` (`b` bytes each) as the low
/// `8 * B` bits of a word; codes past the end of `bytes` read as 0.
#[inline(always)]
fn group<const B: usize>(bytes: &[u8], g: usize, fast: bool) -> u32 {
    let o = g * B;
    if fast {
        // SAFETY: `fast` means `o + 4 <= bytes.len()` (see `nfast`); the
        // Cortex-M cores of this module load unaligned words.
        unsafe { bytes.as_ptr().add(o).cast::<u32>().read_unaligned() }
    } else {
        let mut t = [0u8; 4];
        let rest = bytes.get(o..).unwrap_or(&[]);
        let m = rest.len().min(4);
        t[..m].copy_from_slice(&rest[..m]);
        u32::from_le_bytes(t)
    }
}

/// Groups `0 .. nfast` of a chunk that can be read with one 4-byte load.
#[inline(always)]
fn nfast<const B: usize>(bytes: &[u8], ng: usize) -> usize {
    if bytes.len() >= 4 {
        ((bytes.len() - 4) / B + 1).min(ng)
    } else {
        0
    }
}

/// `acc[j] += SMLAD(x[j], w)` for the `NP` pixels of a tile (their words
/// of one pair are adjacent).
///
/// # Safety
/// `x .. x + NP` is readable.
#[inline(always)]
unsafe fn mac<const NP: usize>(acc: &mut [i32; NP], x: *const u32, w: u32) {
    // Size-optimized builds (`opt-level = "s"`, usual on Cortex-M) keep
    // constant-count loops rolled: the four-pixel case is spelled out.
    if NP == 4 {
        let a = acc.as_mut_ptr();
        // SAFETY: `a .. a + 4` is `acc`; the `x` reads are the caller's.
        unsafe {
            *a = smlad(*x, w, *a);
            *a.add(1) = smlad(*x.add(1), w, *a.add(1));
            *a.add(2) = smlad(*x.add(2), w, *a.add(2));
            *a.add(3) = smlad(*x.add(3), w, *a.add(3));
        }
    } else {
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: the caller's.
            *a = smlad(unsafe { *x.add(j) }, w, *a);
        }
    }
}

/// The multiplication-free counterpart of [`mac`]: the two taps of each
/// pixel's word, `((x << p) ^ m)` each (`m = -1` for a negative weight).
///
/// # Safety
/// As [`mac`].
#[inline(always)]
unsafe fn mac_shift<const NP: usize>(
    acc: &mut [i32; NP],
    x: *const u32,
    p0: u32,
    m0: i32,
    p1: u32,
    m1: i32,
) {
    let term = |xv: u32| {
        let xv = xv as i32;
        (((xv << 16) >> 16 << p0) ^ m0) + (((xv >> 16) << p1) ^ m1)
    };
    if NP == 4 {
        let a = acc.as_mut_ptr();
        // SAFETY: as in `mac`.
        unsafe {
            *a += term(*x);
            *a.add(1) += term(*x.add(1));
            *a.add(2) += term(*x.add(2));
            *a.add(3) += term(*x.add(3));
        }
    } else {
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: the caller's.
            *a += term(unsafe { *x.add(j) });
        }
    }
}

/// The `dot` inner loop for four pixels over `n >= 1` groups of 8 codes
/// read with one (unaligned) word load each, `B` bytes apart: per pair of
/// codes one `UBFX` and one table load give the weight pair, two `LDRD`
/// the four pixels' activation pairs, four `SMLAD` the sums; 35
/// instructions per 32 MACs. Written out because the compiler's version
/// spills the accumulators (Thumb-2 has 12 registers for it).
///
/// # Safety
/// `codes .. codes + B * (n - 1) + 4` and `x .. x + 16 * n` are readable;
/// `tab` has `1 << 2B` entries (checked).
#[inline(always)]
unsafe fn fast4<const B: usize>(
    acc: &mut [i32; 4],
    codes: *const u8,
    n: usize,
    tab: &[u32],
    x: *const u32,
) {
    assert!(n >= 1 && tab.len() >= 1 << (2 * B));
    let [mut a0, mut a1, mut a2, mut a3] = *acc;
    // SAFETY: the loop reads `n` code words and `16 * n` activation words
    // (the caller's guarantee) and table entries `< 1 << 2B` (masked by
    // UBFX, length checked above); it writes only registers.
    unsafe {
        asm!(
            "2:",
            "ldr {v}, [{cp}], #{b}",
            "ubfx {w}, {v}, #0, #{wd}",
            "ldr {w}, [{tab}, {w}, lsl #2]",
            "ldrd {x0}, {x1}, [{xp}], #8",
            "smlad {a0}, {x0}, {w}, {a0}",
            "smlad {a1}, {x1}, {w}, {a1}",
            "ldrd {x0}, {x1}, [{xp}], #8",
            "smlad {a2}, {x0}, {w}, {a2}",
            "smlad {a3}, {x1}, {w}, {a3}",
            "ubfx {w}, {v}, #{wd}, #{wd}",
            "ldr {w}, [{tab}, {w}, lsl #2]",
            "ldrd {x0}, {x1}, [{xp}], #8",
            "smlad {a0}, {x0}, {w}, {a0}",
            "smlad {a1}, {x1}, {w}, {a1}",
            "ldrd {x0}, {x1}, [{xp}], #8",
            "smlad {a2}, {x0}, {w}, {a2}",
            "smlad {a3}, {x1}, {w}, {a3}",
            "ubfx {w}, {v}, #{wd2}, #{wd}",
            "ldr {w}, [{tab}, {w}, lsl #2]",
            "ldrd {x0}, {x1}, [{xp}], #8",
            "smlad {a0}, {x0}, {w}, {a0}",
            "smlad {a1}, {x1}, {w}, {a1}",
            "ldrd {x0}, {x1}, [{xp}], #8",
            "smlad {a2}, {x0}, {w}, {a2}",
            "smlad {a3}, {x1}, {w}, {a3}",
            "ubfx {w}, {v}, #{wd3}, #{wd}",
            "ldr {w}, [{tab}, {w}, lsl #2]",
            "ldrd {x0}, {x1}, [{xp}], #8",
            "smlad {a0}, {x0}, {w}, {a0}",
            "smlad {a1}, {x1}, {w}, {a1}",
            "ldrd {x0}, {x1}, [{xp}], #8",
            "smlad {a2}, {x0}, {w}, {a2}",
            "smlad {a3}, {x1}, {w}, {a3}",
            "cmp {cp}, {end}",
            "bne 2b",
            b = const B,
            wd = const 2 * B,
            wd2 = const 4 * B,
            wd3 = const 6 * B,
            a0 = inout(reg) a0,
            a1 = inout(reg) a1,
            a2 = inout(reg) a2,
            a3 = inout(reg) a3,
            cp = inout(reg) codes => _,
            xp = inout(reg) x => _,
            end = in(reg) codes.wrapping_add(B * n),
            tab = in(reg) tab.as_ptr(),
            v = out(reg) _,
            w = out(reg) _,
            x0 = out(reg) _,
            x1 = out(reg) _,
            options(nostack, readonly),
        );
    }
    *acc = [a0, a1, a2, a3];
}

/// `dot` over one chunk: see the module docs.
#[inline(always)]
fn dot_codes<const B: usize, const NP: usize>(bytes: &[u8], kc: usize, xs: &[u32]) -> [i32; NP] {
    let mask = (1u32 << (2 * B)) - 1;
    // Constant per `B`: `base + mask < PAIRS.len()`, no bounds check.
    let base = PAIR_OFF[B - 2];
    let ng = kc.div_ceil(8);
    assert!(xs.len() >= 4 * ng * NP);
    let nf = nfast::<B>(bytes, ng);
    let mut acc = [0i32; NP];
    let x0 = xs.as_ptr();
    let mut g0 = 0;
    if NP == 4 && nf > 0 {
        let a = acc.as_mut_ptr();
        // SAFETY: `a .. a + 4` is `acc` (NP = 4); `fast4` reads words
        // `0 .. 16 * nf <= 4 * ng * NP <= xs.len()` and bytes
        // `0 .. B * (nf - 1) + 4 <= bytes.len()` (`nfast`).
        unsafe {
            fast4::<B>(
                &mut *a.cast::<[i32; 4]>(),
                bytes.as_ptr(),
                nf,
                &PAIRS[base..],
                x0,
            )
        };
        g0 = nf;
    }
    // One loop (closures called twice are not inlined at opt-level "s").
    for gi in g0..ng {
        let v = group::<B>(bytes, gi, gi < nf);
        let w = |i: usize| PAIRS[base + ((v >> (2 * B * i)) & mask) as usize];
        // SAFETY: the group's pairs are words `4 * gi * NP .. 4 * (gi +
        // 1) * NP <= 4 * ng * NP <= xs.len()` (assert above).
        unsafe {
            let x = x0.add(4 * gi * NP);
            mac(&mut acc, x, w(0));
            mac(&mut acc, x.add(NP), w(1));
            mac(&mut acc, x.add(2 * NP), w(2));
            mac(&mut acc, x.add(3 * NP), w(3));
        }
    }
    acc
}

/// `shift` over one chunk: see the module docs.
#[inline(always)]
fn dot_shift<const B: usize, const NP: usize>(bytes: &[u8], kc: usize, xs: &[u32]) -> [i32; NP] {
    let ng = kc.div_ceil(8);
    assert!(xs.len() >= 4 * ng * NP);
    let pmask = (1u32 << (B - 1)) - 1;
    let nf = nfast::<B>(bytes, ng);
    let mut acc = [0i32; NP];
    let mut neg = 0i32;
    let x0 = xs.as_ptr();
    for gi in 0..ng {
        let v = group::<B>(bytes, gi, gi < nf);
        let mut pair = |i: usize| {
            // Two taps per word: low half, then high half.
            let c0 = v >> (2 * B * i);
            let c1 = c0 >> B;
            let m0 = -(((c0 >> (B - 1)) & 1) as i32);
            let m1 = -(((c1 >> (B - 1)) & 1) as i32);
            neg += m0 + m1;
            // SAFETY: as in `dot_codes`.
            unsafe {
                mac_shift(
                    &mut acc,
                    x0.add((4 * gi + i) * NP),
                    c0 & pmask,
                    m0,
                    c1 & pmask,
                    m1,
                )
            };
        };
        pair(0);
        pair(1);
        pair(2);
        pair(3);
    }
    // Each negative term was `-t - 1`.
    acc.map(|a| a - neg)
}

/// Row kernels over packed codes.
struct Codes<'a, 'w> {
    w: &'a PackedRows<'w>,
    mult_free: bool,
}

impl RowDot for Codes<'_, '_> {
    #[inline]
    fn dot<const NP: usize>(&self, r: usize, c0: usize, kc: usize, xs: &[u32]) -> [i32; NP] {
        let bits = self.w.bits();
        // `c0` is a multiple of 8: the chunk starts on a byte.
        let bytes = &self.w.row(r)[c0 * bits.get() as usize / 8..];
        match (bits, self.mult_free) {
            (Bits::B2, false) => dot_codes::<2, NP>(bytes, kc, xs),
            (Bits::B3, false) => dot_codes::<3, NP>(bytes, kc, xs),
            (Bits::B4, false) => dot_codes::<4, NP>(bytes, kc, xs),
            (Bits::B2, true) => dot_shift::<2, NP>(bytes, kc, xs),
            (Bits::B3, true) => dot_shift::<3, NP>(bytes, kc, xs),
            (Bits::B4, true) => dot_shift::<4, NP>(bytes, kc, xs),
        }
    }
}

/// Row kernel over int8 weights (`k` per row).
struct W8<'a> {
    w: &'a [i8],
    k: usize,
}

impl RowDot for W8<'_> {
    #[inline]
    fn dot<const NP: usize>(&self, r: usize, c0: usize, kc: usize, xs: &[u32]) -> [i32; NP] {
        let row = &self.w[r * self.k + c0..][..kc];
        assert!(xs.len() >= kc.div_ceil(2) * NP);
        let mut acc = [0i32; NP];
        let x0 = xs.as_ptr();
        for i in 0..kc.div_ceil(2) {
            // The patch is zero past `kc`: a missing last weight is moot.
            let (w0, w1) = (row[2 * i], row.get(2 * i + 1).copied().unwrap_or(0));
            let wp = (w0 as i16 as u16 as u32) | ((w1 as i32 as u32) << 16);
            // SAFETY: pair `i`'s words `i * NP .. (i + 1) * NP <=
            // ceil(kc / 2) * NP <= xs.len()` (assert above).
            unsafe { mac(&mut acc, x0.add(i * NP), wp) };
        }
        acc
    }
}

/// The argument checks of the scalar kernels (same panics).
fn check(g: &Conv2dGeom, x: &[i8], n: usize, oc0: usize, rq: &[Requant], out: &[i8]) {
    assert!(oc0 + n <= g.c_out, "channel range out of bounds");
    assert_eq!(out.len(), n * g.out_plane(), "output length");
    assert_eq!(rq.len(), n);
    assert_eq!(x.len(), g.in_len());
}

/// Int8 conv with shift weights, `SMLAD` on decoded weight pairs
/// (`dsp/dot`); equal to [`scalar::conv_shift_i8`] bit for bit.
pub fn conv_dot_i8(
    g: &Conv2dGeom,
    x: &[i8],
    w: &PackedRows,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    shift_conv(g, x, w, oc0, rq, out, false)
}

/// Int8 conv with shift weights, multiplication-free (`dsp/shift`); equal
/// to [`scalar::conv_shift_i8`] bit for bit.
pub fn conv_shift_i8(
    g: &Conv2dGeom,
    x: &[i8],
    w: &PackedRows,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    shift_conv(g, x, w, oc0, rq, out, true)
}

fn shift_conv(
    g: &Conv2dGeom,
    x: &[i8],
    w: &PackedRows,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
    mult_free: bool,
) {
    check(g, x, w.rows(), oc0, rq, out);
    assert_eq!(w.k(), g.k());
    let plane = g.out_plane();
    let kern = Codes { w, mult_free };
    let done = patch::conv(g, x, w.rows(), oc0, &kern, |r, q, acc| {
        out[r * plane + q] = rq[r].apply(acc)
    });
    if !done {
        scalar::conv_shift_i8(g, x, w, oc0, rq, out);
    }
}

/// Int8 conv with int8 weights (`dsp/w8`); equal to
/// [`scalar::conv_w8_i8`] bit for bit.
pub fn conv_w8_i8(g: &Conv2dGeom, x: &[i8], w: &[i8], oc0: usize, rq: &[Requant], out: &mut [i8]) {
    let k = g.k();
    let n = w.len() / k.max(1);
    assert_eq!(w.len(), n * k);
    check(g, x, n, oc0, rq, out);
    let plane = g.out_plane();
    let kern = W8 { w, k };
    let done = patch::conv(g, x, n, oc0, &kern, |r, q, acc| {
        out[r * plane + q] = rq[r].apply(acc)
    });
    if !done {
        scalar::conv_w8_i8(g, x, w, oc0, rq, out);
    }
}
