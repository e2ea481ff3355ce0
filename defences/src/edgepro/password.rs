//! The EdgePro password: which neurons of which stages are authorised, their locking values, and
//! the scale of the other neurons. It is the protection's only secret, so it only ever leaves
//! memory sealed ([`harness_core::sealed`]) and bound to the locked weights: a password file for
//! another model, a modified file or a wrong passphrase is refused with a clear error, never
//! turned into a wrong hook.
//!
//! Payload layout (little-endian): `"EPPW" | version u8 | scale f32 | stages u16 |` then per
//! stage `name len u8 + bytes | channels u32 | count u32 | count x (neuron u32, value f32)`.

use candle_core::Device;
use harness_core::sealed;
use harness_core::{Error, Model, ParamStore, Result};
use zeroize::Zeroizing;

use harness_core::protect::MaskHook;
use harness_core::protect::masked::factors;

/// The purpose name of sealed password files.
pub const PURPOSE: &str = "edgepro-password";

const MAGIC: &[u8; 4] = b"EPPW";
const VERSION: u8 = 1;

/// The lock of one stage.
#[derive(Debug, Clone, PartialEq)]
pub struct StageLock {
    /// Stage name ([`harness_core::zoo::StageInfo::name`]).
    pub stage: String,
    /// Channels of the stage (checked against the model when the hook is built).
    pub channels: usize,
    /// The authorised neurons.
    pub neurons: Vec<usize>,
    /// Each authorised neuron's locking value (its multiplier with the password).
    pub values: Vec<f32>,
}

/// A whole password.
///
/// Choice: with the password, an authorised neuron's activation is multiplied by its locking
/// value (lambda, 0 by default: the authors' `--lam 0`) and every other neuron of a locked stage
/// by `scale` (1 by default, which leaves them as they are, as in the authors' code; the paper
/// lists a scale factor in the password without fixing its role, and this is the reading under
/// which the default reproduces the code).
#[derive(Debug, Clone, PartialEq)]
pub struct Password {
    /// Multiplier of the non-authorised neurons of locked stages.
    pub scale: f32,
    /// One lock per locked stage, in stage order.
    pub locks: Vec<StageLock>,
}

impl Password {
    /// The hook that applies this password to `model`, whose stages must match by name and
    /// channel count.
    pub fn hook(&self, model: &dyn Model, device: &Device) -> Result<MaskHook> {
        let stages = model.stages();
        let mut masks = Vec::with_capacity(self.locks.len());
        for lock in &self.locks {
            let index = model.find_stage(&lock.stage).ok_or_else(|| {
                Error::Config(format!(
                    "the password locks stage `{}`, which `{}` does not have",
                    lock.stage,
                    model.spec().arch
                ))
            })?;
            masks.push((
                index,
                factors(lock.channels, &lock.neurons, &lock.values, self.scale),
            ));
        }
        MaskHook::new(stages, &masks, device)
    }

    /// Authorised neurons over all stages.
    pub fn locked_neurons(&self) -> usize {
        self.locks.iter().map(|l| l.neurons.len()).sum()
    }

