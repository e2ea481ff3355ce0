//! Helpers shared by the CLI tests that run matrices.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// Runs `harness` in `cwd` with a private decoded-image cache and no ambient data directory.
pub fn harness(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(args)
        .current_dir(cwd)
        .env("HARNESS_CACHE", cwd.join("cache"))
        .env_remove("HARNESS_DATA")
        .output()
        .expect("the harness binary runs")
}

/// The process's stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The process's stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A matrix that trains and attacks for real in seconds: 8x8 synthetic images, ResNet-20,
/// 2 defence cells, extraction on both, FTLL once (white-box) and the no-theft reference.
pub const MATRIX: &str = r#"
name = "t"
[axes]
datasets = ["synthetic:8"]
models = ["resnet20"]
defences = ["none", "none+top1-label"]
attacks = ["scratch", "extraction", "ftll"]
seeds = [0]
[victim]
epochs = 2
batch_size = 32
lr = 0.05
[budget]
epochs = 1
queries = 128
[attacks.ftll]
use = "fine-tune"
variant = "ftll"
"#;
