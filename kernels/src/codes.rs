//! Zero-free sign/power-of-two weight codes and their packed layout.
//!
//! A `b`-bit code is `sign << (b-1) | p`: the top bit is the sign (1 means
//! negative) and the low `b-1` bits the exponent `p`, so
//! `w = (1 - 2*sign) * 2^p` with `p` in `0 .. 2^(b-1)`. No code means zero.
//!
//! Packed layout (`PackedRows`): one row per output channel, `k` codes per
//! row, written as a little-endian bit stream (code `i` of a row occupies
//! bits `i*b .. i*b + b` counted from bit 0 of the row's first byte). Each
//! row starts on a byte boundary, so rows can be handed to threads and
//! kernels independently; `row_bytes = ceil(k*b/8)`.

/// Bits per weight code. DenseShift uses 2 to 4; with `b <= 4` every term
/// `x << p` of an int8 activation fits an `i16` lane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bits {
    /// 2 bits: weights in {±1, ±2}.
    B2 = 2,
    /// 3 bits: weights in {±1, ±2, ±4, ±8}.
    B3 = 3,
    /// 4 bits: weights in {±1, ±2, ..., ±128}.
    B4 = 4,
}

impl Bits {
    /// The code width for `b` bits, or `None` outside 2..=4.
    pub const fn new(b: u32) -> Option<Bits> {
        match b {
            2 => Some(Bits::B2),
            3 => Some(Bits::B3),
            4 => Some(Bits::B4),
            _ => None,
        }
    }

    /// Number of bits per code.
    #[inline]
    pub const fn get(self) -> u32 {
        self as u32
    }

    /// Largest exponent: `2^(b-1) - 1`.
    #[inline]
    pub const fn max_exp(self) -> u32 {
        (1 << (self.get() - 1)) - 1
    }

    /// Bytes needed for one packed row of `k` codes.
    #[inline]
    pub const fn row_bytes(self, k: usize) -> usize {
        (k * self.get() as usize).div_ceil(8)
    }

    /// Encode a sign (`true` = negative) and an exponent (`p <= max_exp`).
    #[inline]
    pub const fn encode(self, negative: bool, p: u32) -> u8 {
        debug_assert!(p <= self.max_exp());
        ((negative as u8) << (self.get() - 1)) | p as u8
    }

    /// Split a code into (negative, exponent).
    #[inline]
    pub const fn decode(self, code: u8) -> (bool, u32) {
        let b = self.get();
        (((code >> (b - 1)) & 1) == 1, (code as u32) & self.max_exp())
    }

    /// The integer weight `s * 2^p` of a code.
    #[inline]
    pub const fn value(self, code: u8) -> i32 {
        let (neg, p) = self.decode(code);
        let m = 1i32 << p;
        if neg {
            -m
        } else {
            m
        }
    }

    /// The code nearest to `w / scale` in the log domain (`|w|/scale`
    /// rounded to the nearest power of two, clamped to the code range).
    /// Zero maps to `+1`: codes have no zero.
    pub fn nearest(self, w: f32, scale: f32) -> u8 {
        let neg = w < 0.0;
        let a = if scale > 0.0 { (w / scale).abs() } else { 0.0 };
        let mut best = 0u32;
        let mut best_err = f32::INFINITY;
        for p in 0..=self.max_exp() {
            let err = (a - (1u32 << p) as f32).abs();
            if err < best_err {
                best_err = err;
                best = p;
            }
        }
        self.encode(neg, best)
    }
}

/// Read-only view of packed code rows (`rows x k` codes of `bits` each).
#[derive(Clone, Copy, Debug)]
pub struct PackedRows<'a> {
    data: &'a [u8],
    bits: Bits,
    rows: usize,
    k: usize,
}

/// Why a byte slice is not a valid packed code matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackedSizeError {
    /// Bytes the shape needs.
    pub expected: usize,
    /// Bytes given.
    pub actual: usize,
}

impl<'a> PackedRows<'a> {
    /// View `data` as `rows` packed rows of `k` codes; the length must be
    /// exactly `rows * bits.row_bytes(k)`.
    pub fn new(data: &'a [u8], bits: Bits, rows: usize, k: usize) -> Result<Self, PackedSizeError> {
        let expected = rows.checked_mul(bits.row_bytes(k)).ok_or(PackedSizeError {
            expected: usize::MAX,
            actual: data.len(),
        })?;
        if data.len() != expected {
            return Err(PackedSizeError {
                expected,
                actual: data.len(),
            });
        }
        Ok(PackedRows {
            data,
            bits,
            rows,
            k,
        })
    }

