//! Max, average and global average pooling (no padding, floor mode) for any kernel and stride,
//! forward and backward, one task per (image, channel) plane.
//!
//! Max pooling sends each window's gradient to its first maximum in row-major window order, as
//! PyTorch; the backward recomputes that position from the input rather than keeping an index
//! tensor alive between forward and backward. Overlapping windows add their gradients.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::{f32_slice, tensor, with_f32};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Max,
    Avg,
}

#[derive(Debug, Clone, Copy)]
struct Pool {
    kind: Kind,
    k: usize,
    s: usize,
}

/// (planes, h, w, ho, wo) of a pooling call.
fn pool_dims(dims: &[usize], k: usize, s: usize) -> Result<(usize, usize, usize, usize, usize)> {
    let &[n, c, h, w] = dims else {
        bail!("pooling needs a 4-d input, got {dims:?}")
    };
    if k == 0 || s == 0 {
        bail!("pooling needs kernel >= 1 and stride >= 1, got kernel {k}, stride {s}")
    }
    if h < k || w < k {
        bail!("pooling kernel {k} is larger than the input {h}x{w}")
    }
    Ok((n * c, h, w, (h - k) / s + 1, (w - k) / s + 1))
}

/// Index within the plane of the first maximum of the window at (oh, ow).
#[inline]
fn argmax(xp: &[f32], w: usize, k: usize, s: usize, oh: usize, ow: usize) -> usize {
    let mut best = oh * s * w + ow * s;
    let mut m = xp[best];
    for ki in 0..k {
        let row = (oh * s + ki) * w + ow * s;
        for (kj, v) in xp[row..row + k].iter().enumerate() {
            // Strictly greater keeps the first maximum; a NaN wins, as PyTorch propagates it.
            if *v > m || (v.is_nan() && !m.is_nan()) {
                m = *v;
                best = row + kj;
            }
        }
    }
    best
}

/// The maximum of each window of one plane, the value [`argmax`] finds (the first maximum, a
/// NaN when the window holds one) without tracking its position: the window's rows are folded
/// column by column, so the loops run in vector lanes.
fn max_plane(xp: &[f32], yp: &mut [f32], w: usize, k: usize, s: usize, wo: usize) {
    // `m` keeps the first maximum (strictly greater replaces it); `nan` remembers a NaN, which
    // wins, as PyTorch propagates it.
    #[inline(always)]
    fn fold(m: f32, nan: bool, v: f32) -> (f32, bool) {
        (if v > m { v } else { m }, nan | v.is_nan())
    }
    if k == 2 && s == 2 {
        // The common 2x2 window, unrolled in the same order so the loop vectorises.
        for (oh, yr) in yp.chunks_exact_mut(wo).enumerate() {
            let r0 = &xp[2 * oh * w..2 * oh * w + 2 * wo];
            let r1 = &xp[(2 * oh + 1) * w..(2 * oh + 1) * w + 2 * wo];
            for ((y, a), b) in yr
                .iter_mut()
                .zip(r0.chunks_exact(2))
                .zip(r1.chunks_exact(2))
            {
                let (m, nan) = (a[0], a[0].is_nan());
                let (m, nan) = fold(m, nan, a[1]);
                let (m, nan) = fold(m, nan, b[0]);
                let (m, nan) = fold(m, nan, b[1]);
                *y = if nan { f32::NAN } else { m };
            }
        }
        return;
    }
    for (oh, yr) in yp.chunks_exact_mut(wo).enumerate() {
        for (ow, y) in yr.iter_mut().enumerate() {
            let first = oh * s * w + ow * s;
            let (mut m, mut nan) = (xp[first], xp[first].is_nan());
            for ki in 0..k {
                let row = first + ki * w;
                for &v in &xp[row..row + k] {
                    (m, nan) = fold(m, nan, v);
                }
            }
            *y = if nan { f32::NAN } else { m };
        }
    }
}

