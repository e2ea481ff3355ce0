//! Training and inference throughput of ResNet-20 and VGG-small on the CPU, stock candle kernels
//! against the fast ones, in the same run (the machines are shared and noisy: compare only
//! figures from one run).
//!
//! `cargo run --release -p harness-core --example train_speed [steps] [fast|stock]`
//! (the last argument limits the run to one path, for profiling).
//!
//! Training: batch 128 of 3 x 32 x 32, forward + backward + SGD with Nesterov momentum
//! ([`harness_core::train::Sgd`]). Inference: batch 256, eval mode, no gradients. Each figure is
//! the median of `steps` timed iterations after one warm-up.

use std::time::Instant;

use candle_core::{Device, Tensor};
use harness_core::ParamStore;
use harness_core::nn::cpu;
use harness_core::train::{Sgd, SgdConfig};
use harness_core::zoo::{self, Arch, ModelSpec};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// (train images/s, inference images/s).
fn measure(arch: Arch, steps: usize) -> candle_core::Result<(f64, f64)> {
    let dev = Device::Cpu;
    let params = ParamStore::new(0, &dev);
    let model = zoo::build(&ModelSpec::new(arch, 10), &params)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let mut opt = Sgd::new(params.trainable(), SgdConfig::default())
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let batch = 128;
    let images = Tensor::randn(0f32, 1.0, (batch, 3, 32, 32), &dev)?;
    let labels = Tensor::new((0..batch as u32).map(|i| i % 10).collect::<Vec<_>>(), &dev)?;
    let mut train_times = Vec::new();
    for i in 0..=steps {
        let t = Instant::now();
        let logits = model.forward_t(&images, true)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
        opt.backward_step(&loss)?;
        if i > 0 {
            train_times.push(t.elapsed().as_secs_f64());
        }
    }
    let big = Tensor::randn(0f32, 1.0, (256, 3, 32, 32), &dev)?;
    let mut infer_times = Vec::new();
    for i in 0..=steps {
        let t = Instant::now();
        let logits = model.forward_t(&big, false)?;
        logits.sum_all()?.to_scalar::<f32>()?;
        if i > 0 {
            infer_times.push(t.elapsed().as_secs_f64());
        }
    }
    Ok((
        batch as f64 / median(train_times),
        256.0 / median(infer_times),
    ))
}

fn main() -> candle_core::Result<()> {
    let steps = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5usize)
        .max(1);
    println!(
        "{} rayon threads, {steps} timed steps per figure (median)",
        rayon::current_num_threads()
    );
    println!(
        "{:<12} {:<6} {:>12} {:>14}",
        "model", "path", "train img/s", "infer img/s"
    );
    let paths: &[bool] = match std::env::args().nth(2).as_deref() {
        Some("fast") => &[true],
        Some("stock") => &[false],
        _ => &[false, true],
    };
    for arch in [Arch::Resnet20, Arch::VggSmall] {
        for &fast in paths {
            cpu::set_enabled(fast);
            let (train, infer) = measure(arch, steps)?;
            println!(
                "{:<12} {:<6} {:>12.0} {:>14.0}",
                arch.id(),
                if fast { "fast" } else { "stock" },
                train,
                infer
            );
        }
    }
    Ok(())
}
