//! The decoded-image cache: one compact binary file per dataset split.
//!
//! Decoding 60,000 small JPEG files takes seconds; reading one file of raw pixels takes a fraction
//! of that. After an image-file layout (CIFAR-10 folders, Tiny-ImageNet, image-folder) is decoded,
//! the [`ImageSet`] is written under the cache directory, keyed by a sha256 over the source
//! listing (relative path, size and modification time of every file read), the dataset id, the
//! split and [`LOADER_VERSION`]. Any change to the sources gives a new key, so a stale cache is
//! never used. Files are written atomically and carry a sha256 of their contents: a corrupt or
//! truncated cache file is reported on stderr, ignored and rebuilt.
//!
//! File format (all integers little-endian):
//!
//! | field | bytes |
//! | --- | --- |
//! | magic `PBIMGSET` | 8 |
//! | format version (u32) | 4 |
//! | cache key, 64 lowercase hex digits | 64 |
//! | channels, height, width (u32 each) | 12 |
//! | image count (u64) | 8 |
//! | class count (u32), then per class: name length (u32) + UTF-8 name | 4 + ... |
//! | pixels, N x C x H x W | N·C·H·W |
//! | labels (u32 each) | 4·N |
//! | sha256 of every byte above | 32 |

use crate::catalog::{LoadOptions, Loaded, Origin};
use crate::{DataError, ImageSet, Result, Split};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Bumped whenever a loader changes what it produces from the same files (decoder settings,
/// file order, label rules), so that caches written by older code are not reused.
pub const LOADER_VERSION: u32 = 1;

/// Version of the cache file layout described in the module docs.
pub const FORMAT_VERSION: u32 = 1;

/// First bytes of every cache file.
const MAGIC: &[u8; 8] = b"PBIMGSET";

/// File name extension of cache files.
const EXTENSION: &str = "pbset";

/// Limits that keep a corrupt header from asking for absurd allocations.
const MAX_DIM: u32 = 1 << 16;
const MAX_CLASSES: u32 = 1 << 20;
const MAX_NAME_LEN: u32 = 1 << 16;

/// Set once the "cache directory not writable" warning has been printed in this process.
static WRITE_WARNED: AtomicBool = AtomicBool::new(false);

/// One source file that went into a decoded set, as it enters the cache key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// Path relative to the dataset root, with `/` separators.
    pub rel: String,
    /// File size in bytes.
    pub size: u64,
    /// Modification time in nanoseconds since the Unix epoch (0 when the OS does not say).
    pub mtime_ns: i128,
}

impl SourceFile {
    /// Describes `rel` from metadata already at hand (e.g. from a directory listing).
    pub fn new(rel: impl Into<String>, meta: &std::fs::Metadata) -> Self {
        let mtime_ns = meta
            .modified()
            .ok()
            .map(|t| match t.duration_since(std::time::UNIX_EPOCH) {
                Ok(after) => after.as_nanos() as i128,
                Err(before) => -(before.duration().as_nanos() as i128),
            })
            .unwrap_or(0);
        Self {
            rel: rel.into(),
            size: meta.len(),
            mtime_ns,
        }
    }

    /// Describes `root/rel` by reading its metadata.
    pub fn stat(root: &Path, rel: &str) -> Result<Self> {
        let path = root.join(rel);
        let meta = std::fs::metadata(&path).map_err(|e| DataError::io(&path, e))?;
        Ok(Self::new(rel, &meta))
    }
}

