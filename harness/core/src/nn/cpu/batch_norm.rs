//! Batch norm over N x C x H x W (train and eval), optionally fused with the ReLU that follows.
//!
//! Train mode is two passes forward (statistics, then the normalised output) and two backward
//! (two per-channel sums, then the input gradient in the closed form
//! `dx = gamma / sigma * (dy - mean(dy) - xhat * mean(dy * xhat))`), against about six full
//! passes and as many temporaries for the stock tensor-op graph. Work is split over channels, so
//! every per-channel sum belongs to one task. Sums run in f32 within one H x W plane (SIMD
//! friendly) and in f64 across planes; the statistics pass subtracts a per-channel shift (the
//! channel's first value) before squaring, so the one-pass variance does not cancel
//! catastrophically when the mean is large against the spread.
//!
//! The fused ReLU recomputes the pre-activation's sign in the backward from the same formula as
//! the forward, so its gradient at exactly 0 is 1, as candle's `relu` (the stock path).

use std::mem::MaybeUninit;
use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::elementwise::filled_by;
use super::{f32_slice, tensor, with_f32};

/// What a train-mode batch norm returns: the output and the batch statistics.
#[derive(Debug, Clone)]
pub struct BatchNormOutput {
    /// The normalised, scaled and shifted (and, if asked, rectified) activations.
    pub output: Tensor,
    /// Per-channel batch mean (C), outside the graph.
    pub mean: Tensor,
    /// Per-channel biased batch variance (C), outside the graph.
    pub var: Tensor,
    /// Values per channel, N * H * W.
    pub count: usize,
}

/// Per-channel statistics a forward pass computed, kept for its backward.
#[derive(Debug)]
struct Stats {
    mean: Vec<f32>,
    var: Vec<f32>,
    invstd: Vec<f32>,
}

/// Sum of a plane in 16 independent f32 lanes (vectorisable), then as f64.
#[inline]
fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut acc = [0f32; 16];
    let mut chunks = xs.chunks_exact(16);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += f(*v);
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|v| f(*v)).sum();
    acc.iter().map(|v| f64::from(*v)).sum::<f64>() + f64::from(tail)
}

/// Two sums of a plane pair in 16 lanes each: (sum f(a, b), sum g(a, b)).
#[inline]
fn lane_sum2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> (f32, f32)) -> (f64, f64) {
    let mut acc1 = [0f32; 16];
    let mut acc2 = [0f32; 16];
    let mut ca = a.chunks_exact(16);
    let mut cb = b.chunks_exact(16);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..16 {
            let (u, v) = f(x[i], y[i]);
            acc1[i] += u;
            acc2[i] += v;
        }
    }
    let (mut t1, mut t2) = (0f64, 0f64);
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        let (u, v) = f(*x, *y);
        t1 += f64::from(u);
        t2 += f64::from(v);
    }
    (
        acc1.iter().map(|v| f64::from(*v)).sum::<f64>() + t1,
        acc2.iter().map(|v| f64::from(*v)).sum::<f64>() + t2,
    )
}

/// Splits `out` (N x C planes of `hw`) into per-channel lists of planes, so that one rayon task
/// per channel writes its planes without synchronisation.
fn planes_by_channel<T>(out: &mut [T], c: usize, hw: usize) -> Vec<Vec<&mut [T]>> {
    let mut by: Vec<Vec<&mut [T]>> = (0..c).map(|_| Vec::new()).collect();
    if hw > 0 {
        for (p, plane) in out.chunks_mut(hw).enumerate() {
            by[p % c].push(plane);
        }
    }
    by
}

fn check_dims(x: &[usize], params: &[&[usize]]) -> Result<(usize, usize, usize)> {
    let &[n, c, h, w] = x else {
        bail!("batch norm needs a 4-d input, got {x:?}")
    };
    for p in params {
        if *p != [c] {
            bail!("batch norm over {c} channels got a parameter of shape {p:?}")
        }
    }
    Ok((n, c, h * w))
}

struct BnTrain {
    eps: f64,
    relu: bool,
    stats: Arc<OnceLock<Stats>>,
}

