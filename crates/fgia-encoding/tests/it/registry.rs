//! Every registered method, built at a tiny size on a small random-weight ResNet-18: one training
//! step per optimiser step of the method (forward and backward), with the shapes checked,
//! the loss finite, gradients non-zero and finite, the fine-tuned stage receiving gradients,
//! and the test-time scores finite.

use std::collections::BTreeMap;

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use fgia_core::rng::SplitMix64;
use fgia_encoding::Method;
use fgia_encoding::methods::dcl::region_permutation;
use fgia_encoding::methods::{Head, HeadSpec, HeadVisitor, Inputs, build_head};
use fgia_encoding::recipe::Params;
use fgia_nn::{BackboneKind, Network, NetworkConfig};

use super::B;

const CLASSES: usize = 4;
const N: usize = 8;
const SIDE: usize = 64;

fn tiny_net() -> Network<B> {
    NetworkConfig::new(BackboneKind::ResNet18).with_width_div(8).init::<B>(&Default::default())
}

/// Maps of stages `taps` for `n` random images, through the tiny network.
fn maps(net: &Network<B>, seed: u64) -> Vec<Tensor<B, 4>> {
    let dev = Default::default();
    let mut g = SplitMix64::new(seed);
    let px: Vec<f32> = (0..N * 3 * SIDE * SIDE).map(|_| g.next_f64() as f32 * 2.0 - 1.0).collect();
    let mut x = Tensor::<B, 4>::from_data(TensorData::new(px, [N, 3, SIDE, SIDE]), &dev);
    let mut out = Vec::new();
    for s in 0..net.num_stages() {
        x = net.forward_stage(s, x).detach();
        out.push(x.clone());
    }
    out
}

struct OneStep {
    method: Method,
    inputs: Inputs<B>,
}

impl HeadVisitor<B> for OneStep {
    type Output = ();

    fn visit<M>(self, head: M)
    where
        M: Head<B> + AutodiffModule<B>,
        M::InnerModule: Head<<B as AutodiffBackend>::InnerBackend>,
    {
        let m = self.method;
        let mut backbone_steps = 0;
        for step in 0..head.steps() {
            let out = head.loss(&self.inputs, step);
            assert_eq!(out.logits.dims(), [N, CLASSES], "{m}: training scores, step {step}");
            let value: f32 = out.loss.clone().into_scalar();
            assert!(value.is_finite(), "{m}: loss {value} at step {step}");
            let mut raw = out.loss.backward();
            if let Some(bb) = head.backbone() {
                // PMG's first two steps train heads on frozen maps; its later ones reach the stage.
                backbone_steps += usize::from(!GradientsParams::from_module(&mut raw, bb).is_empty());
            }
            let grads = GradientsParams::from_grads(raw, &head);
            let norm = fgia_train::clip::global_grad_norm(&head, &grads);
            assert!(norm.is_finite() && norm > 0.0, "{m}: gradient norm {norm} at step {step}");
        }
        assert_eq!(head.backbone().is_some(), backbone_steps > 0, "{m}: the fine-tuned stage gets gradients in {backbone_steps} steps");
        assert_eq!(head.backbone().is_some(), m.fine_tunes_last_stage(), "{m}: registry and head agree on fine-tuning");
        let valid = head.valid();
        let inner_inputs = Inputs::<<B as AutodiffBackend>::InnerBackend> {
            labels: self.inputs.labels.clone(),
            taps: self.inputs.taps.iter().map(|(s, t)| (*s, t.clone().inner())).collect(),
            edited: Vec::new(),
            permutations: Vec::new(),
            seed: 0,
        };
        let scores = valid.logits(&inner_inputs);
        assert_eq!(scores.dims(), [N, CLASSES], "{m}: test scores");
        let v: Vec<f32> = scores.into_data().to_vec().expect("f32");
        assert!(v.iter().all(|x| x.is_finite()), "{m}: non-finite test scores");
    }
}

