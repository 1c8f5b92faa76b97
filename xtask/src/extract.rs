//! Safe extraction of tar, gzip-compressed tar and zip archives. The format is told by the
//! file's first bytes (`PK\x03\x04` zip, `1f 8b` gzip, else tar), never by its name.
//!
//! An archive is read twice. The first pass checks every entry and reads all data to the end,
//! before anything is written. It refuses:
//! - paths with `..` or an absolute root (and, in zip archives, paths with a backslash, which
//!   Windows tools write as a separator);
//! - symbolic links, hard links, device files and every other non-regular entry (the datasets
//!   have none, and a link written by one entry can carry a later entry's path outside the
//!   destination however each path reads as text);
//! - a path that occurs twice;
//! - more than [`Limits::max_entries`] entries or more than [`Limits::max_bytes`] unpacked bytes
//!   (archive bombs);
//! - truncated or corrupt compressed streams (zip entries: also a CRC mismatch, and encrypted
//!   entries).
//!
//! The second pass extracts into a staging folder inside the destination, creating each file
//! with `create_new`, and only a complete extraction is moved into place, so a failure never
//! leaves a half-extracted dataset. The staging folder holds a locked file while it is in use;
//! a staging folder whose lock is free was left by a killed run and is removed by the next one.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

/// Bounds on what one archive may unpack to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most entries (files and folders).
    pub max_entries: usize,
    /// Most unpacked bytes, summed over the files.
    pub max_bytes: u64,
}

impl Default for Limits {
    /// Above the largest dataset archive: iNat2017's `train_val_images.tar.gz`, 186 GiB and
    /// about 680,000 files.
    fn default() -> Self {
        Self { max_entries: 2_000_000, max_bytes: 256 << 30 }
    }
}

/// Why an archive was refused.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// An entry would be written outside the destination, or is not a file or folder.
    #[error("{archive}: entry '{entry}' {reason}; refusing to extract anything")]
    Unsafe {
        /// Archive file.
        archive: PathBuf,
        /// Entry path as stored.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The archive unpacks to more than the limits allow.
    #[error("{archive}: {what} exceeds the limit of {limit}; refusing to extract anything")]
    TooLarge {
        /// Archive file.
        archive: PathBuf,
        /// What was counted.
        what: &'static str,
        /// The limit.
        limit: u64,
    },
    /// The archive is truncated or corrupt.
    #[error("{archive}: corrupt or truncated archive: {message}")]
    Corrupt {
        /// Archive file.
        archive: PathBuf,
        /// Decoder message.
        message: String,
    },
    /// Extraction would overwrite existing files.
    #[error("{0}: already exists; remove it to extract again")]
    Exists(PathBuf),
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// Path concerned.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExtractError + '_ {
    move |source| ExtractError::Io { path: path.to_path_buf(), source }
}

/// The container format of an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// tar, plain or gzip-compressed.
    Tar,
    /// zip.
    Zip,
}

/// Tells the format by the first bytes: a local file header or an empty archive's end record is
/// zip; anything else is left to the tar reader (which takes gzip by its own magic).
fn format_of(archive: &Path) -> Result<Format, ExtractError> {
    let mut magic = Vec::with_capacity(4);
    File::open(archive).map_err(io(archive))?.take(4).read_to_end(&mut magic).map_err(io(archive))?;
    Ok(if magic == b"PK\x03\x04" || magic == b"PK\x05\x06" { Format::Zip } else { Format::Tar })
}

fn open(archive: &Path) -> Result<tar::Archive<Box<dyn Read>>, ExtractError> {
    let mut f = BufReader::new(File::open(archive).map_err(io(archive))?);
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic).map_err(io(archive))?;
    let f = BufReader::new(File::open(archive).map_err(io(archive))?);
    let reader: Box<dyn Read> = if n == 2 && magic == [0x1f, 0x8b] { Box::new(flate2::read::MultiGzDecoder::new(f)) } else { Box::new(f) };
    Ok(tar::Archive::new(reader))
}

