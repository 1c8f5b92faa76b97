//! Weight import: PyTorch `.pth` (zip and legacy pickle formats) and `.safetensors` files through
//! burn-store, with the key-remap rules of each backbone next to the loader. Tensors that a
//! `.pth` file stores as non-contiguous views are reordered first (burn-store 0.21 ignores
//! strides; see [`crate::torch_layout`]).
//!
//! A checkpoint must match the network exactly after the rules: every parameter of the network
//! must be found, and every tensor of the file must be used, except the keys a rule declares
//! unused on purpose (batch-norm step counters, VGG's ImageNet classifier). Anything else is an
//! error that lists the offending keys.

use std::path::{Path, PathBuf};

use burn::module::ParamId;
use burn::prelude::*;
use burn_store::pytorch::PytorchReader;
use burn_store::{KeyRemapper, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore, TensorSnapshot};
use regex::Regex;

use crate::error::NnError;
use crate::network::{BackboneKind, Network, PretrainedSource};
use crate::torch_layout::read_layouts;
use crate::vgg::VGG16_TORCHVISION_INDEX;

/// How a checkpoint's keys become the network's parameter paths.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// `(regex, replacement)` pairs applied in order to every key.
    pub remaps: Vec<(String, String)>,
    /// Keys of the file (after remapping) that are unused on purpose.
    pub ignore_unused: Vec<String>,
    /// Network parameters that a checkpoint may lack (they keep their initialisation).
    pub allow_missing: Vec<String>,
}

const BN_COUNTER: &str = r"num_batches_tracked$";

/// torchvision ResNet: the projection shortcut is a `Sequential` (`downsample.0`, `.1`); here it
/// is a struct with named fields.
pub fn resnet_remaps() -> Rules {
    Rules {
        remaps: vec![(r"\.downsample\.0\.".into(), ".downsample.conv.".into()), (r"\.downsample\.1\.".into(), ".downsample.bn.".into())],
        ignore_unused: vec![BN_COUNTER.into()],
        allow_missing: Vec::new(),
    }
}

/// torchvision/timm VGG-16: `features.<i>` counts ReLU and pooling layers too; the 13
/// convolutions are `convs.0..12` here. The ImageNet classifier (torchvision `classifier.*`,
/// timm `pre_logits.*` and `head.*`) is not part of this network, so it is ignored, and the
/// linear head on pooled conv5_3 features is always new.
pub fn vgg16_remaps() -> Rules {
    Rules {
        remaps: VGG16_TORCHVISION_INDEX.iter().enumerate().map(|(n, i)| (format!(r"^features\.{i}\."), format!("convs.{n}."))).collect(),
        ignore_unused: vec![r"^classifier\.".into(), r"^pre_logits\.".into(), r"^head\.".into(), BN_COUNTER.into()],
        allow_missing: vec![r"^head\.".into()],
    }
}

/// lukemelas EfficientNet-PyTorch: every module name starts with an underscore
/// (`_blocks.3._bn1`); the Rust fields do not.
pub fn efficientnet_remaps() -> Rules {
    Rules { remaps: vec![(r"(^|\.)_".into(), "${1}".into())], ignore_unused: vec![BN_COUNTER.into()], allow_missing: Vec::new() }
}

/// The rules of a backbone kind.
pub fn rules_for(kind: BackboneKind) -> Rules {
    match kind {
        BackboneKind::ResNet18 | BackboneKind::ResNet50 | BackboneKind::ResNet101 => resnet_remaps(),
        BackboneKind::Vgg16 => vgg16_remaps(),
        BackboneKind::EfficientNetLite0 => efficientnet_remaps(),
    }
}

/// What a successful import did.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    /// Tensors copied into the network.
    pub applied: usize,
    /// File keys left unused on purpose.
    pub ignored: Vec<String>,
    /// Network parameters the file lacked on purpose (kept initialised).
    pub kept_initialised: Vec<String>,
}

fn compile(patterns: &[String]) -> Result<Vec<Regex>, NnError> {
    patterns.iter().map(|p| Regex::new(p).map_err(|e| NnError::Invalid(format!("bad rule '{p}': {e}")))).collect()
}

/// Reads every tensor of a `.pth` file (zip or legacy) with burn-store's reader, then puts the
/// elements of tensors saved as non-contiguous views into row-major order, which the reader
/// does not do (see [`crate::torch_layout`]).
fn read_pth(path: &Path) -> Result<Vec<TensorSnapshot>, String> {
    let tensors = PytorchReader::new(path).map_err(|e| e.to_string())?.into_tensors();
    let layouts = read_layouts(path).map_err(|e| format!("reading tensor layouts: {e}"))?;
    let mut out = Vec::with_capacity(tensors.len());
    for (key, snap) in tensors {
        let path_stack: Vec<String> = key.split('.').map(str::to_string).collect();
        let snap = match layouts.get(&key) {
            Some(layout) if !layout.is_contiguous() => {
                let data = snap.to_data().map_err(|e| format!("{key}: {e:?}"))?;
                let size = data.dtype.size();
                let elements: Vec<&[u8]> = data.as_bytes().chunks_exact(size).collect();
                let ordered = layout.to_row_major(&elements).ok_or_else(|| format!("{key}: a view into a larger storage is not supported"))?;
                let bytes: Vec<u8> = ordered.concat();
                let fixed = TensorData::from_bytes_vec(bytes, data.shape.clone(), data.dtype);
                TensorSnapshot::from_data(fixed, path_stack, Vec::new(), ParamId::new())
            }
            _ => {
                let mut snap = snap;
                snap.path_stack = Some(path_stack);
                snap.container_stack = None;
                snap.tensor_id = None;
                snap
            }
        };
        out.push(snap);
    }
    Ok(out)
}

