//! MobileNetV2 (Sandler et al. 2018), CIFAR variant as in kuangliu/pytorch-cifar: stride-1 stem
//! and stride 1 in the second stage, so a 32x32 input ends at 4x4.
//!
//! Stem: 3x3 convolution to 32 channels (stride 1) + batch norm + ReLU. Then inverted-residual
//! blocks from the configuration (expansion t, output channels c, blocks n, first stride s):
//! (1,16,1,1) (6,24,2,1) (6,32,3,2) (6,64,4,2) (6,96,3,1) (6,160,3,2) (6,320,1,1). A block is a
//! 1x1 expansion to t * c_in channels + bn + ReLU, a 3x3 depthwise convolution with the block's
//! stride + bn + ReLU, and a 1x1 projection + bn (no activation). Stride-1 blocks add a shortcut:
//! the identity when the channels match, else a 1x1 convolution + bn; stride-2 blocks have none.
//! Then a 1x1 convolution to 1280 channels + bn + ReLU, a global average pool (kuangliu's
//! `avg_pool2d(4)` at 32x32, and any size here) and `linear`. Activations are ReLU, as in that
//! code (the paper uses ReLU6). Convolutions have no bias. 2,296,922 parameters for 10 classes.
//!
//! The width multiplier scales every channel count (`max(1, round(c * width))`) except the last
//! 1280, which only grows (width > 1), as in the paper. Channels are not rounded to multiples
//! of 8.
//!
//! Parameter names (PyTorch state-dict names of `ci/torch/models.py`'s `MobileNetV2`):
//!
//! | name | shape |
//! |---|---|
//! | `conv1.weight`, `bn1.*` | 32 x in_channels x 3 x 3, 32 |
//! | `layers.{i}.conv1.weight`, `layers.{i}.bn1.*` | expansion: t*c_in x c_in x 1 x 1 |
//! | `layers.{i}.conv2.weight`, `layers.{i}.bn2.*` | depthwise: t*c_in x 1 x 3 x 3 |
//! | `layers.{i}.conv3.weight`, `layers.{i}.bn3.*` | projection: c_out x t*c_in x 1 x 1 |
//! | `layers.{i}.shortcut.0.weight`, `layers.{i}.shortcut.1.*` | stride-1 blocks whose channels change |
//! | `conv2.weight`, `bn2.*` | 1280 x 320 x 1 x 1 |
//! | `linear.weight`, `linear.bias` | classes x 1280 |
//!
//! with i in 0..17 and `*` the five batch-norm tensors (`weight`, `bias`, `running_mean`,
//! `running_var`, `num_batches_tracked`).
//!
//! Stages (for [`super::StageHook`]s): `stem`, `stage1`..`stage4` (the last block of each group
//! of blocks with one output resolution: blocks 2, 5, 12 and 16), `pool` (the classifier's input).

use candle_core::{Result, Tensor, bail};
use candle_nn::{Module, ModuleT, VarBuilder};

use super::{Arch, Model, ModelSpec, StageHook, StageInfo, at_stage};
use crate::nn::{
    BatchNorm2d, Conv2d, Conv2dConfig, Linear, batch_norm2d, conv2d_no_bias, global_avg_pool2d,
    linear,
};

/// (expansion, output channels, blocks, first stride).
const CFG: [(usize, usize, usize, usize); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];

/// Expand - depthwise - project, with a shortcut at stride 1.
#[derive(Debug, Clone)]
struct Block {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    conv3: Conv2d,
    bn3: BatchNorm2d,
    stride: usize,
    shortcut: Option<(Conv2d, BatchNorm2d)>,
}

impl Block {
    fn new(
        cin: usize,
        cout: usize,
        expansion: usize,
        stride: usize,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        let planes = expansion * cin;
        let conv1 = conv2d_no_bias(cin, planes, 1, Conv2dConfig::default(), vb.pp("conv1"))?;
        let bn1 = batch_norm2d(planes, vb.pp("bn1"))?;
        let dw = Conv2dConfig::new(stride, 1).with_groups(planes);
        let conv2 = conv2d_no_bias(planes, planes, 3, dw, vb.pp("conv2"))?;
        let bn2 = batch_norm2d(planes, vb.pp("bn2"))?;
        let conv3 = conv2d_no_bias(planes, cout, 1, Conv2dConfig::default(), vb.pp("conv3"))?;
        let bn3 = batch_norm2d(cout, vb.pp("bn3"))?;
        let shortcut = if stride == 1 && cin != cout {
            let vs = vb.pp("shortcut");
            let conv = conv2d_no_bias(cin, cout, 1, Conv2dConfig::default(), vs.pp("0"))?;
            Some((conv, batch_norm2d(cout, vs.pp("1"))?))
        } else {
            None
        };
        Ok(Self {
            conv1,
            bn1,
            conv2,
            bn2,
            conv3,
            bn3,
            stride,
            shortcut,
        })
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let ys = self.bn1.forward_relu_t(&self.conv1.forward(xs)?, train)?;
        let ys = self.bn2.forward_relu_t(&self.conv2.forward(&ys)?, train)?;
        let ys = self.bn3.forward_t(&self.conv3.forward(&ys)?, train)?;
        if self.stride != 1 {
            return Ok(ys);
        }
        let short = match &self.shortcut {
            Some((conv, bn)) => bn.forward_t(&conv.forward(xs)?, train)?,
            None => xs.clone(),
        };
        ys + short
    }
}

