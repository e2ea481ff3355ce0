//! The safetensors files of a [`ParamStore`]: save, strict load, value checks.
//!
//! An f32 store is written exactly as `safetensors.torch.save_file(model.state_dict())` writes
//! it (see the [parent module](super)). int8 tensors ([`ParamKind::Quantized`]) follow this
//! convention, which `ci/torch/load_int8.py` reads:
//!
//! - the int8 values under the parameter's own name, dtype `I8`, in the parameter's shape;
//! - `<name>.scale`, dtype `F32`, shape `[channels]` for a per-channel tensor or `[]` for a
//!   per-tensor one, and `<name>.zero_point`, dtype `I64`, of the same shape, beside it;
//! - the channel axis of a per-channel tensor, when it is not 0 (PyTorch's output-channel axis,
//!   the usual one), as `<name>.axis`, dtype `I64`, shape `[]`. (Not in the file's metadata:
//!   safetensors writes metadata in hash order, and the bytes must be deterministic.)
//!
//! Dequantised, value `i` is `(q[i] - zero_point[c]) * scale[c]` for its channel `c`, as
//! PyTorch's `torch.quantize_per_channel(...).dequantize()`. [`ParamKind::QuantState`] tensors
//! (activation scales and zero points, observer state) are ordinary F32 tensors in the file;
//! their kind is the store's, not the file's. A store without int8 tensors writes the very
//! bytes it wrote before int8 support existed.
//!
//! Loading restores the int8 tensors of a file as [`ParamKind::Quantized`] with their scales and
//! zero points, whatever the stored tensor of that name was; an f32 tensor in the file makes a
//! stored int8 tensor f32 again (with the kind its name gives, see [`ParamKind::for_name`]). A
//! `.scale`, `.zero_point` or `.axis` without its int8 tensor, or an int8 tensor without its
//! scale and zero point, is an [`Error::BadFile`] naming the tensor, as are inconsistent scales
//! (count, sign, finiteness), zero points outside the int8 range and an axis out of range.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors, View};

use super::int8::QuantizedTensor;
use super::{INT8_SUFFIXES, MAX_LISTED, ParamKind, ParamStore, is_counter};
use crate::error::{Error, Result};

/// The suffixes of the tensors that stand beside an int8 tensor in a file.
const SCALE: &str = INT8_SUFFIXES[0];
const ZERO_POINT: &str = INT8_SUFFIXES[1];
const AXIS: &str = INT8_SUFFIXES[2];

/// What loading does to one stored tensor; computed for every tensor before any changes, so
/// that nothing changes unless the whole file is valid.
enum Update {
    /// New f32 (or integer) values; a stored int8 tensor becomes f32 again.
    Values(Tensor),
    /// New int8 values, with their dequantised form for the store's f32 shadow.
    Int8(QuantizedTensor, Tensor),
}

