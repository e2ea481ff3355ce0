//! Training: the optimiser, learning-rate schedules, objectives, the loop with progress and
//! resumable checkpoints.

mod adam;
mod checkpoint;
pub mod denoise;
mod objective;
mod schedule;
mod sgd;
mod trainer;

pub use adam::AdamConfig;
pub use checkpoint::Checkpoint;
pub use denoise::{DEFAULT_SIGMA_255, Denoise};
pub use objective::{CrossEntropy, Objective, StepLoss, correct_count};
pub use schedule::Schedule;
pub use sgd::{Sgd, SgdConfig};
pub use trainer::{EpochHook, EpochStats, StepHook, TrainConfig, TrainOptions, TrainReport, train};
