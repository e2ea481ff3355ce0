//! The int8 deployment of a quantization-aware-trained model: every convolution and linear layer
//! runs on integers (unsigned 8-bit inputs times signed 8-bit weights, summed in 32 bits), with
//! the batch norm folded into the weights and a float bias; residual additions, pooling and
//! activations stay in float, as in training (`super::qat`). Running the zoo model through a
//! layer hook keeps every architecture's structure without a second implementation of it.
//!
//! One formula for every layer, so every kernel path gives the same numbers:
//! - input: `x_q = clamp(zp + round_half_even(x * (1 / s_x)), 0, 127)` (the fake quantizer's
//!   integer, so a convolution's zero padding is `zp`);
//! - accumulate: `acc[c] = sum(x_q * w_q[c]) - zp * sum(w_q[c])` exactly in i32 (with inputs at
//!   most 127 and weights in -128..127 no partial sum can overflow or saturate, which is what the
//!   reduced 0..127 input range buys on AVX2's 16-bit byte multiply-add);
//! - output: `y[c] = (acc[c] as f32) * m[c] + b[c]` with `m[c] = s_x * s_w[c]` in f32 and the
//!   folded bias `b = beta + (bias - running_mean) * gamma / running_std` (or the layer's bias).

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{Device, Tensor, bail};
use rayon::prelude::*;

use super::{FakeQuantModel, QParams, Scheme};
use crate::Result;
use crate::protect::{Deployed, PlainModel};
use crate::zoo::{Act, ConvBn, Dense, LayerHook, Pass};

/// One layer on integers.
#[derive(Debug, Clone)]
pub struct Int8Layer {
    /// Weights, one row of `(cin / groups) x k x k` per output channel (a linear layer's `in`),
    /// each zero-padded to `row` bytes ([`super::dot::padded_k`]).
    pub weight: Vec<i8>,
    /// Values per weight row (`(cin / groups) x k x k`).
    pub kk: usize,
    /// Padded row length.
    pub row: usize,
    /// Output channels.
    pub cout: usize,
    /// Input channels.
    pub cin: usize,
    /// Kernel side (1 for a linear layer).
    pub k: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding.
    pub padding: usize,
    /// Groups.
    pub groups: usize,
    /// The input's quantization parameters.
    pub input: QParams,
    /// `s_x * s_w[c]` per output channel.
    pub multiplier: Vec<f32>,
    /// Float bias per output channel (the folded batch norm's shift).
    pub bias: Vec<f32>,
    /// `zp * sum(w_q[c])` per output channel.
    pub zero_correction: Vec<i32>,
}

impl Int8Layer {
    /// Bytes of the layer in the int8 file: the weights, and per output channel a scale, a zero
    /// point and the bias (4 bytes each).
    pub fn bytes(&self) -> usize {
        self.kk * self.cout + 12 * self.cout
    }
}

/// A model whose convolutions and linear layers run on integers.
pub struct Int8Model {
    /// The float model: its structure, and what stays float (residual additions, pooling).
    pub model: PlainModel,
    /// The integer layers by store name.
    pub layers: BTreeMap<String, Arc<Int8Layer>>,
    /// Store name prefixes of the batch norms folded into those layers.
    pub folded: std::collections::BTreeSet<String>,
}