impl ParamStore {
    /// The safetensors file content of [`ParamStore::save`]: deterministic bytes for the same
    /// values, usable as a hash of the weights.
    pub fn to_safetensors_bytes(&self) -> Result<Vec<u8>> {
        let entries = self.entries();
        let mut views = Vec::with_capacity(entries.len());
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        for (name, entry) in entries.iter() {
            match &entry.int8 {
                None => views.push((name.clone(), RawTensor::from_tensor(entry.var.as_tensor())?)),
                Some(q) => {
                    let channels = if q.axis.is_some() {
                        vec![q.scale.len()]
                    } else {
                        Vec::new()
                    };
                    let values = q.values.iter().flat_map(|v| v.to_le_bytes()).collect();
                    views.push((
                        name.clone(),
                        RawTensor::new(Dtype::I8, q.shape.clone(), values),
                    ));
                    let scale = le_bytes(q.scale.clone(), f32::to_le_bytes);
                    let zero_point = le_bytes(q.zero_point.clone(), i64::to_le_bytes);
                    views.push((
                        format!("{name}.{SCALE}"),
                        RawTensor::new(Dtype::F32, channels.clone(), scale),
                    ));
                    views.push((
                        format!("{name}.{ZERO_POINT}"),
                        RawTensor::new(Dtype::I64, channels, zero_point),
                    ));
                    if let Some(axis) = q.axis.filter(|&a| a != 0) {
                        let axis = i64::try_from(axis).unwrap_or(i64::MAX).to_le_bytes();
                        views.push((
                            format!("{name}.{AXIS}"),
                            RawTensor::new(Dtype::I64, Vec::new(), axis.to_vec()),
                        ));
                    }
                }
            }
        }
        drop(entries);
        let mut seen = BTreeSet::new();
        if let Some((name, _)) = views.iter().find(|(n, _)| !seen.insert(n.as_str())) {
            return Err(Error::BadFile {
                path: PathBuf::new(),
                message: format!(
                    "cannot serialise the parameters: tensor `{name}` is both a stored tensor and \
                     the scale, zero point or axis of an int8 tensor; rename or drop one of them"
                ),
            });
        }
        safetensors::serialize(views, Some(metadata)).map_err(|e| Error::BadFile {
            // In memory: no file to name (`save` adds its own).
            path: PathBuf::new(),
            message: format!("cannot serialise the parameters: {e}"),
        })
    }

    /// Writes every tensor to `path` as safetensors (see the module docs for the format). The
    /// write is atomic: a temporary file in the same folder, synced, then renamed over `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_safetensors_bytes().map_err(|e| e.in_file(path))?;
        crate::atomic_file::write_atomically(path, &bytes)
    }

    /// Overwrites every tensor with the tensor of the same name in the safetensors file at
    /// `path`, strictly as PyTorch's `load_state_dict`: every tensor of the model must be there
    /// with the right shape, and the file must have no others. f16, bf16 and f64 values are
    /// converted; `num_batches_tracked` may be absent (it is then reset to 0, as PyTorch does).
    /// int8 tensors are restored as such (see the module docs). Non-finite values and impossible
    /// buffers are refused (see the parent module's docs) with a [`Error::BadFile`] naming the
    /// tensor. Nothing changes unless the whole file is valid. Build the model first.
    pub fn load(&self, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        self.load_from_bytes(&bytes, path)
    }

    /// [`ParamStore::load`] from file content held in memory; `origin` names it in errors.
    pub fn load_from_bytes(&self, bytes: &[u8], origin: &Path) -> Result<()> {
        let bad = |message: String| Error::BadFile {
            path: origin.to_path_buf(),
            message,
        };
        let file = SafeTensors::deserialize(bytes)
            .map_err(|e| bad(format!("not a valid safetensors file ({e})")))?;
        let mut entries = self.entries();
        if entries.is_empty() {
            return Err(Error::Config(format!(
                "cannot load {}: no model has been built on this parameter store yet",
                origin.display()
            )));
        }
        let int8 = int8_tensors(&file, |name| entries.contains_key(name)).map_err(bad)?;
        let mut updates = Vec::with_capacity(entries.len());
        for (name, entry) in entries.iter() {
            let var = &entry.var;
            if let Some(q) = int8.get(name) {
                if !var.dtype().is_float() {
                    return Err(bad(format!(
                        "tensor `{name}` is int8 in the file, but the model's `{name}` holds {:?} \
                         values, which are never quantised",
                        var.dtype()
                    )));
                }
                if q.shape != var.dims() {
                    return Err(Error::ShapeMismatch {
                        path: origin.to_path_buf(),
                        name: name.clone(),
                        expected: var.dims().to_vec(),
                        found: q.shape.clone(),
                    });
                }
                let deq = q
                    .dequantize()?
                    .to_dtype(var.dtype())?
                    .to_device(var.device())?;
                updates.push((name.clone(), Update::Int8(q.clone(), deq)));
                continue;
            }
            let view = match file.tensor(name) {
                Ok(view) => view,
                Err(_) if is_counter(name) => {
                    let zeros = Tensor::zeros(var.shape(), var.dtype(), var.device())?;
                    updates.push((name.clone(), Update::Values(zeros)));
                    continue;
                }
                Err(_) => {
                    return Err(Error::MissingTensor {
                        path: origin.to_path_buf(),
                        name: name.clone(),
                    });
                }
            };
            let expected = var.dims();
            let found = view.shape();
            let integer = !var.dtype().is_float();
            let shape_ok = found == expected
                || (integer
                    && found.iter().product::<usize>() == expected.iter().product::<usize>());
            if !shape_ok {
                return Err(Error::ShapeMismatch {
                    path: origin.to_path_buf(),
                    name: name.clone(),
                    expected: expected.to_vec(),
                    found: found.to_vec(),
                });
            }
            let dtype = match (view.dtype(), integer) {
                (Dtype::F32, false) => DType::F32,
                (Dtype::F16, false) => DType::F16,
                (Dtype::BF16, false) => DType::BF16,
                (Dtype::F64, false) => DType::F64,
                (Dtype::I64, true) => DType::I64,
                (Dtype::I32, true) => DType::I32,
                (other, false) => {
                    return Err(bad(format!(
                        "tensor `{name}` has dtype {other:?}; expected F32, F16, BF16 or F64"
                    )));
                }
                (other, true) => {
                    return Err(bad(format!(
                        "tensor `{name}` has dtype {other:?}; expected I64"
                    )));
                }
            };
            if let Some(problem) = value_problem(name, view.dtype(), view.data()) {
                return Err(bad(problem));
            }
            let t = Tensor::from_raw_buffer(view.data(), dtype, found, &Device::Cpu)?
                .to_dtype(var.dtype())?
                .reshape(expected)?
                .to_device(var.device())?;
            updates.push((name.clone(), Update::Values(t)));
        }
        let unexpected: Vec<String> = file
            .names()
            .into_iter()
            .filter(|n| !entries.contains_key(*n) && int8_owner(n, &int8).is_none())
            .map(str::to_string)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .take(MAX_LISTED)
            .collect();
        if !unexpected.is_empty() {
            return Err(Error::UnexpectedTensors {
                path: origin.to_path_buf(),
                names: unexpected,
            });
        }
        for (name, update) in updates {
            let Some(entry) = entries.get_mut(&name) else {
                continue;
            };
            match update {
                Update::Values(t) => {
                    entry.var.set(&t)?;
                    if entry.int8.take().is_some() {
                        entry.kind = ParamKind::for_name(&name);
                    }
                }
                Update::Int8(q, deq) => {
                    entry.var.set(&deq)?;
                    entry.int8 = Some(q);
                    entry.kind = ParamKind::Quantized;
                }
            }
        }
        Ok(())
    }
}

