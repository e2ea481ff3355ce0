//! The int8 deployment's safetensors file: what an owner ships and a thief dumps.
//!
//! For every integer layer `L` (in the store conventions of `crate::params`, so PyTorch's
//! `torch.quantize_per_channel` reads the weights back, see `ci/torch/load_int8.py`):
//! - `L.weight`: the int8 weights in PyTorch's shape, with `L.weight.scale` (f32 per output
//!   channel) and `L.weight.zero_point` (all 0: symmetric) beside them;
//! - `L.bias`: the float bias, batch norm folded in;
//! - `L.input_scale`, `L.input_zero_point`: the layer input's quantization (f32 scalars).
//!
//! Every other tensor of the float model is stored as it is, except the folded batch norms.
//! Loading builds the architecture from its [`ModelSpec`] and reads the file strictly (every
//! tensor present with its shape, nothing else); an int8 weight without its scales, a
//! non-symmetric weight, or an input scale or zero point the kernels cannot use is refused with
//! an [`Error::BadFile`] naming the tensor.

use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::int8::record_geometry;
use super::{Int8Layer, Int8Model, QParams};
use crate::params::{ParamKind, ParamStore, QuantizedTensor};
use crate::protect::PlainModel;
use crate::{Error, ModelSpec, Result};

impl Int8Model {
    /// The tensors of the int8 file (see the module docs).
    pub fn to_store(&self) -> Result<ParamStore> {
        let store = ParamStore::new(0, &Device::Cpu);
        for (name, l) in &self.layers {
            let weight = format!("{name}.weight");
            let shape = self
                .model
                .params
                .get(&weight)
                .map(|v| v.dims().to_vec())
                .ok_or_else(|| Error::Mismatch(format!("no tensor `{weight}`")))?;
            put_layer(&store, name, l, shape)?;
        }
        copy_tensors(&self.model.params, &store, &self.float_tensors())?;
        Ok(store)
    }

    /// Writes the int8 file to `path` (atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        self.to_store()?.save(path)
    }

    /// Reads the int8 file of a model of architecture `spec` from `path`.
    pub fn load(spec: ModelSpec, path: &Path) -> Result<Self> {
        let model = PlainModel::build(spec, ParamStore::new(0, &Device::Cpu))?;
        let recorded = record_geometry(&model)?;
        let folded = recorded.values().filter_map(|(_, bn)| bn.clone()).collect();
        // The architecture with placeholder layers: its store has the file's every tensor, which
        // the strict load overwrites.
        let placeholders = recorded
            .iter()
            .map(|(name, (g, _))| {
                let kk = g.cin / g.groups * g.k * g.k;
                let input = QParams {
                    scale: 1.0,
                    zero_point: 0,
                };
                let zeros = Int8Layer::new(
                    *g,
                    vec![0; g.cout * kk],
                    vec![1.0; g.cout],
                    input,
                    vec![0.0; g.cout],
                );
                (name.clone(), Arc::new(zeros))
            })
            .collect();
        let skeleton = Int8Model {
            model,
            layers: placeholders,
            folded,
        };
        let store = skeleton.to_store()?;
        store.load(path)?;
        let bad = |message: String| Error::BadFile {
            path: path.to_path_buf(),
            message,
        };
        let mut layers = std::collections::BTreeMap::new();
        for (name, (g, _)) in recorded {
            let weight = format!("{name}.weight");
            let q = store.quantized(&weight).ok_or_else(|| {
                bad(format!(
                    "`{weight}` holds float values; an int8 deployment stores int8 weights with \
                     `{weight}.scale` and `{weight}.zero_point` beside them"
                ))
            })?;
            let scale = per_channel(&q, g.cout).ok_or_else(|| {
                bad(format!(
                    "`{weight}` must be quantized per output channel (axis 0) with zero points \
                     0 (symmetric int8), as the x86 recipe quantizes weights"
                ))
            })?;
            let scalar = |suffix: &str| -> Result<f32> {
                let t = store
                    .get(&format!("{name}.{suffix}"))
                    .ok_or_else(|| bad(format!("no tensor `{name}.{suffix}`")))?;
                Ok(t.as_tensor()
                    .to_dtype(candle_core::DType::F32)?
                    .to_scalar::<f32>()?)
            };
            let (s, zp) = (scalar("input_scale")?, scalar("input_zero_point")?);
            if !(s.is_finite() && s > 0.0) {
                return Err(bad(format!(
                    "`{name}.input_scale` is {s}; a scale must be a positive finite number"
                )));
            }
            if !(0.0..=127.0).contains(&zp) || zp.fract() != 0.0 {
                return Err(bad(format!(
                    "`{name}.input_zero_point` is {zp}; input zero points are whole numbers in \
                     0..=127 (unsigned, reduced range)"
                )));
            }
            let bias = store
                .get(&format!("{name}.bias"))
                .ok_or_else(|| bad(format!("no tensor `{name}.bias`")))?
                .as_tensor()
                .to_vec1::<f32>()?;
            let input = QParams {
                scale: s,
                zero_point: zp as i32,
            };
            let layer = Int8Layer::new(g, q.values, scale, input, bias);
            layers.insert(name, Arc::new(layer));
        }
        copy_tensors(&store, &skeleton.model.params, &skeleton.float_tensors())?;
        Ok(Int8Model { layers, ..skeleton })
    }

    /// Tensors of the float model that no integer layer or folded batch norm took, stored as
    /// they are.
    pub(crate) fn float_tensors(&self) -> Vec<String> {
        self.model
            .params
            .names()
            .into_iter()
            .filter(|name| {
                let (prefix, _) = name.rsplit_once('.').unwrap_or(("", name.as_str()));
                !(self.layers.contains_key(prefix) || self.folded.contains(prefix))
            })
            .collect()
    }
}

