//! The uploaded-sample message (no_std): what a device sends on
//! `shiftnn/<fleet>/<device>/samples`.
//!
//! # Format (version 1, all integers and floats little-endian)
//!
//! ```text
//! magic        "SNS" 0x01                    4 bytes (the last byte is the version)
//! fingerprint  u64                           model the sample was scored with
//! boot         u64                           random per device process start
//! seq          u64                           upload queue sequence number
//! entropy      f32                           units of ln C, finite, in [0, 1.5]
//! classes      u32                           1 ..= MAX_CLASSES
//! probs        f32 x classes                 finite, >= 0
//! rank         u32                           0 ..= MAX_RANK
//! shape        u32 x rank                    each >= 1, product 1 ..= MAX_INPUT_ELEMS
//! kind         u8                            0: f32 input, 1: int8 input
//! [scale       f32]                          kind 1 only: finite, > 0
//! data         f32 or i8 x product(shape)
//! ```
//!
//! Nothing may follow the data. [`decode_sample`] checks every length
//! against the bytes present before reading, so a hostile message gives an
//! [`Error::Io`] naming the problem, never a panic or a large allocation.

use crate::error::{Error, Result};
use alloc::{format, string::String, vec::Vec};

/// First four bytes of a version-1 sample message.
pub const SAMPLE_MAGIC: [u8; 4] = *b"SNS\x01";
/// Largest class count accepted.
pub const MAX_CLASSES: usize = 1 << 16;
/// Largest input rank accepted.
pub const MAX_RANK: usize = 8;
/// Largest input element count accepted (16 Mi).
pub const MAX_INPUT_ELEMS: usize = 1 << 24;

/// The input of an uploaded sample.
#[derive(Clone, Debug, PartialEq)]
pub enum SampleInput {
    /// The float input.
    F32(Vec<f32>),
    /// The exact quantized input an int8-mode model saw (`x = q * scale`),
    /// four times smaller than [`SampleInput::F32`].
    I8 {
        /// Real value of one step.
        scale: f32,
        /// Quantized values.
        data: Vec<i8>,
    },
}

