//! Layers of the zoo, written as our own structs over the kernels of [`ops`] so that a faster
//! backend for one device changes `ops` only. Constructors follow candle: sizes first, the
//! `VarBuilder` last, parameter names as PyTorch's modules (`weight`, `bias`, `running_mean`, ...).
//!
//! Initialisation (through [`ParamStore`](crate::params::ParamStore)'s seeded builder) is
//! PyTorch's default: convolution and linear weights and biases uniform in +-1/sqrt(fan_in)
//! (kaiming-uniform with a = sqrt(5)), the initialisation of the kuangliu/pytorch-cifar models
//! the zoo follows; batch-norm weight 1, bias 0, running mean 0, running variance 1.

pub mod activation;
pub mod batch_norm;
pub mod conv;
pub mod cpu;
pub mod linear;
pub mod ops;
pub mod pool;

pub use activation::{Activation, add_relu, relu, relu6};
pub use batch_norm::{BatchNorm2d, batch_norm2d};
pub use conv::{Conv2d, Conv2dConfig, conv2d, conv2d_no_bias};
pub use linear::{Linear, linear};
pub use pool::{AvgPool2d, MaxPool2d, avg_pool2d, global_avg_pool2d, max_pool2d};
