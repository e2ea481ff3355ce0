//! The model zoo: CIFAR-style classifiers and the DnCNN denoiser, built through a `VarBuilder` so
//! that every parameter has a stable PyTorch state-dict name that defences and attacks address.

use std::ops::Range;

use candle_core::{Tensor, bail};

/// A network of the zoo: a sequence of [stages](StageInfo) run one after the other, with
/// optional exit heads (small classifiers on a stage's output). Inputs are normalised
/// N x C x H x W f32 tensors; classifiers return logits N x classes, DnCNN the denoised image.
///
/// An architecture implements [`Model::run_stage`]; whole passes, hooks, range execution (split
/// execution, a party holding some stages) and early exit are built on it once, here.
pub trait Model: Send + Sync {
    /// What was built.
    fn spec(&self) -> &ModelSpec;

    /// The stages, in forward order; the last one returns the model's output.
    fn stages(&self) -> &[StageInfo];

    /// Runs stage `stage` alone on `xs`, the output of stage `stage - 1` (the input image for
    /// stage 0). The pass's stage hook is not called here (see [`Model::forward_range`]); its
    /// layer hook is.
    fn run_stage(&self, stage: usize, xs: &Tensor, pass: &Pass<'_>) -> candle_core::Result<Tensor>;

    /// The stage each exit head reads, in the order of [`ModelSpec::exits`] (empty without
    /// exit heads).
    fn exit_stages(&self) -> &[usize] {
        &[]
    }

    /// Runs exit head `exit` on `xs`, the output of its stage: that exit's logits.
    fn run_exit(&self, exit: usize, xs: &Tensor, pass: &Pass<'_>) -> candle_core::Result<Tensor> {
        let _ = (xs, pass);
        bail!("{} has no exit head {exit}", self.spec().arch)
    }

    /// Runs stages `range` on `xs` (the input of stage `range.start`), calling the pass's
    /// stage hook on each output. Running `0..k` then `k..n` on its output gives the whole
    /// forward pass, bit for bit.
    fn forward_range(
        &self,
        range: Range<usize>,
        xs: &Tensor,
        pass: &Pass<'_>,
    ) -> candle_core::Result<Tensor> {
        let n = self.stages().len();
        if range.start > range.end || range.end > n {
            bail!(
                "stages {}..{} out of range: {} has {n} stages",
                range.start,
                range.end,
                self.spec().arch
            )
        }
        let mut ys = xs.clone();
        for stage in range {
            ys = self.run_stage(stage, &ys, pass)?;
            if let Some(hook) = pass.stages {
                ys = hook.on_stage(stage, ys)?;
            }
        }
        Ok(ys)
    }

    /// The whole network; `train` selects batch-norm batch statistics (and updates the running
    /// statistics) instead of the running statistics.
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.forward_range(0..self.stages().len(), xs, &Pass::new(train))
    }

    /// [`Model::forward_t`] with `hook` called on the output of every stage, in order; the
    /// network continues with what the hook returns. With a hook that returns its input
    /// unchanged the result equals `forward_t`'s.
    fn forward_hooked(
        &self,
        xs: &Tensor,
        train: bool,
        hook: &dyn StageHook,
    ) -> candle_core::Result<Tensor> {
        let pass = Pass::new(train).with_stage_hook(hook);
        self.forward_range(0..self.stages().len(), xs, &pass)
    }

    /// The logits of every exit head, in order, then the final output: one pass through the
    /// network (training multi-exit models with weighted exit losses).
    fn forward_exits(&self, xs: &Tensor, pass: &Pass<'_>) -> candle_core::Result<Vec<Tensor>> {
        exit::forward_exits(self, xs, pass)
    }

    /// Early-exit inference: each input stops at the first exit head whose largest softmax
    /// probability is at least `threshold` (the final output otherwise), and the stages after
    /// that are not computed for it.
    fn forward_early_exit(
        &self,
        xs: &Tensor,
        threshold: f32,
    ) -> candle_core::Result<exit::EarlyExit> {
        exit::forward_early_exit(self, xs, threshold)
    }

    /// The stage addressed by `name`: the stage ending the group `name` if there is one
    /// ([`StageInfo::group`]), else the stage called `name`.
    fn find_stage(&self, name: &str) -> Option<usize> {
        let stages = self.stages();
        stages
            .iter()
            .position(|s| s.group.as_deref() == Some(name))
            .or_else(|| stages.iter().position(|s| s.name == name))
    }

    /// The name a stage is addressed by: its group's if it ends one, else its own.
    fn stage_address(&self, stage: usize) -> Option<String> {
        let info = self.stages().get(stage)?;
        Some(info.group.clone().unwrap_or_else(|| info.name.clone()))
    }

    /// The indices of the stages that end a group ([`StageInfo::group`]), with the group names.
    fn groups(&self) -> Vec<(usize, String)> {
        self.stages()
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.group.clone().map(|g| (i, g)))
            .collect()
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
    /// Exit heads, each a small classifier on one stage's output (multi-exit networks).
    /// Part of the spec so that whoever holds the model, a thief included, holds its exits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exits: Vec<ExitSpec>,
    /// The numeric precision of the parameters.
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

/// The numeric precision of a model's parameters. Only f32 exists today; quantized models
/// (int8 weights with scales) are the next.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// 32-bit floats.
    #[default]
    F32,
}