impl SampleInput {
    /// The input as floats (int8 values dequantized).
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            SampleInput::F32(v) => v.clone(),
            SampleInput::I8 { scale, data } => data.iter().map(|&q| q as f32 * scale).collect(),
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            SampleInput::F32(v) => v.len(),
            SampleInput::I8 { data, .. } => data.len(),
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One uploaded sample.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleMsg {
    /// [`Model::fingerprint`](crate::Model::fingerprint) of the model that
    /// scored it.
    pub fingerprint: u64,
    /// Random per device process start, so that a sequence restarting at 0
    /// is not taken for duplicates.
    pub boot: u64,
    /// Sequence number in the device's upload queue.
    pub seq: u64,
    /// Softmax entropy the device computed (units of ln C).
    pub entropy: f32,
    /// The device's softmax probabilities.
    pub probs: Vec<f32>,
    /// Input shape (batch 1).
    pub shape: Vec<u32>,
    /// The input.
    pub input: SampleInput,
}

fn bad<T>(m: impl Into<String>) -> Result<T> {
    Err(Error::Io(format!("sample message: {}", m.into())))
}

/// Encode a sample. The encoder does not validate; [`decode_sample`]
/// checks everything on the receiving side.
pub fn encode_sample(m: &SampleMsg) -> Vec<u8> {
    let data_bytes = match &m.input {
        SampleInput::F32(v) => 4 * v.len(),
        SampleInput::I8 { data, .. } => 4 + data.len(),
    };
    let mut b = Vec::with_capacity(45 + 4 * (m.probs.len() + m.shape.len()) + data_bytes);
    b.extend_from_slice(&SAMPLE_MAGIC);
    b.extend_from_slice(&m.fingerprint.to_le_bytes());
    b.extend_from_slice(&m.boot.to_le_bytes());
    b.extend_from_slice(&m.seq.to_le_bytes());
    b.extend_from_slice(&m.entropy.to_le_bytes());
    b.extend_from_slice(&(m.probs.len() as u32).to_le_bytes());
    for p in &m.probs {
        b.extend_from_slice(&p.to_le_bytes());
    }
    b.extend_from_slice(&(m.shape.len() as u32).to_le_bytes());
    for d in &m.shape {
        b.extend_from_slice(&d.to_le_bytes());
    }
    match &m.input {
        SampleInput::F32(v) => {
            b.push(0);
            for x in v {
                b.extend_from_slice(&x.to_le_bytes());
            }
        }
        SampleInput::I8 { scale, data } => {
            b.push(1);
            b.extend_from_slice(&scale.to_le_bytes());
            b.extend(data.iter().map(|&q| q as u8));
        }
    }
    b
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let rest = self.b.len() - self.at;
        if n > rest {
            return bad(format!(
                "truncated: {what} needs {n} bytes at offset {}, {rest} left",
                self.at
            ));
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        let s = self.take(4, what)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        let s = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
    fn f32(&mut self, what: &str) -> Result<f32> {
        Ok(f32::from_bits(self.u32(what)?))
    }
    /// `n` f32 values, checking the byte count first so a hostile `n`
    /// never drives an allocation beyond the message size.
    fn f32s(&mut self, n: usize, what: &str) -> Result<Vec<f32>> {
        let bytes = n
            .checked_mul(4)
            .ok_or_else(|| Error::Io(format!("sample message: {what}: size overflows")))?;
        let s = self.take(bytes, what)?;
        Ok(s.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

/// Decode and validate a sample message (see the module docs).
pub fn decode_sample(b: &[u8]) -> Result<SampleMsg> {
    let mut r = Reader { b, at: 0 };
    let magic = r.take(4, "magic")?;
    if magic[..3] != SAMPLE_MAGIC[..3] {
        return bad("not a shiftnn sample (bad magic)");
    }
    if magic[3] != SAMPLE_MAGIC[3] {
        return bad(format!(
            "format version {} is not supported (expected {})",
            magic[3], SAMPLE_MAGIC[3]
        ));
    }
    let fingerprint = r.u64("fingerprint")?;
    let boot = r.u64("boot")?;
    let seq = r.u64("seq")?;
    let entropy = r.f32("entropy")?;
    if !entropy.is_finite() || !(0.0..=1.5).contains(&entropy) {
        return bad(format!(
            "entropy {entropy} is not finite or not in [0, 1.5]"
        ));
    }
    let classes = r.u32("class count")? as usize;
    if classes == 0 || classes > MAX_CLASSES {
        return bad(format!("class count {classes} not in 1..={MAX_CLASSES}"));
    }
    let probs = r.f32s(classes, "probabilities")?;
    if let Some(i) = probs.iter().position(|p| !p.is_finite() || *p < 0.0) {
        return bad(format!(
            "probability {i} is {} (negative or not finite)",
            probs[i]
        ));
    }
    let rank = r.u32("rank")? as usize;
    if rank > MAX_RANK {
        return bad(format!("rank {rank} exceeds {MAX_RANK}"));
    }
    let mut shape = Vec::with_capacity(rank);
    let mut numel = 1usize;
    for i in 0..rank {
        let d = r.u32("shape")?;
        if d == 0 {
            return bad(format!("dimension {i} is 0"));
        }
        numel = numel.saturating_mul(d as usize);
        shape.push(d);
    }
    if numel > MAX_INPUT_ELEMS {
        return bad(format!(
            "input of {numel} elements exceeds {MAX_INPUT_ELEMS}"
        ));
    }
    let input = match r.u8("input kind")? {
        0 => {
            let v = r.f32s(numel, "input data")?;
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return bad(format!("input element {i} is not finite"));
            }
            SampleInput::F32(v)
        }
        1 => {
            let scale = r.f32("input scale")?;
            if !scale.is_finite() || scale <= 0.0 {
                return bad(format!("input scale {scale} is not finite and positive"));
            }
            let data = r
                .take(numel, "input data")?
                .iter()
                .map(|&q| q as i8)
                .collect();
            SampleInput::I8 { scale, data }
        }
        k => return bad(format!("unknown input kind {k}")),
    };
    if r.at != b.len() {
        return bad(format!("{} trailing bytes", b.len() - r.at));
    }
    Ok(SampleMsg {
        fingerprint,
        boot,
        seq,
        entropy,
        probs,
        shape,
        input,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn msg(input: SampleInput) -> SampleMsg {
        SampleMsg {
            fingerprint: 0x0123_4567_89ab_cdef,
            boot: 42,
            seq: 7,
            entropy: 0.25,
            probs: vec![0.5, 0.25, 0.25],
            shape: vec![1, 2, 3],
            input,
        }
    }

    #[test]
    fn round_trip_both_kinds() {
        let f = msg(SampleInput::F32(vec![0.0, -1.5, 2.0, 1e-3, 4.0, -0.0]));
        assert_eq!(decode_sample(&encode_sample(&f)).unwrap(), f);
        let q = msg(SampleInput::I8 {
            scale: 0.5,
            data: vec![-128, -1, 0, 1, 2, 127],
        });
        let b = encode_sample(&q);
        // Six f32 values (24 bytes) become a scale and six bytes.
        assert_eq!(b.len(), encode_sample(&f).len() - 24 + 4 + 6);
        let d = decode_sample(&b).unwrap();
        assert_eq!(d, q);
        assert_eq!(d.input.to_f32(), vec![-64.0, -0.5, 0.0, 0.5, 1.0, 63.5]);
    }

    #[test]
    fn every_truncation_and_extension_is_an_error() {
        let b = encode_sample(&msg(SampleInput::I8 {
            scale: 1.0,
            data: vec![1; 6],
        }));
        for n in 0..b.len() {
            assert!(decode_sample(&b[..n]).is_err(), "prefix {n}");
        }
        let mut longer = b.clone();
        longer.push(0);
        let e = decode_sample(&longer).unwrap_err();
        assert!(format!("{e}").contains("trailing"), "{e}");
    }

    fn err_of(mut f: impl FnMut(&mut Vec<u8>)) -> String {
        let mut b = encode_sample(&msg(SampleInput::F32(vec![1.0; 6])));
        f(&mut b);
        format!("{}", decode_sample(&b).unwrap_err())
    }

    #[test]
    fn hostile_fields_are_named() {
        // Offsets: magic 0, fingerprint 4, boot 12, seq 20, entropy 28,
        // classes 32, probs 36..48, rank 48, shape 52..64, kind 64.
        assert!(err_of(|b| b[0] = b'X').contains("magic"));
        assert!(err_of(|b| b[3] = 2).contains("version 2"));
        assert!(err_of(|b| b[28..32].copy_from_slice(&f32::NAN.to_le_bytes())).contains("entropy"));
        assert!(err_of(|b| b[28..32].copy_from_slice(&(-1f32).to_le_bytes())).contains("entropy"));
        assert!(err_of(|b| b[32..36].copy_from_slice(&0u32.to_le_bytes())).contains("class count"));
        // A huge class count must fail on length, not allocate.
        assert!(
            err_of(|b| b[32..36].copy_from_slice(&u32::MAX.to_le_bytes())).contains("class count")
        );
        assert!(
            err_of(|b| b[32..36].copy_from_slice(&60000u32.to_le_bytes())).contains("truncated")
        );
        assert!(
            err_of(|b| b[36..40].copy_from_slice(&f32::INFINITY.to_le_bytes()))
                .contains("probability 0")
        );
        assert!(
            err_of(|b| b[40..44].copy_from_slice(&(-0.1f32).to_le_bytes()))
                .contains("probability 1")
        );
        assert!(err_of(|b| b[48..52].copy_from_slice(&9u32.to_le_bytes())).contains("rank"));
        assert!(err_of(|b| b[52..56].copy_from_slice(&0u32.to_le_bytes())).contains("dimension 0"));
        assert!(err_of(|b| b[52..56].copy_from_slice(&u32::MAX.to_le_bytes())).contains("exceeds"));
        assert!(err_of(|b| b[56..60].copy_from_slice(&3u32.to_le_bytes())).contains("truncated"));
        assert!(err_of(|b| b[64] = 7).contains("input kind 7"));
        assert!(
            err_of(|b| b[65..69].copy_from_slice(&f32::NAN.to_le_bytes()))
                .contains("input element 0")
        );
        // int8: scale must be finite and positive.
        let mut q = encode_sample(&msg(SampleInput::I8 {
            scale: 1.0,
            data: vec![0; 6],
        }));
        q[65..69].copy_from_slice(&0f32.to_le_bytes());
        assert!(format!("{}", decode_sample(&q).unwrap_err()).contains("scale"));
    }

    #[test]
    fn random_bytes_never_panic() {
        // A small xorshift so the test is deterministic without a dev-dep.
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let base = encode_sample(&msg(SampleInput::F32(vec![1.0; 6])));
        for i in 0..20_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let mut b = base.clone();
            let flips = 1 + (s % 4) as usize;
            for k in 0..flips {
                let pos = ((s >> (8 * k)) as usize) % b.len();
                b[pos] ^= (s >> 32) as u8 | 1;
            }
            let _ = decode_sample(&b);
            if i % 2 == 0 {
                let n = (s >> 40) as usize % (b.len() + 1);
                let _ = decode_sample(&b[..n]);
            }
        }
    }
}
