//! Download tests against a tiny HTTP server on 127.0.0.1 serving archives built in the test.
//! Nothing here touches the internet.
#![allow(clippy::unwrap_used)]

use datasets::DataError;
use datasets::download::{
    self, FetchOptions, FetchOutcome, Source, fetch_source, is_source_present, marker_path,
};
use md5::{Digest, Md5};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Cursor, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 server: one request per connection, `Connection: close`, Range support.

#[derive(Clone)]
enum Mode {
    /// Serve the body, honouring `Range: bytes=N-`.
    Full,
    /// Announce the full length, send this many bytes, then close the connection.
    CloseAfter(usize),
    /// Serve the whole body with 200 even when a range was asked for.
    IgnoreRange,
    /// Answer 301 with this `Location`.
    Redirect(String),
}

#[derive(Clone)]
struct Route {
    body: Vec<u8>,
    mode: Mode,
}

#[derive(Debug, Clone)]
struct Seen {
    path: String,
    range: Option<String>,
}

struct Server {
    addr: SocketAddr,
    routes: Arc<Mutex<HashMap<String, Route>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let routes: Arc<Mutex<HashMap<String, Route>>> = Arc::default();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (r, s) = (routes.clone(), seen.clone());
        // The thread lives until the test binary exits.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let _ = handle(stream, &r, &s);
            }
        });
        Server { addr, routes, seen }
    }

    fn base_url(&self) -> String {
        format!("http://{}/mirror", self.addr)
    }

    fn serve(&self, file_name: &str, body: Vec<u8>, mode: Mode) {
        self.routes
            .lock()
            .unwrap()
            .insert(format!("/mirror/{file_name}"), Route { body, mode });
    }

    fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn handle(
    mut stream: TcpStream,
    routes: &Mutex<HashMap<String, Route>>,
    seen: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_string();
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("range")
        {
            range = Some(value.trim().to_string());
        }
    }
    seen.lock().unwrap().push(Seen {
        path: path.clone(),
        range: range.clone(),
    });
    let route = routes.lock().unwrap().get(&path).cloned();
    let Some(route) = route else {
        let body = b"not found";
        write!(
            stream,
            "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        stream.write_all(body)?;
        return stream.flush();
    };
    let len = route.body.len();
    match route.mode {
        Mode::IgnoreRange => {
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
            )?;
            stream.write_all(&route.body)?;
            stream.flush()
        }
        Mode::Redirect(location) => {
            write!(
                stream,
                "HTTP/1.1 301 Moved Permanently\r\nLocation: {location}\r\nContent-Length: 0\r\n\
                 Connection: close\r\n\r\n"
            )?;
            stream.flush()
        }
        Mode::CloseAfter(n) => {
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
            )?;
            stream.write_all(&route.body[..n])?;
            stream.flush()?;
            stream.shutdown(std::net::Shutdown::Both)
        }
        Mode::Full => {
            let start = range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|r| r.parse::<usize>().ok());
            match start {
                Some(start) if start >= len => write!(
                    stream,
                    "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\n\
                     Content-Length: 0\r\nConnection: close\r\n\r\n"
                ),
                Some(start) => {
                    write!(
                        stream,
                        "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{len}\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n",
                        len - 1,
                        len - start
                    )?;
                    stream.write_all(&route.body[start..])
                }
                None => {
                    write!(
                        stream,
                        "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nContent-Type: \
                         application/gzip\r\nConnection: close\r\n\r\n"
                    )?;
                    stream.write_all(&route.body)
                }
            }?;
            stream.flush()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures.

const CIFAR10_FILES: [&str; 6] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
    "test_batch.bin",
];

/// Three valid CIFAR-10 records (label byte + 3072 pixel bytes) that differ per file.
fn cifar10_records(seed: u8) -> Vec<u8> {
    let mut out = Vec::new();
    for record in 0..3u8 {
        out.push((seed + record) % 10);
        out.extend((0..3072u32).map(|i| (i as u8).wrapping_mul(seed.wrapping_add(record + 1))));
    }
    out
}