/// The cache key (64 hex digits) for a dataset split decoded from `sources`.
pub fn cache_key(dataset: &str, split: Split, sources: &[SourceFile]) -> String {
    let mut h = Sha256::new();
    h.update(b"protbench-decoded-cache\0");
    h.update(LOADER_VERSION.to_le_bytes());
    h.update(FORMAT_VERSION.to_le_bytes());
    h.update((dataset.len() as u64).to_le_bytes());
    h.update(dataset.as_bytes());
    h.update(split.as_str().as_bytes());
    h.update((sources.len() as u64).to_le_bytes());
    for s in sources {
        h.update((s.rel.len() as u64).to_le_bytes());
        h.update(s.rel.as_bytes());
        h.update(s.size.to_le_bytes());
        h.update(s.mtime_ns.to_le_bytes());
    }
    hex(&h.finalize())
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A file-name-safe stem for a dataset id: built-in ids as they are, anything else (paths of
/// image-folder datasets) sanitised and suffixed with a hash so that different folders differ.
fn file_stem(dataset: &str) -> String {
    let safe: String = dataset
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe == dataset && safe.len() <= 64 {
        return safe;
    }
    let tail: String = safe
        .chars()
        .rev()
        .take(40)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let digest = hex(&Sha256::digest(dataset.as_bytes()));
    format!("{}-{}", tail.trim_matches('_'), &digest[..12])
}

/// Prefix shared by every cache file of one dataset split, whatever its key.
fn file_prefix(dataset: &str, split: Split) -> String {
    format!("{}-{}-", file_stem(dataset), split.as_str())
}

/// Where the cache file for `dataset`/`split` with `key` lives under `cache_dir`.
pub fn cache_path(cache_dir: &Path, dataset: &str, split: Split, key: &str) -> PathBuf {
    let short = key.get(..16).unwrap_or(key);
    cache_dir.join(format!(
        "{}{short}.{EXTENSION}",
        file_prefix(dataset, split)
    ))
}

/// Writes `set` to `path` atomically (a temporary file in the same folder, then a rename),
/// creating the folder if needed.
pub fn write_set(path: &Path, key: &str, set: &ImageSet) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".pbset-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| DataError::io(dir, e))?;
    {
        let mut w = HashingWriter {
            inner: BufWriter::with_capacity(1 << 20, tmp.as_file()),
            hasher: Sha256::new(),
        };
        let io = |e| DataError::io(tmp.path(), e);
        write_header(&mut w, key, set).map_err(io)?;
        w.write_all(&set.images).map_err(io)?;
        let mut labels = Vec::with_capacity(set.labels.len() * 4);
        for l in &set.labels {
            labels.extend_from_slice(&l.to_le_bytes());
        }
        w.write_all(&labels).map_err(io)?;
        let digest = w.hasher.finalize();
        w.inner.write_all(&digest).map_err(io)?;
        w.inner.flush().map_err(io)?;
    }
    // Readable by others like any cache file (temporary files start out private).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = tmp
            .as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644));
    }
    tmp.persist(path)
        .map_err(|e| DataError::io(path, e.error))?;
    Ok(())
}

/// Writes everything before the pixels.
fn write_header(w: &mut impl Write, key: &str, set: &ImageSet) -> std::io::Result<()> {
    let dim = |v: usize| {
        u32::try_from(v).map_err(|_| std::io::Error::other(format!("dimension {v} too large")))
    };
    w.write_all(MAGIC)?;
    w.write_all(&FORMAT_VERSION.to_le_bytes())?;
    let mut key_bytes = [b'0'; 64];
    let kb = key.as_bytes();
    let n = kb.len().min(64);
    key_bytes[..n].copy_from_slice(&kb[..n]);
    w.write_all(&key_bytes)?;
    for v in [set.channels, set.height, set.width] {
        w.write_all(&dim(v)?.to_le_bytes())?;
    }
    w.write_all(&(set.labels.len() as u64).to_le_bytes())?;
    w.write_all(&dim(set.class_names.len())?.to_le_bytes())?;
    for name in &set.class_names {
        w.write_all(&dim(name.len())?.to_le_bytes())?;
        w.write_all(name.as_bytes())?;
    }
    Ok(())
}