impl Int8Model {
    /// Converts a trained fake-quantized model: each layer's frozen input parameters, its
    /// (batch-norm-scaled) weight quantized per channel, and the folded bias.
    pub fn convert(fq: &FakeQuantModel) -> Result<Self> {
        let params = &fq.model.params;
        let folded = fq.qat.folded_batch_norms();
        let get = |name: &str| -> Result<Tensor> {
            params
                .get(name)
                .map(|v| v.as_tensor().clone())
                .ok_or_else(|| crate::Error::Mismatch(format!("no tensor `{name}`")))
        };
        let mut layers = BTreeMap::new();
        // The convolution geometry comes from running the model once with a recording hook.
        let shapes = record_geometry(&fq.model)?;
        for (name, q) in fq.qat.layers() {
            let Some(geo) = shapes.get(&name) else {
                return Err(crate::Error::Mismatch(format!(
                    "layer `{name}` was quantized but did not run in the model"
                )));
            };
            let w = get(&format!("{name}.weight"))?;
            let cout = w.dim(0)?;
            let bias_of = |n: &str| get(n).ok();
            let (scaled, bias) = match folded.get(&name) {
                Some(bn) => {
                    let (_, factor) = super::qat::fold_factor(
                        &get(&format!("{bn}.weight"))?,
                        &get(&format!("{bn}.running_var"))?,
                    )?;
                    let scaled = super::qat::scale_channels(&w, &factor)?;
                    let beta = get(&format!("{bn}.bias"))?;
                    let mean = get(&format!("{bn}.running_mean"))?;
                    let conv_bias =
                        bias_of(&format!("{name}.bias")).map_or_else(|| mean.zeros_like(), Ok)?;
                    let bias = (beta + conv_bias.sub(&mean)?.mul(&factor)?)?;
                    (scaled, bias)
                }
                None => {
                    let bias = bias_of(&format!("{name}.bias")).map_or_else(
                        || Tensor::zeros(cout, candle_core::DType::F32, w.device()),
                        Ok,
                    )?;
                    (w, bias)
                }
            };
            let wp = q.weight.params();
            let ip = q.input.params().first().copied().unwrap_or(QParams {
                scale: 1.0,
                zero_point: 0,
            });
            let range = Scheme::Weight.range();
            let values = scaled.flatten_from(1)?.to_vec2::<f32>()?;
            let kk = values.first().map_or(0, Vec::len);
            let row = super::dot::padded_k(kk);
            let mut weight = Vec::with_capacity(cout * row);
            let mut multiplier = Vec::with_capacity(cout);
            let mut zero_correction = Vec::with_capacity(cout);
            for (c, vals) in values.iter().enumerate() {
                let p = wp.get(c).or(wp.first()).copied().unwrap_or(QParams {
                    scale: 1.0,
                    zero_point: 0,
                });
                let inv = 1.0 / p.scale;
                let mut sum = 0i32;
                for &v in vals {
                    let q = ((p.zero_point as f32 + (v * inv).round_ties_even()) as i64)
                        .clamp(i64::from(range.min), i64::from(range.max));
                    let q = (q - i64::from(p.zero_point)) as i8;
                    sum += i32::from(q);
                    weight.push(q);
                }
                weight.resize(weight.len() + (row - kk), 0);
                multiplier.push(ip.scale * p.scale);
                zero_correction.push(ip.zero_point * sum);
            }
            layers.insert(
                name.clone(),
                Arc::new(Int8Layer {
                    weight,
                    kk,
                    row,
                    cout,
                    cin: geo.cin,
                    k: geo.k,
                    stride: geo.stride,
                    padding: geo.padding,
                    groups: geo.groups,
                    input: ip,
                    multiplier,
                    bias: bias.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?,
                    zero_correction,
                }),
            );
        }
        Ok(Self {
            model: fq.model.clone(),
            layers,
            folded: folded.into_values().collect(),
        })
    }

    fn layer(&self, name: &str) -> candle_core::Result<&Int8Layer> {
        match self.layers.get(name) {
            Some(l) => Ok(l),
            None => bail!("layer `{name}` has no int8 form"),
        }
    }
}

/// Geometry of a layer seen in a forward pass.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    cin: usize,
    k: usize,
    stride: usize,
    padding: usize,
    groups: usize,
}

/// Runs `model` once on a small input and records each conv / linear layer's geometry.
fn record_geometry(model: &PlainModel) -> Result<BTreeMap<String, Geometry>> {
    struct Recorder(std::sync::Mutex<BTreeMap<String, Geometry>>);
    impl LayerHook for Recorder {
        fn conv(&self, unit: &ConvBn, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
            let w = unit.conv.weight();
            let cfg = unit.conv.config();
            let (_, cin, k, _) = w.dims4()?;
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(
                    unit.name.clone(),
                    Geometry {
                        cin: cin * cfg.groups,
                        k,
                        stride: cfg.stride,
                        padding: cfg.padding,
                        groups: cfg.groups,
                    },
                );
            unit.forward_plain(xs, train)
        }
        fn linear(&self, unit: &Dense, xs: &Tensor) -> candle_core::Result<Tensor> {
            let (_, cin) = unit.linear.weight().dims2()?;
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(
                    unit.name.clone(),
                    Geometry {
                        cin,
                        k: 1,
                        stride: 1,
                        padding: 0,
                        groups: 1,
                    },
                );
            unit.forward_plain(xs)
        }
    }
    let spec = &model.spec;
    let side = 32;
    let x = Tensor::zeros(
        (1, spec.in_channels, side, side),
        candle_core::DType::F32,
        &Device::Cpu,
    )?;
    let rec = Recorder(std::sync::Mutex::new(BTreeMap::new()));
    let n = model.model.stages().len();
    model
        .model
        .forward_range(0..n, &x, &Pass::new(false).with_layer_hook(&rec))?;
    Ok(rec
        .0
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner))
}

