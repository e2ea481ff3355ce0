//! The numerical kernels behind every layer, in one place.
//!
//! Layers and models call only these functions, so a faster implementation for one device (fused
//! CPU kernels, say) replaces a body here without touching a layer or a model. f32 tensors on the
//! CPU go to the fused kernels of [`cpu`](super::cpu) (unless `PROTBENCH_STOCK_KERNELS=1` or
//! [`cpu::set_enabled`](super::cpu::set_enabled) turns them off); everything else runs stock
//! candle tensor ops, which work on any device and carry autograd.
//!
//! Shapes are PyTorch's: activations N x C x H x W, convolution weights O x I/groups x kH x kW,
//! linear weights out x in.

use candle_core::{D, Result, Tensor, bail};

use super::cpu;

/// Batch-norm epsilon, PyTorch's default.
pub const BN_EPS: f64 = 1e-5;

/// Batch-norm running-statistics momentum, PyTorch's default.
pub const BN_MOMENTUM: f64 = 0.1;

/// 2-D convolution with square kernels, dilation 1, symmetric zero padding, and `groups`
/// (`groups == channels` is a depthwise convolution). `bias`, when present, has one value per
/// output channel.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    groups: usize,
) -> Result<Tensor> {
    if stride == 0 || groups == 0 {
        bail!("conv2d needs stride >= 1 and groups >= 1, got stride {stride}, groups {groups}")
    }
    let (_, c_in, _, _) = x.dims4()?;
    let (c_out, c_in_per_group, kh, kw) = weight.dims4()?;
    let ys = if cpu::applies(&[x, weight]) {
        cpu::conv2d(x, weight, stride, padding, groups)?
    } else if groups > 1 && groups == c_in && c_out == c_in && c_in_per_group == 1 && kh == kw {
        depthwise_conv2d(x, weight, stride, padding)?
    } else {
        x.conv2d(weight, padding, stride, 1, groups)?
    };
    match bias {
        None => Ok(ys),
        Some(b) => ys.broadcast_add(&b.reshape((1, c_out, 1, 1))?),
    }
}

/// Depthwise convolution as a sum of kernel taps: each tap is a shifted (and, for stride > 1,
/// subsampled) view of the padded input times one weight per channel. candle's grouped
/// convolution runs one convolution per group, which for the hundreds of channels of
/// MobileNetV2 costs far more than these k*k elementwise passes.
fn depthwise_conv2d(x: &Tensor, weight: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let k = weight.dim(2)?;
    let (hp, wp) = (h + 2 * padding, w + 2 * padding);
    if hp < k || wp < k {
        bail!("conv2d kernel {k}x{k} is larger than the padded input {hp}x{wp}")
    }
    let (ho, wo) = ((hp - k) / stride + 1, (wp - k) / stride + 1);
    // Tap (ki, kj) reads rows ki, ki + stride, ..., taken as the first of each group of `stride`
    // rows in ki .. ki + stride * ho; pad the bottom/right so that range exists. The extra zeros
    // are never read into an output.
    let extra_h = (k - 1 + stride * ho).saturating_sub(hp);
    let extra_w = (k - 1 + stride * wo).saturating_sub(wp);
    let xp = x
        .pad_with_zeros(2, padding, padding + extra_h)?
        .pad_with_zeros(3, padding, padding + extra_w)?;
    let mut acc: Option<Tensor> = None;
    for ki in 0..k {
        let rows = xp.narrow(2, ki, stride * ho)?;
        for kj in 0..k {
            let mut tap = rows.narrow(3, kj, stride * wo)?;
            if stride > 1 {
                tap = tap
                    .reshape((n, c, ho, stride, wo, stride))?
                    .narrow(5, 0, 1)?
                    .narrow(3, 0, 1)?
                    .reshape((n, c, ho, wo))?;
            }
            let wk = weight
                .narrow(2, ki, 1)?
                .narrow(3, kj, 1)?
                .reshape((1, c, 1, 1))?;
            let term = tap.broadcast_mul(&wk)?;
            acc = Some(match acc {
                None => term,
                Some(a) => (a + term)?,
            });
        }
    }
    match acc {
        Some(a) => Ok(a),
        None => bail!("conv2d with an empty kernel"),
    }
}

