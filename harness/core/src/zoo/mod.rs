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

pub mod dncnn;
pub mod mobilenet_v2;
pub mod resnet;
pub mod vgg;

use std::collections::BTreeSet;
use std::sync::PoisonError;

use candle_nn::VarBuilder;

use crate::error::{Error, Result, suggest};
use crate::params::ParamStore;

impl Arch {
    const ALL: [Arch; 8] = [
        Arch::Resnet20,
        Arch::Resnet56,
        Arch::Vgg11,
        Arch::Vgg16,
        Arch::Vgg19,
        Arch::VggSmall,
        Arch::MobilenetV2,
        Arch::Dncnn,
    ];

    /// The stable id used in TOML, CSV, file names and on the command line.
    pub fn id(&self) -> &'static str {
        match self {
            Arch::Resnet20 => "resnet20",
            Arch::Resnet56 => "resnet56",
            Arch::Vgg11 => "vgg11",
            Arch::Vgg16 => "vgg16",
            Arch::Vgg19 => "vgg19",
            Arch::VggSmall => "vgg-small",
            Arch::MobilenetV2 => "mobilenet-v2",
            Arch::Dncnn => "dncnn",
        }
    }

    /// The architecture with id `name` (case and `_`/`-` are forgiven); an unknown name answers
    /// with the closest ids.
    pub fn parse(name: &str) -> Result<Arch> {
        let wanted = name.trim().to_ascii_lowercase().replace('_', "-");
        if let Some(arch) = Self::ALL.iter().find(|a| a.id() == wanted) {
            return Ok(*arch);
        }
        let ids = Self::ALL.iter().map(|a| a.id());
        Err(Error::UnknownModel {
            name: name.to_string(),
            suggestions: suggest(&wanted, ids.clone()),
            available: ids.map(str::to_string).collect(),
        })
    }

    /// Every architecture, in a stable order (listing, smoke runs).
    pub fn all() -> &'static [Arch] {
        &Self::ALL
    }

    /// One line for `harness list`.
    pub fn description(&self) -> &'static str {
        match self {
            Arch::Resnet20 => {
                "CIFAR ResNet-20 (He et al. 2016): 3 stages of 3 basic blocks, 16/32/64 channels"
            }
            Arch::Resnet56 => {
                "CIFAR ResNet-56 (He et al. 2016): 3 stages of 9 basic blocks, 16/32/64 channels"
            }
            Arch::Vgg11 => "VGG-11 with batch norm, CIFAR variant, width multiplier",
            Arch::Vgg16 => "VGG-16 with batch norm, CIFAR variant, width multiplier",
            Arch::Vgg19 => "VGG-19 with batch norm, CIFAR variant, width multiplier",
            Arch::VggSmall => "small VGG of the speed reference (5 conv, 32x32 inputs only)",
            Arch::MobilenetV2 => "MobileNetV2, CIFAR variant (stride-1 stem), width multiplier",
            Arch::Dncnn => "DnCNN denoiser (Zhang et al. 2017): 17 conv layers, residual learning",
        }
    }

    /// Whether the network outputs class logits (every architecture but the DnCNN denoiser).
    pub fn is_classifier(&self) -> bool {
        !matches!(self, Arch::Dncnn)
    }

    /// Whether [`ModelSpec::width`] may differ from 1.0.
    pub fn has_width(&self) -> bool {
        matches!(
            self,
            Arch::Vgg11 | Arch::Vgg16 | Arch::Vgg19 | Arch::MobilenetV2
        )
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.id())
    }
}

impl std::str::FromStr for Arch {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Arch::parse(s)
    }
}

impl ModelSpec {
    /// `arch` with `num_classes` outputs, 3 input channels and width 1.0.
    pub fn new(arch: Arch, num_classes: usize) -> Self {
        Self {
            arch,
            num_classes,
            in_channels: 3,
            width: 1.0,
        }
    }

    /// The same with `in_channels` input channels (1 for grayscale).
    pub fn with_in_channels(self, in_channels: usize) -> Self {
        Self {
            in_channels,
            ..self
        }
    }

    /// The same with channel width multiplier `width` (VGG and MobileNetV2).
    pub fn with_width(self, width: f64) -> Self {
        Self { width, ..self }
    }

    /// Checks that the spec describes a buildable model.
    pub fn validate(&self) -> Result<()> {
        let id = self.arch.id();
        if self.in_channels == 0 {
            return Err(Error::Config(format!(
                "`{id}` needs at least 1 input channel"
            )));
        }
        if self.arch.is_classifier() && self.num_classes == 0 {
            return Err(Error::Config(format!("`{id}` needs at least 1 class")));
        }
        if !(self.width.is_finite() && self.width > 0.0) {
            return Err(Error::Config(format!(
                "width must be positive, got {}",
                self.width
            )));
        }
        if !self.arch.has_width() && self.width != 1.0 {
            return Err(Error::Config(format!(
                "`{id}` has no width multiplier (width {} given; only vgg11, vgg16, vgg19 and mobilenet-v2 take one)",
                self.width
            )));
        }
        Ok(())
    }

    /// `channels` scaled by the width multiplier: `max(1, round(channels * width))`.
    pub fn scaled(&self, channels: usize) -> usize {
        ((channels as f64 * self.width).round() as usize).max(1)
    }

    /// Name prefix (with its trailing dot) of the final layer's parameters: the classifier of a
    /// classifier, the output convolution of DnCNN. Fine-tuning attacks train or re-initialise
    /// exactly the parameters under it.
    pub fn head_prefix(&self) -> &'static str {
        match self.arch {
            Arch::Resnet20 | Arch::Resnet56 | Arch::VggSmall => "fc.",
            Arch::Vgg11 | Arch::Vgg16 | Arch::Vgg19 => "classifier.",
            Arch::MobilenetV2 => "linear.",
            Arch::Dncnn => "dncnn.47.",
        }
    }
}