/// Copies tensors `names` (with their kinds) from one store to another; names `from` lacks are
/// skipped.
fn copy_tensors(from: &ParamStore, to: &ParamStore, names: &[String]) -> Result<()> {
    for name in names {
        if let (Some(t), Some(kind)) = (from.get(name), from.kind(name)) {
            to.insert(name, t.as_tensor(), kind)?;
        }
    }
    Ok(())
}

/// Puts layer `name`'s tensors into `store` (see the module docs).
fn put_layer(store: &ParamStore, name: &str, l: &Int8Layer, shape: Vec<usize>) -> Result<()> {
    let cout = l.geometry.cout;
    store.insert_quantized(
        &format!("{name}.weight"),
        QuantizedTensor {
            values: l.values.clone(),
            shape,
            scale: l.weight_scale.clone(),
            zero_point: vec![0; cout],
            axis: Some(0),
        },
    )?;
    let cpu = Device::Cpu;
    store.insert(
        &format!("{name}.bias"),
        &Tensor::from_slice(&l.bias, cout, &cpu)?,
        ParamKind::Buffer,
    )?;
    store.insert(
        &format!("{name}.input_scale"),
        &Tensor::new(l.input.scale, &cpu)?,
        ParamKind::QuantState,
    )?;
    store.insert(
        &format!("{name}.input_zero_point"),
        &Tensor::new(l.input.zero_point as f32, &cpu)?,
        ParamKind::QuantState,
    )
}