/// `x @ weight^T + bias` for `x` of shape ... x in and `weight` out x in.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    // Under fast numerics candle's matmul stays, so that those numbers do not move.
    let fixed = cpu::numerics::Numerics::selected() == cpu::numerics::Numerics::Fixed;
    let ys = if fixed && x.rank() == 2 && weight.rank() == 2 && cpu::applies(&[x, weight]) {
        cpu::linear::linear(x, weight)?
    } else if x.rank() == 2 {
        x.matmul(&weight.t()?)?
    } else {
        x.broadcast_matmul(&weight.t()?)?
    };
    match bias {
        None => Ok(ys),
        Some(b) => ys.broadcast_add(b),
    }
}

/// What a train-mode batch norm computes: the normalised output and the batch statistics that
/// update the running statistics.
#[derive(Debug, Clone)]
pub struct BatchNormTrain {
    /// The normalised, scaled and shifted activations (N x C x H x W).
    pub output: Tensor,
    /// Per-channel batch mean (C), detached from the graph.
    pub mean: Tensor,
    /// Per-channel biased batch variance (C), detached from the graph.
    pub var: Tensor,
    /// Values per channel, N * H * W (the running variance uses the unbiased `var * n / (n - 1)`).
    pub count: usize,
}

/// Batch norm with batch statistics (train mode): `(x - mean) / sqrt(var + eps) * weight + bias`,
/// with the biased variance over N, H and W, as PyTorch.
pub fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<BatchNormTrain> {
    let (n, c, h, w) = x.dims4()?;
    let count = n * h * w;
    if count < 2 {
        bail!(
            "batch norm in train mode needs more than 1 value per channel, got input {:?}",
            x.dims()
        )
    }
    if cpu::applies(&[x, weight, bias]) {
        return fast_batch_norm_train(x, weight, bias, eps, false);
    }
    let mean = x.mean_keepdim((0, 2, 3))?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim((0, 2, 3))?;
    let scale = ((&var + eps)?.sqrt()?.recip()? * weight.reshape((1, c, 1, 1))?)?;
    let output = centred
        .broadcast_mul(&scale)?
        .broadcast_add(&bias.reshape((1, c, 1, 1))?)?;
    Ok(BatchNormTrain {
        output,
        mean: mean.detach().flatten_all()?,
        var: var.detach().flatten_all()?,
        count,
    })
}

/// [`batch_norm_train`] followed by [`relu`], fused into one kernel on the CPU (one pass fewer
/// forward, and the ReLU's mask folds into the batch-norm backward).
pub fn batch_norm_relu_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<BatchNormTrain> {
    if cpu::applies(&[x, weight, bias]) {
        let (n, _, h, w) = x.dims4()?;
        if n * h * w < 2 {
            bail!(
                "batch norm in train mode needs more than 1 value per channel, got input {:?}",
                x.dims()
            )
        }
        return fast_batch_norm_train(x, weight, bias, eps, true);
    }
    let bn = batch_norm_train(x, weight, bias, eps)?;
    Ok(BatchNormTrain {
        output: relu(&bn.output)?,
        ..bn
    })
}

fn fast_batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<BatchNormTrain> {
    let bn = cpu::batch_norm_train(x, weight, bias, eps, relu)?;
    Ok(BatchNormTrain {
        output: bn.output,
        mean: bn.mean,
        var: bn.var,
        count: bn.count,
    })
}

/// Batch norm with given statistics (eval mode): `x * scale + shift` with
/// `scale = weight / sqrt(var + eps)` and `shift = bias - mean * scale`, per channel.
pub fn batch_norm_eval(
    x: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    if cpu::applies(&[x, mean, var, weight, bias]) {
        return cpu::batch_norm_eval(x, mean, var, weight, bias, eps);
    }
    let c = x.dim(1)?;
    let scale = ((var + eps)?.sqrt()?.recip()? * weight)?;
    let shift = (bias - (mean * &scale)?)?;
    x.broadcast_mul(&scale.reshape((1, c, 1, 1))?)?
        .broadcast_add(&shift.reshape((1, c, 1, 1))?)
}

