//! Quantization-aware training of a zoo model through its layer hook, as PyTorch's eager-mode
//! QAT with the x86 qconfig runs a model prepared with `prepare_qat` after fusing each
//! convolution with its batch norm (and ReLU):
//!
//! - every convolution and linear layer fake-quantizes its input (per tensor, 0..127) and its
//!   weight (per output channel, symmetric), the first and the last layer included, as PyTorch's
//!   converted x86 model runs them in int8;
//! - a convolution followed by a batch norm runs as PyTorch's `ConvBn2d` / `ConvBnReLU2d`
//!   (`_forward_approximate`): the weight is scaled by `gamma / sqrt(running_var + eps)` before
//!   it is fake-quantized, the convolution's output is divided back by that factor (the bias, if
//!   any, added after), and the batch norm then runs as usual, with batch statistics in training
//!   until [`Qat::freeze_batch_norm`], running statistics after. In evaluation this is exactly
//!   the convolution with the batch norm folded into int8 weights that the deployment runs;
//! - residual additions, pooling and activations stay in float: the int8 deployment dequantizes
//!   at those points (PyTorch quantizes the addition too; the difference is one rounding of the
//!   sum, which the next layer's input quantization applies anyway).
//!
//! Quantizers are created for a layer the first time it runs, keyed by its store name, and keep
//! their observers across passes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use candle_core::{Result, Tensor};

use super::{FakeQuantizer, QParams, Scheme};
use crate::nn::ops;
use crate::zoo::{Act, ConvBn, Dense, LayerHook};

/// The two quantizers of one convolution or linear layer.
#[derive(Debug)]
pub struct LayerQuantizers {
    /// Its input (per tensor).
    pub input: FakeQuantizer,
    /// Its weight, after batch-norm scaling for a fused unit (per output channel).
    pub weight: FakeQuantizer,
}

impl LayerQuantizers {
    fn new() -> Self {
        Self {
            input: FakeQuantizer::new(Scheme::Activation),
            weight: FakeQuantizer::new(Scheme::Weight),
        }
    }
}

/// The layer hook of quantization-aware training (see the module docs).
#[derive(Debug, Default)]
pub struct Qat {
    layers: Mutex<BTreeMap<String, Arc<LayerQuantizers>>>,
    folded: Mutex<BTreeMap<String, String>>,
    batch_norm_frozen: AtomicBool,
}

impl Qat {
    /// A hook with no quantizer yet: each layer gets its own when it first runs.
    pub fn new() -> Self {
        Self::default()
    }

