//! NumPy `.npy` / `.npz` input and output for the `shiftnn` tool.
//!
//! Reading accepts float arrays (`f4`, `f8`, converted to f32) and integer
//! label arrays (`i1`, `u1`, `i2`, `u2`, `i4`, `u4`, `i8`, `u8`, converted to
//! i64), either byte order, C or Fortran order, format versions 1 to 3.
//! The header is parsed here (not by a general Python-literal parser) and
//! every size is checked against the bytes actually present, so a malformed
//! or truncated file is an error naming the file, never a panic or a huge
//! allocation. `.npz` archives are opened with the `zip` crate (stored or deflated members); each
//! member is read into memory and parsed the same way.
//!
//! Writing produces little-endian f32 arrays in C order (format 1.0).

use anyhow::{anyhow, bail, Context, Result};
use std::io::{Read, Write};
use std::path::Path;

/// Largest accepted header (format 2/3 allow 4 GiB; real headers are tiny).
const MAX_HEADER: usize = 1 << 20;
/// Largest accepted number of dimensions.
const MAX_NDIM: usize = 32;

/// An array of f32 values with its shape (C order).
#[derive(Clone, Debug, PartialEq)]
pub struct ArrayF32 {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

/// An array of integer values (labels) with its shape (C order).
#[derive(Clone, Debug, PartialEq)]
pub struct ArrayI64 {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<i64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Float,
    Int,
    Uint,
}

/// The parsed header of one array.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Header {
    kind: Kind,
    size: usize,
    big_endian: bool,
    fortran: bool,
    shape: Vec<usize>,
    /// Offset of the data.
    data_start: usize,
    /// Element count.
    len: usize,
    descr: String,
}

fn parse_header(b: &[u8]) -> Result<Header> {
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        bail!("not a .npy array (bad magic bytes)");
    }
    let major = b[6];
    let (hlen, hstart) = match major {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 => {
            if b.len() < 12 {
                bail!("truncated .npy header");
            }
            (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12)
        }
        v => bail!("unsupported .npy format version {v}"),
    };
    if hlen > MAX_HEADER || hstart + hlen > b.len() {
        bail!(
            "truncated .npy header ({hlen} header bytes declared, file has {})",
            b.len()
        );
    }
    let text = std::str::from_utf8(&b[hstart..hstart + hlen])
        .map_err(|_| anyhow!("the .npy header is not text"))?;
    let descr = dict_str(text, "descr")?;
    let fortran = match dict_raw(text, "fortran_order")?.trim() {
        s if s.starts_with("True") => true,
        s if s.starts_with("False") => false,
        s => bail!("bad fortran_order value {:?}", first_token(s)),
    };
    let shape = parse_shape(dict_raw(text, "shape")?)?;
    let (big_endian, rest) = match descr.as_bytes().first() {
        Some(b'<') | Some(b'|') | Some(b'=') => (false, &descr[1..]),
        Some(b'>') => (true, &descr[1..]),
        _ => (false, descr.as_str()),
    };
    let (kind, size) = match rest {
        "f4" => (Kind::Float, 4),
        "f8" => (Kind::Float, 8),
        "i1" => (Kind::Int, 1),
        "i2" => (Kind::Int, 2),
        "i4" => (Kind::Int, 4),
        "i8" => (Kind::Int, 8),
        "u1" | "b1" => (Kind::Uint, 1),
        "u2" => (Kind::Uint, 2),
        "u4" => (Kind::Uint, 4),
        "u8" => (Kind::Uint, 8),
        _ => bail!("unsupported dtype '{descr}' (expected float32/float64 or an integer type)"),
    };
    let len = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| anyhow!("shape {shape:?} is too large"))?;
    let data_start = hstart + hlen;
    let need = len
        .checked_mul(size)
        .ok_or_else(|| anyhow!("shape {shape:?} is too large"))?;
    let have = b.len() - data_start;
    if have < need {
        bail!(
            "truncated data: shape {shape:?} of '{descr}' needs {need} bytes, the file has {have}"
        );
    }
    Ok(Header {
        kind,
        size,
        big_endian,
        fortran,
        shape,
        data_start,
        len,
        descr,
    })
}

