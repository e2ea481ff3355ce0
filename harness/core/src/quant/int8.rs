//! The int8 deployment of a quantization-aware-trained model: every convolution and linear layer
//! runs on integers ([`super::int8_layer`]: unsigned 8-bit inputs times signed 8-bit weights,
//! summed in 32 bits, batch norm folded into the weights and a float bias); residual additions,
//! pooling and activations between layers stay in float, as in training (`super::qat`).
//! Running the zoo model through a layer hook keeps every architecture's structure without a
//! second implementation of it.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{Device, Tensor, bail};

use super::int8_layer::Geometry;
use super::{FakeQuantModel, Int8Layer, QParams, Scheme};
use crate::Result;
use crate::protect::{Deployed, PlainModel};
use crate::zoo::{Act, ConvBn, Dense, LayerHook, Pass};

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
            let Some((geo, _)) = shapes.get(&name) else {
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
            let rows = scaled.flatten_from(1)?.to_vec2::<f32>()?;
            let mut values = Vec::with_capacity(rows.iter().map(Vec::len).sum());
            let mut weight_scale = Vec::with_capacity(cout);
            for (c, vals) in rows.iter().enumerate() {
                let p = wp.get(c).or(wp.first()).copied().unwrap_or(QParams {
                    scale: 1.0,
                    zero_point: 0,
                });
                let inv = 1.0 / p.scale;
                values.extend(vals.iter().map(|&v| {
                    let q = ((p.zero_point as f32 + (v * inv).round_ties_even()) as i64)
                        .clamp(i64::from(range.min), i64::from(range.max));
                    (q - i64::from(p.zero_point)) as i8
                }));
                weight_scale.push(p.scale);
            }
            let bias = bias.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
            let layer = Int8Layer::new(*geo, values, weight_scale, ip, bias);
            layers.insert(name.clone(), Arc::new(layer));
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

/// A layer's geometry, and the store prefix of the batch norm after it (folded into it).
pub(crate) type Recorded = (Geometry, Option<String>);

/// Runs `model` once on a small input and records each conv / linear layer's geometry and
/// batch norm.
pub(crate) fn record_geometry(model: &PlainModel) -> Result<BTreeMap<String, Recorded>> {
    struct Recorder(std::sync::Mutex<BTreeMap<String, Recorded>>);
    impl LayerHook for Recorder {
        fn conv(&self, unit: &ConvBn, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
            let w = unit.conv.weight();
            let cfg = unit.conv.config();
            let (cout, cin, k, _) = w.dims4()?;
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(
                    unit.name.clone(),
                    (
                        Geometry {
                            cin: cin * cfg.groups,
                            cout,
                            k,
                            stride: cfg.stride,
                            padding: cfg.padding,
                            groups: cfg.groups,
                        },
                        unit.bn.as_ref().map(|(name, _)| name.clone()),
                    ),
                );
            unit.forward_plain(xs, train)
        }
        fn linear(&self, unit: &Dense, xs: &Tensor) -> candle_core::Result<Tensor> {
            let (cout, cin) = unit.linear.weight().dims2()?;
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(unit.name.clone(), (Geometry::linear(cin, cout), None));
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

impl LayerHook for Int8Model {
    fn conv(&self, unit: &ConvBn, xs: &Tensor, _train: bool) -> candle_core::Result<Tensor> {
        let l = self.layer(&unit.name)?;
        let (n, c, h, w) = xs.dims4()?;
        if c != l.geometry.cin {
            bail!(
                "layer `{}` expects {} channels, got {c}",
                unit.name,
                l.geometry.cin
            );
        }
        let relu = match unit.act {
            Act::Relu => true,
            Act::Identity => false,
        };
        let (ho, wo) = l.output_size(h, w);
        let y = crate::nn::cpu::with_f32(&xs.to_device(&Device::Cpu)?, |x| {
            Ok(l.conv(x, n, h, w, relu))
        })?;
        Tensor::from_vec(y, (n, l.geometry.cout, ho, wo), &Device::Cpu)?.to_device(xs.device())
    }

    fn linear(&self, unit: &Dense, xs: &Tensor) -> candle_core::Result<Tensor> {
        let l = self.layer(&unit.name)?;
        let (n, c) = xs.dims2()?;
        if c != l.geometry.cin {
            bail!(
                "layer `{}` expects {} inputs, got {c}",
                unit.name,
                l.geometry.cin
            );
        }
        let y = crate::nn::cpu::with_f32(&xs.to_device(&Device::Cpu)?, |x| Ok(l.linear(x, n)))?;
        Tensor::from_vec(y, (n, l.geometry.cout), &Device::Cpu)?.to_device(xs.device())
    }
}

impl Deployed for Int8Model {
    fn logits(&self, images: &Tensor) -> Result<Tensor> {
        let n = self.model.model.stages().len();
        let pass = Pass::new(false).with_layer_hook(self);
        Ok(self.model.model.forward_range(0..n, images, &pass)?)
    }

    /// The values of the int8 deployment: each layer's [`Int8Layer::bytes`] (one byte per
    /// weight; per channel a scale, zero point and bias of four bytes), plus every tensor no
    /// layer or folded batch norm took, in its own type. The safetensors file
    /// ([`Int8Model::save`]) adds its header, two scalars per layer, and stores zero points as
    /// I64, as PyTorch's convention does.
    fn model_bytes(&self) -> usize {
        let layer_bytes: usize = self.layers.values().map(|l| l.bytes()).sum();
        let rest: usize = self
            .float_tensors()
            .iter()
            .filter_map(|name| self.model.params.get(name))
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum();
        layer_bytes + rest
    }
}
