//! Which kernels matter: the rankings selective encryption can use, the layers it may encrypt,
//! and the selection of the top floor(ratio x N) + 1 kernels of each chosen layer.
//!
//! PSS (the paper's learned importance, [`super::pss`]) needs data and a forward pass; the cheap
//! baselines (random, L1 magnitude, largest |mean|) only read the weights, so the table shows
//! what PSS buys.

use std::collections::BTreeMap;

use harness_core::{Error, Result};
use rand::Rng;
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use super::container::Container;

/// Importance of every kernel of each chosen layer, by tensor name; higher is more important.
/// Kernels are in storage order (out-major: kernel `o * in + i`).
pub type Importance = BTreeMap<String, Vec<f32>>;

/// How kernels are ranked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ranking {
    /// Probabilistic selection strategy: hard-concrete L0 gates trained per layer (the paper's).
    Pss,
    /// Uniformly random (from the OS random source).
    Random,
    /// Largest L1 norm of the kernel.
    L1,
    /// Largest absolute mean of the kernel.
    Mean,
}

impl Ranking {
    /// Stable id (settings, command line, records).
    pub fn id(self) -> &'static str {
        match self {
            Ranking::Pss => "pss",
            Ranking::Random => "random",
            Ranking::L1 => "l1",
            Ranking::Mean => "mean",
        }
    }

    /// Parses an id.
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "pss" => Ok(Ranking::Pss),
            "random" => Ok(Ranking::Random),
            "l1" => Ok(Ranking::L1),
            "mean" => Ok(Ranking::Mean),
            other => Err(Error::Config(format!(
                "unknown ranking `{other}`; available: pss, random, l1, mean"
            ))),
        }
    }
}

/// A convolution weight that can be encrypted: its name, kernels (out x in) and positions (k x k).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvLayer {
    /// Tensor name (`features.0.weight`).
    pub name: String,
    /// Number of kernels, out x in.
    pub kernels: usize,
    /// Positions per kernel, k x k.
    pub kernel_len: usize,
}

/// Every convolution weight of a model file: f32 tensors of rank 4 named `*weight`, by name.
pub(crate) fn conv_layers(c: &Container) -> Vec<ConvLayer> {
    c.entries
        .iter()
        .filter(|e| {
            e.dtype == safetensors::Dtype::F32
                && e.shape.len() == 4
                && (e.name == "weight" || e.name.ends_with(".weight"))
        })
        .map(|e| ConvLayer {
            name: e.name.clone(),
            kernels: e.shape[0] * e.shape[1],
            kernel_len: e.shape[2] * e.shape[3],
        })
        .collect()
}

/// The layers named in `requested` (tensor names, with or without `.weight`), or every conv
/// layer when it is empty. Unknown names are a configuration error listing the valid ones.
pub fn resolve_layers(all: &[ConvLayer], requested: &[String]) -> Result<Vec<ConvLayer>> {
    if requested.is_empty() {
        return Ok(all.to_vec());
    }
    let mut out: Vec<ConvLayer> = Vec::new();
    for r in requested {
        let r = r.trim();
        let found = all
            .iter()
            .find(|l| l.name == r || l.name.strip_suffix(".weight") == Some(r))
            .ok_or_else(|| {
                let names: Vec<&str> = all.iter().map(|l| l.name.as_str()).collect();
                Error::Config(format!(
                    "`{r}` is not a convolution weight of this model; eligible: {}",
                    names.join(", ")
                ))
            })?;
        if !out.iter().any(|l| l.name == found.name) {
            out.push(found.clone());
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Kernels selected in a layer of `n`: floor(ratio x n) + 1, at most n.
pub fn selection_count(n: usize, ratio: f64) -> usize {
    (((ratio * n as f64).floor() as usize) + 1).min(n)
}

/// Indices of the `count` most important kernels, most important first; ties go to the lower
/// index and NaN scores rank last, so the selection is deterministic.
pub fn top_kernels(scores: &[f32], count: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    let key = |i: usize| {
        let s = scores[i];
        if s.is_nan() { f32::NEG_INFINITY } else { s }
    };
    order.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
    order.truncate(count);
    order
}

/// Importance by one of the weight-only rankings (not PSS) for `layers` of `c`.
pub(crate) fn cheap_importance(
    c: &Container,
    layers: &[ConvLayer],
    ranking: Ranking,
    rng: &mut ChaCha20Rng,
) -> Result<Importance> {
    if ranking == Ranking::Pss {
        return Err(Error::Config(
            "PSS ranking needs data and a forward pass (see `pss`)".into(),
        ));
    }
    let mut out = Importance::new();
    for layer in layers {
        let idx = c
            .index(&layer.name)
            .ok_or_else(|| Error::Config(format!("no tensor `{}`", layer.name)))?;
        let values = c.f32_values(idx)?;
        let scores: Vec<f32> = values
            .chunks_exact(layer.kernel_len)
            .map(|k| match ranking {
                Ranking::L1 => k.iter().map(|v| v.abs()).sum(),
                Ranking::Mean => (k.iter().sum::<f32>() / k.len() as f32).abs(),
                Ranking::Random | Ranking::Pss => rng.random::<f32>(),
            })
            .collect();
        out.insert(layer.name.clone(), scores);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_counts_follow_the_paper() {
        assert_eq!(selection_count(100, 0.08), 9);
        assert_eq!(selection_count(100, 0.0), 1);
        assert_eq!(selection_count(100, 1.0), 100);
        assert_eq!(selection_count(3, 0.5), 2);
        assert_eq!(selection_count(4096, 0.02), 82);
    }

    #[test]
    fn top_kernels_are_deterministic() {
        let s = [0.5, 2.0, f32::NAN, 2.0, -1.0];
        assert_eq!(top_kernels(&s, 3), vec![1, 3, 0]);
        assert_eq!(top_kernels(&s, 5), vec![1, 3, 0, 4, 2]);
    }

    #[test]
    fn layers_resolve_with_or_without_suffix() {
        let all = vec![
            ConvLayer {
                name: "a.weight".into(),
                kernels: 4,
                kernel_len: 9,
            },
            ConvLayer {
                name: "b.weight".into(),
                kernels: 8,
                kernel_len: 9,
            },
        ];
        assert_eq!(resolve_layers(&all, &[]).map(|v| v.len()).ok(), Some(2));
        let got = resolve_layers(&all, &["b".into(), "a.weight".into(), "b.weight".into()]);
        assert_eq!(
            got.ok()
                .map(|v| v.into_iter().map(|l| l.name).collect::<Vec<_>>()),
            Some(vec!["a.weight".to_string(), "b.weight".to_string()])
        );
        let err = resolve_layers(&all, &["c".into()])
            .err()
            .map(|e| e.to_string());
        assert!(
            err.unwrap_or_default()
                .contains("eligible: a.weight, b.weight")
        );
    }
}
