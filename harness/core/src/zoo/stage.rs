//! Stages: the addressable pieces of a zoo model. A model is a sequence of stages (the stem,
//! every residual or convolution block, the pooling, the classifier); stage `i` reads the output
//! of stage `i - 1` (stage 0 reads the image) and the last stage returns the logits. Protections
//! address stages to act on activations (neuron locks, exit heads), to run part of a model
//! (split execution over processes, early exit) and to say which parameters a party holds.

use candle_core::Tensor;

use super::LayerHook;

/// What one stage outputs and owns.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StageInfo {
    /// Stable name within the architecture: the PyTorch module path of the block it runs
    /// (`layer2.1`, `features.7`, `layers.12`), or `stem`, `pool`, the classifier's name.
    pub name: String,
    /// Channels of the output (N x C x H x W maps) or units (N x C vectors, e.g. the pooled
    /// features or the logits).
    pub channels: usize,
    /// For map outputs, how many times smaller than the input image the map is (1, 2, 4, ...);
    /// `None` for vector outputs.
    pub stride: Option<usize>,
    /// Every parameter the stage owns (its layers' weights, batch-norm state and the exit heads
    /// attached to it), by store name, sorted: what a party running this stage alone must hold.
    pub params: Vec<String>,
    /// When the stage ends a group of stages of one resolution (ResNet's `layer1`, VGG's
    /// `block3`, MobileNetV2's `stage2`) or is the stem or the pooling, the group's name. Groups
    /// are the coarse points the EdgePro reference code locks, one per resolution.
    pub group: Option<String>,
}

impl StageInfo {
    /// A stage whose output is a map `stride` times smaller than the input.
    pub fn map(name: impl Into<String>, channels: usize, stride: usize) -> Self {
        Self {
            name: name.into(),
            channels,
            stride: Some(stride),
            params: Vec::new(),
            group: None,
        }
    }

    /// A stage whose output is a vector of `units`.
    pub fn vector(name: impl Into<String>, units: usize) -> Self {
        Self {
            name: name.into(),
            channels: units,
            stride: None,
            params: Vec::new(),
            group: None,
        }
    }

    /// The same, ending the group `group`.
    pub fn ends(self, group: impl Into<String>) -> Self {
        Self {
            group: Some(group.into()),
            ..self
        }
    }

    /// The same, owning `params`.
    pub fn owning(mut self, mut params: Vec<String>) -> Self {
        params.sort();
        self.params = params;
        self
    }

    /// The output's dimensions for one `height` x `width` input image, without the batch
    /// dimension (C x H x W for maps, C for vectors).
    pub fn output_dims(&self, height: usize, width: usize) -> Vec<usize> {
        match self.stride {
            Some(s) => vec![self.channels, height.div_ceil(s), width.div_ceil(s)],
            None => vec![self.channels],
        }
    }
}

/// Sees the output of each stage of a forward pass and returns the tensor the network continues
/// with: a mask that locks neurons, a recorder of activations. Implementations needing to record
/// use interior mutability.
pub trait StageHook {
    /// Called with the index of the stage in [`super::Model::stages`] and its output (N x C x H
    /// x W for map stages, N x C for vector stages).
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

/// Two hooks, one after the other: a wrapper model's own hook (a lock mask) followed by the
/// caller's (a recorder sees what the wrapped model computes).
pub struct ChainHook<'a> {
    /// Applied first.
    pub first: &'a dyn StageHook,
    /// Applied to what `first` returned.
    pub then: &'a dyn StageHook,
}

impl StageHook for ChainHook<'_> {
    fn on_stage(&self, stage: usize, xs: Tensor) -> candle_core::Result<Tensor> {
        self.then.on_stage(stage, self.first.on_stage(stage, xs)?)
    }
}

/// How one forward pass runs: training or evaluation mode, and the hooks it calls.
#[derive(Clone, Copy, Default)]
pub struct Pass<'a> {
    /// Batch-norm batch statistics (and running-statistics updates) instead of the running
    /// statistics.
    pub train: bool,
    /// Called on the output of every stage.
    pub stages: Option<&'a dyn StageHook>,
    /// Runs every convolution and linear layer in place of the plain computation
    /// (quantization).
    pub layers: Option<&'a dyn LayerHook>,
}

impl<'a> Pass<'a> {
    /// A plain pass in training (`true`) or evaluation mode.
    pub fn new(train: bool) -> Self {
        Self {
            train,
            stages: None,
            layers: None,
        }
    }

    /// The same with `hook` on the stage outputs.
    pub fn with_stage_hook(self, hook: &'a dyn StageHook) -> Self {
        Self {
            stages: Some(hook),
            ..self
        }
    }

    /// The same with `hook` running the layers.
    pub fn with_layer_hook(self, hook: &'a dyn LayerHook) -> Self {
        Self {
            layers: Some(hook),
            ..self
        }
    }
}
