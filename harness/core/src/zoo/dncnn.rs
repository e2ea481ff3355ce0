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

//!
//! Stages: one, `dncnn` (the whole network with its residual subtraction: a stage needs its
//! input, and the residual reaches from the first layer to the last).

use candle_core::{Result, Tensor, bail};
use candle_nn::VarBuilder;

use super::network::Architecture;
use super::{Act, Arch, ConvBn, ModelSpec, Pass, StageInfo};
use crate::nn::Conv2dConfig;

/// Convolution layers in all.
const DEPTH: usize = 17;
/// Feature channels.
const FEATURES: usize = 64;

/// The DnCNN denoiser.
#[derive(Debug, Clone)]
pub struct DnCnn {
    first: ConvBn,
    middle: Vec<ConvBn>,
    last: ConvBn,
    stages: Vec<StageInfo>,
}

impl DnCnn {
    /// Builds DnCNN with its variables under `vb`.
    pub fn new(spec: &ModelSpec, vb: VarBuilder<'_>) -> Result<Self> {
        if spec.arch != Arch::Dncnn {
            bail!("`{}` is not dncnn", spec.arch.id())
        }
        let vs = vb.pp("dncnn");
        let same = Conv2dConfig::new(1, 1);
        let first = ConvBn::plain(
            spec.in_channels,
            FEATURES,
            3,
            same,
            true,
            Act::Relu,
            vs.pp(0),
        )?;
        let mut middle = Vec::with_capacity(DEPTH - 2);
        for j in 0..DEPTH - 2 {
            middle.push(ConvBn::with_bn(
                FEATURES,
                FEATURES,
                3,
                same,
                Act::Relu,
                vs.pp(2 + 3 * j),
                vs.pp(3 + 3 * j),
            )?);
        }
        let last = ConvBn::plain(
            FEATURES,
            spec.in_channels,
            3,
            same,
            false,
            Act::Identity,
            vs.pp(2 + 3 * (DEPTH - 2)),
        )?;
        let mut params = first.param_names();
        for unit in &middle {
            params.extend(unit.param_names());
        }
        params.extend(last.param_names());
        let stages = vec![StageInfo::map("dncnn", spec.in_channels, 1).owning(params)];
        Ok(Self {
            first,
            middle,
            last,
            stages,
        })
    }

    /// The predicted noise (the network's output before the residual subtraction).
    pub fn noise(&self, xs: &Tensor, pass: &Pass<'_>) -> Result<Tensor> {
        let mut ys = self.first.forward(xs, pass)?;
        for unit in &self.middle {
            ys = unit.forward(&ys, pass)?;
        }
        self.last.forward(&ys, pass)
    }
}

impl Architecture for DnCnn {
    fn stages(&self) -> &[StageInfo] {
        &self.stages
    }

    fn run_stage(&self, stage: usize, xs: &Tensor, pass: &Pass<'_>) -> Result<Tensor> {
        if stage != 0 {
            bail!("dncnn has one stage, not {}", stage + 1)
        }
        xs - self.noise(xs, pass)?
    }
}