fn tar_gz(entries: &[(&str, Vec<u8>)], raw: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    builder
        .append_data(&mut dir, "cifar-10-batches-bin/", std::io::empty())
        .unwrap();
    for (name, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        builder
            .append_data(&mut header, name, data.as_slice())
            .unwrap();
    }
    // Entries whose names `append_data` would refuse (`..`, absolute): written byte by byte.
    for (name, data) in raw {
        let mut header = tar::Header::new_gnu();
        let field = &mut header.as_old_mut().name;
        field[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append(&header, data.as_slice()).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

fn cifar10_entries() -> Vec<(String, Vec<u8>)> {
    let mut entries: Vec<(String, Vec<u8>)> = CIFAR10_FILES
        .iter()
        .enumerate()
        .map(|(i, f)| {
            (
                format!("cifar-10-batches-bin/{f}"),
                cifar10_records(i as u8),
            )
        })
        .collect();
    entries.push((
        "cifar-10-batches-bin/batches.meta.txt".into(),
        b"airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n".to_vec(),
    ));
    entries
}

fn cifar10_archive() -> Vec<u8> {
    let entries = cifar10_entries();
    let borrowed: Vec<(&str, Vec<u8>)> = entries
        .iter()
        .map(|(n, d)| (n.as_str(), d.clone()))
        .collect();
    tar_gz(&borrowed, &[])
}

fn tiny_imagenet_entries() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "tiny-imagenet-200/wnids.txt",
            b"n01443537\nn01629819\n".to_vec(),
        ),
        (
            "tiny-imagenet-200/words.txt",
            b"n01443537\tgoldfish\nn01629819\tEuropean fire salamander\n".to_vec(),
        ),
        (
            "tiny-imagenet-200/train/n01443537/images/n01443537_0.JPEG",
            vec![0xFF, 0xD8, 0xFF, 0xD9],
        ),
        (
            "tiny-imagenet-200/train/n01443537/n01443537_boxes.txt",
            b"n01443537_0.JPEG\t0\t0\t63\t63\n".to_vec(),
        ),
        (
            "tiny-imagenet-200/val/val_annotations.txt",
            b"val_0.JPEG\tn01443537\t0\t0\t63\t63\n".to_vec(),
        ),
        (
            "tiny-imagenet-200/val/images/val_0.JPEG",
            vec![0xFF, 0xD8, 0xFF, 0xD9],
        ),
        (
            "tiny-imagenet-200/test/images/test_0.JPEG",
            vec![0xFF, 0xD8, 0xFF, 0xD9],
        ),
    ]
}

fn zip_archive(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    use zip::write::SimpleFileOptions;
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    writer.add_directory("tiny-imagenet-200/", options).unwrap();
    for (name, data) in entries {
        writer.start_file(*name, options).unwrap();
        writer.write_all(data).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

fn md5_hex(bytes: &[u8]) -> String {
    format!("{:x}", Md5::digest(bytes))
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// The CIFAR-10 source with the fixture's checksum, through the documented test hook.
fn cifar10_fixture_source(md5: &str) -> Source {
    let official = download::source("cifar10").unwrap();
    Source {
        md5: leak(md5.to_string()),
        ..*official
    }
}

fn tiny_imagenet_fixture_source(md5: &str) -> Source {
    let official = download::source("tiny-imagenet").unwrap();
    Source {
        md5: leak(md5.to_string()),
        ..*official
    }
}

fn opts(base_url: String) -> FetchOptions {
    FetchOptions {
        base_url: Some(base_url),
        progress: false,
        force: false,
    }
}

fn data_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    (root, data)
}

/// A port on which nothing listens: bind, read the port, drop the listener.
fn refused_base_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}/mirror")
}

