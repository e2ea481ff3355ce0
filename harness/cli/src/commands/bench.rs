//! `harness bench`: CPU speed of one zoo classifier, measured the way
//! `shared/bench/torch_reference.py` measures PyTorch, so that both can be compared side by side
//! (see `ci/bench/compare_torch.sh`).
//!
//! Inputs are seeded random 3x32x32 images with 10 classes. Three figures:
//! - training images/s at `--train-batch`: one step is a train-mode forward, mean cross-entropy,
//!   backward and one SGD-momentum step (lr 0.1, momentum 0.9, as the reference); 3 warm-up steps,
//!   then `--rounds` rounds of 3 timed steps;
//! - inference images/s at `--infer-batch` in eval mode: 3 warm-up forwards, then `--rounds`
//!   rounds of 2 timed forwards;
//! - batch-1 latency: 20 warm-up then 200 timed rounds of single-image forwards, each read back
//!   to host memory before the clock stops. Each round times the model twice, interleaved, as
//!   the matrix times deployments; the paired ratio of the two series (the model against
//!   itself) is printed as a check of the method on this machine.
//!
//! Plus the peak resident memory of the process (`VmHWM`, Linux only; 0 elsewhere).

use std::time::Instant;

use anyhow::Context;
use candle_core::{Device, Tensor};
use harness_core::latency::{LatencyPlan, Ratio, Summary, paired_ratio, time_interleaved};
use harness_core::train::{Sgd, SgdConfig};
use harness_core::{Arch, Model, ModelSpec, ParamStore, zoo};
use serde_json::json;

use crate::cli::BenchArgs;
use crate::exit::UsageError;
use crate::provenance::Provenance;

/// Classes of the random labels and of the model head.
const CLASSES: usize = 10;
/// Image side (CIFAR-sized inputs, as the reference).
const SIDE: usize = 32;
/// Training steps before timing starts.
const TRAIN_WARMUP_STEPS: usize = 3;
/// Training steps per timed round.
const TRAIN_STEPS_PER_ROUND: usize = 3;
/// Inference forwards before timing starts.
const INFER_WARMUP: usize = 3;
/// Inference forwards per timed round (as the reference).
const INFER_PER_ROUND: usize = 2;
/// Batch-1 forwards before timing starts.
const LATENCY_WARMUP: usize = 20;
/// Timed batch-1 forwards.
const LATENCY_RUNS: usize = 200;
/// Seed of the random inputs and of the model weights.
const SEED: u64 = 0;

