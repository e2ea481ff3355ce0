//! ReLU as one pass forward and one pass backward (candle's backward builds a mask tensor,
//! converts it and multiplies: three passes and two temporaries).

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_slice, tensor, with_f32};

/// Elements per parallel task: large enough to amortise rayon, small enough to split a
/// CIFAR activation over both cores.
const CHUNK: usize = 1 << 15;

struct Relu;

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "protbench-relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l)?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(y, x)| {
                for (o, v) in y.iter_mut().zip(x) {
                    *o = v.max(0.0);
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        // Gradient 1 at exactly 0, as candle's own relu (the stock path), so that both paths
        // train identically.
        let dx = with_f32(x, |xs| {
            with_f32(dy, |g| {
                let mut dx = vec![0f32; xs.len()];
                dx.par_chunks_mut(CHUNK)
                    .zip(xs.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
                    .for_each(|(dx, (xs, g))| {
                        for ((o, v), g) in dx.iter_mut().zip(xs).zip(g) {
                            *o = if *v >= 0.0 { *g } else { 0.0 };
                        }
                    });
                Ok(dx)
            })
        })?;
        Ok(Some(tensor(dx, x.dims())?))
    }
}

/// `max(x, 0)` on the fast CPU kernels (f32 CPU tensors), gradient 1 at 0 as candle's.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Relu)
}
