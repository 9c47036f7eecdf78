//! Which kernel family runs a layer. The one place to change when SIMD
//! dispatch lands in the runtime.

use shiftnn_runtime::{Mode, Op, WeightKind};

/// The kernel that runs `op` in a model of `mode`, as reported by `inspect`
/// and `bench`: `family/weights-activations` for conv and linear layers,
/// the family alone for everything else.
pub fn kernel_name(mode: Mode, op: &Op) -> String {
    let family = "scalar";
    match op.weight() {
        Some(w) => {
            let variant = match (w.kind, mode) {
                (WeightKind::Shift, Mode::Int8) => "shift-i8",
                (WeightKind::Shift, Mode::Float) => "shift-f32",
                (WeightKind::I8, _) => "w8-i8",
                (WeightKind::F32, _) => "f32",
            };
            format!("{family}/{variant}")
        }
        None => family.to_string(),
    }
}
