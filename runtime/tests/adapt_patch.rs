//! Affine patches: build, verify, reject, apply atomically, hot-swap
//! between concurrent sessions.

mod adapt_common;
use adapt_common::{input, model, C};
use shiftnn_runtime::adapt::patch::{signed_message, DEFAULT_MAX_PATCH_BYTES};
use shiftnn_runtime::adapt::{
    apply_patch, build_patch, verify_patch, PatchLayer, PatchState, SharedParams, SigningKey,
};
use shiftnn_runtime::graph::Mode;
use shiftnn_runtime::{Error, Model, Prepared, Session};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn layer(prefix: &str, g: f32, b: f32) -> PatchLayer {
    PatchLayer {
        prefix: prefix.into(),
        gamma: vec![g; C],
        beta: vec![b; C],
        mean: None,
        var: None,
    }
}

fn run(s: &mut Session, x: &[f32]) -> Vec<f32> {
    let mut y = vec![0f32; C];
    s.run(&[x], &mut [&mut y]).unwrap();
    y
}

fn patch_err(r: Result<impl std::fmt::Debug, Error>) -> String {
    match r {
        Err(Error::Patch(m)) => m,
        other => panic!("expected Error::Patch, got {other:?}"),
    }
}

#[test]
fn build_verify_apply_round_trip() {
    for mode in [Mode::Float, Mode::Int8] {
        let bytes = model(mode, 1);
        let m = Model::from_bytes(&bytes).unwrap();
        let base = Prepared::new(&m).unwrap();
        let k = key(1);
        let vk = k.verifying_key();
        let verify =
            |blob: &[u8]| verify_patch(blob, &m, &base, 0, &vk, DEFAULT_MAX_PATCH_BYTES).unwrap();
        // Every layer, no statistics: no layer list, a small header.
        let (l1, l2) = (layer("bn1", 2.0, 0.3), layer("bn2", 0.7, -0.1));
        let blob = build_patch(&m, 3, &[l2.clone(), l1.clone()], &k).unwrap();
        assert!(!String::from_utf8_lossy(&blob).contains("\"layers\""));
        let payload = 4 * 2 * C * 2;
        assert!(
            blob.len() <= payload + 512,
            "patch of {} bytes for {payload} bytes of parameters",
            blob.len()
        );
        let p = verify(&blob);
        assert_eq!(p.version, 3);
        assert_eq!(p.layers, vec![l1.clone(), l2.clone()]);
        let next = apply_patch(&m, &base, &p).unwrap();
        assert_eq!(next.norms["bn1"].gamma, vec![2.0; C]);
        assert_eq!(next.norms["bn2"].beta, vec![-0.1; C]);
        // No statistics sent: kept.
        assert_eq!(next.norms["bn2"].mean, base.norms["bn2"].mean);
        assert_eq!(next.norms["bn1"].var, base.norms["bn1"].var);
        // The base is untouched and outputs change.
        assert_eq!(base.norms["bn1"], Prepared::new(&m).unwrap().norms["bn1"]);
        let x = input(5, 0.2, 1.0);
        let mut s = Session::new(&m).unwrap();
        let before = run(&mut s, &x);
        s.set_prepared(next);
        assert_ne!(before, run(&mut s, &x), "{mode:?}");

        // One layer with statistics: listed by name; the other stays.
        let mut s1 = layer("bn1", 1.2, 0.1);
        s1.mean = Some(vec![0.05; C]);
        s1.var = Some(vec![1.5; C]);
        let blob = build_patch(&m, 4, &[s1.clone()], &k).unwrap();
        assert!(String::from_utf8_lossy(&blob).contains("\"layers\":\"bn1\""));
        let p = verify(&blob);
        assert_eq!(p.layers, vec![s1]);
        let next = apply_patch(&m, &base, &p).unwrap();
        assert_eq!(next.norms["bn1"].var, vec![1.5; C]);
        assert_eq!(next.norms["bn2"], base.norms["bn2"]);
        // Statistics for some layers only, unknown or repeated layers,
        // wrong lengths: refused when building.
        let mut s2 = l2.clone();
        s2.mean = Some(vec![0.0; C]);
        for (bad, want) in [
            (vec![l1.clone(), s2], "all layers of a patch or for none"),
            (vec![layer("bnX", 1.0, 0.0)], "unknown normalization layer"),
            (vec![l1.clone(), l1.clone()], "appears twice"),
            (vec![], "no layer"),
        ] {
            let msg = patch_err(build_patch(&m, 5, &bad, &k));
            assert!(msg.contains(want), "{msg:?} lacks {want:?}");
        }
        let mut short = l1.clone();
        short.beta.pop();
        assert!(patch_err(build_patch(&m, 5, &[short], &k)).contains("8 channels"));
    }
}