/// The integer of each input value (the fake quantizer's, clamped to 0..127). Rounding half
/// to even by adding and subtracting 1.5 x 2^23 (exact for |v| < 2^22 in the default rounding
/// mode; larger values clamp to the same end either way) avoids a libm call per value on CPUs
/// without SSE4.1's rounding instruction in the baseline.
fn quantize_input(x: &[f32], p: QParams) -> Vec<u8> {
    const MAGIC: f32 = 12_582_912.0;
    let inv = 1.0 / p.scale;
    let zp = p.zero_point as f32;
    x.iter()
        .map(|&v| {
            // Beyond 2^22 the value clamps to an end anyway; NaN stays NaN (and becomes 0).
            let t = (v * inv).clamp(-4_194_304.0, 4_194_304.0);
            let r = (t + MAGIC) - MAGIC;
            ((zp + r) as i64).clamp(0, 127) as u8
        })
        .collect()
}

/// Integer convolution of one batch: `x_q` is `n x cin x h x w`; returns float outputs
/// `n x cout x ho x wo` by the module's formula. The packed patches of every (image, group) are
/// built in parallel, then every (image, block of four output channels) in parallel, so a single
/// image (batch-1 latency) uses every thread too.
fn conv_int8(l: &Int8Layer, x_q: &[u8], n: usize, h: usize, w: usize) -> (Vec<f32>, usize, usize) {
    let (k, g) = (l.k, l.groups);
    let ho = (h + 2 * l.padding - k) / l.stride + 1;
    let wo = (w + 2 * l.padding - k) / l.stride + 1;
    let (cin_g, cout_g) = (l.cin / g, l.cout / g);
    let plane = ho * wo;
    let pixels = super::dot::padded_pixels(plane);
    let patches: Vec<Vec<u8>> = (0..n * g)
        .into_par_iter()
        .map(|ig| {
            let (img, gi) = (ig / g, ig % g);
            let first = (img * l.cin + gi * cin_g) * h * w;
            pack_patches(
                l,
                &x_q[first..first + cin_g * h * w],
                cin_g,
                h,
                w,
                ho,
                wo,
                pixels,
            )
        })
        .collect();
    let mut out = vec![0f32; n * l.cout * plane];
    // Tasks: (image and group, first channel, the planes of up to four channels of the group).
    let mut tasks: Vec<(usize, usize, &mut [f32])> = Vec::new();
    for (img, y_img) in out.chunks_mut(l.cout * plane).enumerate() {
        for (gi, y_group) in y_img.chunks_mut(cout_g * plane).enumerate() {
            for (b, y_block) in y_group.chunks_mut(4 * plane).enumerate() {
                tasks.push((img * g + gi, gi * cout_g + b * 4, y_block));
            }
        }
    }
    tasks.into_par_iter().for_each(|(ig, co0, y)| {
        let rows = y.len() / plane;
        let mut acc = vec![0i32; rows * pixels];
        let weights = &l.weight[co0 * l.row..(co0 + rows) * l.row];
        super::dot::matmul(&patches[ig], pixels, weights, l.row, rows, &mut acc);
        for j in 0..rows {
            let co = co0 + j;
            let (m, b, zc) = (l.multiplier[co], l.bias[co], l.zero_correction[co]);
            for (o, &a) in y[j * plane..(j + 1) * plane]
                .iter_mut()
                .zip(&acc[j * pixels..j * pixels + plane])
            {
                *o = (a - zc) as f32 * m + b;
            }
        }
    });
    (out, ho, wo)
}