impl CustomOp3 for BnTrain {
    fn name(&self) -> &'static str {
        "protbench-batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, hw) = check_dims(l1.dims(), &[l2.dims(), l3.dims()])?;
        let m = n * hw;
        if m < 2 {
            bail!(
                "batch norm in train mode needs more than 1 value per channel, got {:?}",
                l1.dims()
            )
        }
        let (x, gamma, beta) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let relu = self.relu;
        let eps = self.eps;
        let fill = |y: &mut [MaybeUninit<f32>]| -> Vec<(f32, f32, f32)> {
            planes_by_channel(y, c, hw)
                .into_par_iter()
                .enumerate()
                .map(|(ch, mut outs)| {
                    let plane = |i: usize| &x[(i * c + ch) * hw..(i * c + ch + 1) * hw];
                    let shift = plane(0)[0];
                    let (mut s, mut ss) = (0f64, 0f64);
                    for i in 0..n {
                        let p = plane(i);
                        s += lane_sum(p, |v| v - shift);
                        ss += lane_sum(p, |v| (v - shift) * (v - shift));
                    }
                    let mf = m as f64;
                    let dmean = s / mf;
                    let var = (ss / mf - dmean * dmean).max(0.0);
                    let mean = f64::from(shift) + dmean;
                    let invstd = 1.0 / (var + eps).sqrt();
                    let a = (f64::from(gamma[ch]) * invstd) as f32;
                    let b = (f64::from(beta[ch]) - mean * f64::from(gamma[ch]) * invstd) as f32;
                    for (i, out) in outs.iter_mut().enumerate() {
                        for (o, v) in out.iter_mut().zip(plane(i)) {
                            let t = *v * a + b;
                            o.write(if relu { t.max(0.0) } else { t });
                        }
                    }
                    (mean as f32, var as f32, invstd as f32)
                })
                .collect()
        };
        // SAFETY: `check_dims` made `x.len() == n * c * hw`; the output's planes are split
        // over the channels (every plane to one channel), and each channel's task writes each
        // of its `n` planes in full (zipped with the input plane of the same length `hw`).
        #[allow(unsafe_code)]
        let (y, stats) = unsafe { filled_by(x.len(), fill) };
        let _ = self.stats.set(Stats {
            mean: stats.iter().map(|s| s.0).collect(),
            var: stats.iter().map(|s| s.1).collect(),
            invstd: stats.iter().map(|s| s.2).collect(),
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c, hw) = check_dims(x.dims(), &[gamma.dims(), beta.dims()])?;
        let Some(st) = self.stats.get() else {
            bail!("batch norm backward before its forward")
        };
        let m = (n * hw) as f64;
        let relu = self.relu;
        let need_dx = x.track_op();
        let (dx, sums) = with_f32(x, |xs| {
            with_f32(gamma, |gs| {
                with_f32(beta, |bs| {
                    with_f32(dy, |g| {
                        let run = |dx: &mut [MaybeUninit<f32>]| -> Vec<(f32, f32)> {
                            planes_by_channel(dx, c, hw)
                                .into_par_iter()
                                .enumerate()
                                .map(|(ch, mut outs)| {
                                    let span = |i: usize| (i * c + ch) * hw..(i * c + ch + 1) * hw;
                                    let mean = st.mean[ch];
                                    let invstd = st.invstd[ch];
                                    // The forward's own affine map, to recover the ReLU's mask.
                                    let a = (f64::from(gs[ch]) * f64::from(invstd)) as f32;
                                    let b = (f64::from(bs[ch])
                                        - f64::from(mean) * f64::from(gs[ch]) * f64::from(invstd))
                                        as f32;
                                    let mask = |v: f32, d: f32| {
                                        if relu && v * a + b < 0.0 { 0.0 } else { d }
                                    };
                                    let (mut sdy, mut sdyx) = (0f64, 0f64);
                                    for i in 0..n {
                                        let (s1, s2) =
                                            lane_sum2(&xs[span(i)], &g[span(i)], |v, d| {
                                                let d = mask(v, d);
                                                (d, d * (v - mean))
                                            });
                                        sdy += s1;
                                        sdyx += s2;
                                    }
                                    if need_dx {
                                        let k0 = (sdy / m) as f32;
                                        let k1 = (sdyx / m * f64::from(invstd) * f64::from(invstd))
                                            as f32;
                                        let scale = gs[ch] * invstd;
                                        for (i, out) in outs.iter_mut().enumerate() {
                                            let (xp, gp) = (&xs[span(i)], &g[span(i)]);
                                            for ((o, v), d) in out.iter_mut().zip(xp).zip(gp) {
                                                let d = mask(*v, *d);
                                                o.write((d - k0 - (*v - mean) * k1) * scale);
                                            }
                                        }
                                    }
                                    ((sdyx * f64::from(invstd)) as f32, sdy as f32)
                                })
                                .collect()
                        };
                        if !need_dx {
                            // No planes to write: only the parameter gradients' sums.
                            return Ok((None, run(&mut [])));
                        }
                        // SAFETY: as in the forward: `check_dims` made `xs.len() == n * c *
                        // hw`, every plane belongs to one channel, and with `need_dx` each
                        // channel's task writes each of its planes in full.
                        #[allow(unsafe_code)]
                        let (dx, sums) = unsafe { filled_by(xs.len(), run) };
                        Ok((Some(dx), sums))
                    })
                })
            })
        })?;
        let dx = match dx {
            Some(v) => Some(tensor(v, x.dims())?),
            None => None,
        };
        let dgamma = tensor(sums.iter().map(|s| s.0).collect(), &[c])?;
        let dbeta = tensor(sums.iter().map(|s| s.1).collect(), &[c])?;
        Ok((dx, Some(dgamma), Some(dbeta)))
    }
}

