//! Keys of selective encryption: one 256-bit master secret per encrypted model, one key per
//! tier derived from it, and the two sealed files that carry them (the owner's key file and a
//! customer's licence).
//!
//! Choice: not the paper's small integer seed. The master secret comes from the OS random
//! source; tier `j`'s key is HKDF-SHA256(salt = "protbench selective-encryption v1", ikm =
//! master, info = "tier j"), and each use of a tier key gets its own sub-key by HKDF-Expand
//! with a label ("noise" for the masking stream, "escrow" for the AEAD of the tier's escrow), so
//! one key is never used for two purposes. A level-m licence holds the keys of tiers 0..m-1 and
//! nothing from which another tier key could be computed, so it cannot be widened.
//!
//! Both files are sealed with `harness_core::sealed` and bound to the fingerprint of the
//! encrypted model's tensors. The owner key file takes an optional passphrase (Argon2id); a
//! licence is sealed without one (Choice: a licence is a bearer token held by its customer, like
//! an SSH key without a passphrase; the seal still catches corruption, tampering and mix-ups).
//!
//! Payloads (inside the seal): owner key `"SEK1" | levels u8 | master 32`; licence
//! `"SEL1" | level u8 | levels u8 | level x tier key 32`.

use harness_core::sealed::{self, SealError};
use harness_core::{Error, Result};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

/// Purpose string of the owner's key file.
pub const OWNER_PURPOSE: &str = "selective-encryption owner key";
/// Purpose string of a licence.
pub const LICENCE_PURPOSE: &str = "selective-encryption licence";
/// Most access levels a model may have (one byte in the files, and far beyond any use).
pub const MAX_LEVELS: usize = 32;

const SALT: &[u8] = b"protbench selective-encryption v1";
const OWNER_MAGIC: &[u8; 4] = b"SEK1";
const LICENCE_MAGIC: &[u8; 4] = b"SEL1";

/// A 256-bit key, wiped on drop.
pub type Key = Zeroizing<[u8; 32]>;

/// The key of tier `tier` of the model encrypted under `master`.
pub fn tier_key(master: &[u8; 32], tier: usize) -> Result<Key> {
    let hk = Hkdf::<Sha256>::new(Some(SALT), master);
    let mut key = Zeroizing::new([0u8; 32]);
    hk.expand(format!("tier {tier}").as_bytes(), &mut key[..])
        .map_err(|_| SealError::Crypto("HKDF output length".into()))?;
    Ok(key)
}

/// The sub-key of `tier_key` for one purpose (`"noise"`, `"escrow"`).
pub fn subkey(tier_key: &[u8; 32], label: &str) -> Result<Key> {
    let hk = Hkdf::<Sha256>::from_prk(tier_key)
        .map_err(|_| SealError::Crypto("HKDF pseudo-random key length".into()))?;
    let mut key = Zeroizing::new([0u8; 32]);
    hk.expand(label.as_bytes(), &mut key[..])
        .map_err(|_| SealError::Crypto("HKDF output length".into()))?;
    Ok(key)
}

/// What the owner keeps: the master secret and the number of levels.
pub struct OwnerKey {
    /// The master secret.
    pub master: Key,
    /// Access levels of the model (tiers = levels).
    pub levels: usize,
}

/// What a customer holds: the keys of the tiers below its level.
pub struct Licence {
    /// Access level (0 ..= levels).
    pub level: usize,
    /// Access levels of the model.
    pub levels: usize,
    /// Keys of tiers 0..level.
    pub tier_keys: Vec<Key>,
}

fn payload_error(what: &str) -> Error {
    // Only reachable with a file sealed by another program under our purpose string.
    Error::Config(format!(
        "the {what} opened but its content is not what this harness writes"
    ))
}

/// Seals the owner's key file, bound to `binding` (the encrypted model's fingerprint).
pub fn seal_owner_key(
    owner: &OwnerKey,
    binding: &[u8; 32],
    passphrase: Option<&str>,
) -> Result<Vec<u8>> {
    let mut payload = Zeroizing::new(Vec::with_capacity(37));
    payload.extend_from_slice(OWNER_MAGIC);
    payload.push(level_byte(owner.levels)?);
    payload.extend_from_slice(&owner.master[..]);
    Ok(sealed::seal(&payload, OWNER_PURPOSE, binding, passphrase)?)
}