/// The patches of one image's channels of one group, packed for [`super::dot::matmul`]:
/// `[k / 4][pixel][4]` with `k` in (channel, kernel row, kernel column) order as the weights,
/// taps outside the image holding the input's zero point (a float zero), `k` and pixel padding
/// zeros.
#[allow(clippy::too_many_arguments)]
fn pack_patches(
    l: &Int8Layer,
    xi: &[u8],
    cin_g: usize,
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
    pixels: usize,
) -> Vec<u8> {
    let (k, s, p) = (l.k, l.stride, l.padding);
    let zp = l.input.zero_point.clamp(0, 127) as u8;
    let mut packed = vec![0u8; l.row * pixels];
    for ci in 0..cin_g {
        let src = &xi[ci * h * w..(ci + 1) * h * w];
        for ki in 0..k {
            for kj in 0..k {
                let kidx = (ci * k + ki) * k + kj;
                let (base, lane) = ((kidx / 4) * pixels * 4, kidx % 4);
                // Output columns whose tap falls inside the image: ow * s + kj - p in [0, w).
                let lo = p.saturating_sub(kj).div_ceil(s).min(wo);
                let hi = if w + p > kj {
                    ((w + p - kj - 1) / s + 1).min(wo)
                } else {
                    0
                }
                .max(lo);
                for oh in 0..ho {
                    let dst = &mut packed[base + oh * wo * 4..base + (oh + 1) * wo * 4];
                    let ih = (oh * s + ki) as isize - p as isize;
                    if ih < 0 || ih >= h as isize {
                        dst.iter_mut().skip(lane).step_by(4).for_each(|v| *v = zp);
                        continue;
                    }
                    let row = &src[ih as usize * w..(ih as usize + 1) * w];
                    for ow in (0..lo).chain(hi..wo) {
                        dst[ow * 4 + lane] = zp;
                    }
                    for ow in lo..hi {
                        dst[ow * 4 + lane] = row[ow * s + kj - p];
                    }
                }
            }
        }
    }
    packed
}

/// Integer linear layer: `x_q` is `n x in`; returns `n x out` floats. The batch rows are the
/// "pixels" of the product.
fn linear_int8(l: &Int8Layer, x_q: &[u8], n: usize) -> Vec<f32> {
    let pixels = super::dot::padded_pixels(n);
    let mut packed = vec![0u8; l.row * pixels];
    for (i, x) in x_q.chunks(l.cin).enumerate() {
        for (kidx, &v) in x.iter().enumerate() {
            packed[((kidx / 4) * pixels + i) * 4 + kidx % 4] = v;
        }
    }
    let mut acc = vec![0i32; l.cout * pixels];
    super::dot::matmul(&packed, pixels, &l.weight, l.row, l.cout, &mut acc);
    let mut out = vec![0f32; n * l.cout];
    for (i, y) in out.chunks_mut(l.cout).enumerate() {
        for (o, v) in y.iter_mut().enumerate() {
            *v = (acc[o * pixels + i] - l.zero_correction[o]) as f32 * l.multiplier[o] + l.bias[o];
        }
    }
    out
}

impl LayerHook for Int8Model {
    fn conv(&self, unit: &ConvBn, xs: &Tensor, _train: bool) -> candle_core::Result<Tensor> {
        let l = self.layer(&unit.name)?;
        let (n, c, h, w) = xs.dims4()?;
        if c != l.cin {
            bail!("layer `{}` expects {} channels, got {c}", unit.name, l.cin);
        }
        let x = xs
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let x_q = quantize_input(&x, l.input);
        let (y, ho, wo) = conv_int8(l, &x_q, n, h, w);
        let ys = Tensor::from_vec(y, (n, l.cout, ho, wo), &Device::Cpu)?.to_device(xs.device())?;
        match unit.act {
            Act::Relu => crate::nn::relu(&ys),
            Act::Identity => Ok(ys),
        }
    }

    fn linear(&self, unit: &Dense, xs: &Tensor) -> candle_core::Result<Tensor> {
        let l = self.layer(&unit.name)?;
        let (n, c) = xs.dims2()?;
        if c != l.cin {
            bail!("layer `{}` expects {} inputs, got {c}", unit.name, l.cin);
        }
        let x = xs
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let y = linear_int8(l, &quantize_input(&x, l.input), n);
        Tensor::from_vec(y, (n, l.cout), &Device::Cpu)?.to_device(xs.device())
    }
}

impl Deployed for Int8Model {
    fn logits(&self, images: &Tensor) -> Result<Tensor> {
        let n = self.model.model.stages().len();
        let pass = Pass::new(false).with_layer_hook(self);
        Ok(self.model.model.forward_range(0..n, images, &pass)?)
    }