fn downloads(data: &Path) -> std::path::PathBuf {
    data.join(download::DOWNLOADS_DIR)
}

fn no_temp_dirs_left(data: &Path) {
    if let Ok(entries) = std::fs::read_dir(data) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            assert!(!name.starts_with(".extract-"), "left behind: {name}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[test]
fn fetch_downloads_verifies_extracts_and_marks() {
    let server = Server::start();
    let archive = cifar10_archive();
    server.serve("cifar-10-binary.tar.gz", archive.clone(), Mode::Full);
    let source = cifar10_fixture_source(&md5_hex(&archive));
    let (_root, data) = data_dir();

    let outcome = fetch_source(&source, &data, &opts(server.base_url())).unwrap();
    let FetchOutcome::Fetched { path, bytes, .. } = &outcome else {
        panic!("expected Fetched, got {outcome:?}")
    };
    assert_eq!(path, &data.join("cifar-10-batches-bin"));
    assert_eq!(*bytes, archive.len() as u64);
    for (name, content) in cifar10_entries() {
        assert_eq!(std::fs::read(data.join(&name)).unwrap(), content, "{name}");
    }
    let marker = marker_path(&source, &data);
    assert_eq!(marker, data.join(".cifar-10-batches-bin.complete"));
    let marker_text = std::fs::read_to_string(&marker).unwrap();
    assert!(marker_text.contains("dataset = cifar10"), "{marker_text}");
    assert!(is_source_present(&source, &data));
    assert!(download::is_present("cifar10", &data));
    // Neither the partial nor the verified archive is kept.
    assert!(
        !downloads(&data)
            .join("cifar-10-binary.tar.gz.partial")
            .exists()
    );
    assert!(!downloads(&data).join("cifar-10-binary.tar.gz").exists());
    no_temp_dirs_left(&data);
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].path, "/mirror/cifar-10-binary.tar.gz");
    assert_eq!(requests[0].range, None);
}

#[test]
fn second_fetch_is_already_present_without_contacting_the_server() {
    let server = Server::start();
    let archive = cifar10_archive();
    server.serve("cifar-10-binary.tar.gz", archive.clone(), Mode::Full);
    let source = cifar10_fixture_source(&md5_hex(&archive));
    let (_root, data) = data_dir();
    fetch_source(&source, &data, &opts(server.base_url())).unwrap();
    assert_eq!(server.requests().len(), 1);

    let again = fetch_source(&source, &data, &opts(server.base_url())).unwrap();
    assert_eq!(
        again,
        FetchOutcome::AlreadyPresent(data.join("cifar-10-batches-bin"))
    );
    assert_eq!(
        server.requests().len(),
        1,
        "no request for a present dataset"
    );

    // `force` downloads and replaces it.
    let forced = FetchOptions {
        force: true,
        ..opts(server.base_url())
    };
    let outcome = fetch_source(&source, &data, &forced).unwrap();
    assert!(
        matches!(outcome, FetchOutcome::Fetched { .. }),
        "{outcome:?}"
    );
    assert_eq!(server.requests().len(), 2);
    assert!(is_source_present(&source, &data));
    no_temp_dirs_left(&data);
}

#[test]
fn hand_copied_folder_counts_as_present_for_the_official_source() {
    let (_root, data) = data_dir();
    let folder = data.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&folder).unwrap();
    for (i, name) in CIFAR10_FILES.iter().enumerate() {
        if i == 0 {
            continue;
        }
        std::fs::write(folder.join(name), cifar10_records(i as u8)).unwrap();
    }
    // One key file missing: not present.
    assert!(!download::is_present("cifar10", &data));
    std::fs::write(folder.join(CIFAR10_FILES[0]), cifar10_records(0)).unwrap();
    assert!(download::is_present("cifar10", &data));
    assert!(!download::is_present("cifar100", &data));
    assert!(!download::is_present("no-such-dataset", &data));

    // The official path answers without any network access (the base URL refuses connections).
    let outcome = download::fetch("cifar10", &data, &opts(refused_base_url())).unwrap();
    assert_eq!(outcome, FetchOutcome::AlreadyPresent(folder.clone()));
    assert_eq!(outcome.path(), folder);
}

