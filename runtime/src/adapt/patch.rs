//! Affine patches: new normalization parameters from the cloud, signed.
//!
//! # Format
//!
//! A patch is a safetensors blob. For each normalization layer prefix it
//! holds `PREFIX.gamma` and `PREFIX.beta`, and optionally `PREFIX.mean` and
//! `PREFIX.var`, each `F32 [C]` with `C` the layer's channel count (a
//! missing mean or variance keeps the device's current one). Its
//! `__metadata__` has exactly these string entries:
//!
//! - `format`: `"shiftnn-affine-patch"`;
//! - `fingerprint`: the model's [`Model::fingerprint`] as `{:016x}` (the
//!   same text as `Graph::fingerprint`);
//! - `version`: a decimal `u64`, which must exceed the device's current
//!   patch version;
//! - `signature`: 128 lowercase hex digits, an ed25519 signature over the
//!   message below. Any other metadata key is rejected, so that nothing
//!   unsigned carries meaning.
//!
//! # Signed message (canonical order)
//!
//! ```text
//! "shiftnn-affine-patch/v1\n"              24 bytes
//! fingerprint                               u64 little-endian
//! version                                   u64 little-endian
//! tensor count                              u32 little-endian
//! for each tensor, names in byte order:
//!     name length                           u32 little-endian
//!     name                                  UTF-8 bytes
//!     element count                         u32 little-endian
//!     data                                  f32 little-endian, as stored
//! ```
//!
//! The dtype (F32) and rank (1) are fixed by the format, so the element
//! count is the whole shape. Verification uses ed25519 `verify_strict`.
//!
//! # Verification and apply
//!
//! [`verify_patch`] rejects, each with its own [`Error::Patch`] message:
//! an oversized or malformed blob, another format, another model, a bad
//! signature, a version not above the current one, an unknown prefix or
//! field, a wrong dtype or shape, NaN or infinity, a negative variance, a
//! layer without gamma or beta. [`apply_patch`] builds a complete new
//! [`Prepared`] (every layer through [`Prepared::set_norm`]) and only then
//! returns it, so the caller swaps all layers at once or none.
//! [`PatchState`] keeps the version and the accepted/rejected counters.

use crate::derive::Prepared;
use crate::error::{Error, Result};
use crate::model::{Model, NormParams};
use alloc::{collections::BTreeMap, format, string::String, vec::Vec};
use ed25519_dalek::{Signature, Signer};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
use safetensors::{Dtype, SafeTensors};

/// `format` entry of a patch's metadata.
pub const PATCH_FORMAT: &str = "shiftnn-affine-patch";
/// Domain separator at the start of the signed message.
pub const SIGNING_CONTEXT: &[u8; 24] = b"shiftnn-affine-patch/v1\n";
/// Default size limit of a patch blob (a ResNet-18 patch with statistics is
/// about 77 KB).
pub const DEFAULT_MAX_PATCH_BYTES: usize = 8 << 20;

/// New parameters of one normalization layer.
#[derive(Clone, Debug, PartialEq)]
pub struct PatchLayer {
    /// Tensor prefix of the layer (as in the model's `NormRef`).
    pub prefix: String,
    /// New gamma.
    pub gamma: Vec<f32>,
    /// New beta.
    pub beta: Vec<f32>,
    /// New running mean, if sent.
    pub mean: Option<Vec<f32>>,
    /// New running variance, if sent.
    pub var: Option<Vec<f32>>,
}

/// A verified patch.
#[derive(Clone, Debug, PartialEq)]
pub struct AffinePatch {
    /// Model fingerprint it was made for.
    pub fingerprint: u64,
    /// Its version.
    pub version: u64,
    /// Layers, by prefix order.
    pub layers: Vec<PatchLayer>,
}

fn rej<T>(m: impl Into<String>) -> Result<T> {
    Err(Error::Patch(m.into()))
}

const FIELDS: [&str; 4] = ["gamma", "beta", "mean", "var"];

/// Tensors of a patch in canonical (byte-wise name) order.
fn tensors_of(layers: &[PatchLayer]) -> BTreeMap<String, &[f32]> {
    let mut t = BTreeMap::new();
    for l in layers {
        t.insert(format!("{}.gamma", l.prefix), &l.gamma[..]);
        t.insert(format!("{}.beta", l.prefix), &l.beta[..]);
        if let Some(m) = &l.mean {
            t.insert(format!("{}.mean", l.prefix), &m[..]);
        }
        if let Some(v) = &l.var {
            t.insert(format!("{}.var", l.prefix), &v[..]);
        }
    }
    t
}

/// The exact bytes an ed25519 signature covers (see the module docs).
pub fn signed_message<'a>(
    fingerprint: u64,
    version: u64,
    tensors: impl ExactSizeIterator<Item = (&'a str, &'a [u8])>,
) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(SIGNING_CONTEXT);
    m.extend_from_slice(&fingerprint.to_le_bytes());
    m.extend_from_slice(&version.to_le_bytes());
    m.extend_from_slice(&(tensors.len() as u32).to_le_bytes());
    for (name, data) in tensors {
        m.extend_from_slice(&(name.len() as u32).to_le_bytes());
        m.extend_from_slice(name.as_bytes());
        m.extend_from_slice(&((data.len() / 4) as u32).to_le_bytes());
        m.extend_from_slice(data);
    }
    m
}

