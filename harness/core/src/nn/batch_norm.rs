//! 2-D batch normalisation with PyTorch's semantics and state-dict names: `weight` (init 1),
//! `bias` (0), `running_mean` (0), `running_var` (1) and `num_batches_tracked` (i64 scalar, 0);
//! eps 1e-5, momentum 0.1.
//!
//! Train mode normalises with the batch mean and biased variance and updates the running
//! statistics in place: `running = (1 - momentum) * running + momentum * batch`, with the
//! unbiased batch variance for `running_var`, and counts the batch in `num_batches_tracked`.
//! Eval mode normalises with the running statistics. The running statistics are never part of
//! the autograd graph. Train-mode passes of one model should not run concurrently: each update
//! is a read-modify-write of the shared running statistics.

use candle_core::{DType, Result, Tensor, Var, bail};
use candle_nn::{Init, VarBuilder};

use super::ops;

/// Batch norm over the channels of N x C x H x W activations.
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    num_batches_tracked: Var,
    eps: f64,
    momentum: f64,
}

impl BatchNorm2d {
    /// Wraps existing tensors. The running statistics are shared with the given variables, so
    /// train-mode updates are visible wherever those variables live (a
    /// [`ParamStore`](crate::params::ParamStore)).
    pub fn new(
        weight: Tensor,
        bias: Tensor,
        running_mean: Var,
        running_var: Var,
        num_batches_tracked: Var,
    ) -> Result<Self> {
        let c = weight.elem_count();
        for (what, t) in [
            ("weight", &weight),
            ("bias", &bias),
            ("running_mean", running_mean.as_tensor()),
            ("running_var", running_var.as_tensor()),
        ] {
            if t.dims() != [c] {
                bail!(
                    "batch norm `{what}` has shape {:?}, expected [{c}]",
                    t.dims()
                )
            }
        }
        Ok(Self {
            weight,
            bias,
            running_mean,
            running_var,
            num_batches_tracked,
            eps: ops::BN_EPS,
            momentum: ops::BN_MOMENTUM,
        })
    }

    /// Channels normalised.
    pub fn num_features(&self) -> usize {
        self.weight.elem_count()
    }

    /// The scale (gamma).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The shift (beta).
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// The running mean used in eval mode.
    pub fn running_mean(&self) -> &Var {
        &self.running_mean
    }

    /// The running (unbiased) variance used in eval mode.
    pub fn running_var(&self) -> &Var {
        &self.running_var
    }

    /// Train-mode batches seen (i64 scalar).
    pub fn num_batches_tracked(&self) -> &Var {
        &self.num_batches_tracked
    }

    /// Batch norm followed by ReLU, as one fused kernel on the CPU (one pass fewer each way than
    /// batch norm then ReLU); the same values and running-statistics updates as the two apart.
    pub fn forward_relu_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.check_channels(xs)?;
        if train {
            self.forward_train(xs, true)
        } else {
            ops::relu(&self.forward_eval(xs)?)
        }
    }

    fn check_channels(&self, xs: &Tensor) -> Result<()> {
        if xs.dim(1)? != self.num_features() {
            bail!(
                "batch norm over {} channels got input {:?}",
                self.num_features(),
                xs.dims()
            )
        }
        Ok(())
    }

    fn forward_eval(&self, xs: &Tensor) -> Result<Tensor> {
        ops::batch_norm_eval(
            xs,
            &self.running_mean.as_detached_tensor(),
            &self.running_var.as_detached_tensor(),
            &self.weight,
            &self.bias,
            self.eps,
        )
    }

    fn forward_train(&self, xs: &Tensor, fused_relu: bool) -> Result<Tensor> {
        let stats = if fused_relu {
            ops::batch_norm_relu_train(xs, &self.weight, &self.bias, self.eps)?
        } else {
            ops::batch_norm_train(xs, &self.weight, &self.bias, self.eps)?
        };
        let m = self.momentum;
        let unbias = stats.count as f64 / (stats.count as f64 - 1.0);
        let rm = self.running_mean.as_detached_tensor();
        let rv = self.running_var.as_detached_tensor();
        let new_mean = ((&rm * (1.0 - m))? + (stats.mean.to_dtype(rm.dtype())? * m)?)?;
        let new_var = ((&rv * (1.0 - m))? + (stats.var.to_dtype(rv.dtype())? * (m * unbias))?)?;
        self.running_mean.set(&new_mean)?;
        self.running_var.set(&new_var)?;
        let nbt = self.num_batches_tracked.as_detached_tensor();
        let one = Tensor::ones((), nbt.dtype(), nbt.device())?;
        self.num_batches_tracked.set(&nbt.broadcast_add(&one)?)?;
        Ok(stats.output)
    }
}

impl candle_nn::ModuleT for BatchNorm2d {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.check_channels(xs)?;
        if train {
            self.forward_train(xs, false)
        } else {
            self.forward_eval(xs)
        }
    }
}

/// A batch norm over `num_features` channels with its five tensors under `vb`.
pub fn batch_norm2d(num_features: usize, vb: VarBuilder<'_>) -> Result<BatchNorm2d> {
    let weight = vb.get_with_hints(num_features, "weight", Init::Const(1.0))?;
    let bias = vb.get_with_hints(num_features, "bias", Init::Const(0.0))?;
    let running_mean = vb.get_with_hints(num_features, "running_mean", Init::Const(0.0))?;
    let running_var = vb.get_with_hints(num_features, "running_var", Init::Const(1.0))?;
    // Optional in PyTorch files; a builder that lacks it (plain tensors) gets a local counter.
    let num_batches_tracked =
        match vb.get_with_hints_dtype((), "num_batches_tracked", Init::Const(0.0), DType::I64) {
            Ok(t) => t,
            Err(_) => Tensor::zeros((), DType::I64, vb.device())?,
        };
    BatchNorm2d::new(
        weight,
        bias,
        Var::from_tensor(&running_mean)?,
        Var::from_tensor(&running_var)?,
        Var::from_tensor(&num_batches_tracked)?,
    )
}
