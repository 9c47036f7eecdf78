//! Shift codes regrouped once, at load, by exponent and sign, for the
//! multiplication-free pixel-lane GEMM (`avx512/gemm-shift`,
//! `crate::x86_64::gemm_shift::conv_gemm_shift_i8`).
//!
//! A row's sum factors by exponent:
//! `sum_k s_k x_k 2^(p_k) = sum_p 2^p (sum_{k in L(p,+)} x_k - sum_{k in L(p,-)} x_k)`.
//! With output pixels in the lanes, each inner sum is one add (or
//! subtract) of a whole vector of activations per weight, with no shift
//! and no sign work per weight: the shift by `p` happens once per list.
//! An `i16` lane holds 255 activations of magnitude at most 128, so the
//! kernel widens its list sums to `i32` every 255 entries and at each
//! list's end. Nothing multiplies, so this is the `shift` family.
//!
//! The layout ([`ExpLists`]): for row `r`, the `2P` lists (`P = 2^(b-1)`
//! exponents; list `s * P + p` holds the weight indices of sign `s`
//! (0 positive) and exponent `p`, ascending) are the ranges
//! `idx[at[r * 2P + j] .. at[r * 2P + j + 1]]`. Every weight is in exactly
//! one list, so `idx` holds `n * k` indices of 2 bytes: 4x the file's
//! 4-bit codes, decoded only for the layers this kernel runs.
//!
//! Cutting each row's lists into chunks of `k` (so that a group of rows
//! could run over one L1-sized chunk of the panel) measured slower on
//! every ResNet layer, the 512-channel 3x3 included (its 288 KiB panel
//! streams from L2 fast enough): 47-63 against 63-75 G MAC/s.

use crate::{Bits, Conv2dGeom, PackedRows, Requant};

/// Largest `k` of the exponent-list GEMM: its activation panel of 64
/// pixels (64 bytes per weight) lives on the stack, in 288 KiB.
pub const MAX_K: usize = 4608;

/// Why an exponent-list layout is inconsistent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListsError {
    /// `at` is not `rows * 2P + 1` non-decreasing offsets within `idx`.
    Offsets,
    /// An index is not below `k`.
    Index,
}

/// Read-only view of exponent lists (see the module documentation).
#[derive(Clone, Copy, Debug)]
pub struct ExpLists<'a> {
    idx: &'a [u16],
    at: &'a [u32],
    rows: usize,
    k: usize,
    bits: Bits,
}

impl<'a> ExpLists<'a> {
    /// View `rows` rows of `k` weights of `bits`-bit codes; checks every
    /// offset and index.
    pub fn new(
        idx: &'a [u16],
        at: &'a [u32],
        rows: usize,
        k: usize,
        bits: Bits,
    ) -> Result<Self, ListsError> {
        let lists = 2 * (bits.max_exp() as usize + 1);
        let n_at = rows.checked_mul(lists).and_then(|v| v.checked_add(1));
        if Some(at.len()) != n_at
            || at.windows(2).any(|p| p[0] > p[1])
            || at[at.len() - 1] as usize > idx.len()
        {
            return Err(ListsError::Offsets);
        }
        let (a, b) = (at[0] as usize, at[at.len() - 1] as usize);
        if idx[a..b].iter().any(|&i| i as usize >= k) {
            return Err(ListsError::Index);
        }
        Ok(ExpLists {
            idx,
            at,
            rows,
            k,
            bits,
        })
    }

    /// [`ExpLists::new`] without its checks, which read every index (a
    /// tenth of a millisecond per million weights: too slow to repeat on
    /// every inference).
    ///
    /// # Safety
    /// The same arguments passed [`ExpLists::new`] before (kernels read
    /// their activation panel at the indices unchecked).
    pub unsafe fn new_unchecked(
        idx: &'a [u16],
        at: &'a [u32],
        rows: usize,
        k: usize,
        bits: Bits,
    ) -> Self {
        debug_assert!(ExpLists::new(idx, at, rows, k, bits).is_ok());
        ExpLists {
            idx,
            at,
            rows,
            k,
            bits,
        }
    }

    /// Number of rows.
    #[inline]
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Weights per row.
    #[inline]
    pub fn k(&self) -> usize {
        self.k
    }

    /// Exponents `P` (lists per sign).
    #[inline]
    pub fn exps(&self) -> usize {
        self.bits.max_exp() as usize + 1
    }

    /// The weight indices of row `r` with sign `neg` and exponent `p`.
    #[inline]
    pub fn list(&self, r: usize, neg: bool, p: usize) -> &'a [u16] {
        let j = r * 2 * self.exps() + neg as usize * self.exps() + p;
        &self.idx[self.at[j] as usize..self.at[j + 1] as usize]
    }

    /// Rows `start .. start + n`.
    pub fn sub_rows(&self, start: usize, n: usize) -> ExpLists<'a> {
        let l = 2 * self.exps();
        ExpLists {
            idx: self.idx,
            at: &self.at[start * l..(start + n) * l + 1],
            rows: n,
            k: self.k,
            bits: self.bits,
        }
    }
}

/// Offsets [`decode`] writes for `w`: `rows * 2P + 1`.
pub fn offsets_len(w: &PackedRows) -> usize {
    w.rows() * 2 * (w.bits().max_exp() as usize + 1) + 1
}