    /// Code width.
    #[inline]
    pub fn bits(&self) -> Bits {
        self.bits
    }
    /// Number of rows (output channels).
    #[inline]
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Codes per row.
    #[inline]
    pub fn k(&self) -> usize {
        self.k
    }
    /// The packed bytes.
    #[inline]
    pub fn bytes(&self) -> &'a [u8] {
        self.data
    }

    /// The packed bytes of row `r`.
    #[inline]
    pub fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.bits.row_bytes(self.k);
        &self.data[r * rb..(r + 1) * rb]
    }

    /// Code `i` of row `r`.
    #[inline]
    pub fn get(&self, r: usize, i: usize) -> u8 {
        code_at(self.row(r), self.bits, i)
    }

    /// The rows `start .. start + n` as their own view (for splitting work
    /// across threads by output channel).
    pub fn sub_rows(&self, start: usize, n: usize) -> PackedRows<'a> {
        let rb = self.bits.row_bytes(self.k);
        PackedRows {
            data: &self.data[start * rb..(start + n) * rb],
            bits: self.bits,
            rows: n,
            k: self.k,
        }
    }
}

/// Code `i` of a packed row.
#[inline]
pub fn code_at(row: &[u8], bits: Bits, i: usize) -> u8 {
    let b = bits.get() as usize;
    let bit = i * b;
    let byte = bit / 8;
    let off = bit % 8;
    // A code may straddle two bytes when b does not divide 8 (b = 3).
    let lo = row[byte] as u16;
    let hi = if off + b > 8 { row[byte + 1] as u16 } else { 0 };
    (((lo | (hi << 8)) >> off) & ((1 << b) - 1)) as u8
}

/// Pack `codes` (`rows * k`, row-major, each `< 2^b`) into `out`
/// (`rows * bits.row_bytes(k)` bytes, zeroed first).
pub fn pack(codes: &[u8], bits: Bits, rows: usize, k: usize, out: &mut [u8]) {
    let rb = bits.row_bytes(k);
    assert_eq!(codes.len(), rows * k, "pack: codes length");
    assert_eq!(out.len(), rows * rb, "pack: output length");
    out.fill(0);
    let b = bits.get() as usize;
    for r in 0..rows {
        let row = &mut out[r * rb..(r + 1) * rb];
        for i in 0..k {
            let c = (codes[r * k + i] & ((1 << b) - 1) as u8) as u16;
            let bit = i * b;
            let v = c << (bit % 8);
            row[bit / 8] |= v as u8;
            if bit % 8 + b > 8 {
                row[bit / 8 + 1] |= (v >> 8) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    extern crate std;
    use std::{vec, vec::Vec};

    #[test]
    fn encode_decode_all_codes() {
        for bits in [Bits::B2, Bits::B3, Bits::B4] {
            for code in 0..(1u8 << bits.get()) {
                let (neg, p) = bits.decode(code);
                assert_eq!(bits.encode(neg, p), code);
                let v = bits.value(code);
                assert_ne!(v, 0, "codes are zero-free");
                assert_eq!(v.unsigned_abs(), 1 << p);
                assert_eq!(v < 0, neg);
            }
        }
        assert_eq!(Bits::B3.value(0b011), 8);
        assert_eq!(Bits::B3.value(0b111), -8);
        assert_eq!(Bits::B2.value(0b10), -1);
    }

    #[test]
    fn nearest_is_log_nearest_in_range() {
        let b = Bits::B3;
        assert_eq!(b.value(b.nearest(3.1, 1.0)), 4);
        assert_eq!(b.value(b.nearest(2.9, 1.0)), 2);
        assert_eq!(b.value(b.nearest(-100.0, 1.0)), -8);
        assert_eq!(b.value(b.nearest(0.0, 1.0)), 1);
        assert_eq!(b.value(b.nearest(-0.1, 0.5)), -1);
    }

    #[test]
    fn pack_roundtrip_odd_lengths() {
        for bits in [Bits::B2, Bits::B3, Bits::B4] {
            for k in [1usize, 3, 7, 8, 9, 17, 64, 65] {
                let rows = 3;
                let codes: Vec<u8> = (0..rows * k)
                    .map(|i| ((i * 7 + 3) % (1 << bits.get())) as u8)
                    .collect();
                let mut out = vec![0u8; rows * bits.row_bytes(k)];
                pack(&codes, bits, rows, k, &mut out);
                let v = PackedRows::new(&out, bits, rows, k).unwrap();
                for r in 0..rows {
                    for i in 0..k {
                        assert_eq!(
                            v.get(r, i),
                            codes[r * k + i],
                            "bits {bits:?} k {k} r {r} i {i}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn packed_view_checks_length() {
        assert!(PackedRows::new(&[0u8; 5], Bits::B3, 2, 9).is_err());
        assert!(PackedRows::new(&[0u8; 8], Bits::B3, 2, 9).is_ok());
    }
}
