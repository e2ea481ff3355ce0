//! int8 tensors: symmetric 8-bit quantisation of weights, bit-compatible with PyTorch's `qint8`.
//!
//! A [`QuantizedTensor`] holds what `torch.quantize_per_channel` / `torch.quantize_per_tensor`
//! hold: the int8 values, one scale and one zero point per channel (or one for the whole tensor)
//! and the channel axis. It exists so that a protection scheme or an attack can store, save and
//! reload a quantised model (the int8 values are what a deployed model ships, and what an
//! attacker who dumps it sees), and so that those files load into PyTorch
//! (`ci/torch/load_int8.py`).
//!
//! The quantisers here are symmetric: zero point 0 and, per channel, `scale = max|w| / 127`, so
//! the largest weight of a channel maps exactly to ±127 and nothing is clipped. (PyTorch's
//! symmetric observers divide by 127.5 instead and may clip the largest weight to -128; 127 is
//! the common "symmetric int8" convention and keeps -128 unused.) A channel whose weights are all
//! zero, or so small that the scale would be below `f32::EPSILON`, gets the scale
//! `f32::EPSILON` (1.19e-7), the floor PyTorch's observers apply (`torch.finfo(float32).eps`),
//! so the scale is never zero and dequantisation never divides by zero.
//!
//! Values are computed exactly as PyTorch's CPU kernels (fbgemm's `Quantize`) do, so the int8
//! values match `torch.quantize_per_channel(w, scale, zero_point, axis, torch.qint8)` bit for bit:
//! `q = clamp(round_half_even(w * (1 / scale)) + zero_point, -128, 127)` in f32, multiplying by
//! the f32 reciprocal of the scale (not dividing by the scale, which rounds differently near
//! ties). Dequantisation is `(q - zero_point) * scale`, exact up to the one rounding of the
//! product, as PyTorch's `dequantize()`. Every value is then within `scale / 2` of the original
//! (up to the rounding of the reciprocal, a relative 6e-8).

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// The int8 range of PyTorch's `qint8`.
const QMIN: i64 = -128;
const QMAX: i64 = 127;

/// The largest magnitude a symmetric quantiser maps to (not 128: nothing is clipped).
const SYMMETRIC_MAX: f32 = 127.0;

/// A tensor stored as 8-bit integers with per-channel (or per-tensor) affine parameters: value
/// `i` dequantises to `(values[i] - zero_point[c]) * scale[c]`, `c` being the index of `i` along
/// `axis` (always 0 for a per-tensor quantised tensor, whose `scale` and `zero_point` hold one
/// value). The fields are public because the layout is PyTorch's and a file format; use
/// [`QuantizedTensor::validate`] on a hand-made one.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedTensor {
    /// The int8 values, row-major in `shape`.
    pub values: Vec<i8>,
    /// The tensor's shape (PyTorch layout, e.g. O x I x kH x kW for a convolution).
    pub shape: Vec<usize>,
    /// One positive scale per channel along `axis`, or one for the whole tensor.
    pub scale: Vec<f32>,
    /// One zero point per channel (in `[-128, 127]`), or one for the whole tensor.
    pub zero_point: Vec<i64>,
    /// The channel axis of a per-channel tensor; `None` for a per-tensor one.
    pub axis: Option<usize>,
}