/// A relative path made only of normal components, or `None`.
fn normal_relative(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// A zip entry name as a relative path of normal components, or `None` (also for a backslash
/// or a NUL, which no dataset uses and which mean different things to different tools).
fn zip_relative(name: &str) -> Option<PathBuf> {
    if name.contains(['\\', '\0']) {
        return None;
    }
    normal_relative(Path::new(name))
}

/// A checked entry of the first pass.
struct Checked {
    path: PathBuf,
}

/// The entries the first pass has admitted, and the bytes they unpack to, against the limits.
struct Tally<'a> {
    archive: &'a Path,
    limits: Limits,
    seen: HashSet<PathBuf>,
    bytes: u64,
    out: Vec<Checked>,
}

impl<'a> Tally<'a> {
    fn new(archive: &'a Path, limits: Limits) -> Self {
        Tally { archive, limits, seen: HashSet::new(), bytes: 0, out: Vec::new() }
    }

    fn too_large(&self, what: &'static str, limit: u64) -> ExtractError {
        ExtractError::TooLarge { archive: self.archive.to_path_buf(), what, limit }
    }

    /// Admits the entry at `rel` (stored as `raw`): refuses a path seen before and an entry past
    /// the count limit, then reads its data to the end, so a truncated or corrupt stream fails
    /// now, counting the bytes actually read rather than what a header says.
    fn admit(&mut self, rel: PathBuf, raw: &str, data: impl Read) -> Result<(), ExtractError> {
        if !self.seen.insert(rel.clone()) {
            return Err(ExtractError::Unsafe { archive: self.archive.to_path_buf(), entry: raw.to_string(), reason: "occurs twice".into() });
        }
        if self.out.len() >= self.limits.max_entries {
            return Err(self.too_large("the number of entries", self.limits.max_entries as u64));
        }
        let budget = self.limits.max_bytes - self.bytes;
        let n = std::io::copy(&mut data.take(budget.saturating_add(1)), &mut std::io::sink())
            .map_err(|e| ExtractError::Corrupt { archive: self.archive.to_path_buf(), message: e.to_string() })?;
        if n > budget {
            return Err(self.too_large("the unpacked size in bytes", self.limits.max_bytes));
        }
        self.bytes += n;
        self.out.push(Checked { path: rel });
        Ok(())
    }

    fn finish(self) -> Result<Vec<Checked>, ExtractError> {
        if self.out.is_empty() {
            return Err(ExtractError::Corrupt { archive: self.archive.to_path_buf(), message: "no entries".into() });
        }
        Ok(self.out)
    }
}

/// First pass: validates every entry and reads the whole archive. Returns the entries' paths.
fn check(archive: &Path, limits: Limits) -> Result<Vec<Checked>, ExtractError> {
    match format_of(archive)? {
        Format::Tar => check_tar(archive, limits),
        Format::Zip => check_zip(archive, limits),
    }
}

fn check_tar(archive: &Path, limits: Limits) -> Result<Vec<Checked>, ExtractError> {
    let corrupt = |e: std::io::Error| ExtractError::Corrupt { archive: archive.to_path_buf(), message: e.to_string() };
    let mut ar = open(archive)?;
    let mut tally = Tally::new(archive, limits);
    for entry in ar.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let raw = entry.path().map_err(corrupt)?.into_owned();
        let unsafe_entry = |reason: &str| ExtractError::Unsafe { archive: archive.to_path_buf(), entry: raw.display().to_string(), reason: reason.to_string() };
        let Some(rel) = normal_relative(&raw) else {
            return Err(unsafe_entry("has an absolute path or a '..' component"));
        };
        match entry.header().entry_type() {
            EntryType::Regular | EntryType::Continuous | EntryType::Directory => {}
            EntryType::Symlink | EntryType::Link => return Err(unsafe_entry("is a link (links are not extracted)")),
            EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName | EntryType::GNULongLink => continue,
            other => return Err(unsafe_entry(&format!("has unsupported type {other:?}"))),
        }
        if rel.as_os_str().is_empty() {
            continue;
        }
        let raw = raw.display().to_string();
        tally.admit(rel, &raw, &mut entry)?;
    }
    // Trailing data of the compressed stream (its CRC) is checked when the reader hits the end.
    let mut rest = ar.into_inner();
    std::io::copy(&mut rest, &mut std::io::sink()).map_err(corrupt)?;
    tally.finish()
}

/// File type bits of a zip entry's Unix mode.
const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;

fn open_zip(archive: &Path) -> Result<zip::ZipArchive<BufReader<File>>, ExtractError> {
    let f = BufReader::new(File::open(archive).map_err(io(archive))?);
    zip::ZipArchive::new(f).map_err(|e| ExtractError::Corrupt { archive: archive.to_path_buf(), message: e.to_string() })
}