impl CustomOp1 for Pool {
    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Max => "protbench-max-pool2d",
            Kind::Avg => "protbench-avg-pool2d",
        }
    }

    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (planes, h, w, ho, wo) = pool_dims(l.dims(), self.k, self.s)?;
        let x = f32_slice(st, l)?;
        let (k, s) = (self.k, self.s);
        let inv = 1.0 / (k * k) as f32;
        let mut y = vec![0f32; planes * ho * wo];
        y.par_chunks_mut(ho * wo)
            .zip(x.par_chunks(h * w))
            .with_min_len(8)
            .for_each(|(yp, xp)| {
                if self.kind == Kind::Max {
                    return max_plane(xp, yp, w, k, s, wo);
                }
                for oh in 0..ho {
                    for ow in 0..wo {
                        yp[oh * wo + ow] = match self.kind {
                            Kind::Max => xp[argmax(xp, w, k, s, oh, ow)],
                            Kind::Avg => {
                                let mut acc = 0f32;
                                for ki in 0..k {
                                    let row = (oh * s + ki) * w + ow * s;
                                    acc += xp[row..row + k].iter().sum::<f32>();
                                }
                                acc * inv
                            }
                        };
                    }
                }
            });
        let dims = l.dims();
        Ok((CpuStorage::F32(y), Shape::from((dims[0], dims[1], ho, wo))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let (_, h, w, ho, wo) = pool_dims(x.dims(), self.k, self.s)?;
        let (k, s) = (self.k, self.s);
        let inv = 1.0 / (k * k) as f32;
        let dx = with_f32(x, |xs| {
            with_f32(dy, |g| {
                let mut dx = vec![0f32; xs.len()];
                dx.par_chunks_mut(h * w)
                    .zip(xs.par_chunks(h * w).zip(g.par_chunks(ho * wo)))
                    .with_min_len(8)
                    .for_each(|(dxp, (xp, gp))| {
                        for oh in 0..ho {
                            for ow in 0..wo {
                                let gv = gp[oh * wo + ow];
                                match self.kind {
                                    Kind::Max => dxp[argmax(xp, w, k, s, oh, ow)] += gv,
                                    Kind::Avg => {
                                        for ki in 0..k {
                                            let row = (oh * s + ki) * w + ow * s;
                                            for d in &mut dxp[row..row + k] {
                                                *d += gv * inv;
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    });
                Ok(dx)
            })
        })?;
        Ok(Some(tensor(dx, x.dims())?))
    }
}

/// Max pooling (first maximum gets the gradient) on the fast CPU kernels.
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize) -> Result<Tensor> {
    pool_dims(x.dims(), kernel, stride)?;
    x.contiguous()?.apply_op1(Pool {
        kind: Kind::Max,
        k: kernel,
        s: stride,
    })
}

/// Average pooling on the fast CPU kernels.
pub fn avg_pool2d(x: &Tensor, kernel: usize, stride: usize) -> Result<Tensor> {
    pool_dims(x.dims(), kernel, stride)?;
    x.contiguous()?.apply_op1(Pool {
        kind: Kind::Avg,
        k: kernel,
        s: stride,
    })
}

struct GlobalAvg;

impl CustomOp1 for GlobalAvg {
    fn name(&self) -> &'static str {
        "protbench-global-avg-pool2d"
    }

    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let &[n, c, h, w] = l.dims() else {
            bail!(
                "global average pooling needs a 4-d input, got {:?}",
                l.dims()
            )
        };
        if h * w == 0 {
            bail!("global average pooling of an empty {h}x{w} map")
        }
        let x = f32_slice(st, l)?;
        let hw = h * w;
        let inv = 1.0 / (h * w) as f32;
        let y: Vec<f32> = x
            .chunks(hw)
            .take(n * c)
            .map(|p| p.iter().sum::<f32>() * inv)
            .collect();
        Ok((CpuStorage::F32(y), Shape::from((n, c))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, h, w) = x.dims4()?;
        let inv = 1.0 / (h * w) as f32;
        let dx = with_f32(dy, |g| {
            let mut dx = vec![0f32; x.elem_count()];
            if h * w > 0 {
                for (p, v) in dx.chunks_mut(h * w).zip(g) {
                    p.fill(v * inv);
                }
            }
            Ok(dx)
        })?;
        Ok(Some(tensor(dx, x.dims())?))
    }
}

/// Mean over H and W (N x C x H x W -> N x C) on the fast CPU kernels.
pub fn global_avg_pool2d(x: &Tensor) -> Result<Tensor> {
    x.dims4()?;
    x.contiguous()?.apply_op1(GlobalAvg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_maximum_is_the_value_at_argmax_with_nan_and_signed_zeros() {
        // Windows of 2x2 and 3x3 (stride 2 and 1) over values with ties, signed zeros and NaN.
        let pool = [1.0f32, -0.0, 0.0, 3.0, 3.0, -2.0, f32::NAN, 0.5, -0.0];
        let (h, w) = (7, 8);
        let xp: Vec<f32> = (0..h * w)
            .map(|i| pool[(i * 7 + i / 5) % pool.len()])
            .collect();
        for (k, s) in [(2, 2), (3, 1), (3, 2), (1, 1)] {
            let (ho, wo) = ((h - k) / s + 1, (w - k) / s + 1);
            let mut y = vec![0f32; ho * wo];
            max_plane(&xp, &mut y, w, k, s, wo);
            for oh in 0..ho {
                for ow in 0..wo {
                    let want = xp[argmax(&xp, w, k, s, oh, ow)];
                    let got = y[oh * wo + ow];
                    assert!(
                        (want.is_nan() && got.is_nan()) || want.to_bits() == got.to_bits(),
                        "k{k} s{s} ({oh}, {ow}): {got} against {want}"
                    );
                }
            }
        }
    }
}
