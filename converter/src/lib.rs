//! shiftnn converter: ONNX import, DenseShift quantization, calibration and
//! the `.shift` writer, plus the float reference executor used for accuracy
//! reports.
pub mod ir;
pub mod lower;
pub mod npy;
pub mod onnx;
pub mod quantize;
pub mod reference;