    /// The quantizers of the layer stored under `name`, created on first use.
    pub fn layer(&self, name: &str) -> Arc<LayerQuantizers> {
        let mut layers = self.layers.lock().unwrap_or_else(PoisonError::into_inner);
        layers
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(LayerQuantizers::new()))
            .clone()
    }

    /// The batch norm folded into each convolution (store name prefixes, convolution to batch
    /// norm), for the layers seen so far.
    pub fn folded_batch_norms(&self) -> BTreeMap<String, String> {
        self.folded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every layer's quantizers by store name.
    pub fn layers(&self) -> BTreeMap<String, Arc<LayerQuantizers>> {
        self.layers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Runs `model` on `images` through the quantizers in evaluation mode, so only the
    /// observers move: a calibration pass without training (what `harness bench` and the int8
    /// tests convert).
    pub fn observe(&self, model: &crate::protect::PlainModel, images: &Tensor) -> Result<()> {
        let stages = model.model.stages().len();
        let pass = crate::zoo::Pass::new(false).with_layer_hook(self);
        model.model.forward_range(0..stages, images, &pass)?;
        Ok(())
    }

    /// Freezes (or resumes) every observer: the ranges and parameters stop moving.
    pub fn freeze_observers(&self, frozen: bool) {
        for q in self.layers().values() {
            q.input.set_observing(!frozen);
            q.weight.set_observing(!frozen);
        }
    }

    /// Batch norms of fused units use their running statistics from now on, in training too
    /// (PyTorch's `freeze_bn_stats`), and those statistics stop moving.
    pub fn freeze_batch_norm(&self, frozen: bool) {
        self.batch_norm_frozen.store(frozen, Ordering::SeqCst);
    }

    /// The parameters of every layer: (input, weight) by store name.
    pub fn params(&self) -> BTreeMap<String, (QParams, Vec<QParams>)> {
        self.layers()
            .into_iter()
            .map(|(name, q)| {
                let input = q.input.params().first().copied().unwrap_or(QParams {
                    scale: 1.0,
                    zero_point: 0,
                });
                (name, (input, q.weight.params()))
            })
            .collect()
    }
}

/// A batch norm's running std `sqrt(running_var + eps)` and its scale in evaluation,
/// `gamma / std`: what folding it into the convolution before it multiplies each output channel
/// of the weight by. Training, the dequantized copy and the int8 conversion all fold through here.
pub fn fold_factor(gamma: &Tensor, running_var: &Tensor) -> Result<(Tensor, Tensor)> {
    let std = (running_var + ops::BN_EPS)?.sqrt()?;
    let factor = gamma.div(&std)?;
    Ok((std, factor))
}

/// `w` with each slice along axis 0 (an output channel) multiplied by `factor`.
pub fn scale_channels(w: &Tensor, factor: &Tensor) -> Result<Tensor> {
    let shape: Vec<usize> = std::iter::once(w.dim(0)?)
        .chain(std::iter::repeat_n(1, w.rank() - 1))
        .collect();
    w.broadcast_mul(&factor.reshape(shape.as_slice())?)
}

impl LayerHook for Qat {
    fn conv(&self, unit: &ConvBn, xs: &Tensor, train: bool) -> Result<Tensor> {
        let q = self.layer(&unit.name);
        let x = q.input.forward(xs)?;
        let cfg = *unit.conv.config();
        let w = unit.conv.weight();
        let Some((bn_name, bn)) = &unit.bn else {
            let wq = q.weight.forward(w)?;
            let ys = ops::conv2d(
                &x,
                &wq,
                unit.conv.bias(),
                cfg.stride,
                cfg.padding,
                cfg.groups,
            )?;
            return match unit.act {
                Act::Relu => crate::nn::relu(&ys),
                Act::Identity => Ok(ys),
            };
        };
        self.folded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(unit.name.clone(), bn_name.clone());
        let c = unit.out_channels();
        let (_, factor) = fold_factor(bn.weight(), &bn.running_var().as_detached_tensor())?;
        let wq = q.weight.forward(&scale_channels(w, &factor)?)?;
        let ys = ops::conv2d(&x, &wq, None, cfg.stride, cfg.padding, cfg.groups)?;
        let mut ys = ys.broadcast_div(&factor.reshape((1, c, 1, 1))?)?;
        if let Some(b) = unit.conv.bias() {
            ys = ys.broadcast_add(&b.reshape((1, c, 1, 1))?)?;
        }
        let batch_stats = train && !self.batch_norm_frozen.load(Ordering::SeqCst);
        match unit.act {
            Act::Relu => bn.forward_relu_t(&ys, batch_stats),
            Act::Identity => candle_nn::ModuleT::forward_t(bn, &ys, batch_stats),
        }
    }

    fn linear(&self, unit: &Dense, xs: &Tensor) -> Result<Tensor> {
        let q = self.layer(&unit.name);
        let x = q.input.forward(xs)?;
        let wq = q.weight.forward(unit.linear.weight())?;
        ops::linear(&x, &wq, unit.linear.bias())
    }
}

#[cfg(test)]
mod tests {
    //! Single fused layers against PyTorch's QAT modules (`ConvBnReLU2d`, `ConvBn2d`, `Linear`
    //! of the x86 qconfig, each behind an activation FakeQuantize) over three training steps,
    //! a step with observers and batch norm frozen, and one in evaluation. Fixtures from
    //! `ci/torch/make_quant_fixtures.py`. Quantization parameters must be identical (the input's
    //! and the batch-norm-scaled weight's are computed by the same element-wise f32 operations);
    //! outputs and gradients may differ by the convolution's order of summation.

    use std::collections::HashMap;

    use candle_core::{Device, Tensor, Var};

    use super::*;
    use crate::nn::{BatchNorm2d, Conv2d, Conv2dConfig, Linear};

    fn fixture() -> HashMap<String, Tensor> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/qat_layers.safetensors");
        candle_core::safetensors::load(path, &Device::Cpu).expect("the QAT fixture loads")
    }

    fn get(f: &HashMap<String, Tensor>, k: &str) -> Tensor {
        f.get(k)
            .unwrap_or_else(|| panic!("fixture has no `{k}`"))
            .clone()
    }

    fn vec(t: &Tensor) -> Vec<f32> {
        t.flatten_all()
            .and_then(|t| t.to_vec1())
            .expect("f32 values")
    }

    fn ints(t: &Tensor) -> Vec<i64> {
        t.flatten_all()
            .and_then(|t| t.to_vec1())
            .expect("i64 values")
    }

    /// Largest difference relative to the largest magnitude of the reference.
    fn rel(ours: &Tensor, theirs: &Tensor) -> f32 {
        let (a, b) = (vec(ours), vec(theirs));
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(1e-12f32, |m, v| m.max(v.abs()));
        a.iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
            / scale
    }

    struct Case {
        conv: Option<ConvBn>,
        dense: Option<Dense>,
        weight: Var,
        gamma: Option<Var>,
        running: Option<(Var, Var)>,
    }

    fn case(f: &HashMap<String, Tensor>, name: &str) -> Case {
        let weight = Var::from_tensor(&get(f, &format!("{name}.w"))).expect("weight var");
        let bias = f.get(&format!("{name}.b")).cloned();
        if name == "linear" {
            return Case {
                conv: None,
                dense: Some(Dense {
                    name: name.into(),
                    linear: Linear::new(weight.as_tensor().clone(), bias),
                }),
                weight,
                gamma: None,
                running: None,
            };
        }
        let gamma = Var::from_tensor(&get(f, &format!("{name}.gamma"))).expect("gamma var");
        let rm = Var::from_tensor(&get(f, &format!("{name}.rm"))).expect("mean var");
        let rv = Var::from_tensor(&get(f, &format!("{name}.rv"))).expect("var var");
        let nbt =
            Var::from_tensor(&Tensor::new(0i64, &Device::Cpu).expect("count")).expect("count var");
        let bn = BatchNorm2d::new(
            gamma.as_tensor().clone(),
            get(f, &format!("{name}.beta")),
            rm.clone(),
            rv.clone(),
            nbt,
        )
        .expect("batch norm");
        let (config, act) = if name == "convbnrelu" {
            (Conv2dConfig::new(1, 1), Act::Relu)
        } else {
            (Conv2dConfig::new(2, 1), Act::Identity)
        };
        Case {
            conv: Some(ConvBn {
                name: name.into(),
                conv: Conv2d::new(weight.as_tensor().clone(), bias, config),
                bn: Some((format!("{name}.bn"), bn)),
                act,
            }),
            dense: None,
            weight,
            gamma: Some(gamma),
            running: Some((rm, rv)),
        }
    }

    #[test]
    fn fused_layers_follow_pytorchs_qat_modules() {
        let f = fixture();
        for name in ["convbnrelu", "convbn", "linear"] {
            let c = case(&f, name);
            let qat = Qat::new();
            for s in 0..5 {
                let at = |k: &str| get(&f, &format!("{name}.{k}{s}"));
                if s == 3 {
                    qat.freeze_observers(true);
                    qat.freeze_batch_norm(true);
                }
                let train = s < 4;
                let x = Var::from_tensor(&at("x")).expect("input var");
                let y = match (&c.conv, &c.dense) {
                    (Some(u), _) => qat.conv(u, x.as_tensor(), train),
                    (_, Some(d)) => qat.linear(d, x.as_tensor()),
                    _ => unreachable!(),
                }
                .expect("forward");
                let what = format!("{name} step {s}");
                assert!(
                    rel(&y, &at("y")) < 1e-5,
                    "{what}: output {}",
                    rel(&y, &at("y"))
                );
                let grads = (y * at("g"))
                    .and_then(|t| t.sum_all())
                    .and_then(|t| t.backward())
                    .expect("backward");
                let dx = grads.get(x.as_tensor()).expect("input gradient");
                assert!(
                    rel(dx, &at("dx")) < 1e-4,
                    "{what}: dx {}",
                    rel(dx, &at("dx"))
                );
                let dw = grads.get(c.weight.as_tensor()).expect("weight gradient");
                assert!(
                    rel(dw, &at("dw")) < 1e-4,
                    "{what}: dw {}",
                    rel(dw, &at("dw"))
                );
                if let Some(g) = &c.gamma {
                    let dg = grads.get(g.as_tensor()).expect("gamma gradient");
                    let r = rel(dg, &at("dgamma"));
                    assert!(r < 1e-4, "{what}: dgamma {r}");
                }
                if let Some((rm, rv)) = &c.running {
                    assert!(
                        rel(rm.as_tensor(), &at("rm")) < 1e-5,
                        "{what}: running mean"
                    );
                    assert!(rel(rv.as_tensor(), &at("rv")) < 1e-5, "{what}: running var");
                }
                let q = qat.layer(name);
                let input = q.input.params();
                assert_eq!(
                    input.iter().map(|p| p.scale.to_bits()).collect::<Vec<_>>(),
                    vec(&at("in_scale"))
                        .iter()
                        .map(|v| v.to_bits())
                        .collect::<Vec<_>>(),
                    "{what}: input scale"
                );
                assert_eq!(
                    input
                        .iter()
                        .map(|p| i64::from(p.zero_point))
                        .collect::<Vec<_>>(),
                    ints(&at("in_zp")),
                    "{what}: input zero point"
                );
                let w = q.weight.params();
                assert_eq!(
                    w.iter().map(|p| p.scale.to_bits()).collect::<Vec<_>>(),
                    vec(&at("w_scale"))
                        .iter()
                        .map(|v| v.to_bits())
                        .collect::<Vec<_>>(),
                    "{what}: weight scales"
                );
                assert_eq!(
                    w.iter()
                        .map(|p| i64::from(p.zero_point))
                        .collect::<Vec<_>>(),
                    ints(&at("w_zp")),
                    "{what}: weight zero points"
                );
            }
        }
    }
}
