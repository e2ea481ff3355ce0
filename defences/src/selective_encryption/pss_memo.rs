//! PSS's importance scores depend on the model, the owner's data, the eligible layers, the PSS
//! settings and the seed, not on the ratio or the number of levels. A sweep over ratios
//! (`pss-02`, `pss-08`, ... in one matrix) would learn the same gates once per point; this
//! process-wide memo learns them once per victim and hands the same scores to every point.
//!
//! Choice: a point served from the memo reports the `rank-seconds` of the search that produced
//! the scores, so the table shows what PSS costs an owner who runs it once, whichever cell
//! happened to run first.
//!
//! Only PSS is memoised: the cheap rankings are computed in milliseconds, and random draws must
//! stay fresh per cell (the selection is part of the secret).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use datasets::ImageSet;
use harness_core::Result;
use sha2::{Digest, Sha256};

use super::{Importance, PssConfig};

type Memo = Mutex<HashMap<[u8; 32], (Importance, f64)>>;

fn memo() -> &'static Memo {
    static MEMO: OnceLock<Memo> = OnceLock::new();
    MEMO.get_or_init(Default::default)
}

/// Everything the scores depend on, hashed.
fn key(
    original: &[u8],
    layers: &[String],
    pss: &PssConfig,
    seed: u64,
    data: &ImageSet,
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"pss-memo-v1");
    h.update((original.len() as u64).to_le_bytes());
    h.update(original);
    h.update(format!("{layers:?}|{pss:?}|{seed}").as_bytes());
    h.update((data.len() as u64).to_le_bytes());
    for l in &data.labels {
        h.update(l.to_le_bytes());
    }
    h.update(&data.images);
    h.finalize().into()
}

/// The memoised (scores, seconds) for these inputs, or `compute`'s, remembered for next time.
/// A failed computation is not remembered.
pub(super) fn get_or_compute(
    original: &[u8],
    layers: &[String],
    pss: &PssConfig,
    seed: u64,
    data: &ImageSet,
    compute: impl FnOnce() -> Result<(Importance, f64)>,
) -> Result<(Importance, f64)> {
    let k = key(original, layers, pss, seed, data);
    if let Some(hit) = memo().lock().ok().and_then(|m| m.get(&k).cloned()) {
        return Ok(hit);
    }
    let value = compute()?;
    if let Ok(mut m) = memo().lock() {
        m.insert(k, value.clone());
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datasets::catalog::{DatasetId, LoadOptions};

    fn set() -> ImageSet {
        let id = DatasetId::parse("synthetic:4").unwrap();
        datasets::catalog::load(
            &id,
            std::path::Path::new("/nonexistent"),
            datasets::Split::Train,
            &LoadOptions::default(),
        )
        .unwrap()
        .select(&[0, 1, 2, 3])
    }

    #[test]
    fn the_same_inputs_compute_once_and_other_inputs_again() {
        let data = set();
        let pss = PssConfig::default();
        let scores = |v: f32| Importance::from([("conv".to_string(), vec![v])]);
        let mut calls = 0;
        let a = get_or_compute(b"model-a", &[], &pss, 7, &data, || {
            calls += 1;
            Ok((scores(1.0), 2.5))
        })
        .unwrap();
        let b = get_or_compute(b"model-a", &[], &pss, 7, &data, || {
            calls += 1;
            Ok((scores(9.0), 0.1))
        })
        .unwrap();
        assert_eq!(calls, 1);
        assert_eq!(
            a, b,
            "the memo must hand back the first search's scores and seconds"
        );
        // Another model, seed or setting searches again.
        for (model, seed, lambda) in [
            (&b"model-b"[..], 7, pss.lambda),
            (b"model-a", 8, pss.lambda),
            (b"model-a", 7, 0.5),
        ] {
            let cfg = PssConfig {
                lambda,
                ..pss.clone()
            };
            let got =
                get_or_compute(model, &[], &cfg, seed, &data, || Ok((scores(3.0), 1.0))).unwrap();
            assert_eq!(got.1, 1.0);
        }
    }
}
