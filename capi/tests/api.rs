//! The C API driven from Rust, as a C caller would: every entry point, its
//! checks (null, alignment, sizes, overlap) and the bit-exact run on the
//! firmware fixtures. The C example (`examples/c`) does the same from C.

use shiftnn::*;
use std::ffi::CStr;
use std::ptr::{null, null_mut};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/../tests/fixtures/firmware/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn floats(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn last_error() -> String {
    // SAFETY: shiftnn_last_error returns a valid NUL-terminated string.
    unsafe { CStr::from_ptr(shiftnn_last_error()) }
        .to_str()
        .unwrap()
        .to_string()
}

/// A 64-byte aligned copy of `b` at byte offset `off`.
fn aligned(b: &[u8], off: usize) -> (Vec<u64>, *const u8) {
    let mut v = vec![0u64; (b.len() + off).div_ceil(8) + 8];
    let base = v.as_mut_ptr() as usize;
    let start = (64 - base % 64) % 64 / 8;
    let bytes: &mut [u8] = bytemuck_bytes(&mut v[start..]);
    bytes[off..off + b.len()].copy_from_slice(b);
    let p = bytes[off..].as_ptr();
    (v, p)
}

fn bytemuck_bytes(v: &mut [u64]) -> &mut [u8] {
    let len = v.len() * 8;
    // SAFETY: u64 has no padding and any byte pattern is a valid u8; the
    // returned slice covers exactly the same memory and borrows `v`.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), len) }
}

#[test]
fn the_c_api_runs_the_fixture_model_and_rejects_bad_calls() {
    // SAFETY: every pointer passed below is either a live Rust buffer of the
    // length given with it, or deliberately null, misaligned, too short or
    // overlapping, which the API checks before any access; models and
    // sessions are freed once, sessions before their model.
    unsafe { c_api_session() }
}

/// The same calls on a thread with only `SHIFTNN_STACK_BYTES` of stack:
/// the fixture model has a stride-2 layer that the AVX-512 GEMM reads
/// through its stack copy, beside its stack panel (a stack overflow
/// aborts the test process).
#[test]
fn the_c_api_runs_on_a_thread_with_the_stated_stack() {
    let t = std::thread::Builder::new()
        .stack_size(SHIFTNN_STACK_BYTES)
        .spawn(|| {
            // SAFETY: as in the test above.
            unsafe { c_api_session() }
        })
        .unwrap();
    t.join().unwrap();
}

#[allow(unsafe_op_in_unsafe_fn)]
unsafe fn c_api_session() {
    let model_bytes = fixture("fmnist_b4_int8.shift");
    let images = floats(&fixture("images.f32"));
    let expected = floats(&fixture("logits.f32"));
    let (_keep, p) = aligned(&model_bytes, 0);

    let mut model = null_mut();
    assert_eq!(
        shiftnn_model_open(p, model_bytes.len(), &mut model),
        ShiftnnStatus::Ok
    );
    let (mut arena_bytes, mut n_in, mut n_out) = (0, 0, 0);
    assert_eq!(
        shiftnn_model_arena_bytes(model, &mut arena_bytes),
        ShiftnnStatus::Ok
    );
    assert_eq!(
        shiftnn_model_io_count(model, &mut n_in, &mut n_out),
        ShiftnnStatus::Ok
    );
    assert_eq!((n_in, n_out), (1, 1));
    let (mut dims, mut ndim, mut in_len, mut out_len) = ([0usize; 4], 0, 0, 0);
    assert_eq!(
        shiftnn_model_input_shape(model, 0, dims.as_mut_ptr(), 4, &mut ndim, &mut in_len),
        ShiftnnStatus::Ok
    );
    assert_eq!(&dims[..ndim], &[1, 1, 28, 28]);
    assert_eq!(
        shiftnn_model_input_shape(model, 0, dims.as_mut_ptr(), 2, &mut ndim, null_mut()),
        ShiftnnStatus::InvalidArgument
    );
    assert_eq!(
        shiftnn_model_output_shape(model, 0, null_mut(), 0, null_mut(), &mut out_len),
        ShiftnnStatus::Ok
    );
    assert_eq!(out_len, 10);
    assert_eq!(
        shiftnn_model_output_shape(model, 1, null_mut(), 0, null_mut(), &mut out_len),
        ShiftnnStatus::InvalidArgument
    );

    let mut arena = vec![0u8; arena_bytes + 64];
    let mut session = null_mut();
    let st = shiftnn_session_new(model, arena.as_mut_ptr(), 10, &mut session);
    assert_eq!(st, ShiftnnStatus::ArenaTooSmall);
    assert!(last_error().contains("arena too small"), "{}", last_error());
    assert!(session.is_null());
    assert_eq!(
        shiftnn_session_new(model, arena.as_mut_ptr(), arena.len(), &mut session),
        ShiftnnStatus::Ok
    );

    let mut out = vec![0f32; out_len];
    for (x, want) in images
        .chunks_exact(in_len)
        .zip(expected.chunks_exact(out_len))
    {
        assert_eq!(
            shiftnn_session_run1(session, x.as_ptr(), x.len(), out.as_mut_ptr(), out.len()),
            ShiftnnStatus::Ok
        );
        assert!(out
            .iter()
            .zip(want)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }
    let ins = [images.as_ptr()];
    let outs = [out.as_mut_ptr()];
    assert_eq!(
        shiftnn_session_run(
            session,
            ins.as_ptr(),
            &in_len,
            1,
            outs.as_ptr(),
            &out_len,
            1
        ),
        ShiftnnStatus::Ok
    );
    assert_eq!(
        shiftnn_session_run(
            session,
            ins.as_ptr(),
            &in_len,
            1,
            outs.as_ptr(),
            &out_len,
            0
        ),
        ShiftnnStatus::WrongSize
    );
    assert_eq!(
        shiftnn_session_run(session, null(), &in_len, 1, outs.as_ptr(), &out_len, 1),
        ShiftnnStatus::NullPointer
    );
    // Bad buffers.
    let x = &images[..in_len];
    let run = |x: *const f32, xl: usize, y: *mut f32, yl: usize| {
        shiftnn_session_run1(session, x, xl, y, yl)
    };
    assert_eq!(
        run(x.as_ptr(), in_len - 1, out.as_mut_ptr(), out_len),
        ShiftnnStatus::WrongSize
    );
    assert_eq!(
        run(x.as_ptr(), in_len, out.as_mut_ptr(), out_len + 1),
        ShiftnnStatus::WrongSize
    );
    let mis = (out.as_mut_ptr() as *mut u8).wrapping_add(1) as *mut f32;
    assert_eq!(
        run(x.as_ptr(), in_len, mis, out_len),
        ShiftnnStatus::Misaligned
    );
    let mut both = images[..in_len + 10].to_vec();
    let bp = both.as_mut_ptr();
    assert_eq!(
        run(bp, in_len, bp.wrapping_add(in_len - 1), out_len),
        ShiftnnStatus::InvalidArgument
    );
    assert_eq!(
        run(x.as_ptr(), in_len, arena.as_mut_ptr().cast(), out_len),
        ShiftnnStatus::InvalidArgument
    );
    assert_eq!(
        run(x.as_ptr(), in_len, null_mut(), out_len),
        ShiftnnStatus::NullPointer
    );
    assert_eq!(
        shiftnn_session_run1(null_mut(), x.as_ptr(), in_len, out.as_mut_ptr(), out_len),
        ShiftnnStatus::NullPointer
    );

    // Normalization parameters: read, patch, restore.
    let mut n_norms = 0;
    assert_eq!(
        shiftnn_session_norm_count(session, &mut n_norms),
        ShiftnnStatus::Ok
    );
    assert!(n_norms > 0);
    let (mut name, mut ch) = ([0u8; 128], 0usize);
    assert_eq!(
        shiftnn_session_norm_info(session, 0, name.as_mut_ptr().cast(), 128, &mut ch),
        ShiftnnStatus::Ok
    );
    assert_eq!(
        shiftnn_session_norm_info(session, 0, name.as_mut_ptr().cast(), 3, null_mut()),
        ShiftnnStatus::InvalidArgument
    );
    assert_eq!(
        shiftnn_session_norm_info(session, n_norms, null_mut(), 0, &mut ch),
        ShiftnnStatus::InvalidArgument
    );
    let prefix = CStr::from_bytes_until_nul(&name).unwrap();
    let (mut g, mut b, mut m, mut v) = (
        vec![0f32; ch],
        vec![0f32; ch],
        vec![0f32; ch],
        vec![0f32; ch],
    );
    assert_eq!(
        shiftnn_session_get_norm(
            session,
            prefix.as_ptr(),
            g.as_mut_ptr(),
            b.as_mut_ptr(),
            m.as_mut_ptr(),
            v.as_mut_ptr(),
            ch
        ),
        ShiftnnStatus::Ok
    );
    assert_eq!(
        shiftnn_session_get_norm(
            session,
            prefix.as_ptr(),
            g.as_mut_ptr(),
            g.as_mut_ptr(),
            null_mut(),
            null_mut(),
            ch
        ),
        ShiftnnStatus::InvalidArgument
    );
    let b2: Vec<f32> = b.iter().map(|x| x + 1.0).collect();
    let set = |b: &[f32], m: *const f32, ch: usize| {
        shiftnn_session_set_norm(
            session,
            prefix.as_ptr(),
            g.as_ptr(),
            b.as_ptr(),
            m,
            null(),
            ch,
        )
    };
    assert_eq!(set(&b2, null(), ch), ShiftnnStatus::Ok);
    run(x.as_ptr(), in_len, out.as_mut_ptr(), out_len);
    assert_ne!(&out[..], &expected[..out_len]);
    assert_eq!(set(&b, m.as_ptr(), ch), ShiftnnStatus::Ok);
    run(x.as_ptr(), in_len, out.as_mut_ptr(), out_len);
    assert_eq!(&out[..], &expected[..out_len]);
    assert_eq!(set(&b, null(), ch - 1), ShiftnnStatus::Patch);
    let nan = vec![f32::NAN; ch];
    assert_eq!(set(&nan, null(), ch), ShiftnnStatus::Patch);
    assert_eq!(
        shiftnn_session_set_norm(
            session,
            c"nope".as_ptr(),
            g.as_ptr(),
            b.as_ptr(),
            null(),
            null(),
            ch
        ),
        ShiftnnStatus::Patch
    );
    assert_eq!(
        shiftnn_session_set_norm(
            session,
            prefix.as_ptr(),
            null(),
            b.as_ptr(),
            null(),
            null(),
            ch
        ),
        ShiftnnStatus::NullPointer
    );
    shiftnn_session_free(session);
    shiftnn_session_free(null_mut());

    // Bad model buffers.
    let mut bad = null_mut();
    assert_eq!(
        shiftnn_model_open(p, model_bytes.len() / 2, &mut bad),
        ShiftnnStatus::InvalidModel
    );
    let (_k2, q) = aligned(&model_bytes, 1);
    assert_eq!(
        shiftnn_model_open(q, model_bytes.len(), &mut bad),
        ShiftnnStatus::Misaligned
    );
    assert_eq!(
        shiftnn_model_open(null(), 0, &mut bad),
        ShiftnnStatus::NullPointer
    );
    assert_eq!(
        shiftnn_model_open(p, model_bytes.len(), null_mut()),
        ShiftnnStatus::NullPointer
    );
    assert!(bad.is_null());
    assert_eq!(
        shiftnn_model_open_copy(q, model_bytes.len(), &mut bad),
        ShiftnnStatus::Ok
    );
    shiftnn_model_free(bad);
    shiftnn_model_free(model);
    shiftnn_model_free(null_mut());
    // SAFETY: a static NUL-terminated string.
    let version = unsafe { CStr::from_ptr(shiftnn_version()) };
    assert_eq!(version.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}
