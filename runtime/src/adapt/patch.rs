//! Affine patches: new normalization parameters from the cloud, signed.
//!
//! # Format
//!
//! A patch is a safetensors blob with at most four tensors, `gamma`,
//! `beta` and optionally `mean` and `var`, each `F32 [N]`: the values of
//! the layers the patch covers, concatenated in layer order, `N` their
//! total channel count (a missing mean or variance keeps the device's
//! current ones). Its `__metadata__` has these string entries:
//!
//! - `format`: `"shiftnn-affine-patch"`;
//! - `fingerprint`: the model's [`Model::fingerprint`] as `{:016x}` (the
//!   same text as `Graph::fingerprint`);
//! - `version`: a decimal `u64`, which must exceed the device's current
//!   patch version;
//! - `signature`: 128 lowercase hex digits, an ed25519 signature over the
//!   message below;
//! - `layers` (optional): the prefixes of the layers covered, separated by
//!   `\n`, in byte order, each once. Absent, the patch covers every
//!   normalization layer of the model, in byte order of prefix: the
//!   fingerprint fixes the model, so the layout needs no names.
//!
//! Any other metadata key or tensor name is rejected, so that nothing
//! unsigned carries meaning.
//!
//! Why concatenated tensors and no per-layer names: a safetensors header
//! entry costs about 80 bytes, so per-layer tensors (an earlier draft) put
//! 2 KB of header on a 2.7 KB Fashion-MNIST patch and 10 KB on a
//! MobileNetV2 one. This layout keeps the header near 400 bytes whatever
//! the depth.
//!
//! # Signed message (canonical)
//!
//! ```text
//! "shiftnn-affine-patch/v2\n"              24 bytes
//! fingerprint                               u64 little-endian
//! version                                   u64 little-endian
//! layers entry length                       u32 little-endian (0: absent)
//! layers entry                              UTF-8 bytes
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
//! signature, a version not above the current one, an unknown, repeated or
//! unordered layer, an unknown tensor, a wrong dtype or shape, NaN or
//! infinity, a negative variance, a patch without gamma or beta.
//! [`apply_patch`] builds a complete new [`Prepared`] (every layer through
//! [`Prepared::set_norm`]) and only then returns it, so the caller swaps
//! all layers at once or none. [`PatchState`] keeps the version and the
//! accepted/rejected counters.

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
pub const SIGNING_CONTEXT: &[u8; 24] = b"shiftnn-affine-patch/v2\n";
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

/// Tensor names, in canonical (byte) order.
const FIELDS: [&str; 4] = ["beta", "gamma", "mean", "var"];

