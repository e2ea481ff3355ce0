//! Streaming an archive to `<downloads>/<file_name>.partial` while hashing it, and renaming it to
//! `<file_name>` only once its md5 matches.

use super::{FetchOptions, Source, expected_layout};
use crate::{DataError, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use md5::{Digest, Md5};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

const BUFFER: usize = 256 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// A transfer that delivers nothing for this long is treated as dead.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The md5 of a file on disk, lowercase hex, read in chunks.
pub(super) fn md5_of_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut hasher = Md5::new();
    hash_reader(&mut file, &mut hasher).map_err(|e| DataError::io(path, e))?;
    Ok(hex(hasher))
}

fn hash_reader(reader: &mut impl Read, hasher: &mut Md5) -> std::io::Result<u64> {
    let mut buf = vec![0u8; BUFFER];
    let mut total = 0u64;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => {
                hasher.update(&buf[..n]);
                total += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn hex(hasher: Md5) -> String {
    format!("{:x}", hasher.finalize())
}

/// Downloads `url` to `<downloads>/<file_name>`, verified against `source.md5`. Returns the size
/// of the verified file. On any failure no `<file_name>` is left behind: either nothing, or a
/// `.partial` file that a later run resumes or replaces.
pub(super) fn download(
    source: &Source,
    url: &str,
    data_dir: &Path,
    downloads: &Path,
    opts: &FetchOptions,
) -> Result<u64> {
    let partial = downloads.join(format!("{}.partial", source.file_name));
    let target = downloads.join(source.file_name);
    if opts.force {
        remove_quietly(&partial);
    }
    let ctx = Context {
        source,
        url,
        data_dir,
        partial: &partial,
        progress: opts.progress,
    };
    let local = url
        .get(..7)
        .filter(|scheme| scheme.eq_ignore_ascii_case("file://"))
        .and_then(|_| url.get(7..));
    let (bytes, actual) = if let Some(local) = local {
        remove_quietly(&partial);
        copy_local(&ctx, Path::new(local))?
    } else {
        let agent = agent();
        let first = http_download(&ctx, &agent, true)?;
        if first.resumed && !first.md5.eq_ignore_ascii_case(source.md5) {
            // The kept prefix may come from another mirror or be damaged: start over once.
            remove_quietly(&partial);
            let second = http_download(&ctx, &agent, false)?;
            (second.bytes, second.md5)
        } else {
            (first.bytes, first.md5)
        }
    };
    if !actual.eq_ignore_ascii_case(source.md5) {
        remove_quietly(&partial);
        return Err(DataError::Checksum {
            path: target,
            algorithm: "md5",
            expected: source.md5.to_string(),
            actual,
        });
    }
    std::fs::rename(&partial, &target).map_err(|e| DataError::io(&target, e))?;
    Ok(bytes)
}

struct Context<'a> {
    source: &'a Source,
    url: &'a str,
    data_dir: &'a Path,
    partial: &'a Path,
    progress: bool,
}

impl Context<'_> {
    /// The error for a server that cannot be reached or refuses the file, with every way out.
    fn unreachable(&self, what: &str) -> DataError {
        let source = self.source;
        let downloads = self.data_dir.join(super::DOWNLOADS_DIR);
        DataError::Download(format!(
            "cannot download {dataset} (about {mib} MiB) from {url}: {what}\n\
             data directory: {data_dir}\n\
             to go on without this host, either:\n  \
             - copy the extracted dataset from a machine that has it and pass --data-dir (or set \
             HARNESS_DATA) pointing at the folder that holds it; expected layout: {layout}\n  \
             - or download from a mirror that serves {file}: --base-url URL or {env}=URL (fetched \
             as URL/{file}; file:// URLs work for a local copy)\n  \
             - or put {file} (md5 {md5}) at {downloads} and run the fetch again",
            dataset = source.dataset,
            mib = source.size_bytes.div_ceil(1024 * 1024),
            url = self.url,
            data_dir = self.data_dir.display(),
            layout = expected_layout(source, self.data_dir),
            file = source.file_name,
            env = super::BASE_URL_ENV,
            md5 = source.md5,
            downloads = downloads.join(source.file_name).display(),
        ))
    }

    /// The error for a transfer that started but did not finish.
    fn interrupted(&self, received: u64, expected: Option<u64>, why: &str) -> DataError {
        let of = expected.map_or(String::new(), |total| format!(" of {total}"));
        DataError::Download(format!(
            "download of {dataset} from {url} was interrupted after {received}{of} bytes: {why}; \
             the incomplete file {partial} is kept and never counts as complete; run the fetch \
             again to resume it (or see --base-url / {env} for a mirror)",
            dataset = self.source.dataset,
            url = self.url,
            partial = self.partial.display(),
            env = super::BASE_URL_ENV,
        ))
    }

    fn bar(&self, total: Option<u64>) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
        let template = if total.is_some() {
            "{msg} [{wide_bar}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}"
        } else {
            "{msg} {spinner} {binary_bytes} {binary_bytes_per_sec}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(format!("downloading {}", self.source.file_name));
        bar
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_resolve(Some(CONNECT_TIMEOUT))
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_recv_response(Some(RESPONSE_TIMEOUT))
        .timeout_per_read(Some(STALL_TIMEOUT))
        .user_agent(concat!("protbench-datasets/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

struct Downloaded {
    bytes: u64,
    md5: String,
    resumed: bool,
}

/// One HTTP transfer into the partial file, resuming it when `allow_resume` and the server
/// answers a `Range` request with 206.
fn http_download(ctx: &Context<'_>, agent: &ureq::Agent, allow_resume: bool) -> Result<Downloaded> {
    let existing = if allow_resume {
        std::fs::metadata(ctx.partial).map_or(0, |m| m.len())
    } else {
        0
    };
    let mut request = agent
        .get(ctx.url)
        // Archives are already compressed; asking for identity keeps the bytes exactly as
        // published, so that the md5 can match.
        .header("Accept-Encoding", "identity");
    if existing > 0 {
        request = request.header("Range", format!("bytes={existing}-"));
    }
    let mut response = request.call().map_err(|e| ctx.unreachable(&describe(&e)))?;
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let content_length = header("content-length").and_then(|v| v.trim().parse::<u64>().ok());
    let resume_at = match status {
        206 if existing > 0 && content_range_start(header("content-range")) == Some(existing) => {
            existing
        }
        200 => 0,
        416 | 206 if existing > 0 => {
            // The kept part is unusable (already complete and then damaged, or the server
            // answered another range): start from scratch.
            drop(response);
            remove_quietly(ctx.partial);
            return http_download(ctx, agent, false);
        }
        _ => {
            let reason = response
                .status()
                .canonical_reason()
                .map_or(String::new(), |r| format!(" {r}"));
            return Err(ctx.unreachable(&format!("the server answered HTTP {status}{reason}")));
        }
    };
    let total = content_length.map(|len| len + resume_at);

    let mut hasher = Md5::new();
    let mut file = if resume_at > 0 {
        let mut kept = File::open(ctx.partial).map_err(|e| DataError::io(ctx.partial, e))?;
        let hashed =
            hash_reader(&mut kept, &mut hasher).map_err(|e| DataError::io(ctx.partial, e))?;
        if hashed != resume_at {
            // The file changed under us; do not guess.
            drop(response);
            remove_quietly(ctx.partial);
            return http_download(ctx, agent, false);
        }
        OpenOptions::new()
            .append(true)
            .open(ctx.partial)
            .map_err(|e| DataError::io(ctx.partial, e))?
    } else {
        File::create(ctx.partial).map_err(|e| DataError::io(ctx.partial, e))?
    };

    let bar = ctx.bar(total);
    bar.set_position(resume_at);
    bar.reset_eta();
    let mut reader = response.body_mut().as_reader();
    let mut received = resume_at;
    let mut buf = vec![0u8; BUFFER];
    let outcome = loop {
        match reader.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                if let Err(e) = file.write_all(&buf[..n]) {
                    break Err(DataError::io(ctx.partial, e));
                }
                hasher.update(&buf[..n]);
                received += n as u64;
                bar.set_position(received);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break Err(ctx.interrupted(received, total, &describe_io(&e))),
        }
    };
    let outcome = outcome.and_then(|()| match total {
        Some(total) if received != total => {
            Err(ctx.interrupted(received, Some(total), "the connection closed early"))
        }
        _ => Ok(()),
    });
    let outcome = outcome.and_then(|()| file.sync_all().map_err(|e| DataError::io(ctx.partial, e)));
    match outcome {
        Ok(()) => {
            bar.finish_and_clear();
            Ok(Downloaded {
                bytes: received,
                md5: hex(hasher),
                resumed: resume_at > 0,
            })
        }
        Err(e) => {
            bar.abandon();
            // Keep what arrived so the next run can resume it.
            let _ = file.flush();
            Err(e)
        }
    }
}

/// Copies a local archive (a `file://` mirror) into the partial file, hashing it.
fn copy_local(ctx: &Context<'_>, from: &Path) -> Result<(u64, String)> {
    let mut input =
        File::open(from).map_err(|e| ctx.unreachable(&format!("{}: {e}", from.display())))?;
    let total = input.metadata().map(|m| m.len()).ok();
    let mut output = File::create(ctx.partial).map_err(|e| DataError::io(ctx.partial, e))?;
    let bar = ctx.bar(total);
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; BUFFER];
    let mut copied = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(DataError::io(from, e)),
        };
        output
            .write_all(&buf[..n])
            .map_err(|e| DataError::io(ctx.partial, e))?;
        hasher.update(&buf[..n]);
        copied += n as u64;
        bar.set_position(copied);
    }
    output
        .sync_all()
        .map_err(|e| DataError::io(ctx.partial, e))?;
    bar.finish_and_clear();
    Ok((copied, hex(hasher)))
}