/// Whether a zip entry is a folder: by its name (`data/`) or by its Unix mode.
fn zip_is_dir(entry: &zip::read::ZipFile<'_, BufReader<File>>) -> bool {
    entry.is_dir() || entry.unix_mode().is_some_and(|m| m & S_IFMT == S_IFDIR)
}

fn check_zip(archive: &Path, limits: Limits) -> Result<Vec<Checked>, ExtractError> {
    let corrupt = |e: zip::result::ZipError| ExtractError::Corrupt { archive: archive.to_path_buf(), message: e.to_string() };
    let mut zip = open_zip(archive)?;
    // The central directory is read whole by `open_zip`; refuse a huge one before any data.
    if zip.len() > limits.max_entries {
        return Err(ExtractError::TooLarge { archive: archive.to_path_buf(), what: "the number of entries", limit: limits.max_entries as u64 });
    }
    let mut tally = Tally::new(archive, limits);
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(corrupt)?;
        let raw = entry.name().to_string();
        let unsafe_entry = |reason: &str| ExtractError::Unsafe { archive: archive.to_path_buf(), entry: raw.clone(), reason: reason.to_string() };
        let Some(rel) = zip_relative(&raw) else {
            return Err(unsafe_entry("has an absolute path, a '..' component, a backslash or a NUL"));
        };
        match entry.unix_mode().map(|m| m & S_IFMT) {
            None | Some(0) | Some(S_IFREG) | Some(S_IFDIR) => {}
            Some(S_IFLNK) => return Err(unsafe_entry("is a link (links are not extracted)")),
            Some(other) => return Err(unsafe_entry(&format!("has unsupported file type {other:o}"))),
        }
        if rel.as_os_str().is_empty() {
            continue;
        }
        tally.admit(rel, &raw, &mut entry)?;
    }
    tally.finish()
}

/// The lock file inside a staging folder.
const STAGING_LOCK: &str = ".lock";

/// Removes the `.extract-*` staging folders in `dest` whose lock is free: each was left by a run
/// that was killed. A folder whose lock is held belongs to a running extraction and is kept.
/// Returns how many were removed.
fn reclaim_staging(dest: &Path) -> Result<usize, ExtractError> {
    let Ok(rd) = std::fs::read_dir(dest) else { return Ok(0) };
    let mut removed = 0;
    for e in rd.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().starts_with(".extract-") || !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        let dir = e.path();
        let free = match File::options().read(true).write(true).open(dir.join(STAGING_LOCK)) {
            Ok(f) => f.try_lock().is_ok(),
            // No lock file: killed between creating the folder and the lock.
            Err(_) => true,
        };
        if free {
            std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
            eprintln!("{}: removed the staging folder of an interrupted extraction", dir.display());
            removed += 1;
        }
    }
    Ok(removed)
}

/// Extracts `archive` into `dest` after checking it, under the default [`Limits`].
pub fn extract(archive: &Path, dest: &Path) -> Result<usize, ExtractError> {
    extract_with(archive, dest, Limits::default())
}

/// Extracts `archive` into `dest` after checking it. Top-level entries that already exist in
/// `dest` are an error (nothing is overwritten). Returns the number of entries.
pub fn extract_with(archive: &Path, dest: &Path, limits: Limits) -> Result<usize, ExtractError> {
    let entries = check(archive, limits)?;
    std::fs::create_dir_all(dest).map_err(io(dest))?;
    reclaim_staging(dest)?;
    let mut tops: Vec<PathBuf> = entries.iter().filter_map(|c| c.path.components().next().map(|x| PathBuf::from(x.as_os_str()))).collect();
    tops.sort();
    tops.dedup();
    for t in &tops {
        if std::fs::symlink_metadata(dest.join(t)).is_ok() {
            return Err(ExtractError::Exists(dest.join(t)));
        }
    }
    let staging = tempfile::Builder::new().prefix(".extract-").tempdir_in(dest).map_err(io(dest))?;
    let lock_path = staging.path().join(STAGING_LOCK);
    let lock = File::create(&lock_path).map_err(io(&lock_path))?;
    lock.lock().map_err(io(&lock_path))?;
    unpack(archive, staging.path(), &entries)?;
    for t in &tops {
        std::fs::rename(staging.path().join(t), dest.join(t)).map_err(io(&dest.join(t)))?;
    }
    drop(lock);
    staging.close().map_err(io(dest))?;
    Ok(entries.len())
}

