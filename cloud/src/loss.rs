//! The CEMA loss (work in progress).