#[test]
fn signed_message_is_canonical() {
    // Layers given in any order sign the same bytes.
    let k = key(2);
    let bytes = model(Mode::Int8, 1);
    let m = Model::from_bytes(&bytes).unwrap();
    let (b1, b2) = (layer("bn1", 1.0, 0.0), layer("bn2", 2.0, 0.5));
    let a = build_patch(&m, 1, &[b2.clone(), b1.clone()], &k).unwrap();
    let b = build_patch(&m, 1, &[b1, b2], &k).unwrap();
    assert_eq!(a, b);
    let one = [1.0f32.to_le_bytes(), 1.0f32.to_le_bytes()].concat();
    let m = signed_message(7, 1, Some("a"), [("beta", &one[..])].into_iter());
    assert_eq!(&m[..24], b"shiftnn-affine-patch/v2\n");
    assert_eq!(&m[24..32], &7u64.to_le_bytes());
    assert_eq!(&m[32..40], &1u64.to_le_bytes());
    assert_eq!(&m[40..44], &1u32.to_le_bytes());
    assert_eq!(&m[44..45], b"a");
    assert_eq!(&m[45..49], &1u32.to_le_bytes());
    assert_eq!(&m[49..53], &4u32.to_le_bytes());
    assert_eq!(&m[53..57], b"beta");
    assert_eq!(&m[57..61], &2u32.to_le_bytes());
    assert_eq!(m.len(), 61 + 8);
    // An absent layer list signs as an empty one.
    let m = signed_message(7, 1, None, [("beta", &one[..])].into_iter());
    assert_eq!(&m[40..44], &0u32.to_le_bytes());
}

/// Replace the bytes of `from` by `to` (same length) in a blob's header.
fn edit(blob: &[u8], from: &str, to: &str) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let s = blob
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .expect("pattern");
    let mut b = blob.to_vec();
    b[s..s + to.len()].copy_from_slice(to.as_bytes());
    b
}

/// A safetensors blob written by hand (for malformed metadata/tensors).
fn raw_blob(meta: &str, tensors: &[(&str, &str, &[usize], Vec<u8>)]) -> Vec<u8> {
    let mut h = format!("{{\"__metadata__\":{meta}");
    let mut off = 0;
    for (n, dt, shape, d) in tensors {
        h.push_str(&format!(
            ",\"{n}\":{{\"dtype\":\"{dt}\",\"shape\":{shape:?},\"data_offsets\":[{off},{}]}}",
            off + d.len()
        ));
        off += d.len();
    }
    h.push('}');
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(h.as_bytes());
    for t in tensors {
        out.extend_from_slice(&t.3);
    }
    out
}

