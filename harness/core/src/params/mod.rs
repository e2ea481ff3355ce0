//! Parameters: the named tensors of one model, their kinds, their deterministic initialisation,
//! and their PyTorch-compatible safetensors files.
//!
//! A [`ParamStore`] owns every tensor of a model under its PyTorch state-dict name. Models are
//! built through [`ParamStore::var_builder`]; a variable the model asks for and the store lacks is
//! created from a ChaCha20 stream keyed by the store's seed and selected by the parameter's name,
//! so the same seed gives bit-identical weights on every run, on every device and whatever the
//! order in which layers are built. The values are drawn on the host in f64 and rounded once to
//! the variable's dtype; the uniform draws the zoo uses (PyTorch's default initialisation, see
//! [`crate::nn`]) need no transcendental function, so they are identical on every platform too.
//!
//! Every tensor has a [`ParamKind`], recorded in the store when the tensor is created and changed
//! only on request: trainable parameters, buffers (non-trainable state), quantisation state, and
//! int8 ([`int8`]) weights. A tensor the builder creates gets its kind from its name, as in
//! PyTorch: names ending in `running_mean`, `running_var` or `num_batches_tracked` are buffers,
//! everything else is trainable ([`ParamKind::for_name`]). Protection schemes and attacks that
//! add state or quantise weights say so explicitly ([`ParamStore::insert`],
//! [`ParamStore::set_kind`], [`ParamStore::quantize`]), and a party holding part of a model keeps
//! the tensors it holds ([`ParamStore::retain`]).
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
//! round. int8 tensors are stored as I8 values with their scales and zero points beside them
//! (`<name>.scale`, `<name>.zero_point`, `<name>.axis`; the convention is in [`safetensors_io`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub mod int8;
pub mod safetensors_io;
mod seeded;

use seeded::SeededBackend;

pub use int8::{QuantizedTensor, quantize_per_channel, quantize_per_tensor};
pub use safetensors_io::check_values;

/// Suffixes of the non-trainable tensors (batch-norm state).
const BUFFER_SUFFIXES: [&str; 3] = ["running_mean", "running_var", "num_batches_tracked"];

/// How many unknown names an [`Error::UnexpectedTensors`] lists.
const MAX_LISTED: usize = 8;

/// What files keep beside an int8 tensor `<name>`, as `<name>.<suffix>` (see [`safetensors_io`]):
/// its scales, zero points and (when not 0) channel axis.
const INT8_SUFFIXES: [&str; 3] = ["scale", "zero_point", "axis"];

/// Whether `name` is a buffer (batch-norm running statistics or batch counter) rather than a
/// trainable parameter, by its name alone: the kind the builder gives a tensor it creates.
pub fn is_buffer(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    BUFFER_SUFFIXES.contains(&last)
}

fn is_counter(name: &str) -> bool {
    name == "num_batches_tracked" || name.ends_with(".num_batches_tracked")
}

/// What a stored tensor is, recorded per tensor so that optimisers, protections and attacks ask
/// the store instead of guessing from names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamKind {
    /// A floating-point parameter an optimiser updates ([`ParamStore::trainable`]).
    Trainable,
    /// Non-trainable model state such as batch-norm running statistics and batch counters
    /// ([`ParamStore::buffers`]).
    Buffer,
    /// Quantisation state: scales and zero points of activations, observer statistics. Saved
    /// and loaded as f32, neither trained nor counted as a parameter.
    QuantState,
    /// An int8 weight ([`QuantizedTensor`]); read it with [`ParamStore::quantized`].
    Quantized,
}

impl ParamKind {
    /// The kind a tensor created by [`ParamStore::var_builder`] gets from its name: a buffer if
    /// [`is_buffer`], trainable otherwise (PyTorch's split of a state dict).
    pub fn for_name(name: &str) -> Self {
        if is_buffer(name) {
            ParamKind::Buffer
        } else {
            ParamKind::Trainable
        }
    }
}

