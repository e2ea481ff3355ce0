//! 2-D convolution with PyTorch's parameter names (`weight`, `bias`) and layout (O x I/groups x
//! kH x kW), initialised as PyTorch's `nn.Conv2d`: weight and bias uniform in
//! +-1/sqrt(fan_in), fan_in = in_channels / groups * k * k (kaiming-uniform with a = sqrt(5)).

use candle_core::{Result, Tensor, bail};
use candle_nn::{Init, VarBuilder};

use super::ops;

/// Stride, padding and groups of a [`Conv2d`]; dilation is always 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dConfig {
    /// Step between windows.
    pub stride: usize,
    /// Zeros added on every side.
    pub padding: usize,
    /// Channel groups; `groups == in_channels == out_channels` is depthwise.
    pub groups: usize,
}

impl Default for Conv2dConfig {
    fn default() -> Self {
        Self {
            stride: 1,
            padding: 0,
            groups: 1,
        }
    }
}

impl Conv2dConfig {
    /// Stride and padding with one group, the common case.
    pub fn new(stride: usize, padding: usize) -> Self {
        Self {
            stride,
            padding,
            groups: 1,
        }
    }

    /// The same with `groups` channel groups.
    pub fn with_groups(self, groups: usize) -> Self {
        Self { groups, ..self }
    }
}

/// A square-kernel 2-D convolution that runs through [`ops::conv2d`].
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    config: Conv2dConfig,
}

impl Conv2d {
    /// Wraps existing tensors (weight O x I/groups x k x k, optional bias O).
    pub fn new(weight: Tensor, bias: Option<Tensor>, config: Conv2dConfig) -> Self {
        Self {
            weight,
            bias,
            config,
        }
    }

    /// The kernel, O x I/groups x k x k.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The per-output-channel bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Stride, padding and groups.
    pub fn config(&self) -> &Conv2dConfig {
        &self.config
    }
}

impl candle_nn::Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        ops::conv2d(
            xs,
            &self.weight,
            self.bias.as_ref(),
            self.config.stride,
            self.config.padding,
            self.config.groups,
        )
    }
}

fn build(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    config: Conv2dConfig,
    with_bias: bool,
    vb: VarBuilder<'_>,
) -> Result<Conv2d> {
    let groups = config.groups;
    if groups == 0 || !in_channels.is_multiple_of(groups) || !out_channels.is_multiple_of(groups) {
        bail!(
            "conv2d {in_channels} -> {out_channels} channels cannot be split into {groups} groups"
        )
    }
    if kernel == 0 || config.stride == 0 {
        bail!(
            "conv2d needs kernel >= 1 and stride >= 1, got kernel {kernel}, stride {}",
            config.stride
        )
    }
    let fan_in = in_channels / groups * kernel * kernel;
    let bound = 1.0 / (fan_in as f64).sqrt();
    let init = Init::Uniform {
        lo: -bound,
        up: bound,
    };
    let weight = vb.get_with_hints(
        (out_channels, in_channels / groups, kernel, kernel),
        "weight",
        init,
    )?;
    let bias = if with_bias {
        Some(vb.get_with_hints(out_channels, "bias", init)?)
    } else {
        None
    };
    Ok(Conv2d::new(weight, bias, config))
}

/// A convolution with a bias (`weight`, `bias` under `vb`).
pub fn conv2d(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    config: Conv2dConfig,
    vb: VarBuilder<'_>,
) -> Result<Conv2d> {
    build(in_channels, out_channels, kernel, config, true, vb)
}

/// A convolution without a bias (`weight` under `vb`), as used before a batch norm.
pub fn conv2d_no_bias(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    config: Conv2dConfig,
    vb: VarBuilder<'_>,
) -> Result<Conv2d> {
    build(in_channels, out_channels, kernel, config, false, vb)
}
