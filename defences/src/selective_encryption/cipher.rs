//! Encryption and decryption of a model file, and licences: the part of selective encryption
//! that the `harness protect` commands and the matrix defence share.
//!
//! The encrypted model is an ordinary safetensors file: the same tensors, the selected kernels
//! replaced by their DPRM masks ([`super::dprm`]). Its header metadata gains one entry,
//! `protbench.selective-encryption`, a JSON object with the public parameters (version, levels,
//! ratio, ranking, the eligible layers, whether the original had metadata) and one escrow per
//! tier: base64 of the ChaCha20-Poly1305 ciphertext, under the tier's `escrow` sub-key, of the
//! tier's kernel locations and original values (`layer u32 | kernel u32 | k x k f32`, little
//! endian, in layer then kernel order). The associated data binds each escrow to its tier, the
//! public parameters and the fingerprint of the encrypted tensors, so a changed weight, a moved
//! escrow or edited parameters are refused. Choice: a zero nonce, since every tier key is used
//! for exactly one message (a fresh master secret per encryption).
//!
//! Decryption with a level-m licence opens tiers 0..m-1, puts their original bits back and drops
//! the escrow entry; with the full licence the result is the original file, byte for byte.

use std::collections::HashMap;
use std::time::Instant;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key as AeadKey, Nonce};
use harness_core::protect::{check, left_open};
use harness_core::sealed::{self, SealError};
use harness_core::{Error, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::container::{Container, bad, base64_decode, base64_encode};
use super::dprm::{layer_stats, mask_kernel};
use super::keys::{self, Licence, MAX_LEVELS, OwnerKey};
use super::levels::{set_sizes, tier_of_rank};
use super::ranking::{
    ConvLayer, Importance, Ranking, conv_layers, resolve_layers, selection_count, top_kernels,
};

/// The metadata key of the public header and the escrows.
pub const METADATA_KEY: &str = "protbench.selective-encryption";
const ESCROW_PURPOSE: &str = "selective-encryption escrow";
const VERSION: u32 = 1;

/// What to encrypt.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Fraction of each chosen layer's kernels to encrypt (floor(ratio x N) + 1 kernels).
    pub ratio: f64,
    /// Access levels M (nested sets, one key per tier).
    pub levels: usize,
    /// Conv weights to encrypt (names, with or without `.weight`); empty = every conv layer.
    pub layers: Vec<String>,
    /// The ranking that produced the importance (recorded in the public header).
    pub ranking: Ranking,
}

impl Plan {
    /// Checks ratio and levels.
    pub fn validate(&self) -> Result<()> {
        check("ratio", self.ratio, left_open(0.0, 1.0))?;
        check("levels", self.levels, 1..=MAX_LEVELS)
    }
}

/// The public header an encrypted file carries (what anyone can read).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublicHeader {
    /// Format version.
    pub version: u32,
    /// Access levels M.
    pub levels: usize,
    /// Encryption ratio.
    pub ratio: f64,
    /// Ranking used.
    pub ranking: Ranking,
    /// The layers that hold encrypted kernels (all of them do: each gets at least one).
    pub layers: Vec<ConvLayer>,
    /// Whether the original file had a metadata map (restored on full decryption).
    pub had_metadata: bool,
    /// One escrow per tier (base64 of the sealed locations and original values).
    pub tiers: Vec<String>,
}

/// Per-layer outcome of an encryption.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerReport {
    /// Tensor name.
    pub name: String,
    /// Kernels in the layer.
    pub kernels: usize,
    /// Kernels encrypted.
    pub encrypted: usize,
    /// Kernels per tier, tier 0 first.
    pub tiers: Vec<usize>,
}

/// What an encryption did (public numbers only).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EncryptReport {
    /// Per layer.
    pub layers: Vec<LayerReport>,
    /// Scalars encrypted.
    pub encrypted_params: usize,
    /// Scalars of every conv weight of the model.
    pub conv_params: usize,
    /// Trainable scalars of the model (batch-norm buffers excluded).
    pub total_params: usize,
    /// Bytes of escrow added to the header.
    pub escrow_bytes: usize,
    /// Short fingerprint of the encrypted tensors.
    pub fingerprint: String,
    /// Wall time of masking and sealing (not of the ranking).
    pub seconds: f64,
}

/// An encrypted model and its owner's key file.
pub struct Encrypted {
    /// The encrypted model file (safetensors).
    pub model: Vec<u8>,
    /// The owner's sealed key file.
    pub owner_key: Vec<u8>,
    /// Public numbers.
    pub report: EncryptReport,
}

