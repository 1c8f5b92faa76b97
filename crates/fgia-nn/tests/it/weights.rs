//! Tiny networks with the reference parameter names, loaded from checkpoints written by
//! `tests/fixtures/make_fixtures.py` (PyTorch) in every supported format; their eval-mode
//! outputs must match PyTorch's.

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::prelude::*;
use fgia_nn::weights::{hub_cached_file, load_network, pretrained_path};
use fgia_nn::{BackboneKind, NetworkConfig, NnError};

type B = Flex;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("reference.json")).expect("reference.json")).expect("json")
}

fn input(device: &burn::backend::flex::FlexDevice) -> Tensor<B, 4> {
    let n = 2 * 3 * 48 * 48;
    let v: Vec<f32> = (0..n).map(|k| (2.0 * (0.37 * k as f64).sin()) as f32).collect();
    Tensor::from_data(TensorData::new(v, [2, 3, 48, 48]), device)
}

fn assert_close(got: Tensor<B, 2>, want: &serde_json::Value, what: &str) {
    let got: Vec<f32> = got.into_data().to_vec().expect("f32");
    let want: Vec<f64> = want.as_array().expect("array").iter().map(|v| v.as_f64().expect("number")).collect();
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1.0);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        // Tolerance: 1e-4 of the largest magnitude (float32 accumulation order differs).
        assert!((*g as f64 - w).abs() <= 1e-4 * scale, "{what}[{i}]: got {g}, PyTorch {w}");
    }
}

