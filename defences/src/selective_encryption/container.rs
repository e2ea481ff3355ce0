//! The model file as selective encryption reads and writes it: an ordinary safetensors file
//! (anyone can load and run the encrypted model; it is just useless), its tensors held on the
//! host, and the public fingerprint that key files and licences are bound to.
//!
//! The fingerprint is SHA-256 over the tensors in name order (name, dtype, shape, bytes), not
//! over the file: the header's metadata (which carries the escrow, see [`super::cipher`]) is
//! authenticated separately, and a file re-serialised with its keys in another order keeps its
//! fingerprint.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;

use harness_core::{Error, Result};
use safetensors::{Dtype, SafeTensors, View};
use sha2::{Digest, Sha256};

/// One tensor of a safetensors file, owned.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// State-dict name.
    pub name: String,
    /// Stored dtype.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Little-endian bytes as stored.
    pub data: Vec<u8>,
}

impl View for &Entry {
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

/// Every tensor of a safetensors file (sorted by name) and its header metadata.
#[derive(Debug, Clone)]
pub(crate) struct Container {
    /// Tensors sorted by name.
    pub entries: Vec<Entry>,
    /// The `__metadata__` map, `None` when the file has none.
    pub metadata: Option<HashMap<String, String>>,
}

/// An error about in-memory file content. It names no file (this module only sees bytes); a
/// caller that read the bytes from a file names it with [`Error::in_file`].
pub(crate) fn bad(message: impl Into<String>) -> Error {
    Error::BadFile {
        path: PathBuf::new(),
        message: message.into(),
    }
}

impl Container {
    /// Parses safetensors bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let file = SafeTensors::deserialize(bytes)
            .map_err(|e| bad(format!("not a valid safetensors file ({e})")))?;
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("not a valid safetensors file ({e})")))?;
        let mut entries: Vec<Entry> = file
            .tensors()
            .into_iter()
            .map(|(name, view)| Entry {
                name,
                dtype: view.dtype(),
                shape: view.shape().to_vec(),
                data: view.data().to_vec(),
            })
            .collect();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self {
            entries,
            metadata: header.metadata().clone(),
        })
    }

    /// The file content. Tensor order and alignment are those of the `safetensors` crate (the
    /// writer of `harness train` and of `safetensors.torch`), so a file it wrote is reproduced
    /// byte for byte when the tensors and a metadata map of at most one entry are unchanged
    /// (serde writes larger maps in hash order).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        safetensors::serialize(
            self.entries.iter().map(|e| (e.name.as_str(), e)),
            self.metadata.clone(),
        )
        .map_err(|e| bad(format!("cannot serialise the model ({e})")))
    }

    /// Position of the tensor called `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.entries
            .binary_search_by(|e| e.name.as_str().cmp(name))
            .ok()
    }

    /// The values of an f32 tensor.
    pub fn f32_values(&self, index: usize) -> Result<Vec<f32>> {
        let e = &self.entries[index];
        if e.dtype != Dtype::F32 {
            return Err(bad(format!(
                "tensor `{}` is {:?}; selective encryption handles f32 weights",
                e.name, e.dtype
            )));
        }
        Ok(e.data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// Overwrites the values of an f32 tensor (same length).
    pub fn set_f32_values(&mut self, index: usize, values: &[f32]) -> Result<()> {
        let e = &mut self.entries[index];
        if e.dtype != Dtype::F32 || e.data.len() != values.len() * 4 {
            return Err(bad(format!(
                "tensor `{}` cannot take {} f32 values",
                e.name,
                values.len()
            )));
        }
        for (c, v) in e.data.chunks_exact_mut(4).zip(values) {
            c.copy_from_slice(&v.to_le_bytes());
        }
        Ok(())
    }

    /// The public fingerprint of the tensors (see the module docs).
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"protbench selective-encryption tensors v1");
        for e in &self.entries {
            h.update((e.name.len() as u64).to_le_bytes());
            h.update(e.name.as_bytes());
            let dtype = format!("{:?}", e.dtype);
            h.update((dtype.len() as u64).to_le_bytes());
            h.update(dtype.as_bytes());
            h.update((e.shape.len() as u64).to_le_bytes());
            for d in &e.shape {
                h.update((*d as u64).to_le_bytes());
            }
            h.update((e.data.len() as u64).to_le_bytes());
            h.update(&e.data);
        }
        h.finalize().into()
    }
}

/// The fingerprint of a model file's tensors (what its key file and licences are bound to).
pub fn model_fingerprint(bytes: &[u8]) -> Result<[u8; 32]> {
    Ok(Container::parse(bytes)?.fingerprint())
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding: the escrow travels in the header's string metadata.
pub(crate) fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Inverse of [`base64_encode`]; `None` on any malformed input.
pub(crate) fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let value = |c: u8| -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    };
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    let quads = bytes.len() / 4;
    for (q, chunk) in bytes.chunks(4).enumerate() {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && q + 1 != quads) {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * pad as u32;
        let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&decoded[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_errors_name_no_placeholder_and_take_the_callers_path() {
        let err = Container::parse(b"not safetensors").err();
        let text = err.as_ref().map(ToString::to_string).unwrap_or_default();
        assert!(text.starts_with("not a valid safetensors file"), "{text}");
        assert!(!text.contains('<'), "{text}");
        let named = err
            .map(|e| e.in_file(std::path::Path::new("dir/enc.st")).to_string())
            .unwrap_or_default();
        assert!(
            named.starts_with("dir/enc.st: not a valid safetensors file"),
            "{named}"
        );
    }

    #[test]
    fn base64_round_trips_every_length() {
        for len in 0..20usize {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let text = base64_encode(&data);
            assert_eq!(base64_decode(&text), Some(data), "len {len}");
        }
        assert_eq!(base64_encode(b"Man"), "TWFu");
        assert_eq!(base64_encode(b"Ma"), "TWE=");
        assert_eq!(base64_decode("TWE"), None);
        assert_eq!(base64_decode("T=E="), None);
        assert_eq!(base64_decode("TW!="), None);
    }
}
