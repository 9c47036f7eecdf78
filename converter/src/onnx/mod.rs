//! ONNX import (in progress)