/// The int8 tensor that file tensor `name` is the scale or zero point of, if any.
fn int8_owner<'a>(name: &'a str, int8: &BTreeMap<String, QuantizedTensor>) -> Option<&'a str> {
    INT8_SUFFIXES
        .iter()
        .filter_map(|s| name.strip_suffix(s)?.strip_suffix('.'))
        .find(|base| int8.contains_key(*base))
}

/// The int8 tensors of a file with their scales and zero points (see the module docs), by name.
/// The error names the tensor: an int8 tensor without its scale or zero point, or with
/// inconsistent ones, and a scale or zero point without its int8 tensor (unless the store has a
/// tensor of that very name, `is_stored`, which then loads as an ordinary tensor).
fn int8_tensors(
    file: &SafeTensors<'_>,
    is_stored: impl Fn(&str) -> bool,
) -> std::result::Result<BTreeMap<String, QuantizedTensor>, String> {
    let mut names: Vec<&str> = file.names();
    names.sort_unstable();
    let view = |name: &str| file.tensor(name).ok();
    let mut out = BTreeMap::new();
    for &name in &names {
        let Some(values) = view(name).filter(|v| v.dtype() == Dtype::I8) else {
            continue;
        };
        let beside = |suffix: &str, dtype: Dtype| -> std::result::Result<TensorView<'_>, String> {
            let aux = format!("{name}.{suffix}");
            let Some(v) = view(&aux) else {
                return Err(format!(
                    "int8 tensor `{name}` has no `{aux}` beside it: an int8 tensor needs its \
                     `.{SCALE}` (F32) and `.{ZERO_POINT}` (I64); the file is incomplete"
                ));
            };
            if v.dtype() != dtype {
                return Err(format!(
                    "tensor `{aux}` has dtype {:?}; the {suffix} of an int8 tensor is {dtype:?}",
                    v.dtype()
                ));
            }
            Ok(v)
        };
        let scale = beside(SCALE, Dtype::F32)?;
        let zero_point = beside(ZERO_POINT, Dtype::I64)?;
        if scale.shape() != zero_point.shape() {
            return Err(format!(
                "int8 tensor `{name}` has a scale of shape {:?} and a zero point of shape {:?}; \
                 both are [] (per tensor) or [channels]",
                scale.shape(),
                zero_point.shape()
            ));
        }
        let axis_name = format!("{name}.{AXIS}");
        let stored_axis = match view(&axis_name) {
            None => None,
            Some(v) if v.dtype() == Dtype::I64 && v.shape().is_empty() => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&v.data()[..8]);
                let a = i64::from_le_bytes(b);
                Some(
                    usize::try_from(a)
                        .map_err(|_| format!("tensor `{axis_name}` is {a}, not a channel axis"))?,
                )
            }
            Some(v) => {
                return Err(format!(
                    "tensor `{axis_name}` has dtype {:?} and shape {:?}; expected an I64 scalar",
                    v.dtype(),
                    v.shape()
                ));
            }
        };
        let axis = match scale.shape() {
            [] if stored_axis.is_some() => {
                return Err(format!(
                    "int8 tensor `{name}` has a per-tensor scale (shape []) and a channel axis \
                     `{axis_name}`; per-channel scales have shape [channels]"
                ));
            }
            [] => None,
            [_] => Some(stored_axis.unwrap_or(0)),
            other => {
                return Err(format!(
                    "int8 tensor `{name}` has a scale of shape {other:?}; expected [] (per \
                     tensor) or [channels]"
                ));
            }
        };
        let q = QuantizedTensor {
            values: values
                .data()
                .iter()
                .map(|&b| i8::from_le_bytes([b]))
                .collect(),
            shape: values.shape().to_vec(),
            scale: scale
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            zero_point: zero_point
                .data()
                .chunks_exact(8)
                .map(|c| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(c);
                    i64::from_le_bytes(b)
                })
                .collect(),
            axis,
        };
        if let Some(problem) = q.validate() {
            return Err(format!("int8 tensor `{name}`: {problem}"));
        }
        out.insert(name.to_string(), q);
    }
    for &name in &names {
        for suffix in INT8_SUFFIXES {
            if let Some(base) = name.strip_suffix(suffix).and_then(|b| b.strip_suffix('.'))
                && !out.contains_key(base)
                && !is_stored(name)
            {
                let what = match view(base) {
                    Some(v) => format!("the file's `{base}` is {:?}, not I8", v.dtype()),
                    None => format!("the file has no `{base}`"),
                };
                return Err(format!(
                    "tensor `{name}` is the {suffix} of an int8 tensor `{base}`, but {what}; the \
                     file is corrupt or was edited"
                ));
            }
        }
    }
    Ok(out)
}