/// Builds the model of `spec` on the variables of `params`: a fresh store gets seeded weights,
/// a store that already holds this model (built before, or about to be loaded) is reused as is.
/// A store holding a different model is refused (a store holds one model; save/load act on all
/// of it).
pub fn build(spec: &ModelSpec, params: &ParamStore) -> Result<Box<dyn Model>> {
    spec.validate()?;
    if params.is_empty() {
        let built = build_with(spec, params.var_builder());
        if built.is_err() {
            params.clear();
        }
        return built;
    }
    let (vb, used) = params.existing_var_builder();
    let model = build_with(spec, vb).map_err(|e| {
        Error::Config(format!(
            "cannot build `{}` on a parameter store that holds another model ({e})",
            spec.arch.id()
        ))
    })?;
    let used = used.lock().unwrap_or_else(PoisonError::into_inner);
    let unused: Vec<String> = params
        .names()
        .into_iter()
        .filter(|n| !used.contains(n))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .take(4)
        .collect();
    if !unused.is_empty() {
        return Err(Error::Config(format!(
            "cannot build `{}` on a parameter store that holds another model (it does not use {unused:?})",
            spec.arch.id()
        )));
    }
    Ok(model)
}

/// Builds the model of `spec` from any `VarBuilder` (plain tensors, a memory-mapped file, a
/// renaming builder). Variables are whatever the builder returns; batch-norm running statistics
/// update in place only when the builder hands out variables (as a [`ParamStore`]'s does).
pub fn build_with(spec: &ModelSpec, vb: VarBuilder<'_>) -> Result<Box<dyn Model>> {
    spec.validate()?;
    let spec = spec.clone();
    let model: Box<dyn Model> = match spec.arch {
        Arch::Resnet20 | Arch::Resnet56 => Box::new(resnet::ResNet::new(spec, vb)?),
        Arch::Vgg11 | Arch::Vgg16 | Arch::Vgg19 => Box::new(vgg::Vgg::new(spec, vb)?),
        Arch::VggSmall => Box::new(vgg::VggSmall::new(spec, vb)?),
        Arch::MobilenetV2 => Box::new(mobilenet_v2::MobileNetV2::new(spec, vb)?),
        Arch::Dncnn => Box::new(dncnn::DnCnn::new(spec, vb)?),
    };
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_parse_and_serde() {
        for &arch in Arch::all() {
            assert_eq!(Arch::parse(arch.id()).ok(), Some(arch));
            let json = serde_json::to_string(&arch).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", arch.id()));
            assert_eq!(arch.to_string(), arch.id());
        }
        assert_eq!(Arch::parse("ResNet20").ok(), Some(Arch::Resnet20));
        assert_eq!(Arch::parse("mobilenet_v2").ok(), Some(Arch::MobilenetV2));
    }

    #[test]
    fn unknown_ids_suggest_close_ones() {
        match Arch::parse("resnet21") {
            Err(Error::UnknownModel {
                suggestions,
                available,
                ..
            }) => {
                assert!(
                    suggestions.contains(&"resnet20".to_string()),
                    "{suggestions:?}"
                );
                assert_eq!(available.len(), Arch::all().len());
            }
            other => panic!("expected UnknownModel, got {other:?}"),
        }
    }

    #[test]
    fn head_prefix_names_exactly_the_final_layer() -> Result<()> {
        let dev = candle_core::Device::Cpu;
        for &arch in Arch::all() {
            let spec =
                ModelSpec::new(arch, 10).with_width(if arch.has_width() { 0.125 } else { 1.0 });
            let params = ParamStore::new(0, &dev);
            build(&spec, &params)?;
            let prefix = spec.head_prefix();
            let head: Vec<String> = params
                .names()
                .into_iter()
                .filter(|n| n.starts_with(prefix))
                .collect();
            let expected: Vec<String> = if arch == Arch::Dncnn {
                vec![format!("{prefix}weight")]
            } else {
                vec![format!("{prefix}bias"), format!("{prefix}weight")]
            };
            assert_eq!(head, expected, "{arch}");
            if arch.is_classifier() {
                let w = params
                    .get(&format!("{prefix}weight"))
                    .map(|v| v.dims().to_vec());
                assert_eq!(w.and_then(|d| d.first().copied()), Some(10), "{arch}");
            }
        }
        Ok(())
    }

    #[test]
    fn specs_are_validated() {
        assert!(ModelSpec::new(Arch::Resnet20, 10).validate().is_ok());
        assert!(ModelSpec::new(Arch::Resnet20, 0).validate().is_err());
        assert!(ModelSpec::new(Arch::Dncnn, 0).validate().is_ok());
        assert!(
            ModelSpec::new(Arch::Resnet20, 10)
                .with_width(2.0)
                .validate()
                .is_err()
        );
        assert!(
            ModelSpec::new(Arch::Vgg11, 10)
                .with_width(0.5)
                .validate()
                .is_ok()
        );
        assert!(
            ModelSpec::new(Arch::Vgg11, 10)
                .with_width(f64::NAN)
                .validate()
                .is_err()
        );
        assert!(
            ModelSpec::new(Arch::Vgg11, 10)
                .with_in_channels(0)
                .validate()
                .is_err()
        );
        assert_eq!(
            ModelSpec::new(Arch::Vgg11, 10).with_width(0.25).scaled(64),
            16
        );
        assert_eq!(
            ModelSpec::new(Arch::Vgg11, 10).with_width(0.001).scaled(64),
            1
        );
    }
}