/// Small sizes for the tiny network (64 px input: stages 2, 3, 4 are 8x8, 4x4, 2x2).
fn tiny_params(method: Method) -> Params {
    let small: &[(&str, f64)] = match method {
        Method::CbpTs | Method::CbpRm | Method::Hbp => &[("dim", 64.0)],
        Method::KernelPooling => &[("dim", 64.0)],
        Method::Lrbp => &[("reduced", 8.0)],
        Method::MpnCov | Method::IsqrtCov => &[("reduced", 8.0)],
        Method::GroupedBilinear => &[("groups", 2.0), ("group_channels", 4.0)],
        Method::Pmg => &[("width", 8.0)],
        Method::Dcl => &[("regions", 2.0), ("k", 1.0)],
        Method::GbLoss => &[("k", 2.0)],
        _ => &[],
    };
    let overrides: BTreeMap<String, f64> = small.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    Params::resolve(method, &overrides).expect("valid")
}

#[test]
fn every_method_trains_one_step_with_finite_values_and_gradients() {
    let dev = Default::default();
    let net = tiny_net();
    let orig = maps(&net, 1);
    let edited_maps = maps(&net, 2);
    let channels: Vec<usize> = orig.iter().map(|t| t.dims()[1]).collect();
    let f = 4;
    let labels: Vec<usize> = (0..N).map(|i| i / 2).collect();
    let hbp_stages = [2, 3, 4];
    for method in Method::ALL {
        let params = tiny_params(method);
        let taps: BTreeMap<usize, Tensor<B, 4>> = method.taps(f, &hbp_stages).into_iter().map(|s| (s, orig[s].clone())).collect();
        let edits = method.edits(f, &params);
        let edited: Vec<BTreeMap<usize, Tensor<B, 4>>> = edits.iter().map(|(_, st)| st.iter().map(|&s| (s, edited_maps[s].clone())).collect()).collect();
        let permutations = if method == Method::Dcl { (0..N).map(|i| region_permutation(2, 1, &mut SplitMix64::new(i as u64))).collect() } else { Vec::new() };
        let inputs = Inputs { labels: labels.clone(), taps, edited, permutations, seed: 7 };
        let spec = HeadSpec { feature_stage: f, channels: &channels, classes: CLASSES, params: &params, hbp_stages: &hbp_stages, seed: 3, rbf_gamma: 0.1 };
        build_head(method, &spec, tiny_net, &dev, OneStep { method, inputs });
    }
}

#[test]
fn registry_names_round_trip_and_families_follow_the_survey() {
    for m in Method::ALL {
        assert_eq!(m.name().parse::<Method>().expect("known"), m);
        assert!(m.family().section().starts_with("5.2."));
    }
    assert!("bilinear".parse::<Method>().is_err());
}

#[test]
fn every_table2_recipe_is_valid_and_names_a_registered_method() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes/table2");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("recipes/table2") {
        let path = entry.expect("entry").path();
        let mut v: toml::Value = toml::from_str(&std::fs::read_to_string(&path).expect("read")).expect("TOML");
        // The §5.1 recipes belong to fgia-localization, which checks them.
        if v.get("method").and_then(|m| m.get("family")).and_then(|f| f.as_str()) == Some("localization") {
            continue;
        }
        // The [smoke] table is read by xtask, not by the CLI.
        v.as_table_mut().expect("table").remove("smoke");
        let r = fgia_encoding::EncodingRecipe::parse(&toml::to_string(&v).expect("serialise")).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(path.file_stem().and_then(|s| s.to_str()), Some(r.method.name.name()), "file named after its method");
        assert_eq!(r.report.table, "table2");
        assert_eq!(r.model.mode, fgia_core::record::FeatureMode::EndToEnd, "{}: the full profile fine-tunes every layer", path.display());
        seen.push(r.method.name);
    }
    for m in Method::ALL {
        assert!(seen.contains(&m), "{m} has no recipe");
    }
}

#[test]
fn bad_recipes_are_rejected_with_the_reason() {
    let base = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes/table2/cbp-ts.toml")).expect("read");
    let mut v: toml::Value = toml::from_str(&base).expect("TOML");
    v.as_table_mut().expect("table").remove("smoke");
    let with = |section: &str, sub: Option<&str>, key: &str, value: toml::Value| {
        let mut w = v.clone();
        let mut t = w.get_mut(section).and_then(toml::Value::as_table_mut).expect("section");
        if let Some(sub) = sub {
            t = t.get_mut(sub).and_then(toml::Value::as_table_mut).expect("sub-table");
        }
        t.insert(key.into(), value);
        fgia_encoding::EncodingRecipe::parse(&toml::to_string(&w).expect("serialise")).expect_err("rejected")
    };
    assert!(with("method", Some("params"), "dim", 1000.into()).contains("power of two"));
    assert!(with("method", Some("params"), "size", 4.into()).contains("'size' is not a parameter"));
    assert!(with("model", None, "feature_stage", 9.into()).contains("feature_stage"));
    assert!(with("train", None, "lr", (-1.0).into()).contains("lr"));
}