/// A decrypted model file.
pub struct Decrypted {
    /// The model file (safetensors).
    pub model: Vec<u8>,
    /// Level of the licence used.
    pub level: usize,
    /// Levels of the model.
    pub levels: usize,
    /// Kernels restored.
    pub kernels_restored: usize,
    /// Wall time.
    pub seconds: f64,
}

/// Encrypts `original` (safetensors bytes) under a fresh master secret from the OS.
pub fn encrypt(
    original: &[u8],
    importance: &Importance,
    plan: &Plan,
    passphrase: Option<&str>,
) -> Result<Encrypted> {
    let master = sealed::random_secret()?;
    encrypt_with_master(original, importance, plan, &master, passphrase)
}

/// [`encrypt`] with a given master secret, for reproducible tests; real use takes a fresh one.
pub fn encrypt_with_master(
    original: &[u8],
    importance: &Importance,
    plan: &Plan,
    master: &[u8; 32],
    passphrase: Option<&str>,
) -> Result<Encrypted> {
    plan.validate()?;
    let start = Instant::now();
    let mut c = Container::parse(original)?;
    if c.metadata
        .as_ref()
        .is_some_and(|m| m.contains_key(METADATA_KEY))
    {
        return Err(Error::Config(
            "this model is already selectively encrypted; decrypt it first".into(),
        ));
    }
    let all = conv_layers(&c);
    let layers = resolve_layers(&all, &plan.layers)?;
    if layers.is_empty() {
        return Err(Error::Config("the model has no convolution weight".into()));
    }
    // Kernel lists per tier, in layer then kernel order, and the layers' values.
    let mut tiers: Vec<Vec<(usize, usize)>> = vec![Vec::new(); plan.levels];
    let mut values = Vec::with_capacity(layers.len());
    let mut reports = Vec::with_capacity(layers.len());
    for (li, layer) in layers.iter().enumerate() {
        let scores = importance
            .get(&layer.name)
            .ok_or_else(|| Error::Config(format!("no importance for layer `{}`", layer.name)))?;
        if scores.len() != layer.kernels {
            return Err(Error::Config(format!(
                "importance of `{}` has {} scores for {} kernels",
                layer.name,
                scores.len(),
                layer.kernels
            )));
        }
        let count = selection_count(layer.kernels, plan.ratio);
        let sizes = set_sizes(count, plan.levels);
        let mut per_tier = vec![0usize; plan.levels];
        for (rank, k) in top_kernels(scores, count).into_iter().enumerate() {
            let t = tier_of_rank(rank, &sizes)
                .ok_or_else(|| Error::Config("selection larger than its last set".into()))?;
            tiers[t].push((li, k));
            per_tier[t] += 1;
        }
        let idx = c
            .index(&layer.name)
            .ok_or_else(|| bad(format!("no tensor `{}`", layer.name)))?;
        values.push((idx, c.f32_values(idx)?));
        reports.push(LayerReport {
            name: layer.name.clone(),
            kernels: layer.kernels,
            encrypted: count,
            tiers: per_tier,
        });
    }
    let stats: Vec<_> = layers
        .iter()
        .zip(&values)
        .map(|(l, (_, v))| layer_stats(v, l.kernels, l.kernel_len))
        .collect();
    // Mask tier by tier, each from its own keyed stream; keep the originals for the escrow.
    let mut plaintexts = Vec::with_capacity(plan.levels);
    for (t, entries) in tiers.iter_mut().enumerate() {
        entries.sort_unstable();
        let tier_key = keys::tier_key(master, t)?;
        let mut rng = ChaCha20Rng::from_seed(*keys::subkey(&tier_key, "noise")?);
        let mut plain = Zeroizing::new(Vec::new());
        for &(li, k) in entries.iter() {
            let kl = layers[li].kernel_len;
            let kernel = &mut values[li].1[k * kl..(k + 1) * kl];
            plain.extend_from_slice(&(li as u32).to_le_bytes());
            plain.extend_from_slice(&(k as u32).to_le_bytes());
            for v in kernel.iter() {
                plain.extend_from_slice(&v.to_le_bytes());
            }
            mask_kernel(&stats[li], &mut rng, kernel);
        }
        plaintexts.push(plain);
    }
    for (idx, v) in &values {
        c.set_f32_values(*idx, v)?;
    }
    let fingerprint = c.fingerprint();
    let mut header = PublicHeader {
        version: VERSION,
        levels: plan.levels,
        ratio: plan.ratio,
        ranking: plan.ranking,
        layers: layers.clone(),
        had_metadata: c.metadata.is_some(),
        tiers: Vec::new(),
    };
    let mut escrow_bytes = 0;
    for (t, plain) in plaintexts.iter().enumerate() {
        let tier_key = keys::tier_key(master, t)?;
        let sealed = escrow_cipher(&tier_key)?
            .encrypt(
                Nonce::from_slice(&[0u8; 12]),
                Payload {
                    msg: plain,
                    aad: &escrow_aad(&header, t, &fingerprint)?,
                },
            )
            .map_err(|_| SealError::Crypto("escrow encryption failed".into()))?;
        escrow_bytes += sealed.len();
        header.tiers.push(base64_encode(&sealed));
    }
    let mut metadata = c.metadata.take().unwrap_or_default();
    metadata.insert(METADATA_KEY.to_string(), json(&header)?);
    c.metadata = Some(metadata);
    let model = c.to_bytes()?;
    let owner = OwnerKey {
        master: Zeroizing::new(*master),
        levels: plan.levels,
    };
    let owner_key = keys::seal_owner_key(&owner, &fingerprint, passphrase)?;
    let encrypted_params = reports
        .iter()
        .zip(&layers)
        .map(|(r, l)| r.encrypted * l.kernel_len)
        .sum();
    let report = EncryptReport {
        layers: reports,
        encrypted_params,
        conv_params: all.iter().map(|l| l.kernels * l.kernel_len).sum(),
        total_params: c
            .entries
            .iter()
            .filter(|e| !harness_core::params::is_buffer(&e.name))
            .map(|e| e.shape.iter().product::<usize>())
            .sum(),
        escrow_bytes,
        fingerprint: sealed::short_hex(&fingerprint),
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok(Encrypted {
        model,
        owner_key,
        report,
    })
}

/// The licence of access level `level` for the model of `owner_key_file` (sealed, bound to the
/// same model; `passphrase` opens the key file).
pub fn licence(owner_key_file: &[u8], level: usize, passphrase: Option<&str>) -> Result<Vec<u8>> {
    let (owner, binding) = keys::open_owner_key(owner_key_file, passphrase)?;
    keys::seal_licence(&keys::licence_for(&owner, level)?, &binding)
}

/// The public header of an encrypted model file (what a thief can read without any secret).
pub fn public_header(encrypted: &[u8]) -> Result<PublicHeader> {
    header_of(&Container::parse(encrypted)?)
}

fn header_of(c: &Container) -> Result<PublicHeader> {
    let text = c
        .metadata
        .as_ref()
        .and_then(|m| m.get(METADATA_KEY))
        .ok_or_else(|| {
            Error::Config(
                "this model is not selectively encrypted (its header has no escrow)".into(),
            )
        })?;
    let header: PublicHeader = serde_json::from_str(text)
        .map_err(|e| bad(format!("unreadable selective-encryption header ({e})")))?;
    if header.version > VERSION {
        return Err(bad(format!(
            "selective-encryption format version {} is newer than this harness reads (version \
             {VERSION}); upgrade the harness",
            header.version
        )));
    }
    if header.version < VERSION {
        return Err(bad(format!(
            "selective-encryption format version {} is older than this harness reads (version \
             {VERSION}); decrypt it with the harness release that encrypted it",
            header.version
        )));
    }
    if header.tiers.len() != header.levels {
        return Err(bad(
            "selective-encryption header: one escrow per level expected",
        ));
    }
    Ok(header)
}

/// Decrypts what `licence_file` allows of `encrypted`. A licence for another model, a tampered
/// licence or a tampered model is an error, and nothing is returned.
pub fn decrypt(encrypted: &[u8], licence_file: &[u8]) -> Result<Decrypted> {
    let start = Instant::now();
    let mut c = Container::parse(encrypted)?;
    let header = header_of(&c)?;
    let fingerprint = c.fingerprint();
    let licence: Licence = keys::open_licence(licence_file, &fingerprint)?;
    if licence.levels != header.levels {
        return Err(bad(format!(
            "the licence is for {} levels, the model has {}",
            licence.levels, header.levels
        )));
    }
    let mut restored = 0;
    let mut layer_values: HashMap<usize, (usize, Vec<f32>)> = HashMap::new();
    for (t, tier_key) in licence.tier_keys.iter().enumerate() {
        let sealed = base64_decode(&header.tiers[t])
            .ok_or_else(|| bad(format!("escrow of tier {t} is not base64")))?;
        let plain = Zeroizing::new(
            escrow_cipher(tier_key)?
                .decrypt(
                    Nonce::from_slice(&[0u8; 12]),
                    Payload {
                        msg: &sealed,
                        aad: &escrow_aad(&header, t, &fingerprint)?,
                    },
                )
                .map_err(|_| SealError::Authentication {
                    purpose: ESCROW_PURPOSE.into(),
                    with_passphrase: false,
                })?,
        );
        let mut pos = 0;
        while pos < plain.len() {
            let word = |p: usize| -> Result<u32> {
                plain
                    .get(p..p + 4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .ok_or_else(|| bad(format!("escrow of tier {t} is truncated")))
            };
            let (li, k) = (word(pos)? as usize, word(pos + 4)? as usize);
            let layer = header
                .layers
                .get(li)
                .filter(|l| k < l.kernels)
                .ok_or_else(|| bad(format!("escrow of tier {t} names a kernel out of range")))?;
            let kl = layer.kernel_len;
            let values = match layer_values.entry(li) {
                std::collections::hash_map::Entry::Occupied(e) => &mut e.into_mut().1,
                std::collections::hash_map::Entry::Vacant(e) => {
                    let idx = c
                        .index(&layer.name)
                        .filter(|&i| {
                            c.entries[i].shape.iter().product::<usize>() == layer.kernels * kl
                        })
                        .ok_or_else(|| bad(format!("no tensor `{}` of that shape", layer.name)))?;
                    &mut e.insert((idx, c.f32_values(idx)?)).1
                }
            };
            for (j, v) in values[k * kl..(k + 1) * kl].iter_mut().enumerate() {
                *v = f32::from_bits(word(pos + 8 + 4 * j)?);
            }
            pos += 8 + 4 * kl;
            restored += 1;
        }
    }
    for (idx, values) in layer_values.values() {
        c.set_f32_values(*idx, values)?;
    }
    let mut metadata = c.metadata.take().unwrap_or_default();
    metadata.remove(METADATA_KEY);
    c.metadata = (header.had_metadata || !metadata.is_empty()).then_some(metadata);
    Ok(Decrypted {
        model: c.to_bytes()?,
        level: licence.level,
        levels: licence.levels,
        kernels_restored: restored,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn escrow_cipher(tier_key: &[u8; 32]) -> Result<ChaCha20Poly1305> {
    let key = keys::subkey(tier_key, "escrow")?;
    Ok(ChaCha20Poly1305::new(AeadKey::from_slice(&key[..])))
}

/// Associated data of tier `t`'s escrow: the tier, the public parameters and the fingerprint.
fn escrow_aad(header: &PublicHeader, t: usize, fingerprint: &[u8; 32]) -> Result<Vec<u8>> {
    let public = PublicHeader {
        tiers: Vec::new(),
        ..header.clone()
    };
    let mut h = Sha256::new();
    h.update(b"protbench selective-encryption escrow v1");
    h.update((t as u64).to_le_bytes());
    h.update(fingerprint);
    h.update(json(&public)?.as_bytes());
    Ok(h.finalize().to_vec())
}

fn json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Config(format!("cannot write JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model file's container whose public header says `version`.
    fn with_version(version: u32) -> Result<Container> {
        let header = PublicHeader {
            version,
            levels: 1,
            ratio: 0.1,
            ranking: Ranking::L1,
            layers: Vec::new(),
            had_metadata: false,
            tiers: vec![String::new()],
        };
        let metadata = HashMap::from([(METADATA_KEY.to_string(), json(&header)?)]);
        Ok(Container {
            entries: Vec::new(),
            metadata: Some(metadata),
        })
    }

    #[test]
    fn format_versions_are_called_older_or_newer() -> Result<()> {
        assert!(header_of(&with_version(VERSION)?).is_ok());
        let newer = header_of(&with_version(VERSION + 1)?).map(|_| ());
        let text = newer.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            text.contains("is newer") && text.contains("upgrade"),
            "{text}"
        );
        let older = header_of(&with_version(VERSION - 1)?).map(|_| ());
        let text = older.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            text.contains("is older") && !text.contains("newer"),
            "{text}"
        );
        Ok(())
    }
}
