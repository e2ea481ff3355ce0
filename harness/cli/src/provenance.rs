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
    /// SIMD features of the CPU that ran (detected at run time: the matrix-product kernels pick
    /// their code path from these, so numbers from machines with different sets do not compare).
    pub cpu_features: Vec<&'static str>,
    /// The CPU's model name (`/proc/cpuinfo`; empty where it cannot be read): cache sizes and
    /// micro-architecture, not only the features, can change the order of a kernel's sums.
    pub cpu_model: String,
    /// SIMD features the binary was compiled to assume (`-C target-cpu` / `target-feature`).
    pub compiled_features: Vec<&'static str>,
    /// Threads available to the compute pool.
    pub threads: usize,
    /// The CPU kernels' numerics mode (`PROTBENCH_NUMERICS`): `fixed (KERNEL f32 kernel)` gives
    /// the same bits on every CPU and thread count, `fast (gemm crate)` may not reproduce on
    /// another machine.
    pub numerics: String,
    /// Device the run used.
    pub device: String,
    /// Operating system and architecture.
    pub os: String,
}

impl Provenance {
    /// `VERSION+GIT PROFILE`: the short tag stored with every trained epoch.
    pub fn build_tag(&self) -> String {
        format!("{}+{} {}", self.harness_version, self.git, self.profile)
    }

    /// Collects the facts for a run on `device`.
    pub fn collect(device: &candle_core::Device) -> Self {
        let cpu_features = cpu_features();
        Self {
            harness_version: env!("CARGO_PKG_VERSION"),
            git: env!("PROTBENCH_GIT"),
            profile: env!("PROTBENCH_PROFILE"),
            rustflags: env!("PROTBENCH_RUSTFLAGS"),
            cpu_features,
            cpu_model: cpu_model(),
            compiled_features: compiled_features(),
            threads: candle_core::utils::get_num_threads(),
            numerics: harness_core::nn::cpu::numerics::describe(),
            device: crate::device::describe(device),
            os: format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH),
        }
    }
}

/// SIMD features of this CPU, detected at run time.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|rest| rest.split_once(':'))
                .map(|(_, name)| name.trim().to_string())
        })
        .unwrap_or_default()
}

fn cpu_features() -> Vec<&'static str> {
    let mut found = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        for (name, present) in [
            ("sse4.2", std::arch::is_x86_feature_detected!("sse4.2")),
            ("avx", std::arch::is_x86_feature_detected!("avx")),
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("fma", std::arch::is_x86_feature_detected!("fma")),
            ("f16c", std::arch::is_x86_feature_detected!("f16c")),
            ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
        ] {
            if present {
                found.push(name);
            }
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            found.push("neon");
        }
    }
    found
}

/// SIMD features the compiler was told every target CPU has.
fn compiled_features() -> Vec<&'static str> {
    let mut found = Vec::new();
    if cfg!(target_feature = "avx") {
        found.push("avx");
    }
    if cfg!(target_feature = "avx2") {
        found.push("avx2");
    }
    if cfg!(target_feature = "fma") {
        found.push("fma");
    }
    if cfg!(target_feature = "avx512f") {
        found.push("avx512f");
    }
    found
}
