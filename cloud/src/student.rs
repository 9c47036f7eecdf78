//! Float emulation of a `.shift` network with a backward pass for the
//! normalization parameters (work in progress).
