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
//! Stages (for [`super::StageHook`]s): `stem` (16 channels), `layer1`, `layer2`, `layer3` (16,
//! 32, 64 channels, the output of each stage's last block) and `pool` (64 units, the classifier's
//! input).

use candle_core::{Result, Tensor, bail};
use candle_nn::{Module, ModuleT, VarBuilder};

use super::{Arch, Model, ModelSpec, StageHook, StageInfo, at_stage};
use crate::nn::{
    BatchNorm2d, Conv2d, Conv2dConfig, Linear, add_relu, batch_norm2d, conv2d_no_bias,
    global_avg_pool2d, linear,
};

/// Channels of the three stages.
const STAGES: [usize; 3] = [16, 32, 64];

/// conv-bn-relu-conv-bn + shortcut, then ReLU.
#[derive(Debug, Clone)]
struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    shortcut: Option<(Conv2d, BatchNorm2d)>,
}

impl BasicBlock {
    fn new(cin: usize, cout: usize, stride: usize, vb: VarBuilder<'_>) -> Result<Self> {
        let conv1 = conv2d_no_bias(cin, cout, 3, Conv2dConfig::new(stride, 1), vb.pp("conv1"))?;
        let bn1 = batch_norm2d(cout, vb.pp("bn1"))?;
        let conv2 = conv2d_no_bias(cout, cout, 3, Conv2dConfig::new(1, 1), vb.pp("conv2"))?;
        let bn2 = batch_norm2d(cout, vb.pp("bn2"))?;
        let shortcut = if stride != 1 || cin != cout {
            let vs = vb.pp("shortcut");
            let conv = conv2d_no_bias(cin, cout, 1, Conv2dConfig::new(stride, 0), vs.pp("0"))?;
            let bn = batch_norm2d(cout, vs.pp("1"))?;
            Some((conv, bn))
        } else {
            None
        };
        Ok(Self {
            conv1,
            bn1,
            conv2,
            bn2,
            shortcut,
        })
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let ys = self.bn1.forward_relu_t(&self.conv1.forward(xs)?, train)?;
        let ys = self.bn2.forward_t(&self.conv2.forward(&ys)?, train)?;
        let short = match &self.shortcut {
            Some((conv, bn)) => bn.forward_t(&conv.forward(xs)?, train)?,
            None => xs.clone(),
        };
        add_relu(&ys, &short)
    }
}

/// A CIFAR ResNet (20 or 56 layers).
#[derive(Debug, Clone)]
pub struct ResNet {
    spec: ModelSpec,
    conv1: Conv2d,
    bn1: BatchNorm2d,
    blocks: Vec<BasicBlock>,
    fc: Linear,
}

impl ResNet {
    /// Builds ResNet-20 or ResNet-56 (from `spec.arch`) with its variables under `vb`.
    pub fn new(spec: ModelSpec, vb: VarBuilder<'_>) -> Result<Self> {
        let n = match spec.arch {
            Arch::Resnet20 => 3,
            Arch::Resnet56 => 9,
            other => bail!("`{}` is not a ResNet", other.id()),
        };
        let conv1 = conv2d_no_bias(
            spec.in_channels,
            STAGES[0],
            3,
            Conv2dConfig::new(1, 1),
            vb.pp("conv1"),
        )?;
        let bn1 = batch_norm2d(STAGES[0], vb.pp("bn1"))?;
        let mut blocks = Vec::with_capacity(3 * n);
        let mut cin = STAGES[0];
        for (s, &cout) in STAGES.iter().enumerate() {
            let vs = vb.pp(format!("layer{}", s + 1));
            for i in 0..n {
                let stride = if s > 0 && i == 0 { 2 } else { 1 };
                blocks.push(BasicBlock::new(cin, cout, stride, vs.pp(i))?);
                cin = cout;
            }
        }
        let fc = linear(cin, spec.num_classes, vb.pp("fc"))?;
        Ok(Self {
            spec,
            conv1,
            bn1,
            blocks,
            fc,
        })
    }
}

impl ResNet {
    /// The forward pass, with `hook` at the stage outputs when given (see [`Model::stages`]).
    fn run(&self, xs: &Tensor, train: bool, hook: Option<&dyn StageHook>) -> Result<Tensor> {
        let mut ys = self.bn1.forward_relu_t(&self.conv1.forward(xs)?, train)?;
        ys = at_stage(hook, 0, ys)?;
        let per_stage = self.blocks.len() / STAGES.len();
        for (i, block) in self.blocks.iter().enumerate() {
            ys = block.forward_t(&ys, train)?;
            if (i + 1) % per_stage == 0 {
                ys = at_stage(hook, 1 + i / per_stage, ys)?;
            }
        }
        let pooled = at_stage(hook, 1 + STAGES.len(), global_avg_pool2d(&ys)?)?;
        self.fc.forward(&pooled)
    }
}

impl Model for ResNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.run(xs, train, None)
    }

    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// `stem` (after conv1-bn1-relu), `layer1`..`layer3` (each stage's last block, after its
    /// final ReLU) and `pool` (the 64 pooled units the classifier reads): the lock points of
    /// the EdgePro reference code's ResNet, one per stage.
    fn stages(&self) -> Vec<StageInfo> {
        let mut stages = vec![StageInfo::new("stem", STAGES[0])];
        for (s, &c) in STAGES.iter().enumerate() {
            stages.push(StageInfo::new(format!("layer{}", s + 1), c));
        }
        stages.push(StageInfo::new("pool", STAGES[STAGES.len() - 1]));
        stages
    }

    fn forward_hooked(&self, xs: &Tensor, train: bool, hook: &dyn StageHook) -> Result<Tensor> {
        self.run(xs, train, Some(hook))
    }
}