fn first_token(s: &str) -> &str {
    s.split([',', '}']).next().unwrap_or(s).trim()
}

/// The raw text after `'key':` in the header dict.
fn dict_raw<'a>(text: &'a str, key: &str) -> Result<&'a str> {
    for q in ['\'', '"'] {
        let pat = format!("{q}{key}{q}");
        if let Some(p) = text.find(&pat) {
            let rest = text[p + pat.len()..].trim_start();
            let rest = rest
                .strip_prefix(':')
                .ok_or_else(|| anyhow!("malformed .npy header near '{key}'"))?;
            return Ok(rest.trim_start());
        }
    }
    bail!("the .npy header has no '{key}'")
}

fn dict_str(text: &str, key: &str) -> Result<String> {
    let raw = dict_raw(text, key)?;
    let q = raw
        .chars()
        .next()
        .ok_or_else(|| anyhow!("malformed .npy header near '{key}'"))?;
    if q != '\'' && q != '"' {
        bail!("'{key}' is not a plain dtype string (structured arrays are not supported)");
    }
    let end = raw[1..]
        .find(q)
        .ok_or_else(|| anyhow!("malformed .npy header near '{key}'"))?;
    Ok(raw[1..1 + end].to_string())
}

fn parse_shape(raw: &str) -> Result<Vec<usize>> {
    let raw = raw
        .strip_prefix('(')
        .ok_or_else(|| anyhow!("malformed shape in .npy header"))?;
    let end = raw
        .find(')')
        .ok_or_else(|| anyhow!("malformed shape in .npy header"))?;
    let mut shape = Vec::new();
    for part in raw[..end].split(',') {
        let p = part.trim().trim_end_matches('L');
        if p.is_empty() {
            continue;
        }
        shape.push(
            p.parse::<usize>()
                .map_err(|_| anyhow!("bad dimension {p:?} in .npy shape"))?,
        );
        if shape.len() > MAX_NDIM {
            bail!("too many dimensions in .npy shape");
        }
    }
    Ok(shape)
}

