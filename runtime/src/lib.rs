//! shiftnn runtime: reads `.shift` models in place, plans one memory arena,
//! and executes the graph in float or int8 mode with the kernels of
//! `shiftnn-kernels`.
//!
//! The core is `no_std + alloc`: parsing the model and deriving the
//! per-channel requantizers allocate once at load; [`Session::run`]
//! allocates nothing. The `std` feature adds memory-mapped files and
//! threads.
//!
//! ```no_run
//! # #[cfg(feature = "std")] {
//! use shiftnn_runtime::{Model, Session};
//! let model = Model::open("fmnist.shift").unwrap();
//! let mut session = Session::new(&model).unwrap();
//! let mut logits = vec![0f32; model.output_len(0)];
//! session.run(&[&vec![0f32; model.input_len(0)]], &mut [&mut logits]).unwrap();
//! # }
//! ```
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(missing_docs)]

extern crate alloc;

pub mod adapt;
mod derive;
mod embed;
mod error;
mod exec;
pub mod format;
pub mod graph;
mod model;
mod parallel;
pub mod planner;

pub use derive::{NodeParams, Prepared};
pub use embed::AlignedBytes;
pub use error::Error;
pub use exec::{Observer, Session, ValueView};
pub use graph::{Act, DType, Graph, Mode, Node, Op, Value, WeightKind, WeightRef};
pub use model::{Model, NormParams, TensorRef};
pub use shiftnn_kernels as kernels;
