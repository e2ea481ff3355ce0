//! The layers a [`LayerHook`] sees: every convolution of the zoo together with the batch norm and
//! activation that follow it, and every linear layer. Quantization-aware training replaces how
//! these run (fake-quantized inputs and weights, batch norm folded into the convolution) without
//! touching the architectures; a plain pass runs them as they are.

use candle_core::{Result, Tensor};
use candle_nn::{Module, ModuleT, VarBuilder};

use super::Pass;
use crate::nn::{BatchNorm2d, Conv2d, Conv2dConfig, Linear, batch_norm2d, conv2d, conv2d_no_bias};

/// Runs the convolution and linear layers of a forward pass in place of the plain computation.
/// Each method gets the whole unit (weights, batch norm, activation) and the unit's input, and
/// returns its output; the default methods compute exactly what a pass without a hook does.
pub trait LayerHook {
    /// Runs a convolution unit.
    fn conv(&self, unit: &ConvBn, xs: &Tensor, train: bool) -> Result<Tensor> {
        unit.forward_plain(xs, train)
    }

    /// Runs a linear layer.
    fn linear(&self, unit: &Dense, xs: &Tensor) -> Result<Tensor> {
        unit.forward_plain(xs)
    }
}

/// The activation after a convolution unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// None (the last convolution of a residual branch, before the addition).
    Identity,
    /// ReLU.
    Relu,
}

/// A convolution, the batch norm that follows it (if any) and its activation: the unit
/// PyTorch's QAT fuses (`ConvBnReLU2d`, `ConvBn2d`, `ConvReLU2d`).
#[derive(Debug, Clone)]
pub struct ConvBn {
    /// Store name prefix of the convolution (`layer1.0.conv1`), without a trailing dot.
    pub name: String,
    /// The convolution.
    pub conv: Conv2d,
    /// The batch norm after it and its store name prefix.
    pub bn: Option<(String, BatchNorm2d)>,
    /// The activation after the batch norm.
    pub act: Act,
}

impl ConvBn {
    /// A bias-free convolution (`k` x `k`, `config`) under `vb_conv` followed by a batch norm
    /// under `vb_bn` and `act`.
    pub(crate) fn with_bn(
        cin: usize,
        cout: usize,
        k: usize,
        config: Conv2dConfig,
        act: Act,
        vb_conv: VarBuilder<'_>,
        vb_bn: VarBuilder<'_>,
    ) -> Result<Self> {
        let name = vb_conv.prefix();
        let conv = conv2d_no_bias(cin, cout, k, config, vb_conv)?;
        let bn_name = vb_bn.prefix();
        let bn = batch_norm2d(cout, vb_bn)?;
        Ok(Self {
            name,
            conv,
            bn: Some((bn_name, bn)),
            act,
        })
    }

    /// A convolution with (`bias`) or without a bias and no batch norm.
    pub(crate) fn plain(
        cin: usize,
        cout: usize,
        k: usize,
        config: Conv2dConfig,
        bias: bool,
        act: Act,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        let name = vb.prefix();
        let conv = if bias {
            conv2d(cin, cout, k, config, vb)?
        } else {
            conv2d_no_bias(cin, cout, k, config, vb)?
        };
        Ok(Self {
            name,
            conv,
            bn: None,
            act,
        })
    }

    /// A convolution with a bias followed by a batch norm (VGG's convolutions).
    pub(crate) fn biased_with_bn(
        cin: usize,
        cout: usize,
        config: Conv2dConfig,
        vb_conv: VarBuilder<'_>,
        vb_bn: VarBuilder<'_>,
    ) -> Result<Self> {
        let mut unit = Self::plain(cin, cout, 3, config, true, Act::Relu, vb_conv)?;
        let bn_name = vb_bn.prefix();
        unit.bn = Some((bn_name, batch_norm2d(cout, vb_bn)?));
        Ok(unit)
    }

    /// Runs the unit in `pass` (through its layer hook when there is one).
    pub fn forward(&self, xs: &Tensor, pass: &Pass<'_>) -> Result<Tensor> {
        match pass.layers {
            Some(hook) => hook.conv(self, xs, pass.train),
            None => self.forward_plain(xs, pass.train),
        }
    }

    /// The plain computation: convolution, batch norm (batch statistics when `train`, fused
    /// with the ReLU on the CPU), activation.
    pub fn forward_plain(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let ys = self.conv.forward(xs)?;
        match (&self.bn, self.act) {
            (Some((_, bn)), Act::Relu) => bn.forward_relu_t(&ys, train),
            (Some((_, bn)), Act::Identity) => bn.forward_t(&ys, train),
            (None, Act::Relu) => crate::nn::relu(&ys),
            (None, Act::Identity) => Ok(ys),
        }
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.conv.weight().dims().first().copied().unwrap_or(0)
    }

    /// Store names of every tensor of the unit.
    pub fn param_names(&self) -> Vec<String> {
        let mut names = vec![format!("{}.weight", self.name)];
        if self.conv.bias().is_some() {
            names.push(format!("{}.bias", self.name));
        }
        if let Some((bn, _)) = &self.bn {
            names.extend(bn_names(bn));
        }
        names
    }
}

/// The five tensors of a batch norm under `prefix`.
fn bn_names(prefix: &str) -> impl Iterator<Item = String> + '_ {
    [
        "weight",
        "bias",
        "running_mean",
        "running_var",
        "num_batches_tracked",
    ]
    .into_iter()
    .map(move |t| format!("{prefix}.{t}"))
}

/// A linear layer with its store name.
#[derive(Debug, Clone)]
pub struct Dense {
    /// Store name prefix (`fc`, `exits.2`), without a trailing dot.
    pub name: String,
    /// The layer.
    pub linear: Linear,
}

impl Dense {
    /// A linear layer with a bias under `vb`.
    pub(crate) fn new(in_features: usize, out_features: usize, vb: VarBuilder<'_>) -> Result<Self> {
        let name = vb.prefix();
        Ok(Self {
            name,
            linear: crate::nn::linear(in_features, out_features, vb)?,
        })
    }

    /// Runs the layer in `pass` (through its layer hook when there is one).
    pub fn forward(&self, xs: &Tensor, pass: &Pass<'_>) -> Result<Tensor> {
        match pass.layers {
            Some(hook) => hook.linear(self, xs),
            None => self.forward_plain(xs),
        }
    }

    /// The plain computation.
    pub fn forward_plain(&self, xs: &Tensor) -> Result<Tensor> {
        self.linear.forward(xs)
    }

    /// Store names of its tensors.
    pub fn param_names(&self) -> Vec<String> {
        let mut names = vec![format!("{}.weight", self.name)];
        if self.linear.bias().is_some() {
            names.push(format!("{}.bias", self.name));
        }
        names
    }
}
