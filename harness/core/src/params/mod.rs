//! Parameters: the named variables of one model, their deterministic initialisation, and their
//! PyTorch-compatible safetensors files.
//!
//! A [`ParamStore`] owns every tensor of a model under its PyTorch state-dict name. Models are
//! built through [`ParamStore::var_builder`]; a variable the model asks for and the store lacks is
//! created from a ChaCha20 stream keyed by the store's seed and selected by the parameter's name,
//! so the same seed gives bit-identical weights on every run, on every device and whatever the
//! order in which layers are built. The values are drawn on the host in f64 and rounded once to
//! the variable's dtype; the uniform draws the zoo uses (PyTorch's default initialisation, see
//! [`crate::nn`]) need no transcendental function, so they are identical on every platform too.
//!
//! Names ending in `running_mean`, `running_var` or `num_batches_tracked` are buffers
//! (non-trainable state, as in PyTorch); everything else is trainable.
//!
//! Loading refuses values no trained model can hold, naming the tensor and the file: NaN or
//! infinite values (a diverged run or a corrupt file would otherwise evaluate to "accuracy 0,
//! loss NaN" and be protected, attacked and tabulated as if it were a model), a negative
//! batch-norm running variance, a negative batch counter.
//!
//! Files are safetensors with PyTorch's state-dict names and layouts (convolutions O x I x kH x kW,
//! linear out x in), f32 values, and `num_batches_tracked` as an i64 scalar of shape `[]`, as
//! `safetensors.torch.save_file(model.state_dict())` writes them; a PyTorch module of the same
//! architecture (ci/torch/models.py) loads them with a strict `load_state_dict`, and the other way
//! round.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use candle_core::{DType, Device, Shape, Tensor, Var, bail};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use safetensors::{Dtype, SafeTensors, View};

use crate::error::{Error, Result};

/// Suffixes of the non-trainable tensors (batch-norm state).
const BUFFER_SUFFIXES: [&str; 3] = ["running_mean", "running_var", "num_batches_tracked"];

/// How many unknown names an [`Error::UnexpectedTensors`] lists.
const MAX_LISTED: usize = 8;

/// Whether `name` is a buffer (batch-norm running statistics or batch counter) rather than a
/// trainable parameter.
pub fn is_buffer(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    BUFFER_SUFFIXES.contains(&last)
}

fn is_counter(name: &str) -> bool {
    name == "num_batches_tracked" || name.ends_with(".num_batches_tracked")
}

struct Inner {
    seed: u64,
    device: Device,
    vars: Mutex<BTreeMap<String, Var>>,
}

/// The named variables of one model (trainable parameters and buffers), with seeded
/// initialisation and strict PyTorch-compatible load and save.
///
/// Cloning gives another handle to the same variables (training and evaluation can share one
/// model); [`ParamStore::deep_copy`] makes independent ones. A store holds one model:
/// [`crate::zoo::build`] refuses to build a different model on a store that already holds one.
#[derive(Clone)]
pub struct ParamStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ParamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParamStore")
            .field("seed", &self.inner.seed)
            .field("device", &self.inner.device)
            .field("tensors", &self.len())
            .finish()
    }
}

