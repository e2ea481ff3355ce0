//! The moving minimum / maximum observer and the module that observes and fake-quantizes,
//! PyTorch's `FusedMovingAvgObsFakeQuantize` with a `MovingAverageMinMaxObserver` (per tensor)
//! or a `MovingAveragePerChannelMinMaxObserver` (per channel along axis 0).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{Result, Tensor};

use super::{AVERAGING_CONSTANT, QParams, Scheme, choose, fake_quantize};

/// Running minimum and maximum, per tensor or per slice along axis 0. The first observation
/// sets them; each later one moves them by [`AVERAGING_CONSTANT`] of the way to the batch's, in
/// f32 as PyTorch does: `min + c * (batch_min - min)`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MinMax {
    /// Running minimum per channel (one value per tensor); empty before the first observation.
    pub min: Vec<f32>,
    /// Running maximum, likewise.
    pub max: Vec<f32>,
}

impl MinMax {
    /// Observes `x`, per slice along axis 0 when `per_channel`.
    pub fn observe(&mut self, x: &Tensor, per_channel: bool) -> Result<()> {
        let (lo, hi) = batch_range(x, per_channel)?;
        if self.min.is_empty() || self.min.len() != lo.len() {
            self.min = lo;
            self.max = hi;
            return Ok(());
        }
        for (m, b) in self.min.iter_mut().zip(&lo) {
            *m += AVERAGING_CONSTANT * (b - *m);
        }
        for (m, b) in self.max.iter_mut().zip(&hi) {
            *m += AVERAGING_CONSTANT * (b - *m);
        }
        Ok(())
    }
}

/// The batch's minimum and maximum, per slice along axis 0 or over the whole tensor.
fn batch_range(x: &Tensor, per_channel: bool) -> Result<(Vec<f32>, Vec<f32>)> {
    let rows = if per_channel {
        x.flatten_from(1)?
    } else {
        x.flatten_all()?.unsqueeze(0)?
    };
    let rows = rows.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?;
    let mut lo = Vec::with_capacity(rows.len());
    let mut hi = Vec::with_capacity(rows.len());
    for r in rows {
        let (a, b) = r
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        lo.push(a);
        hi.push(b);
    }
    Ok((lo, hi))
}

/// Observes and fake-quantizes one tensor of a network (a layer's input or its weight), as
/// PyTorch's fused QAT module: while the observer is on, each forward pass updates the running
/// range and the parameters; while fake quantization is on, the output is the input rounded to
/// the grid of the current parameters (the input itself otherwise). Shared by reference across
/// the threads of a forward pass.
#[derive(Debug)]
pub struct FakeQuantizer {
    scheme: Scheme,
    state: Mutex<(MinMax, Vec<QParams>)>,
    observing: AtomicBool,
    quantizing: AtomicBool,
}

impl FakeQuantizer {
    /// A quantizer that has seen nothing (scale 1, zero point 0, as PyTorch's initial buffers),
    /// observer and fake quantization on.
    pub fn new(scheme: Scheme) -> Self {
        Self {
            scheme,
            state: Mutex::new((
                MinMax::default(),
                vec![QParams {
                    scale: 1.0,
                    zero_point: 0,
                }],
            )),
            observing: AtomicBool::new(true),
            quantizing: AtomicBool::new(true),
        }
    }

    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// Turns the observer on or off (off freezes the range and the parameters).
    pub fn set_observing(&self, on: bool) {
        self.observing.store(on, Ordering::SeqCst);
    }

    /// Turns fake quantization on or off.
    pub fn set_quantizing(&self, on: bool) {
        self.quantizing.store(on, Ordering::SeqCst);
    }

    /// The current parameters (one per channel, or one).
    pub fn params(&self) -> Vec<QParams> {
        self.lock().1.clone()
    }

    /// The running range.
    pub fn range(&self) -> MinMax {
        self.lock().0.clone()
    }

    /// Observes `x` (when observing) and returns it fake-quantized (when quantizing).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let params = {
            let mut state = self.lock();
            if self.observing.load(Ordering::SeqCst) {
                let per_channel = self.scheme.per_channel();
                state.0.observe(x, per_channel)?;
                let (range, symmetric) = (self.scheme.range(), self.scheme.symmetric());
                state.1 = state
                    .0
                    .min
                    .iter()
                    .zip(&state.0.max)
                    .map(|(&lo, &hi)| choose(lo, hi, range, symmetric))
                    .collect();
            }
            state.1.clone()
        };
        if self.quantizing.load(Ordering::SeqCst) {
            fake_quantize(x, &params, self.scheme.range())
        } else {
            Ok(x.clone())
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (MinMax, Vec<QParams>)> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