/// Regroup `w` into the layout of [`ExpLists`]: `idx` holds `rows * k`
/// indices and `at` [`offsets_len`] offsets. Panics on other lengths or
/// if `k` exceeds `u16` indices.
pub fn decode(w: &PackedRows, idx: &mut [u16], at: &mut [u32]) {
    let (n, k, bits) = (w.rows(), w.k(), w.bits());
    assert!(k <= 1 << 16, "exponent lists: k above 65536");
    assert_eq!(idx.len(), n * k, "exponent lists: index length");
    assert_eq!(at.len(), offsets_len(w), "exponent lists: offsets length");
    let lists = 2 * (bits.max_exp() as usize + 1);
    let mut o = 0usize;
    for r in 0..n {
        for j in 0..lists {
            at[r * lists + j] = o as u32;
            for i in 0..k {
                let (neg, p) = bits.decode(w.get(r, i));
                if neg as usize * (lists / 2) + p as usize == j {
                    idx[o] = i as u16;
                    o += 1;
                }
            }
        }
    }
    at[n * lists] = o as u32;
}

/// True when the exponent-list GEMM runs layer `g`: the layers of the
/// `vpdpbusd` GEMM ([`crate::gemm::applies`]) up to [`MAX_K`].
pub const fn applies(g: &Conv2dGeom) -> bool {
    crate::gemm::applies(g) && g.k() <= MAX_K
}

/// The reference of the layout: equal to [`crate::scalar::conv_shift_i8`]
/// on the codes `l` was decoded from.
pub fn conv_lists_i8(
    g: &Conv2dGeom,
    x: &[i8],
    l: &ExpLists,
    oc0: usize,
    rq: &[Requant],
    out: &mut [i8],
) {
    assert_eq!(l.k(), g.k(), "exponent lists: k");
    crate::dispatch::check_call(g, x.len(), l.k(), l.rows(), oc0, rq.len(), out.len());
    let (oh, ow) = (g.out_h(), g.out_w());
    // Each row's weights back from its lists, a window of them at a time.
    const WIN: usize = 512;
    let mut wt = [0i32; WIN];
    for r in 0..l.rows() {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = 0i32;
                for c in 0..g.k().div_ceil(WIN) {
                    let win = c * WIN..(c + 1) * WIN;
                    for neg in [false, true] {
                        for p in 0..l.exps() {
                            for &i in l.list(r, neg, p) {
                                if win.contains(&(i as usize)) {
                                    let v = 1i32 << p;
                                    wt[i as usize - win.start] = if neg { -v } else { v };
                                }
                            }
                        }
                    }
                    g.for_each_tap(oc0 + r, oy, ox, |xi, ki| {
                        if win.contains(&ki) {
                            acc += x[xi] as i32 * wt[ki - win.start];
                        }
                    });
                }
                out[(r * oh + oy) * ow + ox] = rq[r].apply(acc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes::pack;

    extern crate std;
    use std::{vec, vec::Vec};

    #[test]
    fn lists_hold_every_weight_once() {
        for bits in [Bits::B2, Bits::B3, Bits::B4] {
            let (n, k) = (3, 537);
            let codes: Vec<u8> = (0..n * k)
                .map(|i| ((i * 7 + i / 5) % (1 << bits.get())) as u8)
                .collect();
            let mut packed = vec![0u8; n * bits.row_bytes(k)];
            pack(&codes, bits, n, k, &mut packed);
            let w = PackedRows::new(&packed, bits, n, k).unwrap();
            let (mut idx, mut at) = (vec![0u16; n * k], vec![0u32; offsets_len(&w)]);
            decode(&w, &mut idx, &mut at);
            let l = ExpLists::new(&idx, &at, n, k, bits).unwrap();
            for r in 0..n {
                let mut seen = vec![0; k];
                for neg in [false, true] {
                    for p in 0..l.exps() {
                        let list = l.list(r, neg, p);
                        assert!(list.windows(2).all(|a| a[0] < a[1]), "ascending");
                        for &i in list {
                            seen[i as usize] += 1;
                            let v = 1i32 << p;
                            assert_eq!(
                                bits.value(codes[r * k + i as usize]),
                                if neg { -v } else { v }
                            );
                        }
                    }
                }
                assert!(seen.iter().all(|&c| c == 1));
            }
            let s = l.sub_rows(1, 2);
            assert_eq!(s.list(1, true, 0), l.list(2, true, 0));
        }
    }

    #[test]
    fn inconsistent_lists_are_refused() {
        let idx = [0u16, 1, 2];
        let mut at = vec![0u32; 2 * 2 + 1];
        at[4] = 3;
        assert!(ExpLists::new(&idx, &at, 1, 3, Bits::B2).is_ok());
        assert_eq!(
            ExpLists::new(&idx, &at, 1, 2, Bits::B2).err(),
            Some(ListsError::Index)
        );
        at[2] = 4;
        assert_eq!(
            ExpLists::new(&idx, &at, 1, 3, Bits::B2).err(),
            Some(ListsError::Offsets)
        );
        assert_eq!(
            ExpLists::new(&idx, &at[..4], 1, 3, Bits::B2).err(),
            Some(ListsError::Offsets)
        );
    }
}