/// Second pass: writes the entries the first pass checked, and nothing else.
fn unpack(archive: &Path, staging: &Path, checked: &[Checked]) -> Result<(), ExtractError> {
    match format_of(archive)? {
        Format::Tar => unpack_tar(archive, staging, checked),
        Format::Zip => unpack_zip(archive, staging, checked),
    }
}

fn unpack_zip(archive: &Path, staging: &Path, checked: &[Checked]) -> Result<(), ExtractError> {
    let changed = |entry: &str| ExtractError::Unsafe { archive: archive.to_path_buf(), entry: entry.to_string(), reason: "changed between passes".into() };
    let mut zip = open_zip(archive)?;
    let mut expected = checked.iter();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| ExtractError::Corrupt { archive: archive.to_path_buf(), message: e.to_string() })?;
        let raw = entry.name().to_string();
        let rel = zip_relative(&raw).ok_or_else(|| changed(&raw))?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        if expected.next().map(|c| &c.path) != Some(&rel) {
            return Err(changed(&raw));
        }
        let is_dir = zip_is_dir(&entry);
        write_entry(archive, &staging.join(&rel), is_dir, &mut entry)?;
    }
    if expected.next().is_some() {
        return Err(ExtractError::Corrupt { archive: archive.to_path_buf(), message: "changed between passes".into() });
    }
    Ok(())
}

/// Creates the folder, or the new file with `data`, at `out` (and its parent folders).
fn write_entry(archive: &Path, out: &Path, is_dir: bool, data: &mut impl Read) -> Result<(), ExtractError> {
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    if is_dir {
        std::fs::create_dir_all(out).map_err(io(out))?;
    } else {
        let mut f = File::options().write(true).create_new(true).open(out).map_err(io(out))?;
        std::io::copy(data, &mut f).map_err(|e| ExtractError::Corrupt { archive: archive.to_path_buf(), message: e.to_string() })?;
    }
    Ok(())
}

