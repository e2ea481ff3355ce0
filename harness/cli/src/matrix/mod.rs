//! `harness run --matrix`: the attack x defence matrix.

pub mod cell;
pub mod compare;
pub mod config;
pub mod exact;
pub mod html;
pub mod machines;
pub mod measure;
pub mod plan;
pub mod records;
pub mod report;
pub mod run;
pub mod seed_spread;
pub mod sinks;
pub mod victims;
