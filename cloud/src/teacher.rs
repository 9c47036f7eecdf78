//! The teacher: a float model whose predictions the student learns from.

/// A source of target logits for an uploaded input (typically the float
/// ONNX model the `.shift` was converted from, or a larger model).
pub trait Teacher: Send {
    /// Logits for one input (the flattened tensor the device's model
    /// takes, in float).
    fn logits(&mut self, input: &[f32]) -> anyhow::Result<Vec<f32>>;
}
