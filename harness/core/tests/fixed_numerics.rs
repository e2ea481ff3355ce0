//! Fixed numerics (the default) end to end: a few training steps of ResNet-20
//! and of the small VGG give bit-identical weights under every f32 kernel this CPU has
//! (portable, AVX2, AVX-512) and on 1, 2 and 3 threads, so a table made on one machine is
//! reproduced on another whatever its instruction set. Its own test binary, since the mode is
//! set for the whole process.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers panic on failure by design"
)]

use candle_core::Device;
use datasets::catalog::{DatasetId, LoadOptions, load};
use datasets::{ImageSet, Split};
use harness_core::nn::cpu::numerics::{F32Kernel, Numerics};
use harness_core::train::{CrossEntropy, SgdConfig, TrainConfig, TrainOptions, train};
use harness_core::{Arch, ModelSpec, ParamStore};

fn synthetic(side: usize, images: usize) -> ImageSet {
    let dir = tempfile::tempdir().unwrap();
    let opts = LoadOptions {
        use_cache: false,
        ..LoadOptions::default()
    };
    load(&DatasetId::Synthetic(side), dir.path(), Split::Train, &opts)
        .unwrap()
        .select(&(0..images).collect::<Vec<_>>())
}

/// The weights after one epoch of `arch` on `set` with `threads` threads.
fn trained(arch: Arch, set: &ImageSet, threads: usize) -> Vec<u8> {
    let cfg = TrainConfig {
        epochs: 1,
        batch_size: 64,
        sgd: SgdConfig {
            lr: 0.05,
            ..SgdConfig::default()
        },
        normalization: Some(DatasetId::Synthetic(8).info().normalization),
        seed: 7,
        ..TrainConfig::default()
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let params = ParamStore::new(11, &Device::Cpu);
        let model = harness_core::zoo::build(&ModelSpec::new(arch, 10), &params).unwrap();
        train(
            &*model,
            &params,
            set,
            &cfg,
            &CrossEntropy,
            &TrainOptions::default(),
            &Device::Cpu,
        )
        .unwrap();
        params.to_safetensors_bytes().unwrap()
    })
}

/// One test, since the mode is per process and tests run concurrently.
#[test]
fn weights_do_not_depend_on_the_kernel_or_the_thread_count() {
    // The fast mode (the `gemm` crate) sums in another order: were the two equal bit for bit
    // here, the comparisons below would prove nothing about the fixed kernels.
    let small = synthetic(8, 64);
    Numerics::force(Numerics::Fast);
    let fast = trained(Arch::Resnet20, &small, 1);
    Numerics::force(Numerics::Fixed);
    assert!(trained(Arch::Resnet20, &small, 1) != fast);

    // ResNet-20 on 8x8 images; the small VGG reads 32x32 ones.
    for (arch, set) in [
        (Arch::Resnet20, synthetic(8, 192)),
        (Arch::VggSmall, synthetic(32, 96)),
    ] {
        let fastest = *F32Kernel::available().last().unwrap();
        F32Kernel::force(Some(fastest));
        let reference = trained(arch, &set, 1);
        for threads in [2, 3] {
            assert!(
                trained(arch, &set, threads) == reference,
                "{arch:?}: {threads} threads gave other weights than 1 ({} kernel)",
                fastest.name()
            );
        }
        for &path in F32Kernel::available() {
            F32Kernel::force(Some(path));
            assert!(
                trained(arch, &set, 2) == reference,
                "{arch:?}: the {} kernel gave other weights than {}",
                path.name(),
                fastest.name()
            );
        }
        F32Kernel::force(None);
    }
}
