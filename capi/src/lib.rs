//! C API of the shiftnn runtime.
//!
//! Built as a static library (`libshiftnn.a`), a shared library
//! (`libshiftnn.so`) and an rlib; the header `include/shiftnn.h` is generated
//! from this file by cbindgen (see `tests/header.rs`).
//!
//! Conventions, for every function:
//!
//! - The return value is a [`ShiftnnStatus`]; `SHIFTNN_STATUS_OK` (0) on
//!   success. On failure, [`shiftnn_last_error`] describes it (per thread) and
//!   no output parameter has been written, except where a function says so.
//! - Pointers are checked for null; float buffers must be 4-byte aligned
//!   (`SHIFTNN_STATUS_MISALIGNED` otherwise); sizes are checked against the
//!   model; buffers passed to one call must not overlap one another or the
//!   session's arena.
//! - No Rust panic crosses the boundary: a panic inside the library becomes
//!   `SHIFTNN_STATUS_PANIC`.
//! - Lifetimes are the caller's: a model opened with [`shiftnn_model_open`]
//!   borrows the caller's buffer until [`shiftnn_model_free`]; a session
//!   borrows its model and its arena until [`shiftnn_session_free`], and the
//!   caller must not touch the arena meanwhile. A model or session may be used
//!   from one thread at a time.
//! - [`shiftnn_session_run`] allocates nothing.

#![deny(unsafe_op_in_unsafe_fn)]

use shiftnn_runtime::{Error, Model, NormParams, Session};
use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Alignment (bytes) the runtime wants for the arena; an arena that is not
/// aligned this way needs up to `SHIFTNN_ARENA_ALIGN - 1` extra bytes.
pub const SHIFTNN_ARENA_ALIGN: usize = 64;

/// Most inputs (and most outputs) [`shiftnn_session_run`] accepts.
pub const SHIFTNN_MAX_IO: usize = 16;

/// Stack (bytes) a thread that calls [`shiftnn_session_run`] needs: on
/// x86-64 with AVX-512 the int8 GEMM keeps its activation panel (up to
/// 288 KiB), the patches of its tail (36 KiB) and, for stride-2 layers,
/// a phase-split copy of the input (up to 192 KiB) on the stack, because
/// the kernels never allocate. Elsewhere less is needed. The runtime's
/// own worker threads (more than one thread) have 2 MiB.
pub const SHIFTNN_STACK_BYTES: usize = 1 << 20;

/// Result of every call.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShiftnnStatus {
    /// Success.
    Ok = 0,
    /// A required pointer was null.
    NullPointer = 1,
    /// An argument is out of range (index, count, buffer too small for a
    /// name, overlapping buffers, ...).
    InvalidArgument = 2,
    /// The model buffer is not a valid `.shift` model (corrupt, truncated,
    /// wrong version, inconsistent graph, ...).
    InvalidModel = 3,
    /// A buffer is not aligned as required (model tensors, float buffers).
    Misaligned = 4,
    /// The arena is smaller than the model needs (the message gives the
    /// size).
    ArenaTooSmall = 5,
    /// An input or output buffer has the wrong number of elements, or the
    /// wrong number of inputs/outputs was given.
    WrongSize = 6,
    /// New normalization parameters were rejected (unknown layer, wrong
    /// channel count, NaN, negative variance).
    Patch = 7,
    /// An internal error (a bug): a panic was caught at the boundary.
    Panic = 8,
}

/// A loaded model (opaque).
pub struct ShiftnnModel {
    model: Model<'static>,
}

/// An inference session: a model, its derived parameters and the caller's
/// arena (opaque).
pub struct ShiftnnSession {
    session: Session<'static, 'static>,
    model: &'static Model<'static>,
    arena: (usize, usize),
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

struct Fail(ShiftnnStatus, String);

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        let code = match &e {
            Error::Misaligned { .. } => ShiftnnStatus::Misaligned,
            Error::ArenaTooSmall { .. } => ShiftnnStatus::ArenaTooSmall,
            Error::Io(_) => ShiftnnStatus::WrongSize,
            Error::Patch(_) => ShiftnnStatus::Patch,
            _ => ShiftnnStatus::InvalidModel,
        };
        Fail(code, e.to_string())
    }
}

fn fail<T>(code: ShiftnnStatus, msg: impl Into<String>) -> Result<T, Fail> {
    Err(Fail(code, msg.into()))
}