/// Opens an owner key file; returns the key and the fingerprint of the model it belongs to.
pub fn open_owner_key(file: &[u8], passphrase: Option<&str>) -> Result<(OwnerKey, [u8; 32])> {
    let header = sealed::peek(file, OWNER_PURPOSE)?;
    let payload = sealed::open(file, OWNER_PURPOSE, &header.binding, passphrase)?;
    if payload.len() != 37 || &payload[..4] != OWNER_MAGIC {
        return Err(payload_error("owner key file"));
    }
    let levels = payload[4] as usize;
    if levels == 0 || levels > MAX_LEVELS {
        return Err(payload_error("owner key file"));
    }
    let mut master = Zeroizing::new([0u8; 32]);
    master.copy_from_slice(&payload[5..37]);
    Ok((OwnerKey { master, levels }, header.binding))
}

/// The licence of access level `level` (0 = nothing, `levels` = everything).
pub fn licence_for(owner: &OwnerKey, level: usize) -> Result<Licence> {
    if level > owner.levels {
        return Err(Error::Config(format!(
            "level {level} does not exist: this model has levels 0 to {}",
            owner.levels
        )));
    }
    let tier_keys = (0..level)
        .map(|t| tier_key(&owner.master, t))
        .collect::<Result<Vec<_>>>()?;
    Ok(Licence {
        level,
        levels: owner.levels,
        tier_keys,
    })
}

/// Seals a licence, bound to `binding` (the encrypted model's fingerprint), without passphrase.
pub fn seal_licence(licence: &Licence, binding: &[u8; 32]) -> Result<Vec<u8>> {
    let mut payload = Zeroizing::new(Vec::with_capacity(6 + 32 * licence.tier_keys.len()));
    payload.extend_from_slice(LICENCE_MAGIC);
    payload.push(level_byte(licence.level)?);
    payload.push(level_byte(licence.levels)?);
    for k in &licence.tier_keys {
        payload.extend_from_slice(&k[..]);
    }
    Ok(sealed::seal(&payload, LICENCE_PURPOSE, binding, None)?)
}

/// Opens a licence for the model whose fingerprint is `binding`.
pub fn open_licence(file: &[u8], binding: &[u8; 32]) -> Result<Licence> {
    let payload = sealed::open(file, LICENCE_PURPOSE, binding, None)?;
    if payload.len() < 6 || &payload[..4] != LICENCE_MAGIC {
        return Err(payload_error("licence"));
    }
    let (level, levels) = (payload[4] as usize, payload[5] as usize);
    if level > levels || levels > MAX_LEVELS || payload.len() != 6 + 32 * level {
        return Err(payload_error("licence"));
    }
    let tier_keys = payload[6..]
        .chunks_exact(32)
        .map(|c| {
            let mut k = Zeroizing::new([0u8; 32]);
            k.copy_from_slice(c);
            k
        })
        .collect();
    Ok(Licence {
        level,
        levels,
        tier_keys,
    })
}

fn level_byte(n: usize) -> Result<u8> {
    u8::try_from(n)
        .ok()
        .filter(|&b| (b as usize) <= MAX_LEVELS)
        .ok_or_else(|| Error::Config(format!("at most {MAX_LEVELS} levels, got {n}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_keys_differ_and_licences_hold_exactly_the_lower_tiers() -> Result<()> {
        let owner = OwnerKey {
            master: Zeroizing::new([3u8; 32]),
            levels: 4,
        };
        let keys: Vec<Key> = (0..4)
            .map(|t| tier_key(&owner.master, t))
            .collect::<Result<_>>()?;
        for i in 0..4 {
            for j in 0..i {
                assert_ne!(keys[i][..], keys[j][..]);
            }
            assert_ne!(keys[i][..], owner.master[..]);
        }
        assert_ne!(
            subkey(&keys[0], "noise")?[..],
            subkey(&keys[0], "escrow")?[..]
        );
        let bind = [9u8; 32];
        let lic = licence_for(&owner, 2)?;
        let file = seal_licence(&lic, &bind)?;
        let back = open_licence(&file, &bind)?;
        assert_eq!((back.level, back.levels), (2, 4));
        assert_eq!(back.tier_keys.len(), 2);
        assert_eq!(back.tier_keys[1][..], keys[1][..]);
        assert!(!file.windows(32).any(|w| w == &keys[0][..]));
        assert!(licence_for(&owner, 5).is_err());
        let key_file = seal_owner_key(&owner, &bind, None)?;
        let (again, b) = open_owner_key(&key_file, None)?;
        assert_eq!((again.levels, b), (4, bind));
        assert!(matches!(
            open_licence(&key_file, &bind),
            Err(Error::Sealed(SealError::WrongPurpose { .. }))
        ));
        Ok(())
    }
}
