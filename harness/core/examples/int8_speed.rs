//! Int8 inference throughput of one zoo net at batch 256, and nothing else: the loop to profile
//! or to compare int8 kernels with (`harness bench --precision int8` also trains and times f32,
//! which drowns the int8 part in a profile).
//!
//! `cargo run --release -p harness-core --example int8_speed [resnet20|vgg-small] [steps]`
//! (`PROTBENCH_INT8_KERNEL` forces a kernel, as everywhere). The weights are random and the
//! observers calibrated on random inputs: the speed does not depend on the values.

use std::time::Instant;

use candle_core::{Device, Tensor};
use harness_core::ParamStore;
use harness_core::protect::{Deployed, PlainModel};
use harness_core::quant::{FakeQuantModel, Int8Model, Qat, dot};
use harness_core::zoo::{Arch, ModelSpec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let arch = Arch::parse(&args.next().unwrap_or_else(|| "resnet20".into()))?;
    let steps: usize = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
        .max(1);
    let dev = Device::Cpu;
    let spec = ModelSpec::new(arch, 10);
    let plain = PlainModel::build(spec, ParamStore::new(0, &dev))?;
    let qat = std::sync::Arc::new(Qat::new());
    for _ in 0..4 {
        qat.observe(&plain, &Tensor::randn(0f32, 1.0, (32, 3, 32, 32), &dev)?)?;
    }
    let int8 = Int8Model::convert(&FakeQuantModel::new(plain, qat))?;
    let x = Tensor::randn(0f32, 1.0, (256, 3, 32, 32), &dev)?;
    let mut times = Vec::with_capacity(steps);
    for i in 0..=steps {
        let t = Instant::now();
        std::hint::black_box(int8.logits(&x)?.flatten_all()?.to_vec1::<f32>()?);
        if i > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{} int8 ({} kernel, {} threads): {:.0} img/s at batch 256 (median of {steps}; min {:.0}, max {:.0})",
        arch.id(),
        dot::Kernel::selected().name(),
        rayon::current_num_threads(),
        256.0 / times[times.len() / 2],
        256.0 / times[times.len() - 1],
        256.0 / times[0],
    );
    Ok(())
}