    /// The int8 file: each layer's [`Int8Layer::bytes`], plus every tensor no layer or folded
    /// batch norm took, in its own type.
    fn model_bytes(&self) -> usize {
        let layer_bytes: usize = self.layers.values().map(|l| l.bytes()).sum();
        let mut rest = 0usize;
        for name in self.model.params.names() {
            let (prefix, _) = name.rsplit_once('.').unwrap_or(("", name.as_str()));
            if self.layers.contains_key(prefix) || self.folded.contains(prefix) {
                continue;
            }
            if let Some(t) = self.model.params.get(&name) {
                rest += t.elem_count() * t.dtype().size_in_bytes();
            }
        }
        layer_bytes + rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layer's formula computed directly, tap by tap.
    fn naive(l: &Int8Layer, x: &[u8], n: usize, h: usize, w: usize) -> Vec<f32> {
        let ho = (h + 2 * l.padding - l.k) / l.stride + 1;
        let wo = (w + 2 * l.padding - l.k) / l.stride + 1;
        let (cin_g, cout_g) = (l.cin / l.groups, l.cout / l.groups);
        let zp = l.input.zero_point;
        let mut out = Vec::new();
        for img in 0..n {
            for co in 0..l.cout {
                let gi = co / cout_g;
                for oh in 0..ho {
                    for ow in 0..wo {
                        let mut acc = 0i32;
                        for ci in 0..cin_g {
                            for ki in 0..l.k {
                                for kj in 0..l.k {
                                    let ih = (oh * l.stride + ki) as isize - l.padding as isize;
                                    let iw = (ow * l.stride + kj) as isize - l.padding as isize;
                                    let v =
                                        if ih < 0 || iw < 0 || ih >= h as isize || iw >= w as isize
                                        {
                                            zp
                                        } else {
                                            let c = gi * cin_g + ci;
                                            i32::from(
                                                x[((img * l.cin + c) * h + ih as usize) * w
                                                    + iw as usize],
                                            )
                                        };
                                    let wv = l.weight[co * l.row + (ci * l.k + ki) * l.k + kj];
                                    acc += v * i32::from(wv);
                                }
                            }
                        }
                        out.push(
                            (acc - l.zero_correction[co]) as f32 * l.multiplier[co] + l.bias[co],
                        );
                    }
                }
            }
        }
        out
    }

    #[test]
    fn integer_convolutions_match_the_formula_tap_by_tap() {
        let mut state = 7u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u32
        };
        // (cin, cout, k, stride, padding, groups, h, w)
        for (cin, cout, k, stride, padding, groups, h, w) in [
            (3, 5, 3, 1, 1, 1, 7, 6),
            (4, 6, 3, 2, 1, 1, 8, 9),
            (6, 6, 3, 1, 1, 6, 5, 5),
            (4, 8, 1, 2, 0, 1, 6, 6),
            (2, 3, 5, 1, 2, 1, 4, 4),
        ] {
            let kk = cin / groups * k * k;
            let row = crate::quant::dot::padded_k(kk);
            let mut weight = vec![0i8; cout * row];
            for c in 0..cout {
                for v in &mut weight[c * row..c * row + kk] {
                    *v = (next() % 256) as u8 as i8;
                }
            }
            let zp = (next() % 128) as i32;
            let zero_correction = (0..cout)
                .map(|c| {
                    zp * weight[c * row..(c + 1) * row]
                        .iter()
                        .map(|&v| i32::from(v))
                        .sum::<i32>()
                })
                .collect();
            let l = Int8Layer {
                weight,
                kk,
                row,
                cout,
                cin,
                k,
                stride,
                padding,
                groups,
                input: QParams {
                    scale: 0.05,
                    zero_point: zp,
                },
                multiplier: (0..cout).map(|c| 0.01 * (c + 1) as f32).collect(),
                bias: (0..cout).map(|c| c as f32 - 1.5).collect(),
                zero_correction,
            };
            let n = 2;
            let x: Vec<u8> = (0..n * cin * h * w).map(|_| (next() % 128) as u8).collect();
            let (y, _, _) = conv_int8(&l, &x, n, h, w);
            assert_eq!(
                y,
                naive(&l, &x, n, h, w),
                "{cin} {cout} k{k} s{stride} p{padding} g{groups}"
            );
        }
    }
}
