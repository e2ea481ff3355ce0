//! The cost of the password hook at inference: the same locked weights timed with and without
//! it, interleaved, batch 1, so the difference is the hook's own overhead and not the machine's
//! drift. The harness times the owner's deployment itself; this isolates the hook's share.

use std::time::Instant;

use candle_core::{DType, Device};
use datasets::ImageSet;
use datasets::catalog::Normalization;
use harness_core::protect::Deployed;
use harness_core::{Error, Result};

/// Batch-1 latency medians in milliseconds of `with` and `without` over `runs` interleaved
/// calls each (after 5 warm-up calls each), on the images of `set` in turn.
pub fn paired_latency_ms_p50(
    with: &dyn Deployed,
    without: &dyn Deployed,
    set: &ImageSet,
    normalization: Option<&Normalization>,
    runs: usize,
    device: &Device,
) -> Result<(f64, f64)> {
    if set.is_empty() || runs == 0 {
        return Err(Error::Config(
            "timing the hook needs at least one image and one run".into(),
        ));
    }
    let warmup = 5;
    let (mut a, mut b) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for i in 0..runs + warmup {
        let xs = datasets::batch::to_tensor(set, &[i % set.len()], normalization, device)?;
        for (model, times) in [(with, &mut a), (without, &mut b)] {
            let start = Instant::now();
            // Force the computation on lazy devices before stopping the clock.
            let _ = model
                .logits(&xs)?
                .to_dtype(DType::F32)?
                .sum_all()?
                .to_scalar::<f32>()?;
            if i >= warmup {
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    Ok((median(&mut a), median(&mut b)))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
