//! Safe extraction of tar and gzip-compressed tar archives.
//!
//! An archive is read twice. The first pass checks every entry and reads all data to the end:
//! paths with `..` or an absolute root, symbolic and hard links whose target leaves the
//! destination, device files, and truncated or corrupt compressed streams are all rejected
//! before anything is written. The second pass extracts into a staging folder inside the
//! destination, and only a complete extraction is moved into place, so a failure never leaves
//! a half-extracted dataset.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

/// Why an archive was refused.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// An entry would be written outside the destination.
    #[error("{archive}: entry '{entry}' {reason}; refusing to extract anything")]
    Unsafe {
        /// Archive file.
        archive: PathBuf,
        /// Entry path as stored.
        entry: String,
        /// What is wrong with it.
        reason: String,
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

/// Whether `target`, taken relative to the folder holding `entry`, stays inside the root.
fn link_stays_inside(entry: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: i64 = entry.parent().map(|p| p.components().filter(|c| matches!(c, Component::Normal(_))).count() as i64).unwrap_or(0);
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// A checked entry of the first pass.
struct Checked {
    path: PathBuf,
}

/// First pass: validates every entry and reads the whole stream. Returns the entries' paths.
fn check(archive: &Path) -> Result<Vec<Checked>, ExtractError> {
    let corrupt = |e: std::io::Error| ExtractError::Corrupt { archive: archive.to_path_buf(), message: e.to_string() };
    let mut ar = open(archive)?;
    let mut out = Vec::new();
    for entry in ar.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let raw = entry.path().map_err(corrupt)?.into_owned();
        let unsafe_entry = |reason: &str| ExtractError::Unsafe { archive: archive.to_path_buf(), entry: raw.display().to_string(), reason: reason.to_string() };
        let Some(rel) = normal_relative(&raw) else {
            return Err(unsafe_entry("has an absolute path or a '..' component"));
        };
        match entry.header().entry_type() {
            EntryType::Regular | EntryType::Continuous | EntryType::Directory => {}
            EntryType::Symlink | EntryType::Link => {
                let target = entry.link_name().map_err(corrupt)?.ok_or_else(|| unsafe_entry("is a link without a target"))?.into_owned();
                // A hard link's target is relative to the archive root; a symlink's to its folder.
                let inside = if entry.header().entry_type() == EntryType::Link { normal_relative(&target).is_some() } else { link_stays_inside(&rel, &target) };
                if !inside {
                    return Err(unsafe_entry(&format!("links to '{}', outside the destination", target.display())));
                }
            }
            EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName | EntryType::GNULongLink => continue,
            other => return Err(unsafe_entry(&format!("has unsupported type {other:?}"))),
        }
        // Read the data to the end, so a truncated or corrupt stream fails now.
        std::io::copy(&mut entry, &mut std::io::sink()).map_err(corrupt)?;
        out.push(Checked { path: rel });
    }
    // Trailing data of the compressed stream (its CRC) is checked when the reader hits the end.
    let mut rest = ar.into_inner();
    std::io::copy(&mut rest, &mut std::io::sink()).map_err(corrupt)?;
    if out.is_empty() {
        return Err(ExtractError::Corrupt { archive: archive.to_path_buf(), message: "no entries".into() });
    }
    Ok(out)
}

/// Extracts `archive` into `dest` after checking it. Top-level entries that already exist in
/// `dest` are an error (nothing is overwritten). Returns the number of entries.
pub fn extract(archive: &Path, dest: &Path) -> Result<usize, ExtractError> {
    let entries = check(archive)?;
    std::fs::create_dir_all(dest).map_err(io(dest))?;
    let mut tops: Vec<PathBuf> = entries.iter().filter_map(|c| c.path.components().next().map(|x| PathBuf::from(x.as_os_str()))).collect();
    tops.sort();
    tops.dedup();
    for t in &tops {
        if dest.join(t).exists() {
            return Err(ExtractError::Exists(dest.join(t)));
        }
    }
    let staging = dest.join(format!(".extract-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    let result = unpack(archive, &staging);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    for t in &tops {
        std::fs::rename(staging.join(t), dest.join(t)).map_err(io(&dest.join(t)))?;
    }
    let _ = std::fs::remove_dir_all(&staging);
    Ok(entries.len())
}

fn unpack(archive: &Path, staging: &Path) -> Result<(), ExtractError> {
    let corrupt = |e: std::io::Error| ExtractError::Corrupt { archive: archive.to_path_buf(), message: e.to_string() };
    let mut ar = open(archive)?;
    for entry in ar.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let raw = entry.path().map_err(corrupt)?.into_owned();
        let Some(rel) = normal_relative(&raw) else {
            return Err(ExtractError::Unsafe { archive: archive.to_path_buf(), entry: raw.display().to_string(), reason: "changed between passes".into() });
        };
        let out = staging.join(&rel);
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        match entry.header().entry_type() {
            EntryType::Directory => std::fs::create_dir_all(&out).map_err(io(&out))?,
            EntryType::Regular | EntryType::Continuous => {
                let mut f = File::create(&out).map_err(io(&out))?;
                std::io::copy(&mut entry, &mut f).map_err(corrupt)?;
            }
            EntryType::Symlink => {
                let target = entry.link_name().map_err(corrupt)?.map(|t| t.into_owned()).unwrap_or_default();
                if !link_stays_inside(&rel, &target) {
                    return Err(ExtractError::Unsafe {
                        archive: archive.to_path_buf(),
                        entry: raw.display().to_string(),
                        reason: "changed between passes".into(),
                    });
                }
                std::os::unix::fs::symlink(&target, &out).map_err(io(&out))?;
            }
            EntryType::Link => {
                let target = entry.link_name().map_err(corrupt)?.and_then(|t| normal_relative(&t)).ok_or_else(|| ExtractError::Unsafe {
                    archive: archive.to_path_buf(),
                    entry: raw.display().to_string(),
                    reason: "changed between passes".into(),
                })?;
                std::fs::hard_link(staging.join(&target), &out).map_err(io(&out))?;
            }
            _ => {}
        }
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
        tar_of(&[
            raw_entry("data/", b'5', "", b""),
            raw_entry("data/a.txt", b'0', "", b"hello"),
            raw_entry("data/sub/b.txt", b'0', "", b"world"),
            raw_entry("data/link", b'2', "sub/b.txt", b""),
            raw_entry("data/hard", b'1', "data/a.txt", b""),
        ])
    }

    #[test]
    fn extracts_a_good_archive_plain_and_gzipped() {
        for (name, bytes) in [("good.tar", good()), ("good.tgz", gzip(&good()))] {
            let dir = tempfile::tempdir().expect("tempdir");
            let a = write(dir.path(), name, &bytes);
            let dest = dir.path().join("out");
            assert_eq!(extract(&a, &dest).expect("extracts"), 5);
            assert_eq!(std::fs::read_to_string(dest.join("data/a.txt")).expect("a"), "hello");
            assert_eq!(std::fs::read_to_string(dest.join("data/link")).expect("link"), "world");
            assert_eq!(std::fs::read_to_string(dest.join("data/hard")).expect("hard"), "hello");
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

    #[test]
    fn symlink_containment_rules() {
        assert!(link_stays_inside(Path::new("a/b/l"), Path::new("../c")));
        assert!(link_stays_inside(Path::new("a/b/l"), Path::new("../../c")));
        assert!(!link_stays_inside(Path::new("a/b/l"), Path::new("../../../c")));
        assert!(!link_stays_inside(Path::new("l"), Path::new("/abs")));
    }
}