#[test]
fn unknown_dataset_names_suggestions() {
    let (_root, data) = data_dir();
    let err = download::fetch("cifar-100", &data, &FetchOptions::default()).unwrap_err();
    assert!(matches!(err, DataError::UnknownDataset { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("cifar100"), "{message}");
    assert!(!data.exists(), "nothing is created for an unknown id");
}

#[test]
fn checksum_mismatch_leaves_nothing_and_names_both_checksums() {
    let server = Server::start();
    let archive = cifar10_archive();
    server.serve("cifar-10-binary.tar.gz", archive.clone(), Mode::Full);
    let wrong = "0123456789abcdef0123456789abcdef";
    let source = cifar10_fixture_source(wrong);
    let (_root, data) = data_dir();

    let err = fetch_source(&source, &data, &opts(server.base_url())).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, DataError::Checksum { .. }), "{err:?}");
    assert!(message.contains(wrong), "{message}");
    assert!(message.contains(&md5_hex(&archive)), "{message}");
    assert!(!downloads(&data).join("cifar-10-binary.tar.gz").exists());
    assert!(
        !downloads(&data)
            .join("cifar-10-binary.tar.gz.partial")
            .exists()
    );
    assert!(!data.join("cifar-10-batches-bin").exists());
    assert!(!marker_path(&source, &data).exists());
    assert!(!is_source_present(&source, &data));
    no_temp_dirs_left(&data);
}

#[test]
fn http_404_names_the_url_and_the_ways_out() {
    let server = Server::start();
    let source = cifar10_fixture_source("0123456789abcdef0123456789abcdef");
    let (_root, data) = data_dir();

    let err = fetch_source(&source, &data, &opts(server.base_url())).unwrap_err();
    let message = err.to_string();
    let url = format!("{}/cifar-10-binary.tar.gz", server.base_url());
    assert!(message.contains(&url), "{message}");
    assert!(message.contains("404"), "{message}");
    assert!(message.contains("--data-dir"), "{message}");
    assert!(message.contains("--base-url"), "{message}");
    assert!(message.contains(&data.display().to_string()), "{message}");
    assert!(
        message.contains("cifar-10-batches-bin/{data_batch_1.bin"),
        "{message}"
    );
    assert!(!data.join("cifar-10-batches-bin").exists());
    assert!(!downloads(&data).join("cifar-10-binary.tar.gz").exists());
}

#[test]
fn connection_refused_gives_the_offline_message() {
    let base = refused_base_url();
    let source = cifar10_fixture_source("0123456789abcdef0123456789abcdef");
    let (_root, data) = data_dir();

    let started = Instant::now();
    let err = fetch_source(&source, &data, &opts(base.clone())).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    let message = err.to_string();
    assert!(matches!(err, DataError::Download(_)), "{err:?}");
    assert!(message.contains("connection refused"), "{message}");
    assert!(
        message.contains(&format!("{base}/cifar-10-binary.tar.gz")),
        "{message}"
    );
    assert!(message.contains("--data-dir"), "{message}");
    assert!(message.contains(download::BASE_URL_ENV), "{message}");
    assert!(message.contains("data_batch_1.bin"), "{message}");
    assert!(!data.join("cifar-10-batches-bin").exists());
}