/// A writer that hashes what passes through it.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Reads a cache file written by [`write_set`], checking magic, version, key, sizes and the
/// trailing sha256; any mismatch is a [`DataError::Format`] naming the file.
pub fn read_set(path: &Path, key: &str) -> Result<ImageSet> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let file_len = file.metadata().map_err(|e| DataError::io(path, e))?.len();
    let mut r = CacheReader {
        inner: BufReader::with_capacity(1 << 16, file),
        hasher: Sha256::new(),
        pos: 0,
        file_len,
        path,
    };

    let magic: [u8; 8] = r.array("magic")?;
    if &magic != MAGIC {
        return Err(r.bad("wrong magic bytes (not a protbench cache file)"));
    }
    let version = r.u32("format version")?;
    if version != FORMAT_VERSION {
        return Err(r.bad(format!(
            "format version {version}, expected {FORMAT_VERSION}"
        )));
    }
    let key_bytes: [u8; 64] = r.array("cache key")?;
    if key.as_bytes().get(..64) != Some(&key_bytes[..]) {
        return Err(r.bad("written for a different source listing (key mismatch)"));
    }
    let mut dims = [0u64; 3];
    for d in &mut dims {
        let v = r.u32("image shape")?;
        if v == 0 || v > MAX_DIM {
            return Err(r.bad(format!("image dimension {v} out of range")));
        }
        *d = u64::from(v);
    }
    let count = u64::from_le_bytes(r.array("image count")?);
    let classes = r.u32("class count")?;
    if classes > MAX_CLASSES {
        return Err(r.bad(format!("class count {classes} out of range")));
    }
    let mut class_names = Vec::with_capacity(classes as usize);
    for i in 0..classes {
        let len = r.u32("class name length")?;
        if len > MAX_NAME_LEN || u64::from(len) > file_len.saturating_sub(r.pos) {
            return Err(r.bad(format!("class name {i} has impossible length {len}")));
        }
        let mut name = vec![0u8; len as usize];
        r.fill(&mut name, "class names")?;
        match String::from_utf8(name) {
            Ok(name) => class_names.push(name),
            Err(_) => return Err(r.bad(format!("class name {i} is not UTF-8"))),
        }
    }

    let [c, h, w] = dims;
    let pixels = count.checked_mul(c * h * w);
    let expected = pixels
        .zip(count.checked_mul(4))
        .and_then(|(p, l)| r.pos.checked_add(p)?.checked_add(l)?.checked_add(32));
    let (Some(pixels), Some(expected)) = (pixels, expected) else {
        return Err(r.bad(format!("image count {count} out of range")));
    };
    if expected != file_len {
        return Err(r.bad(format!(
            "{file_len} bytes, expected {expected} for {count} images of {c}x{h}x{w} \
             (truncated or partly written)"
        )));
    }
    let (Ok(pixels), Ok(label_len)) = (usize::try_from(pixels), usize::try_from(count * 4)) else {
        return Err(r.bad(format!("image count {count} too large for this machine")));
    };
    let mut images = vec![0u8; pixels];
    r.fill(&mut images, "pixels")?;
    let mut label_bytes = vec![0u8; label_len];
    r.fill(&mut label_bytes, "labels")?;
    let mut digest = [0u8; 32];
    if let Err(e) = r.inner.read_exact(&mut digest) {
        return Err(r.bad(format!("truncated checksum: {e}")));
    }
    if r.hasher.clone().finalize()[..] != digest[..] {
        return Err(r.bad("checksum mismatch (the file is corrupt)"));
    }
    let labels = label_bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    ImageSet::new(
        images,
        labels,
        (c as usize, h as usize, w as usize),
        class_names,
    )
    .map_err(|e| r.bad(e.to_string()))
}

/// Reads a cache file while hashing it and tracking the offset for error messages.
struct CacheReader<'a> {
    inner: BufReader<File>,
    hasher: Sha256,
    pos: u64,
    file_len: u64,
    path: &'a Path,
}

impl CacheReader<'_> {
    /// An error naming the cache file.
    fn bad(&self, msg: impl std::fmt::Display) -> DataError {
        DataError::format(self.path, format!("invalid decoded-cache file: {msg}"))
    }

    /// Fills `buf` from the file, hashing it.
    /// Large buffers are read and hashed in chunks, so each chunk is hashed while it is still
    /// in the CPU cache.
    fn fill(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        for chunk in buf.chunks_mut(1 << 20) {
            if let Err(e) = self.inner.read_exact(chunk) {
                return Err(self.bad(format!(
                    "truncated at byte {} while reading the {what} ({e}); the file has {} bytes",
                    self.pos, self.file_len
                )));
            }
            self.hasher.update(&*chunk);
            self.pos += chunk.len() as u64;
        }
        Ok(())
    }

    /// Reads a fixed-size field.
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut buf = [0u8; N];
        self.fill(&mut buf, what)?;
        Ok(buf)
    }

    /// Reads a little-endian u32.
    fn u32(&mut self, what: &str) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }
}

/// Returns the cached set for these sources when a valid one exists; otherwise runs `decode`
/// and caches its result. Cache problems never fail the load: a bad file is rebuilt, an
/// unwritable folder is reported once and skipped.
pub(crate) fn cached_or_decode(
    opts: &LoadOptions,
    dataset: &str,
    split: Split,
    sources: &[SourceFile],
    decode: impl FnOnce() -> Result<ImageSet>,
) -> Result<Loaded> {
    if !opts.use_cache {
        return decode().map(|set| Loaded {
            set,
            origin: Origin::Decoded,
        });
    }
    let dir = opts.resolved_cache_dir();
    let key = cache_key(dataset, split, sources);
    let path = cache_path(&dir, dataset, split, &key);
    if path.is_file() {
        match read_set(&path, &key) {
            Ok(set) => {
                return Ok(Loaded {
                    set,
                    origin: Origin::Cache,
                });
            }
            Err(e) => eprintln!("warning: ignoring decoded cache: {e}; rebuilding it"),
        }
    }
    let set = decode()?;
    match write_set(&path, &key, &set) {
        Ok(()) => remove_stale(&dir, dataset, split, &path),
        Err(e) => {
            if !WRITE_WARNED.swap(true, Ordering::Relaxed) {
                eprintln!(
                    "warning: cannot write the decoded cache ({e}); continuing without it. \
                     Point HARNESS_CACHE at a writable folder to make later loads fast."
                );
            }
        }
    }
    Ok(Loaded {
        set,
        origin: Origin::Decoded,
    })
}