impl ParamStore {
    /// An empty store whose missing variables will be initialised from `seed` on `device`.
    pub fn new(seed: u64, device: &Device) -> Self {
        Self {
            inner: Arc::new(Inner {
                seed,
                device: device.clone(),
                vars: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// The initialisation seed.
    pub fn seed(&self) -> u64 {
        self.inner.seed
    }

    /// Where the variables live.
    pub fn device(&self) -> &Device {
        &self.inner.device
    }

    fn vars(&self) -> MutexGuard<'_, BTreeMap<String, Var>> {
        // A panic elsewhere while holding the lock cannot leave the map half-written (every
        // mutation is a single insert), so a poisoned lock is still usable.
        self.inner
            .vars
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// An f32 builder on the store's device that returns the stored variable for a name and
    /// creates (seeded) the ones that are missing. Models built through it share the store's
    /// variables: training updates them, [`ParamStore::load`] overwrites them in place.
    pub fn var_builder(&self) -> VarBuilder<'static> {
        self.builder(None)
    }

    /// A builder that only hands out existing variables (a missing name is an error) and records
    /// the names it handed out, so a caller can check that a model uses exactly the stored set.
    pub(crate) fn existing_var_builder(
        &self,
    ) -> (VarBuilder<'static>, Arc<Mutex<BTreeSet<String>>>) {
        let used = Arc::new(Mutex::new(BTreeSet::new()));
        (self.builder(Some(used.clone())), used)
    }

    fn builder(&self, existing_only: Option<Arc<Mutex<BTreeSet<String>>>>) -> VarBuilder<'static> {
        let backend = SeededBackend {
            store: self.clone(),
            existing_only,
        };
        VarBuilder::from_backend(Box::new(backend), DType::F32, self.inner.device.clone())
    }

    /// Trainable variables (everything but buffers), sorted by name: what an optimiser updates.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        self.vars()
            .iter()
            .filter(|(name, _)| !is_buffer(name))
            .map(|(name, var)| (name.clone(), var.clone()))
            .collect()
    }

    /// The non-trainable state (batch-norm running statistics and batch counters), sorted by
    /// name. The tensors share storage with the store: they show later in-place updates.
    pub fn buffers(&self) -> Vec<(String, Tensor)> {
        self.vars()
            .iter()
            .filter(|(name, _)| is_buffer(name))
            .map(|(name, var)| (name.clone(), var.as_tensor().clone()))
            .collect()
    }

    /// Every tensor name (parameters and buffers), sorted.
    pub fn names(&self) -> Vec<String> {
        self.vars().keys().cloned().collect()
    }

    /// The variable called `name`, to read or overwrite (`Var::set`) one tensor.
    pub fn get(&self, name: &str) -> Option<Var> {
        self.vars().get(name).cloned()
    }

    /// Number of tensors (parameters and buffers).
    pub fn len(&self) -> usize {
        self.vars().len()
    }

    /// Whether no model has been built on this store yet.
    pub fn is_empty(&self) -> bool {
        self.vars().is_empty()
    }

    /// Number of trainable scalars, as PyTorch's `sum(p.numel() for p in model.parameters())`.
    pub fn num_parameters(&self) -> usize {
        self.vars()
            .iter()
            .filter(|(name, _)| !is_buffer(name))
            .map(|(_, var)| var.elem_count())
            .sum()
    }

    /// The name of the first tensor (in name order) holding a NaN or an infinite value, if any:
    /// the trainer's once-per-epoch divergence check, run on the tensors' device (one small
    /// reduction and one scalar read per tensor, no copy of the weights to the host).
    pub fn first_non_finite(&self) -> Result<Option<String>> {
        let vars = self.vars();
        for (name, var) in vars.iter() {
            let t = var.as_tensor();
            if !t.dtype().is_float() {
                continue;
            }
            // x - x is 0 for every finite x and NaN for NaN and ±inf; a sum of zeros cannot
            // overflow, so the sum is NaN exactly when some value is not finite.
            let probe = t
                .sub(t)?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
            if !probe.is_finite() {
                return Ok(Some(name.clone()));
            }
        }
        Ok(None)
    }

    /// Removes every variable (used when a build fails half-way on a fresh store).
    pub(crate) fn clear(&self) {
        self.vars().clear();
    }

    /// An independent store with copies of every variable, on the same device and with the same
    /// seed: a victim's weights that a defence or attack may change without touching the original.
    pub fn deep_copy(&self) -> Result<ParamStore> {
        let copy = ParamStore::new(self.inner.seed, &self.inner.device);
        {
            let src = self.vars();
            let mut dst = copy.vars();
            for (name, var) in src.iter() {
                let t = var.as_tensor().copy()?;
                dst.insert(name.clone(), Var::from_tensor(&t)?);
            }
        }
        Ok(copy)
    }

    /// The safetensors file content of [`ParamStore::save`]: deterministic bytes for the same
    /// values, usable as a hash of the weights.
    pub fn to_safetensors_bytes(&self) -> Result<Vec<u8>> {
        let vars = self.vars();
        let mut views = Vec::with_capacity(vars.len());
        for (name, var) in vars.iter() {
            views.push((name.clone(), RawTensor::from_tensor(var.as_tensor())?));
        }
        drop(vars);
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
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

    /// Overwrites every variable with the tensor of the same name in the safetensors file at
    /// `path`, strictly as PyTorch's `load_state_dict`: every tensor of the model must be there
    /// with the right shape, and the file must have no others. f16, bf16 and f64 values are
    /// converted; `num_batches_tracked` may be absent (it is then reset to 0, as PyTorch does).
    /// Non-finite values and impossible buffers are refused (see the module docs) with a
    /// [`Error::BadFile`] naming the tensor. Nothing changes unless the whole file is valid.
    /// Build the model first.
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
        let vars = self.vars();
        if vars.is_empty() {
            return Err(Error::Config(format!(
                "cannot load {}: no model has been built on this parameter store yet",
                origin.display()
            )));
        }
        let mut updates = Vec::with_capacity(vars.len());
        for (name, var) in vars.iter() {
            let view = match file.tensor(name) {
                Ok(view) => view,
                Err(_) if is_counter(name) => {
                    updates.push((var, Tensor::zeros(var.shape(), var.dtype(), var.device())?));
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
            updates.push((var, t));
        }
        let unexpected: Vec<String> = file
            .names()
            .into_iter()
            .filter(|n| !vars.contains_key(*n))
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
        for (var, t) in updates {
            var.set(&t)?;
        }
        Ok(())
    }
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

/// The `VarBuilder` backend of a [`ParamStore`]: existing variables by name, missing ones created
/// from the seeded stream (unless `existing_only`, which also records what was handed out).
struct SeededBackend {
    store: ParamStore,
    existing_only: Option<Arc<Mutex<BTreeSet<String>>>>,
}

impl SimpleBackend for SeededBackend {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut vars = self.store.vars();
        if let Some(var) = vars.get(name) {
            if var.shape() != &shape {
                bail!(
                    "parameter `{name}` has shape {:?} in the store, the model asks for {:?}",
                    var.dims(),
                    shape.dims()
                )
            }
            if let Some(used) = &self.existing_only {
                used.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(name.to_string());
            }
            return Ok(var.as_tensor().clone());
        }
        if self.existing_only.is_some() {
            bail!("the parameter store holds a different model: it has no `{name}`")
        }
        let values = init_values(self.store.inner.seed, name, &shape, init);
        let t = Tensor::from_vec(values, shape, &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(dev)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        vars.insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        match self.store.vars().get(name) {
            Some(var) => Ok(var.as_tensor().clone()),
            None => bail!("the parameter store has no `{name}`"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.store.vars().contains_key(name)
    }
}

/// 64-bit FNV-1a: a stable hash of a parameter name (std's hashers may change between releases).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The random stream of one parameter: ChaCha20 keyed by the seed, on the stream picked by the
/// name, so values do not depend on the order in which parameters are created.
fn rng_for(seed: u64, name: &str) -> ChaCha20Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..24].copy_from_slice(b"protbench-params");
    let mut rng = ChaCha20Rng::from_seed(key);
    rng.set_stream(fnv1a64(name.as_bytes()));
    rng
}

/// The initial values of `name`, following candle's `Init` with a seeded stream.
fn init_values(seed: u64, name: &str, shape: &Shape, init: Init) -> Vec<f64> {
    let n = shape.elem_count();
    let uniform = |lo: f64, up: f64| -> Vec<f64> {
        let mut rng = rng_for(seed, name);
        (0..n)
            .map(|_| lo + (up - lo) * rng.random::<f64>())
            .collect()
    };
    let normal = |mean: f64, std: f64| -> Vec<f64> {
        let mut rng = rng_for(seed, name);
        (0..n)
            .map(|_| mean + std * rng.sample::<f64, _>(rand_distr::StandardNormal))
            .collect()
    };
    match init {
        Init::Const(v) => vec![v; n],
        Init::Uniform { lo, up } => uniform(lo, up),
        Init::Randn { mean, stdev } => normal(mean, stdev),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let fan = fan.for_shape(shape).max(1);
            let std = non_linearity.gain() / (fan as f64).sqrt();
            match dist {
                candle_nn::init::NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    uniform(-bound, bound)
                }
                candle_nn::init::NormalOrUniform::Normal => normal(0.0, std),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_classified_by_suffix() {
        assert!(is_buffer("bn1.running_mean"));
        assert!(is_buffer("layer1.0.bn2.running_var"));
        assert!(is_buffer("features.1.num_batches_tracked"));
        assert!(!is_buffer("bn1.weight"));
        assert!(!is_buffer("running_mean_weight"));
        assert!(is_counter("bn.num_batches_tracked"));
        assert!(!is_counter("bn.running_mean"));
    }

    #[test]
    fn init_is_order_independent_and_seeded() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let init = Init::Uniform { lo: -0.5, up: 0.5 };
        let a = ParamStore::new(7, &dev);
        let va = a.var_builder();
        let x1 = va.get_with_hints((4, 3), "x", init)?;
        let y1 = va.get_with_hints(5, "y", init)?;
        let b = ParamStore::new(7, &dev);
        let vb = b.var_builder();
        let y2 = vb.get_with_hints(5, "y", init)?;
        let x2 = vb.get_with_hints((4, 3), "x", init)?;
        assert_eq!(x1.to_vec2::<f32>()?, x2.to_vec2::<f32>()?);
        assert_eq!(y1.to_vec1::<f32>()?, y2.to_vec1::<f32>()?);
        let c = ParamStore::new(8, &dev);
        let x3 = c.var_builder().get_with_hints((4, 3), "x", init)?;
        assert_ne!(x1.to_vec2::<f32>()?, x3.to_vec2::<f32>()?);
        // Different names draw different values under one seed.
        let z = a.var_builder().get_with_hints((4, 3), "z", init)?;
        assert_ne!(x1.to_vec2::<f32>()?, z.to_vec2::<f32>()?);
        for v in x1.flatten_all()?.to_vec1::<f32>()? {
            assert!((-0.5..0.5).contains(&v));
        }
        Ok(())
    }

    #[test]
    fn uniform_init_has_the_right_moments() -> candle_core::Result<()> {
        let store = ParamStore::new(0, &Device::Cpu);
        let t =
            store
                .var_builder()
                .get_with_hints(20_000, "w", Init::Uniform { lo: -1.0, up: 1.0 })?;
        let mean = t.mean_all()?.to_scalar::<f32>()?;
        let var = t.sqr()?.mean_all()?.to_scalar::<f32>()?;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var - 1.0 / 3.0).abs() < 0.01, "var {var}");
        Ok(())
    }

    #[test]
    fn existing_builder_refuses_new_names_and_records_use() -> candle_core::Result<()> {
        let store = ParamStore::new(0, &Device::Cpu);
        store.var_builder().get(3, "a")?;
        let (vb, used) = store.existing_var_builder();
        vb.get(3, "a")?;
        assert!(vb.get(3, "b").is_err());
        assert!(vb.get(4, "a").is_err());
        assert_eq!(used.lock().unwrap_or_else(PoisonError::into_inner).len(), 1);
        assert_eq!(store.names(), vec!["a".to_string()]);
        Ok(())
    }

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
