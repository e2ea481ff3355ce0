//! Sealed secret files: one authenticated format for every secret a protection hands its owner
//! (selective encryption's owner key and licences, EdgePro's password, ...), so that a wrong,
//! tampered, mixed-up or truncated file is always refused with a clear error and never silently
//! yields garbage weights.
//!
//! A sealed file is a small header followed by a ChaCha20-Poly1305 ciphertext of the payload. The
//! header names the kind of secret (`purpose`) and the public fingerprint of what the secret
//! belongs to (`binding`, e.g. a hash of the encrypted model), and both are authenticated as
//! associated data, so a licence for another model or a key file given where a licence is
//! expected is caught before decryption and reported as such.
//!
//! With a passphrase the sealing key comes from Argon2id (salted, memory-hard), which gives
//! confidentiality: the file alone reveals nothing. Without one the key is derived from the salt
//! only: the file is then protected against corruption, tampering by accident and mix-ups, but
//! anyone holding it can read it, like an SSH key without a passphrase. Callers say which in
//! their docs; the harness never logs a payload, and payloads live in memory that is wiped on drop.
//!
//! Layout (all integers little-endian):
//! `magic "PBSEAL" | version u8 | purpose len u8 + bytes | binding 32 | kdf u8 |`
//! `[argon2: m_kib u32, t u32, p u32] | salt 16 | nonce 12 | ciphertext + tag`.

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::TryRngCore;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

const MAGIC: &[u8; 6] = b"PBSEAL";
const VERSION: u8 = 1;
const KDF_NONE: u8 = 0;
const KDF_ARGON2ID: u8 = 1;
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 12;

/// Argon2id cost used for new files: 64 MiB, 3 passes, 1 lane (the RFC 9106 second
/// recommendation, about 0.2 s here). Stored in each file, so it can change without breaking
/// old files.
const ARGON2_M_KIB: u32 = 64 * 1024;
const ARGON2_T: u32 = 3;
const ARGON2_P: u32 = 1;
/// Upper bound accepted from a file, so a crafted header cannot make us allocate gigabytes.
const ARGON2_MAX_M_KIB: u32 = 1024 * 1024;

/// Why a sealed file could not be opened or made. Messages never contain secret material.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// Not a sealed file at all (or cut before the header ends).
    #[error(
        "not a protbench sealed {expected} file (bad header); pass the file `harness protect` wrote"
    )]
    NotSealed {
        /// The kind of secret the caller expected.
        expected: String,
    },
    /// A sealed file of a format version this harness does not read: from a newer harness, or
    /// from an older one whose format was retired. The message says which, and what to do.
    #[error("{}", version_message(*.found))]
    Version {
        /// Version found in the file.
        found: u8,
    },
    /// A different kind of secret (a key file where a licence was expected, ...).
    #[error("this is a sealed {found} file, but a {expected} file is needed here")]
    WrongPurpose {
        /// What the caller expected.
        expected: String,
        /// What the file says it is.
        found: String,
    },
    /// The secret belongs to something else (a licence for another model).
    #[error(
        "this {purpose} belongs to a different model (fingerprint {found}, this model is {expected}); use the file made for this model"
    )]
    WrongBinding {
        /// Kind of secret.
        purpose: String,
        /// Short fingerprint the caller expected.
        expected: String,
        /// Short fingerprint in the file.
        found: String,
    },
    /// The file is passphrase-protected and none was given.
    #[error(
        "this {purpose} file is protected by a passphrase, and none was given; give it (e.g. --passphrase-env VAR)"
    )]
    NeedsPassphrase {
        /// Kind of secret.
        purpose: String,
    },
    /// A passphrase was given for a file sealed without one. Refused rather than ignored: the
    /// caller believes the file is protected by that passphrase, and it is not (anyone holding
    /// the file can open it).
    #[error(
        "this {purpose} file has no passphrase (it was sealed without one), but a passphrase was given; open it without one (drop --passphrase-env), and keep the file private"
    )]
    UnexpectedPassphrase {
        /// Kind of secret.
        purpose: String,
    },
    /// Authentication failed: wrong passphrase, or the file was modified.
    #[error(
        "cannot open this {purpose} file: {}",
        if *.with_passphrase { "wrong passphrase, or the file was modified or corrupted" } else { "the file was modified or corrupted" }
    )]
    Authentication {
        /// Kind of secret.
        purpose: String,
        /// Whether a passphrase was involved (then it may simply be the wrong one).
        with_passphrase: bool,
    },
    /// The OS random source failed.
    #[error("the operating system's random source failed: {0}")]
    Random(String),
    /// A KDF or cipher parameter was rejected.
    #[error("sealing failed: {0}")]
    Crypto(String),
}