/// Drops the bottom rows and right columns that a `kernel == stride` pooling window never covers,
/// so that candle's pooling backward (which upsamples the gradient to the input size) stays
/// exact on odd sizes; the forward result is unchanged (PyTorch's floor mode).
fn crop_for_pool(x: &Tensor, kernel: usize, stride: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if kernel != stride || kernel == 0 {
        return Ok(x.clone());
    }
    let (hc, wc) = (h / kernel * kernel, w / kernel * kernel);
    if (hc, wc) == (h, w) {
        return Ok(x.clone());
    }
    x.narrow(2, 0, hc)?.narrow(3, 0, wc)
}

/// Max pooling over `kernel` x `kernel` windows, no padding, floor mode.
///
/// On the CPU (f32) a fused kernel handles any kernel and stride, the gradient going to the
/// first maximum of each window. Elsewhere:
///
/// Non-overlapping windows (`kernel == stride`, the zoo's only case) gather each window into the
/// last dimension and keep its first maximum through a one-hot mask, so the gradient goes to that
/// one element, as in PyTorch (ties do happen: a batch norm's output can repeat a value).
/// candle 0.11's own `max_pool2d` backward scales the gradient by (maxima in the window) /
/// kernel^2 instead of sending it to one maximum: 4x too small for 2x2 windows. Overlapping
/// windows use candle's op, whose backward candle refuses.
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize) -> Result<Tensor> {
    if kernel == 0 || stride == 0 {
        bail!("max pooling needs kernel >= 1 and stride >= 1, got kernel {kernel}, stride {stride}")
    }
    if cpu::applies(&[x]) {
        return cpu::max_pool2d(x, kernel, stride);
    }
    if kernel != stride {
        return x.max_pool2d_with_stride(kernel, stride);
    }
    let x = crop_for_pool(x, kernel, stride)?;
    let (n, c, h, w) = x.dims4()?;
    let (ho, wo) = (h / kernel, w / kernel);
    if ho == 0 || wo == 0 {
        bail!("max pooling kernel {kernel} is larger than the input {h}x{w}")
    }
    if kernel == 1 {
        return Ok(x);
    }
    let k2 = kernel * kernel;
    let windows = x
        .reshape((n, c, ho, kernel, wo, kernel))?
        .permute((0, 1, 2, 4, 3, 5))?
        .reshape((n, c, ho, wo, k2))?;
    let first_max = windows.argmax_keepdim(4)?;
    let positions = Tensor::arange(0u32, k2 as u32, x.device())?;
    let mask = first_max.broadcast_eq(&positions)?.to_dtype(x.dtype())?;
    (windows * mask)?.sum(4)
}

/// Average pooling over `kernel` x `kernel` windows, no padding, floor mode. Off the CPU fast
/// path, gradients need `kernel == stride` (candle's limit).
pub fn avg_pool2d(x: &Tensor, kernel: usize, stride: usize) -> Result<Tensor> {
    if cpu::applies(&[x]) {
        return cpu::avg_pool2d(x, kernel, stride);
    }
    crop_for_pool(x, kernel, stride)?.avg_pool2d_with_stride(kernel, stride)
}

/// Mean over H and W: N x C x H x W -> N x C.
pub fn global_avg_pool2d(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if h * w > 0 && cpu::applies(&[x]) {
        return cpu::global_avg_pool2d(x);
    }
    x.mean((D::Minus2, D::Minus1))
}

/// `max(x, 0)`. Its gradient at exactly 0 is 1 (candle's choice; PyTorch's is 0), which matters
/// only for pre-activations that are exactly zero.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if cpu::applies(&[x]) {
        return cpu::relu(x);
    }
    x.relu()
}

/// `max(a + b, 0)`: a residual block's sum and ReLU, one pass on the CPU kernels (the same
/// values and gradients as `relu(&(a + b))`).
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if cpu::applies(&[a, b]) && a.shape() == b.shape() {
        return cpu::add_relu(a, b);
    }
    relu(&(a + b)?)
}

