//! Activations, run through [`ops`].

use candle_core::{Result, Tensor};

use super::ops;

/// `max(x, 0)`.
pub fn relu(xs: &Tensor) -> Result<Tensor> {
    ops::relu(xs)
}

/// `max(a + b, 0)`, a residual block's output, in one pass where the fast kernels run.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    ops::add_relu(a, b)
}

/// `min(max(x, 0), 6)`, the clipped ReLU of the original MobileNetV2.
pub fn relu6(xs: &Tensor) -> Result<Tensor> {
    ops::relu6(xs)
}

/// An activation as a value, for layer lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// [`relu`].
    Relu,
    /// [`relu6`].
    Relu6,
}

impl candle_nn::Module for Activation {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Relu => relu(xs),
            Activation::Relu6 => relu6(xs),
        }
    }
}