/// One stored tensor.
#[derive(Clone)]
struct Entry {
    kind: ParamKind,
    /// The values models compute with: the tensor itself, or for an int8 tensor its dequantised
    /// values (updated in place, so a model built on the store runs what the store holds).
    var: Var,
    /// The int8 form; `Some` exactly when `kind` is [`ParamKind::Quantized`].
    int8: Option<QuantizedTensor>,
}

impl Entry {
    fn new(var: Var, kind: ParamKind) -> Self {
        Self {
            kind,
            var,
            int8: None,
        }
    }
}

struct Inner {
    seed: u64,
    device: Device,
    entries: Mutex<BTreeMap<String, Entry>>,
}

/// The named tensors of one model (trainable parameters, buffers, quantisation state, int8
/// weights), with seeded initialisation and strict PyTorch-compatible load and save.
///
/// Cloning gives another handle to the same tensors (training and evaluation can share one
/// model); [`ParamStore::deep_copy`] makes independent ones. A store holds one model:
/// [`crate::zoo::build`] refuses to build a different model on a store that already holds one.
///
/// An int8 tensor keeps its dequantised values beside its int8 form: models built on the store
/// (before or after it was quantised or loaded) compute with them, so a quantised store runs
/// the dequantised model. Quantise after training: an optimiser holding the variable from an
/// earlier [`ParamStore::trainable`] would move the dequantised values away from the int8 ones.
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

/// A [`Error::Param`] about tensor `name`.
fn param_error(name: &str, problem: impl Into<String>) -> Error {
    Error::Param {
        name: name.to_string(),
        problem: problem.into(),
    }
}

