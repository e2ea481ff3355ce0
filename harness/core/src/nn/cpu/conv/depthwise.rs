//! Depthwise convolutions (`groups == C_in == C_out`) as direct loops over each plane: with one
//! input channel per output, a gemm would be 1 x k*k x Ho*Wo per plane, all overhead.

use rayon::prelude::*;

use super::super::im2col::Geom;
use super::{Dims, Grads};

/// Output columns handled by one kernel column, as (first output, count, first input column).
fn tap_range(g: &Geom, tap: usize, len: usize, out: usize) -> (usize, usize, usize) {
    let s = g.stride;
    let lo = if tap >= g.pad {
        0
    } else {
        (g.pad - tap).div_ceil(s)
    };
    let hi = if len + g.pad > tap {
        ((len - 1 + g.pad - tap) / s + 1).min(out)
    } else {
        0
    };
    let lo = lo.min(out);
    let hi = hi.max(lo);
    (lo, hi - lo, (lo * s + tap).saturating_sub(g.pad))
}

pub(super) fn depthwise_forward(d: &Dims, x: &[f32], w: &[f32]) -> Vec<f32> {
    let g = d.g;
    let (hw, ohw, k, c) = (g.h * g.w, g.ho * g.wo, g.k, d.cin);
    let mut y = vec![0f32; d.n * c * ohw];
    if ohw == 0 {
        return y;
    }
    y.par_chunks_mut(ohw)
        .enumerate()
        .with_min_len(16)
        .for_each(|(p, yp)| {
            let xp = &x[p * hw..(p + 1) * hw];
            let wc = &w[(p % c) * k * k..(p % c + 1) * k * k];
            for ki in 0..k {
                let (oh0, nh, _) = tap_range(&g, ki, g.h, g.ho);
                for kj in 0..k {
                    let (ow0, nw, iw0) = tap_range(&g, kj, g.w, g.wo);
                    if nw == 0 {
                        continue;
                    }
                    let wv = wc[ki * k + kj];
                    for oh in oh0..oh0 + nh {
                        let ih = oh * g.stride + ki - g.pad;
                        let src = &xp[ih * g.w + iw0..(ih + 1) * g.w];
                        let dst = &mut yp[oh * g.wo + ow0..oh * g.wo + ow0 + nw];
                        if g.stride == 1 {
                            for (o, v) in dst.iter_mut().zip(src) {
                                *o += wv * *v;
                            }
                        } else {
                            for (o, v) in dst.iter_mut().zip(src.iter().step_by(g.stride)) {
                                *o += wv * *v;
                            }
                        }
                    }
                }
            }
        });
    y
}

pub(super) fn depthwise_backward(
    d: &Dims,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    need_dx: bool,
    need_dw: bool,
) -> Grads {
    let g = d.g;
    let (hw, ohw, k, c) = (g.h * g.w, g.ho * g.wo, g.k, d.cin);
    let mut dx = need_dx.then(|| vec![0f32; d.n * c * hw]);
    // Group the gradient planes by channel, so that one task owns a channel: its weight
    // gradient sums over the batch without synchronisation.
    let mut by_channel: Vec<Vec<&mut [f32]>> = (0..c).map(|_| Vec::new()).collect();
    if let Some(dx) = dx.as_mut()
        && hw > 0
    {
        for (p, plane) in dx.chunks_mut(hw).enumerate() {
            by_channel[p % c].push(plane);
        }
    }
    let dw: Vec<f32> = by_channel
        .into_par_iter()
        .enumerate()
        .flat_map_iter(|(ch, mut planes)| {
            let wc = &w[ch * k * k..(ch + 1) * k * k];
            let mut acc = vec![0f64; k * k];
            for n in 0..d.n {
                let p = n * c + ch;
                let xp = &x[p * hw..(p + 1) * hw];
                let dyp = &dy[p * ohw..(p + 1) * ohw];
                let mut dxp = planes.get_mut(n);
                for ki in 0..k {
                    let (oh0, nh, _) = tap_range(&g, ki, g.h, g.ho);
                    for kj in 0..k {
                        let (ow0, nw, iw0) = tap_range(&g, kj, g.w, g.wo);
                        if nw == 0 {
                            continue;
                        }
                        let wv = wc[ki * k + kj];
                        let mut tap_sum = 0f32;
                        for oh in oh0..oh0 + nh {
                            let ih = oh * g.stride + ki - g.pad;
                            let grad = &dyp[oh * g.wo + ow0..oh * g.wo + ow0 + nw];
                            if need_dw {
                                let src = &xp[ih * g.w + iw0..(ih + 1) * g.w];
                                tap_sum += grad
                                    .iter()
                                    .zip(src.iter().step_by(g.stride))
                                    .map(|(a, b)| a * b)
                                    .sum::<f32>();
                            }
                            if let Some(dxp) = dxp.as_deref_mut() {
                                let dst = &mut dxp[ih * g.w + iw0..(ih + 1) * g.w];
                                if g.stride == 1 {
                                    for (o, v) in dst.iter_mut().zip(grad) {
                                        *o += wv * *v;
                                    }
                                } else {
                                    for (o, v) in dst.iter_mut().step_by(g.stride).zip(grad) {
                                        *o += wv * *v;
                                    }
                                }
                            }
                        }
                        acc[ki * k + kj] += f64::from(tap_sum);
                    }
                }
            }
            acc.into_iter().map(|v| v as f32)
        })
        .collect();
    (dx, need_dw.then_some(dw))
}