#[test]
fn interrupted_transfer_keeps_only_the_partial_file_and_resumes() {
    let server = Server::start();
    let archive = cifar10_archive();
    let half = archive.len() / 2;
    server.serve(
        "cifar-10-binary.tar.gz",
        archive.clone(),
        Mode::CloseAfter(half),
    );
    let source = cifar10_fixture_source(&md5_hex(&archive));
    let (_root, data) = data_dir();

    let err = fetch_source(&source, &data, &opts(server.base_url())).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, DataError::Download(_)), "{err:?}");
    assert!(message.contains("interrupted"), "{message}");
    let partial = downloads(&data).join("cifar-10-binary.tar.gz.partial");
    assert!(!downloads(&data).join("cifar-10-binary.tar.gz").exists());
    assert!(!data.join("cifar-10-batches-bin").exists());
    assert!(!marker_path(&source, &data).exists());
    assert!(!is_source_present(&source, &data));
    let kept = std::fs::metadata(&partial).map_or(0, |m| m.len());
    assert!(kept > 0 && kept <= half as u64, "kept {kept} of {half}");

    // The next run resumes from what was kept.
    server.serve("cifar-10-binary.tar.gz", archive.clone(), Mode::Full);
    let outcome = fetch_source(&source, &data, &opts(server.base_url())).unwrap();
    assert!(
        matches!(outcome, FetchOutcome::Fetched { .. }),
        "{outcome:?}"
    );
    assert!(is_source_present(&source, &data));
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(
        requests[1].range.as_deref(),
        Some(format!("bytes={kept}-").as_str())
    );
    assert!(!partial.exists());
}

#[test]
fn server_without_range_support_restarts_from_scratch() {
    let server = Server::start();
    let archive = cifar10_archive();
    server.serve("cifar-10-binary.tar.gz", archive.clone(), Mode::IgnoreRange);
    let source = cifar10_fixture_source(&md5_hex(&archive));
    let (_root, data) = data_dir();
    std::fs::create_dir_all(downloads(&data)).unwrap();
    std::fs::write(
        downloads(&data).join("cifar-10-binary.tar.gz.partial"),
        &archive[..archive.len() / 3],
    )
    .unwrap();

    let outcome = fetch_source(&source, &data, &opts(server.base_url())).unwrap();
    assert_eq!(outcome.path(), data.join("cifar-10-batches-bin"));
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(requests[0].range.is_some());
    assert!(is_source_present(&source, &data));
}

#[test]
fn redirects_are_followed() {
    // The official Tiny-ImageNet URL is http:// and answered with a redirect.
    let server = Server::start();
    let archive = cifar10_archive();
    server.serve("real/cifar-10-binary.tar.gz", archive.clone(), Mode::Full);
    server.serve(
        "cifar-10-binary.tar.gz",
        Vec::new(),
        Mode::Redirect(format!("{}/real/cifar-10-binary.tar.gz", server.base_url())),
    );
    let source = cifar10_fixture_source(&md5_hex(&archive));
    let (_root, data) = data_dir();

    let outcome = fetch_source(&source, &data, &opts(server.base_url())).unwrap();
    assert!(
        matches!(outcome, FetchOutcome::Fetched { .. }),
        "{outcome:?}"
    );
    let paths: Vec<String> = server.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        [
            "/mirror/cifar-10-binary.tar.gz",
            "/mirror/real/cifar-10-binary.tar.gz"
        ]
    );
}

#[test]
fn damaged_partial_file_falls_back_to_a_full_download() {
    let server = Server::start();
    let archive = cifar10_archive();
    server.serve("cifar-10-binary.tar.gz", archive.clone(), Mode::Full);
    let source = cifar10_fixture_source(&md5_hex(&archive));
    let (_root, data) = data_dir();
    std::fs::create_dir_all(downloads(&data)).unwrap();
    std::fs::write(
        downloads(&data).join("cifar-10-binary.tar.gz.partial"),
        vec![0xAB; 100],
    )
    .unwrap();

    let outcome = fetch_source(&source, &data, &opts(server.base_url())).unwrap();
    assert!(
        matches!(outcome, FetchOutcome::Fetched { .. }),
        "{outcome:?}"
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[0].range.as_deref(), Some("bytes=100-"));
    assert_eq!(requests[1].range, None);
    assert!(is_source_present(&source, &data));
}

