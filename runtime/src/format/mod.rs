//! The `.shift` container: a valid safetensors file whose `__metadata__`
//! holds the graph (JSON under [`META_KEY`]) and whose tensors each start
//! on a [`ALIGN`]-byte boundary of the file, so a mapped file is used in
//! place.
//!
//! safetensors requires tensors to tile the data section without holes, so
//! alignment gaps are filled by `U8` tensors named `__pad.N` that readers
//! ignore. Standard tools open the file as they would any safetensors file.
//!
//! Limits (hostile files): header at most [`MAX_HEADER`] bytes, at most
//! [`MAX_TENSORS`] tensors, every offset checked by the safetensors parser
//! (contiguous, in bounds) and again here (alignment, dtype, shape).

mod reader;
mod writer;

pub use reader::{parse, TensorTable};
pub use writer::{write, TensorData};

/// Metadata key holding the graph JSON.
pub const META_KEY: &str = "shiftnn";
/// `Graph::format` of every `.shift` file.
pub const FORMAT_NAME: &str = "shiftnn";
/// Current format version; readers reject others.
pub const FORMAT_VERSION: u32 = 1;
/// Alignment of every tensor's first byte, relative to the file start.
pub const ALIGN: usize = 64;
/// Largest accepted JSON header.
pub const MAX_HEADER: usize = 16 << 20;
/// Most tensors a file may hold.
pub const MAX_TENSORS: usize = 1 << 16;
/// Prefix of padding tensors.
pub const PAD_PREFIX: &str = "__pad.";

/// FNV-1a 64 over a byte stream; the model fingerprint hashes each weight
/// tensor's name and bytes, in name order.
#[derive(Clone, Copy, Debug)]
pub struct Fnv64(pub u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    /// Feed bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}