fn set_last_error(msg: String) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// Run `f`, turning errors into a status and the last error, and panics
/// into `Panic`.
fn guard(f: impl FnOnce() -> Result<(), Fail>) -> ShiftnnStatus {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => ShiftnnStatus::Ok,
        Ok(Err(Fail(code, msg))) => {
            set_last_error(msg);
            code
        }
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            set_last_error(format!("internal error (panic): {what}"));
            ShiftnnStatus::Panic
        }
    }
}

fn nonnull<T>(p: *const T, what: &str) -> Result<(), Fail> {
    if p.is_null() {
        return fail(ShiftnnStatus::NullPointer, format!("{what} is null"));
    }
    Ok(())
}

/// Checks a float buffer: non-null, 4-byte aligned, byte size representable.
fn check_f32(p: *const f32, len: usize, what: &str) -> Result<(usize, usize), Fail> {
    nonnull(p, what)?;
    if !(p as usize).is_multiple_of(core::mem::align_of::<f32>()) {
        return fail(
            ShiftnnStatus::Misaligned,
            format!("{what} is not 4-byte aligned"),
        );
    }
    let bytes = len
        .checked_mul(4)
        .filter(|&b| b <= isize::MAX as usize && (p as usize).checked_add(b).is_some())
        .ok_or_else(|| {
            Fail(
                ShiftnnStatus::InvalidArgument,
                format!("{what}: length {len} is too large"),
            )
        })?;
    Ok((p as usize, p as usize + bytes))
}

