//! The matrix product of a linear layer, `y = x W^T` for `x` of `n x in` and `W` of `out x in`,
//! forward and backward through [`super::gemm`], so that under fixed numerics classifier heads
//! give the same bits everywhere like the convolutions (candle's own matmul calls the `gemm`
//! crate, whose order of sums depends on the CPU).

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, bail};

use super::gemm::{Mat, sgemm};
use super::{f32_slice, tensor, threads, with_f32};

struct Linear;

/// `(n, in, out)` of an operand pair, or why they do not make a linear layer.
fn dims(x: &[usize], w: &[usize]) -> Result<(usize, usize, usize)> {
    match (x, w) {
        (&[n, i], &[o, wi]) if i == wi => Ok((n, i, o)),
        _ => bail!("linear: input {x:?} and weight {w:?} do not match (n x in, out x in)"),
    }
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "protbench-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, i, o) = dims(xl.dims(), wl.dims())?;
        let (x, w) = (f32_slice(xs, xl)?, f32_slice(ws, wl)?);
        let mut y = vec![0f32; n * o];
        // W^T read in place: element (p, j) of the `in x out` matrix is w[j * in + p].
        let wt = Mat {
            data: w,
            rows: i,
            cols: o,
            rs: 1,
            cs: i,
        };
        sgemm(&mut y, Mat::rows(x, n, i), wt, false, threads());
        Ok((CpuStorage::F32(y), Shape::from((n, o))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, i, o) = dims(x.dims(), w.dims())?;
        let (dx, dw) = with_f32(x, |xv| {
            with_f32(w, |wv| {
                with_f32(dy, |g| {
                    // dx = dy W: (n x out) (out x in).
                    let mut dx = vec![0f32; n * i];
                    sgemm(
                        &mut dx,
                        Mat::rows(g, n, o),
                        Mat::rows(wv, o, i),
                        false,
                        threads(),
                    );
                    // dW = dy^T x: (out x n) (n x in), dy read transposed in place.
                    let gt = Mat {
                        data: g,
                        rows: o,
                        cols: n,
                        rs: 1,
                        cs: o,
                    };
                    let mut dw = vec![0f32; o * i];
                    sgemm(&mut dw, gt, Mat::rows(xv, n, i), false, threads());
                    Ok((dx, dw))
                })
            })
        })?;
        Ok((Some(tensor(dx, &[n, i])?), Some(tensor(dw, &[o, i])?)))
    }
}

/// `x W^T` for 2-d f32 CPU tensors on the fast kernels, gradients to both.
pub fn linear(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&weight.contiguous()?, Linear)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    /// The op against candle's matmul, values and both gradients (to rounding: the orders of
    /// the sums differ).
    #[test]
    fn matches_candle_forward_and_backward() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (5, 37), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (11, 37), &dev)?)?;
        let g = Tensor::randn(0f32, 1.0, (5, 11), &dev)?;
        let ours = linear(x.as_tensor(), w.as_tensor())?;
        let stock = x.as_tensor().matmul(&w.as_tensor().t()?)?;
        let close = |a: &Tensor, b: &Tensor| -> Result<f32> {
            (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
        };
        assert!(close(&ours, &stock)? < 1e-4);
        let go = (ours * &g)?.sum_all()?.backward()?;
        let gs = (stock * &g)?.sum_all()?.backward()?;
        for v in [&x, &w] {
            let (a, b) = (go.get(v.as_tensor()), gs.get(v.as_tensor()));
            let (Some(a), Some(b)) = (a, b) else {
                bail!("a gradient is missing")
            };
            assert!(close(a, b)? < 1e-4, "gradient differs by {}", close(a, b)?);
        }
        Ok(())
    }
}
