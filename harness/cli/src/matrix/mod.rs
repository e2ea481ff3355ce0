//! `harness run --matrix`: the attack x defence matrix.

pub mod compare;
pub mod config;
pub mod exact;
pub mod html;
pub mod plan;
pub mod records;
pub mod report;
pub mod run;
