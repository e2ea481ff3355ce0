//! CIFAR ResNet-20 and ResNet-56 (He et al. 2016, "Deep Residual Learning", section 4.2).
//!
//! A 3x3 stem convolution (16 channels, stride 1) + batch norm + ReLU, three stages of n basic
//! blocks (n = 3 for ResNet-20, 9 for ResNet-56) with 16, 32 and 64 channels, the first block of
//! stages 2 and 3 with stride 2, global average pooling and a linear classifier. A block is
//! conv3x3-bn-relu-conv3x3-bn, plus the shortcut, then ReLU; the shortcut is a projection
//! (1x1 convolution with the block's stride + batch norm, "option B") whenever the stride is not 1
//! or the channels change, the identity otherwise. Convolutions have no bias. ResNet-20 has
//! 272,474 trainable parameters for 10 classes, ResNet-56 855,770.
//!
//! Parameter names (PyTorch state-dict names of `ci/torch/models.py`'s `ResNet`):
//!
//! | name | shape |
//! |---|---|
//! | `conv1.weight` | 16 x in_channels x 3 x 3 |
//! | `bn1.{weight,bias,running_mean,running_var,num_batches_tracked}` | 16 (counter: `[]`) |
//! | `layer{s}.{i}.conv1.weight`, `layer{s}.{i}.conv2.weight` | c x c' x 3 x 3 |
//! | `layer{s}.{i}.bn1.*`, `layer{s}.{i}.bn2.*` | c |
//! | `layer{s}.{i}.shortcut.0.weight` (projection blocks only: `layer2.0`, `layer3.0`) | c x c/2 x 1 x 1 |
//! | `layer{s}.{i}.shortcut.1.*` (batch norm of the projection) | c |
//! | `fc.weight`, `fc.bias` | classes x 64, classes |
//!
//! with s in 1..=3 and i in 0..n.
//!
//! Stages ([`super::StageInfo`]): `stem` (conv1-bn1-relu), every block (`layer1.0` ..
//! `layer3.{n-1}`), `pool` (the 64 pooled units) and `fc` (the logits). Groups (EdgePro's lock
//! points, one per stage of the paper): `stem`, `layer1`, `layer2`, `layer3` (each stage's last
//! block, after its final ReLU) and `pool`.

use candle_core::{Result, Tensor, bail};
use candle_nn::VarBuilder;

use super::network::Architecture;
use super::{Act, Arch, ConvBn, Dense, ModelSpec, Pass, StageInfo};
use crate::nn::{Conv2dConfig, add_relu, global_avg_pool2d};

/// Channels of the three stages.
const STAGES: [usize; 3] = [16, 32, 64];

/// conv-bn-relu-conv-bn + shortcut, then ReLU.
#[derive(Debug, Clone)]
struct BasicBlock {
    conv1: ConvBn,
    conv2: ConvBn,
    shortcut: Option<ConvBn>,
}

impl BasicBlock {
    fn new(cin: usize, cout: usize, stride: usize, vb: VarBuilder<'_>) -> Result<Self> {
        let conv = |cin, k, config, act, conv: &str, bn: &str, vb: &VarBuilder<'_>| {
            ConvBn::with_bn(cin, cout, k, config, act, vb.pp(conv), vb.pp(bn))
        };
        let conv1 = conv(
            cin,
            3,
            Conv2dConfig::new(stride, 1),
            Act::Relu,
            "conv1",
            "bn1",
            &vb,
        )?;
        let conv2 = conv(
            cout,
            3,
            Conv2dConfig::new(1, 1),
            Act::Identity,
            "conv2",
            "bn2",
            &vb,
        )?;
        let shortcut = if stride != 1 || cin != cout {
            let vs = vb.pp("shortcut");
            let config = Conv2dConfig::new(stride, 0);
            Some(conv(cin, 1, config, Act::Identity, "0", "1", &vs)?)
        } else {
            None
        };
        Ok(Self {
            conv1,
            conv2,
            shortcut,
        })
    }

    fn forward(&self, xs: &Tensor, pass: &Pass<'_>) -> Result<Tensor> {
        let ys = self.conv1.forward(xs, pass)?;
        let ys = self.conv2.forward(&ys, pass)?;
        let short = match &self.shortcut {
            Some(unit) => unit.forward(xs, pass)?,
            None => xs.clone(),
        };
        add_relu(&ys, &short)
    }

    fn param_names(&self) -> Vec<String> {
        let mut names = self.conv1.param_names();
        names.extend(self.conv2.param_names());
        if let Some(unit) = &self.shortcut {
            names.extend(unit.param_names());
        }
        names
    }
}

/// A CIFAR ResNet (20 or 56 layers).
#[derive(Debug, Clone)]
pub struct ResNet {
    stem: ConvBn,
    blocks: Vec<BasicBlock>,
    fc: Dense,
    stages: Vec<StageInfo>,
}

impl ResNet {
    /// Builds ResNet-20 or ResNet-56 (from `spec.arch`) with its variables under `vb`.
    pub fn new(spec: &ModelSpec, vb: VarBuilder<'_>) -> Result<Self> {
        let n = match spec.arch {
            Arch::Resnet20 => 3,
            Arch::Resnet56 => 9,
            other => bail!("`{}` is not a ResNet", other.id()),
        };
        let stem = ConvBn::with_bn(
            spec.in_channels,
            STAGES[0],
            3,
            Conv2dConfig::new(1, 1),
            Act::Relu,
            vb.pp("conv1"),
            vb.pp("bn1"),
        )?;
        let mut stages = vec![
            StageInfo::map("stem", STAGES[0], 1)
                .owning(stem.param_names())
                .ends("stem"),
        ];
        let mut blocks = Vec::with_capacity(3 * n);
        let mut cin = STAGES[0];
        let mut stride = 1;
        for (s, &cout) in STAGES.iter().enumerate() {
            let group = format!("layer{}", s + 1);
            let vs = vb.pp(&group);
            for i in 0..n {
                let step = if s > 0 && i == 0 { 2 } else { 1 };
                stride *= step;
                let block = BasicBlock::new(cin, cout, step, vs.pp(i))?;
                let mut info = StageInfo::map(format!("{group}.{i}"), cout, stride)
                    .owning(block.param_names());
                if i + 1 == n {
                    info = info.ends(&group);
                }
                stages.push(info);
                blocks.push(block);
                cin = cout;
            }
        }
        stages.push(StageInfo::vector("pool", cin).ends("pool"));
        let fc = Dense::new(cin, spec.num_classes, vb.pp("fc"))?;
        stages.push(StageInfo::vector("fc", spec.num_classes).owning(fc.param_names()));
        Ok(Self {
            stem,
            blocks,
            fc,
            stages,
        })
    }
}

impl Architecture for ResNet {
    fn stages(&self) -> &[StageInfo] {
        &self.stages
    }

    fn run_stage(&self, stage: usize, xs: &Tensor, pass: &Pass<'_>) -> Result<Tensor> {
        let blocks = self.blocks.len();
        match stage {
            0 => self.stem.forward(xs, pass),
            s if s <= blocks => self.blocks[s - 1].forward(xs, pass),
            s if s == blocks + 1 => global_avg_pool2d(xs),
            s if s == blocks + 2 => self.fc.forward(xs, pass),
            s => bail!("resnet has no stage {s}"),
        }
    }
}