impl Precision {
    /// Whether this is f32 (the default, left out of serialized specs so that they read as
    /// they did before precisions existed).
    pub fn is_f32(&self) -> bool {
        matches!(self, Precision::F32)
    }
}

pub mod activations;
pub mod dncnn;
pub mod exit;
pub mod mobilenet_v2;
mod network;
pub mod partial;
pub mod resnet;
mod stage;
mod unit;
pub mod vgg;

pub use exit::{EarlyExit, ExitSpec};
pub use network::Network;
pub use stage::{ChainHook, NoHook, Pass, StageHook, StageInfo};
pub use unit::{Act, ConvBn, Dense, LayerHook};

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
            exits: Vec::new(),
            precision: Precision::F32,
        }
    }

    /// The same with an exit head after each of the stages named in `after`, in forward order.
    pub fn with_exits<S: Into<String>>(self, after: impl IntoIterator<Item = S>) -> Self {
        Self {
            exits: after.into_iter().map(ExitSpec::after).collect(),
            ..self
        }
    }

    /// Name prefix (with its trailing dot) of exit head `exit`'s parameters.
    pub fn exit_prefix(exit: usize) -> String {
        format!("exits.{exit}.")
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
        if !self.exits.is_empty() && !self.arch.is_classifier() {
            return Err(Error::Config(format!(
                "`{id}` is not a classifier and takes no exit heads"
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
        Error::Mismatch(format!(
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
        return Err(Error::Mismatch(format!(
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
    Ok(Box::new(build_network(spec, vb)?))
}

/// [`build_with`], as the concrete type.
pub(crate) fn build_network(spec: &ModelSpec, vb: VarBuilder<'_>) -> Result<Network> {
    spec.validate()?;
    let body: Box<dyn network::Architecture> = match spec.arch {
        Arch::Resnet20 | Arch::Resnet56 => Box::new(resnet::ResNet::new(spec, vb.clone())?),
        Arch::Vgg11 | Arch::Vgg16 | Arch::Vgg19 => Box::new(vgg::Vgg::new(spec, vb.clone())?),
        Arch::VggSmall => Box::new(vgg::VggSmall::new(spec, vb.clone())?),
        Arch::MobilenetV2 => Box::new(mobilenet_v2::MobileNetV2::new(spec, vb.clone())?),
        Arch::Dncnn => Box::new(dncnn::DnCnn::new(spec, vb.clone())?),
    };
    Ok(Network::new(spec.clone(), body, &vb)?)
}

/// Global average pooling of a map (N x C x H x W -> N x C); a vector passes as it is.
pub(crate) fn global_avg_pool_if_map(xs: &Tensor) -> candle_core::Result<Tensor> {
    if xs.rank() == 4 {
        crate::nn::global_avg_pool2d(xs)
    } else {
        Ok(xs.clone())
    }
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
        // (arch, stages, groups): the groups are the lock points EdgePro passwords name.
        let expected: [(Arch, usize, &[&str]); 5] = [
            (
                Arch::Resnet20,
                12,
                &["stem", "layer1", "layer2", "layer3", "pool"],
            ),
            (
                Arch::Vgg11,
                10,
                &["block1", "block2", "block3", "block4", "block5", "pool"],
            ),
            (Arch::VggSmall, 6, &["block1", "block2", "block3"]),
            (
                Arch::MobilenetV2,
                21,
                &["stem", "stage1", "stage2", "stage3", "stage4", "pool"],
            ),
            (Arch::Dncnn, 1, &[]),
        ];
        for (arch, count, groups) in expected {
            let spec =
                ModelSpec::new(arch, 10).with_width(if arch.has_width() { 0.25 } else { 1.0 });
            let params = ParamStore::new(3, &dev);
            let model = build(&spec, &params)?;
            let stages = model.stages().to_vec();
            assert_eq!(stages.len(), count, "{arch}");
            let got: Vec<String> = model.groups().into_iter().map(|(_, g)| g).collect();
            assert_eq!(got, groups, "{arch}");
            let xs = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &dev)?;
            let plain = model.forward_t(&xs, false)?;
            let same = model.forward_hooked(&xs, false, &NoHook)?;
            let diff = (plain.clone() - same)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert_eq!(diff, 0.0, "{arch}: a no-op hook changes nothing");
            // Zero the stage before the output (the logits stage itself for DnCNN).
            let zero = stages.len().saturating_sub(2);
            let rec = Recorder {
                seen: Default::default(),
                zero: Some(zero),
            };
            let zeroed = model.forward_hooked(&xs, false, &rec)?;
            let seen = rec.seen.lock().map(|s| s.clone()).unwrap_or_default();
            assert_eq!(seen.len(), stages.len(), "{arch}");
            for (i, ((stage, dims), info)) in seen.iter().zip(&stages).enumerate() {
                assert_eq!(*stage, i, "{arch}");
                assert_eq!(dims[1..], info.output_dims(32, 32), "{arch} {}", info.name);
                assert_eq!(dims[0], 2, "{arch}");
            }
            let moved = (plain - zeroed)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(
                moved > 0.0,
                "{arch}: zeroing a late stage changes the output"
            );
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