/// Deletes older cache files of the same dataset split (other keys), so that the cache does not
/// grow each time the sources change. Failures are ignored: stale files are only wasted space.
fn remove_stale(dir: &Path, dataset: &str, split: Split, keep: &Path) {
    let prefix = file_prefix(dataset, split);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(rest) = name.strip_prefix(&prefix) {
            let is_key = rest
                .strip_suffix(&format!(".{EXTENSION}"))
                .is_some_and(|k| k.len() == 16 && k.bytes().all(|b| b.is_ascii_hexdigit()));
            if is_key && entry.path() != keep {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ImageSet {
        ImageSet::new(
            (0..2 * 3 * 2 * 2).map(|v| v as u8).collect(),
            vec![1, 0],
            (3, 2, 2),
            vec!["cat".into(), "dög".into()],
        )
        .unwrap()
    }

    fn key() -> String {
        cache_key("cifar10", Split::Train, &[])
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = cache_path(dir.path(), "cifar10", Split::Train, &key());
        write_set(&path, &key(), &sample()).unwrap();
        assert_eq!(read_set(&path, &key()).unwrap(), sample());
    }

    #[test]
    fn key_depends_on_every_source_field() {
        let base = SourceFile {
            rel: "a/b.jpg".into(),
            size: 10,
            mtime_ns: 5,
        };
        let k = |s: &SourceFile| cache_key("d", Split::Train, std::slice::from_ref(s));
        let k0 = k(&base);
        assert_ne!(
            k0,
            k(&SourceFile {
                size: 11,
                ..base.clone()
            })
        );
        assert_ne!(
            k0,
            k(&SourceFile {
                mtime_ns: 6,
                ..base.clone()
            })
        );
        assert_ne!(
            k0,
            k(&SourceFile {
                rel: "a/c.jpg".into(),
                ..base.clone()
            })
        );
        assert_ne!(k0, cache_key("d", Split::Test, std::slice::from_ref(&base)));
        assert_ne!(
            k0,
            cache_key("e", Split::Train, std::slice::from_ref(&base))
        );
        assert_eq!(k0.len(), 64);
    }

    #[test]
    fn every_flipped_byte_or_truncation_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pbset");
        write_set(&path, &key(), &sample()).unwrap();
        let good = std::fs::read(&path).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            std::fs::write(&path, &bad).unwrap();
            assert!(
                read_set(&path, &key()).is_err(),
                "flip at byte {i} accepted"
            );
        }
        for len in [0, 7, 50, good.len() - 1] {
            std::fs::write(&path, &good[..len]).unwrap();
            let err = read_set(&path, &key()).unwrap_err().to_string();
            assert!(err.contains("x.pbset"), "{err}");
        }
        std::fs::write(&path, &good).unwrap();
        assert!(read_set(&path, &"f".repeat(64)).is_err());
    }

    #[test]
    fn image_folder_ids_get_safe_distinct_names() {
        let a = cache_path(
            Path::new("/c"),
            "image-folder:/x/my data",
            Split::Test,
            &key(),
        );
        let b = cache_path(
            Path::new("/c"),
            "image-folder:/y/my data",
            Split::Test,
            &key(),
        );
        assert_ne!(a, b);
        let name = a.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c)),
            "{name}"
        );
        assert!(name.starts_with("image-folder__x_my_data-"), "{name}");
    }

    #[test]
    fn stale_files_of_the_same_split_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let old = cache_path(dir.path(), "cifar10", Split::Train, &"a".repeat(64));
        let other_split = cache_path(dir.path(), "cifar10", Split::Test, &"a".repeat(64));
        std::fs::write(&old, b"x").unwrap();
        std::fs::write(&other_split, b"x").unwrap();
        let opts = LoadOptions {
            cache_dir: Some(dir.path().to_path_buf()),
            ..LoadOptions::default()
        };
        let loaded =
            cached_or_decode(&opts, "cifar10", Split::Train, &[], || Ok(sample())).unwrap();
        assert_eq!(loaded.origin, Origin::Decoded);
        assert!(!old.exists());
        assert!(other_split.exists());
        let again = cached_or_decode(&opts, "cifar10", Split::Train, &[], || {
            Err(DataError::InvalidOption("must not decode".into()))
        })
        .unwrap();
        assert_eq!(again.origin, Origin::Cache);
        assert_eq!(again.set, sample());
    }

    #[test]
    fn unwritable_cache_dir_is_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"x").unwrap();
        let opts = LoadOptions {
            cache_dir: Some(blocker.join("cache")),
            ..LoadOptions::default()
        };
        for _ in 0..2 {
            let loaded =
                cached_or_decode(&opts, "cifar10", Split::Train, &[], || Ok(sample())).unwrap();
            assert_eq!(loaded.origin, Origin::Decoded);
        }
    }
}
