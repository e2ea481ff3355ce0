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
//! Stages ([`super::StageInfo`]): `stem`, every block (`layers.0` .. `layers.16`), `conv2`
//! (the 1x1 convolution to 1280 channels), `pool` (the 1280 pooled units) and `linear` (the
//! logits). Groups: `stem`, `stage1`..`stage4` (the last block of each group of blocks with one
//! output resolution: blocks 2, 5, 12 and 16; 32, 16, 8, 4 at 32x32 inputs) and `pool`.

use candle_core::{Result, Tensor, bail};
use candle_nn::VarBuilder;

use super::network::Architecture;
use super::{Act, Arch, ConvBn, Dense, ModelSpec, Pass, StageInfo};
use crate::nn::{Conv2dConfig, global_avg_pool2d};

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
    expand: ConvBn,
    depthwise: ConvBn,
    project: ConvBn,
    stride: usize,
    shortcut: Option<ConvBn>,
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
        let one = Conv2dConfig::default();
        let expand = ConvBn::with_bn(cin, planes, 1, one, Act::Relu, vb.pp("conv1"), vb.pp("bn1"))?;
        let dw = Conv2dConfig::new(stride, 1).with_groups(planes);
        let depthwise = ConvBn::with_bn(
            planes,
            planes,
            3,
            dw,
            Act::Relu,
            vb.pp("conv2"),
            vb.pp("bn2"),
        )?;
        let project = ConvBn::with_bn(
            planes,
            cout,
            1,
            one,
            Act::Identity,
            vb.pp("conv3"),
            vb.pp("bn3"),
        )?;
        let shortcut = if stride == 1 && cin != cout {
            let vs = vb.pp("shortcut");
            Some(ConvBn::with_bn(
                cin,
                cout,
                1,
                one,
                Act::Identity,
                vs.pp("0"),
                vs.pp("1"),
            )?)
        } else {
            None
        };
        Ok(Self {
            expand,
            depthwise,
            project,
            stride,
            shortcut,
        })
    }

    fn forward(&self, xs: &Tensor, pass: &Pass<'_>) -> Result<Tensor> {
        let ys = self.expand.forward(xs, pass)?;
        let ys = self.depthwise.forward(&ys, pass)?;
        let ys = self.project.forward(&ys, pass)?;
        if self.stride != 1 {
            return Ok(ys);
        }
        let short = match &self.shortcut {
            Some(unit) => unit.forward(xs, pass)?,
            None => xs.clone(),
        };
        ys + short
    }

    fn param_names(&self) -> Vec<String> {
        let mut names = self.expand.param_names();
        names.extend(self.depthwise.param_names());
        names.extend(self.project.param_names());
        if let Some(unit) = &self.shortcut {
            names.extend(unit.param_names());
        }
        names
    }
}

/// MobileNetV2, CIFAR variant.
#[derive(Debug, Clone)]
pub struct MobileNetV2 {
    stem: ConvBn,
    layers: Vec<Block>,
    conv2: ConvBn,
    linear: Dense,
    stages: Vec<StageInfo>,
}

impl MobileNetV2 {
    /// Builds MobileNetV2 with its variables under `vb`.
    pub fn new(spec: &ModelSpec, vb: VarBuilder<'_>) -> Result<Self> {
        if spec.arch != Arch::MobilenetV2 {
            bail!("`{}` is not mobilenet-v2", spec.arch.id())
        }
        let stem_channels = spec.scaled(32);
        let stem = ConvBn::with_bn(
            spec.in_channels,
            stem_channels,
            3,
            Conv2dConfig::new(1, 1),
            Act::Relu,
            vb.pp("conv1"),
            vb.pp("bn1"),
        )?;
        let mut stages = vec![
            StageInfo::map("stem", stem_channels, 1)
                .owning(stem.param_names())
                .ends("stem"),
        ];
        let vl = vb.pp("layers");
        let mut layers = Vec::new();
        let mut cin = stem_channels;
        let mut strides = Vec::new();
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
                strides.push(stride);
                cin = cout;
            }
        }
        // A group ends where the next block halves the resolution, and at the last block.
        let mut total = 1;
        let mut group = 0;
        for (i, block) in layers.iter().enumerate() {
            total *= strides[i];
            let mut info =
                StageInfo::map(format!("layers.{i}"), block.project.out_channels(), total)
                    .owning(block.param_names());
            if strides.get(i + 1).is_none_or(|&next| next != 1) {
                group += 1;
                info = info.ends(format!("stage{group}"));
            }
            stages.push(info);
        }
        let last = if spec.width > 1.0 {
            spec.scaled(1280)
        } else {
            1280
        };
        let one = Conv2dConfig::default();
        let conv2 = ConvBn::with_bn(cin, last, 1, one, Act::Relu, vb.pp("conv2"), vb.pp("bn2"))?;
        stages.push(StageInfo::map("conv2", last, total).owning(conv2.param_names()));
        stages.push(StageInfo::vector("pool", last).ends("pool"));
        let linear = Dense::new(last, spec.num_classes, vb.pp("linear"))?;
        stages.push(StageInfo::vector("linear", spec.num_classes).owning(linear.param_names()));
        Ok(Self {
            stem,
            layers,
            conv2,
            linear,
            stages,
        })
    }
}

impl Architecture for MobileNetV2 {
    fn stages(&self) -> &[StageInfo] {
        &self.stages
    }

    fn run_stage(&self, stage: usize, xs: &Tensor, pass: &Pass<'_>) -> Result<Tensor> {
        let blocks = self.layers.len();
        match stage {
            0 => self.stem.forward(xs, pass),
            s if s <= blocks => self.layers[s - 1].forward(xs, pass),
            s if s == blocks + 1 => self.conv2.forward(xs, pass),
            s if s == blocks + 2 => global_avg_pool2d(xs),
            s if s == blocks + 3 => self.linear.forward(xs, pass),
            s => bail!("mobilenet-v2 has no stage {s}"),
        }
    }
}