/// What to say about a sealed file of format version `found`.
fn version_message(found: u8) -> String {
    if found > VERSION {
        format!(
            "sealed file format version {found} is newer than this harness reads (version \
             {VERSION}); upgrade the harness"
        )
    } else {
        format!(
            "sealed file format version {found} is older than this harness reads (version \
             {VERSION}); open it with the harness release that wrote it, or make it again with \
             this one"
        )
    }
}

/// A 256-bit secret from the operating system's random source, wiped from memory on drop.
pub fn random_secret() -> Result<Zeroizing<[u8; 32]>, SealError> {
    let mut key = Zeroizing::new([0u8; 32]);
    OsRng
        .try_fill_bytes(&mut key[..])
        .map_err(|e| SealError::Random(e.to_string()))?;
    Ok(key)
}

/// The public 32-byte fingerprint of arbitrary bytes (what a sealed secret is bound to).
pub fn fingerprint(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Short hex form of a fingerprint for messages.
pub fn short_hex(fp: &[u8; 32]) -> String {
    fp.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// Seals `payload` as a `purpose` secret bound to `binding`, under `passphrase` if given.
pub fn seal(
    payload: &[u8],
    purpose: &str,
    binding: &[u8; 32],
    passphrase: Option<&str>,
) -> Result<Vec<u8>, SealError> {
    let purpose_bytes = purpose.as_bytes();
    let purpose_len = u8::try_from(purpose_bytes.len())
        .map_err(|_| SealError::Crypto("purpose name longer than 255 bytes".into()))?;
    let mut salt = [0u8; SALT_LEN];
    let mut nonce = [0u8; NONCE_LEN];
    OsRng
        .try_fill_bytes(&mut salt)
        .and_then(|()| OsRng.try_fill_bytes(&mut nonce))
        .map_err(|e| SealError::Random(e.to_string()))?;

    let mut header = Vec::with_capacity(96 + purpose_bytes.len());
    header.extend_from_slice(MAGIC);
    header.push(VERSION);
    header.push(purpose_len);
    header.extend_from_slice(purpose_bytes);
    header.extend_from_slice(binding);
    let kdf = match passphrase {
        Some(_) => {
            header.push(KDF_ARGON2ID);
            for v in [ARGON2_M_KIB, ARGON2_T, ARGON2_P] {
                header.extend_from_slice(&v.to_le_bytes());
            }
            Kdf::Argon2 {
                m_kib: ARGON2_M_KIB,
                t: ARGON2_T,
                p: ARGON2_P,
            }
        }
        None => {
            header.push(KDF_NONE);
            Kdf::None
        }
    };
    header.extend_from_slice(&salt);
    header.extend_from_slice(&nonce);

    let key = derive_key(&kdf, passphrase, &salt)?;
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&key[..]));
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: payload,
                aad: &header,
            },
        )
        .map_err(|_| SealError::Crypto("encryption failed".into()))?;
    header.extend_from_slice(&ct);
    Ok(header)
}

/// The parts of a sealed file's header that are public.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedHeader {
    /// Kind of secret.
    pub purpose: String,
    /// What it is bound to.
    pub binding: [u8; 32],
    /// Whether opening it needs a passphrase.
    pub needs_passphrase: bool,
}

enum Kdf {
    None,
    Argon2 { m_kib: u32, t: u32, p: u32 },
}

struct Parsed<'a> {
    header: SealedHeader,
    kdf: Kdf,
    salt: &'a [u8],
    nonce: &'a [u8],
    aad: &'a [u8],
    ciphertext: &'a [u8],
}