/// The first byte of a `Content-Range: bytes START-END/TOTAL` header.
fn content_range_start(value: Option<String>) -> Option<u64> {
    let value = value?;
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (start, _) = rest.split_once('-')?;
    start.trim().parse().ok()
}

/// A short, user-facing reason for a failed request.
fn describe(error: &ureq::Error) -> String {
    match error {
        ureq::Error::Io(e) => describe_io(e),
        ureq::Error::HostNotFound => {
            "host not found (the name does not resolve: is this machine offline?)".to_string()
        }
        ureq::Error::Timeout(which) => format!("timed out ({which})"),
        ureq::Error::ConnectionFailed => "the connection failed".to_string(),
        other => other.to_string(),
    }
}

fn describe_io(error: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::ConnectionRefused => {
            format!(
                "connection refused (nothing answers at that address: offline, firewalled, or a wrong mirror?) ({error})"
            )
        }
        ErrorKind::TimedOut => format!("timed out ({error})"),
        ErrorKind::UnexpectedEof => format!("the connection closed early ({error})"),
        _ => error.to_string(),
    }
}

fn remove_quietly(path: &Path) {
    let _ = std::fs::remove_file(path);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_range() {
        assert_eq!(
            content_range_start(Some("bytes 100-199/200".into())),
            Some(100)
        );
        assert_eq!(content_range_start(Some("bytes */200".into())), None);
        assert_eq!(content_range_start(None), None);
    }
}