/// MobileNetV2, CIFAR variant.
#[derive(Debug, Clone)]
pub struct MobileNetV2 {
    spec: ModelSpec,
    conv1: Conv2d,
    bn1: BatchNorm2d,
    layers: Vec<Block>,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    linear: Linear,
    /// Index of the last block of each group of equal resolution, and the stages.
    stage_ends: Vec<usize>,
    stages: Vec<StageInfo>,
}

impl MobileNetV2 {
    /// Builds MobileNetV2 with its variables under `vb`.
    pub fn new(spec: ModelSpec, vb: VarBuilder<'_>) -> Result<Self> {
        if spec.arch != Arch::MobilenetV2 {
            bail!("`{}` is not mobilenet-v2", spec.arch.id())
        }
        let stem = spec.scaled(32);
        let conv1 = conv2d_no_bias(
            spec.in_channels,
            stem,
            3,
            Conv2dConfig::new(1, 1),
            vb.pp("conv1"),
        )?;
        let bn1 = batch_norm2d(stem, vb.pp("bn1"))?;
        let vl = vb.pp("layers");
        let mut layers = Vec::new();
        let mut cin = stem;
        for (expansion, c, n, first_stride) in CFG {
            let cout = spec.scaled(c);
            for i in 0..n {
                let stride = if i == 0 { first_stride } else { 1 };
                layers.push(Block::new(
                    cin,
                    cout,
                    expansion,
                    stride,
                    vl.pp(layers.len()),
                )?);
                cin = cout;
            }
        }
        let last = if spec.width > 1.0 {
            spec.scaled(1280)
        } else {
            1280
        };
        let conv2 = conv2d_no_bias(cin, last, 1, Conv2dConfig::default(), vb.pp("conv2"))?;
        let bn2 = batch_norm2d(last, vb.pp("bn2"))?;
        let linear = linear(last, spec.num_classes, vb.pp("linear"))?;
        // A group ends where the next block halves the resolution, and at the last block.
        let stage_ends: Vec<usize> = (0..layers.len())
            .filter(|&i| layers.get(i + 1).is_none_or(|next| next.stride != 1))
            .collect();
        let mut stages = vec![StageInfo::new("stem", stem)];
        for (g, &end) in stage_ends.iter().enumerate() {
            let channels = layers[end].bn3.num_features();
            stages.push(StageInfo::new(format!("stage{}", g + 1), channels));
        }
        stages.push(StageInfo::new("pool", last));
        Ok(Self {
            spec,
            conv1,
            bn1,
            layers,
            conv2,
            bn2,
            linear,
            stage_ends,
            stages,
        })
    }
}

impl MobileNetV2 {
    /// The forward pass, with `hook` at the stage outputs when given (see [`Model::stages`]).
    fn run(&self, xs: &Tensor, train: bool, hook: Option<&dyn StageHook>) -> Result<Tensor> {
        let mut ys = self.bn1.forward_relu_t(&self.conv1.forward(xs)?, train)?;
        ys = at_stage(hook, 0, ys)?;
        let mut stage = 1;
        for (i, block) in self.layers.iter().enumerate() {
            ys = block.forward_t(&ys, train)?;
            if self.stage_ends.get(stage - 1) == Some(&i) {
                ys = at_stage(hook, stage, ys)?;
                stage += 1;
            }
        }
        let ys = self.bn2.forward_relu_t(&self.conv2.forward(&ys)?, train)?;
        let pooled = at_stage(hook, stage, global_avg_pool2d(&ys)?)?;
        self.linear.forward(&pooled)
    }
}

impl Model for MobileNetV2 {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.run(xs, train, None)
    }

    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// `stem`, then `stage1`..`stage4`: the output of each group of inverted-residual blocks
    /// that share an output resolution (32, 16, 8, 4 at 32x32 inputs; 24, 32, 96, 320
    /// channels at width 1), then `pool` (the 1280 pooled units the classifier reads).
    fn stages(&self) -> Vec<StageInfo> {
        self.stages.clone()
    }

    fn forward_hooked(&self, xs: &Tensor, train: bool, hook: &dyn StageHook) -> Result<Tensor> {
        self.run(xs, train, Some(hook))
    }
}
