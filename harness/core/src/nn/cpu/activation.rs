//! ReLU, and the residual add fused with the ReLU that follows it, as one pass forward and one
//! pass backward each (candle's ReLU backward builds a mask tensor, converts it and multiplies:
//! three passes and two temporaries; its add runs on one thread).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, bail};

use super::elementwise::{map1, map2, map3};
use super::{f32_slice, tensor, with_f32};

/// The ReLU derivative of candle's own `relu` (the stock path): 1 at exactly 0, so that both
/// paths train identically.
#[inline(always)]
fn relu_grad(pre: f32, g: f32) -> f32 {
    if pre >= 0.0 { g } else { 0.0 }
}

struct Relu;

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "protbench-relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = map1(f32_slice(s, l)?, |v| v.max(0.0));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let dx = with_f32(x, |xs| with_f32(dy, |g| Ok(map2(xs, g, relu_grad))))?;
        Ok(Some(tensor(dx, x.dims())?))
    }
}

/// `max(x, 0)` on the fast CPU kernels (f32 CPU tensors), gradient 1 at 0 as candle's.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Relu)
}

struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "protbench-add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            bail!(
                "add_relu: shapes {:?} and {:?} differ",
                l1.dims(),
                l2.dims()
            )
        }
        let y = map2(f32_slice(s1, l1)?, f32_slice(s2, l2)?, |a, b| {
            (a + b).max(0.0)
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // The pre-activation is recomputed (the same f32 sum as the forward) rather than kept:
        // the operands are alive anyway, a kept sum would be one more activation per block.
        let d = with_f32(a, |a| {
            with_f32(b, |b| {
                with_f32(dy, |g| Ok(map3(a, b, g, |a, b, g| relu_grad(a + b, g))))
            })
        })?;
        let d = tensor(d, a.dims())?;
        // Both operands get the same gradient; candle tensors are immutable, so one is shared.
        Ok((Some(d.clone()), Some(d)))
    }
}

/// `max(a + b, 0)` in one pass (a residual block's output), gradient as `relu(a + b)` on the
/// stock path. Both must be f32 CPU tensors of one shape.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)
}
