//! Convolution forward and forward + backward at ResNet-20's layer shapes (batch 128), stock
//! candle against the fast CPU kernels, plus the fused batch norm + ReLU, plus the single-thread
//! rate of the matrix products the kernel-row convolutions make per image (throughput in
//! "elements" is flops: criterion's Gelem/s reads as GFLOP/s). Few samples, so the whole run
//! takes about a minute; the machines are shared, so compare only within one run.
//!
//! `cargo bench -p harness-core --bench kernels`

#![allow(
    missing_docs,
    reason = "criterion_group! generates an undocumented function"
)]

use candle_core::{Device, Tensor, Var};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use harness_core::nn::{cpu, ops};

/// (name, in channels, out channels, input side, kernel, stride, padding).
const LAYERS: [(&str, usize, usize, usize, usize, usize, usize); 5] = [
    ("stem 3-16 32x32", 3, 16, 32, 3, 1, 1),
    ("3x3 16-16 32x32", 16, 16, 32, 3, 1, 1),
    ("3x3 s2 16-32 32x32", 16, 32, 32, 3, 2, 1),
    ("1x1 s2 16-32 32x32", 16, 32, 32, 1, 2, 0),
    ("3x3 64-64 8x8", 64, 64, 8, 3, 1, 1),
];

const BATCH: usize = 128;

fn conv(c: &mut Criterion) -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let mut group = c.benchmark_group("conv2d");
    group.sample_size(10);
    group.warm_up_time(std::time::Duration::from_millis(200));
    group.measurement_time(std::time::Duration::from_secs(1));
    for (name, cin, cout, side, k, stride, pad) in LAYERS {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (BATCH, cin, side, side), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.1, (cout, cin, k, k), &dev)?)?;
        for fast in [false, true] {
            let path = if fast { "fast" } else { "stock" };
            let run = |backward: bool| -> candle_core::Result<()> {
                let y = if fast {
                    cpu::conv2d(x.as_tensor(), w.as_tensor(), stride, pad, 1)?
                } else {
                    x.as_tensor().conv2d(w.as_tensor(), pad, stride, 1, 1)?
                };
                if backward {
                    y.sum_all()?.backward()?;
                }
                Ok(())
            };
            run(true)?;
            group.bench_function(format!("{name} forward {path}"), |b| b.iter(|| run(false)));
            group.bench_function(format!("{name} fwd+bwd {path}"), |b| b.iter(|| run(true)));
        }
    }
    group.finish();
    Ok(())
}

fn batch_norm(c: &mut Criterion) -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let mut group = c.benchmark_group("batch_norm_relu");
    group.sample_size(10);
    group.warm_up_time(std::time::Duration::from_millis(200));
    group.measurement_time(std::time::Duration::from_secs(1));
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (BATCH, 16, 32, 32), &dev)?)?;
    let g = Var::from_tensor(&Tensor::ones(16, candle_core::DType::F32, &dev)?)?;
    let b = Var::from_tensor(&Tensor::zeros(16, candle_core::DType::F32, &dev)?)?;
    for fast in [false, true] {
        let path = if fast { "fast" } else { "stock" };
        group.bench_function(format!("16x32x32 fwd+bwd {path}"), |bench| {
            bench.iter(|| -> candle_core::Result<()> {
                let _switch = cpu::scoped_enabled(fast);
                let y =
                    ops::batch_norm_relu_train(x.as_tensor(), g.as_tensor(), b.as_tensor(), 1e-5)?;
                y.output.sum_all()?.backward()?;
                Ok(())
            })
        });
    }
    group.finish();
    Ok(())
}

/// One image's products in a 3x3 stride-1 convolution of ResNet-20's three stages, done as k
/// kernel-row products (`tap_rows.rs`): forward `W_ki[O, 3C] x taps[3C, P]`, weight gradient
/// `dY[O, P] x taps^T[P, 3C]`, input gradient `W_ki^T[3C, O] x dY[O, P]`. Says whether a
/// stage's products are too small or too thin to run at the rate of the others.
fn products(c: &mut Criterion) {
    let mut group = c.benchmark_group("gemm per image, 1 thread");
    group.sample_size(10);
    group.warm_up_time(std::time::Duration::from_millis(200));
    group.measurement_time(std::time::Duration::from_secs(1));
    for (channels, side) in [(16usize, 32usize), (32, 16), (64, 8)] {
        let (o, k, p) = (channels, 3 * channels, side * side);
        for (what, m, kk, n) in [
            ("forward", o, k, p),
            ("weight grad", o, p, k),
            ("input grad", k, o, p),
        ] {
            let a: Vec<f32> = (0..m * kk).map(|i| (i % 7) as f32 * 0.1).collect();
            let b: Vec<f32> = (0..kk * n).map(|i| (i % 5) as f32 * 0.1).collect();
            let mut dst = vec![0f32; m * n];
            group.throughput(Throughput::Elements((2 * m * kk * n) as u64));
            group.bench_function(format!("{what} {m}x{kk}x{n}"), |bench| {
                bench.iter(|| cpu::matmul_one_thread(&mut dst, &a, &b, m, kk, n))
            });
        }
    }
    group.finish();
}

fn all(c: &mut Criterion) {
    products(c);
    if let Err(e) = conv(c).and_then(|()| batch_norm(c)) {
        eprintln!("benchmark setup failed: {e}");
    }
}

criterion_group!(benches, all);
criterion_main!(benches);
