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
//! Stages ([`super::StageInfo`]): VGG: every convolution unit under its `features` index
//! (`features.0`, `features.4`, ...: conv-bn-relu, and the max pool when one follows), then
//! `pool` (the classifier's input units) and `classifier`; groups `block1`..`block5` end at
//! each max pool, and `pool`. VGG-small: `c1`..`c5` (with the max pools after c2, c4, c5) and
//! `fc`; groups `block1`..`block3` end at c2, c4 and c5. [chosen] A group ends after its pool,
//! not before: for a per-channel non-negative multiplier (a lock mask) the two are the same
//! (max(λx) = λ max(x)), and the pooled map is 4x smaller to mask.

use candle_core::{Result, Tensor, bail};
use candle_nn::VarBuilder;

use super::network::Architecture;
use super::{Act, Arch, ConvBn, Dense, ModelSpec, Pass, StageInfo};
use crate::nn::{Conv2dConfig, global_avg_pool2d, max_pool2d};

/// A 2x2 max pool in a configuration; every other entry is a convolution's output channels.
const M: usize = 0;

const VGG11: &[usize] = &[64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M];
const VGG16: &[usize] = &[
    64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M,
];
const VGG19: &[usize] = &[
    64, 64, M, 128, 128, M, 256, 256, 256, 256, M, 512, 512, 512, 512, M, 512, 512, 512, 512, M,
];

/// One convolution unit and whether a 2x2 max pool follows it.
#[derive(Debug, Clone)]
struct Unit {
    conv: ConvBn,
    pool: bool,
}

impl Unit {
    fn forward(&self, xs: &Tensor, pass: &Pass<'_>) -> Result<Tensor> {
        let ys = self.conv.forward(xs, pass)?;
        if self.pool {
            max_pool2d(&ys, 2, 2)
        } else {
            Ok(ys)
        }
    }
}

/// Stage infos for `units` (each owning its convolution unit, groups `block{k}` at the pools),
/// then the two stages that follow.
fn unit_stages(units: &[(String, Unit)]) -> Vec<StageInfo> {
    let mut stride = 1;
    let mut blocks = 0;
    units
        .iter()
        .map(|(name, unit)| {
            if unit.pool {
                stride *= 2;
            }
            let info = StageInfo::map(name, unit.conv.out_channels(), stride)
                .owning(unit.conv.param_names());
            if unit.pool {
                blocks += 1;
                info.ends(format!("block{blocks}"))
            } else {
                info
            }
        })
        .collect()
}

/// VGG-11/16/19 with batch norm, CIFAR variant.
#[derive(Debug, Clone)]
pub struct Vgg {
    features: Vec<Unit>,
    classifier: Dense,
    stages: Vec<StageInfo>,
}

impl Vgg {
    /// Builds the VGG of `spec.arch` with its variables under `vb`.
    pub fn new(spec: &ModelSpec, vb: VarBuilder<'_>) -> Result<Self> {
        let cfg = match spec.arch {
            Arch::Vgg11 => VGG11,
            Arch::Vgg16 => VGG16,
            Arch::Vgg19 => VGG19,
            other => bail!("`{}` is not a VGG with a configuration", other.id()),
        };
        let vf = vb.pp("features");
        let mut units: Vec<(String, Unit)> = Vec::with_capacity(cfg.len());
        let mut index = 0;
        let mut cin = spec.in_channels;
        for &entry in cfg {
            if entry == M {
                if let Some((_, last)) = units.last_mut() {
                    last.pool = true;
                }
                index += 1;
                continue;
            }
            let cout = spec.scaled(entry);
            let conv = ConvBn::biased_with_bn(
                cin,
                cout,
                Conv2dConfig::new(1, 1),
                vf.pp(index),
                vf.pp(index + 1),
            )?;
            units.push((format!("features.{index}"), Unit { conv, pool: false }));
            index += 3;
            cin = cout;
        }
        let mut stages = unit_stages(&units);
        stages.push(StageInfo::vector("pool", cin).ends("pool"));
        let classifier = Dense::new(cin, spec.num_classes, vb.pp("classifier"))?;
        stages.push(
            StageInfo::vector("classifier", spec.num_classes).owning(classifier.param_names()),
        );
        Ok(Self {
            features: units.into_iter().map(|(_, u)| u).collect(),
            classifier,
            stages,
        })
    }
}

impl Architecture for Vgg {
    fn stages(&self) -> &[StageInfo] {
        &self.stages
    }

    fn run_stage(&self, stage: usize, xs: &Tensor, pass: &Pass<'_>) -> Result<Tensor> {
        let units = self.features.len();
        match stage {
            s if s < units => self.features[s].forward(xs, pass),
            s if s == units => global_avg_pool2d(xs),
            s if s == units + 1 => self.classifier.forward(xs, pass),
            s => bail!("vgg has no stage {s}"),
        }
    }
}

/// Channels of VGG-small's five conv_bn blocks.
const SMALL: [usize; 5] = [32, 32, 64, 64, 128];

/// The small VGG of the speed reference: conv32-conv32-pool-conv64-conv64-pool-conv128-pool-fc.
#[derive(Debug, Clone)]
pub struct VggSmall {
    blocks: Vec<Unit>,
    fc: Dense,
    stages: Vec<StageInfo>,
}

impl VggSmall {
    /// Builds VGG-small with its variables under `vb`.
    pub fn new(spec: &ModelSpec, vb: VarBuilder<'_>) -> Result<Self> {
        let mut units = Vec::with_capacity(SMALL.len());
        let mut cin = spec.in_channels;
        for (i, &cout) in SMALL.iter().enumerate() {
            let name = format!("c{}", i + 1);
            let vs = vb.pp(&name);
            let conv = ConvBn::with_bn(
                cin,
                cout,
                3,
                Conv2dConfig::new(1, 1),
                Act::Relu,
                vs.pp("0"),
                vs.pp("1"),
            )?;
            units.push((
                name,
                Unit {
                    conv,
                    pool: i == 1 || i >= 3,
                },
            ));
            cin = cout;
        }
        let mut stages = unit_stages(&units);
        let fc = Dense::new(cin * 4 * 4, spec.num_classes, vb.pp("fc"))?;
        stages.push(StageInfo::vector("fc", spec.num_classes).owning(fc.param_names()));
        Ok(Self {
            blocks: units.into_iter().map(|(_, u)| u).collect(),
            fc,
            stages,
        })
    }
}

impl Architecture for VggSmall {
    fn stages(&self) -> &[StageInfo] {
        &self.stages
    }

    fn run_stage(&self, stage: usize, xs: &Tensor, pass: &Pass<'_>) -> Result<Tensor> {
        match stage {
            0 => {
                let (_, _, h, w) = xs.dims4()?;
                if (h, w) != (32, 32) {
                    bail!(
                        "vgg-small takes 32x32 inputs (its classifier reads a 4x4 map), got {h}x{w}"
                    )
                }
                self.blocks[0].forward(xs, pass)
            }
            s if s < self.blocks.len() => self.blocks[s].forward(xs, pass),
            s if s == self.blocks.len() => self.fc.forward(&xs.flatten_from(1)?, pass),
            s => bail!("vgg-small has no stage {s}"),
        }
    }
}
