//! Int8 fake quantization for quantization-aware training, as PyTorch's x86 recipe does it
//! (`torch.ao.quantization.get_default_qat_qconfig("x86")`), bit for bit:
//!
//! - activations: per tensor, affine, unsigned, range 0..127 (PyTorch's `reduce_range`, which
//!   keeps AVX2's byte multiply-add `vpmaddubsw` from saturating its 16-bit sums), observed with
//!   a moving minimum / maximum ([`Scheme::Activation`]);
//! - weights: per output channel (axis 0), symmetric, signed, range -128..127, observed the same
//!   way per channel ([`Scheme::Weight`]).
//!
//! [`FakeQuantizer`] is PyTorch's `FusedMovingAvgObsFakeQuantize`: each forward pass (while its
//! observer is on) moves the running range by 0.01 of the way to the batch's range, recomputes
//! the quantization parameters ([`qparams::choose`], the fused op's choice), and rounds the
//! input to the grid, `(clamp(zp + round_half_even(x * (1 / scale)), qmin, qmax) - zp) * scale`
//! ([`fake::fake_quantize`]); the gradient passes straight through where the value was inside the
//! range and is zero where it was clamped. Checked against PyTorch's modules in
//! `harness/core/tests/quant.rs` on fixtures made by `ci/torch/make_quant_fixtures.py`.
//!
//! The kernels run on the CPU; other devices get an error naming the op.

pub mod dot;
pub mod fake;
pub mod int8;
pub mod int8_file;
pub mod int8_layer;
mod lanes;
pub mod observer;
pub mod qat;
pub mod qparams;
pub mod training;

pub use fake::fake_quantize;
pub use int8::Int8Model;
pub use int8_layer::{Geometry, InputLayout, Int8Layer};
pub use observer::{FakeQuantizer, MinMax};
pub use qat::{LayerQuantizers, Qat};
pub use qparams::{QParams, QRange, choose};
pub use training::{
    Divergence, FakeQuantModel, FreezeSchedule, QatObjective, mean_kl, quantization_aware_training,
};

/// How a tensor is quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Per tensor, affine, 0..127 (quint8 with reduced range): layer inputs.
    Activation,
    /// Per channel along axis 0, symmetric, -128..127 (qint8): convolution and linear weights.
    Weight,
}

impl Scheme {
    /// The integer range.
    pub fn range(self) -> QRange {
        match self {
            Scheme::Activation => QRange { min: 0, max: 127 },
            Scheme::Weight => QRange {
                min: -128,
                max: 127,
            },
        }
    }

    /// Whether the grid is symmetric around zero.
    pub fn symmetric(self) -> bool {
        self == Scheme::Weight
    }

    /// Whether each slice along axis 0 has its own parameters.
    pub fn per_channel(self) -> bool {
        self == Scheme::Weight
    }
}

/// PyTorch's averaging constant of the moving min / max observers.
pub const AVERAGING_CONSTANT: f32 = 0.01;