/// Sign arbitrary tensors (possibly invalid ones) with the real scheme.
fn signed_raw(
    fp: u64,
    version: u64,
    layers: Option<&str>,
    tensors: &[(&str, &str, &[usize], Vec<u8>)],
    k: &SigningKey,
) -> Vec<u8> {
    use ed25519_dalek::Signer;
    let mut sorted: Vec<_> = tensors.iter().collect();
    sorted.sort_by_key(|t| t.0);
    let msg = signed_message(fp, version, layers, sorted.iter().map(|t| (t.0, &t.3[..])));
    let sig: String = k
        .sign(&msg)
        .to_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let list = layers
        .map(|l| format!(",\"layers\":{l:?}"))
        .unwrap_or_default();
    let meta = format!(
        "{{\"format\":\"shiftnn-affine-patch\",\"fingerprint\":\"{fp:016x}\",\"version\":\"{version}\",\"signature\":\"{sig}\"{list}}}"
    );
    raw_blob(&meta, tensors)
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn every_rejection_has_its_message_and_keeps_parameters() {
    let bytes = model(Mode::Int8, 1);
    let m = Model::from_bytes(&bytes).unwrap();
    let other = model(Mode::Int8, 2);
    let other = Model::from_bytes(&other).unwrap();
    assert_ne!(m.fingerprint(), other.fingerprint());
    let base = Prepared::new(&m).unwrap();
    let k = key(1);
    let vk = k.verifying_key();
    let fp = m.fingerprint();
    let good = build_patch(&m, 5, &[layer("bn1", 1.1, 0.0)], &k).unwrap();
    let check = |blob: &[u8], cur: u64, want: &str| {
        let msg = patch_err(verify_patch(blob, &m, &base, cur, &vk, 4096));
        assert!(msg.contains(want), "{msg:?} lacks {want:?}");
        // Through PatchState: counted, parameters unchanged.
        let mut st = PatchState::new(vk, cur);
        st.max_bytes = 4096;
        assert!(st.try_apply(&m, &base, blob).is_err());
        assert_eq!((st.accepted, st.rejected, st.version), (0, 1, cur));
        assert!(matches!(st.last_error, Some(Error::Patch(_))));
    };
    assert!(verify_patch(&good, &m, &base, 4, &vk, 4096).is_ok());
    // Bad signature: another key, or a flipped data byte.
    check(
        &build_patch(&m, 5, &[layer("bn1", 1.1, 0.0)], &key(9)).unwrap(),
        0,
        "bad signature",
    );
    let mut flipped = good.clone();
    let n = flipped.len();
    flipped[n - 1] ^= 1;
    check(&flipped, 0, "bad signature");
    // Version edited after signing: the signature no longer matches.
    check(
        &edit(&good, "\"version\":\"5\"", "\"version\":\"6\""),
        0,
        "bad signature",
    );
    // Other model.
    let msg = patch_err(verify_patch(
        &good,
        &other,
        &Prepared::new(&other).unwrap(),
        0,
        &vk,
        4096,
    ));
    assert!(msg.contains("other model"), "{msg}");
    // Version not above the current one.
    check(&good, 5, "not above the current version 5");
    check(&good, 9, "not above");
    // Layer list: unknown, repeated, out of order. Tensors: unknown name.
    let t = f32s(&[1.0; C]);
    let t2 = f32s(&[1.0; 2 * C]);
    let gb = |g: Vec<u8>, b: Vec<u8>| [("gamma", "F32", &[C][..], g), ("beta", "F32", &[C][..], b)];
    check(
        &signed_raw(fp, 5, Some("bnX"), &gb(t.clone(), t.clone()), &k),
        0,
        "unknown normalization layer \"bnX\"",
    );
    for list in ["bn1\nbn1", "bn2\nbn1"] {
        let two = [
            ("gamma", "F32", &[2 * C][..], t2.clone()),
            ("beta", "F32", &[2 * C][..], t2.clone()),
        ];
        check(
            &signed_raw(fp, 5, Some(list), &two, &k),
            0,
            "out of byte order",
        );
    }
    check(
        &signed_raw(
            fp,
            5,
            Some("bn1"),
            &[("bn1.gamma", "F32", &[C], t.clone())],
            &k,
        ),
        0,
        "is not gamma/beta/mean/var",
    );
    // Wrong shape (also: all layers need 2C values), wrong dtype.
    check(
        &signed_raw(
            fp,
            5,
            Some("bn1"),
            &[
                ("gamma", "F32", &[C - 1], f32s(&[1.0; C - 1])),
                ("beta", "F32", &[C], t.clone()),
            ],
            &k,
        ),
        0,
        "shape [7], expected [8]",
    );
    check(
        &signed_raw(fp, 5, None, &gb(t.clone(), t.clone()), &k),
        0,
        "expected [16] (the channels of 2 layers)",
    );
    check(
        &signed_raw(
            fp,
            5,
            Some("bn1"),
            &[
                ("gamma", "F32", &[1, C], t.clone()),
                ("beta", "F32", &[C], t.clone()),
            ],
            &k,
        ),
        0,
        "expected [8]",
    );
    check(
        &signed_raw(
            fp,
            5,
            Some("bn1"),
            &[
                ("gamma", "I32", &[C], t.clone()),
                ("beta", "F32", &[C], t.clone()),
            ],
            &k,
        ),
        0,
        "dtype I32",
    );
    // NaN / infinity, negative variance.
    let mut nan = [1.0f32; C];
    nan[3] = f32::NAN;
    check(
        &signed_raw(fp, 5, Some("bn1"), &gb(f32s(&nan), t.clone()), &k),
        0,
        "NaN or infinity (value 3)",
    );
    let mut inf = [0.0f32; C];
    inf[0] = f32::NEG_INFINITY;
    check(
        &signed_raw(fp, 5, Some("bn1"), &gb(t.clone(), f32s(&inf)), &k),
        0,
        "NaN or infinity",
    );
    let mut l = layer("bn1", 1.0, 0.0);
    l.var = Some(vec![-0.5; C]);
    check(
        &build_patch(&m, 5, &[l], &k).unwrap(),
        0,
        "negative variance",
    );
    // Gamma without beta; an empty patch.
    check(
        &signed_raw(fp, 5, Some("bn1"), &[("gamma", "F32", &[C], t.clone())], &k),
        0,
        "needs both gamma and beta",
    );
    check(
        &signed_raw(fp, 5, None, &[], &k),
        0,
        "needs both gamma and beta",
    );
    // Oversized.
    let big = [
        ("gamma", "F32", &[600][..], f32s(&[1.0; 600])),
        ("beta", "F32", &[600][..], f32s(&[0.0; 600])),
    ];
    check(
        &signed_raw(fp, 5, Some("bn1"), &big, &k),
        0,
        "exceeds the 4096-byte limit",
    );
    // Malformed: truncated, garbage, no metadata, wrong format, extra key,
    // bad signature text, bad version text.
    check(&good[..good.len() - 3], 0, "malformed");
    check(&good[..5], 0, "malformed");
    check(b"\xff\xff\xff\xff\xff\xff\xff\x7fjunk", 0, "malformed");
    check(&raw_blob("{}", &[]), 0, "no \"format\"");
    check(
        &raw_blob(
            "{\"format\":\"x\",\"fingerprint\":\"0\",\"version\":\"1\",\"signature\":\"00\"}",
            &[],
        ),
        0,
        "format is not",
    );
    check(&raw_blob(&format!("{{\"format\":\"shiftnn-affine-patch\",\"fingerprint\":\"{fp:016x}\",\"version\":\"1\",\"signature\":\"00\",\"x\":\"y\"}}"), &[]), 0, "unknown metadata entry \"x\"");
    check(&raw_blob(&format!("{{\"format\":\"shiftnn-affine-patch\",\"fingerprint\":\"{fp:016x}\",\"version\":\"1\",\"signature\":\"zz\"}}"), &[]), 0, "signature is not 128 hex digits");
    check(&raw_blob(&format!("{{\"format\":\"shiftnn-affine-patch\",\"fingerprint\":\"{fp:016x}\",\"version\":\"-1\",\"signature\":\"00\"}}"), &[]), 0, "version is not a u64");
    let no_meta = {
        let h = "{}";
        let mut b = (h.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(h.as_bytes());
        b
    };
    check(&no_meta, 0, "no __metadata__");
    // After all that, a good patch still applies and advances the version.
    let mut st = PatchState::new(vk, 0);
    st.try_apply(&m, &base, &good).unwrap();
    assert_eq!((st.accepted, st.version), (1, 5));
}

#[test]
fn malformed_blobs_never_panic() {
    let bytes = model(Mode::Int8, 1);
    let m = Model::from_bytes(&bytes).unwrap();
    let base = Prepared::new(&m).unwrap();
    let k = key(1);
    let good = build_patch(&m, 1, &[layer("bn1", 1.1, 0.0)], &k).unwrap();
    let mut r = adapt_common::Rng(99);
    for i in 0..2000 {
        let mut b = good.clone();
        for _ in 0..1 + i % 4 {
            let at = r.below(b.len() as u64) as usize;
            b[at] = r.next() as u8;
        }
        if i % 7 == 0 {
            b.truncate(r.below(b.len() as u64) as usize);
        }
        if let Ok(p) = verify_patch(&b, &m, &base, 0, &k.verifying_key(), 1 << 20) {
            // Only a change that keeps the signed content can pass.
            assert_eq!(p.layers[0].gamma, vec![1.1; C]);
        }
    }
}

#[test]
fn shared_params_swap_atomically_under_concurrent_inference() {
    let bytes = model(Mode::Int8, 3);
    let m: &'static Model<'static> = Box::leak(Box::new(Model::from_vec(&bytes).unwrap()));
    let k = key(4);
    let shared = Arc::new(SharedParams::new(m).unwrap());
    shared.trust(k.verifying_key(), 0);
    // Patches alternate between two parameter sets A (odd) and B (even).
    let set = |v: u64| {
        if v % 2 == 1 {
            vec![layer("bn1", 1.8, 0.2), layer("bn2", 0.6, -0.3)]
        } else {
            vec![layer("bn1", 0.9, -0.1), layer("bn2", 1.4, 0.4)]
        }
    };
    let x = input(8, 0.1, 1.0);
    let expect = |p: &Prepared| {
        let mut s = Session::new(m).unwrap();
        s.set_prepared(p.clone());
        run(&mut s, &x)
    };
    let base = Prepared::new(m).unwrap();
    let orig = expect(&base);
    let kk = k.clone();
    let blob = move |v: u64| build_patch(m, v, &set(v), &kk).unwrap();
    let pa = apply_patch(
        m,
        &base,
        &verify_patch(&blob(1), m, &base, 0, &k.verifying_key(), 1 << 20).unwrap(),
    )
    .unwrap();
    let pb = apply_patch(
        m,
        &base,
        &verify_patch(&blob(2), m, &base, 0, &k.verifying_key(), 1 << 20).unwrap(),
    )
    .unwrap();
    // A half patch (only bn1 of A over B, or of B over A) gives other outputs.
    let (ya, yb) = (expect(&pa), expect(&pb));
    let mut half = pb.clone();
    half.set_norm(m, "bn1", pa.norms["bn1"].clone()).unwrap();
    let yh = expect(&half);
    assert!(ya != yb && ya != yh && yb != yh && ya != orig);
    let allowed = [orig.clone(), ya.clone(), yb.clone()];

    let stop = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicUsize::new(0));
    let seen_new = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (shared, stop, runs, seen_new) =
                (shared.clone(), stop.clone(), runs.clone(), seen_new.clone());
            let (x, allowed) = (x.clone(), allowed.clone());
            std::thread::spawn(move || {
                let mut s = Session::new(m).unwrap();
                s.set_shared(shared).unwrap();
                let mut y = vec![0f32; C];
                while !stop.load(Ordering::Relaxed) {
                    s.run(&[&x], &mut [&mut y]).unwrap();
                    let k = allowed.iter().position(|a| *a == y);
                    assert!(
                        k.is_some(),
                        "output matches no complete parameter set: {y:?}"
                    );
                    if k != Some(0) {
                        seen_new.fetch_add(1, Ordering::Relaxed);
                    }
                    runs.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let applier = {
        let shared = shared.clone();
        let blob = blob.clone();
        std::thread::spawn(move || {
            for v in 1..=40u64 {
                assert_eq!(shared.apply_patch(m, &blob(v)).unwrap(), v);
                // A replayed old patch is rejected and changes nothing.
                assert!(shared.apply_patch(m, &blob(v)).is_err());
                std::thread::yield_now();
            }
        })
    };
    applier.join().unwrap();
    // Let the workers run a little past the last swap.
    let r0 = runs.load(Ordering::Relaxed);
    while runs.load(Ordering::Relaxed) < r0 + 20 {
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    assert!(seen_new.load(Ordering::Relaxed) > 0);
    let st = shared.patch_stats();
    assert_eq!((st.version, st.accepted, st.rejected), (40, 40, 40));
    assert!(shared.generation() == 40);
    // After the last patch (B), a fresh attached session sees B exactly.
    let mut s = Session::new(m).unwrap();
    s.set_shared(shared.clone()).unwrap();
    assert_eq!(run(&mut s, &x), yb);
    // A session of another model cannot attach.
    let other = model(Mode::Int8, 4);
    let other = Model::from_vec(&other).unwrap();
    let mut so = Session::new(&other).unwrap();
    assert!(matches!(
        so.set_shared(shared.clone()),
        Err(Error::Patch(_))
    ));
}

#[test]
fn session_refresh_and_detach() {
    let bytes = model(Mode::Float, 3);
    let m = Model::from_bytes(&bytes).unwrap();
    let k = key(4);
    let shared = Arc::new(SharedParams::new(&m).unwrap());
    let mut s = Session::new(&m).unwrap();
    s.set_shared(shared.clone()).unwrap();
    assert!(!s.refresh());
    // No trusted key yet: rejected.
    let blob = build_patch(&m, 1, &[layer("bn2", 1.3, 0.1)], &k).unwrap();
    assert!(matches!(
        shared.apply_patch(&m, &blob),
        Err(Error::Patch(_))
    ));
    shared.trust(k.verifying_key(), 0);
    shared.apply_patch(&m, &blob).unwrap();
    assert!(s.refresh());
    assert_eq!(s.prepared().norms["bn2"].gamma, vec![1.3; C]);
    // prepared_mut detaches (copy on write): later swaps are not followed.
    s.prepared_mut();
    shared
        .apply_patch(
            &m,
            &build_patch(&m, 2, &[layer("bn2", 0.5, 0.1)], &k).unwrap(),
        )
        .unwrap();
    assert!(!s.refresh());
    assert_eq!(s.prepared().norms["bn2"].gamma, vec![1.3; C]);
    assert_eq!(shared.load().0.norms["bn2"].gamma, vec![0.5; C]);
}
