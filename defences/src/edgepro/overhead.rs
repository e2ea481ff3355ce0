//! The cost of the password hook at inference: the same locked weights timed with and without
//! it, interleaved in rounds by the harness's one latency timer ([`harness_core::latency`]), batch
//! 1, so the difference is the hook's own overhead and not the machine's drift. The harness times
//! the owner's deployment itself; this isolates the hook's share.

use candle_core::Device;
use datasets::ImageSet;
use datasets::catalog::Normalization;
use harness_core::Result;
use harness_core::latency::{LatencyPlan, Summary, time_deployments};
use harness_core::protect::Deployed;

/// Batch-1 latency medians in milliseconds of `with` and `without` over `runs` interleaved
/// rounds (after 5 warm-up rounds), on the images of `set` in turn.
pub fn paired_latency_ms_p50(
    with: &dyn Deployed,
    without: &dyn Deployed,
    set: &ImageSet,
    normalization: Option<&Normalization>,
    runs: usize,
    device: &Device,
) -> Result<(f64, f64)> {
    let plan = LatencyPlan {
        warmup_rounds: 5,
        rounds: runs,
    };
    let times = time_deployments(&[with, without], set, normalization, plan, device)?;
    Ok((Summary::of(&times[0]).p50, Summary::of(&times[1]).p50))
}