fn parse<'a>(file: &'a [u8], expected: &str) -> Result<Parsed<'a>, SealError> {
    let bad = || SealError::NotSealed {
        expected: expected.to_string(),
    };
    let mut pos = 0usize;
    let mut take = |n: usize| -> Result<&'a [u8], SealError> {
        let s = file.get(pos..pos + n).ok_or_else(bad)?;
        pos += n;
        Ok(s)
    };
    if take(MAGIC.len())? != MAGIC {
        return Err(bad());
    }
    let version = take(1)?[0];
    if version != VERSION {
        return Err(SealError::Version { found: version });
    }
    let plen = take(1)?[0] as usize;
    let purpose = std::str::from_utf8(take(plen)?)
        .map_err(|_| bad())?
        .to_string();
    let binding: [u8; 32] = take(32)?.try_into().map_err(|_| bad())?;
    let kdf = match take(1)?[0] {
        KDF_NONE => Kdf::None,
        KDF_ARGON2ID => {
            let mut v = [0u32; 3];
            for x in &mut v {
                *x = u32::from_le_bytes(take(4)?.try_into().map_err(|_| bad())?);
            }
            Kdf::Argon2 {
                m_kib: v[0],
                t: v[1],
                p: v[2],
            }
        }
        _ => return Err(bad()),
    };
    let salt = take(SALT_LEN)?;
    let nonce = take(NONCE_LEN)?;
    let aad_len = pos;
    let ciphertext = file.get(aad_len..).ok_or_else(bad)?;
    if ciphertext.len() < 16 {
        return Err(bad());
    }
    Ok(Parsed {
        header: SealedHeader {
            purpose,
            binding,
            needs_passphrase: matches!(kdf, Kdf::Argon2 { .. }),
        },
        kdf,
        salt,
        nonce,
        aad: &file[..aad_len],
        ciphertext,
    })
}

/// Reads the public header of a sealed file (to tell the user what it is before asking for a
/// passphrase, or to find which model a licence belongs to).
pub fn peek(file: &[u8], expected: &str) -> Result<SealedHeader, SealError> {
    parse(file, expected).map(|p| p.header)
}

/// Opens a sealed `purpose` secret bound to `binding`. Errors say which check failed; none of
/// them returns any byte of the payload.
pub fn open(
    file: &[u8],
    purpose: &str,
    binding: &[u8; 32],
    passphrase: Option<&str>,
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let p = parse(file, purpose)?;
    if p.header.purpose != purpose {
        return Err(SealError::WrongPurpose {
            expected: purpose.to_string(),
            found: p.header.purpose,
        });
    }
    if &p.header.binding != binding {
        return Err(SealError::WrongBinding {
            purpose: purpose.to_string(),
            expected: short_hex(binding),
            found: short_hex(&p.header.binding),
        });
    }
    if p.header.needs_passphrase && passphrase.is_none() {
        return Err(SealError::NeedsPassphrase {
            purpose: purpose.to_string(),
        });
    }
    if !p.header.needs_passphrase && passphrase.is_some() {
        return Err(SealError::UnexpectedPassphrase {
            purpose: purpose.to_string(),
        });
    }
    let key = derive_key(&p.kdf, passphrase, p.salt)?;
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&key[..]));
    cipher
        .decrypt(
            Nonce::from_slice(p.nonce),
            Payload {
                msg: p.ciphertext,
                aad: p.aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| SealError::Authentication {
            purpose: purpose.to_string(),
            with_passphrase: p.header.needs_passphrase,
        })
}

