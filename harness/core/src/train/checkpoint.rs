//! Resumable training checkpoints: one safetensors file holding every parameter and buffer, the
//! optimiser's momentum, and (in the safetensors metadata) the epoch history and a fingerprint of
//! the run, so a checkpoint is only ever resumed by the run that wrote it.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use datasets::ImageSet;
use sha2::{Digest, Sha256};

use super::{EpochStats, Objective, Sgd, TrainConfig};
use crate::{Error, ModelSpec, ParamStore, Result};

const FORMAT: &str = "protbench-checkpoint-v1";

/// A checkpoint read back from disk.
pub struct Checkpoint {
    /// Epochs finished when it was written.
    pub history: Vec<EpochStats>,
    fingerprint: String,
    tensors: HashMap<String, Tensor>,
}

impl Checkpoint {
    /// A hash of everything that shapes the run: configuration, model, objective and data
    /// (size, labels, and a digest of the pixels).
    pub fn fingerprint(
        cfg: &TrainConfig,
        spec: &ModelSpec,
        objective: &dyn Objective,
        set: &ImageSet,
        train_only: Option<&[String]>,
    ) -> String {
        let mut h = Sha256::new();
        h.update(FORMAT.as_bytes());
        h.update(serde_json::to_vec(cfg).unwrap_or_default());
        h.update(serde_json::to_vec(spec).unwrap_or_default());
        h.update(objective.id().as_bytes());
        h.update(serde_json::to_vec(&train_only).unwrap_or_default());
        h.update((set.len() as u64).to_le_bytes());
        for l in &set.labels {
            h.update(l.to_le_bytes());
        }
        h.update(&set.images);
        format!("{:x}", h.finalize())
    }

    /// Writes the checkpoint atomically (temporary file in the same folder, then rename), so a
    /// crash mid-write leaves the previous checkpoint intact.
    pub fn save(
        path: &Path,
        fingerprint: &str,
        history: &[EpochStats],
        params: &ParamStore,
        opt: &Sgd,
    ) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> = params
            .trainable()
            .into_iter()
            .map(|(n, v)| (format!("param.{n}"), v.as_tensor().clone()))
            .collect();
        tensors.extend(
            params
                .buffers()
                .into_iter()
                .map(|(n, t)| (format!("param.{n}"), t)),
        );
        tensors.extend(opt.state());
        let metadata = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("fingerprint".to_string(), fingerprint.to_string()),
            (
                "history".to_string(),
                serde_json::to_string(history).map_err(|e| Error::BadFile {
                    path: path.to_path_buf(),
                    message: format!("cannot encode history: {e}"),
                })?,
            ),
        ]);
        let bytes =
            safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(metadata))
                .map_err(|e| Error::BadFile {
                    path: path.to_path_buf(),
                    message: format!("cannot serialise checkpoint: {e}"),
                })?;
        crate::atomic_file::write_atomically(path, &bytes)
    }

    /// Reads a checkpoint; anything that is not one of ours is a clear error.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let bad = |message: String| Error::BadFile {
            path: path.to_path_buf(),
            message,
        };
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| {
            bad(format!(
                "not a checkpoint (unreadable safetensors: {e}); delete it to start afresh"
            ))
        })?;
        let meta = meta.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(bad(format!(
                "not a {FORMAT} file; delete it to start afresh"
            )));
        }
        let history: Vec<EpochStats> =
            serde_json::from_str(meta.get("history").map(String::as_str).unwrap_or(""))
                .map_err(|e| bad(format!("corrupt epoch history: {e}")))?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, device)
            .map_err(|e| bad(format!("corrupt tensors: {e}")))?;
        Ok(Self {
            history,
            fingerprint: meta.get("fingerprint").cloned().unwrap_or_default(),
            tensors,
        })
    }

    /// Puts the saved weights, buffers and momentum back, after checking that the checkpoint
    /// belongs to this run.
    pub fn restore(&self, fingerprint: &str, params: &ParamStore, opt: &mut Sgd) -> Result<()> {
        if self.fingerprint != fingerprint {
            return Err(Error::Config(
                "the checkpoint was written by a run with other settings, model or data; \
                 delete it or choose another --checkpoint path"
                    .into(),
            ));
        }
        let mut momentum = HashMap::new();
        for (name, t) in &self.tensors {
            if let Some(pname) = name.strip_prefix("param.") {
                let var = params.get(pname).ok_or_else(|| {
                    Error::Config(format!(
                        "checkpoint holds `{pname}`, which this model lacks"
                    ))
                })?;
                if var.dims() != t.dims() {
                    return Err(Error::Config(format!(
                        "checkpoint tensor `{pname}` has shape {:?}, the model has {:?}",
                        t.dims(),
                        var.dims()
                    )));
                }
                var.set(&t.to_dtype(var.dtype())?)?;
            } else {
                momentum.insert(name.clone(), t.clone());
            }
        }
        opt.load_state(&momentum)
    }
}
