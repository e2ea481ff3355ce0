//! VGG-11/16/19 with batch norm, CIFAR variant (the layout of kuangliu/pytorch-cifar), and the
//! small VGG of the speed reference (`shared/bench/torch_reference.py`).
//!
//! VGG: `features` is a PyTorch `Sequential` of Conv2d(3x3, padding 1, with bias) / BatchNorm2d /
//! ReLU per channel entry and MaxPool2d(2) per `M`, over the configurations
//!
//! - vgg11: 64 M 128 M 256 256 M 512 512 M 512 512 M
//! - vgg16: 64 64 M 128 128 M 256 256 256 M 512 512 512 M 512 512 512 M
//! - vgg19: 64 64 M 128 128 M 256 256 256 256 M 512 512 512 512 M 512 512 512 512 M
//!
//! with every channel count scaled by the width multiplier (`max(1, round(c * width))`), then a
//! global average pool (the same as kuangliu's flatten at 32x32 inputs, where the map is 1x1, and
//! it also works at 64x64) and `classifier` = Linear(512 * width, classes). Parameters for 10
//! classes: vgg11 9,231,114, vgg16 14,728,266, vgg19 20,040,522.
//!
//! Parameter names follow the `Sequential` indices: the k-th module of `features` (counting
//! convolutions, batch norms, ReLUs and pools) is `features.{k}`, so vgg11 has
//!
//! | name | what |
//! |---|---|
//! | `features.0.{weight,bias}` | conv 64 x in_channels x 3 x 3 |
//! | `features.1.{weight,bias,running_mean,running_var,num_batches_tracked}` | batch norm |
//! | (`features.2` ReLU, `features.3` max pool: no parameters) | |
//! | `features.4.*` conv, `features.5.*` batch norm, ... | |
//! | `classifier.{weight,bias}` | classes x 512 |
//!
//! VGG-small (`vgg-small`, 160,234 parameters for 10 classes): five conv_bn blocks, each a
//! `Sequential` of Conv2d(3x3, padding 1, no bias) and BatchNorm2d, with ReLU after each and a
//! 2x2 max pool after c2, c4 and c5; `fc` = Linear(128 * 4 * 4, classes) on the flattened map, so
//! it takes 32x32 inputs only. Names: `c{1..5}.0.weight`, `c{1..5}.1.*`, `fc.{weight,bias}`;
//! channels 32, 32, 64, 64, 128.
//!
//! Stages (for [`super::StageHook`]s): VGG: `block1`..`block5`, each conv block's output after
//! its max pool, then `pool` (the classifier's input units); VGG-small: `block1`..`block3`, after
//! each of its three pools.

use candle_core::{Result, Tensor, bail};
use candle_nn::{Module, VarBuilder};

use super::{Arch, Model, ModelSpec, StageHook, StageInfo, at_stage};
use crate::nn::{
    BatchNorm2d, Conv2d, Conv2dConfig, Linear, batch_norm2d, conv2d, conv2d_no_bias,
    global_avg_pool2d, linear, max_pool2d,
};

/// A 2x2 max pool in a configuration; every other entry is a convolution's output channels.
const M: usize = 0;

const VGG11: &[usize] = &[64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M];
const VGG16: &[usize] = &[
    64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M,
];
const VGG19: &[usize] = &[
    64, 64, M, 128, 128, M, 256, 256, 256, 256, M, 512, 512, 512, 512, M, 512, 512, 512, 512, M,
];

#[derive(Debug, Clone)]
enum Layer {
    ConvBnRelu(Conv2d, BatchNorm2d),
    MaxPool,
}

/// VGG-11/16/19 with batch norm, CIFAR variant.
#[derive(Debug, Clone)]
pub struct Vgg {
    spec: ModelSpec,
    features: Vec<Layer>,
    classifier: Linear,
    stages: Vec<StageInfo>,
}

impl Vgg {
    /// Builds the VGG of `spec.arch` with its variables under `vb`.
    pub fn new(spec: ModelSpec, vb: VarBuilder<'_>) -> Result<Self> {
        let cfg = match spec.arch {
            Arch::Vgg11 => VGG11,
            Arch::Vgg16 => VGG16,
            Arch::Vgg19 => VGG19,
            other => bail!("`{}` is not a VGG with a configuration", other.id()),
        };
        let vf = vb.pp("features");
        let mut features = Vec::with_capacity(cfg.len());
        let mut index = 0;
        let mut cin = spec.in_channels;
        let mut stages = Vec::new();
        for &entry in cfg {
            if entry == M {
                features.push(Layer::MaxPool);
                index += 1;
                stages.push(StageInfo::new(format!("block{}", stages.len() + 1), cin));
                continue;
            }
            let cout = spec.scaled(entry);
            let conv = conv2d(cin, cout, 3, Conv2dConfig::new(1, 1), vf.pp(index))?;
            let bn = batch_norm2d(cout, vf.pp(index + 1))?;
            features.push(Layer::ConvBnRelu(conv, bn));
            index += 3;
            cin = cout;
        }
        let classifier = linear(cin, spec.num_classes, vb.pp("classifier"))?;
        stages.push(StageInfo::new("pool", cin));
        Ok(Self {
            spec,
            features,
            classifier,
            stages,
        })
    }
}