#[test]
fn archive_placed_by_hand_is_used_without_network() {
    let archive = cifar10_archive();
    let source = cifar10_fixture_source(&md5_hex(&archive));
    let (_root, data) = data_dir();
    std::fs::create_dir_all(downloads(&data)).unwrap();
    std::fs::write(downloads(&data).join("cifar-10-binary.tar.gz"), &archive).unwrap();

    let outcome = fetch_source(&source, &data, &opts(refused_base_url())).unwrap();
    assert!(
        matches!(outcome, FetchOutcome::Fetched { .. }),
        "{outcome:?}"
    );
    assert!(is_source_present(&source, &data));

    // A placed archive with the wrong content is reported, not silently replaced.
    let (_root2, data2) = data_dir();
    std::fs::create_dir_all(downloads(&data2)).unwrap();
    std::fs::write(downloads(&data2).join("cifar-10-binary.tar.gz"), b"junk").unwrap();
    let err = fetch_source(&source, &data2, &opts(refused_base_url())).unwrap_err();
    assert!(matches!(err, DataError::Checksum { .. }), "{err:?}");
    assert!(!downloads(&data2).join("cifar-10-binary.tar.gz").exists());
}

#[test]
fn file_base_url_copies_a_local_mirror() {
    let archive = cifar10_archive();
    let source = cifar10_fixture_source(&md5_hex(&archive));
    let (root, data) = data_dir();
    let mirror = root.path().join("mirror");
    std::fs::create_dir_all(&mirror).unwrap();
    std::fs::write(mirror.join("cifar-10-binary.tar.gz"), &archive).unwrap();

    let base = format!("file://{}", mirror.display());
    let outcome = fetch_source(&source, &data, &opts(base)).unwrap();
    assert!(
        matches!(outcome, FetchOutcome::Fetched { .. }),
        "{outcome:?}"
    );
    assert!(is_source_present(&source, &data));
    assert!(
        mirror.join("cifar-10-binary.tar.gz").exists(),
        "the mirror is not touched"
    );

    let missing = format!("file://{}", root.path().join("nowhere").display());
    let err = fetch_source(&source, &data.join("other"), &opts(missing)).unwrap_err();
    assert!(err.to_string().contains("--data-dir"), "{err}");
}

#[test]
fn invalid_base_url_is_an_option_error() {
    let (_root, data) = data_dir();
    let err = download::fetch("cifar10", &data, &opts("mirror.example/data".into())).unwrap_err();
    assert!(matches!(err, DataError::InvalidOption(_)), "{err:?}");
    assert!(err.to_string().contains(download::BASE_URL_ENV), "{err}");
}

#[test]
fn tar_entries_escaping_the_data_dir_are_refused() {
    for evil in [
        "cifar-10-batches-bin/../../evil",
        "../evil",
        "/tmp/protbench-evil-entry",
    ] {
        let server = Server::start();
        let entries = cifar10_entries();
        let borrowed: Vec<(&str, Vec<u8>)> = entries
            .iter()
            .map(|(n, d)| (n.as_str(), d.clone()))
            .collect();
        let archive = tar_gz(&borrowed, &[(evil, b"pwned".to_vec())]);
        server.serve("cifar-10-binary.tar.gz", archive.clone(), Mode::Full);
        let source = cifar10_fixture_source(&md5_hex(&archive));
        let (root, data) = data_dir();

        let err = fetch_source(&source, &data, &opts(server.base_url())).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, DataError::Format { .. }), "{err:?}");
        assert!(message.contains("refusing"), "{message}");
        assert!(message.contains(evil), "{message}");
        assert!(!root.path().join("evil").exists());
        assert!(!data.join("evil").exists());
        assert!(!Path::new("/tmp/protbench-evil-entry").exists());
        assert!(!data.join("cifar-10-batches-bin").exists());
        assert!(!marker_path(&source, &data).exists());
        no_temp_dirs_left(&data);
    }
}

