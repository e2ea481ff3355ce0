//! protbench engine: the model zoo and its layers, parameters and their PyTorch-compatible files,
//! training and evaluation.
//!
//! Everything takes a candle [`Device`](candle_core::Device), so the same code runs on the CPU
//! and, with the `cuda` feature, on a GPU.
#![warn(missing_docs)]

pub mod atomic_file;
mod error;

pub mod eval;
pub mod eval_denoise;
pub mod nn;
pub mod params;
pub mod protect;
pub mod sealed;
pub mod seeded;
mod task;
pub mod train;
pub mod zoo;

pub use error::{Error, Result};
pub use params::ParamStore;
pub use task::Task;

pub use zoo::{Arch, Model, ModelSpec};