/// `min(max(x, 0), 6)`.
pub fn relu6(x: &Tensor) -> Result<Tensor> {
    x.relu()?.minimum(6f32)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Var};

    use super::*;

    fn ramp(dims: &[usize], scale: f64) -> Result<Tensor> {
        let n: usize = dims.iter().product();
        // Distinct values in a scrambled order (no ties).
        let v: Vec<f32> = (0..n)
            .map(|i| (((i * 7919) % n) as f64 * scale - 1.0) as f32)
            .collect();
        Tensor::from_vec(v, dims, &Device::Cpu)
    }

    #[test]
    fn max_pool_gradient_goes_to_the_maximum() -> Result<()> {
        let x = Var::from_tensor(&Tensor::new(
            &[[[[1f32, 2., 5., 0.], [4., 3., 1., 1.5]]]],
            &Device::Cpu,
        )?)?;
        let y = max_pool2d(x.as_tensor(), 2, 2)?;
        assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, [4., 5.]);
        let grads = y.sum_all()?.backward()?;
        let g = grads
            .get(x.as_tensor())
            .map(|g| g.flatten_all()?.to_vec1::<f32>());
        assert_eq!(g.transpose()?, Some(vec![0., 0., 1., 0., 1., 0., 0., 0.]));
        Ok(())
    }

    #[test]
    fn max_pool_ties_send_the_gradient_to_the_first_maximum() -> Result<()> {
        let x = Var::from_tensor(&Tensor::new(&[[[[2f32, 2.], [1., 2.]]]], &Device::Cpu)?)?;
        let grads = max_pool2d(x.as_tensor(), 2, 2)?.sum_all()?.backward()?;
        let g = grads
            .get(x.as_tensor())
            .map(|g| g.flatten_all()?.to_vec1::<f32>());
        assert_eq!(g.transpose()?, Some(vec![1., 0., 0., 0.]));
        Ok(())
    }

    #[test]
    fn pooling_odd_sizes_gives_exact_gradients() -> Result<()> {
        let x = Var::from_tensor(&ramp(&[1, 1, 3, 3], 0.1)?)?;
        let grads = avg_pool2d(x.as_tensor(), 2, 2)?.sum_all()?.backward()?;
        let g = grads
            .get(x.as_tensor())
            .map(|g| g.flatten_all()?.to_vec1::<f32>());
        assert_eq!(
            g.transpose()?,
            Some(vec![0.25, 0.25, 0., 0.25, 0.25, 0., 0., 0., 0.])
        );
        Ok(())
    }

    #[test]
    fn depthwise_taps_match_grouped_convolution_with_gradients() -> Result<()> {
        for (h, stride, padding) in [(6, 1, 1), (7, 2, 1), (8, 2, 1), (5, 1, 0), (9, 3, 1)] {
            let x = Var::from_tensor(&ramp(&[2, 4, h, h], 0.01)?)?;
            let w = Var::from_tensor(&ramp(&[4, 1, 3, 3], 0.05)?)?;
            let fast = depthwise_conv2d(x.as_tensor(), w.as_tensor(), stride, padding)?;
            let slow = x.as_tensor().conv2d(w.as_tensor(), padding, stride, 1, 4)?;
            assert_eq!(fast.dims(), slow.dims());
            let diff = (&fast - &slow)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "forward h {h} stride {stride}: {diff}");
            let probe = ramp(fast.dims(), 0.02)?;
            let gf = (&fast * &probe)?.sum_all()?.backward()?;
            let gs = (&slow * &probe)?.sum_all()?.backward()?;
            for v in [&x, &w] {
                match (gf.get(v.as_tensor()), gs.get(v.as_tensor())) {
                    (Some(a), Some(b)) => {
                        let d = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
                        assert!(d < 1e-4, "gradient h {h} stride {stride}: {d}");
                    }
                    _ => bail!("missing gradient"),
                }
            }
        }
        Ok(())
    }

    #[test]
    fn batch_norm_train_needs_two_values_per_channel() -> Result<()> {
        let x = ramp(&[1, 2, 1, 1], 0.1)?;
        let w = Tensor::ones(2, DType::F32, &Device::Cpu)?;
        let b = Tensor::zeros(2, DType::F32, &Device::Cpu)?;
        assert!(batch_norm_train(&x, &w, &b, BN_EPS).is_err());
        Ok(())
    }
}