#[test]
fn zip_archive_extracts_tiny_imagenet() {
    let server = Server::start();
    let entries = tiny_imagenet_entries();
    let archive = zip_archive(&entries);
    server.serve("tiny-imagenet-200.zip", archive.clone(), Mode::Full);
    let source = tiny_imagenet_fixture_source(&md5_hex(&archive));
    let (_root, data) = data_dir();

    // The progress bars are drawn only on a terminal; this runs their code paths.
    let with_progress = FetchOptions {
        progress: true,
        ..opts(server.base_url())
    };
    let outcome = fetch_source(&source, &data, &with_progress).unwrap();
    assert_eq!(outcome.path(), data.join("tiny-imagenet-200"));
    for (name, content) in &entries {
        assert_eq!(&std::fs::read(data.join(name)).unwrap(), content, "{name}");
    }
    assert!(data.join(".tiny-imagenet-200.complete").is_file());
    assert!(is_source_present(&source, &data));
    assert!(download::is_present("tiny-imagenet", &data));
    no_temp_dirs_left(&data);
}

#[test]
fn zip_entries_escaping_the_data_dir_are_refused() {
    let server = Server::start();
    let mut entries = tiny_imagenet_entries();
    entries.push(("../evil", b"pwned".to_vec()));
    let archive = zip_archive(&entries);
    server.serve("tiny-imagenet-200.zip", archive.clone(), Mode::Full);
    let source = tiny_imagenet_fixture_source(&md5_hex(&archive));
    let (root, data) = data_dir();

    let err = fetch_source(&source, &data, &opts(server.base_url())).unwrap_err();
    assert!(err.to_string().contains("refusing"), "{err}");
    assert!(!root.path().join("evil").exists());
    assert!(!data.join("tiny-imagenet-200").exists());
    no_temp_dirs_left(&data);
}

#[test]
fn archive_without_the_expected_folder_is_rejected() {
    let server = Server::start();
    let archive = zip_archive(&[("other/readme.txt", b"hi".to_vec())]);
    server.serve("tiny-imagenet-200.zip", archive.clone(), Mode::Full);
    // The helper adds `tiny-imagenet-200/` as an empty folder: its key files are missing.
    let source = tiny_imagenet_fixture_source(&md5_hex(&archive));
    let (_root, data) = data_dir();
    let err = fetch_source(&source, &data, &opts(server.base_url())).unwrap_err();
    assert!(err.to_string().contains("wnids.txt"), "{err}");
    assert!(!data.join("tiny-imagenet-200").exists());
    assert!(!is_source_present(&source, &data));
}

#[test]
fn unusable_data_dir_is_named() {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("a-file");
    std::fs::write(&file, b"not a folder").unwrap();
    let data = file.join("data");
    let archive = cifar10_archive();
    let source = cifar10_fixture_source(&md5_hex(&archive));

    let err = fetch_source(&source, &data, &opts(refused_base_url())).unwrap_err();
    let message = err.to_string();
    assert!(message.contains(&data.display().to_string()), "{message}");
    assert!(message.contains("--data-dir"), "{message}");
}

#[test]
fn official_sources_carry_the_published_checksums() {
    let by_id = |id: &str| download::source(id).unwrap();
    assert_eq!(by_id("cifar10").md5, "c32a1d4ab5d03f1284b67883e8d87530");
    assert_eq!(by_id("cifar100").md5, "03b5dce01913d631647c71ecec9e9cb8");
    assert_eq!(
        by_id("tiny-imagenet").md5,
        "90528d7ca1a48142e341f4ef8d21d0de"
    );
    assert_eq!(by_id("cifar100").extracts_to, "cifar-100-binary");
    assert_eq!(download::sources().len(), 3);
}
