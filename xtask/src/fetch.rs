//! Dataset manifests, resumable HTTP downloads, and checksum verification.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use md5::Md5;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// One dataset's manifest (`datasets/<name>.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Command-line name.
    pub name: String,
    /// Display name.
    pub title: String,
    /// Reader root, relative to the download folder.
    pub root: String,
    /// The official split, in words.
    pub split: String,
    /// Files to fetch.
    pub files: Vec<FileSpec>,
}

/// One official file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// File name.
    pub name: String,
    /// Official URL.
    pub url: String,
    /// Size in bytes, when known.
    pub size: Option<u64>,
    /// Without a published size: the most bytes to accept (default 64 GiB), for archives known
    /// to be larger than that.
    #[serde(default)]
    pub max_size: Option<u64>,
    /// SHA-256, when known.
    pub sha256: Option<String>,
    /// MD5, when known.
    pub md5: Option<String>,
    /// Unpack it (tar / tar.gz), or place it as is.
    pub extract: bool,
    /// Folder (relative to the download folder) to unpack or place it into.
    pub into: Option<String>,
}

impl Manifest {
    /// Reads `datasets/<name>.toml` of the workspace.
    pub fn load(workspace: &Path, name: &str) -> Result<Self> {
        let path = workspace.join("datasets").join(format!("{name}.toml"));
        let text = std::fs::read_to_string(&path).with_context(|| format!("no manifest for dataset '{name}' ({})", path.display()))?;
        let m: Manifest = toml::from_str(&text).with_context(|| format!("{}: invalid manifest", path.display()))?;
        if m.name != name {
            bail!("{}: declares name '{}', expected '{name}'", path.display(), m.name);
        }
        for f in &m.files {
            if f.sha256.is_none() && f.md5.is_none() {
                bail!("{}: file {} has no checksum", path.display(), f.name);
            }
        }
        Ok(m)
    }
}

/// The digests of a file.
pub struct Digests {
    /// Size in bytes.
    pub size: u64,
    /// Lower-case hex SHA-256.
    pub sha256: String,
    /// Lower-case hex MD5.
    pub md5: String,
}

/// Hashes a file (both digests in one read).
pub fn digests(path: &Path) -> Result<Digests> {
    let mut f = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let (mut s, mut m) = (Sha256::new(), Md5::new());
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).with_context(|| format!("{}: read error", path.display()))?;
        if n == 0 {
            break;
        }
        s.update(&buf[..n]);
        m.update(&buf[..n]);
        size += n as u64;
    }
    Ok(Digests { size, sha256: hex(&s.finalize()), md5: hex(&m.finalize()) })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Checks a file against its manifest entry: size, SHA-256 and MD5 where known.
pub fn verify(path: &Path, spec: &FileSpec) -> Result<()> {
    let d = digests(path)?;
    if let Some(size) = spec.size
        && d.size != size
    {
        bail!("{}: size {} bytes, expected {size} (truncated or wrong file)", path.display(), d.size);
    }
    if let Some(want) = &spec.sha256
        && !d.sha256.eq_ignore_ascii_case(want)
    {
        bail!("{}: SHA-256 {} does not match the expected {want}", path.display(), d.sha256);
    }
    if let Some(want) = &spec.md5
        && !d.md5.eq_ignore_ascii_case(want)
    {
        bail!("{}: MD5 {} does not match the expected {want}", path.display(), d.md5);
    }
    Ok(())
}

/// The most bytes written for a file whose manifest gives no size.
const MAX_UNSIZED_DOWNLOAD: u64 = 64 << 30;

/// Downloads `url` to `dest`, resuming a previous partial download (`<dest>.part`) with an HTTP
/// range request, retrying a broken transfer up to `attempts` times. Never writes more than
/// `expected_size` bytes (or the ceiling without one): a longer body is an error.
/// A `206` answer must carry a `Content-Range` that starts where the partial file ends.
/// A file of unknown size stops at `max_size` (else [`MAX_UNSIZED_DOWNLOAD`]).
pub fn download_capped(url: &str, dest: &Path, expected_size: Option<u64>, max_size: Option<u64>, attempts: usize, progress: bool) -> Result<()> {
    let part = PathBuf::from(format!("{}.part", dest.display()));
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let bar = if progress { indicatif::ProgressBar::new(expected_size.unwrap_or(0)) } else { indicatif::ProgressBar::hidden() };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ({eta})")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_message(dest.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default());
    let agent = ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(30)).timeout_read(Duration::from_secs(120)).build();
    // With no size in the manifest, a body larger than this is refused rather than written.
    let cap = expected_size.or(max_size).unwrap_or(MAX_UNSIZED_DOWNLOAD);
    let mut last_err = None;
    for attempt in 0..attempts.max(1) {
        let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        if let Some(size) = expected_size
            && have == size
        {
            // Whole: an error of an earlier attempt no longer matters.
            last_err = None;
            break;
        }
        if have > cap {
            // Longer than the expected file: it can only be wrong.
            std::fs::remove_file(&part).with_context(|| format!("{}: cannot remove", part.display()))?;
            continue;
        }
        match fetch_once(&agent, url, &part, have, cap, &bar) {
            Ok(()) => {
                last_err = None;
                break;
            }
            Err(e) => {
                bar.println(format!("download interrupted (attempt {}/{attempts}): {e:#}; resuming", attempt + 1));
                last_err = Some(e);
                std::thread::sleep(Duration::from_millis(200 * (attempt as u64 + 1)));
            }
        }
    }
    bar.finish_and_clear();
    let whole = expected_size.is_some_and(|size| std::fs::metadata(&part).is_ok_and(|m| m.len() == size));
    if let Some(e) = last_err
        && !whole
    {
        return Err(e.context(format!("downloading {url} failed; run the command again to resume from {}", part.display())));
    }
    std::fs::rename(&part, dest).with_context(|| format!("{}: cannot move into place", dest.display()))?;
    Ok(())
}