/// Checks every tensor of a safetensors file for values no trained model can hold (NaN or
/// infinite values, a negative batch-norm running variance or batch counter), without building
/// a model: for callers that want to refuse a broken file before expensive work. `origin` names
/// the file in errors; [`ParamStore::load`] makes the same checks.
pub fn check_values(bytes: &[u8], origin: &Path) -> Result<()> {
    let file = SafeTensors::deserialize(bytes).map_err(|e| Error::BadFile {
        path: origin.to_path_buf(),
        message: format!("not a valid safetensors file ({e})"),
    })?;
    let mut tensors = file.tensors();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, view) in tensors {
        if let Some(problem) = value_problem(&name, view.dtype(), view.data()) {
            return Err(Error::BadFile {
                path: origin.to_path_buf(),
                message: problem,
            });
        }
    }
    Ok(())
}

/// What makes the stored values of tensor `name` impossible for a trained model, if anything:
/// a NaN or infinite value anywhere, a negative value in a batch-norm running variance or batch
/// counter. `data` is the little-endian content of a `dtype` tensor as safetensors stores it;
/// other dtypes than floats and integers pass.
fn value_problem(name: &str, dtype: Dtype, data: &[u8]) -> Option<String> {
    let last = name.rsplit('.').next().unwrap_or(name);
    let must_be_non_negative = matches!(last, "running_var" | "num_batches_tracked");
    let values: Box<dyn Iterator<Item = f64> + '_> = match dtype {
        Dtype::F32 => Box::new(
            data.chunks_exact(4)
                .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        ),
        Dtype::F64 => Box::new(data.chunks_exact(8).map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            f64::from_le_bytes(b)
        })),
        Dtype::F16 => Box::new(
            data.chunks_exact(2)
                .map(|c| f64::from(f16_to_f32(u16::from_le_bytes([c[0], c[1]])))),
        ),
        Dtype::BF16 => Box::new(data.chunks_exact(2).map(|c| {
            f64::from(f32::from_bits(
                u32::from(u16::from_le_bytes([c[0], c[1]])) << 16,
            ))
        })),
        Dtype::I64 if must_be_non_negative => Box::new(data.chunks_exact(8).map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            i64::from_le_bytes(b) as f64
        })),
        Dtype::I32 if must_be_non_negative => Box::new(
            data.chunks_exact(4)
                .map(|c| f64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        ),
        _ => return None,
    };
    let (mut non_finite, mut negative, mut total) = (0usize, 0usize, 0usize);
    let (mut first_non_finite, mut first_negative) = (None, None);
    for (i, v) in values.enumerate() {
        total += 1;
        if !v.is_finite() {
            non_finite += 1;
            first_non_finite.get_or_insert((i, v));
        } else if must_be_non_negative && v < 0.0 {
            negative += 1;
            first_negative.get_or_insert((i, v));
        }
    }
    if let Some((i, v)) = first_non_finite {
        return Some(format!(
            "tensor `{name}` holds {non_finite} non-finite value{} of {total} (the first, at index \
             {i}, is {v}); the file is corrupt or was saved from a diverged training run",
            if non_finite == 1 { "" } else { "s" }
        ));
    }
    let (i, v) = first_negative?;
    let what = if last == "running_var" {
        "a batch-norm running variance cannot be negative"
    } else {
        "a batch counter cannot be negative"
    };
    Some(format!(
        "tensor `{name}` holds {negative} negative value{} of {total} (the first, at index {i}, \
         is {v}): {what}; the file is corrupt or was not written from a trained model",
        if negative == 1 { "" } else { "s" }
    ))
}