/// Runs the command.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let arch = Arch::parse(&args.model)?;
    if !arch.is_classifier() {
        return Err(UsageError(format!(
            "`{}` is not a classifier; `harness bench` measures classifiers only",
            arch.id()
        ))
        .into());
    }
    for (name, value) in [
        ("--train-batch", args.train_batch),
        ("--infer-batch", args.infer_batch),
        ("--rounds", args.rounds),
    ] {
        if value == 0 {
            return Err(UsageError(format!("{name} must be at least 1")).into());
        }
    }
    if args.stock {
        harness_core::nn::cpu::set_enabled(false);
    }
    let kernels = if harness_core::nn::cpu::enabled() {
        "fast"
    } else {
        "stock"
    };

    let device = Device::Cpu;
    let params = ParamStore::new(SEED, &device);
    let model = zoo::build(&ModelSpec::new(arch, CLASSES), &params)
        .with_context(|| format!("building `{}`", arch.id()))?;
    let num_params = params.num_parameters();
    let mut inputs = Inputs::new(SEED);

    let train = bench_train(model.as_ref(), &params, &mut inputs, &args)?;
    let infer = bench_infer(model.as_ref(), &mut inputs, &args)?;
    let latency = bench_latency(model.as_ref(), &mut inputs)?;
    let int8 = if args.precision == "int8" {
        Some(bench_int8(
            &ModelSpec::new(arch, CLASSES),
            &params,
            &mut inputs,
            &args,
        )?)
    } else {
        None
    };
    let peak_rss_bytes = peak_rss_bytes();
    let threads = candle_core::utils::get_num_threads();

    println!(
        "{} ({} parameters), {} kernels, {} threads, {} rounds",
        arch.id(),
        num_params,
        kernels,
        threads,
        args.rounds
    );
    println!(
        "{:<28} {:>10} {:>10} {:>10}",
        "measurement", "min", "median", "max"
    );
    let row = |name: String, s: &Stats| {
        println!(
            "{name:<28} {:>10.1} {:>10.1} {:>10.1}",
            s.min, s.median, s.max
        );
    };
    row(
        format!("train img/s (b{})", args.train_batch),
        &train.images_per_second,
    );
    row(format!("infer img/s (b{})", args.infer_batch), &infer);
    println!(
        "{:<28} {:>10.3} {:>10.3} {:>10.3}   p99 {:.3}",
        "latency b1 (ms)", latency.min, latency.median, latency.max, latency.p99
    );
    println!(
        "{:<28} {:>10.3} [{:.3}, {:.3}]   (the model against itself, interleaved; ideally 1)",
        "latency b1 paired ratio",
        latency.self_ratio.median,
        latency.self_ratio.low,
        latency.self_ratio.high
    );
    if let Some(q) = &int8 {
        row(
            format!("int8 infer img/s (b{})", args.infer_batch),
            &q.infer,
        );
        println!(
            "{:<28} {:>10.3} [{:.3}, {:.3}]   (int8 / f32, interleaved; int8 p50 {:.3} ms)",
            "int8 latency b1 ratio", q.ratio.median, q.ratio.low, q.ratio.high, q.latency_p50
        );
        println!(
            "{:<28} {:>10} B   (f32: {} B)",
            "int8 file", q.file_bytes, q.f32_file_bytes
        );
        println!(
            "{:<28} {:>10}   (PROTBENCH_INT8_KERNEL=portable|avx2|avxvnni|avx512vnni forces one)",
            "int8 kernel",
            harness_core::quant::dot::Kernel::selected().name()
        );
    }
    println!(
        "{:<28} {:>10.1} MiB",
        "peak resident memory",
        peak_rss_bytes as f64 / (1024.0 * 1024.0)
    );
    println!(
        "training loss: first {:.4}, last {:.4}",
        train.first_loss, train.last_loss
    );

    if args.json {
        let out = json!({
            "model": arch.id(),
            "params": num_params,
            "kernels": kernels,
            "threads": threads,
            "train_batch": args.train_batch,
            "infer_batch": args.infer_batch,
            "rounds": args.rounds,
            "train_steps_per_round": TRAIN_STEPS_PER_ROUND,
            "infer_forwards_per_round": INFER_PER_ROUND,
            "train_images_per_second": train.images_per_second.median,
            "train_images_per_second_min": train.images_per_second.min,
            "train_images_per_second_max": train.images_per_second.max,
            "train_loss_first": train.first_loss,
            "train_loss_last": train.last_loss,
            "infer_images_per_second": infer.median,
            "infer_images_per_second_min": infer.min,
            "infer_images_per_second_max": infer.max,
            "latency_ms_p50": latency.median,
            "latency_ms_p99": latency.p99,
            "latency_ms_min": latency.min,
            "latency_ms_max": latency.max,
            "latency_runs": LATENCY_RUNS,
            "latency_self_ratio": latency.self_ratio.median,
            "latency_self_ratio_low": latency.self_ratio.low,
            "latency_self_ratio_high": latency.self_ratio.high,
            "int8_infer_images_per_second": int8.as_ref().map(|q| q.infer.median),
            "int8_latency_ms_p50": int8.as_ref().map(|q| q.latency_p50),
            "int8_latency_ratio": int8.as_ref().map(|q| q.ratio.median),
            "int8_latency_ratio_low": int8.as_ref().map(|q| q.ratio.low),
            "int8_latency_ratio_high": int8.as_ref().map(|q| q.ratio.high),
            "int8_file_bytes": int8.as_ref().map(|q| q.file_bytes),
            "f32_file_bytes": int8.as_ref().map(|q| q.f32_file_bytes),
            "int8_kernel": int8
                .as_ref()
                .map(|_| harness_core::quant::dot::Kernel::selected().name()),
            "peak_rss_bytes": peak_rss_bytes,
            "provenance": Provenance::collect(&device),
        });
        println!("{}", serde_json::to_string(&out)?);
    }
    Ok(())
}

/// Minimum, median and maximum of a series of measurements.
#[derive(Debug, Clone, Copy)]
struct Stats {
    min: f64,
    median: f64,
    max: f64,
}

