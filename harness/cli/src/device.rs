//! Picks the candle device from `--device`.

use anyhow::{Context, bail};
use candle_core::Device;

/// `cpu`, `cuda` or `cuda:N`. CUDA needs a build with `--features cuda`.
pub fn parse(spec: &str) -> anyhow::Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        _ => {
            let Some(rest) = spec.strip_prefix("cuda") else {
                bail!(crate::exit::UsageError(format!(
                    "unknown device `{spec}`; use cpu, cuda or cuda:N"
                )));
            };
            let ordinal = match rest.strip_prefix(':') {
                Some(n) => n.parse::<usize>().map_err(|_| {
                    crate::exit::UsageError(format!("bad CUDA ordinal in `{spec}`"))
                })?,
                None if rest.is_empty() => 0,
                None => bail!(crate::exit::UsageError(format!("unknown device `{spec}`"))),
            };
            Device::new_cuda(ordinal).with_context(|| {
                format!("cannot open {spec}: this build may lack the `cuda` feature (cargo build --release --features cuda)")
            })
        }
    }
}

/// A short name for records.
pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => "cuda".into(),
        Device::Metal(_) => "metal".into(),
    }
}
