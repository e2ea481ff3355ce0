//! Fast CPU kernels (f32, contiguous) behind [`ops`](super::ops), written as candle custom ops
//! with their own backward passes.
//!
//! Stock candle 0.11 runs the input gradient of a convolution as a direct transposed-convolution
//! loop, im2col as a scalar copy, batch norm as half a dozen full passes, and pooling backward
//! only for `kernel == stride`. The kernels here express convolutions as matrix products through
//! the `gemm` crate (AVX-512 where the CPU has it), parallelise over images or channels with
//! rayon, reuse scratch buffers per thread ([`workspace`]), and fuse what one pass can do.
//!
//! [`ops`](super::ops) routes a call here only when [`enabled`] and every tensor involved is f32
//! on the CPU; anything else (other devices, other dtypes) takes the stock candle path. The
//! public functions of this module run the fast kernels directly, for tests and benchmarks; they
//! refuse inputs they do not handle.

pub mod activation;
pub mod batch_norm;
pub mod conv;
mod elementwise;
mod fixed_gemm;
mod gemm;
mod im2col;
pub mod linear;
pub mod numerics;
pub mod pool;
mod tap_rows;
pub mod workspace;

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

use candle_core::{CpuStorage, DType, Layout, Result, Storage, Tensor, bail};

pub use activation::{add_relu, relu};
pub use batch_norm::{BatchNormOutput, batch_norm_eval, batch_norm_train, channel_affine};
pub use conv::conv2d;
pub use pool::{avg_pool2d, global_avg_pool2d, max_pool2d};

/// `dst = a x b` for row-major `m x k` and `k x n` slices on one thread, through the checked
/// gemm wrapper the convolutions use: lets a benchmark measure the products they make.
///
/// # Panics
/// When a slice is shorter than its shape says.
pub fn matmul_one_thread(dst: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize) {
    gemm::sgemm(
        dst,
        gemm::Mat::rows(a, m, k),
        gemm::Mat::rows(b, k, n),
        false,
        1,
    );
}

/// Global switch: 0 = not set (use the environment), 1 = on, 2 = off.
static GLOBAL: AtomicU8 = AtomicU8::new(0);

thread_local! {
    /// A per-thread override, so that a test can run the stock path without changing what
    /// concurrent tests in the same process run.
    static LOCAL: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Whether `PROTBENCH_STOCK_KERNELS` asks for the stock candle path (read once per process).
fn env_enabled() -> bool {
    static ENV: OnceLock<bool> = OnceLock::new();
    *ENV.get_or_init(|| {
        !matches!(
            std::env::var("PROTBENCH_STOCK_KERNELS").as_deref(),
            Ok("1") | Ok("true") | Ok("yes")
        )
    })
}

/// Whether [`ops`](super::ops) routes f32 CPU tensors to these kernels on this thread: the
/// thread's [`scoped_enabled`] override if any, else [`set_enabled`]'s value if called, else on
/// unless the environment variable `PROTBENCH_STOCK_KERNELS=1` is set.
pub fn enabled() -> bool {
    if let Some(on) = LOCAL.with(Cell::get) {
        return on;
    }
    match GLOBAL.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => env_enabled(),
    }
}

/// Turns the fast kernels on or off for the whole process (for A/B timing against stock candle).
/// Only newly built graphs are affected: a backward pass runs the kernels its forward chose.
pub fn set_enabled(on: bool) {
    GLOBAL.store(if on { 1 } else { 2 }, Ordering::Relaxed);
}

/// Restores the previous per-thread setting when dropped; see [`scoped_enabled`].
#[derive(Debug)]
pub struct ScopedEnabled {
    previous: Option<bool>,
}

impl Drop for ScopedEnabled {
    fn drop(&mut self) {
        LOCAL.with(|l| l.set(self.previous));
    }
}

/// Turns the fast kernels on or off for the calling thread until the guard is dropped, so that a
/// test can compare both paths while other tests run concurrently in the same process.
pub fn scoped_enabled(on: bool) -> ScopedEnabled {
    let previous = LOCAL.with(|l| l.replace(Some(on)));
    ScopedEnabled { previous }
}

/// Whether all `tensors` can take the fast path: kernels enabled, f32, on the CPU.
pub(crate) fn applies(tensors: &[&Tensor]) -> bool {
    let yes = enabled()
        && tensors
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::F32);
    if yes {
        workspace::tune_allocator();
    }
    yes
}

/// The contiguous f32 data of a custom op's operand.
pub(crate) fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((start, end))) => Ok(&v[start..end]),
        (CpuStorage::F32(_), None) => bail!("fast CPU kernels need contiguous tensors"),
        (_, _) => bail!("fast CPU kernels need f32 tensors"),
    }
}

/// Runs `f` on the f32 data of `t` (made contiguous first, which is free when it already is).
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => f(f32_slice(s, layout)?),
        _ => bail!("fast CPU kernels need CPU tensors"),
    }
}

/// A fresh CPU tensor holding `data` with shape `dims`, outside any graph.
fn tensor(data: Vec<f32>, dims: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(data, dims, &candle_core::Device::Cpu)
}

/// Keeps candle's own element-wise thread pool to the calling thread (`CANDLE_NUM_THREADS=1`)
/// unless the user set that variable. candle 0.11 runs binary ops (residual adds, the
/// optimiser's arithmetic) on a second pool beside rayon's, whose workers spin for a while after
/// every op: on a 2-core machine they take the cores from the rayon workers running the
/// convolutions, and the caller spins waiting for them (together about a fifth of a ResNet-20
/// training step here). The element-wise ops are memory-bound and small next to the
/// convolutions, so one thread loses nothing. Must run before candle's first op, which starts
/// that pool.
///
/// # Safety
/// Sets an environment variable: call it while the process has a single thread (first thing in
/// `main`), as for [`std::env::set_var`].
#[allow(unsafe_code)]
pub unsafe fn keep_candle_elementwise_on_one_thread() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: the caller guarantees no other thread reads or writes the environment.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
}

/// Worker threads that rayon (and so these kernels) use.
fn threads() -> usize {
    rayon::current_num_threads().max(1)
}