/// Map C-order index -> storage index for a Fortran-ordered array.
fn fortran_to_c<T: Copy>(shape: &[usize], f: Vec<T>) -> Vec<T> {
    if shape.len() < 2 {
        return f;
    }
    // Fortran strides: stride[0] = 1, stride[i] = stride[i-1] * shape[i-1].
    let mut strides = vec![1usize; shape.len()];
    for i in 1..shape.len() {
        strides[i] = strides[i - 1] * shape[i - 1];
    }
    let mut out = Vec::with_capacity(f.len());
    let mut idx = vec![0usize; shape.len()];
    for _ in 0..f.len() {
        let off: usize = idx.iter().zip(&strides).map(|(i, s)| i * s).sum();
        out.push(f[off]);
        // Increment the C-order multi-index (last axis fastest).
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

fn elems<'a>(h: &'a Header, b: &'a [u8]) -> impl Iterator<Item = [u8; 8]> + 'a {
    let data = &b[h.data_start..h.data_start + h.len * h.size];
    data.chunks_exact(h.size).map(move |c| {
        let mut v = [0u8; 8];
        if h.big_endian {
            for (i, &x) in c.iter().rev().enumerate() {
                v[i] = x;
            }
        } else {
            v[..h.size].copy_from_slice(c);
        }
        v
    })
}

fn decode_f32(b: &[u8]) -> Result<ArrayF32> {
    let h = parse_header(b)?;
    if h.kind != Kind::Float {
        bail!(
            "expected a float32 or float64 array, found dtype '{}'",
            h.descr
        );
    }
    let data: Vec<f32> = match h.size {
        4 => elems(&h, b)
            .map(|v| f32::from_le_bytes([v[0], v[1], v[2], v[3]]))
            .collect(),
        _ => elems(&h, b).map(|v| f64::from_le_bytes(v) as f32).collect(),
    };
    let data = if h.fortran {
        fortran_to_c(&h.shape, data)
    } else {
        data
    };
    Ok(ArrayF32 {
        shape: h.shape,
        data,
    })
}

fn decode_i64(b: &[u8]) -> Result<ArrayI64> {
    let h = parse_header(b)?;
    if h.kind == Kind::Float {
        bail!("expected an integer array, found dtype '{}'", h.descr);
    }
    let (kind, size) = (h.kind, h.size);
    let data: Vec<i64> = elems(&h, b)
        .map(|v| match (kind, size) {
            (Kind::Int, 1) => v[0] as i8 as i64,
            (Kind::Int, 2) => i16::from_le_bytes([v[0], v[1]]) as i64,
            (Kind::Int, 4) => i32::from_le_bytes([v[0], v[1], v[2], v[3]]) as i64,
            (Kind::Int, _) => i64::from_le_bytes(v),
            (_, 1) => v[0] as i64,
            (_, 2) => u16::from_le_bytes([v[0], v[1]]) as i64,
            (_, 4) => u32::from_le_bytes([v[0], v[1], v[2], v[3]]) as i64,
            // u64 labels beyond i64::MAX saturate: they are not class ids anyway.
            _ => i64::try_from(u64::from_le_bytes(v)).unwrap_or(i64::MAX),
        })
        .collect();
    let data = if h.fortran {
        fortran_to_c(&h.shape, data)
    } else {
        data
    };
    Ok(ArrayI64 {
        shape: h.shape,
        data,
    })
}

fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Read a float32/float64 `.npy` file as f32.
pub fn read_f32(path: impl AsRef<Path>) -> Result<ArrayF32> {
    let path = path.as_ref();
    decode_f32(&read_bytes(path)?)
        .with_context(|| format!("{}: cannot read as a float array", path.display()))
}

/// Read an integer `.npy` file as i64.
pub fn read_i64(path: impl AsRef<Path>) -> Result<ArrayI64> {
    let path = path.as_ref();
    decode_i64(&read_bytes(path)?)
        .with_context(|| format!("{}: cannot read as an integer array", path.display()))
}

/// Parse a float `.npy` image held in memory.
pub fn parse_f32(bytes: &[u8]) -> Result<ArrayF32> {
    decode_f32(bytes)
}

/// Parse an integer `.npy` image held in memory.
pub fn parse_i64(bytes: &[u8]) -> Result<ArrayI64> {
    decode_i64(bytes)
}

/// An open `.npz` archive.
pub struct Npz {
    path: std::path::PathBuf,
    archive: zip::ZipArchive<std::io::BufReader<std::fs::File>>,
}

impl Npz {
    /// Open an `.npz` archive.
    pub fn open(path: impl AsRef<Path>) -> Result<Npz> {
        let path = path.as_ref();
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let archive = zip::ZipArchive::new(std::io::BufReader::new(file))
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("{}: not a valid .npz (zip) archive", path.display()))?;
        Ok(Npz {
            path: path.to_path_buf(),
            archive,
        })
    }

    /// Names of the arrays in the archive.
    pub fn names(&self) -> Vec<String> {
        self.archive
            .file_names()
            .filter_map(|n| n.strip_suffix(".npy"))
            .map(str::to_string)
            .collect()
    }

    fn member(&mut self, name: &str) -> Result<Vec<u8>> {
        let names = self.names();
        let mut f = self.archive.by_name(&format!("{name}.npy")).map_err(|e| {
            anyhow!(
                "{}: no array '{name}' ({e}); the archive holds {:?}",
                self.path.display(),
                names
            )
        })?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)
            .with_context(|| format!("{}: cannot read member '{name}'", self.path.display()))?;
        Ok(buf)
    }

    /// Read member `name` as a float array.
    pub fn f32(&mut self, name: &str) -> Result<ArrayF32> {
        let b = self.member(name)?;
        decode_f32(&b).with_context(|| format!("{}: array '{name}'", self.path.display()))
    }

    /// Read member `name` as an integer array.
    pub fn i64(&mut self, name: &str) -> Result<ArrayI64> {
        let b = self.member(name)?;
        decode_i64(&b).with_context(|| format!("{}: array '{name}'", self.path.display()))
    }
}