impl QuantizedTensor {
    /// Why this tensor is inconsistent (value count against shape, scale and zero-point counts
    /// against the channels, axis out of range, a scale that is not a positive finite number, a
    /// zero point outside the int8 range), or `None` if it is valid: what a hand-made tensor or
    /// one read from a file must pass before it is used.
    pub fn validate(&self) -> Option<String> {
        let n: usize = self.shape.iter().product();
        if self.values.len() != n {
            return Some(format!(
                "{} int8 values for shape {:?} ({n} elements)",
                self.values.len(),
                self.shape
            ));
        }
        let channels = match self.axis {
            None => 1,
            Some(a) => match self.shape.get(a) {
                Some(&c) => c,
                None => {
                    return Some(format!(
                        "channel axis {a} out of range for shape {:?}",
                        self.shape
                    ));
                }
            },
        };
        let what = if self.axis.is_some() {
            format!("{channels} channels")
        } else {
            "a per-tensor quantised tensor".to_string()
        };
        if self.scale.len() != channels || self.zero_point.len() != channels {
            return Some(format!(
                "{} scales and {} zero points for {what} (one of each expected per channel)",
                self.scale.len(),
                self.zero_point.len()
            ));
        }
        if let Some((c, s)) = self
            .scale
            .iter()
            .enumerate()
            .find(|(_, s)| !(s.is_finite() && **s > 0.0))
        {
            return Some(format!(
                "scale {s} at channel {c}; scales must be positive finite numbers"
            ));
        }
        if let Some((c, z)) = self
            .zero_point
            .iter()
            .enumerate()
            .find(|(_, z)| !(QMIN..=QMAX).contains(*z))
        {
            return Some(format!(
                "zero point {z} at channel {c}; int8 zero points lie in [{QMIN}, {QMAX}]"
            ));
        }
        None
    }

    /// Number of scales (channels along the axis, or 1 per tensor).
    pub fn channels(&self) -> usize {
        self.scale.len()
    }

    /// The dequantised values as an f32 tensor of `shape` on the CPU, as PyTorch's
    /// `dequantize()`: what a model computes with when it runs the quantised weights in floating
    /// point. An invalid tensor (see [`QuantizedTensor::validate`]) is an [`Error::Config`].
    pub fn dequantize(&self) -> Result<Tensor> {
        if let Some(problem) = self.validate() {
            return Err(Error::Config(format!(
                "cannot dequantise an invalid int8 tensor: {problem}"
            )));
        }
        let inner = self.inner_len();
        let channels = self.channels();
        let values: Vec<f32> = self
            .values
            .iter()
            .enumerate()
            .map(|(i, &q)| {
                let c = (i / inner) % channels;
                // |q - zp| <= 255: exact in f32, so the product is rounded once, as PyTorch's.
                (i64::from(q) - self.zero_point[c]) as f32 * self.scale[c]
            })
            .collect();
        Ok(Tensor::from_vec(
            values,
            self.shape.as_slice(),
            &Device::Cpu,
        )?)
    }

    /// Elements after the channel axis (the stride of one channel step), 1 when per-tensor
    /// (then every index maps to channel 0 through `% 1`).
    fn inner_len(&self) -> usize {
        match self.axis {
            Some(a) => self.shape.iter().skip(a + 1).product(),
            None => 1,
        }
    }
}

/// Quantises `t` symmetrically with one scale per slice along `axis` (per output channel for
/// `axis = 0` on a convolution or linear weight), as the module docs say. A non-finite value or
/// an axis out of range is an [`Error::Config`].
pub fn quantize_per_channel(t: &Tensor, axis: usize) -> Result<QuantizedTensor> {
    quantize(t, Some(axis)).map_err(|problem| Error::Config(format!("cannot quantise: {problem}")))
}

/// Quantises `t` symmetrically with one scale for the whole tensor, as the module docs say. A
/// non-finite value is an [`Error::Config`].
pub fn quantize_per_tensor(t: &Tensor) -> Result<QuantizedTensor> {
    quantize(t, None).map_err(|problem| Error::Config(format!("cannot quantise: {problem}")))
}

