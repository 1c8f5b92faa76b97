//! `cargo xtask download <dataset>`: fetch (or take from `--from-archive`), verify, extract.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::extract::extract;
use crate::fetch::{Manifest, download_capped, verify};

/// Downloads and extracts a dataset into `root`; returns the reader root.
pub fn download_dataset(workspace: &Path, name: &str, root: &Path, from_archives: &[PathBuf]) -> Result<PathBuf> {
    let manifest = Manifest::load(workspace, name)?;
    let archives = root.join(".archives");
    let markers = root.join(".fgia");
    std::fs::create_dir_all(&archives)?;
    std::fs::create_dir_all(&markers)?;
    for spec in &manifest.files {
        let done = markers.join(format!("{}.done", spec.name));
        if done.exists() {
            println!("{}: already extracted", spec.name);
            continue;
        }
        // An archive the user already has, matched by file name.
        let given = from_archives.iter().find(|p| p.file_name().is_some_and(|f| f.to_string_lossy() == spec.name));
        let file = match given {
            Some(p) => {
                println!("{}: using {}", spec.name, p.display());
                p.clone()
            }
            None => {
                let dest = archives.join(&spec.name);
                if !dest.exists() {
                    println!("{}: downloading {}", spec.name, spec.url);
                    download_capped(&spec.url, &dest, spec.size, spec.max_size, 5, true)?;
                }
                dest
            }
        };
        println!("{}: verifying checksum", spec.name);
        if let Err(e) = verify(&file, spec) {
            if given.is_none() {
                // A bad download is removed so the next run starts over.
                let _ = std::fs::remove_file(&file);
            }
            return Err(e.context(format!("{} is not the official file; nothing was extracted", spec.name)));
        }
        let into = root.join(spec.into.as_deref().unwrap_or(""));
        if spec.extract {
            println!("{}: extracting into {}", spec.name, into.display());
            let n = extract(&file, &into).with_context(|| format!("extracting {}", spec.name))?;
            println!("{}: {n} entries", spec.name);
        } else {
            std::fs::create_dir_all(&into)?;
            let dest = into.join(&spec.name);
            if dest.exists() {
                bail!("{}: already exists; remove it to place the file again", dest.display());
            }
            let bytes = std::fs::read(&file)?;
            fgia_core::record::write_atomic(&dest, &bytes)?;
        }
        fgia_core::record::write_atomic(&done, b"ok\n")?;
    }
    let reader_root = root.join(&manifest.root);
    println!("{} is at {} ({})", manifest.title, reader_root.display(), manifest.split);
    println!("check it with: cargo xtask datasets verify {name} --root {}", reader_root.display());
    Ok(reader_root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::tests::{gzip, raw_entry, tar_of};
    use crate::fetch::digests;

    /// A workspace with one manifest describing `archive`.
    fn workspace_with(archive: &Path, extract: bool) -> tempfile::TempDir {
        let ws = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(ws.path().join("datasets")).expect("mkdir");
        let d = digests(archive).expect("digest");
        let name = archive.file_name().expect("name").to_string_lossy();
        std::fs::write(
            ws.path().join("datasets/toy.toml"),
            format!(
                "name = \"toy\"\ntitle = \"Toy\"\nroot = \"toy\"\nsplit = \"none\"\n[[files]]\nname = \"{name}\"\nurl = \"http://127.0.0.1:9/{name}\"\nsize = {}\nsha256 = \"{}\"\nextract = {extract}\n",
                d.size, d.sha256
            ),
        )
        .expect("manifest");
        ws
    }

    #[test]
    fn from_archive_is_verified_then_extracted_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = dir.path().join("toy.tgz");
        std::fs::write(&archive, gzip(&tar_of(&[raw_entry("toy/a.txt", b'0', "", b"data")]))).expect("write");
        let ws = workspace_with(&archive, true);
        let root = dir.path().join("data");
        let r = download_dataset(ws.path(), "toy", &root, std::slice::from_ref(&archive)).expect("extracts");
        assert_eq!(std::fs::read_to_string(r.join("a.txt")).expect("a"), "data");
        // A second run finds the marker and does nothing.
        download_dataset(ws.path(), "toy", &root, std::slice::from_ref(&archive)).expect("idempotent");
    }

    #[test]
    fn a_tampered_archive_is_rejected_before_anything_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("toy.tgz");
        let bytes = gzip(&tar_of(&[raw_entry("toy/a.txt", b'0', "", b"some data here")]));
        std::fs::write(&good, &bytes).expect("write");
        let ws = workspace_with(&good, true);
        // Same name, one flipped byte inside the gzip body: it may even still decompress.
        let tampered_dir = dir.path().join("t");
        std::fs::create_dir_all(&tampered_dir).expect("mkdir");
        let tampered = tampered_dir.join("toy.tgz");
        let mut bad = bytes.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x01;
        std::fs::write(&tampered, &bad).expect("write");
        let root = dir.path().join("data");
        let e = download_dataset(ws.path(), "toy", &root, &[tampered]).expect_err("tampered");
        assert!(format!("{e:#}").contains("SHA-256"), "{e:#}");
        assert!(!root.join("toy").exists(), "nothing extracted");
        // A truncated copy fails on size, also before extraction.
        std::fs::write(tampered_dir.join("toy.tgz"), &bytes[..bytes.len() - 10]).expect("write");
        let e = download_dataset(ws.path(), "toy", &root, &[tampered_dir.join("toy.tgz")]).expect_err("truncated");
        assert!(format!("{e:#}").contains("size"), "{e:#}");
        assert!(!root.join("toy").exists());
    }
}