/// Encode an f32 array as a `.npy` image (format 1.0, little endian, C order).
pub fn encode_f32(shape: &[usize], data: &[f32]) -> Result<Vec<u8>> {
    let n: usize = shape.iter().product();
    if n != data.len() {
        bail!("shape {shape:?} holds {n} values, got {}", data.len());
    }
    let dims = match shape.len() {
        1 => format!("{},", shape[0]),
        _ => shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({dims}), }}");
    // Magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat(total.next_multiple_of(64) - total));
    header.push('\n');
    if header.len() > u16::MAX as usize {
        bail!("shape {shape:?} has too many dimensions for a .npy header");
    }
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// Write an f32 `.npy` file.
pub fn write_f32(path: impl AsRef<Path>, shape: &[usize], data: &[f32]) -> Result<()> {
    let path = path.as_ref();
    let bytes =
        encode_f32(shape, data).with_context(|| format!("cannot write {}", path.display()))?;
    let mut f =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(&bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Write an `.npz` archive of `.npy` images (from [`encode_f32`] or
/// [`encode_i64`]), one member per `(name, bytes)`.
pub fn write_npz(path: impl AsRef<Path>, members: &[(&str, Vec<u8>)]) -> Result<()> {
    let path = path.as_ref();
    let ctx = || format!("cannot write {}", path.display());
    let file = std::fs::File::create(path).with_context(ctx)?;
    let mut z = zip::ZipWriter::new(file);
    for (name, bytes) in members {
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        z.start_file(format!("{name}.npy"), opts)
            .map_err(|e| anyhow!("{e}"))
            .with_context(ctx)?;
        z.write_all(bytes).with_context(ctx)?;
    }
    z.finish().map_err(|e| anyhow!("{e}")).with_context(ctx)?;
    Ok(())
}

/// Encode an integer array as an `.npy` image (`<i8`), for tests and tools.
pub fn encode_i64(shape: &[usize], data: &[i64]) -> Result<Vec<u8>> {
    let mut f = encode_f32(shape, &vec![0.0; data.len()])?;
    // Same header length: '<f4' and '<i8' are the same width.
    let pos = f
        .windows(5)
        .position(|w| w == b"'<f4'")
        .ok_or_else(|| anyhow!("internal: no descr"))?;
    f[pos + 2] = b'i';
    f[pos + 3] = b'8';
    let start = f.len() - data.len() * 4;
    f.truncate(start);
    for v in data {
        f.extend_from_slice(&v.to_le_bytes());
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_roundtrip() {
        let b = encode_f32(&[2, 3], &[1., 2., 3., 4., 5., 6.]).unwrap();
        assert_eq!((b.len() - 24) % 64, 0);
        let a = parse_f32(&b).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.data, vec![1., 2., 3., 4., 5., 6.]);
        let b1 = encode_f32(&[3], &[1., 2., 3.]).unwrap();
        assert_eq!(parse_f32(&b1).unwrap().shape, vec![3]);
        let b0 = encode_f32(&[], &[7.]).unwrap();
        assert_eq!(
            parse_f32(&b0).unwrap(),
            ArrayF32 {
                shape: vec![],
                data: vec![7.]
            }
        );
    }

    #[test]
    fn i64_roundtrip() {
        let b = encode_i64(&[4], &[0, -1, 9, 1 << 40]).unwrap();
        let a = parse_i64(&b).unwrap();
        assert_eq!(a.data, vec![0, -1, 9, 1 << 40]);
        assert!(parse_f32(&b).is_err());
    }

    fn raw(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
        let h = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}\n",
            if fortran { "True" } else { "False" }
        );
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(h.len() as u16).to_le_bytes());
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn npz_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.npz");
        let x = encode_f32(&[2, 2], &[1., 2., 3., 4.]).unwrap();
        let y = encode_i64(&[2], &[3, 1]).unwrap();
        write_npz(&p, &[("x", x), ("y", y)]).unwrap();
        let mut z = Npz::open(&p).unwrap();
        let mut names = z.names();
        names.sort();
        assert_eq!(names, vec!["x", "y"]);
        assert_eq!(z.f32("x").unwrap().data, vec![1., 2., 3., 4.]);
        assert_eq!(z.i64("y").unwrap().data, vec![3, 1]);
        let e = z.f32("nope").unwrap_err().to_string();
        assert!(e.contains("d.npz") && e.contains("nope"), "{e}");
        assert!(z.f32("y").is_err());
        std::fs::write(&p, b"PK\x03\x04garbage").unwrap();
        assert!(Npz::open(&p).is_err());
    }

    #[test]
    fn other_dtypes_and_orders() {
        let d: Vec<u8> = [1.5f64, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(
            parse_f32(&raw("<f8", false, "(2,)", &d)).unwrap().data,
            vec![1.5, -2.0]
        );
        let d: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect();
        assert_eq!(
            parse_f32(&raw(">f4", false, "(2,)", &d)).unwrap().data,
            vec![1.5, -2.0]
        );
        assert_eq!(
            parse_i64(&raw("|u1", false, "(3,)", &[0, 200, 7]))
                .unwrap()
                .data,
            vec![0, 200, 7]
        );
        assert_eq!(
            parse_i64(&raw("|i1", false, "(2,)", &[255, 3]))
                .unwrap()
                .data,
            vec![-1, 3]
        );
        let d: Vec<u8> = [5i32, -6].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            parse_i64(&raw("<i4", false, "(2,)", &d)).unwrap().data,
            vec![5, -6]
        );
        // Fortran order: [[1,2,3],[4,5,6]] is stored column-major.
        let d: Vec<u8> = [1f32, 4., 2., 5., 3., 6.]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let a = parse_f32(&raw("<f4", true, "(2, 3)", &d)).unwrap();
        assert_eq!(a.data, vec![1., 2., 3., 4., 5., 6.]);
    }

    #[test]
    fn malformed_is_an_error() {
        let good = encode_f32(&[2, 2], &[1., 2., 3., 4.]).unwrap();
        for cut in 0..good.len() {
            assert!(parse_f32(&good[..cut]).is_err(), "cut at {cut}");
        }
        assert!(parse_f32(&raw("<f4", false, "(99999999999, 99999999999)", &[])).is_err());
        assert!(parse_f32(&raw("<f4", false, "(18446744073709551615, 2)", &[])).is_err());
        assert!(parse_f32(&raw("<f4", false, "(-1,)", &[])).is_err());
        assert!(parse_f32(&raw("<c8", false, "(1,)", &[0; 8])).is_err());
        assert!(parse_f32(&raw("[('a', '<f4')]", false, "(1,)", &[0; 4])).is_err());
        assert!(parse_f32(b"hello").is_err());
        let mut bad = good.clone();
        bad[8] = 0xff;
        bad[9] = 0xff;
        assert!(parse_f32(&bad).is_err());
        // Arbitrary bytes after the magic never panic.
        let mut x: u32 = 12345;
        for _ in 0..2000 {
            let mut b = good.clone();
            for _ in 0..4 {
                x = x.wrapping_mul(1664525).wrapping_add(1013904223);
                let i = 6 + (x as usize >> 8) % (b.len() - 6);
                b[i] = (x >> 24) as u8;
            }
            let _ = parse_f32(&b);
            let _ = parse_i64(&b);
        }
    }
}
