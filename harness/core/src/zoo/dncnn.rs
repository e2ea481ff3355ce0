//! DnCNN (Zhang et al. 2017, "Beyond a Gaussian Denoiser"), 17 layers with residual learning:
//! the network predicts the noise and the model returns `input - predicted noise`.
//!
//! Layers, as one PyTorch `Sequential` called `dncnn` (the layout of the common PyTorch port,
//! SaoYan/DnCNN-PyTorch, with a bias on the first convolution as in the paper's first layer):
//! Conv2d(in_channels -> 64, 3x3, padding 1, bias) + ReLU, then 15 x [Conv2d(64 -> 64, 3x3,
//! padding 1, no bias) + BatchNorm2d(64) + ReLU], then Conv2d(64 -> in_channels, 3x3, padding 1,
//! no bias). Any input size works; output has the input's shape. 558,400 parameters for 3
//! channels, 556,096 for 1. `num_classes` is ignored.
//!
//! Parameter names follow the `Sequential` indices:
//!
//! | name | what |
//! |---|---|
//! | `dncnn.0.weight`, `dncnn.0.bias` | first conv, 64 x in_channels x 3 x 3 and 64 (`dncnn.1` is its ReLU) |
//! | `dncnn.{2+3j}.weight` | middle conv j (j in 0..15), 64 x 64 x 3 x 3 |
//! | `dncnn.{3+3j}.{weight,bias,running_mean,running_var,num_batches_tracked}` | its batch norm (`dncnn.{4+3j}` is the ReLU) |
//! | `dncnn.47.weight` | last conv, in_channels x 64 x 3 x 3 |

use candle_core::{Result, Tensor, bail};
use candle_nn::{Module, VarBuilder};

use super::{Arch, Model, ModelSpec};
use crate::nn::{BatchNorm2d, Conv2d, Conv2dConfig, batch_norm2d, conv2d, conv2d_no_bias, relu};

/// Convolution layers in all.
const DEPTH: usize = 17;
/// Feature channels.
const FEATURES: usize = 64;

/// The DnCNN denoiser.
#[derive(Debug, Clone)]
pub struct DnCnn {
    spec: ModelSpec,
    first: Conv2d,
    middle: Vec<(Conv2d, BatchNorm2d)>,
    last: Conv2d,
}

impl DnCnn {
    /// Builds DnCNN with its variables under `vb`.
    pub fn new(spec: ModelSpec, vb: VarBuilder<'_>) -> Result<Self> {
        if spec.arch != Arch::Dncnn {
            bail!("`{}` is not dncnn", spec.arch.id())
        }
        let vs = vb.pp("dncnn");
        let same = Conv2dConfig::new(1, 1);
        let first = conv2d(spec.in_channels, FEATURES, 3, same, vs.pp(0))?;
        let mut middle = Vec::with_capacity(DEPTH - 2);
        for j in 0..DEPTH - 2 {
            let conv = conv2d_no_bias(FEATURES, FEATURES, 3, same, vs.pp(2 + 3 * j))?;
            let bn = batch_norm2d(FEATURES, vs.pp(3 + 3 * j))?;
            middle.push((conv, bn));
        }
        let last = conv2d_no_bias(
            FEATURES,
            spec.in_channels,
            3,
            same,
            vs.pp(2 + 3 * (DEPTH - 2)),
        )?;
        Ok(Self {
            spec,
            first,
            middle,
            last,
        })
    }

    /// The predicted noise (the network's output before the residual subtraction).
    pub fn noise_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let mut ys = relu(&self.first.forward(xs)?)?;
        for (conv, bn) in &self.middle {
            ys = bn.forward_relu_t(&conv.forward(&ys)?, train)?;
        }
        self.last.forward(&ys)
    }
}

impl Model for DnCnn {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        xs - self.noise_t(xs, train)?
    }

    fn spec(&self) -> &ModelSpec {
        &self.spec
    }
}