/// An IEEE half-precision value, widened exactly.
fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0f32 } else { 1.0 };
    let exponent = i32::from((h >> 10) & 0x1f);
    let mantissa = f32::from(h & 0x3ff);
    match exponent {
        0 => sign * mantissa * 2f32.powi(-24),
        0x1f if mantissa == 0.0 => sign * f32::INFINITY,
        0x1f => f32::NAN,
        e => sign * (1.0 + mantissa / 1024.0) * 2f32.powi(e - 15),
    }
}

/// A tensor's bytes on the host, for safetensors serialisation.
struct RawTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl RawTensor {
    /// Bytes already in safetensors layout (little-endian, row-major).
    fn new(dtype: Dtype, shape: Vec<usize>, data: Vec<u8>) -> Self {
        Self { dtype, shape, data }
    }

    /// f64 and i64 keep their dtype; every other dtype is written as f32.
    fn from_tensor(t: &Tensor) -> candle_core::Result<Self> {
        let flat = t.flatten_all()?.to_device(&Device::Cpu)?;
        let (dtype, data) = match t.dtype() {
            DType::F64 => (
                Dtype::F64,
                le_bytes(flat.to_vec1::<f64>()?, f64::to_le_bytes),
            ),
            DType::I64 => (
                Dtype::I64,
                le_bytes(flat.to_vec1::<i64>()?, i64::to_le_bytes),
            ),
            _ => (
                Dtype::F32,
                le_bytes(
                    flat.to_dtype(DType::F32)?.to_vec1::<f32>()?,
                    f32::to_le_bytes,
                ),
            ),
        };
        Ok(Self {
            dtype,
            shape: t.dims().to_vec(),
            data,
        })
    }
}