#[test]
fn every_recipe_and_its_method_file_name_each_other() {
    let crate_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for m in Method::ALL {
        let recipe_rel = format!("recipes/table2/{}.toml", m.name());
        let recipe = std::fs::read_to_string(crate_dir.join("../..").join(&recipe_rel)).expect("recipe");
        let file_rel = format!("crates/fgia-encoding/src/{}", m.source_file());
        assert!(recipe.contains(&format!("# Method file: {file_rel}")), "{recipe_rel} does not name {file_rel}");
        let source = std::fs::read_to_string(crate_dir.join("src").join(m.source_file())).expect("method file");
        assert!(source.starts_with("//!"), "{file_rel}: header first");
        assert!(source.contains(&format!("Recipe: `{recipe_rel}`")), "{file_rel} does not name {recipe_rel}");
    }
}

/// End-to-end mode: B-CNN and DCL on a live backbone (pixels in) give gradients to every
/// backbone stage they read, in the `backbone` parameter group, and to their own layers.
#[test]
fn end_to_end_methods_send_gradients_into_the_live_backbone() {
    use fgia_encoding::run::{Encoder, EncodingInput, TapPlan};
    use fgia_train::engine::TrainMethod;

    let dev = Default::default();
    let f = 4;
    let hbp_stages = [2, 3, 4];
    for method in [Method::Bcnn, Method::Dcl] {
        let params = tiny_params(method);
        let channels: Vec<usize> = maps(&tiny_net(), 1).iter().map(|t| t.dims()[1]).collect();
        let spec = HeadSpec { feature_stage: f, channels: &channels, classes: CLASSES, params: &params, hbp_stages: &hbp_stages, seed: 3, rbf_gamma: 0.1 };
        struct Check {
            method: Method,
            f: usize,
            params: Params,
        }
        impl HeadVisitor<B> for Check {
            type Output = ();
            fn visit<M>(self, head: M)
            where
                M: Head<B> + AutodiffModule<B>,
                M::InnerModule: Head<<B as AutodiffBackend>::InnerBackend>,
            {
                let m = self.method;
                let edits = m.edits(self.f, &self.params);
                let plan = TapPlan { taps: m.taps(self.f, &[2, 3, 4]), edited: edits.iter().map(|(_, t)| t.clone()).collect() };
                let live = tiny_net();
                let model = Encoder { live: Some(live), head, plan, backbone_lr_mult: 0.1 };
                let dev = Default::default();
                let mut g = SplitMix64::new(5);
                let mut px = || -> Tensor<B, 4> {
                    let v: Vec<f32> = (0..N * 3 * SIDE * SIDE).map(|_| g.next_f64() as f32 * 2.0 - 1.0).collect();
                    Tensor::from_data(TensorData::new(v, [N, 3, SIDE, SIDE]), &dev)
                };
                let permutations =
                    if m == Method::Dcl { (0..N).map(|i| region_permutation(2, 1, &mut SplitMix64::new(i as u64))).collect() } else { Vec::new() };
                let input = EncodingInput::Live {
                    pixels: px(),
                    edited: edits.iter().map(|_| px()).collect(),
                    labels: (0..N).map(|i| i / 2).collect(),
                    permutations,
                    seed: 1,
                };
                let out = model.loss(&input, 0);
                let groups = model.param_groups(out.loss.backward());
                let norm = |name: &str| {
                    let g = groups.iter().find(|g| g.name == name).expect("group");
                    fgia_train::clip::global_grad_norm(&model, &g.grads)
                };
                assert!(norm("backbone") > 0.0 && norm("backbone").is_finite(), "{m}: the live backbone gets gradients");
                assert!(norm("method") > 0.0 && norm("method").is_finite(), "{m}: the method's layers get gradients");
                assert_eq!(groups.iter().find(|g| g.name == "backbone").map(|g| g.lr_mult), Some(0.1));
            }
        }
        build_head(method, &spec, tiny_net, &dev, Check { method, f, params: params.clone() });
    }
}