impl Stats {
    /// The statistics of a non-empty series; the median of an even count is the mean of the two
    /// middle values (as Python's `statistics.median`).
    fn of(values: &[f64]) -> Stats {
        let s = Summary::of(values);
        Stats {
            min: s.min,
            median: s.p50,
            max: s.max,
        }
    }
}

/// What the training measurement found.
struct TrainResult {
    images_per_second: Stats,
    first_loss: f32,
    last_loss: f32,
}

/// Batch-1 latency in milliseconds.
struct Latency {
    min: f64,
    median: f64,
    p99: f64,
    max: f64,
    /// The model's paired ratio to itself (ideally 1).
    self_ratio: Ratio,
}

/// Seeded random images (standard normal, as `torch.randn`) and labels (SplitMix64).
struct Inputs {
    state: u64,
}

impl Inputs {
    fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// `n` x 3 x 32 x 32 standard normal images (Box-Muller).
    fn images(&mut self, n: usize) -> candle_core::Result<Tensor> {
        let len = n * 3 * SIDE * SIDE;
        let mut data = Vec::with_capacity(len + 1);
        while data.len() < len {
            let r = (-2.0 * self.uniform().ln()).sqrt();
            let theta = 2.0 * std::f64::consts::PI * self.uniform();
            data.push((r * theta.cos()) as f32);
            data.push((r * theta.sin()) as f32);
        }
        data.truncate(len);
        Tensor::from_vec(data, (n, 3, SIDE, SIDE), &Device::Cpu)
    }

    /// `n` labels in `0..CLASSES`.
    fn labels(&mut self, n: usize) -> candle_core::Result<Tensor> {
        let labels: Vec<u32> = (0..n)
            .map(|_| (self.next_u64() % CLASSES as u64) as u32)
            .collect();
        Tensor::from_vec(labels, n, &Device::Cpu)
    }
}

fn bench_train(
    model: &dyn Model,
    params: &ParamStore,
    inputs: &mut Inputs,
    args: &BenchArgs,
) -> anyhow::Result<TrainResult> {
    let batch = args.train_batch;
    let x = inputs.images(batch)?;
    let y = inputs.labels(batch)?;
    let mut opt = Sgd::new(
        params.trainable(),
        SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
            max_grad_norm: None,
            adam: None,
        },
    )?;
    let mut step = || -> candle_core::Result<Tensor> {
        let logits = model.forward_t(&x, true)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
        opt.backward_step(&loss)?;
        Ok(loss.detach())
    };

    let mut first_loss = f32::NAN;
    for i in 0..TRAIN_WARMUP_STEPS {
        let loss = step()?;
        if i == 0 {
            first_loss = loss.to_scalar::<f32>()?;
        }
    }
    let mut rates = Vec::with_capacity(args.rounds);
    let mut last = None;
    for _ in 0..args.rounds {
        let start = Instant::now();
        for _ in 0..TRAIN_STEPS_PER_ROUND {
            last = Some(step()?);
        }
        // Candle runs eagerly on the CPU: the parameters are updated when `step` returns.
        let elapsed = start.elapsed().as_secs_f64();
        rates.push((batch * TRAIN_STEPS_PER_ROUND) as f64 / elapsed);
    }
    let last_loss = match last {
        Some(loss) => loss.to_scalar::<f32>()?,
        None => f32::NAN,
    };
    Ok(TrainResult {
        images_per_second: Stats::of(&rates),
        first_loss,
        last_loss,
    })
}

fn bench_infer(model: &dyn Model, inputs: &mut Inputs, args: &BenchArgs) -> anyhow::Result<Stats> {
    let batch = args.infer_batch;
    let x = inputs.images(batch)?;
    let forward = || -> candle_core::Result<Vec<f32>> {
        model.forward_t(&x, false)?.flatten_all()?.to_vec1::<f32>()
    };
    for _ in 0..INFER_WARMUP {
        forward()?;
    }
    let mut rates = Vec::with_capacity(args.rounds);
    for _ in 0..args.rounds {
        let start = Instant::now();
        for _ in 0..INFER_PER_ROUND {
            forward()?;
        }
        let elapsed = start.elapsed().as_secs_f64();
        rates.push((batch * INFER_PER_ROUND) as f64 / elapsed);
    }
    Ok(Stats::of(&rates))
}

