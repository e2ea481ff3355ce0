//! Pooling layers (no parameters), run through [`ops`].

use candle_core::{Result, Tensor};

use super::ops;

/// Max pooling over square windows, no padding, floor mode (PyTorch's `nn.MaxPool2d(k, s)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPool2d {
    /// Window side.
    pub kernel: usize,
    /// Step between windows.
    pub stride: usize,
}

impl MaxPool2d {
    /// Non-overlapping windows (`stride == kernel`), the only case with gradients in candle.
    pub fn new(kernel: usize) -> Self {
        Self {
            kernel,
            stride: kernel,
        }
    }
}

impl candle_nn::Module for MaxPool2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        ops::max_pool2d(xs, self.kernel, self.stride)
    }
}

/// Average pooling over square windows, no padding, floor mode (PyTorch's `nn.AvgPool2d(k, s)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AvgPool2d {
    /// Window side.
    pub kernel: usize,
    /// Step between windows.
    pub stride: usize,
}

impl AvgPool2d {
    /// Non-overlapping windows (`stride == kernel`), the only case with gradients in candle.
    pub fn new(kernel: usize) -> Self {
        Self {
            kernel,
            stride: kernel,
        }
    }
}

impl candle_nn::Module for AvgPool2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        ops::avg_pool2d(xs, self.kernel, self.stride)
    }
}

/// Mean over the spatial dimensions, N x C x H x W -> N x C: the classifier head of the CIFAR
/// networks, which makes them work at any input size.
pub fn global_avg_pool2d(xs: &Tensor) -> Result<Tensor> {
    ops::global_avg_pool2d(xs)
}

/// Functional max pooling, as `F.max_pool2d(x, kernel, stride)`.
pub fn max_pool2d(xs: &Tensor, kernel: usize, stride: usize) -> Result<Tensor> {
    ops::max_pool2d(xs, kernel, stride)
}

/// Functional average pooling, as `F.avg_pool2d(x, kernel, stride)`.
pub fn avg_pool2d(xs: &Tensor, kernel: usize, stride: usize) -> Result<Tensor> {
    ops::avg_pool2d(xs, kernel, stride)
}
