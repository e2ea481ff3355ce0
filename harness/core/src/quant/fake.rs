//! The fake-quantization op: values rounded to an integer grid and back, with the
//! straight-through gradient (passed where the value fell inside the range, zero where it was
//! clamped), as ATen's `fake_quantize_per_tensor_affine_cachemask` and
//! `fake_quantize_per_channel_affine_cachemask` compute it on the CPU:
//! `q = zp + round_half_even(x * (1 / scale))` in f32, `y = (clamp(q, qmin, qmax) - zp) * scale`.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, bail};

use super::{QParams, QRange};

/// Fake-quantizes `x` with one set of parameters (`params.len() == 1`) or one per slice along
/// axis 0 (`params.len() == x.dim(0)`).
pub fn fake_quantize(x: &Tensor, params: &[QParams], range: QRange) -> Result<Tensor> {
    let op = FakeQuant {
        grid: Grid::new(params, range),
    };
    x.contiguous()?.apply_op1(op)
}

/// Parameters in the form the kernels use.
#[derive(Debug, Clone)]
struct Grid {
    inv_scale: Vec<f32>,
    scale: Vec<f32>,
    zero_point: Vec<f32>,
    range: QRange,
}

impl Grid {
    fn new(params: &[QParams], range: QRange) -> Self {
        Self {
            inv_scale: params.iter().map(|p| 1.0 / p.scale).collect(),
            scale: params.iter().map(|p| p.scale).collect(),
            zero_point: params.iter().map(|p| p.zero_point as f32).collect(),
            range,
        }
    }

    /// The integer of `x` in channel `c` before clamping.
    #[inline]
    fn level(&self, x: f32, c: usize) -> i64 {
        (self.zero_point[c] + (x * self.inv_scale[c]).round_ties_even()) as i64
    }

    /// Elements per channel of a contiguous tensor of `elements` values, checking the channel
    /// count against the parameters.
    fn inner(&self, dims: &[usize], elements: usize) -> Result<usize> {
        let channels = self.scale.len();
        if channels == 1 {
            return Ok(elements);
        }
        match dims.first() {
            Some(&c) if c == channels && c > 0 => Ok(elements / c),
            _ => bail!(
                "fake quantization: {channels} per-channel parameters for a tensor of shape \
                 {dims:?} (axis 0 must have that many slices)"
            ),
        }
    }

    fn channel(&self, i: usize, inner: usize) -> usize {
        if self.scale.len() == 1 { 0 } else { i / inner }
    }
}

struct FakeQuant {
    grid: Grid,
}

impl CustomOp1 for FakeQuant {
    fn name(&self) -> &'static str {
        "fake-quantize"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let xs = crate::nn::cpu::f32_slice(storage, layout)?;
        let g = &self.grid;
        let inner = g.inner(layout.dims(), xs.len())?;
        let (lo, hi) = (i64::from(g.range.min), i64::from(g.range.max));
        let ys = xs
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let c = g.channel(i, inner);
                let q = g.level(x, c).clamp(lo, hi);
                (q as f32 - g.zero_point[c]) * g.scale[c]
            })
            .collect();
        Ok((CpuStorage::F32(ys), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let mask = StraightThrough {
            grid: self.grid.clone(),
        };
        Ok(Some(
            arg.contiguous()?
                .apply_op2_no_bwd(&grad_res.contiguous()?, &mask)?,
        ))
    }
}

/// The gradient of [`FakeQuant`]: the upstream gradient where the input's integer was inside the
/// range, zero elsewhere.
struct StraightThrough {
    grid: Grid,
}

impl CustomOp2 for StraightThrough {
    fn name(&self) -> &'static str {
        "fake-quantize-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let xs = crate::nn::cpu::f32_slice(s1, l1)?;
        let gs = crate::nn::cpu::f32_slice(s2, l2)?;
        if xs.len() != gs.len() {
            bail!(
                "fake quantization backward: {} inputs, {} gradients",
                xs.len(),
                gs.len()
            );
        }
        let g = &self.grid;
        let inner = g.inner(l1.dims(), xs.len())?;
        let (lo, hi) = (i64::from(g.range.min), i64::from(g.range.max));
        let out = xs
            .iter()
            .zip(gs)
            .enumerate()
            .map(|(i, (&x, &d))| {
                let q = g.level(x, g.channel(i, inner));
                // PyTorch multiplies by the 0/1 mask, so a negative gradient becomes -0.
                if (lo..=hi).contains(&q) { d } else { d * 0.0 }
            })
            .collect();
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}