impl Vgg {
    /// The forward pass, with `hook` at the stage outputs when given (see [`Model::stages`]).
    fn run(&self, xs: &Tensor, train: bool, hook: Option<&dyn StageHook>) -> Result<Tensor> {
        let mut ys = xs.clone();
        let mut stage = 0;
        for layer in &self.features {
            ys = match layer {
                Layer::ConvBnRelu(conv, bn) => bn.forward_relu_t(&conv.forward(&ys)?, train)?,
                Layer::MaxPool => {
                    let pooled = at_stage(hook, stage, max_pool2d(&ys, 2, 2)?)?;
                    stage += 1;
                    pooled
                }
            };
        }
        let pooled = at_stage(hook, stage, global_avg_pool2d(&ys)?)?;
        self.classifier.forward(&pooled)
    }
}

impl Model for Vgg {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.run(xs, train, None)
    }

    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// `block1`..`block5`: each conv block's output after its max pool; `pool`: the pooled
    /// units the classifier reads. Choice: after the pool, not before: for a per-channel
    /// non-negative multiplier (a lock mask) the two are the same (max(λx) = λ max(x)), and
    /// the pooled map is 4x smaller to mask.
    fn stages(&self) -> Vec<StageInfo> {
        self.stages.clone()
    }

    fn forward_hooked(&self, xs: &Tensor, train: bool, hook: &dyn StageHook) -> Result<Tensor> {
        self.run(xs, train, Some(hook))
    }
}

/// Channels of VGG-small's five conv_bn blocks.
const SMALL: [usize; 5] = [32, 32, 64, 64, 128];

/// The small VGG of the speed reference: conv32-conv32-pool-conv64-conv64-pool-conv128-pool-fc.
#[derive(Debug, Clone)]
pub struct VggSmall {
    spec: ModelSpec,
    blocks: Vec<(Conv2d, BatchNorm2d)>,
    fc: Linear,
}

impl VggSmall {
    /// Builds VGG-small with its variables under `vb`.
    pub fn new(spec: ModelSpec, vb: VarBuilder<'_>) -> Result<Self> {
        let mut blocks = Vec::with_capacity(SMALL.len());
        let mut cin = spec.in_channels;
        for (i, &cout) in SMALL.iter().enumerate() {
            let vs = vb.pp(format!("c{}", i + 1));
            let conv = conv2d_no_bias(cin, cout, 3, Conv2dConfig::new(1, 1), vs.pp("0"))?;
            let bn = batch_norm2d(cout, vs.pp("1"))?;
            blocks.push((conv, bn));
            cin = cout;
        }
        let fc = linear(cin * 4 * 4, spec.num_classes, vb.pp("fc"))?;
        Ok(Self { spec, blocks, fc })
    }
}

impl VggSmall {
    /// The forward pass, with `hook` at the stage outputs when given (see [`Model::stages`]).
    fn run(&self, xs: &Tensor, train: bool, hook: Option<&dyn StageHook>) -> Result<Tensor> {
        let (_, _, h, w) = xs.dims4()?;
        if (h, w) != (32, 32) {
            bail!("vgg-small takes 32x32 inputs (its classifier reads a 4x4 map), got {h}x{w}")
        }
        let mut ys = xs.clone();
        let mut stage = 0;
        for (i, (conv, bn)) in self.blocks.iter().enumerate() {
            ys = bn.forward_relu_t(&conv.forward(&ys)?, train)?;
            if i == 1 || i >= 3 {
                ys = at_stage(hook, stage, max_pool2d(&ys, 2, 2)?)?;
                stage += 1;
            }
        }
        self.fc.forward(&ys.flatten_from(1)?)
    }
}

impl Model for VggSmall {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.run(xs, train, None)
    }

    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// `block1` (after c2 and its pool, 32 channels), `block2` (after c4 and its pool, 64),
    /// `block3` (after c5 and its pool, 128: the map the classifier flattens).
    fn stages(&self) -> Vec<StageInfo> {
        vec![
            StageInfo::new("block1", SMALL[1]),
            StageInfo::new("block2", SMALL[3]),
            StageInfo::new("block3", SMALL[4]),
        ]
    }

    fn forward_hooked(&self, xs: &Tensor, train: bool, hook: &dyn StageHook) -> Result<Tensor> {
        self.run(xs, train, Some(hook))
    }
}