impl ParamStore {
    /// An empty store whose missing variables will be initialised from `seed` on `device`.
    pub fn new(seed: u64, device: &Device) -> Self {
        Self {
            inner: Arc::new(Inner {
                seed,
                device: device.clone(),
                entries: Mutex::new(BTreeMap::new()),
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

    fn entries(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        // A panic elsewhere while holding the lock cannot leave the map half-written (every
        // mutation is a single insert, remove or field write), so a poisoned lock is still usable.
        self.inner
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// An f32 builder on the store's device that returns the stored variable for a name and
    /// creates (seeded) the ones that are missing, with the kind their name gives
    /// ([`ParamKind::for_name`]). Models built through it share the store's variables: training
    /// updates them, [`ParamStore::load`] overwrites them in place.
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

    /// The tensors of one kind with their variables, sorted by name.
    fn vars_of(&self, kind: ParamKind) -> Vec<(String, Var)> {
        self.entries()
            .iter()
            .filter(|(_, e)| e.kind == kind)
            .map(|(name, e)| (name.clone(), e.var.clone()))
            .collect()
    }

    /// The [`ParamKind::Trainable`] variables, sorted by name: what an optimiser updates.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        self.vars_of(ParamKind::Trainable)
    }

    /// The [`ParamKind::Buffer`] tensors (batch-norm running statistics and batch counters),
    /// sorted by name. The tensors share storage with the store: they show later in-place updates.
    pub fn buffers(&self) -> Vec<(String, Tensor)> {
        self.vars_of(ParamKind::Buffer)
            .into_iter()
            .map(|(name, var)| (name, var.as_tensor().clone()))
            .collect()
    }

    /// Every tensor name (all kinds), sorted.
    pub fn names(&self) -> Vec<String> {
        self.entries().keys().cloned().collect()
    }

    /// The recorded kind of tensor `name`, or `None` if the store has no such tensor.
    pub fn kind(&self, name: &str) -> Option<ParamKind> {
        self.entries().get(name).map(|e| e.kind)
    }

    /// The names of the tensors of kind `kind`, sorted: e.g. the int8 weights to ship, or the
    /// buffers a protection leaves in the clear.
    pub fn names_of(&self, kind: ParamKind) -> Vec<String> {
        self.entries()
            .iter()
            .filter(|(_, e)| e.kind == kind)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Records that tensor `name` is of kind `kind` (a weight a defence freezes becomes a
    /// buffer, a scale it adds is quantisation state). Refused, with an [`Error::Param`] naming
    /// the tensor: an unknown name, integer values made trainable, and any change to or from
    /// [`ParamKind::Quantized`] (use [`ParamStore::quantize`] to quantise, and
    /// [`ParamStore::insert`] with the dequantised values to make an int8 tensor f32 again).
    pub fn set_kind(&self, name: &str, kind: ParamKind) -> Result<()> {
        let mut entries = self.entries();
        let Some(entry) = entries.get_mut(name) else {
            return Err(param_error(name, "is not in the store"));
        };
        if entry.kind == kind {
            return Ok(());
        }
        if kind == ParamKind::Quantized {
            return Err(param_error(
                name,
                "cannot become int8 by a change of kind; quantise it with `ParamStore::quantize`",
            ));
        }
        if entry.kind == ParamKind::Quantized {
            return Err(param_error(
                name,
                "is int8; insert its dequantised values with `ParamStore::insert` to make it f32",
            ));
        }
        if kind == ParamKind::Trainable && !entry.var.dtype().is_float() {
            return Err(param_error(
                name,
                format!(
                    "holds {:?} values, which cannot be trained; only floating-point tensors are \
                     trainable",
                    entry.var.dtype()
                ),
            ));
        }
        entry.kind = kind;
        Ok(())
    }

    /// Stores `tensor` (copied to the store's device) under `name` with kind `kind`: state a
    /// protection adds, or new values for an existing tensor (overwritten in place, so models
    /// built on the store see them; an int8 tensor becomes f32 again). Refused, with an
    /// [`Error::Param`] naming the tensor: an existing tensor of another shape or dtype, kind
    /// [`ParamKind::Quantized`] (use [`ParamStore::insert_quantized`]), integer values made
    /// trainable, and a name that a stored int8 tensor's `.scale` or `.zero_point` takes in files.
    pub fn insert(&self, name: &str, tensor: &Tensor, kind: ParamKind) -> Result<()> {
        if kind == ParamKind::Quantized {
            return Err(param_error(
                name,
                "an f32 tensor cannot be inserted as int8; use `ParamStore::insert_quantized` or \
                 `ParamStore::quantize`",
            ));
        }
        if kind == ParamKind::Trainable && !tensor.dtype().is_float() {
            return Err(param_error(
                name,
                format!(
                    "holds {:?} values, which cannot be trained; insert it as a buffer",
                    tensor.dtype()
                ),
            ));
        }
        let t = tensor.to_device(&self.inner.device)?;
        let mut entries = self.entries();
        check_file_names(&entries, name)?;
        match entries.get_mut(name) {
            Some(entry) => {
                let var = &entry.var;
                if var.dims() != t.dims() || var.dtype() != t.dtype() {
                    return Err(param_error(
                        name,
                        format!(
                            "exists with shape {:?} and dtype {:?}; the new tensor has shape {:?} \
                             and dtype {:?} (drop it with `ParamStore::retain` to replace it)",
                            var.dims(),
                            var.dtype(),
                            t.dims(),
                            t.dtype()
                        ),
                    ));
                }
                var.set(&t)?;
                entry.kind = kind;
                entry.int8 = None;
            }
            None => {
                // `detach` drops any variable flag, so `from_tensor` copies: the store never
                // shares storage with the caller's tensor.
                let var = Var::from_tensor(&t.detach())?;
                entries.insert(name.to_string(), Entry::new(var, kind));
            }
        }
        Ok(())
    }

    /// Stores the int8 tensor `q` under `name` ([`ParamKind::Quantized`]), replacing the values
    /// of an existing floating-point tensor of the same shape (models built on the store then
    /// compute with the dequantised values). Refused, with an [`Error::Param`] naming the tensor:
    /// an inconsistent `q` ([`QuantizedTensor::validate`]), an existing tensor of another shape
    /// or of integers, and a name whose `.scale` or `.zero_point` is a stored tensor.
    pub fn insert_quantized(&self, name: &str, q: QuantizedTensor) -> Result<()> {
        if let Some(problem) = q.validate() {
            return Err(param_error(
                name,
                format!("is an inconsistent int8 tensor: {problem}"),
            ));
        }
        let mut entries = self.entries();
        self.put_int8(&mut entries, name, q)
    }

    /// Quantises the trainable f32 tensor `name` to int8 in place: per channel along `axis`
    /// (0 for the output channels of a convolution or linear weight) or, with `None`, per
    /// tensor, symmetrically as [`int8`] describes. Its kind becomes [`ParamKind::Quantized`],
    /// and models built on the store compute with the dequantised values from then on. Refused,
    /// with an [`Error::Param`] naming the tensor: an unknown name, a tensor that is not
    /// trainable, a non-finite value, an axis out of range.
    pub fn quantize(&self, name: &str, axis: Option<usize>) -> Result<()> {
        let mut entries = self.entries();
        let Some(entry) = entries.get(name) else {
            return Err(param_error(name, "is not in the store"));
        };
        if entry.kind != ParamKind::Trainable {
            return Err(param_error(
                name,
                format!(
                    "is {:?}; only trainable floating-point tensors are quantised",
                    entry.kind
                ),
            ));
        }
        let q = int8::quantize(entry.var.as_tensor(), axis)
            .map_err(|problem| param_error(name, format!("cannot quantise: {problem}")))?;
        self.put_int8(&mut entries, name, q)
    }

    /// Stores a valid int8 tensor under `name`, over an existing float tensor of its shape.
    fn put_int8(
        &self,
        entries: &mut BTreeMap<String, Entry>,
        name: &str,
        q: QuantizedTensor,
    ) -> Result<()> {
        check_file_names(entries, name)?;
        for suffix in INT8_SUFFIXES {
            if entries.contains_key(&format!("{name}.{suffix}")) {
                return Err(param_error(
                    name,
                    format!(
                        "cannot be int8 while the store holds `{name}.{suffix}`: files keep an \
                         int8 tensor's {suffix} under that name"
                    ),
                ));
            }
        }
        let deq = q.dequantize()?.to_device(&self.inner.device)?;
        match entries.get_mut(name) {
            Some(entry) => {
                let var = &entry.var;
                if var.dims() != q.shape.as_slice() || !var.dtype().is_float() {
                    return Err(param_error(
                        name,
                        format!(
                            "exists with shape {:?} and dtype {:?}; the int8 tensor has shape \
                             {:?} and replaces floating-point tensors only",
                            var.dims(),
                            var.dtype(),
                            q.shape
                        ),
                    ));
                }
                var.set(&deq.to_dtype(var.dtype())?)?;
                entry.kind = ParamKind::Quantized;
                entry.int8 = Some(q);
            }
            None => {
                let mut entry = Entry::new(Var::from_tensor(&deq)?, ParamKind::Quantized);
                entry.int8 = Some(q);
                entries.insert(name.to_string(), entry);
            }
        }
        Ok(())
    }

    /// The int8 form of tensor `name` (a copy), or `None` if it is not [`ParamKind::Quantized`].
    pub fn quantized(&self, name: &str) -> Option<QuantizedTensor> {
        self.entries().get(name).and_then(|e| e.int8.clone())
    }

    /// Keeps the tensors for which `keep(name, kind)` is true and drops the others: a partial
    /// store holding some stages of a model (see [`crate::zoo::partial`]), or a store without
    /// the state a protection added. Models built before keep the tensors they hold.
    pub fn retain(&self, mut keep: impl FnMut(&str, ParamKind) -> bool) {
        self.entries().retain(|name, e| keep(name, e.kind));
    }

    /// The floating-point (or integer) variable called `name`, to read or overwrite (`Var::set`)
    /// one tensor. `None` for an unknown name and for an int8 tensor, whose variable holds
    /// derived (dequantised) values that writing would desynchronise: read those with
    /// [`ParamStore::quantized`].
    pub fn get(&self, name: &str) -> Option<Var> {
        self.entries()
            .get(name)
            .filter(|e| e.int8.is_none())
            .map(|e| e.var.clone())
    }

    /// Number of tensors (all kinds).
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    /// Whether no model has been built on this store yet.
    pub fn is_empty(&self) -> bool {
        self.entries().is_empty()
    }

    /// Number of model parameters, as PyTorch's `sum(p.numel() for p in model.parameters())`:
    /// the scalars of the trainable and int8 tensors (a quantised weight is still a weight), not
    /// buffers or quantisation state.
    pub fn num_parameters(&self) -> usize {
        self.entries()
            .values()
            .filter(|e| matches!(e.kind, ParamKind::Trainable | ParamKind::Quantized))
            .map(|e| e.var.elem_count())
            .sum()
    }

    /// The name of the first tensor (in name order) holding a NaN or an infinite value, if any:
    /// the trainer's once-per-epoch divergence check, run on the tensors' device (one small
    /// reduction and one scalar read per tensor, no copy of the weights to the host).
    pub fn first_non_finite(&self) -> Result<Option<String>> {
        let entries = self.entries();
        for (name, entry) in entries.iter() {
            let t = entry.var.as_tensor();
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
        self.entries().clear();
    }

    /// An independent store with copies of every tensor (kinds and int8 forms included), on the
    /// same device and with the same seed: a victim's weights that a defence or attack may change
    /// without touching the original.
    pub fn deep_copy(&self) -> Result<ParamStore> {
        let copy = ParamStore::new(self.inner.seed, &self.inner.device);
        {
            let src = self.entries();
            let mut dst = copy.entries();
            for (name, entry) in src.iter() {
                let t = entry.var.as_tensor().copy()?;
                let mut e = Entry::new(Var::from_tensor(&t)?, entry.kind);
                e.int8 = entry.int8.clone();
                dst.insert(name.clone(), e);
            }
        }
        Ok(copy)
    }
}

/// Refuses `name` if files keep a stored int8 tensor's scale or zero point under it.
fn check_file_names(entries: &BTreeMap<String, Entry>, name: &str) -> Result<()> {
    for suffix in INT8_SUFFIXES {
        if let Some(base) = name.strip_suffix(suffix).and_then(|b| b.strip_suffix('.'))
            && entries.get(base).is_some_and(|e| e.int8.is_some())
        {
            return Err(param_error(
                name,
                format!(
                    "is where files keep the {suffix} of the int8 tensor `{base}`; use another name"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::Init;

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

    /// A store holding a conv weight, a bias, batch-norm state and a counter, made through the
    /// builder as the zoo makes them.
    fn small_store() -> candle_core::Result<ParamStore> {
        let store = ParamStore::new(3, &Device::Cpu);
        let vb = store.var_builder();
        let init = Init::Uniform { lo: -1.0, up: 1.0 };
        vb.get_with_hints((4, 2, 3, 3), "conv.weight", init)?;
        vb.get_with_hints(4, "conv.bias", init)?;
        vb.get_with_hints(4, "bn.running_mean", Init::Const(0.0))?;
        vb.get_with_hints(4, "bn.running_var", Init::Const(1.0))?;
        vb.get_with_hints_dtype((), "bn.num_batches_tracked", Init::Const(0.0), DType::I64)?;
        Ok(store)
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_builder_records_kinds_from_names_and_queries_read_them() -> Result<()> {
        let store = small_store()?;
        assert_eq!(store.kind("conv.weight"), Some(ParamKind::Trainable));
        assert_eq!(
            store.kind("bn.num_batches_tracked"),
            Some(ParamKind::Buffer)
        );
        assert_eq!(store.kind("nope"), None);
        let buffers = names(&[
            "bn.num_batches_tracked",
            "bn.running_mean",
            "bn.running_var",
        ]);
        assert_eq!(store.names_of(ParamKind::Buffer), buffers);
        let trainable = names(&["conv.bias", "conv.weight"]);
        assert_eq!(store.names_of(ParamKind::Trainable), trainable);
        let listed: Vec<String> = store.trainable().into_iter().map(|(n, _)| n).collect();
        assert_eq!(listed, trainable);
        let listed: Vec<String> = store.buffers().into_iter().map(|(n, _)| n).collect();
        assert_eq!(listed, buffers);
        assert_eq!(store.num_parameters(), 4 * 2 * 9 + 4);
        Ok(())
    }

    #[test]
    fn kinds_are_the_recorded_ones_not_the_names() -> Result<()> {
        let store = small_store()?;
        // A weight a defence freezes is a buffer from then on, whatever its name says.
        store.set_kind("conv.bias", ParamKind::Buffer)?;
        let trainable: Vec<String> = store.trainable().into_iter().map(|(n, _)| n).collect();
        assert_eq!(trainable, names(&["conv.weight"]));
        assert!(store.buffers().iter().any(|(n, _)| n == "conv.bias"));
        assert_eq!(store.num_parameters(), 4 * 2 * 9);
        // And a name that looks like a buffer can be inserted as trainable or quantisation state.
        let t = Tensor::new(&[1.0f32, 2.0], &Device::Cpu)?;
        store.insert("odd.running_mean", &t, ParamKind::Trainable)?;
        store.insert("act.scale", &t, ParamKind::QuantState)?;
        assert!(
            store
                .trainable()
                .iter()
                .any(|(n, _)| n == "odd.running_mean")
        );
        assert_eq!(store.names_of(ParamKind::QuantState), names(&["act.scale"]));
        assert!(!store.buffers().iter().any(|(n, _)| n == "act.scale"));
        // Refusals name the tensor.
        for (name, kind) in [
            ("bn.num_batches_tracked", ParamKind::Trainable),
            ("conv.weight", ParamKind::Quantized),
            ("missing", ParamKind::Buffer),
        ] {
            match store.set_kind(name, kind) {
                Err(e @ Error::Param { .. }) => assert!(e.to_string().contains(name), "{e}"),
                other => panic!("{name} -> {kind:?}: {other:?}"),
            }
        }
        Ok(())
    }

    #[test]
    fn insert_overwrites_in_place_or_refuses_another_shape_or_dtype() -> Result<()> {
        let store = small_store()?;
        let held = store.trainable();
        let new = Tensor::new(&[0.5f32; 4], &Device::Cpu)?;
        store.insert("conv.bias", &new, ParamKind::Trainable)?;
        // In place: a variable handed out before sees the new values.
        let before = held
            .iter()
            .find(|(n, _)| n == "conv.bias")
            .map(|(_, v)| v.clone());
        assert_eq!(
            before.map(|v| v.to_vec1::<f32>()).transpose()?,
            Some(vec![0.5; 4])
        );
        let wrong_shape = Tensor::new(&[0.5f32; 3], &Device::Cpu)?;
        let wrong_dtype = Tensor::new(&[1i64; 4], &Device::Cpu)?;
        for t in [&wrong_shape, &wrong_dtype] {
            match store.insert("conv.bias", t, ParamKind::Buffer) {
                Err(e @ Error::Param { .. }) => {
                    let msg = e.to_string();
                    assert!(
                        msg.contains("`conv.bias`") && msg.contains("exists"),
                        "{msg}"
                    );
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(store.kind("conv.bias"), Some(ParamKind::Trainable));
        assert!(store.insert("x", &new, ParamKind::Quantized).is_err());
        assert!(
            store
                .insert("c", &wrong_dtype, ParamKind::Trainable)
                .is_err()
        );
        // The store copies: changing the caller's variable does not change the store.
        let mine = Var::from_tensor(&new)?;
        store.insert("mine", mine.as_tensor(), ParamKind::QuantState)?;
        mine.set(&Tensor::new(&[9.0f32; 4], &Device::Cpu)?)?;
        let stored = store.get("mine").map(|v| v.to_vec1::<f32>()).transpose()?;
        assert_eq!(stored, Some(vec![0.5; 4]));
        Ok(())
    }

    #[test]
    fn quantize_replaces_a_trainable_by_its_int8_form() -> Result<()> {
        let store = small_store()?;
        let (vb, _) = store.existing_var_builder();
        let before = vb.get((4, 2, 3, 3), "conv.weight")?;
        let original = before.flatten_all()?.to_vec1::<f32>()?;
        store.quantize("conv.weight", Some(0))?;
        assert_eq!(store.kind("conv.weight"), Some(ParamKind::Quantized));
        assert!(
            store.get("conv.weight").is_none(),
            "get is for float tensors"
        );
        assert_eq!(
            store.names_of(ParamKind::Quantized),
            names(&["conv.weight"])
        );
        assert!(!store.trainable().iter().any(|(n, _)| n == "conv.weight"));
        // Still a model parameter.
        assert_eq!(store.num_parameters(), 4 * 2 * 9 + 4);
        let Some(q) = store.quantized("conv.weight") else {
            panic!("no int8 form");
        };
        assert_eq!(
            (q.axis, q.scale.len(), q.shape.clone()),
            (Some(0), 4, vec![4, 2, 3, 3])
        );
        // Models see the dequantised values, through tensors handed out before and after.
        let deq = q.dequantize()?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(before.flatten_all()?.to_vec1::<f32>()?, deq);
        assert_eq!(
            vb.get((4, 2, 3, 3), "conv.weight")?
                .flatten_all()?
                .to_vec1::<f32>()?,
            deq
        );
        assert_ne!(original, deq);
        // Only trainable tensors are quantised, once.
        for name in ["conv.weight", "bn.running_var", "missing"] {
            match store.quantize(name, None) {
                Err(e @ Error::Param { .. }) => assert!(e.to_string().contains(name), "{e}"),
                other => panic!("{name}: {other:?}"),
            }
        }
        assert!(
            store.quantize("conv.bias", Some(1)).is_err(),
            "axis out of range"
        );
        // A copy keeps kinds and int8 forms, independently.
        let copy = store.deep_copy()?;
        assert_eq!(copy.quantized("conv.weight"), Some(q.clone()));
        assert_eq!(copy.kind("conv.weight"), Some(ParamKind::Quantized));
        // Inserting f32 values makes it f32 again.
        store.insert("conv.weight", &q.dequantize()?, ParamKind::Trainable)?;
        assert_eq!(store.quantized("conv.weight"), None);
        assert_eq!(copy.kind("conv.weight"), Some(ParamKind::Quantized));
        Ok(())
    }

    #[test]
    fn int8_names_cannot_collide_with_their_scales() -> Result<()> {
        let store = small_store()?;
        store.quantize("conv.weight", Some(0))?;
        let t = Tensor::new(&[1.0f32; 4], &Device::Cpu)?;
        match store.insert("conv.weight.scale", &t, ParamKind::QuantState) {
            Err(e @ Error::Param { .. }) => assert!(e.to_string().contains("conv.weight"), "{e}"),
            other => panic!("{other:?}"),
        }
        store.insert("conv.bias.zero_point", &t, ParamKind::QuantState)?;
        assert!(store.quantize("conv.bias", None).is_err());
        let q = QuantizedTensor {
            values: vec![1, 2],
            shape: vec![2],
            scale: vec![0.5],
            zero_point: vec![0],
            axis: None,
        };
        store.insert_quantized("fresh", q.clone())?;
        assert_eq!(store.quantized("fresh"), Some(q.clone()));
        let mut bad = q;
        bad.scale = vec![-1.0];
        assert!(matches!(
            store.insert_quantized("other", bad),
            Err(Error::Param { .. })
        ));
        assert_eq!(store.kind("other"), None);
        Ok(())
    }

    #[test]
    fn retain_drops_tensors() -> Result<()> {
        let store = small_store()?;
        store.retain(|name, kind| kind == ParamKind::Trainable || name.ends_with("running_var"));
        assert_eq!(
            store.names(),
            names(&["bn.running_var", "conv.bias", "conv.weight"])
        );
        store.retain(|name, _| name.starts_with("bn."));
        assert_eq!(store.names(), names(&["bn.running_var"]));
        Ok(())
    }
}