fn derive_key(
    kdf: &Kdf,
    passphrase: Option<&str>,
    salt: &[u8],
) -> Result<Zeroizing<[u8; 32]>, SealError> {
    let mut key = Zeroizing::new([0u8; 32]);
    match (kdf, passphrase) {
        (Kdf::Argon2 { m_kib, t, p }, Some(pass)) => {
            if *m_kib > ARGON2_MAX_M_KIB {
                return Err(SealError::Crypto(format!(
                    "Argon2 memory cost {m_kib} KiB in the file exceeds the limit {ARGON2_MAX_M_KIB} KiB"
                )));
            }
            let params = Params::new(*m_kib, *t, *p, Some(32))
                .map_err(|e| SealError::Crypto(format!("Argon2 parameters: {e}")))?;
            Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                .hash_password_into(pass.as_bytes(), salt, &mut key[..])
                .map_err(|e| SealError::Crypto(format!("Argon2: {e}")))?;
        }
        _ => {
            let mut h = Sha256::new();
            h.update(b"protbench sealed file v1, no passphrase");
            h.update(salt);
            key.copy_from_slice(&h.finalize());
        }
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIND: [u8; 32] = [7u8; 32];

    #[test]
    fn round_trip_without_and_with_passphrase() {
        let secret = b"tier keys and kernel locations";
        let a = seal(secret, "owner-key", &BIND, None).unwrap();
        assert_eq!(&open(&a, "owner-key", &BIND, None).unwrap()[..], secret);
        assert!(!a.windows(secret.len()).any(|w| w == secret));
        let b = seal(secret, "owner-key", &BIND, Some("correct horse")).unwrap();
        assert!(peek(&b, "owner-key").unwrap().needs_passphrase);
        assert_eq!(
            &open(&b, "owner-key", &BIND, Some("correct horse")).unwrap()[..],
            secret
        );
    }

    #[test]
    fn every_mistake_is_named() {
        let f = seal(b"x", "licence", &BIND, Some("pw")).unwrap();
        assert!(matches!(
            open(&f, "owner-key", &BIND, Some("pw")),
            Err(SealError::WrongPurpose { .. })
        ));
        assert!(matches!(
            open(&f, "licence", &[8u8; 32], Some("pw")),
            Err(SealError::WrongBinding { .. })
        ));
        assert!(matches!(
            open(&f, "licence", &BIND, None),
            Err(SealError::NeedsPassphrase { .. })
        ));
        assert!(matches!(
            open(&f, "licence", &BIND, Some("nope")),
            Err(SealError::Authentication { .. })
        ));
        // A passphrase for a file sealed without one is refused, not ignored.
        let plain = seal(b"x", "licence", &BIND, None).unwrap();
        let err = open(&plain, "licence", &BIND, Some("pw")).unwrap_err();
        assert!(
            matches!(err, SealError::UnexpectedPassphrase { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("has no passphrase"), "{err}");
        assert!(open(&plain, "licence", &BIND, None).is_ok());
        assert!(matches!(
            open(b"hello", "licence", &BIND, None),
            Err(SealError::NotSealed { .. })
        ));
        assert!(matches!(
            open(&f[..f.len() - 20], "licence", &BIND, Some("pw")),
            Err(SealError::Authentication { .. }) | Err(SealError::NotSealed { .. })
        ));
    }

    #[test]
    fn versions_are_called_older_or_newer() {
        let f = seal(b"x", "licence", &BIND, None).unwrap();
        assert_eq!(f[MAGIC.len()], VERSION);
        let with_version = |v: u8| {
            let mut g = f.clone();
            g[MAGIC.len()] = v;
            open(&g, "licence", &BIND, None).unwrap_err()
        };
        let newer = with_version(VERSION + 1);
        assert!(matches!(newer, SealError::Version { .. }), "{newer:?}");
        let text = newer.to_string();
        assert!(
            text.contains("newer") && text.contains("upgrade the harness"),
            "{text}"
        );
        let older = with_version(VERSION - 1).to_string();
        assert!(
            older.contains("older")
                && !older.contains("newer")
                && older.contains("release that wrote it"),
            "{older}"
        );
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let f = seal(b"payload bytes", "password", &BIND, None).unwrap();
        for i in 0..f.len() {
            let mut g = f.clone();
            g[i] ^= 0x10;
            assert!(open(&g, "password", &BIND, None).is_err(), "byte {i}");
        }
    }

    #[test]
    fn secrets_are_fresh() {
        assert_ne!(*random_secret().unwrap(), *random_secret().unwrap());
    }
}