fn overlap(a: (usize, usize), b: (usize, usize)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

fn model_ref<'a>(m: *const ShiftnnModel) -> Result<&'a ShiftnnModel, Fail> {
    nonnull(m, "model")?;
    // SAFETY: non-null, and by the API contract a pointer returned by
    // shiftnn_model_open* that has not been freed; only shared access.
    Ok(unsafe { &*m })
}

fn session_mut<'a>(s: *mut ShiftnnSession) -> Result<&'a mut ShiftnnSession, Fail> {
    nonnull(s, "session")?;
    // SAFETY: non-null, and by the API contract a live pointer returned by
    // shiftnn_session_new, used by one thread at a time (so unique).
    Ok(unsafe { &mut *s })
}

fn write_out<T>(out: *mut T, v: T) -> Result<(), Fail> {
    nonnull(out, "output pointer")?;
    // SAFETY: non-null, and by the API contract `out` points to writable,
    // aligned storage for a T.
    unsafe { out.write(v) };
    Ok(())
}

/// The library version, a static NUL-terminated string.
#[no_mangle]
pub extern "C" fn shiftnn_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The message of the most recent failed call on this thread ("" if none).
/// Valid until the next failing call on this thread.
#[no_mangle]
pub extern "C" fn shiftnn_last_error() -> *const c_char {
    LAST_ERROR
        .try_with(|e| e.borrow().as_ptr())
        .unwrap_or(c"".as_ptr())
}

fn open(data: *const u8, len: usize, out: *mut *mut ShiftnnModel, copy: bool) -> ShiftnnStatus {
    guard(|| {
        nonnull(out, "out")?;
        nonnull(data, "data")?;
        if len > isize::MAX as usize {
            return fail(ShiftnnStatus::InvalidArgument, "len is too large");
        }
        // SAFETY: data is non-null and, by the API contract, points to `len`
        // readable bytes that stay valid and unmodified until the model is
        // freed (for the copying variant, only during this call).
        let bytes: &'static [u8] = unsafe { core::slice::from_raw_parts(data, len) };
        let model = if copy {
            Model::from_vec(bytes)?
        } else {
            Model::from_bytes(bytes)?
        };
        write_out(out, Box::into_raw(Box::new(ShiftnnModel { model })))?;
        Ok(())
    })
}

/// Open a `.shift` model in place: the `len` bytes at `data` are borrowed,
/// not copied, and must stay valid and unchanged until
/// [`shiftnn_model_free`]. The buffer must be 4-byte aligned (64 is best:
/// the file aligns its tensors to 64 bytes); otherwise
/// `SHIFTNN_STATUS_MISALIGNED`. A corrupt buffer gives
/// `SHIFTNN_STATUS_INVALID_MODEL`. On success `*out` receives the model.
///
/// # Safety
/// Each non-null pointer must be valid for the access described here, as
/// in the crate-level contract (null, alignment, sizes and overlap are
/// checked; validity and lifetimes cannot be).
#[no_mangle]
pub unsafe extern "C" fn shiftnn_model_open(
    data: *const u8,
    len: usize,
    out: *mut *mut ShiftnnModel,
) -> ShiftnnStatus {
    open(data, len, out, false)
}

/// Like [`shiftnn_model_open`], but copies the bytes into an aligned buffer
/// owned by the model: `data` may be freed after the call and may have any
/// alignment.
///
/// # Safety
/// Each non-null pointer must be valid for the access described here, as
/// in the crate-level contract (null, alignment, sizes and overlap are
/// checked; validity and lifetimes cannot be).
#[no_mangle]
pub unsafe extern "C" fn shiftnn_model_open_copy(
    data: *const u8,
    len: usize,
    out: *mut *mut ShiftnnModel,
) -> ShiftnnStatus {
    open(data, len, out, true)
}

/// Free a model (null is allowed). Free its sessions first.
///
/// # Safety
/// Each non-null pointer must be valid for the access described here, as
/// in the crate-level contract (null, alignment, sizes and overlap are
/// checked; validity and lifetimes cannot be).
#[no_mangle]
pub unsafe extern "C" fn shiftnn_model_free(model: *mut ShiftnnModel) {
    if !model.is_null() {
        // SAFETY: by the API contract a pointer from shiftnn_model_open*,
        // freed once, with no session still using it.
        drop(unsafe { Box::from_raw(model) });
    }
}

/// Bytes of arena a session needs (recorded in the file at conversion; the
/// number `shiftnn inspect` prints), for an arena aligned to
/// `SHIFTNN_ARENA_ALIGN`.
///
/// # Safety
/// Each non-null pointer must be valid for the access described here, as
/// in the crate-level contract (null, alignment, sizes and overlap are
/// checked; validity and lifetimes cannot be).
#[no_mangle]
pub unsafe extern "C" fn shiftnn_model_arena_bytes(
    model: *const ShiftnnModel,
    out: *mut usize,
) -> ShiftnnStatus {
    guard(|| {
        let m = model_ref(model)?;
        nonnull(out, "out")?;
        write_out(out, m.model.arena_bytes())?;
        Ok(())
    })
}

/// Number of graph inputs and outputs (either pointer may be null).
///
/// # Safety
/// Each non-null pointer must be valid for the access described here, as
/// in the crate-level contract (null, alignment, sizes and overlap are
/// checked; validity and lifetimes cannot be).
#[no_mangle]
pub unsafe extern "C" fn shiftnn_model_io_count(
    model: *const ShiftnnModel,
    n_inputs: *mut usize,
    n_outputs: *mut usize,
) -> ShiftnnStatus {
    guard(|| {
        let g = model_ref(model)?.model.graph();
        if !n_inputs.is_null() {
            write_out(n_inputs, g.inputs.len())?;
        }
        if !n_outputs.is_null() {
            write_out(n_outputs, g.outputs.len())?;
        }
        Ok(())
    })
}

fn shape(
    model: *const ShiftnnModel,
    output: bool,
    index: usize,
    dims: *mut usize,
    max_dims: usize,
    ndim: *mut usize,
    len: *mut usize,
) -> ShiftnnStatus {
    guard(|| {
        let g = model_ref(model)?.model.graph();
        let (ids, kind) = if output {
            (&g.outputs, "output")
        } else {
            (&g.inputs, "input")
        };
        let Some(&v) = ids.get(index) else {
            return fail(
                ShiftnnStatus::InvalidArgument,
                format!(
                    "{kind} {index} does not exist (the model has {})",
                    ids.len()
                ),
            );
        };
        let val = &g.values[v];
        if !ndim.is_null() {
            write_out(ndim, val.shape.len())?;
        }
        if !len.is_null() {
            write_out(len, val.numel())?;
        }
        if max_dims > 0 || !dims.is_null() {
            nonnull(dims, "dims")?;
            if max_dims < val.shape.len() {
                return fail(
                    ShiftnnStatus::InvalidArgument,
                    format!(
                        "{kind} {index} has {} dimensions; max_dims is {max_dims}",
                        val.shape.len()
                    ),
                );
            }
            for (k, &d) in val.shape.iter().enumerate() {
                // SAFETY: dims is non-null and, by the API contract, has room
                // for max_dims values; k < shape.len() <= max_dims.
                unsafe { dims.add(k).write(d) };
            }
        }
        Ok(())
    })
}

/// Shape of graph input `index`: writes the rank to `*ndim`, the element
/// count to `*len` (either may be null) and the dimensions to `dims[0..rank]`
/// when `dims` is not null (`max_dims` is its capacity; too small gives
/// `SHIFTNN_STATUS_INVALID_ARGUMENT` with `*ndim` and `*len` still written).
/// Inputs are f32, row-major, batch 1.
///
/// # Safety
/// Each non-null pointer must be valid for the access described here, as
/// in the crate-level contract (null, alignment, sizes and overlap are
/// checked; validity and lifetimes cannot be).
#[no_mangle]
pub unsafe extern "C" fn shiftnn_model_input_shape(
    model: *const ShiftnnModel,
    index: usize,
    dims: *mut usize,
    max_dims: usize,
    ndim: *mut usize,
    len: *mut usize,
) -> ShiftnnStatus {
    shape(model, false, index, dims, max_dims, ndim, len)
}

/// Shape of graph output `index`, as [`shiftnn_model_input_shape`].
///
/// # Safety
/// Each non-null pointer must be valid for the access described here, as
/// in the crate-level contract (null, alignment, sizes and overlap are
/// checked; validity and lifetimes cannot be).
#[no_mangle]
pub unsafe extern "C" fn shiftnn_model_output_shape(
    model: *const ShiftnnModel,
    index: usize,
    dims: *mut usize,
    max_dims: usize,
    ndim: *mut usize,
    len: *mut usize,
) -> ShiftnnStatus {
    shape(model, true, index, dims, max_dims, ndim, len)
}

/// Start a session on `model` running in the caller's arena: `arena_len`
/// bytes at `arena`, at least [`shiftnn_model_arena_bytes`] (plus up to 63
/// if `arena` is not 64-byte aligned), else `SHIFTNN_STATUS_ARENA_TOO_SMALL`.
/// The session borrows the model and the arena until
/// [`shiftnn_session_free`]. Deriving the requantizers allocates here, once.
///
/// # Safety
/// Each non-null pointer must be valid for the access described here, as
/// in the crate-level contract (null, alignment, sizes and overlap are
/// checked; validity and lifetimes cannot be).
#[no_mangle]
pub unsafe extern "C" fn shiftnn_session_new(
    model: *const ShiftnnModel,
    arena: *mut u8,
    arena_len: usize,
    out: *mut *mut ShiftnnSession,
) -> ShiftnnStatus {
    guard(|| {
        // The model outlives the session (API contract).
        let m: &'static ShiftnnModel = model_ref(model)?;
        nonnull(arena, "arena")?;
        nonnull(out, "out")?;
        if arena_len > isize::MAX as usize || (arena as usize).checked_add(arena_len).is_none() {
            return fail(ShiftnnStatus::InvalidArgument, "arena_len is too large");
        }
        let model: &'static Model<'static> = &m.model;
        // SAFETY: arena is non-null and, by the API contract, `arena_len`
        // writable bytes owned by the session until it is freed (the caller
        // does not touch them meanwhile).
        let bytes: &'static mut [u8] = unsafe { core::slice::from_raw_parts_mut(arena, arena_len) };
        let session = Session::with_arena(model, bytes)?;
        let range = (arena as usize, arena as usize + arena_len);
        write_out(
            out,
            Box::into_raw(Box::new(ShiftnnSession {
                session,
                model,
                arena: range,
            })),
        )?;
        Ok(())
    })
}

/// Free a session (null is allowed). The arena is the caller's again.
///
/// # Safety
/// Each non-null pointer must be valid for the access described here, as
/// in the crate-level contract (null, alignment, sizes and overlap are
/// checked; validity and lifetimes cannot be).
#[no_mangle]
pub unsafe extern "C" fn shiftnn_session_free(session: *mut ShiftnnSession) {
    if !session.is_null() {
        // SAFETY: by the API contract a pointer from shiftnn_session_new,
        // freed once.
        drop(unsafe { Box::from_raw(session) });
    }
}

/// Run one inference: `inputs[i]` points to `input_lens[i]` f32 values of
/// graph input `i`; `outputs[i]` receives `output_lens[i]` f32 values of
/// graph output `i`. Counts and lengths must match the model exactly
/// (`SHIFTNN_STATUS_WRONG_SIZE`), at most `SHIFTNN_MAX_IO` of each; buffers
/// must be 4-byte aligned and must not overlap each other or the arena.
/// Allocates nothing.
///
/// # Safety
/// Each non-null pointer must be valid for the access described here, as
/// in the crate-level contract (null, alignment, sizes and overlap are
/// checked; validity and lifetimes cannot be).
#[no_mangle]
pub unsafe extern "C" fn shiftnn_session_run(
    session: *mut ShiftnnSession,
    inputs: *const *const f32,
    input_lens: *const usize,
    n_inputs: usize,
    outputs: *const *mut f32,
    output_lens: *const usize,
    n_outputs: usize,
) -> ShiftnnStatus {
    guard(|| {
        let s = session_mut(session)?;
        if n_inputs > SHIFTNN_MAX_IO || n_outputs > SHIFTNN_MAX_IO {
            return fail(
                ShiftnnStatus::WrongSize,
                format!("at most {SHIFTNN_MAX_IO} inputs and outputs are supported"),
            );
        }
        let mut in_ptrs = [(core::ptr::null::<f32>(), 0usize); SHIFTNN_MAX_IO];
        let mut out_ptrs = [(core::ptr::null_mut::<f32>(), 0usize); SHIFTNN_MAX_IO];
        if n_inputs > 0 {
            nonnull(inputs, "inputs")?;
            nonnull(input_lens, "input_lens")?;
            for (i, slot) in in_ptrs.iter_mut().enumerate().take(n_inputs) {
                // SAFETY: both arrays are non-null and, by the API contract,
                // hold n_inputs elements; i < n_inputs.
                *slot = unsafe { (*inputs.add(i), *input_lens.add(i)) };
            }
        }
        if n_outputs > 0 {
            nonnull(outputs, "outputs")?;
            nonnull(output_lens, "output_lens")?;
            for (i, slot) in out_ptrs.iter_mut().enumerate().take(n_outputs) {
                // SAFETY: as above, for the n_outputs output arrays.
                *slot = unsafe { (*outputs.add(i), *output_lens.add(i)) };
            }
        }
        run_checked(s, &in_ptrs[..n_inputs], &out_ptrs[..n_outputs])
    })
}

/// One input, one output: [`shiftnn_session_run`] for the common case.
///
/// # Safety
/// Each non-null pointer must be valid for the access described here, as
/// in the crate-level contract (null, alignment, sizes and overlap are
/// checked; validity and lifetimes cannot be).
#[no_mangle]
pub unsafe extern "C" fn shiftnn_session_run1(
    session: *mut ShiftnnSession,
    input: *const f32,
    input_len: usize,
    output: *mut f32,
    output_len: usize,
) -> ShiftnnStatus {
    guard(|| {
        let s = session_mut(session)?;
        run_checked(s, &[(input, input_len)], &[(output, output_len)])
    })
}

fn run_checked(
    s: &mut ShiftnnSession,
    ins: &[(*const f32, usize)],
    outs: &[(*mut f32, usize)],
) -> Result<(), Fail> {
    let g = s.session.model().graph();
    if ins.len() != g.inputs.len() || outs.len() != g.outputs.len() {
        return fail(
            ShiftnnStatus::WrongSize,
            format!(
                "the model has {} input(s) and {} output(s); {} and {} given",
                g.inputs.len(),
                g.outputs.len(),
                ins.len(),
                outs.len()
            ),
        );
    }
    let mut ranges = [(0usize, 0usize); 2 * SHIFTNN_MAX_IO];
    let mut n = 0;
    for (k, &(p, len)) in ins.iter().enumerate() {
        ranges[n] = check_f32(p, len, &format!("input {k}"))?;
        n += 1;
    }
    for (k, &(p, len)) in outs.iter().enumerate() {
        let r = check_f32(p, len, &format!("output {k}"))?;
        if ranges[..n].iter().any(|&q| overlap(q, r)) {
            return fail(
                ShiftnnStatus::InvalidArgument,
                format!("output {k} overlaps another buffer"),
            );
        }
        ranges[n] = r;
        n += 1;
    }
    if ranges[..n].iter().any(|&q| overlap(q, s.arena)) {
        return fail(
            ShiftnnStatus::InvalidArgument,
            "an input or output buffer overlaps the session's arena",
        );
    }
    let empty: &[f32] = &[];
    let mut in_slices = [empty; SHIFTNN_MAX_IO];
    for (slot, &(p, len)) in in_slices.iter_mut().zip(ins) {
        // SAFETY: p is non-null and 4-byte aligned (check_f32); by the API
        // contract it points to `len` readable f32 values; no output buffer
        // or the arena overlaps it (checked above), so no &mut aliases it.
        *slot = unsafe { core::slice::from_raw_parts(p, len) };
    }
    let mut out_slices: [&mut [f32]; SHIFTNN_MAX_IO] = core::array::from_fn(|_| &mut [][..]);
    for (slot, &(p, len)) in out_slices.iter_mut().zip(outs) {
        // SAFETY: p is non-null and 4-byte aligned (check_f32); by the API
        // contract it points to `len` writable f32 values; it overlaps no
        // other input, output or the arena (checked above), so this &mut is
        // unique.
        *slot = unsafe { core::slice::from_raw_parts_mut(p, len) };
    }
    s.session
        .run(&in_slices[..ins.len()], &mut out_slices[..outs.len()])?;
    Ok(())
}

/// Number of normalization layers whose parameters
/// [`shiftnn_session_set_norm`] can replace.
///
/// # Safety
/// Each non-null pointer must be valid for the access described here, as
/// in the crate-level contract (null, alignment, sizes and overlap are
/// checked; validity and lifetimes cannot be).
#[no_mangle]
pub unsafe extern "C" fn shiftnn_session_norm_count(
    session: *mut ShiftnnSession,
    out: *mut usize,
) -> ShiftnnStatus {
    guard(|| {
        let s = session_mut(session)?;
        nonnull(out, "out")?;
        write_out(out, s.session.prepared().norms.len())?;
        Ok(())
    })
}

/// Name (tensor prefix, NUL-terminated, into `name` of capacity `cap`) and
/// channel count of normalization layer `index` (in name order). `name` may
/// be null with `cap` 0 to query only the channels; `channels` may be null.
///
/// # Safety
/// Each non-null pointer must be valid for the access described here, as
/// in the crate-level contract (null, alignment, sizes and overlap are
/// checked; validity and lifetimes cannot be).
#[no_mangle]
pub unsafe extern "C" fn shiftnn_session_norm_info(
    session: *mut ShiftnnSession,
    index: usize,
    name: *mut c_char,
    cap: usize,
    channels: *mut usize,
) -> ShiftnnStatus {
    guard(|| {
        let s = session_mut(session)?;
        let norms = &s.session.prepared().norms;
        let Some((prefix, p)) = norms.iter().nth(index) else {
            return fail(
                ShiftnnStatus::InvalidArgument,
                format!(
                    "normalization layer {index} does not exist (the model has {})",
                    norms.len()
                ),
            );
        };
        if !name.is_null() || cap > 0 {
            nonnull(name, "name")?;
            if cap < prefix.len() + 1 {
                return fail(
                    ShiftnnStatus::InvalidArgument,
                    format!("name needs {} bytes, cap is {cap}", prefix.len() + 1),
                );
            }
            // SAFETY: name is non-null with room for cap >= len + 1 bytes (API
            // contract); the source is a distinct Rust string.
            unsafe {
                core::ptr::copy_nonoverlapping(prefix.as_ptr(), name.cast::<u8>(), prefix.len());
                name.add(prefix.len()).write(0);
            }
        }
        if !channels.is_null() {
            write_out(channels, p.gamma.len())?;
        }
        Ok(())
    })
}

/// Copy the current parameters of normalization layer `prefix` (`channels`
/// values each) into `gamma`, `beta`, `mean` and `var`; any of the four may
/// be null to skip it.
///
/// # Safety
/// Each non-null pointer must be valid for the access described here, as
/// in the crate-level contract (null, alignment, sizes and overlap are
/// checked; validity and lifetimes cannot be).
#[no_mangle]
pub unsafe extern "C" fn shiftnn_session_get_norm(
    session: *mut ShiftnnSession,
    prefix: *const c_char,
    gamma: *mut f32,
    beta: *mut f32,
    mean: *mut f32,
    var: *mut f32,
    channels: usize,
) -> ShiftnnStatus {
    guard(|| {
        let s = session_mut(session)?;
        let (_, cur) = norm_layer(s, prefix, channels)?;
        let mut ranges = [(0usize, 0usize); 4];
        let mut n = 0;
        for (p, what) in [
            (gamma, "gamma"),
            (beta, "beta"),
            (mean, "mean"),
            (var, "var"),
        ] {
            if !p.is_null() {
                let r = check_f32(p, channels, what)?;
                if ranges[..n].iter().any(|&q| overlap(q, r)) {
                    return fail(
                        ShiftnnStatus::InvalidArgument,
                        format!("{what} overlaps another buffer"),
                    );
                }
                ranges[n] = r;
                n += 1;
            }
        }
        for (p, src) in [
            (gamma, &cur.gamma),
            (beta, &cur.beta),
            (mean, &cur.mean),
            (var, &cur.var),
        ] {
            if !p.is_null() {
                // SAFETY: non-null, aligned, `channels` (= src.len()) values
                // by the API contract, not overlapping each other (checked)
                // nor the session's own vectors (Rust heap memory the caller
                // cannot name).
                unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), p, src.len()) };
            }
        }
        Ok(())
    })
}