    /// The payload bytes (the secret itself; its length is the password size).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let too_big = |what: &str| Error::Config(format!("password {what} too large to encode"));
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.scale.to_le_bytes());
        let stages = u16::try_from(self.locks.len()).map_err(|_| too_big("stage count"))?;
        out.extend_from_slice(&stages.to_le_bytes());
        for lock in &self.locks {
            let name = lock.stage.as_bytes();
            out.push(u8::try_from(name.len()).map_err(|_| too_big("stage name"))?);
            out.extend_from_slice(name);
            let channels = u32::try_from(lock.channels).map_err(|_| too_big("channel count"))?;
            out.extend_from_slice(&channels.to_le_bytes());
            if lock.neurons.len() != lock.values.len() {
                return Err(Error::Config(format!(
                    "stage `{}`: {} neurons but {} locking values",
                    lock.stage,
                    lock.neurons.len(),
                    lock.values.len()
                )));
            }
            let count = u32::try_from(lock.neurons.len()).map_err(|_| too_big("neuron count"))?;
            out.extend_from_slice(&count.to_le_bytes());
            for (&n, &v) in lock.neurons.iter().zip(&lock.values) {
                let n = u32::try_from(n).map_err(|_| too_big("neuron index"))?;
                out.extend_from_slice(&n.to_le_bytes());
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        Ok(out)
    }

    /// Parses a payload written by [`Password::to_bytes`]; any inconsistency is an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let bad = |why: &str| Error::Config(format!("malformed EdgePro password: {why}"));
        let mut r = Reader { bytes, pos: 0 };
        if r.take(4).ok_or_else(|| bad("truncated"))? != MAGIC {
            return Err(bad("bad magic"));
        }
        let version = r.u8().ok_or_else(|| bad("truncated"))?;
        if version > VERSION {
            return Err(bad(&format!(
                "version {version} is newer than this harness reads (version {VERSION}); \
                 upgrade the harness"
            )));
        }
        if version < VERSION {
            return Err(bad(&format!(
                "version {version} is older than this harness reads (version {VERSION}); use \
                 the harness release that locked the model"
            )));
        }
        let scale = r.f32().ok_or_else(|| bad("truncated"))?;
        let stages = r.u16().ok_or_else(|| bad("truncated"))?;
        let mut locks = Vec::with_capacity(stages as usize);
        for _ in 0..stages {
            let len = r.u8().ok_or_else(|| bad("truncated"))? as usize;
            let name = r.take(len).ok_or_else(|| bad("truncated"))?;
            let stage = String::from_utf8(name.to_vec()).map_err(|_| bad("stage name"))?;
            let channels = r.u32().ok_or_else(|| bad("truncated"))? as usize;
            let count = r.u32().ok_or_else(|| bad("truncated"))? as usize;
            if count > channels {
                return Err(bad("more authorised neurons than channels"));
            }
            let (mut neurons, mut values) = (Vec::with_capacity(count), Vec::with_capacity(count));
            for _ in 0..count {
                let n = r.u32().ok_or_else(|| bad("truncated"))? as usize;
                let v = r.f32().ok_or_else(|| bad("truncated"))?;
                if n >= channels || neurons.contains(&n) {
                    return Err(bad("neuron index out of range or repeated"));
                }
                neurons.push(n);
                values.push(v);
            }
            locks.push(StageLock {
                stage,
                channels,
                neurons,
                values,
            });
        }
        if r.pos != bytes.len() {
            return Err(bad("trailing bytes"));
        }
        Ok(Self { scale, locks })
    }

    /// The sealed password file, bound to the locked weights `locked` and, when `passphrase` is
    /// given, encrypted under it (without one the file resists tampering and mix-ups but is
    /// readable by whoever holds it: see [`harness_core::sealed`]).
    pub fn seal(&self, locked: &ParamStore, passphrase: Option<&str>) -> Result<Vec<u8>> {
        let payload = Zeroizing::new(self.to_bytes()?);
        Ok(sealed::seal(
            &payload,
            PURPOSE,
            &binding(locked)?,
            passphrase,
        )?)
    }

    /// Opens a sealed password file for the locked weights `locked`. Errors say whether the
    /// file is not a password, belongs to other weights, needs or has a wrong passphrase, or was
    /// modified.
    pub fn open(file: &[u8], locked: &ParamStore, passphrase: Option<&str>) -> Result<Self> {
        let payload = sealed::open(file, PURPOSE, &binding(locked)?, passphrase)?;
        Self::from_bytes(&payload)
    }
}

/// The public fingerprint of the locked weights a password belongs to.
pub fn binding(locked: &ParamStore) -> Result<[u8; 32]> {
    Ok(sealed::fingerprint(&locked.to_safetensors_bytes()?))
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.bytes.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn f32(&mut self) -> Option<f32> {
        Some(f32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn sample() -> Password {
        Password {
            scale: 1.0,
            locks: vec![
                StageLock {
                    stage: "layer1".into(),
                    channels: 16,
                    neurons: vec![3, 0],
                    values: vec![0.0, 0.5],
                },
                StageLock {
                    stage: "pool".into(),
                    channels: 64,
                    neurons: vec![63],
                    values: vec![0.0],
                },
            ],
        }
    }

    #[test]
    fn payload_round_trips_and_rejects_garbage() -> Result<()> {
        let p = sample();
        let bytes = p.to_bytes()?;
        assert_eq!(
            bytes.len(),
            4 + 1 + 4 + 2 + (1 + 6 + 8 + 16) + (1 + 4 + 8 + 8)
        );
        assert_eq!(Password::from_bytes(&bytes)?, p);
        assert!(Password::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(Password::from_bytes(&extra).is_err());
        let mut out_of_range = p.clone();
        out_of_range.locks[0].neurons[0] = 16;
        assert!(Password::from_bytes(&out_of_range.to_bytes()?).is_err());
        // The version byte follows the magic: older and newer are told apart.
        for (version, word) in [(VERSION + 1, "newer"), (VERSION - 1, "older")] {
            let mut other = bytes.clone();
            other[4] = version;
            let text = Password::from_bytes(&other)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(text.contains(&format!("is {word}")), "{text}");
        }
        Ok(())
    }
}