/// The per-output-channel scales of a symmetric int8 weight, or `None` when it is not one.
fn per_channel(q: &QuantizedTensor, cout: usize) -> Option<Vec<f32>> {
    let symmetric = q.zero_point.iter().all(|&z| z == 0);
    match q.axis {
        Some(0) if symmetric && q.scale.len() == cout => Some(q.scale.clone()),
        None if symmetric && q.scale.len() == 1 => Some(vec![q.scale[0]; cout]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Arch;
    use crate::protect::Deployed;
    use crate::quant::{FakeQuantModel, Qat};
    use safetensors::tensor::TensorView;

    /// A ResNet-20 with observers calibrated on random images, converted.
    fn deployment() -> Result<(ModelSpec, Int8Model, Tensor)> {
        let spec = ModelSpec::new(Arch::parse("resnet20")?, 10);
        let plain = PlainModel::build(spec.clone(), ParamStore::new(3, &Device::Cpu))?;
        let qat = Arc::new(Qat::new());
        let x = Tensor::randn(0f32, 1.0, (4, 3, 32, 32), &Device::Cpu)?;
        for _ in 0..2 {
            qat.observe(&plain, &x)?;
        }
        Ok((
            spec,
            Int8Model::convert(&FakeQuantModel::new(plain, qat))?,
            x,
        ))
    }

    /// The file's tensors with `edit` applied (name, dtype, shape, bytes; `None` drops it).
    fn edited(
        bytes: &[u8],
        edit: impl Fn(
            &str,
            safetensors::Dtype,
            &[usize],
            &[u8],
        ) -> Option<(safetensors::Dtype, Vec<usize>, Vec<u8>)>,
    ) -> Vec<u8> {
        let file = safetensors::SafeTensors::deserialize(bytes).expect("a valid file");
        let kept: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = file
            .tensors()
            .into_iter()
            .filter_map(|(name, t)| {
                edit(&name, t.dtype(), t.shape(), t.data()).map(|(d, s, b)| (name, d, s, b))
            })
            .collect();
        let views: Vec<(String, TensorView<'_>)> = kept
            .iter()
            .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).expect("view")))
            .collect();
        safetensors::serialize(views, None).expect("serialise")
    }

    #[test]
    fn the_int8_file_round_trips_to_the_same_logits() -> Result<()> {
        let (spec, int8, x) = deployment()?;
        let dir = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
        let path = dir.path().join("int8.safetensors");
        int8.save(&path)?;
        let back = Int8Model::load(spec, &path)?;
        let a = int8.logits(&x)?.flatten_all()?.to_vec1::<f32>()?;
        let b = back.logits(&x)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(a, b);
        // About a quarter of the f32 file: one byte per weight, and the per-channel numbers.
        let bytes = std::fs::metadata(&path)
            .map_err(|e| Error::io(&path, e))?
            .len() as usize;
        let f32_bytes = int8.model.params.to_safetensors_bytes()?.len();
        let ratio = bytes as f64 / f32_bytes as f64;
        assert!(
            (0.25..0.35).contains(&ratio),
            "int8 file {bytes} B, f32 {f32_bytes} B"
        );
        assert!(bytes >= int8.model_bytes() && bytes < int8.model_bytes() + 64 * 1024);
        Ok(())
    }

    #[test]
    fn a_file_with_unusable_int8_tensors_is_refused_naming_the_tensor() -> Result<()> {
        let (spec, int8, _) = deployment()?;
        let good = int8.to_store()?.to_safetensors_bytes()?;
        let dir = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
        let layer = "layer2.0.conv1";
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "without its scale",
                edited(&good, |n, d, s, b| {
                    (n != format!("{layer}.weight.scale")).then(|| (d, s.to_vec(), b.to_vec()))
                }),
            ),
            (
                "input scale 0",
                edited(&good, |n, d, s, b| {
                    if n == format!("{layer}.input_scale") {
                        Some((d, s.to_vec(), 0f32.to_le_bytes().to_vec()))
                    } else {
                        Some((d, s.to_vec(), b.to_vec()))
                    }
                }),
            ),
            (
                "asymmetric weights",
                edited(&good, |n, d, s, b| {
                    if n == format!("{layer}.weight.zero_point") {
                        let mut z = b.to_vec();
                        z[0] = 3;
                        Some((d, s.to_vec(), z))
                    } else {
                        Some((d, s.to_vec(), b.to_vec()))
                    }
                }),
            ),
        ];
        for (what, bytes) in cases {
            let path = dir.path().join("bad.safetensors");
            std::fs::write(&path, &bytes).map_err(|e| Error::io(&path, e))?;
            let err = Int8Model::load(spec.clone(), &path)
                .err()
                .map(|e| e.to_string());
            let msg = err.unwrap_or_else(|| panic!("a file {what} loaded"));
            assert!(msg.contains(layer), "{what}: {msg}");
        }
        Ok(())
    }
}