/// Train-mode batch norm (batch statistics, biased variance, as PyTorch) on the fast CPU
/// kernels, followed by a ReLU when `relu` is set; gradients for the input, `weight` and `bias`.
pub fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<BatchNormOutput> {
    let (n, c, hw) = check_dims(x.dims(), &[weight.dims(), bias.dims()])?;
    let stats = Arc::new(OnceLock::new());
    let output = x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        BnTrain {
            eps,
            relu,
            stats: stats.clone(),
        },
    )?;
    let Some(st) = stats.get() else {
        bail!("batch norm forward produced no statistics")
    };
    Ok(BatchNormOutput {
        output,
        mean: tensor(st.mean.clone(), &[c])?,
        var: tensor(st.var.clone(), &[c])?,
        count: n * hw,
    })
}

struct ChannelAffine;

impl CustomOp3 for ChannelAffine {
    fn name(&self) -> &'static str {
        "protbench-channel-affine"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, c, hw) = check_dims(l1.dims(), &[l2.dims(), l3.dims()])?;
        let (x, a, b) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let mut y = vec![0f32; x.len()];
        if hw > 0 {
            y.par_chunks_mut(hw)
                .zip(x.par_chunks(hw))
                .enumerate()
                .with_min_len(16)
                .for_each(|(p, (yp, xp))| {
                    let (a, b) = (a[p % c], b[p % c]);
                    for (o, v) in yp.iter_mut().zip(xp) {
                        *o = *v * a + b;
                    }
                });
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c, hw) = check_dims(x.dims(), &[scale.dims(), shift.dims()])?;
        let need_dx = x.track_op();
        let (dx, sums) = with_f32(x, |xs| {
            with_f32(scale, |a| {
                with_f32(dy, |g| {
                    let mut dx = if need_dx {
                        vec![0f32; xs.len()]
                    } else {
                        Vec::new()
                    };
                    let sums: Vec<(f32, f32)> = planes_by_channel(&mut dx, c, hw)
                        .into_par_iter()
                        .enumerate()
                        .map(|(ch, mut outs)| {
                            let span = |i: usize| (i * c + ch) * hw..(i * c + ch + 1) * hw;
                            let (mut sx, mut s) = (0f64, 0f64);
                            for i in 0..n {
                                let (u, v) =
                                    lane_sum2(&xs[span(i)], &g[span(i)], |v, d| (d * v, d));
                                sx += u;
                                s += v;
                            }
                            for (i, out) in outs.iter_mut().enumerate() {
                                for (o, d) in out.iter_mut().zip(&g[span(i)]) {
                                    *o = *d * a[ch];
                                }
                            }
                            (sx as f32, s as f32)
                        })
                        .collect();
                    Ok((need_dx.then_some(dx), sums))
                })
            })
        })?;
        let dx = match dx {
            Some(v) => Some(tensor(v, x.dims())?),
            None => None,
        };
        let dscale = tensor(sums.iter().map(|s| s.0).collect(), &[c])?;
        let dshift = tensor(sums.iter().map(|s| s.1).collect(), &[c])?;
        Ok((dx, Some(dscale), Some(dshift)))
    }
}

/// `x * scale[c] + shift[c]` per channel in one pass, with gradients for all three: eval-mode
/// batch norm after folding its statistics into `scale` and `shift`.
pub fn channel_affine(x: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
    check_dims(x.dims(), &[scale.dims(), shift.dims()])?;
    x.contiguous()?
        .apply_op3(&scale.contiguous()?, &shift.contiguous()?, ChannelAffine)
}

/// Eval-mode batch norm on the fast CPU kernels: the statistics fold into a per-channel scale
/// and shift (tiny candle ops, so gradients still reach `weight`, `bias` and the statistics),
/// then one [`channel_affine`] pass.
pub fn batch_norm_eval(
    x: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let scale = ((var + eps)?.sqrt()?.recip()? * weight)?;
    let shift = (bias - (mean * &scale)?)?;
    channel_affine(x, &scale, &shift)
}