fn f32_le(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn hex(bytes: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [D[(b >> 4) as usize] as char, D[(b & 15) as usize] as char])
        .collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if s.len() % 2 != 0 {
        return None;
    }
    let d = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    s.chunks(2)
        .map(|p| Some(d(p[0])? << 4 | d(p[1])?))
        .collect()
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// Build and sign a patch blob. Layers must have distinct prefixes and
/// equal lengths per layer (checked).
pub fn build_patch(
    fingerprint: u64,
    version: u64,
    layers: &[PatchLayer],
    key: &SigningKey,
) -> Result<Vec<u8>> {
    for (i, l) in layers.iter().enumerate() {
        if layers[..i].iter().any(|o| o.prefix == l.prefix) {
            return rej(format!("layer \"{}\" appears twice", l.prefix));
        }
        let c = l.gamma.len();
        let bad = l.beta.len() != c
            || l.mean.as_ref().is_some_and(|m| m.len() != c)
            || l.var.as_ref().is_some_and(|v| v.len() != c);
        if bad {
            return rej(format!("layer \"{}\": tensors differ in length", l.prefix));
        }
    }
    let tensors: Vec<(String, Vec<u8>)> = tensors_of(layers)
        .into_iter()
        .map(|(n, v)| (n, f32_le(v)))
        .collect();
    let msg = signed_message(
        fingerprint,
        version,
        tensors.iter().map(|(n, d)| (n.as_str(), &d[..])),
    );
    let sig = key.sign(&msg);
    let mut header = format!(
        "{{\"__metadata__\":{{\"format\":{},\"fingerprint\":\"{fingerprint:016x}\",\"version\":\"{version}\",\"signature\":\"{}\"}}",
        json_str(PATCH_FORMAT),
        hex(&sig.to_bytes())
    );
    let mut off = 0usize;
    for (n, d) in &tensors {
        header.push_str(&format!(
            ",{}:{{\"dtype\":\"F32\",\"shape\":[{}],\"data_offsets\":[{off},{}]}}",
            json_str(n),
            d.len() / 4,
            off + d.len()
        ));
        off += d.len();
    }
    header.push('}');
    while (8 + header.len()) % 8 != 0 {
        header.push(' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + off);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for (_, d) in &tensors {
        out.extend_from_slice(d);
    }
    Ok(out)
}

/// Check a patch blob against the model, the current parameters and
/// version, and the signing key; return the patch without applying it.
pub fn verify_patch(
    blob: &[u8],
    model: &Model,
    current: &Prepared,
    current_version: u64,
    key: &VerifyingKey,
    max_bytes: usize,
) -> Result<AffinePatch> {
    if blob.len() > max_bytes {
        return rej(format!(
            "patch of {} bytes exceeds the {max_bytes}-byte limit",
            blob.len()
        ));
    }
    let (_, meta) = SafeTensors::read_metadata(blob)
        .map_err(|e| Error::Patch(format!("malformed patch: {e:?}")))?;
    let st = SafeTensors::deserialize(blob)
        .map_err(|e| Error::Patch(format!("malformed patch: {e:?}")))?;
    let md = meta
        .metadata()
        .as_ref()
        .ok_or_else(|| Error::Patch("malformed patch: no __metadata__".into()))?;
    for k in md.keys() {
        if !["format", "fingerprint", "version", "signature"].contains(&k.as_str()) {
            return rej(format!("unknown metadata entry \"{k}\""));
        }
    }
    let get = |k: &str| {
        md.get(k)
            .ok_or_else(|| Error::Patch(format!("malformed patch: no \"{k}\" in __metadata__")))
    };
    if get("format")? != PATCH_FORMAT {
        return rej(format!("format is not \"{PATCH_FORMAT}\""));
    }
    let fp = get("fingerprint")?;
    let want = format!("{:016x}", model.fingerprint());
    if *fp != want {
        return rej(format!(
            "patch is for model {fp}, this model is {want} (other model)"
        ));
    }
    let version: u64 = get("version")?
        .parse()
        .map_err(|_| Error::Patch("malformed patch: version is not a u64".into()))?;
    let sig = get("signature")?;
    let sig = unhex(sig)
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .ok_or_else(|| Error::Patch("malformed patch: signature is not 128 hex digits".into()))?;
    let sig = Signature::from_bytes(&sig);

    // Collect tensors in canonical order, with their dtype and shape.
    let mut tensors: BTreeMap<String, (Dtype, Vec<usize>, &[u8])> = BTreeMap::new();
    for (name, view) in st.tensors() {
        tensors.insert(name, (view.dtype(), view.shape().to_vec(), view.data()));
    }
    let msg = signed_message(
        model.fingerprint(),
        version,
        tensors.iter().map(|(n, (_, _, d))| (n.as_str(), *d)),
    );
    key.verify_strict(&msg, &sig)
        .map_err(|_| Error::Patch("bad signature".into()))?;
    if version <= current_version {
        return rej(format!(
            "version {version} is not above the current version {current_version}"
        ));
    }

    let mut layers: BTreeMap<&str, PatchLayer> = BTreeMap::new();
    for (name, (dtype, shape, data)) in &tensors {
        let (prefix, field) = name
            .rsplit_once('.')
            .filter(|(_, f)| FIELDS.contains(f))
            .ok_or_else(|| {
                Error::Patch(format!(
                    "tensor \"{name}\" is not PREFIX.gamma/.beta/.mean/.var"
                ))
            })?;
        let cur = current
            .norms
            .get(prefix)
            .ok_or_else(|| Error::Patch(format!("unknown normalization layer \"{prefix}\"")))?;
        let c = cur.gamma.len();
        if *dtype != Dtype::F32 {
            return rej(format!("{name} has dtype {dtype:?}, expected F32"));
        }
        if shape[..] != [c] {
            return rej(format!("{name} has shape {shape:?}, expected [{c}]"));
        }
        let v: Vec<f32> = data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if v.iter().any(|x| !x.is_finite()) {
            return rej(format!("{name} holds NaN or infinity"));
        }
        if field == "var" && v.iter().any(|&x| x < 0.0) {
            return rej(format!("{name} holds a negative variance"));
        }
        let l = layers.entry(prefix).or_insert_with(|| PatchLayer {
            prefix: prefix.into(),
            gamma: Vec::new(),
            beta: Vec::new(),
            mean: None,
            var: None,
        });
        match field {
            "gamma" => l.gamma = v,
            "beta" => l.beta = v,
            "mean" => l.mean = Some(v),
            _ => l.var = Some(v),
        }
    }
    let mut out = Vec::with_capacity(layers.len());
    for (p, l) in layers {
        let has = |f: &str| tensors.contains_key(&format!("{p}.{f}"));
        if !has("gamma") || !has("beta") {
            return rej(format!("layer \"{p}\" needs both gamma and beta"));
        }
        out.push(l);
    }
    if out.is_empty() {
        return rej("patch holds no layer");
    }
    Ok(AffinePatch {
        fingerprint: model.fingerprint(),
        version,
        layers: out,
    })
}

/// Build the parameters with every layer of `patch` applied to `base`.
/// `base` is untouched; on error nothing is returned.
pub fn apply_patch(model: &Model, base: &Prepared, patch: &AffinePatch) -> Result<Prepared> {
    let mut next = base.clone();
    for l in &patch.layers {
        let cur = next
            .norms
            .get(&l.prefix)
            .ok_or_else(|| Error::Patch(format!("unknown normalization layer \"{}\"", l.prefix)))?;
        let p = NormParams {
            gamma: l.gamma.clone(),
            beta: l.beta.clone(),
            mean: l.mean.clone().unwrap_or_else(|| cur.mean.clone()),
            var: l.var.clone().unwrap_or_else(|| cur.var.clone()),
        };
        next.set_norm(model, &l.prefix, p)?;
    }
    Ok(next)
}

/// Patch bookkeeping of one device: the trusted key, the current version,
/// and what was accepted or rejected.
#[derive(Clone, Debug)]
pub struct PatchState {
    key: VerifyingKey,
    /// Current patch version (0: the model file's parameters).
    pub version: u64,
    /// Patches applied.
    pub accepted: u64,
    /// Patches rejected.
    pub rejected: u64,
    /// The last rejection.
    pub last_error: Option<Error>,
    /// Size limit of a blob.
    pub max_bytes: usize,
}

impl PatchState {
    /// Trust `key`; start at `version`.
    pub fn new(key: VerifyingKey, version: u64) -> PatchState {
        PatchState {
            key,
            version,
            accepted: 0,
            rejected: 0,
            last_error: None,
            max_bytes: DEFAULT_MAX_PATCH_BYTES,
        }
    }

    /// The trusted key.
    pub fn key(&self) -> &VerifyingKey {
        &self.key
    }

    /// Verify `blob` and build the patched parameters from `base`. On
    /// success the version advances and the caller swaps the result in; on
    /// error the rejection is counted and `base` stays in use.
    pub fn try_apply(&mut self, model: &Model, base: &Prepared, blob: &[u8]) -> Result<Prepared> {
        let r = verify_patch(blob, model, base, self.version, &self.key, self.max_bytes)
            .and_then(|p| Ok((p.version, apply_patch(model, base, &p)?)));
        match r {
            Ok((v, next)) => {
                self.version = v;
                self.accepted += 1;
                Ok(next)
            }
            Err(e) => {
                self.rejected += 1;
                self.last_error = Some(e.clone());
                Err(e)
            }
        }
    }
}