fn check(kind: BackboneKind, file: &str) {
    let device = Default::default();
    let r = reference();
    let spec = &r["nets"][kind.name()];
    let div = spec["width_div"].as_u64().expect("width_div") as usize;
    let net = NetworkConfig::new(kind).with_num_classes(10).with_width_div(div).init::<B>(&device);
    let (net, report) = load_network(net, kind, &fixture(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    assert!(report.applied > 10, "{file}: only {} tensors applied", report.applied);
    let x = input(&device);
    assert_close(net.embed(x.clone()), &spec["embed"], &format!("{file} embedding"));
    if let Some(logits) = spec.get("logits") {
        assert_close(net.forward(x), logits, &format!("{file} logits"));
    }
}

#[test]
fn resnet18_safetensors_matches_pytorch() {
    check(BackboneKind::ResNet18, "resnet18_tiny.safetensors");
}

#[test]
fn resnet18_legacy_pickle_matches_pytorch() {
    check(BackboneKind::ResNet18, "resnet18_tiny_legacy.pth");
}

#[test]
fn resnet50_zip_pth_matches_pytorch() {
    check(BackboneKind::ResNet50, "resnet50_tiny_zip.pth");
}

#[test]
fn vgg16_timm_and_torchvision_layouts_match_pytorch() {
    check(BackboneKind::Vgg16, "vgg16_tiny_timm.safetensors");
    check(BackboneKind::Vgg16, "vgg16_tiny_tv.pth");
}

#[test]
fn efficientnet_lite0_legacy_pickle_with_same_padding_matches_pytorch() {
    // 48 -> 24 -> 12 -> 6 -> 3 -> 2: the last stride-2 stage pads asymmetrically.
    check(BackboneKind::EfficientNetLite0, "effnet_lite0_tiny_legacy.pth");
}

#[test]
fn mismatched_checkpoints_list_the_offending_keys() {
    let device = Default::default();
    // ResNet-18 weights into a ResNet-50: shape errors, missing conv3/bn3, and so on.
    let net = NetworkConfig::new(BackboneKind::ResNet50).with_num_classes(10).with_width_div(16).init::<B>(&device);
    let err = load_network(net, BackboneKind::ResNet50, &fixture("resnet18_tiny.safetensors")).expect_err("mismatch");
    let msg = err.to_string();
    assert!(matches!(err, NnError::Mismatch { .. }), "{msg}");
    assert!(msg.contains("missing in checkpoint: layer1.0.conv3.weight"), "{msg}");

    // An extra tensor and a dropped one, in an otherwise valid file.
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = std::fs::read(fixture("resnet18_tiny.safetensors")).expect("read");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("parse");
    let mut tensors: Vec<(String, safetensors::tensor::TensorView<'_>)> = st.tensors().into_iter().filter(|(k, _)| k != "layer2.0.bn1.running_var").collect();
    let extra = st.tensor("fc.bias").expect("fc.bias");
    tensors.push(("fc.extra_bias".to_string(), extra));
    let p = dir.path().join("edited.safetensors");
    safetensors::serialize_to_file(tensors, None, &p).expect("write");
    let net = NetworkConfig::new(BackboneKind::ResNet18).with_num_classes(10).with_width_div(16).init::<B>(&device);
    let msg = load_network(net, BackboneKind::ResNet18, &p).expect_err("edited").to_string();
    assert!(msg.contains("missing in checkpoint: layer2.0.bn1.running_var"), "{msg}");
    assert!(msg.contains("unexpected in checkpoint: fc.extra_bias"), "{msg}");
    assert!(msg.contains("edited.safetensors"), "{msg}");

    // Garbage and unknown formats are read errors naming the file.
    let g = dir.path().join("garbage.pth");
    std::fs::write(&g, b"not a checkpoint").expect("write");
    let net = NetworkConfig::new(BackboneKind::ResNet18).with_num_classes(10).with_width_div(16).init::<B>(&device);
    let msg = load_network(net, BackboneKind::ResNet18, &g).expect_err("garbage").to_string();
    assert!(msg.contains("garbage.pth"), "{msg}");
}

/// Lays out a hub cache as `huggingface_hub` does: content-addressed blobs, a ref naming the
/// revision, and a snapshot folder of relative symlinks.
fn make_hub_cache(root: &Path, repo: &str, file: &str, content: &Path) {
    let folder = root.join(format!("models--{}", repo.replace('/', "--")));
    let rev = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(folder.join("blobs")).expect("mkdir");
    std::fs::create_dir_all(folder.join("refs")).expect("mkdir");
    std::fs::create_dir_all(folder.join("snapshots").join(rev)).expect("mkdir");
    std::fs::copy(content, folder.join("blobs/3f0a1c2e")).expect("copy blob");
    std::fs::write(folder.join("refs/main"), rev).expect("ref");
    std::os::unix::fs::symlink("../../blobs/3f0a1c2e", folder.join("snapshots").join(rev).join(file)).expect("symlink");
}

#[test]
fn weights_resolve_offline_from_a_hub_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = dir.path().join("hub");
    make_hub_cache(&hub, "timm/resnet18.tv_in1k", "model.safetensors", &fixture("resnet18_tiny.safetensors"));
    let p = hub_cached_file(&hub, "timm/resnet18.tv_in1k", "model.safetensors").expect("found in cache");
    assert!(p.ends_with("model.safetensors"));
    let resolved = pretrained_path(BackboneKind::ResNet18, &hub, &dir.path().join("weights")).expect("resolves");
    let device = Default::default();
    let net = NetworkConfig::new(BackboneKind::ResNet18).with_num_classes(10).with_width_div(16).init::<B>(&device);
    let (net, _) = load_network(net, BackboneKind::ResNet18, &resolved).expect("loads through the symlink");
    assert_close(net.embed(input(&device)), &reference()["nets"]["resnet18"]["embed"], "hub-loaded embedding");
    // A repository that is not cached is a clear error naming the fetch command.
    let msg = pretrained_path(BackboneKind::ResNet50, &hub, &dir.path().join("weights")).expect_err("absent").to_string();
    assert!(msg.contains("timm/resnet50.tv_in1k") && msg.contains("cargo xtask weights fetch resnet50"), "{msg}");
}
