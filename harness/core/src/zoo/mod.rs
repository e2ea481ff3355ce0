//! The model zoo: CIFAR-style classifiers and the DnCNN denoiser, built through a `VarBuilder` so
//! that every parameter has a stable PyTorch state-dict name that defences and attacks address.

use candle_core::Tensor;

/// A network of the zoo. Inputs are normalised N x C x H x W f32 tensors; classifiers return
/// logits N x classes, DnCNN returns the denoised image.
pub trait Model: Send + Sync {
    /// Runs the network; `train` selects batch-norm batch statistics (and updates the running
    /// statistics) instead of the running statistics.
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor>;

    /// What was built.
    fn spec(&self) -> &ModelSpec;
}

/// The architectures of the zoo, by stable kebab-case id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// CIFAR ResNet-20 (three stages of 3 basic blocks, 16/32/64 channels).
    Resnet20,
    /// CIFAR ResNet-56 (three stages of 9 basic blocks).
    Resnet56,
    /// VGG-11 with batch norm, CIFAR variant.
    Vgg11,
    /// VGG-16 with batch norm, CIFAR variant.
    Vgg16,
    /// VGG-19 with batch norm, CIFAR variant.
    Vgg19,
    /// The small VGG of the speed reference: conv32-conv32-pool-conv64-conv64-pool-conv128-pool-fc.
    VggSmall,
    /// MobileNetV2, CIFAR variant (stride 1 stem).
    MobilenetV2,
    /// DnCNN denoiser: 17 conv layers, residual learning.
    Dncnn,
}

/// Everything that shapes a model's parameters.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelSpec {
    /// The architecture.
    pub arch: Arch,
    /// Output classes (ignored by DnCNN).
    pub num_classes: usize,
    /// Input channels (3 for RGB).
    pub in_channels: usize,
    /// Channel width multiplier (VGG and MobileNetV2; 1.0 elsewhere).
    pub width: f64,
}
