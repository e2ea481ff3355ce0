//! What produced a number: code version, build and machine. Recorded with every result.

use serde::Serialize;

/// Versions, build flags and machine facts.
#[derive(Debug, Clone, Serialize)]
pub struct Provenance {
    /// protbench version.
    pub harness_version: &'static str,
    /// Git commit of the build (`-dirty` when it had uncommitted changes).
    pub git: &'static str,
    /// Cargo profile of the build.
    pub profile: &'static str,
    /// RUSTFLAGS of the build (target-cpu changes numbers).
    pub rustflags: &'static str,
    /// CPU features candle was compiled with.
    pub cpu_features: Vec<&'static str>,
    /// Threads available to the compute pool.
    pub threads: usize,
    /// Device the run used.
    pub device: String,
    /// Operating system and architecture.
    pub os: String,
}

impl Provenance {
    /// Collects the facts for a run on `device`.
    pub fn collect(device: &candle_core::Device) -> Self {
        let mut cpu_features = Vec::new();
        if candle_core::utils::with_avx() {
            cpu_features.push("avx");
        }
        if candle_core::utils::with_f16c() {
            cpu_features.push("f16c");
        }
        if cfg!(target_feature = "avx2") {
            cpu_features.push("avx2");
        }
        if cfg!(target_feature = "avx512f") {
            cpu_features.push("avx512f");
        }
        Self {
            harness_version: env!("CARGO_PKG_VERSION"),
            git: env!("PROTBENCH_GIT"),
            profile: env!("PROTBENCH_PROFILE"),
            rustflags: env!("PROTBENCH_RUSTFLAGS"),
            cpu_features,
            threads: candle_core::utils::get_num_threads(),
            device: crate::device::describe(device),
            os: format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH),
        }
    }
}
