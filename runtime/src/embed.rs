//! Models embedded in a program image (`include_bytes!`), used in place.
//!
//! `include_bytes!` gives a `&[u8; N]` with alignment 1, but a model's f32
//! tensors must be 4-byte aligned where they lie (the file puts every tensor
//! on a 64-byte boundary relative to its start). [`AlignedBytes`] wraps the
//! bytes in a 64-byte aligned static so the file's own alignment carries over
//! to memory, and [`include_model!`](crate::include_model) does it in one
//! line:
//!
//! ```
//! // In firmware: `static MODEL: &[u8] = shiftnn_runtime::include_model!("fmnist.shift");`
//! static BYTES: &shiftnn_runtime::AlignedBytes<[u8]> =
//!     &shiftnn_runtime::AlignedBytes(*b"not a model, but aligned");
//! assert_eq!(BYTES.0.as_ptr() as usize % 64, 0);
//! ```

/// Bytes stored at a 64-byte aligned address ([`crate::planner::ALIGN`]).
/// `AlignedBytes<[u8; N]>` coerces to `AlignedBytes<[u8]>`.
#[repr(C, align(64))]
pub struct AlignedBytes<B: ?Sized>(pub B);

/// `include_bytes!` at a 64-byte aligned address: evaluates to a
/// `&'static [u8]` that [`crate::Model::from_bytes`] uses in place (from flash
/// on a microcontroller), with no copy and no `Misaligned` error.
#[macro_export]
macro_rules! include_model {
    ($path:expr) => {{
        static ALIGNED: &$crate::AlignedBytes<[u8]> = &$crate::AlignedBytes(*include_bytes!($path));
        &ALIGNED.0
    }};
}

#[cfg(test)]
mod tests {
    use super::AlignedBytes;

    #[test]
    fn included_bytes_are_aligned_and_intact() {
        let b: &'static [u8] = crate::include_model!("embed.rs");
        assert_eq!(b.as_ptr() as usize % 64, 0);
        assert_eq!(b, include_bytes!("embed.rs"));
        static A: &AlignedBytes<[u8]> = &AlignedBytes([1u8, 2, 3]);
        assert_eq!(&A.0, &[1, 2, 3]);
    }
}