/// Looks up normalization layer `prefix` and checks its channel count.
fn norm_layer(
    s: &ShiftnnSession,
    prefix: *const c_char,
    channels: usize,
) -> Result<(&str, &NormParams), Fail> {
    nonnull(prefix, "prefix")?;
    // SAFETY: prefix is non-null and, by the API contract, a NUL-terminated
    // string.
    let prefix = unsafe { CStr::from_ptr(prefix) };
    let prefix = prefix
        .to_str()
        .map_err(|_| Fail(ShiftnnStatus::InvalidArgument, "prefix is not UTF-8".into()))?;
    let Some((name, cur)) = s.session.prepared().norms.get_key_value(prefix) else {
        return fail(
            ShiftnnStatus::Patch,
            format!("affine patch rejected: no normalization layer \"{prefix}\""),
        );
    };
    if channels != cur.gamma.len() {
        return fail(
            ShiftnnStatus::Patch,
            format!(
                "affine patch rejected: {prefix} has {} channels, {channels} given",
                cur.gamma.len()
            ),
        );
    }
    Ok((name.as_str(), cur))
}

/// Apply an affine patch to one normalization layer, between runs: new
/// `gamma` and `beta` (and running `mean` and `var`, or null to keep the
/// current ones), `channels` values each. The requantizers are derived
/// again; on any error (unknown `prefix`, wrong `channels`, NaN or infinity,
/// negative variance) nothing changes.
///
/// # Safety
/// Each non-null pointer must be valid for the access described here, as
/// in the crate-level contract (null, alignment, sizes and overlap are
/// checked; validity and lifetimes cannot be).
#[no_mangle]
pub unsafe extern "C" fn shiftnn_session_set_norm(
    session: *mut ShiftnnSession,
    prefix: *const c_char,
    gamma: *const f32,
    beta: *const f32,
    mean: *const f32,
    var: *const f32,
    channels: usize,
) -> ShiftnnStatus {
    guard(|| {
        let s = session_mut(session)?;
        let (prefix, cur) = norm_layer(s, prefix, channels)?;
        let prefix = prefix.to_string();
        let read = |p: *const f32, what: &str, keep: &[f32]| -> Result<Vec<f32>, Fail> {
            if p.is_null() && !keep.is_empty() {
                return Ok(keep.to_vec());
            }
            check_f32(p, channels, what)?;
            // SAFETY: non-null and aligned (check_f32); by the API contract
            // `channels` readable f32 values; copied out at once.
            Ok(unsafe { core::slice::from_raw_parts(p, channels) }.to_vec())
        };
        let params = NormParams {
            gamma: read(gamma, "gamma", &[])?,
            beta: read(beta, "beta", &[])?,
            mean: read(mean, "mean", &cur.mean)?,
            var: read(var, "var", &cur.var)?,
        };
        let model = s.model;
        s.session.prepared_mut().set_norm(model, &prefix, params)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_a_status() {
        let st = guard(|| panic!("boom"));
        assert_eq!(st, ShiftnnStatus::Panic);
        // SAFETY: shiftnn_last_error returns a valid NUL-terminated string.
        let msg = unsafe { CStr::from_ptr(shiftnn_last_error()) };
        assert!(msg.to_str().unwrap().contains("boom"));
    }

    #[test]
    fn overlap_is_half_open() {
        assert!(!overlap((0, 4), (4, 8)));
        assert!(overlap((0, 5), (4, 8)));
        assert!(!overlap((0, 0), (0, 8)));
    }
}
