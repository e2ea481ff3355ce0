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

    /// The points of the forward pass a [`StageHook`] sees, in forward order (see each
    /// architecture's module docs). Protections that act on intermediate activations (neuron
    /// locking, multi-exit heads) address them by index or name. Empty for models without
    /// stages (DnCNN).
    fn stages(&self) -> Vec<StageInfo> {
        Vec::new()
    }

    /// [`Model::forward_t`] with `hook` called on the output of every stage of
    /// [`Model::stages`], in order; the network continues with what the hook returns. With a
    /// hook that returns its input unchanged the result equals `forward_t`'s. Models without
    /// stages run `forward_t` and never call the hook.
    fn forward_hooked(
        &self,
        xs: &Tensor,
        train: bool,
        hook: &dyn StageHook,
    ) -> candle_core::Result<Tensor> {
        let _ = hook;
        self.forward_t(xs, train)
    }
}

/// One stage of a model: where a [`StageHook`] sees the activations.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StageInfo {
    /// Stable name within the architecture (`layer2`, `block3`, `pool`, ...).
    pub name: String,
    /// Channels (conv stages, N x C x H x W outputs) or units (N x C outputs, e.g. the pooled
    /// features that feed the classifier).
    pub channels: usize,
}

impl StageInfo {
    fn new(name: impl Into<String>, channels: usize) -> Self {
        Self {
            name: name.into(),
            channels,
        }
    }
}

/// Sees the output of each stage of a forward pass and returns the tensor the network continues
/// with: a mask that locks neurons, a recorder of activations, an early-exit head's tap.
/// Implementations needing to record use interior mutability.
pub trait StageHook {
    /// Called with the index of the stage in [`Model::stages`] and its output (N x C x H x W for
    /// conv stages, N x C for pooled units).
    fn on_stage(&self, stage: usize, xs: Tensor) -> candle_core::Result<Tensor>;
}

/// A hook that changes nothing (for callers that need one).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHook;

impl StageHook for NoHook {
    fn on_stage(&self, _stage: usize, xs: Tensor) -> candle_core::Result<Tensor> {
        Ok(xs)
    }
}

/// Calls `hook` at `stage` if there is one: the zoo models run one forward body for
/// `forward_t` (no hook: a branch per stage, nothing else) and `forward_hooked`.
#[inline]
pub(crate) fn at_stage(
    hook: Option<&dyn StageHook>,
    stage: usize,
    xs: Tensor,
) -> candle_core::Result<Tensor> {
    match hook {
        Some(h) => h.on_stage(stage, xs),
        None => Ok(xs),
    }
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

    /// Records the stages a forward pass reports, and zeroes one of them when asked.
    struct Recorder {
        seen: std::sync::Mutex<Vec<(usize, Vec<usize>)>>,
        zero: Option<usize>,
    }

    impl StageHook for Recorder {
        fn on_stage(&self, stage: usize, xs: Tensor) -> candle_core::Result<Tensor> {
            if let Ok(mut seen) = self.seen.lock() {
                seen.push((stage, xs.dims().to_vec()));
            }
            if self.zero == Some(stage) {
                xs.zeros_like()
            } else {
                Ok(xs)
            }
        }
    }

    #[test]
    fn stage_hooks_see_every_stage_in_order_and_change_the_output() -> Result<()> {
        let dev = candle_core::Device::Cpu;
        let expected: [(Arch, &[&str]); 4] = [
            (
                Arch::Resnet20,
                &["stem", "layer1", "layer2", "layer3", "pool"],
            ),
            (
                Arch::Vgg11,
                &["block1", "block2", "block3", "block4", "block5", "pool"],
            ),
            (Arch::VggSmall, &["block1", "block2", "block3"]),
            (
                Arch::MobilenetV2,
                &["stem", "stage1", "stage2", "stage3", "stage4", "pool"],
            ),
        ];
        for (arch, names) in expected {
            let spec =
                ModelSpec::new(arch, 10).with_width(if arch.has_width() { 0.25 } else { 1.0 });
            let params = ParamStore::new(3, &dev);
            let model = build(&spec, &params)?;
            let stages = model.stages();
            let got: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
            assert_eq!(got, names, "{arch}");
            let xs = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &dev)?;
            let plain = model.forward_t(&xs, false)?;
            let same = model.forward_hooked(&xs, false, &NoHook)?;
            let diff = (plain.clone() - same)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert_eq!(diff, 0.0, "{arch}: a no-op hook changes nothing");
            let rec = Recorder {
                seen: Default::default(),
                zero: Some(stages.len() - 1),
            };
            let zeroed = model.forward_hooked(&xs, false, &rec)?;
            let seen = rec.seen.lock().map(|s| s.clone()).unwrap_or_default();
            assert_eq!(seen.len(), stages.len(), "{arch}");
            for (i, ((stage, dims), info)) in seen.iter().zip(&stages).enumerate() {
                assert_eq!(*stage, i, "{arch}");
                assert_eq!(dims[0], 2, "{arch}");
                assert_eq!(dims[1], info.channels, "{arch} {}", info.name);
            }
            let moved = (plain - zeroed)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(
                moved > 0.0,
                "{arch}: zeroing the last stage changes the logits"
            );
        }
        assert!(
            build(&ModelSpec::new(Arch::Dncnn, 0), &ParamStore::new(0, &dev))?
                .stages()
                .is_empty()
        );
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
