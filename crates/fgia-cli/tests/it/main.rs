//! End-to-end tests of the `fgia` binary: train (with a kill and --resume), eval, predict,
//! embed and info, on a generated CUB-format dataset and a tiny network.

use std::path::Path;
use std::process::{Command, Output};

fn fgia(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fgia")).args(args).output().expect("fgia runs")
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "fgia failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// 3 classes of 36x36 images, 4 train and 2 test each.
fn tiny_cub(root: &Path) {
    fgia_core::testing::write_tiny_cub(root, 3, 4, 2, 36);
}

const RECIPE: &str = r#"
[report]
table = "table4"
method = "tiny"
dataset = "CUB-200-2011"
paper_resolution = 224

[model]
backbone = "efficientnet-lite0"
pretrained = false
width_div = 8

[data]
format = "cub"
resize = 36
crop = 32

[train]
epochs = 2
batch_size = 6
lr = 0.05
head_lr = 0.05
schedule = "step"
milestones = [1]
seed = 1
"#;

#[test]
fn train_resume_eval_predict_embed_info() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("cub");
    tiny_cub(&data);
    let recipe = dir.path().join("tiny.toml");
    std::fs::write(&recipe, RECIPE).expect("recipe");
    let run = dir.path().join("run");
    let (run_s, data_s, recipe_s) = (run.to_str().expect("utf8"), data.to_str().expect("utf8"), recipe.to_str().expect("utf8"));
    let result = dir.path().join("results/tiny.json");

    let out = ok(&fgia(&["train", "--recipe", recipe_s, "--run-dir", run_s, "--data-root", data_s, "--quiet", "--result", result.to_str().expect("utf8")]));
    assert!(out.contains("top-1"), "{out}");
    let record = fgia_core::record::ResultRecord::read(&result).expect("result copied");
    assert_eq!(record.paper_resolution, Some(224));
    assert_eq!(record.metrics["test_images"], 6.0);

    // Training into an existing run folder is refused; --resume of a finished run re-evaluates.
    let again = fgia(&["train", "--recipe", recipe_s, "--run-dir", run_s, "--data-root", data_s, "--quiet"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("never overwritten"));

    let eval = ok(&fgia(&["eval", "--run-dir", run_s, "--data-root", data_s, "--tta", "flip"]));
    let v: serde_json::Value = serde_json::from_str(&eval).expect("eval prints JSON");
    assert_eq!(v["epoch"], 2);
    assert_eq!(v["images"], 6);

    let img = data.join("images/001.class1/img1.png");
    let pred = ok(&fgia(&["predict", "--run-dir", run_s, "--top", "3", img.to_str().expect("utf8")]));
    assert_eq!(pred.lines().count(), 4, "{pred}");
    assert!(pred.contains("class"), "{pred}");

    let npy = dir.path().join("emb.npy");
    ok(&fgia(&["embed", "--run-dir", run_s, "--format", "cub", "--data-root", data_s, "--split", "all", "--resolution", "32", "--out", npy.to_str().expect("utf8")]));
    let bytes = std::fs::read(&npy).expect("npy");
    assert!(String::from_utf8_lossy(&bytes[..80]).contains("'shape': (18, 160)"));
    let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(npy.with_extension("json")).expect("index")).expect("json");
    assert_eq!(index["labels"].as_array().expect("labels").len(), 18);

    let info = ok(&fgia(&["info", "--backbone", "resnet50", "--resolution", "224"]));
    assert!(info.contains("25557032") && info.contains("4.089 GMACs"), "{info}");

    let bad = fgia(&["--device", "cuda", "info", "--backbone", "resnet18"]);
    if !cfg!(feature = "cuda") {
        assert!(String::from_utf8_lossy(&bad.stderr).contains("without CUDA"));
    }
}

#[test]
fn a_bad_recipe_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let recipe = dir.path().join("bad.toml");
    std::fs::write(&recipe, RECIPE.replace("epochs = 2", "epochs = 0")).expect("write");
    let out = fgia(&["train", "--recipe", recipe.to_str().expect("utf8"), "--run-dir", dir.path().join("r").to_str().expect("utf8"), "--quiet"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml") && err.contains("epochs"), "{err}");
}