/// The symmetric quantiser behind both public ones; the error is a problem description for the
/// caller to wrap with the tensor's name.
pub(crate) fn quantize(
    t: &Tensor,
    axis: Option<usize>,
) -> std::result::Result<QuantizedTensor, String> {
    let shape = t.dims().to_vec();
    if !t.dtype().is_float() {
        return Err(format!(
            "the tensor holds {:?} values; only floating-point tensors are quantised",
            t.dtype()
        ));
    }
    let (channels, inner) = match axis {
        None => (1, 1),
        Some(a) => match shape.get(a) {
            Some(&c) => (c, shape.iter().skip(a + 1).product::<usize>()),
            None => {
                return Err(format!(
                    "channel axis {a} out of range for a tensor of shape {shape:?}"
                ));
            }
        },
    };
    let host = || -> candle_core::Result<Vec<f32>> {
        t.flatten_all()?
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()
    };
    let w = host().map_err(|e| format!("cannot read the tensor ({e})"))?;
    let mut max_abs = vec![0f32; channels];
    for (i, &v) in w.iter().enumerate() {
        if !v.is_finite() {
            return Err(format!(
                "value {v} at index {i} is not finite; a weight must be a finite number"
            ));
        }
        let c = (i / inner) % channels;
        max_abs[c] = max_abs[c].max(v.abs());
    }
    let scale: Vec<f32> = max_abs
        .iter()
        .map(|m| (m / SYMMETRIC_MAX).max(f32::EPSILON))
        .collect();
    let inverse: Vec<f32> = scale.iter().map(|s| 1.0 / s).collect();
    let values = w
        .iter()
        .enumerate()
        .map(|(i, &v)| quantize_value(v, inverse[(i / inner) % channels], 0))
        .collect();
    Ok(QuantizedTensor {
        values,
        shape,
        scale,
        zero_point: vec![0; channels],
        axis,
    })
}

/// One value as fbgemm's `Quantize` (PyTorch's CPU kernel) computes it: multiply by the f32
/// reciprocal of the scale, round half to even, add the zero point, clamp to int8.
fn quantize_value(v: f32, inverse_scale: f32, zero_point: i64) -> i8 {
    let q = (v * inverse_scale).round_ties_even() as i64 + zero_point;
    // In range after the clamp, so the conversion cannot fail.
    i8::try_from(q.clamp(QMIN, QMAX)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_round_to_even_and_values_clamp() {
        // 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> 0, -1.5 -> -2: banker's rounding, as nearbyint.
        let q: Vec<i8> = [0.5f32, 1.5, 2.5, -0.5, -1.5, 300.0, -300.0]
            .iter()
            .map(|&v| quantize_value(v, 1.0, 0))
            .collect();
        assert_eq!(q, vec![0, 2, 2, 0, -2, 127, -128]);
        assert_eq!(quantize_value(1.0, 1.0, 5), 6);
    }

    #[test]
    fn per_tensor_and_zero_channels() -> Result<()> {
        let t = Tensor::new(&[[0.0f32, 0.0], [1.27, -0.635]], &Device::Cpu)?;
        let q = quantize_per_channel(&t, 0)?;
        assert_eq!(
            q.scale[0],
            f32::EPSILON,
            "an all-zero channel gets the eps scale"
        );
        assert_eq!(q.values[..2], [0, 0]);
        assert_eq!(q.values[2], 127);
        let p = quantize_per_tensor(&t)?;
        assert_eq!(
            (p.axis, p.scale.len(), p.zero_point.clone()),
            (None, 1, vec![0])
        );
        assert_eq!(p.dequantize()?.dims(), [2, 2]);
        assert!(quantize_per_channel(&t, 2).is_err());
        let nan = Tensor::new(&[1.0f32, f32::NAN], &Device::Cpu)?;
        assert!(quantize_per_tensor(&nan).is_err());
        Ok(())
    }

    #[test]
    fn validate_names_the_inconsistency() {
        let ok = QuantizedTensor {
            values: vec![1, 2, 3, 4],
            shape: vec![2, 2],
            scale: vec![0.5, 0.25],
            zero_point: vec![0, 1],
            axis: Some(0),
        };
        assert_eq!(ok.validate(), None);
        let mut bad = ok.clone();
        bad.scale[1] = 0.0;
        assert!(bad.validate().is_some_and(|p| p.contains("scale 0")));
        let mut bad = ok.clone();
        bad.zero_point[0] = 200;
        assert!(bad.validate().is_some_and(|p| p.contains("zero point 200")));
        let mut bad = ok.clone();
        bad.axis = Some(2);
        assert!(bad.validate().is_some_and(|p| p.contains("axis 2")));
        let mut bad = ok;
        bad.values.pop();
        assert!(bad.validate().is_some_and(|p| p.contains("3 int8 values")));
        assert!(bad.dequantize().is_err());
    }
}