fn unpack_tar(archive: &Path, staging: &Path, checked: &[Checked]) -> Result<(), ExtractError> {
    let corrupt = |e: std::io::Error| ExtractError::Corrupt { archive: archive.to_path_buf(), message: e.to_string() };
    let mut ar = open(archive)?;
    let mut expected = checked.iter();
    for entry in ar.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let raw = entry.path().map_err(corrupt)?.into_owned();
        let changed = || ExtractError::Unsafe { archive: archive.to_path_buf(), entry: raw.display().to_string(), reason: "changed between passes".into() };
        let kind = entry.header().entry_type();
        if !matches!(kind, EntryType::Regular | EntryType::Continuous | EntryType::Directory) {
            continue;
        }
        let rel = normal_relative(&raw).ok_or_else(changed)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        if expected.next().map(|c| &c.path) != Some(&rel) {
            return Err(changed());
        }
        write_entry(archive, &staging.join(&rel), kind == EntryType::Directory, &mut entry)?;
    }
    if expected.next().is_some() {
        return Err(ExtractError::Corrupt { archive: archive.to_path_buf(), message: "changed between passes".into() });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// One raw ustar entry, with no validation of the path (as a hostile archive would be).
    pub(crate) fn raw_entry(name: &str, kind: u8, link: &str, data: &[u8]) -> Vec<u8> {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[108..115].copy_from_slice(b"0000000");
        h[116..123].copy_from_slice(b"0000000");
        let size = format!("{:011o}", data.len());
        h[124..135].copy_from_slice(size.as_bytes());
        h[136..147].copy_from_slice(b"00000000000");
        h[156] = kind;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let mut out = h.to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    }

    pub(crate) fn tar_of(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut t: Vec<u8> = entries.concat();
        t.extend_from_slice(&[0u8; 1024]);
        t
    }

    pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).expect("gzip");
        e.finish().expect("gzip")
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).expect("write archive");
        p
    }

    fn good() -> Vec<u8> {
        tar_of(&[raw_entry("data/", b'5', "", b""), raw_entry("data/a.txt", b'0', "", b"hello"), raw_entry("data/sub/b.txt", b'0', "", b"world")])
    }

    #[test]
    fn extracts_a_good_archive_plain_and_gzipped() {
        for (name, bytes) in [("good.tar", good()), ("good.tgz", gzip(&good()))] {
            let dir = tempfile::tempdir().expect("tempdir");
            let a = write(dir.path(), name, &bytes);
            let dest = dir.path().join("out");
            assert_eq!(extract(&a, &dest).expect("extracts"), 3);
            assert_eq!(std::fs::read_to_string(dest.join("data/a.txt")).expect("a"), "hello");
            assert_eq!(std::fs::read_to_string(dest.join("data/sub/b.txt")).expect("b"), "world");
            // No staging folder left, and a second extraction refuses to overwrite.
            assert_eq!(std::fs::read_dir(&dest).expect("ls").count(), 1);
            assert!(matches!(extract(&a, &dest), Err(ExtractError::Exists(_))));
        }
    }

    #[test]
    fn hostile_entries_are_refused_and_nothing_is_written() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("dotdot", tar_of(&[raw_entry("data/a.txt", b'0', "", b"ok"), raw_entry("data/../../evil.txt", b'0', "", b"x")])),
            ("absolute", tar_of(&[raw_entry("data/a.txt", b'0', "", b"ok"), raw_entry("/tmp/evil.txt", b'0', "", b"x")])),
            ("symlink out", tar_of(&[raw_entry("data/a.txt", b'0', "", b"ok"), raw_entry("data/l", b'2', "../../etc/passwd", b"")])),
            ("symlink inside", tar_of(&[raw_entry("data/a.txt", b'0', "", b"ok"), raw_entry("data/l", b'2', "a.txt", b"")])),
            ("hardlink inside", tar_of(&[raw_entry("data/a.txt", b'0', "", b"ok"), raw_entry("data/h", b'1', "data/a.txt", b"")])),
            ("duplicate", tar_of(&[raw_entry("data/a.txt", b'0', "", b"ok"), raw_entry("data/./a.txt", b'0', "", b"evil")])),
            ("fifo", tar_of(&[raw_entry("data/f", b'6', "", b"")])),
            ("symlink absolute", tar_of(&[raw_entry("data/l", b'2', "/etc/passwd", b"")])),
            ("hardlink out", tar_of(&[raw_entry("data/h", b'1', "../outside", b"")])),
            ("hardlink absolute", tar_of(&[raw_entry("data/h", b'1', "/etc/passwd", b"")])),
            ("device", tar_of(&[raw_entry("data/dev", b'3', "", b"")])),
        ];
        for (what, bytes) in cases {
            let dir = tempfile::tempdir().expect("tempdir");
            let a = write(dir.path(), "bad.tar", &bytes);
            let dest = dir.path().join("out");
            let e = extract(&a, &dest).expect_err(what);
            assert!(matches!(e, ExtractError::Unsafe { .. }), "{what}: {e}");
            assert!(!dest.exists() || std::fs::read_dir(&dest).expect("ls").count() == 0, "{what}: something was written");
            assert!(!dir.path().join("evil.txt").exists());
        }
    }

    #[test]
    fn truncated_gzip_is_refused_before_writing() {
        let z = gzip(&good());
        for cut in [z.len() / 2, z.len() - 4] {
            let dir = tempfile::tempdir().expect("tempdir");
            let a = write(dir.path(), "cut.tgz", &z[..cut]);
            let dest = dir.path().join("out");
            let e = extract(&a, &dest).expect_err("truncated");
            assert!(matches!(e, ExtractError::Corrupt { .. }), "{e}");
            assert!(!dest.join("data").exists());
        }
    }

    /// Each link's text stays inside the destination, yet the chain leads out: `a/b/up` is
    /// `../..` (the destination), `a/b/up/x` is `../../..` from inside it, and the file
    /// `a/b/up/x/pwned` lands beside the destination. Links are refused outright.
    #[test]
    fn a_chain_of_symlinks_cannot_carry_a_file_outside() {
        let bytes =
            tar_of(&[raw_entry("a/b/up", b'2', "../..", b""), raw_entry("a/b/up/x", b'2', "../../..", b""), raw_entry("a/b/up/x/pwned", b'0', "", b"pwned")]);
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("deep/out");
        std::fs::create_dir_all(&dest).expect("mkdir");
        let a = write(dir.path(), "chain.tar", &bytes);
        let e = extract(&a, &dest).expect_err("chain");
        assert!(matches!(&e, ExtractError::Unsafe { entry, .. } if entry == "a/b/up"), "{e}");
        assert!(!dir.path().join("deep/pwned").exists() && !dir.path().join("pwned").exists());
        assert_eq!(std::fs::read_dir(&dest).expect("ls").count(), 0);
    }

    #[test]
    fn bombs_are_refused_by_size_and_by_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        // 64 MiB of zeros gzip to about 64 KiB; the limit is counted on the bytes read.
        let big = tar_of(&[raw_entry("data/zeros", b'0', "", &vec![0u8; 64 << 20])]);
        let a = write(dir.path(), "bomb.tgz", &gzip(&big));
        assert!(std::fs::metadata(&a).expect("size").len() < 1 << 20);
        let small = Limits { max_entries: 100, max_bytes: 1 << 20 };
        let e = extract_with(&a, &dir.path().join("out"), small).expect_err("size bomb");
        assert!(matches!(e, ExtractError::TooLarge { what, .. } if what.contains("size")), "{e}");
        let many: Vec<Vec<u8>> = (0..101).map(|i| raw_entry(&format!("data/f{i}"), b'0', "", b"x")).collect();
        let a = write(dir.path(), "many.tar", &tar_of(&many));
        let e = extract_with(&a, &dir.path().join("out"), small).expect_err("count bomb");
        assert!(matches!(e, ExtractError::TooLarge { what, .. } if what.contains("entries")), "{e}");
        assert!(!dir.path().join("out").exists());
        // At the limits exactly, it extracts.
        let at = Limits { max_entries: 101, max_bytes: 101 };
        assert_eq!(extract_with(&a, &dir.path().join("out"), at).expect("at the limit"), 101);
    }

    /// A zip of `(name, data)` entries (a name ending in `/` is a folder), deflated, with no
    /// check of the names (as a hostile archive would be).
    pub(crate) fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut buf = std::io::Cursor::new(Vec::new());
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        for (name, data) in entries {
            if let Some(dir) = name.strip_suffix('/') {
                z.add_directory(dir, opts).expect("dir");
            } else {
                z.start_file(*name, opts).expect("start");
                z.write_all(data).expect("data");
            }
        }
        z.finish().expect("finish");
        buf.into_inner()
    }

    fn good_zip() -> Vec<u8> {
        zip_of(&[("data/", b""), ("data/a.txt", b"hello"), ("data/sub/b.txt", b"world")])
    }

    #[test]
    fn extracts_a_good_zip_and_tells_formats_by_their_bytes() {
        // A zip named like a tarball and a tarball named like a zip: the bytes decide.
        for (name, bytes) in [("good.zip", good_zip()), ("misnamed.tar.gz", good_zip()), ("misnamed.zip", gzip(&good()))] {
            let dir = tempfile::tempdir().expect("tempdir");
            let a = write(dir.path(), name, &bytes);
            let dest = dir.path().join("out");
            assert_eq!(extract(&a, &dest).expect(name), 3, "{name}");
            assert_eq!(std::fs::read_to_string(dest.join("data/a.txt")).expect("a"), "hello");
            assert_eq!(std::fs::read_to_string(dest.join("data/sub/b.txt")).expect("b"), "world");
            assert_eq!(std::fs::read_dir(&dest).expect("ls").count(), 1, "no staging folder left");
            assert!(matches!(extract(&a, &dest), Err(ExtractError::Exists(_))), "nothing is overwritten");
        }
    }

    #[test]
    fn hostile_zip_entries_are_refused_and_nothing_is_written() {
        let symlink = {
            let mut buf = std::io::Cursor::new(Vec::new());
            let mut z = zip::ZipWriter::new(&mut buf);
            let opts = zip::write::SimpleFileOptions::default();
            z.start_file("data/a.txt", opts).expect("start");
            z.write_all(b"ok").expect("data");
            z.add_symlink("data/l", "../../etc/passwd", opts).expect("link");
            z.finish().expect("finish");
            buf.into_inner()
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("zip slip", zip_of(&[("data/a.txt", b"ok"), ("data/../../evil.txt", b"x")])),
            ("absolute", zip_of(&[("data/a.txt", b"ok"), ("/tmp/evil.txt", b"x")])),
            ("backslash", zip_of(&[("data/a.txt", b"ok"), ("..\\..\\evil.txt", b"x")])),
            ("duplicate", zip_of(&[("data/a.txt", b"ok"), ("data/./a.txt", b"evil")])),
            ("symlink", symlink),
        ];
        for (what, bytes) in cases {
            let dir = tempfile::tempdir().expect("tempdir");
            let a = write(dir.path(), "bad.zip", &bytes);
            let dest = dir.path().join("out");
            let e = extract(&a, &dest).expect_err(what);
            assert!(matches!(e, ExtractError::Unsafe { .. }), "{what}: {e}");
            assert!(!dest.exists() || std::fs::read_dir(&dest).expect("ls").count() == 0, "{what}: something was written");
            assert!(!dir.path().join("evil.txt").exists());
        }
    }

    #[test]
    fn zip_bombs_and_corrupt_zips_are_refused_before_writing() {
        let dir = tempfile::tempdir().expect("tempdir");
        // 64 MiB of zeros deflate to about 64 KiB; the limit is counted on the bytes read.
        let zeros = vec![0u8; 64 << 20];
        let a = write(dir.path(), "bomb.zip", &zip_of(&[("data/zeros", &zeros)]));
        assert!(std::fs::metadata(&a).expect("size").len() < 1 << 20);
        let small = Limits { max_entries: 100, max_bytes: 1 << 20 };
        let e = extract_with(&a, &dir.path().join("out"), small).expect_err("size bomb");
        assert!(matches!(e, ExtractError::TooLarge { what, .. } if what.contains("size")), "{e}");
        let names: Vec<String> = (0..101).map(|i| format!("data/f{i}")).collect();
        let many: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), b"x".as_slice())).collect();
        let a = write(dir.path(), "many.zip", &zip_of(&many));
        let e = extract_with(&a, &dir.path().join("out"), small).expect_err("count bomb");
        assert!(matches!(e, ExtractError::TooLarge { what, .. } if what.contains("entries")), "{e}");
        assert!(!dir.path().join("out").exists());
        // A flipped byte in the deflated data fails the CRC or the inflater; a cut archive has no
        // central directory.
        let bytes = zip_of(&[("data/a.txt", "some text that deflates well, well, well, well".repeat(50).as_bytes())]);
        let mut flipped = bytes.clone();
        flipped[60] ^= 0x10;
        for (what, bad) in [("flipped", flipped), ("cut", bytes[..bytes.len() / 2].to_vec())] {
            let a = write(dir.path(), "bad.zip", &bad);
            let e = extract(&a, &dir.path().join("out")).expect_err(what);
            assert!(matches!(e, ExtractError::Corrupt { .. }), "{what}: {e}");
            assert!(!dir.path().join("out/data").exists(), "{what}");
        }
        // At the limits exactly, it extracts.
        let at = Limits { max_entries: 101, max_bytes: 101 };
        let a = write(dir.path(), "many.zip", &zip_of(&many));
        assert_eq!(extract_with(&a, &dir.path().join("out"), at).expect("at the limit"), 101);
    }

    #[test]
    fn a_staging_folder_left_by_a_killed_run_is_reclaimed_and_a_live_one_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("out");
        // Killed run: a staging folder with a half-written file and an unlocked lock file.
        let dead = dest.join(".extract-dead");
        std::fs::create_dir_all(dead.join("data")).expect("mkdir");
        std::fs::write(dead.join(STAGING_LOCK), b"").expect("lock");
        std::fs::write(dead.join("data/half"), vec![0u8; 1000]).expect("half");
        // A running extraction: its lock is held.
        let live = dest.join(".extract-live");
        std::fs::create_dir_all(&live).expect("mkdir");
        let held = File::create(live.join(STAGING_LOCK)).expect("lock");
        held.lock().expect("hold");
        let a = write(dir.path(), "good.tar", &good());
        extract(&a, &dest).expect("extracts");
        assert!(!dead.exists(), "the dead staging folder is reclaimed");
        assert!(live.exists(), "a held staging folder is kept");
        let mut names: Vec<String> = std::fs::read_dir(&dest).expect("ls").map(|e| e.expect("e").file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names, [".extract-live", "data"]);
    }
}