fn le_bytes<T: Copy, const N: usize>(values: Vec<T>, f: fn(T) -> [u8; N]) -> Vec<u8> {
    values.into_iter().flat_map(f).collect()
}

impl View for RawTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }

    fn data_len(&self) -> usize {
        self.data.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::Init;

    #[test]
    fn bad_bytes_are_bad_file() -> candle_core::Result<()> {
        let store = ParamStore::new(0, &Device::Cpu);
        store.var_builder().get(3, "a")?;
        let err = store.load_from_bytes(b"definitely not safetensors", Path::new("x.safetensors"));
        assert!(matches!(err, Err(Error::BadFile { .. })), "{err:?}");
        let err = store.load_from_bytes(&[], Path::new("x.safetensors"));
        assert!(matches!(err, Err(Error::BadFile { .. })), "{err:?}");
        Ok(())
    }

    /// A safetensors file of `(name, dtype, shape, little-endian bytes)`.
    fn file(tensors: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)>) -> Vec<u8> {
        let views = tensors
            .into_iter()
            .map(|(n, dtype, shape, data)| (n.to_string(), RawTensor { dtype, shape, data }));
        safetensors::serialize(views, None).unwrap()
    }

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// A store holding `conv.weight` (4 values) and `bn.running_var` (3 values).
    fn two_tensor_store() -> candle_core::Result<ParamStore> {
        let store = ParamStore::new(0, &Device::Cpu);
        store
            .var_builder()
            .get_with_hints(4, "conv.weight", Init::Const(0.5))?;
        store
            .var_builder()
            .get_with_hints(3, "bn.running_var", Init::Const(1.0))?;
        Ok(store)
    }

    fn load_err(store: &ParamStore, bytes: &[u8]) -> String {
        match store.load_from_bytes(bytes, Path::new("dir/w.safetensors")) {
            Err(e @ Error::BadFile { .. }) => e.to_string(),
            other => panic!("expected a bad-file error, got {other:?}"),
        }
    }

    #[test]
    fn non_finite_weights_are_refused_naming_tensor_and_file() -> candle_core::Result<()> {
        let store = two_tensor_store()?;
        let var = f32s(&[1.0, 1.0, 1.0]);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let bytes = file(vec![
                (
                    "conv.weight",
                    Dtype::F32,
                    vec![4],
                    f32s(&[0.1, bad, 0.2, bad]),
                ),
                ("bn.running_var", Dtype::F32, vec![3], var.clone()),
            ]);
            let err = load_err(&store, &bytes);
            assert!(
                err.contains("dir/w.safetensors") && err.contains("`conv.weight`"),
                "{err}"
            );
            assert!(err.contains("2 non-finite values of 4"), "{err}");
            assert!(err.contains("index 1"), "{err}");
            let early = check_values(&bytes, Path::new("dir/w.safetensors"));
            assert!(matches!(early, Err(Error::BadFile { .. })), "{early:?}");
        }
        // Nothing was loaded.
        let kept = store.get("conv.weight").map(|v| v.to_vec1::<f32>());
        assert_eq!(kept.transpose()?, Some(vec![0.5; 4]));
        // Half-precision files too: f16 NaN and infinities, a bf16 NaN (1.0 first).
        let halves = [
            (Dtype::F16, 0x3c00u16, 0x7e00u16),
            (Dtype::F16, 0x3c00, 0x7c00),
            (Dtype::F16, 0x3c00, 0xfc00),
            (Dtype::BF16, 0x3f80, 0x7fc0),
            (Dtype::BF16, 0x3f80, 0x7f80),
        ];
        for (dtype, one, bad) in halves {
            let data: Vec<u8> = [one, bad, 0, 0]
                .iter()
                .flat_map(|b| b.to_le_bytes())
                .collect();
            let bytes = file(vec![
                ("conv.weight", dtype, vec![4], data),
                ("bn.running_var", Dtype::F32, vec![3], var.clone()),
            ]);
            let err = load_err(&store, &bytes);
            assert!(err.contains("`conv.weight`"), "{dtype:?} {bad:#x}: {err}");
        }
        Ok(())
    }

    #[test]
    fn impossible_buffers_are_refused() -> Result<()> {
        let store = two_tensor_store()?;
        let weight = (
            "conv.weight",
            Dtype::F32,
            vec![4],
            f32s(&[0.1, -2.0, 0.2, 3.0]),
        );
        let bytes = file(vec![
            weight.clone(),
            (
                "bn.running_var",
                Dtype::F32,
                vec![3],
                f32s(&[1.0, -0.25, 2.0]),
            ),
        ]);
        let err = load_err(&store, &bytes);
        assert!(
            err.contains("`bn.running_var`") && err.contains("running variance cannot be negative"),
            "{err}"
        );
        assert!(err.contains("-0.25") && err.contains("index 1"), "{err}");
        // Zero (and negative zero) variances are possible: a channel that never fired.
        let bytes = file(vec![
            weight,
            (
                "bn.running_var",
                Dtype::F32,
                vec![3],
                f32s(&[0.0, -0.0, 2.0]),
            ),
        ]);
        store.load_from_bytes(&bytes, Path::new("w.safetensors"))?;
        assert_eq!(
            store
                .get("conv.weight")
                .map(|v| v.to_vec1::<f32>())
                .transpose()?,
            Some(vec![0.1, -2.0, 0.2, 3.0])
        );
        // A negative batch counter.
        let counter = (-3i64).to_le_bytes().to_vec();
        let problem = value_problem("bn.num_batches_tracked", Dtype::I64, &counter);
        assert!(
            problem
                .as_deref()
                .is_some_and(|p| p.contains("batch counter cannot be negative")),
            "{problem:?}"
        );
        assert_eq!(
            value_problem("bn.num_batches_tracked", Dtype::I64, &5i64.to_le_bytes()),
            None
        );
        // Negative values elsewhere are ordinary weights.
        assert_eq!(
            value_problem("bn.running_mean", Dtype::F32, &f32s(&[-1.0])),
            None
        );
        Ok(())
    }

    #[test]
    fn half_precision_is_widened_exactly() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0xfc00), f32::NEG_INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
    }

    #[test]
    fn first_non_finite_names_the_tensor() -> Result<()> {
        let store = two_tensor_store()?;
        assert_eq!(store.first_non_finite()?, None);
        if let Some(var) = store.get("bn.running_var") {
            var.set(&Tensor::new(&[1.0f32, f32::INFINITY, 1.0], &Device::Cpu)?)?;
        }
        assert_eq!(store.first_non_finite()?, Some("bn.running_var".into()));
        Ok(())
    }

    #[test]
    fn loading_into_an_empty_store_is_a_config_error() {
        let store = ParamStore::new(0, &Device::Cpu);
        let err = store.load_from_bytes(&[], Path::new("x.safetensors"));
        assert!(matches!(err, Err(Error::BadFile { .. })));
        let other = ParamStore::new(0, &Device::Cpu);
        let bytes = other.to_safetensors_bytes();
        assert!(bytes.is_ok());
        if let Ok(bytes) = bytes {
            let err = store.load_from_bytes(&bytes, Path::new("x.safetensors"));
            assert!(matches!(err, Err(Error::Config(_))), "{err:?}");
        }
    }
}
