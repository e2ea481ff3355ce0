//! protbench engine: the model zoo and its layers, parameters and their PyTorch-compatible files,
//! training and evaluation, and the plug-in contract defences and attacks implement.
//!
//! - [`zoo`]: models as lists of addressable stages (run any range, hooks per stage and per
//!   convolution / linear layer, exit heads, models built from partial stores), built once for
//!   every architecture on top of `Model::run_stage`.
//! - [`params`]: the named tensors of a model and their safetensors files.
//! - [`protect`]: what a defence declares and returns, what a thief takes (a typed
//!   `StolenArtifact` with its `Disclosure`), what an attack needs; the registries.
//! - [`seeded`]: the reproducible randomness defences and attacks share.
//! - [`testkit`]: the small trained victim every component test protects and attacks.
//! - [`train`], [`eval`], [`eval_denoise`]: the training loop and the metrics.
//! - [`latency`]: batch-1 latency timed interleaved, with paired ratios between deployments.
//!
//! Everything takes a candle [`Device`](candle_core::Device), so the same code runs on the CPU
//! and, with the `cuda` feature, on a GPU.
#![warn(missing_docs)]

pub mod atomic_file;
mod error;

pub mod eval;
pub mod eval_denoise;
mod kernel_choice;
pub mod latency;
pub mod nn;
pub mod params;
pub mod protect;
pub mod quant;
pub mod sealed;
pub mod seeded;
mod task;
pub mod testkit;
pub mod train;
pub mod zoo;

pub use error::{Error, Result};
pub use params::ParamStore;
pub use task::Task;

pub use zoo::{Arch, Model, ModelSpec};