fn fetch_once(agent: &ureq::Agent, url: &str, part: &Path, have: u64, cap: u64, bar: &indicatif::ProgressBar) -> Result<()> {
    let mut req = agent.get(url);
    if have > 0 {
        req = req.set("Range", &format!("bytes={have}-"));
    }
    let resp = match req.call() {
        Ok(r) => r,
        // 416: nothing left to send (the partial file is already whole).
        Err(ureq::Error::Status(416, _)) if have > 0 => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("GET {url}")),
    };
    let append = resp.status() == 206;
    if append {
        // `Content-Range: bytes START-END/TOTAL`: the body must continue the partial file.
        let range = resp.header("Content-Range").unwrap_or("");
        let start = range.strip_prefix("bytes ").and_then(|r| r.split('-').next()).and_then(|s| s.trim().parse::<u64>().ok());
        if start != Some(have) {
            // Start over rather than splice the wrong bytes into the file.
            std::fs::remove_file(part).with_context(|| format!("{}: cannot remove", part.display()))?;
            bail!("GET {url}: asked for bytes {have}- and got a 206 with Content-Range '{range}'; starting over");
        }
    }
    let base = if append { have } else { 0 };
    bar.set_position(base);
    let expected = resp.header("Content-Length").and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = expected {
        bar.set_length(len + base);
        if base + len > cap {
            bail!("GET {url}: the server announces {} bytes, more than the expected {cap}", base + len);
        }
    }
    let mut out = if append { OpenOptions::new().append(true).open(part)? } else { File::create(part)? };
    let mut reader = resp.into_reader().take(cap - base + 1);
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0u64;
    loop {
        let n = reader.read(&mut buf).context("connection broke")?;
        if n == 0 {
            break;
        }
        if base + got + n as u64 > cap {
            drop(out);
            std::fs::remove_file(part).with_context(|| format!("{}: cannot remove", part.display()))?;
            bail!("GET {url}: the body runs past the expected {cap} bytes; the partial file was removed");
        }
        out.write_all(&buf[..n])?;
        got += n as u64;
        bar.inc(n as u64);
    }
    out.sync_all()?;
    if let Some(len) = expected
        && got < len
    {
        bail!("connection closed after {got} of {len} bytes");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A loopback HTTP server for `body` that honours `Range: bytes=N-` and breaks the first
    /// connection after `break_after` bytes.
    fn serve(body: Vec<u8>, break_after: usize) -> (String, Arc<AtomicUsize>) {
        serve_with(body, break_after, Server::Honest)
    }

    /// How the loopback server misbehaves.
    #[derive(Clone, Copy, PartialEq)]
    enum Server {
        Honest,
        /// Sends bytes forever with no Content-Length.
        Endless,
        /// Answers a range request with a 206 whose range starts at 0.
        WrongRange,
        /// Sends the whole body chunked, then closes before the final chunk.
        ChunkedNoEnd,
    }

    fn serve_with(body: Vec<u8>, break_after: usize, kind: Server) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/file.tgz", listener.local_addr().expect("addr"));
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let n = count.fetch_add(1, Ordering::SeqCst);
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut start = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(r) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        start = r.trim().trim_end_matches('-').parse().unwrap_or(0);
                    }
                }
                if kind == Server::Endless {
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
                    let chunk = vec![7u8; 1 << 16];
                    while stream.write_all(&chunk).is_ok() {}
                    continue;
                }
                if kind == Server::ChunkedNoEnd {
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
                    let _ = stream.write_all(format!("{:x}\r\n", body.len()).as_bytes());
                    let _ = stream.write_all(&body);
                    let _ = stream.write_all(b"\r\n");
                    continue;
                }
                let (from, range_start) = if kind == Server::WrongRange { (0, 0) } else { (start.min(body.len()), start) };
                let slice = &body[from..];
                let status = if start > 0 { "206 Partial Content" } else { "200 OK" };
                let range = format!("Content-Range: bytes {range_start}-{}/{}\r\n", body.len().saturating_sub(1), body.len());
                let head =
                    format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n", slice.len(), if start > 0 { range.as_str() } else { "" });
                let _ = stream.write_all(head.as_bytes());
                let cut = if n == 0 { break_after.min(slice.len()) } else { slice.len() };
                let _ = stream.write_all(&slice[..cut]);
                let _ = stream.flush();
            }
        });
        (url, requests)
    }

    #[test]
    fn resumes_a_broken_download_and_verifies_it() {
        let body: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (url, requests) = serve(body.clone(), 50_000);
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("file.tgz");
        download_capped(&url, &dest, Some(body.len() as u64), None, 3, false).expect("download with resume");
        assert_eq!(std::fs::read(&dest).expect("read"), body);
        assert!(requests.load(Ordering::SeqCst) >= 2, "the second request resumed");
        let d = digests(&dest).expect("digest");
        let spec = FileSpec {
            name: "f".into(),
            url: url.clone(),
            size: Some(body.len() as u64),
            max_size: None,
            sha256: Some(d.sha256.clone()),
            md5: Some(d.md5.clone()),
            extract: false,
            into: None,
        };
        verify(&dest, &spec).expect("verifies");
        // A flipped byte fails the check and names the file.
        let mut bad = body.clone();
        bad[1234] ^= 0x40;
        std::fs::write(&dest, &bad).expect("write");
        let e = verify(&dest, &spec).expect_err("tampered");
        assert!(e.to_string().contains("SHA-256") && e.to_string().contains("file.tgz"), "{e}");
        // A truncated file fails on size.
        std::fs::write(&dest, &body[..1000]).expect("write");
        assert!(verify(&dest, &spec).expect_err("truncated").to_string().contains("size"));
    }

    #[test]
    fn an_endless_body_stops_at_the_expected_size() {
        let (url, _) = serve_with(Vec::new(), usize::MAX, Server::Endless);
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("file.tgz");
        let e = download_capped(&url, &dest, Some(100_000), None, 2, false).expect_err("endless");
        assert!(format!("{e:#}").contains("past the expected 100000 bytes"), "{e:#}");
        assert!(!dest.exists());
        assert!(std::fs::metadata(dir.path().join("file.tgz.part")).map(|m| m.len()).unwrap_or(0) <= 100_000);
        // Without a size, the manifest's `max_size` is the ceiling.
        let (url, _) = serve_with(Vec::new(), usize::MAX, Server::Endless);
        let dest = dir.path().join("unsized.tgz");
        let e = download_capped(&url, &dest, None, Some(50_000), 2, false).expect_err("endless, unsized");
        assert!(format!("{e:#}").contains("past the expected 50000 bytes"), "{e:#}");
        assert!(!dest.exists());
    }

    #[test]
    fn a_206_with_the_wrong_range_is_not_spliced_in() {
        let body: Vec<u8> = (0..100_000u32).map(|i| (i * 13 % 251) as u8).collect();
        let (url, _) = serve_with(body.clone(), 30_000, Server::WrongRange);
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("file.tgz");
        // Attempt 1 breaks after 30 000 bytes; attempt 2 gets a 206 from byte 0 and starts over;
        // attempt 3 downloads the whole file with a plain GET.
        download_capped(&url, &dest, Some(body.len() as u64), None, 3, false).expect("recovers");
        assert_eq!(std::fs::read(&dest).expect("read"), body, "no bytes spliced at the wrong offset");
    }

    #[test]
    fn a_complete_part_file_clears_the_error_of_an_earlier_attempt() {
        // The first attempt receives every byte and then fails (the chunked body never ends);
        // the second finds the file whole. That is a success, not the first attempt's error.
        let body: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        let (url, requests) = serve_with(body.clone(), usize::MAX, Server::ChunkedNoEnd);
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("file.tgz");
        download_capped(&url, &dest, Some(body.len() as u64), None, 2, false).expect("whole after the first attempt");
        assert_eq!(std::fs::read(&dest).expect("read"), body);
        assert_eq!(requests.load(Ordering::SeqCst), 1, "no second request for a whole file");
    }

    #[test]
    fn known_digests() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("abc");
        std::fs::write(&p, b"abc").expect("write");
        let d = digests(&p).expect("digest");
        assert_eq!(d.sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(d.md5, "900150983cd24fb0d6963f7d28e17f72");
    }

    /// Every `datasets/*.toml` parses, so a typo in a new manifest fails the tests; and every
    /// dataset the readers know has one.
    #[test]
    fn manifests_of_the_repository_parse() {
        let ws = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace");
        let mut names: Vec<String> = std::fs::read_dir(ws.join("datasets"))
            .expect("datasets/")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .map(|p| p.file_stem().expect("stem").to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in &names {
            let m = Manifest::load(ws, name).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert_eq!(&m.name, name);
            assert!(!m.files.is_empty(), "{name}: no files");
        }
        for kind in fgia_core::datasets::DatasetKind::ALL.into_iter().filter(|k| k.has_manifest()) {
            assert!(names.iter().any(|n| n == kind.name()), "no manifest for {kind}");
        }
    }
}