/// Batch-1 latency through the harness's one timer ([`harness_core::latency`]): the model is
/// timed as two subjects interleaved in the same rounds, so the paired ratio of the two (the
/// same model against itself) shows what the method reads on this machine when nothing differs.
fn bench_latency(model: &dyn Model, inputs: &mut Inputs) -> anyhow::Result<Latency> {
    let x = inputs.images(1)?;
    let plan = LatencyPlan {
        warmup_rounds: LATENCY_WARMUP,
        rounds: LATENCY_RUNS,
    };
    let times = time_interleaved(2, plan, |_| {
        let out = model
            .forward_t(&x, false)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        std::hint::black_box(out);
        Ok(())
    })?;
    let summary = Summary::of(&times[0]);
    Ok(Latency {
        min: summary.min,
        median: summary.p50,
        p99: summary.p99,
        max: summary.max,
        self_ratio: paired_ratio(&times[1], &times[0]),
    })
}

/// What the int8 deployment of the benchmarked model measured.
struct Int8Figures {
    /// Bytes of the int8 safetensors file, and of the f32 one.
    file_bytes: u64,
    f32_file_bytes: u64,
    infer: Stats,
    latency_p50: f64,
    /// int8 / f32 batch-1 latency, paired.
    ratio: Ratio,
}

/// The model's int8 deployment: observers calibrated on four batches of the random inputs (no
/// training; the weights are the benchmark's), frozen, batch norm folded, written to its int8
/// file and read back, then inference
/// throughput as `bench_infer` measures f32's and batch-1 latency interleaved with f32.
fn bench_int8(
    spec: &ModelSpec,
    params: &ParamStore,
    inputs: &mut Inputs,
    args: &BenchArgs,
) -> anyhow::Result<Int8Figures> {
    use harness_core::protect::{Deployed, PlainModel};
    use harness_core::quant::{FakeQuantModel, Int8Model, Qat};
    let plain = PlainModel::build(spec.clone(), params.clone())?;
    let qat = std::sync::Arc::new(Qat::new());
    for _ in 0..4 {
        qat.observe(&plain, &inputs.images(32)?)?;
    }
    let converted = Int8Model::convert(&FakeQuantModel::new(plain.clone(), qat))?;
    // The deployment is benchmarked as shipped: written to its int8 file and read back.
    let dir = tempfile::tempdir().context("a temporary folder for the int8 file")?;
    let file = dir.path().join("int8.safetensors");
    converted.save(&file)?;
    let int8 = Int8Model::load(spec.clone(), &file)?;
    let file_bytes = std::fs::metadata(&file)?.len();
    let x = inputs.images(args.infer_batch)?;
    let forward =
        || -> anyhow::Result<Vec<f32>> { Ok(int8.logits(&x)?.flatten_all()?.to_vec1::<f32>()?) };
    for _ in 0..INFER_WARMUP {
        forward()?;
    }
    let mut rates = Vec::with_capacity(args.rounds);
    for _ in 0..args.rounds {
        let start = Instant::now();
        for _ in 0..INFER_PER_ROUND {
            forward()?;
        }
        rates.push((args.infer_batch * INFER_PER_ROUND) as f64 / start.elapsed().as_secs_f64());
    }
    let one = inputs.images(1)?;
    let plan = LatencyPlan {
        warmup_rounds: LATENCY_WARMUP,
        rounds: LATENCY_RUNS,
    };
    let times = time_interleaved(2, plan, |i| {
        let out = if i == 0 {
            plain.model.forward_t(&one, false)?
        } else {
            int8.logits(&one)?
        };
        std::hint::black_box(out.flatten_all()?.to_vec1::<f32>()?);
        Ok(())
    })?;
    Ok(Int8Figures {
        file_bytes,
        f32_file_bytes: params.to_safetensors_bytes()?.len() as u64,
        infer: Stats::of(&rates),
        latency_p50: Summary::of(&times[1]).p50,
        ratio: paired_ratio(&times[1], &times[0]),
    })
}

/// Peak resident set size of this process in bytes (`VmHWM`), 0 where it cannot be read.
fn peak_rss_bytes() -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_seeded() {
        let a = Inputs::new(7)
            .images(2)
            .and_then(|t| t.flatten_all()?.to_vec1::<f32>());
        let b = Inputs::new(7)
            .images(2)
            .and_then(|t| t.flatten_all()?.to_vec1::<f32>());
        assert_eq!(a.ok(), b.ok());
    }

    #[test]
    fn peak_rss_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_bytes() > 0);
        }
    }
}