/// The exact bytes an ed25519 signature covers (see the module docs).
/// `layers` is the metadata entry, `None` when absent; `tensors` must come
/// in byte order of name.
pub fn signed_message<'a>(
    fingerprint: u64,
    version: u64,
    layers: Option<&str>,
    tensors: impl ExactSizeIterator<Item = (&'a str, &'a [u8])>,
) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(SIGNING_CONTEXT);
    m.extend_from_slice(&fingerprint.to_le_bytes());
    m.extend_from_slice(&version.to_le_bytes());
    let l = layers.unwrap_or("");
    m.extend_from_slice(&(l.len() as u32).to_le_bytes());
    m.extend_from_slice(l.as_bytes());
    m.extend_from_slice(&(tensors.len() as u32).to_le_bytes());
    for (name, data) in tensors {
        m.extend_from_slice(&(name.len() as u32).to_le_bytes());
        m.extend_from_slice(name.as_bytes());
        m.extend_from_slice(&((data.len() / 4) as u32).to_le_bytes());
        m.extend_from_slice(data);
    }
    m
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
    if !s.len().is_multiple_of(2) {
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

/// Build and sign a patch for `model`. `layers` may come in any order and
/// cover any subset of the model's normalization layers; each must exist,
/// appear once and have the layer's channel count in every tensor, and
/// either all layers or none send mean (likewise variance).
pub fn build_patch(
    model: &Model,
    version: u64,
    layers: &[PatchLayer],
    key: &SigningKey,
) -> Result<Vec<u8>> {
    let norms = Prepared::norm_channels(model)?;
    let mut sorted: Vec<&PatchLayer> = layers.iter().collect();
    sorted.sort_by(|a, b| a.prefix.cmp(&b.prefix));
    for (i, l) in sorted.iter().enumerate() {
        if i > 0 && sorted[i - 1].prefix == l.prefix {
            return rej(format!("layer \"{}\" appears twice", l.prefix));
        }
        let c = *norms
            .get(l.prefix.as_str())
            .ok_or_else(|| Error::Patch(format!("unknown normalization layer \"{}\"", l.prefix)))?;
        let bad = l.gamma.len() != c
            || l.beta.len() != c
            || l.mean.as_ref().is_some_and(|m| m.len() != c)
            || l.var.as_ref().is_some_and(|v| v.len() != c);
        if bad {
            return rej(format!(
                "layer \"{}\": every tensor needs its {c} channels",
                l.prefix
            ));
        }
    }
    if sorted.is_empty() {
        return rej("patch holds no layer");
    }
    let all_or_none = |f: fn(&PatchLayer) -> bool| {
        let n = sorted.iter().filter(|l| f(l)).count();
        n == 0 || n == sorted.len()
    };
    if !all_or_none(|l| l.mean.is_some()) || !all_or_none(|l| l.var.is_some()) {
        return rej("mean and var must be sent for all layers of a patch or for none");
    }
    // Layers in byte order; the list is left out when it is all of them.
    let covers_all = sorted.len() == norms.len();
    let list: Option<String> = if covers_all {
        None
    } else {
        if let Some(l) = sorted.iter().find(|l| l.prefix.contains('\n')) {
            return rej(format!(
                "layer \"{}\" has a newline in its name: send all layers",
                l.prefix
            ));
        }
        Some(
            sorted
                .iter()
                .map(|l| l.prefix.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
        )
    };
    let cat = |f: &dyn Fn(&PatchLayer) -> Option<&[f32]>| -> Option<Vec<u8>> {
        let mut out = Vec::new();
        for l in &sorted {
            out.extend(f(l)?.iter().flat_map(|x| x.to_le_bytes()));
        }
        Some(out)
    };
    // FIELDS order = byte order of the names.
    let tensors: Vec<(&str, Vec<u8>)> = [
        ("beta", cat(&|l| Some(&l.beta[..]))),
        ("gamma", cat(&|l| Some(&l.gamma[..]))),
        ("mean", cat(&|l| l.mean.as_deref())),
        ("var", cat(&|l| l.var.as_deref())),
    ]
    .into_iter()
    .filter_map(|(n, d)| Some((n, d?)))
    .collect();
    let msg = signed_message(
        model.fingerprint(),
        version,
        list.as_deref(),
        tensors.iter().map(|(n, d)| (*n, &d[..])),
    );
    let sig = key.sign(&msg);
    let mut header = format!(
        "{{\"__metadata__\":{{\"format\":{},\"fingerprint\":\"{:016x}\",\"version\":\"{version}\",\"signature\":\"{}\"",
        json_str(PATCH_FORMAT),
        model.fingerprint(),
        hex(&sig.to_bytes())
    );
    if let Some(l) = &list {
        header.push_str(&format!(",\"layers\":{}", json_str(l)));
    }
    header.push('}');
    let mut off = 0usize;
    for (n, d) in &tensors {
        header.push_str(&format!(
            ",\"{n}\":{{\"dtype\":\"F32\",\"shape\":[{}],\"data_offsets\":[{off},{}]}}",
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
        if !["format", "fingerprint", "version", "signature", "layers"].contains(&k.as_str()) {
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
    let list = md.get("layers").map(String::as_str);

    // Tensors in canonical order, with their dtype and shape.
    let mut tensors: BTreeMap<String, (Dtype, Vec<usize>, &[u8])> = BTreeMap::new();
    for (name, view) in st.tensors() {
        tensors.insert(name, (view.dtype(), view.shape().to_vec(), view.data()));
    }
    let msg = signed_message(
        model.fingerprint(),
        version,
        list,
        tensors.iter().map(|(n, (_, _, d))| (n.as_str(), *d)),
    );
    key.verify_strict(&msg, &sig)
        .map_err(|_| Error::Patch("bad signature".into()))?;
    if version <= current_version {
        return rej(format!(
            "version {version} is not above the current version {current_version}"
        ));
    }

    // The layers covered and their channel counts.
    let mut layers: Vec<(&str, usize)> = Vec::new();
    match list {
        None => layers.extend(
            current
                .norms
                .iter()
                .map(|(p, n)| (p.as_str(), n.gamma.len())),
        ),
        Some(l) => {
            for p in l.split('\n') {
                let n = current
                    .norms
                    .get(p)
                    .ok_or_else(|| Error::Patch(format!("unknown normalization layer \"{p}\"")))?;
                if layers.last().is_some_and(|(q, _)| *q >= p) {
                    return rej(format!(
                        "layer \"{p}\" repeated or out of byte order in \"layers\""
                    ));
                }
                layers.push((p, n.gamma.len()));
            }
        }
    }
    let total: usize = layers.iter().map(|(_, c)| c).sum();
    let mut fields: [Option<Vec<f32>>; 4] = Default::default();
    for (name, (dtype, shape, data)) in &tensors {
        let fi = FIELDS
            .iter()
            .position(|f| f == name)
            .ok_or_else(|| Error::Patch(format!("tensor \"{name}\" is not gamma/beta/mean/var")))?;
        if *dtype != Dtype::F32 {
            return rej(format!("{name} has dtype {dtype:?}, expected F32"));
        }
        if shape[..] != [total] {
            return rej(format!(
                "{name} has shape {shape:?}, expected [{total}] (the channels of {} layers)",
                layers.len()
            ));
        }
        let v: Vec<f32> = data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return rej(format!("{name} holds NaN or infinity (value {i})"));
        }
        if *name == "var" && v.iter().any(|&x| x < 0.0) {
            return rej(format!("{name} holds a negative variance"));
        }
        fields[fi] = Some(v);
    }
    let [beta, gamma, mean, var] = fields;
    let (Some(gamma), Some(beta)) = (gamma, beta) else {
        return rej("a patch needs both gamma and beta");
    };
    if layers.is_empty() {
        return rej("patch holds no layer");
    }
    let mut out = Vec::with_capacity(layers.len());
    let mut at = 0;
    for (p, c) in layers {
        let r = at..at + c;
        at += c;
        out.push(PatchLayer {
            prefix: p.into(),
            gamma: gamma[r.clone()].to_vec(),
            beta: beta[r.clone()].to_vec(),
            mean: mean.as_ref().map(|m| m[r.clone()].to_vec()),
            var: var.as_ref().map(|v| v[r].to_vec()),
        });
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
    let mut updates = Vec::with_capacity(patch.layers.len());
    for l in &patch.layers {
        let cur = base
            .norms
            .get(&l.prefix)
            .ok_or_else(|| Error::Patch(format!("unknown normalization layer \"{}\"", l.prefix)))?;
        let p = NormParams {
            gamma: l.gamma.clone(),
            beta: l.beta.clone(),
            mean: l.mean.clone().unwrap_or_else(|| cur.mean.clone()),
            var: l.var.clone().unwrap_or_else(|| cur.var.clone()),
        };
        updates.push((l.prefix.as_str(), p));
    }
    base.with_norms(model, updates)
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