/// Loads a checkpoint into any module, applying `rules`.
pub fn load_module<B: Backend, M: ModuleSnapshot<B>>(module: &mut M, path: &Path, rules: &Rules, network: &str) -> Result<LoadReport, NnError> {
    let read_err = |message: String| NnError::Read { path: path.to_path_buf(), message };
    if !path.is_file() {
        return Err(read_err("file not found".into()));
    }
    let remapper = KeyRemapper::from_patterns(rules.remaps.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect())
        .map_err(|e| NnError::Invalid(format!("bad remap rule: {e}")))?;
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    let result = match ext.as_str() {
        "safetensors" => {
            let mut store = SafetensorsStore::from_file(path).with_from_adapter(PyTorchToBurnAdapter).remap(remapper).allow_partial(true).validate(false);
            module.load_from(&mut store).map_err(|e| read_err(e.to_string()))?
        }
        "pth" | "pt" | "bin" | "ckpt" => {
            let snapshots = read_pth(path).map_err(read_err)?;
            let (snapshots, _) = remapper.remap(snapshots);
            module.apply(snapshots, None, Some(Box::new(PyTorchToBurnAdapter)), false)
        }
        other => return Err(read_err(format!("unknown weight format '.{other}' (expected .pth, .pt or .safetensors)"))),
    };
    let ignore = compile(&rules.ignore_unused)?;
    let allow_missing = compile(&rules.allow_missing)?;
    // burn-store 0.21 finds a norm layer's `gamma`/`beta` under PyTorch's `weight`/`bias` but
    // still lists those file keys as unused; a key whose Burn counterpart was applied is used.
    let applied: std::collections::HashSet<&str> = result.applied.iter().map(String::as_str).collect();
    let consumed = |k: &str| {
        let alt = |suffix: &str, burn: &str| k.strip_suffix(suffix).is_some_and(|stem| applied.contains(format!("{stem}{burn}").as_str()));
        alt(".weight", ".gamma") || alt(".bias", ".beta")
    };
    let (ignored, unexpected): (Vec<String>, Vec<String>) =
        result.unused.iter().filter(|k| !consumed(k)).cloned().partition(|k| ignore.iter().any(|r| r.is_match(k)));
    let (kept, missing): (Vec<String>, Vec<String>) = result.missing.iter().map(|(k, _)| k.clone()).partition(|k| allow_missing.iter().any(|r| r.is_match(k)));
    if !unexpected.is_empty() || !missing.is_empty() || !result.errors.is_empty() {
        let mut details = String::new();
        for k in &missing {
            details.push_str(&format!("  missing in checkpoint: {k}\n"));
        }
        for k in &unexpected {
            details.push_str(&format!("  unexpected in checkpoint: {k}\n"));
        }
        for e in &result.errors {
            details.push_str(&format!("  {e}\n"));
        }
        return Err(NnError::Mismatch { path: path.to_path_buf(), network: network.to_string(), details });
    }
    Ok(LoadReport { applied: result.applied.len(), ignored, kept_initialised: kept })
}

/// Loads a checkpoint into a [`Network`] of the given kind (its head must have the checkpoint's
/// number of classes; reset it afterwards to fine-tune).
pub fn load_network<B: Backend>(net: Network<B>, kind: BackboneKind, path: &Path) -> Result<(Network<B>, LoadReport), NnError> {
    let rules = rules_for(kind);
    let name = kind.display_name();
    Ok(match net {
        Network::ResNet(mut n) => {
            let r = load_module(&mut n, path, &rules, name)?;
            (Network::ResNet(n), r)
        }
        Network::Vgg16(mut n) => {
            let r = load_module(&mut n, path, &rules, name)?;
            (Network::Vgg16(n), r)
        }
        Network::EfficientNetLite(mut n) => {
            let r = load_module(&mut n, path, &rules, name)?;
            (Network::EfficientNetLite(n), r)
        }
    })
}

/// Finds a file of a model repository in a Hugging Face hub cache folder (the layout the
/// `huggingface_hub` library and `hf-hub` write: `models--<org>--<name>/refs/main` naming a
/// snapshot under `snapshots/<revision>/`). Works offline.
pub fn hub_cached_file(cache_dir: &Path, repo: &str, file: &str) -> Option<PathBuf> {
    hf_hub::Cache::new(cache_dir.to_path_buf()).model(repo.to_string()).get(file)
}

/// Resolves the pretrained weights of `kind`: a hub file in `hub_cache`, or a file in the
/// toolkit's `weights_cache`.
pub fn pretrained_path(kind: BackboneKind, hub_cache: &Path, weights_cache: &Path) -> Result<PathBuf, NnError> {
    match kind.pretrained_source() {
        PretrainedSource::Hub { repo, file } => hub_cached_file(hub_cache, repo, file).ok_or_else(|| NnError::NotCached {
            repo: repo.into(),
            file: file.into(),
            cache: hub_cache.to_path_buf(),
            hint: kind.name().into(),
        }),
        PretrainedSource::Cache { file } => {
            let p = weights_cache.join(file);
            if p.is_file() {
                Ok(p)
            } else {
                Err(NnError::NotCached { repo: "weights cache".into(), file: file.into(), cache: weights_cache.to_path_buf(), hint: kind.name().into() })
            }
        }
    }
}
