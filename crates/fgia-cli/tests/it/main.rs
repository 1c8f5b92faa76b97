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
schedule = "multi-step"
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
    ok(&fgia(&[
        "embed",
        "--run-dir",
        run_s,
        "--format",
        "cub",
        "--data-root",
        data_s,
        "--split",
        "all",
        "--resolution",
        "32",
        "--out",
        npy.to_str().expect("utf8"),
    ]));
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
fn two_cpu_replicas_train_data_parallel_and_the_record_says_how() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("cub");
    tiny_cub(&data);
    let recipe = dir.path().join("tiny.toml");
    std::fs::write(&recipe, RECIPE).expect("recipe");
    let result = dir.path().join("dp.json");
    let (run, data_s, recipe_s) = (dir.path().join("run"), data.to_str().expect("utf8"), recipe.to_str().expect("utf8"));
    let args =
        ["train", "--recipe", recipe_s, "--run-dir", run.to_str().expect("utf8"), "--data-root", data_s, "--quiet", "--result", result.to_str().expect("utf8")];
    ok(&fgia(&[&["--devices", "cpu,cpu"][..], &args[..]].concat()));
    let record = fgia_core::record::ResultRecord::read(&result).expect("record");
    let dp = record.protocol.data_parallel.clone().unwrap_or_default();
    assert!(dp.contains("2 replicas (cpu, cpu)") && dp.contains("batch-norm statistics per replica"), "{dp}");
    assert!(record.device.contains("2 replicas"), "{}", record.device);
    assert!(record.metrics["top1"].is_finite());
    // The same run again repeats exactly, epoch for epoch (whatever the threads' timing).
    let run2 = dir.path().join("run2");
    let again = ["train", "--recipe", recipe_s, "--run-dir", run2.to_str().expect("utf8"), "--data-root", data_s, "--quiet"];
    ok(&fgia(&[&["--devices", "cpu,cpu"][..], &again[..]].concat()));
    let losses =
        |run: &Path| -> Vec<(f64, f64)> { fgia_core::record::read_metrics(run).expect("metrics").iter().map(|e| (e.train_loss, e.train_top1)).collect() };
    assert_eq!(losses(&run), losses(&run2));
    // A device list of another kind than --device is refused before any work.
    let bad = fgia(&["--devices", "cuda:0,cuda:1", "info", "--backbone", "resnet18"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("is not a cpu device"), "{}", String::from_utf8_lossy(&bad.stderr));
}

#[test]
fn check_device_compares_every_backbone_and_operator_with_the_cpu_and_times_a_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("env.json");
    ok(&fgia(&["check-device", "--quick", "--out", out.to_str().expect("utf8")]));
    let r: fgia_core::record::EnvironmentReport = serde_json::from_str(&std::fs::read_to_string(&out).expect("report")).expect("parses");
    assert!(r.quick && r.device.starts_with("cpu"));
    let names: Vec<&str> = r.checks.iter().map(|c| c.name.as_str()).collect();
    for n in
        ["resnet50", "vgg16", "efficientnet-lite0", "bcnn", "hbp", "isqrt-cov", "mpn-cov", "grouped-bilinear", "compact-bilinear-rm", "kernel-pooling", "lrbp"]
    {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    // The CPU against itself, with the weights moved through their records: exactly equal, so
    // the transfer carries every parameter.
    for c in &r.checks {
        assert!(c.pass && c.forward_rel == 0.0 && c.backward_rel == 0.0, "{c:?}");
    }
    assert_eq!(r.timings.len(), 5);
    assert!(r.timings.iter().all(|t| t.median_ms > 0.0 && t.images_per_s > 0.0));
}

/// Plays `fgia ask` over pipes as a user who has a bird of class `class` in mind and answers
/// each question with the majority answer of that class's annotators; returns the final line.
fn play_ask(root: &Path, class: usize, percent: &[Vec<f32>]) -> String {
    use std::io::{Read, Write};
    let mut child = Command::new(env!("CARGO_BIN_EXE_fgia"))
        .args(["ask", "--data-root", root.to_str().expect("utf8"), "--questions", "20"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("fgia ask");
    let (mut stdin, mut stdout) = (child.stdin.take().expect("stdin"), child.stdout.take().expect("stdout"));
    let mut seen = String::new();
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte).expect("read") == 1 {
        seen.push(byte[0] as char);
        if seen.ends_with("[y/n/s/q] ") {
            let q = seen.rsplit("(attribute ").next().and_then(|r| r.split(',').next()).and_then(|n| n.parse::<usize>().ok()).expect("attribute number");
            let yes = percent[class][q - 1] > 50.0;
            stdin.write_all(if yes { b"y\n" } else { b"n\n" }).expect("answer");
        }
    }
    assert!(child.wait().expect("exit").success(), "{seen}");
    assert!(seen.matches("[y/n/s/q]").count() >= 3, "{seen}");
    // After each answer, the current top-5 (over pipes the answer is not echoed, so it follows
    // the prompt on the same line).
    let now: Vec<&str> = seen.split("  now: ").skip(1).map(|s| s.lines().next().unwrap_or_default()).collect();
    assert!(now.len() >= 3 && now.iter().all(|l| l.matches('%').count() == 5), "{seen}");
    seen.lines().last().unwrap_or_default().to_string()
}

#[test]
fn ask_plays_twenty_questions_and_finds_the_bird_a_truthful_user_has_in_mind() {
    let Some(shared) = fgia_core::datasets::shared_data_dir(Path::new(env!("CARGO_MANIFEST_DIR")).parent().and_then(Path::parent).expect("ws")) else {
        assert!(std::env::var("FGIA_REQUIRE_DATA").is_err(), "FGIA_REQUIRE_DATA is set but there is no shared data");
        eprintln!("skipped: no shared data");
        return;
    };
    let root = shared.join("cub-mini");
    let ds = fgia_core::datasets::read_cub(&root, Default::default()).expect("cub-mini");
    let attrs = fgia_core::datasets::read_class_attributes(&root, ds.classes.names.len()).expect("attributes");
    let mut found = 0;
    for class in [0, 13, 28, 39] {
        let last = play_ask(&root, class, &attrs.percent);
        assert!(last.starts_with("Answer after "), "{last}");
        found += usize::from(last.contains(&ds.classes.names[class]));
        eprintln!("class {}: {last}", ds.classes.names[class]);
    }
    assert!(found >= 3, "{found} of 4 birds found");
    // Closed input ends the game cleanly.
    let out = Command::new(env!("CARGO_BIN_EXE_fgia"))
        .args(["ask", "--data-root", root.to_str().expect("utf8")])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("runs");
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("(end of input)"));
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

/// The real EfficientNet-Lite0 weights (fetched by `cargo xtask weights fetch efficientnet-lite0`;
/// CI does), or `None` after reporting the skip.
fn lite0_weights(test: &str) -> Option<std::path::PathBuf> {
    let p = fgia_core::paths::weights_dir().join("efficientnet-lite0-57934424.pth");
    if p.is_file() {
        Some(p)
    } else {
        fgia_core::testing::skip(test, "EfficientNet-Lite0 weights not fetched (cargo xtask weights fetch efficientnet-lite0)");
        None
    }
}

fn retrieval_recipe(method: &str) -> String {
    format!(
        r#"
[method]
name = "{method}"
[model]
backbone = "efficientnet-lite0"
embedding_dim = 32
[data]
format = "cub"
resize = 64
crop = 64
[train]
epochs = 3
classes_per_batch = 2
images_per_class = 3
lr = 1e-3
class_weight_lr_mult = 10.0
weight_decay = 1e-4
seed = 0
views = 2
[eval]
distance = "cosine"
ks = [1, 2, 4, 8]
pca_whiten = 8
rerank = "none"
also_reranked = true
qe_k = 2
k_reciprocal = {{ k1 = 4, k2 = 2, lambda = 0.3 }}
[report]
table = "table5"
method = "{method}"
dataset = "CUB-200-2011"
"#
    )
}

/// `fgia retrieval` end to end on a generated CUB (4 train and 4 test classes): SCDA and two
/// trained methods share one process (and the cached maps), write records with every metric,
/// and a second call skips them.
#[test]
fn retrieval_runs_scda_and_trained_methods() {
    let Some(weights) = lite0_weights("retrieval_runs_scda_and_trained_methods") else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("cub");
    fgia_core::testing::write_tiny_cub(&data, 8, 4, 2, 72);
    let mut args: Vec<String> = vec!["retrieval".into(), "--quiet".into(), "--weights".into(), weights.display().to_string()];
    for m in ["scda", "proxy-anchor", "crl-wsl"] {
        let p = dir.path().join(format!("tiny-{m}.toml"));
        std::fs::write(&p, retrieval_recipe(m)).expect("recipe");
        args.extend(["--recipe".into(), p.display().to_string()]);
    }
    let (runs, results) = (dir.path().join("runs"), dir.path().join("results"));
    args.extend(["--runs-dir".into(), runs.display().to_string(), "--results-dir".into(), results.display().to_string()]);
    args.extend(["--data-root".into(), data.display().to_string(), "--skip-existing".into()]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ok(&fgia(&argv));
    for m in ["scda", "proxy-anchor", "crl-wsl"] {
        let r = fgia_core::record::ResultRecord::read(&results.join(format!("tiny-{m}.json"))).expect("record");
        assert_eq!(r.table, "table5");
        assert_eq!(r.metrics["test_images"], 24.0, "{m}: classes 5-8, 6 images each");
        for k in ["recall@1", "recall@2", "recall@4", "recall@8", "map", "qe/recall@1", "kr/recall@1", "random/recall@1"] {
            let v = r.metrics[k];
            assert!(v.is_finite() && (0.0..=100.0).contains(&v), "{m}: {k} = {v}");
        }
        // Recall@K grows with K; the colour-coded classes are easy, far above chance.
        assert!(r.metrics["recall@1"] <= r.metrics["recall@8"]);
        assert!(r.metrics["recall@1"] > 2.0 * r.metrics["random/recall@1"], "{m}: {:?}", r.metrics);
        assert_eq!(r.metrics["embedding_dim"], 8.0, "{m}: PCA-whitened to 8 dimensions");
        assert!(r.protocol.split.contains("class-disjoint"), "{}", r.protocol.split);
    }
    assert!(fgia_core::record::read_metrics(&runs.join("tiny-proxy-anchor")).expect("metrics").len() == 3);
    let again = ok(&fgia(&argv));
    assert_eq!(again.matches("skipped").count(), 3, "{again}");
    assert!(out.contains("R@1"), "{out}");
}

/// `fgia retrieval` in end-to-end mode: pixels through the live backbone, every layer trained;
/// its record differs from the frozen run's in the mode, the trained layers and the numbers,
/// and carries no frozen-backbone deviation.
#[test]
fn retrieval_end_to_end_trains_the_backbone() {
    let Some(weights) = lite0_weights("retrieval_end_to_end_trains_the_backbone") else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("cub");
    fgia_core::testing::write_tiny_cub(&data, 8, 4, 2, 72);
    let (runs, results) = (dir.path().join("runs"), dir.path().join("results"));
    let mut args: Vec<String> = vec!["retrieval".into(), "--quiet".into(), "--weights".into(), weights.display().to_string()];
    for (name, mode) in [("frozen", "frozen"), ("e2e", "end-to-end")] {
        let recipe = retrieval_recipe("triplet")
            .replace("embedding_dim = 32", &format!("embedding_dim = 32\nmode = \"{mode}\""))
            .replace("weight_decay = 1e-4", "weight_decay = 1e-4\nbackbone_lr_mult = 0.1\nlr_schedule = { decay = \"step\", step_size = 2, gamma = 0.5 }");
        let p = dir.path().join(format!("{name}.toml"));
        std::fs::write(&p, recipe).expect("recipe");
        args.extend(["--recipe".into(), p.display().to_string()]);
    }
    args.extend(["--runs-dir".into(), runs.display().to_string(), "--results-dir".into(), results.display().to_string()]);
    args.extend(["--data-root".into(), data.display().to_string()]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&fgia(&argv));
    let frozen = fgia_core::record::ResultRecord::read(&results.join("frozen.json")).expect("frozen record");
    let e2e = fgia_core::record::ResultRecord::read(&results.join("e2e.json")).expect("end-to-end record");
    assert_eq!(frozen.protocol.mode, fgia_core::record::FeatureMode::Frozen);
    assert_eq!(e2e.protocol.mode, fgia_core::record::FeatureMode::EndToEnd);
    assert!(e2e.protocol.trained_layers.starts_with("every layer"), "{}", e2e.protocol.trained_layers);
    assert!(e2e.protocol.optimizer.contains("backbone at 0.1x lr") && e2e.protocol.optimizer.contains("x0.5 every 2 epochs"), "{}", e2e.protocol.optimizer);
    assert!(frozen.deviations.iter().any(|d| d.contains("backbone frozen")), "{:?}", frozen.deviations);
    assert!(!e2e.deviations.iter().any(|d| d.contains("frozen")), "{:?}", e2e.deviations);
    assert_eq!(frozen.metrics.keys().collect::<Vec<_>>(), e2e.metrics.keys().collect::<Vec<_>>());
    assert_ne!(frozen.metrics["map"], e2e.metrics["map"], "training the backbone changes the embedding");
    assert!(e2e.metrics["recall@1"] > 2.0 * e2e.metrics["random/recall@1"], "{:?}", e2e.metrics);
    assert_eq!(fgia_core::record::read_metrics(&runs.join("e2e")).expect("metrics").len(), 3);
}

/// `fgia index` on a folder with one unreadable image (reported and counted), `fgia query`
/// printing the top-K and writing an HTML page, exact and HNSW indexes agreeing, and a
/// corrupted index file giving a clear error.
#[test]
fn index_and_query_a_folder() {
    let Some(weights) = lite0_weights("index_and_query_a_folder") else { return };
    let w = weights.display().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("cub");
    fgia_core::testing::write_tiny_cub(&data, 3, 3, 0, 72);
    let images = data.join("images");
    std::fs::write(images.join("001.class1").join("broken.jpg"), b"\xff\xd8\xff not really a jpeg").expect("write");
    let query = images.join("002.class2").join("img5.png");
    for hnsw in [false, true] {
        let index = dir.path().join(format!("gallery-{hnsw}.fgiaidx"));
        let mut args = vec!["index", "--images", images.to_str().expect("utf8"), "--out", index.to_str().expect("utf8"), "--resolution", "64", "--weights", &w];
        if hnsw {
            args.push("--hnsw");
        }
        let out = fgia(&args);
        let text = ok(&out);
        assert!(text.contains("indexed 9 images (1 skipped"), "{text}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("broken.jpg"), "the unreadable file is named");
        let html = dir.path().join(format!("q-{hnsw}.html"));
        let q = ok(&fgia(&[
            "query",
            "--index",
            index.to_str().expect("utf8"),
            "--top",
            "3",
            "--html",
            html.to_str().expect("utf8"),
            "--weights",
            &w,
            query.to_str().expect("utf8"),
        ]));
        let first = q.lines().nth(1).expect("a result line");
        assert!(first.contains("img5.png") && first.contains("0.0000"), "the query image finds itself first: {q}");
        let page = std::fs::read_to_string(&html).expect("page");
        assert_eq!(page.matches("<figure").count(), 4, "query and 3 results");
        assert!(dir.path().join(format!("q-{hnsw}_files/000.png")).is_file());
    }
    let bad = dir.path().join("gallery-true.fgiaidx");
    let mut bytes = std::fs::read(&bad).expect("index");
    bytes.truncate(bytes.len() - 100);
    std::fs::write(&bad, bytes).expect("write");
    let out = fgia(&["query", "--index", bad.to_str().expect("utf8"), "--weights", &w, query.to_str().expect("utf8")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gallery-true.fgiaidx") && (err.contains("checksum") || err.contains("truncated")), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

fn encoding_recipe(method: &str, params: &str) -> String {
    format!(
        r#"
[method]
name = "{method}"
params = {{ {params} }}
[model]
backbone = "efficientnet-lite0"
feature_stage = 7
[data]
format = "cub"
resize = 64
crop = 64
[train]
epochs = 4
batch_size = 8
lr = {lr}
weight_decay = 1e-4
seed = 0
views = 2
edited_views = 1
[report]
table = "table2"
method = "{method}"
dataset = "CUB-200-2011"
"#,
        lr = if method == "bcnn" { 1.0 } else { 0.05 }
    )
}

/// `fgia encoding` end to end on a generated CUB (4 classes): a pooling method, DCL (destructed
/// views, fine-tuned last stage) and PMG (jigsaw views, four steps per batch) share one process,
/// write records, beat chance, and a second call skips them; a bad recipe is an error naming it.
#[test]
fn encoding_runs_pooling_dcl_and_pmg() {
    let Some(weights) = lite0_weights("encoding_runs_pooling_dcl_and_pmg") else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("cub");
    fgia_core::testing::write_tiny_cub(&data, 4, 6, 3, 72);
    let mut args: Vec<String> = vec!["encoding".into(), "--quiet".into(), "--weights".into(), weights.display().to_string()];
    let methods = [("bcnn", ""), ("dcl", "regions = 2, k = 1"), ("pmg", "width = 16")];
    for (m, p) in methods {
        let path = dir.path().join(format!("tiny-{m}.toml"));
        std::fs::write(&path, encoding_recipe(m, p)).expect("recipe");
        args.extend(["--recipe".into(), path.display().to_string()]);
    }
    let (runs, results) = (dir.path().join("runs"), dir.path().join("results"));
    args.extend(["--runs-dir".into(), runs.display().to_string(), "--results-dir".into(), results.display().to_string()]);
    args.extend(["--data-root".into(), data.display().to_string(), "--skip-existing".into()]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ok(&fgia(&argv));
    for (m, _) in methods {
        let r = fgia_core::record::ResultRecord::read(&results.join(format!("tiny-{m}.json"))).expect("record");
        assert_eq!(r.table, "table2");
        assert_eq!(r.metrics["test_images"], 12.0, "{m}");
        assert_eq!(r.metrics["chance"], 25.0);
        assert!(r.metrics["top1"] > 25.0, "{m}: {:?}", r.metrics);
        assert_eq!(r.protocol.epochs, 4);
        assert!(r.deviations.iter().any(|d| d.contains("frozen")), "{m}: {:?}", r.deviations);
        assert_eq!(fgia_core::record::read_metrics(&runs.join(format!("tiny-{m}"))).expect("metrics").len(), 4);
    }
    let dcl = fgia_core::record::ResultRecord::read(&results.join("tiny-dcl.json")).expect("record");
    assert!(dcl.protocol.trained_layers.contains("stage 7"), "{}", dcl.protocol.trained_layers);
    assert!(out.contains("top-1"), "{out}");
    let again = ok(&fgia(&argv));
    assert_eq!(again.matches("skipped").count(), 3, "{again}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, encoding_recipe("dcl", "regions = 5")).expect("recipe");
    let o = fgia(&["encoding", "--recipe", bad.to_str().expect("utf8"), "--runs-dir", "x", "--results-dir", results.to_str().expect("utf8")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("bad.toml") && err.contains("regions"), "{err}");

    // DCL's regions against the map size (64 px gives a 2x2 map at stage 7): a clear error
    // naming the recipe, not a panic in the pooling kernel.
    let small = dir.path().join("small-map.toml");
    std::fs::write(&small, encoding_recipe("dcl", "regions = 4, k = 1")).expect("recipe");
    let w = weights.display().to_string();
    let o = fgia(&[
        "encoding",
        "--quiet",
        "--weights",
        &w,
        "--data-root",
        data.to_str().expect("utf8"),
        "--recipe",
        small.to_str().expect("utf8"),
        "--runs-dir",
        dir.path().join("small-runs").to_str().expect("utf8"),
        "--results-dir",
        results.to_str().expect("utf8"),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("regions = 4 needs a feature map") && err.contains("recipe.toml"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// The encoding recipe in end-to-end mode: pixels through the whole backbone, every layer
/// trained.
fn end_to_end_recipe(method: &str, params: &str, epochs: usize) -> String {
    // The whole network learns: the method's layers at the recipe's rate, the backbone at a
    // hundredth of it (B-CNN: 1.0 and 0.01).
    encoding_recipe(method, params)
        .replace("feature_stage = 7", "feature_stage = 7\nmode = \"end-to-end\"")
        .replace("epochs = 4", &format!("epochs = {epochs}"))
        .replace("seed = 0", "seed = 0\nbackbone_lr_mult = 0.01")
}

/// B-CNN and DCL trained end to end (pixels through the backbone, fresh augmentation and
/// destruction every epoch) learn, and their records say so; a run killed with SIGKILL
/// in the middle of an epoch and resumed with `--resume` ends with the same numbers as an
/// uninterrupted run.
#[test]
fn encoding_end_to_end_trains_and_a_killed_run_resumes_exactly() {
    let Some(weights) = lite0_weights("encoding_end_to_end_trains_and_a_killed_run_resumes_exactly") else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("cub");
    fgia_core::testing::write_tiny_cub(&data, 4, 6, 3, 72);
    let w = weights.display().to_string();
    let run = |recipes: &[(&str, String)], runs: &Path, results: &Path, extra: &[&str]| -> std::process::Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fgia"));
        cmd.args(["encoding", "--quiet", "--weights", &w, "--data-root", data.to_str().expect("utf8")]);
        cmd.args(["--runs-dir", runs.to_str().expect("utf8"), "--results-dir", results.to_str().expect("utf8")]);
        for (name, text) in recipes {
            let p = dir.path().join(format!("{name}.toml"));
            std::fs::write(&p, text).expect("recipe");
            cmd.arg("--recipe").arg(p);
        }
        cmd.args(extra);
        cmd
    };
    // B-CNN and DCL, end to end.
    let (runs, results) = (dir.path().join("runs"), dir.path().join("results"));
    let recipes = [("e2e-bcnn", end_to_end_recipe("bcnn", "", 4)), ("e2e-dcl", end_to_end_recipe("dcl", "regions = 2, k = 1", 4))];
    let out = run(&recipes, &runs, &results, &[]).output().expect("runs");
    ok(&out);
    for (name, _) in &recipes {
        let r = fgia_core::record::ResultRecord::read(&results.join(format!("{name}.json"))).expect("record");
        assert_eq!(r.protocol.mode, fgia_core::record::FeatureMode::EndToEnd, "{name}");
        // Training accuracy through the live backbone. (Test accuracy on these synthetic images
        // after a dozen steps is not a measure: EfficientNet's batch norm momentum of 0.01 keeps
        // the running statistics at ImageNet's. The cub-mini runs of the architecture note are.)
        assert!(r.metrics["train_top1"] > 2.0 * r.metrics["chance"], "{name}: {:?}", r.metrics);
        assert!(r.metrics["top1"].is_finite() && r.metrics["test_images"] == 12.0, "{name}: {:?}", r.metrics);
        assert!(r.protocol.trained_layers.contains("every layer"), "{name}: {}", r.protocol.trained_layers);
        assert!(!r.deviations.iter().any(|d| d.contains("cached")), "{name}: no frozen-backbone deviation: {:?}", r.deviations);
    }

    // Killed mid-epoch (SIGKILL as soon as the first checkpoint exists), then resumed.
    let long = [("kill-dcl", end_to_end_recipe("dcl", "regions = 2, k = 1", 3))];
    let (whole_runs, whole_results) = (dir.path().join("whole-runs"), dir.path().join("whole-results"));
    ok(&run(&long, &whole_runs, &whole_results, &[]).output().expect("runs"));
    let (kruns, kresults) = (dir.path().join("k-runs"), dir.path().join("k-results"));
    let mut child = run(&long, &kruns, &kresults, &[]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().expect("spawn");
    let first = kruns.join("kill-dcl/checkpoints/epoch-0001/state.json");
    let started = std::time::Instant::now();
    while !first.is_file() {
        assert!(started.elapsed().as_secs() < 300, "no checkpoint after 300 s");
        assert!(child.try_wait().expect("wait").is_none(), "the run ended before it could be killed");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    assert!(!kresults.join("kill-dcl.json").exists(), "killed before the end");
    let resumed = ok(&run(&long, &kruns, &kresults, &["--resume"]).output().expect("resumes"));
    let (a, b) = (
        fgia_core::record::ResultRecord::read(&whole_results.join("kill-dcl.json")).expect("whole"),
        fgia_core::record::ResultRecord::read(&kresults.join("kill-dcl.json")).expect("resumed"),
    );
    assert_eq!(a.metrics, b.metrics, "{resumed}");
    assert_eq!(a.protocol, b.protocol);
    assert_eq!(a.deviations, b.deviations);
    let (ma, mb) =
        (fgia_core::record::read_metrics(&whole_runs.join("kill-dcl")).expect("m"), fgia_core::record::read_metrics(&kruns.join("kill-dcl")).expect("m"));
    assert_eq!(ma.len(), 3);
    for (x, y) in ma.iter().zip(&mb) {
        assert_eq!((x.epoch, x.train_loss, x.train_top1), (y.epoch, y.train_loss, y.train_top1));
    }
    // Without --resume an existing run folder is refused, never overwritten.
    let refused = run(&long, &kruns, &dir.path().join("other-results"), &[]).output().expect("runs");
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("run folder exists"));
}

/// `fgia retrieval` killed with SIGKILL during training and resumed with `--resume` ends with
/// the same record as an uninterrupted run.
#[test]
fn retrieval_killed_and_resumed_matches_an_uninterrupted_run() {
    let Some(weights) = lite0_weights("retrieval_killed_and_resumed_matches_an_uninterrupted_run") else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("cub");
    fgia_core::testing::write_tiny_cub(&data, 8, 12, 2, 72);
    let recipe = dir.path().join("kill-proxy.toml");
    std::fs::write(&recipe, retrieval_recipe("proxy-anchor").replace("epochs = 3", "epochs = 400")).expect("recipe");
    let w = weights.display().to_string();
    let run = |tag: &str, resume: bool| -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fgia"));
        cmd.args(["retrieval", "--quiet", "--weights", &w, "--data-root", data.to_str().expect("utf8"), "--recipe", recipe.to_str().expect("utf8")]);
        cmd.arg("--runs-dir").arg(dir.path().join(format!("{tag}-runs"))).arg("--results-dir").arg(dir.path().join(format!("{tag}-results")));
        if resume {
            cmd.arg("--resume");
        }
        cmd
    };
    ok(&run("whole", false).output().expect("runs"));
    let mut child = run("k", false).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().expect("spawn");
    let ckpt = dir.path().join("k-runs/kill-proxy/checkpoints");
    let started = std::time::Instant::now();
    // Kill once training is under way (a checkpoint past the first epoch exists).
    loop {
        let done = std::fs::read_dir(&ckpt)
            .map(|d| d.filter_map(|e| e.ok()).any(|e| e.file_name().to_string_lossy().starts_with("epoch-") && e.file_name() != "epoch-0001"))
            .unwrap_or(false);
        if done {
            break;
        }
        assert!(started.elapsed().as_secs() < 300, "no checkpoint after 300 s");
        assert!(child.try_wait().expect("wait").is_none(), "the run ended before it could be killed");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    assert!(!dir.path().join("k-results/kill-proxy.json").exists(), "killed before the end");
    ok(&run("k", true).output().expect("resumes"));
    let a = fgia_core::record::ResultRecord::read(&dir.path().join("whole-results/kill-proxy.json")).expect("whole");
    let b = fgia_core::record::ResultRecord::read(&dir.path().join("k-results/kill-proxy.json")).expect("resumed");
    assert_eq!(a.metrics, b.metrics);
    assert_eq!(a.protocol, b.protocol);
}

/// `fgia predict --backbone` prints ImageNet class names, and `--native-size` feeds the image as
/// it is (224 x 224 here: no resize to 256 and crop back, so the numbers differ).
#[test]
fn predict_names_imagenet_classes_and_feeds_native_size() {
    let Some(weights) = lite0_weights("predict_names_imagenet_classes_and_feeds_native_size") else { return };
    let root = fgia_core::testing::workspace_root(env!("CARGO_MANIFEST_DIR"));
    let Some(coffee) = fgia_core::datasets::shared_dir(&root).map(|s| s.join("fixtures/coffee_224.png")).filter(|p| p.is_file()) else {
        return fgia_core::testing::skip("predict_names_imagenet_classes_and_feeds_native_size", "fixtures/coffee_224.png of the shared folder not found");
    };
    // The CLI resolves the weights from its cache folder, which CI fills; the path is checked.
    assert!(weights.is_file());
    let img = coffee.to_str().expect("utf8");
    let resized = ok(&fgia(&["predict", "--backbone", "efficientnet-lite0", "--top", "1", img]));
    let native = ok(&fgia(&["predict", "--backbone", "efficientnet-lite0", "--top", "1", "--native-size", img]));
    for out in [&resized, &native] {
        let line = out.lines().nth(1).expect("a class line");
        assert!(line.contains("967") && line.contains("espresso"), "{out}");
        assert!(!out.contains("imagenet class"), "{out}");
    }
    assert_ne!(resized, native, "the resize-then-crop changes the probabilities");
}

/// Every checkpoint folder of `run` is complete: its state names its epoch, and its model and
/// optimiser files have the sizes of an uninterrupted run's. Returns whether a partial
/// (interrupted) checkpoint write was left behind.
fn assert_checkpoints_whole(run: &Path, sizes: (u64, u64)) -> bool {
    let mut partial = false;
    let Ok(rd) = std::fs::read_dir(run.join("checkpoints")) else { return false };
    for e in rd {
        let e = e.expect("entry");
        let name = e.file_name().to_string_lossy().into_owned();
        // A half-written (`.partial`) or half-deleted (`.removing`) folder is not a checkpoint.
        if name.starts_with('.') {
            partial |= name.ends_with(".partial");
            continue;
        }
        let epoch: usize = name.strip_prefix("epoch-").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("unexpected {name}"));
        let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(e.path().join("state.json")).expect("state.json")).expect("state parses");
        assert_eq!(state["epoch"], epoch, "{name}");
        let size = |f: &str| std::fs::metadata(e.path().join(f)).unwrap_or_else(|err| panic!("{name}/{f}: {err}")).len();
        assert_eq!((size("model.mpk"), size("optim.mpk")), sizes, "{name}: a torn checkpoint");
    }
    partial
}

/// `fgia train` killed with SIGKILL at 24 random moments, half of them as a checkpoint write
/// begins, and resumed after each: no checkpoint is ever torn, a second process on the same run
/// folder is refused while the first holds it, and the run ends with the same record as an
/// uninterrupted one.
#[test]
fn random_kills_never_tear_a_checkpoint_and_resume_to_the_same_record() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("cub");
    tiny_cub(&data);
    let recipe = dir.path().join("tiny.toml");
    std::fs::write(&recipe, RECIPE.replace("epochs = 2", "epochs = 8").replace("milestones = [1]", "milestones = [4]")).expect("recipe");
    let train = |run: &Path, result: &Path, resume: bool| -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fgia"));
        cmd.args(["train", "--quiet", "--recipe", recipe.to_str().expect("utf8"), "--data-root", data.to_str().expect("utf8")]);
        cmd.arg("--run-dir").arg(run).arg("--result").arg(result);
        if resume {
            cmd.arg("--resume");
        }
        cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        cmd
    };
    let whole_run = dir.path().join("whole");
    let started = Instant::now();
    assert!(train(&whole_run, &dir.path().join("whole.json"), false).status().expect("runs").success());
    let span = started.elapsed().as_millis().max(50) as u64;
    let whole = fgia_core::record::ResultRecord::read(&dir.path().join("whole.json")).expect("record");
    let last = whole_run.join("checkpoints/epoch-0008");
    let sizes = (std::fs::metadata(last.join("model.mpk")).expect("model").len(), std::fs::metadata(last.join("optim.mpk")).expect("optim").len());

    let run = dir.path().join("killed");
    let result = dir.path().join("killed.json");
    let mut rng = fgia_core::rng::SplitMix64::new(7);
    let (mut kills, mut during_write, mut completed, mut lock_checked) = (0, 0, 0, false);
    // Sessions are killed until 24 kills have landed; a run that completes in between is checked
    // against the uninterrupted one and started afresh.
    let check_completed = |result: &Path, run: &Path| {
        let resumed = fgia_core::record::ResultRecord::read(result).expect("record");
        assert_eq!(whole.metrics, resumed.metrics);
        let (a, b) = (fgia_core::record::read_metrics(&whole_run).expect("m"), fgia_core::record::read_metrics(run).expect("m"));
        assert_eq!(a.len(), 8);
        assert_eq!(b.len(), 8);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!((x.epoch, x.train_loss, x.train_top1, x.grad_norm), (y.epoch, y.train_loss, y.train_top1, y.grad_norm));
        }
    };
    while kills < 24 {
        // Killed before its recipe was written: nothing to keep (as `cargo xtask` does).
        if run.exists() && !run.join("recipe.toml").is_file() {
            std::fs::remove_dir_all(&run).expect("remove");
        }
        let resume = run.join("recipe.toml").is_file();
        let mut child = train(&run, &result, resume).spawn().expect("spawn");
        if !lock_checked {
            // While the first process holds the folder, a second one is refused, naming it.
            while !run.join("recipe.toml").is_file() {
                std::thread::sleep(Duration::from_millis(1));
            }
            let out = Command::new(env!("CARGO_BIN_EXE_fgia"))
                .args(["train", "--quiet", "--resume", "--recipe", recipe.to_str().expect("utf8"), "--data-root", data.to_str().expect("utf8")])
                .arg("--run-dir")
                .arg(&run)
                .output()
                .expect("second process");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success() && err.contains("another process") && err.contains("killed"), "{err}");
            lock_checked = true;
        }
        let deadline = Instant::now() + Duration::from_millis(rng.below(span));
        let at_write = kills % 2 == 1;
        let exited = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break Some(status);
            }
            let writing = at_write
                && std::fs::read_dir(run.join("checkpoints")).is_ok_and(|rd| rd.flatten().any(|e| e.file_name().to_string_lossy().ends_with(".partial")));
            if writing || (!at_write && Instant::now() >= deadline) {
                if writing {
                    std::thread::sleep(Duration::from_micros(rng.below(3000)));
                }
                break None;
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        match exited {
            Some(status) => {
                assert!(status.success(), "a session failed");
                check_completed(&result, &run);
                completed += 1;
                std::fs::remove_dir_all(&run).expect("remove");
                std::fs::remove_file(&result).expect("remove");
            }
            None => {
                child.kill().expect("SIGKILL");
                child.wait().expect("reaped");
                kills += 1;
                if assert_checkpoints_whole(&run, sizes) {
                    during_write += 1;
                }
            }
        }
    }
    // The last killed run is resumed to its end.
    if run.exists() && !run.join("recipe.toml").is_file() {
        std::fs::remove_dir_all(&run).expect("remove");
    }
    let resume = run.join("recipe.toml").is_file();
    assert!(train(&run, &result, resume).status().expect("runs").success(), "the last session finishes");
    check_completed(&result, &run);
    completed += 1;
    eprintln!("{kills} kills ({during_write} during a checkpoint write), {completed} runs completed after kills");
    assert!(during_write >= 1, "no kill landed in a checkpoint write");
}

/// A `classes.json` that does not fit the checkpoint is an error of `fgia predict` naming the
/// checkpoint, not a panic.
#[test]
fn predict_with_a_class_list_that_does_not_fit_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("cub");
    tiny_cub(&data);
    let recipe = dir.path().join("tiny.toml");
    std::fs::write(&recipe, RECIPE.replace("epochs = 2", "epochs = 1")).expect("recipe");
    let run = dir.path().join("run");
    ok(&fgia(&[
        "train",
        "--quiet",
        "--recipe",
        recipe.to_str().expect("utf8"),
        "--run-dir",
        run.to_str().expect("utf8"),
        "--data-root",
        data.to_str().expect("utf8"),
    ]));
    std::fs::write(run.join("classes.json"), r#"["a", "b", "c", "d", "e"]"#).expect("classes");
    let img = data.join("images/001.class1/img1.png");
    let out = fgia(&["predict", "--run-dir", run.to_str().expect("utf8"), img.to_str().expect("utf8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !err.contains("panicked"), "{err}");
    assert!(err.contains("model.mpk") && err.contains("parameters"), "{err}");
}

/// `fgia sbir` trains triplet Sketch-a-Net's fc6 / fc7 and DSSA with HOLEF over the frozen
/// EfficientNet-Lite0 trunk on the real QMUL-Chair set, in one process sharing the views; both
/// beat chance by a wide margin with ten views, and the records say what was trained, with which
/// loss, and what it stands in for. Then `fgia sbir-index` embeds twelve test photos with the
/// DSSA run and `fgia sbir-query` ranks them for a sketch, printing and drawing the ranking.
#[test]
fn sbir_trains_on_qmul_chairs_beats_chance_and_answers_sketch_queries() {
    let test = "sbir_trains_on_qmul_chairs_beats_chance_and_answers_sketch_queries";
    let Some(weights) = lite0_weights(test) else { return };
    let Some(data) = fgia_core::testing::shared_data(env!("CARGO_MANIFEST_DIR"), test, "qmul-chairs-v1") else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let ws = fgia_core::testing::workspace_root(env!("CARGO_MANIFEST_DIR"));
    let recipe = |name: &str, epochs: &str| {
        let text = std::fs::read_to_string(ws.join(format!("recipes/table6/{name}.toml")))
            .expect("recipe")
            .replace("train_views = 4", "train_views = 1")
            .replace("epochs = 60", epochs);
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).expect("write");
        path
    };
    let (triplet, dssa) = (recipe("triplet-sketch-a-net-chairs", "epochs = 20"), recipe("dssa-holef-chairs", "epochs = 6"));
    let (runs, results) = (dir.path().join("runs"), dir.path().join("results"));
    let s = |p: &Path| p.to_str().expect("utf8").to_string();
    let out = ok(&fgia(&[
        "sbir",
        "--quiet",
        "--recipe",
        &s(&triplet),
        "--recipe",
        &s(&dssa),
        "--data-root",
        &s(&data),
        "--weights",
        &s(&weights),
        "--runs-dir",
        &s(&runs),
        "--results-dir",
        &s(&results),
    ]));
    for (name, trained, loss) in [
        ("triplet-sketch-a-net-chairs", "fc6, fc7 (trunk frozen)", "squared Euclidean"),
        ("dssa-holef-chairs", "attention (two 1x1 convolutions), fc6, fc7, HOLEF W (trunk frozen)", "HOLEF"),
    ] {
        let r = fgia_core::record::ResultRecord::read(&results.join(format!("{name}.json"))).expect("record");
        eprintln!("{out}{name}: {:?}", r.metrics);
        assert_eq!(r.metrics["test_sketches"], 97.0);
        assert!(r.metrics["acc@10"] > 3.0 * r.metrics["chance@10"], "{name}: {:?}", r.metrics);
        assert!(r.metrics["acc@1"] > 3.0 * r.metrics["chance@1"], "{name}: {:?}", r.metrics);
        assert!((1..20).all(|k| r.metrics[&format!("acc@{k}")] <= r.metrics[&format!("acc@{}", k + 1)]), "{name}: acc@K grows with K");
        // Human triplets: better than the coin a random embedding would toss.
        assert!(r.metrics["triplets_correct"] > 55.0, "{name}: {:?}", r.metrics);
        assert_eq!(r.metrics["test_triplets"], 4365.0);
        assert_eq!(r.protocol.trained_layers, trained);
        assert!(r.protocol.loss.as_deref().is_some_and(|l| l.contains(loss)), "{name}: {:?}", r.protocol.loss);
        assert!(r.deviations.iter().any(|d| d.contains("staged Sketch-a-Net pretraining")));
        assert_eq!(r.section.as_deref(), Some("6.2"));
    }

    // Twelve test photos, and the sketch of the fourth.
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(&photos).expect("mkdir");
    let stems: Vec<String> = std::fs::read_to_string(data.join("test.txt")).expect("test.txt").lines().take(12).map(|l| l.trim().to_string()).collect();
    for stem in &stems {
        std::fs::copy(data.join(format!("testB/{stem}.png")), photos.join(format!("{stem}.png"))).expect("copy");
    }
    std::fs::write(photos.join("broken.png"), b"not a png").expect("write");
    let index = dir.path().join("photos.fgiasbir");
    let run = runs.join("dssa-holef-chairs");
    let built = fgia(&["sbir-index", "--quiet", "--run-dir", &s(&run), "--photos", &s(&photos), "--out", &s(&index), "--weights", &s(&weights)]);
    let msg = ok(&built);
    assert!(msg.contains("12 photos"), "{msg}");
    assert!(String::from_utf8_lossy(&built.stderr).contains("broken.png"), "the unreadable file is named");
    let sketch = data.join(format!("testA/{}.png", stems[3]));
    let page = dir.path().join("q.html");
    let listing = ok(&fgia(&["sbir-query", "--index", &s(&index), "--top", "12", "--html", &s(&page), "--weights", &s(&weights), &s(&sketch)]));
    let ranked: Vec<(f32, String)> = listing
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (_, e, p) = (it.next()?.strip_suffix('.')?, it.next()?.parse().ok()?, it.next()?);
            Some((e, p.to_string()))
        })
        .collect();
    assert_eq!(ranked.len(), 12, "{listing}");
    assert!(ranked.windows(2).all(|w| w[0].0 <= w[1].0), "nearest first: {listing}");
    let own = ranked.iter().position(|(_, p)| p.ends_with(&format!("/{}.png", stems[3]))).expect("own photo listed");
    assert!(own < 3, "the sketch's own photo ranks {} of 12:\n{listing}", own + 1);
    let html = std::fs::read_to_string(&page).expect("page");
    assert_eq!(html.matches("<img").count(), 13, "the sketch and twelve photos");
    assert!(html.contains("HOLEF"), "the page names the energy");
    // A damaged index is an error naming it, not a panic.
    std::fs::write(&index, b"{\"format\":\"fgia-sbir-index\"}\n").expect("write");
    let bad = fgia(&["sbir-query", "--index", &s(&index), "--weights", &s(&weights), &s(&sketch)]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && !err.contains("panicked") && err.contains("photos.fgiasbir"), "{err}");
}

/// The full profile's mode on a small scale: `model.mode = "end-to-end"` trains triplet
/// Sketch-a-Net with the whole EfficientNet-Lite0 trunk on fresh random windows of the pixels
/// (here 64 px crops of 72 px images, three epochs), evaluates through the trained trunk, and
/// records it; `sbir-index` then embeds photos with the run's own trunk.
#[test]
fn sbir_end_to_end_fine_tunes_the_trunk_and_its_index_uses_it() {
    let test = "sbir_end_to_end_fine_tunes_the_trunk_and_its_index_uses_it";
    let Some(weights) = lite0_weights(test) else { return };
    let Some(data) = fgia_core::testing::shared_data(env!("CARGO_MANIFEST_DIR"), test, "qmul-chairs-v1") else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let ws = fgia_core::testing::workspace_root(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(ws.join("recipes/table6/triplet-sketch-a-net-chairs.toml"))
        .expect("recipe")
        .replace("backbone = \"efficientnet-lite0\"", "backbone = \"efficientnet-lite0\"\nmode = \"end-to-end\"\nbackbone_lr_mult = 0.1")
        .replace("side = 256", "side = 72")
        .replace("crop = 225", "crop = 64")
        .replace("epochs = 60", "epochs = 3")
        .replace("batch_size = 128", "batch_size = 32");
    let recipe = dir.path().join("e2e.toml");
    std::fs::write(&recipe, text).expect("write");
    let (runs, results) = (dir.path().join("runs"), dir.path().join("results"));
    let s = |p: &Path| p.to_str().expect("utf8").to_string();
    let out = ok(&fgia(&[
        "sbir",
        "--quiet",
        "--recipe",
        &s(&recipe),
        "--data-root",
        &s(&data),
        "--weights",
        &s(&weights),
        "--runs-dir",
        &s(&runs),
        "--results-dir",
        &s(&results),
    ]));
    let r = fgia_core::record::ResultRecord::read(&results.join("e2e.json")).expect("record");
    eprintln!("{out}{:?}", r.metrics);
    assert_eq!(r.protocol.mode, fgia_core::record::FeatureMode::EndToEnd);
    assert!(r.protocol.trained_layers.contains("whole trunk"), "{}", r.protocol.trained_layers);
    assert!(r.protocol.train_transform.contains("fresh every epoch"));
    assert!(
        r.deviations.iter().any(|d| d.contains("fine-tunes from its ImageNet weights")) && !r.deviations.iter().any(|d| d.starts_with("with the trunk frozen"))
    );
    assert!(r.metrics["acc@10"] > 1.5 * r.metrics["chance@10"], "{:?}", r.metrics);
    // The checkpoint holds the trunk (about 4.6 M parameters), not only fc6 / fc7 (0.8 M).
    let run = runs.join("e2e");
    let (_, ck) = fgia_train::engine::latest_checkpoint(&run).expect("a checkpoint");
    let size = std::fs::metadata(ck.join("model.mpk")).expect("model.mpk").len();
    assert!(size > 15_000_000, "model.mpk is {size} bytes");
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(&photos).expect("mkdir");
    for stem in ["201", "202", "203", "204"] {
        std::fs::copy(data.join(format!("testB/{stem}.png")), photos.join(format!("{stem}.png"))).expect("copy");
    }
    let index = dir.path().join("p.fgiasbir");
    ok(&fgia(&["sbir-index", "--quiet", "--run-dir", &s(&run), "--photos", &s(&photos), "--out", &s(&index), "--weights", &s(&weights)]));
    let listing = ok(&fgia(&["sbir-query", "--index", &s(&index), "--top", "4", "--weights", &s(&weights), &s(&data.join("testA/201.png"))]));
    assert_eq!(listing.lines().filter(|l| l.contains("testB") || l.contains("/photos/")).count(), 4, "{listing}");
}

fn external_recipe(method: &str, extra: &str) -> String {
    format!(
        r#"
[method]
name = "{method}"
{extra}
[model]
backbone = "efficientnet-lite0"
hidden = 16
[data]
format = "cub"
resize = 72
crop = 64
[train]
epochs = 6
batch_size = 8
lr = 0.01
views = 2
seed = 0
[report]
table = "table3"
method = "{method}"
dataset = "CUB-200-2011"
"#
    )
}

/// `fgia external` end to end on a generated CUB of 4 classes, with five attributes: whether the
/// images are mostly red, green or blue (the generator's base colours), and two that no class
/// shows more than the others. The noisy-label heads, the attribute embedding as a classifier
/// and zero-shot (classes 2 and 4 unseen), KERL on the class-attribute graph, the geo prior on
/// synthetic locations and the 20-questions game, in one process sharing the frozen features.
#[test]
fn external_runs_noisy_labels_attributes_and_twenty_questions() {
    let Some(weights) = lite0_weights("external_runs_noisy_labels_attributes_and_twenty_questions") else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("cub");
    fgia_core::testing::write_tiny_cub(&data, 4, 6, 3, 72);
    std::fs::create_dir_all(data.join("attributes")).expect("mkdir");
    let names = "1 has_primary_color::red\n2 has_primary_color::green\n3 has_primary_color::blue\n4 has_mark::one\n5 has_mark::two\n";
    std::fs::write(data.join("attributes/attributes.txt"), names).expect("names");
    // Base colours (60, 205, 97), (120, 155, 194), (180, 105, 36), (240, 55, 133).
    let rows = "0 100 0 50 50\n0 100 100 50 50\n100 0 0 50 50\n100 0 100 50 50\n";
    std::fs::write(data.join("attributes/class_attribute_labels_continuous.txt"), rows).expect("percent");
    let noise = "t_k = 2.0\n[noise]\nkind = \"symmetric\"\nrate = 0.25\nseed = 3";
    let recipes = [
        ("cross-entropy", noise.to_string()),
        ("peer-learning", noise.to_string()),
        ("co-teaching", noise.to_string()),
        ("sje", String::new()),
        ("sje-zero-shot", "unseen_every = 2".into()),
        ("twenty-questions", "questions = 5\nfloor = 0.0".into()),
        ("kerl", "[method.kerl]\nregion_dim = 16".into()),
        ("geo-prior", "[method.geo]\nhidden = 32\nblocks = 1\ndropout = 0.0\npos_weight = 1.0\ntest_missing = 0.3".into()),
    ];
    let mut args: Vec<String> = vec!["external".into(), "--quiet".into(), "--weights".into(), weights.display().to_string()];
    for (m, extra) in &recipes {
        let path = dir.path().join(format!("t-{m}.toml"));
        std::fs::write(&path, external_recipe(m, extra)).expect("recipe");
        args.extend(["--recipe".into(), path.display().to_string()]);
    }
    let (runs, results) = (dir.path().join("runs"), dir.path().join("results"));
    args.extend(["--runs-dir".into(), runs.display().to_string(), "--results-dir".into(), results.display().to_string()]);
    args.extend(["--data-root".into(), data.display().to_string(), "--skip-existing".into()]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ok(&fgia(&argv));
    let rec = |m: &str| fgia_core::record::ResultRecord::read(&results.join(format!("t-{m}.json"))).expect("record");
    for (m, _) in &recipes {
        let r = rec(m);
        assert_eq!(r.table, "table3");
        // Zero-shot transfer needs attributes that the images' features follow; these made-up
        // images need not, so only its bookkeeping is checked (cub-mini's smoke run measures it).
        if *m != "sje-zero-shot" {
            assert!(r.metrics["top1"] > r.metrics["chance"], "{m}: {:?}", r.metrics);
        }
        assert!(r.metrics["top1"].is_finite() && r.protocol.checkpoint == "last epoch", "{m}");
        assert_eq!(fgia_core::record::read_metrics(&runs.join(format!("t-{m}"))).expect("metrics").len(), 6, "{m}");
    }
    // The noise is recorded: rate, kind and seed; the selection methods record ξ (the rate).
    let peer = rec("peer-learning");
    assert_eq!(peer.metrics["noise_rate"], 25.0);
    assert!(peer.metrics["noise_drawn"] > 0.0);
    assert!(peer.deviations.iter().any(|d| d.contains("symmetric noise at rate 0.25") && d.contains("seed 3")), "{:?}", peer.deviations);
    assert_eq!(peer.metrics["xi"], 0.25);
    assert!(peer.metrics.contains_key("top1_second"));
    assert!(!rec("cross-entropy").metrics.contains_key("xi"));
    // Zero-shot: classes 2 and 4 unseen, tested among themselves only (chance 50 %).
    let zs = rec("sje-zero-shot");
    assert_eq!((zs.metrics["unseen_classes"], zs.metrics["seen_classes"], zs.metrics["chance"], zs.metrics["test_images"]), (2.0, 2.0, 50.0, 6.0));
    assert!(zs.protocol.split.contains("% 2 == 0"), "{}", zs.protocol.split);
    // Twenty questions with truthful users: three answers single out the class, and information
    // gain asks the three informative questions first.
    let q = rec("twenty-questions");
    assert_eq!(q.metrics["acc_q3_info_gain"], 100.0, "{:?}", q.metrics);
    let area = |p: &str| (0..=5).map(|t| q.metrics[&format!("acc_q{t}_{p}")]).sum::<f64>();
    assert!(area("info_gain") >= area("random"), "{:?}", q.metrics);
    for t in 0..=5 {
        assert_eq!(q.metrics[&format!("acc_q{t}_vision")], q.metrics["top1"]);
    }
    assert!(out.contains("after 5 questions: information gain 100.00"), "{out}");
    // KERL's graph: 4 classes and 5 attributes; the geo prior's row says its locations are
    // synthetic and counts the test images it left without one.
    let kerl = rec("kerl");
    assert_eq!((kerl.metrics["graph_nodes"], kerl.metrics["knowledge"]), (9.0, 1.0));
    let geo = rec("geo-prior");
    assert!(geo.data.contains("SYNTHETIC locations") && geo.section.as_deref() == Some("5.3"), "{}", geo.data);
    assert!(geo.metrics.contains_key("top1_image_only") && geo.metrics["test_without_location"] <= geo.metrics["test_images"]);
    let again = ok(&fgia(&argv));
    assert_eq!(again.matches("skipped").count(), recipes.len(), "{again}");
}

/// Boxes and CUB's 15 keypoints for a generated CUB: the box is the image's middle, the head
/// keypoints sit in its upper left quarter and the body ones in its lower right quarter.
fn add_boxes_and_parts(root: &Path, images: usize, size: f32) {
    let (mut boxes, mut locs) = (String::new(), String::new());
    let names: String = (1..=15).map(|p| format!("{p} part{p}\n")).collect();
    for id in 1..=images {
        let (x, y, w, h) = (size * 0.2, size * 0.25, size * 0.6, size * 0.5);
        boxes.push_str(&format!("{id} {x} {y} {w} {h}\n"));
        for p in 1..=15u32 {
            let head = [2, 5, 6, 7, 10, 11, 15].contains(&p);
            let (px, py) = if head { (x + w * 0.25, y + h * 0.25) } else { (x + w * 0.7, y + h * 0.7) };
            let jitter = p as f32 * 0.3;
            locs.push_str(&format!("{id} {p} {} {} 1\n", px + jitter, py - jitter));
        }
    }
    std::fs::write(root.join("bounding_boxes.txt"), boxes).expect("boxes");
    std::fs::create_dir_all(root.join("parts")).expect("parts folder");
    std::fs::write(root.join("parts/parts.txt"), names).expect("parts");
    std::fs::write(root.join("parts/part_locs.txt"), locs).expect("part locations");
}

fn localization_recipe(method: &str, params: &str) -> String {
    format!(
        r#"
[method]
name = "{method}"
family = "localization"
params = {{ {params} }}
[model]
backbone = "efficientnet-lite0"
mode = "frozen"
[data]
format = "cub"
resize = 64
crop = 64
[train]
epochs = 4
batch_size = 8
classes_per_batch = 4
images_per_class = 2
lr = 0.05
weight_decay = 1e-4
seed = 0
views = 2
[report]
table = "table2"
method = "{method}"
dataset = "CUB-200-2011"
"#
    )
}

/// `fgia localization` end to end on a generated CUB with boxes and parts (4 classes): every
/// §5.1 method (and WS-DAN and CAL) trains its cached rounds in one process, resamples its crops
/// from the pixels, writes a record whose protocol names the rounds, beats chance, and draws
/// what it looked at on the test images; a second call skips them all; a bad parameter is a
/// clear error naming the recipe.
#[test]
fn localization_runs_every_method_in_cached_rounds() {
    let Some(weights) = lite0_weights("localization_runs_every_method_in_cached_rounds") else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("cub");
    fgia_core::testing::write_tiny_cub(&data, 4, 6, 3, 72);
    add_boxes_and_parts(&data, 36, 72.0);
    let methods = [
        ("part-rcnn", "region_size = 32, test_annotations = \"box-and-parts\""),
        ("dfl-cnn", "filters_per_class = 2"),
        ("s3n", "sample_size = 32"),
        ("ra-cnn", "part_size = 32, apn_hidden = 32"),
        ("ma-cnn", "part_size = 32"),
        ("osme-mamc", "embedding = 32"),
        ("tasn", "channels = 16, sample_size = 32"),
        ("stn", "patch_size = 32, hidden = 16"),
        ("nts-net", "part_size = 32"),
        ("ws-dan", "attentions = 4, crop_size = 32"),
        ("cal", "attentions = 4, crop_size = 32"),
    ];
    let mut args: Vec<String> = vec!["localization".into(), "--quiet".into(), "--weights".into(), weights.display().to_string()];
    for (m, p) in methods {
        let path = dir.path().join(format!("tiny-{m}.toml"));
        std::fs::write(&path, localization_recipe(m, p)).expect("recipe");
        args.extend(["--recipe".into(), path.display().to_string()]);
    }
    let (runs, results) = (dir.path().join("runs"), dir.path().join("results"));
    args.extend(["--runs-dir".into(), runs.display().to_string(), "--results-dir".into(), results.display().to_string()]);
    args.extend(["--data-root".into(), data.display().to_string(), "--skip-existing".into()]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ok(&fgia(&argv));
    for (m, _) in methods {
        let r = fgia_core::record::ResultRecord::read(&results.join(format!("tiny-{m}.json"))).expect("record");
        assert_eq!(r.table, "table2");
        assert!(r.section.as_deref().is_some_and(|s| s.starts_with("5.1")), "{m}: {:?}", r.section);
        assert_eq!(r.metrics["test_images"], 12.0, "{m}: {:?}", r.metrics);
        assert_eq!(r.metrics["chance"], 25.0);
        assert!(r.metrics["top1"] > 25.0, "{m}: {:?}", r.metrics);
        assert_eq!(r.metrics["looks_drawn"], 8.0, "{m}");
        assert_eq!(r.protocol.checkpoint, "last epoch of every round");
        assert!(r.deviations.iter().any(|d| d.contains("cached rounds")), "{m}: {:?}", r.deviations);
        let svg = std::fs::read_to_string(runs.join(format!("tiny-{m}/looks.svg"))).expect("looks.svg");
        assert_eq!(svg.matches("<image ").count(), 8, "{m}: eight test images drawn");
        assert!(svg.contains("<rect") || svg.contains("<polyline"), "{m}: something drawn on them");
    }
    let nts = fgia_core::record::ResultRecord::read(&results.join("tiny-nts-net.json")).expect("record");
    assert_eq!(nts.metrics["anchors"], 39.0, "2x2x6 + 1x1x6 + 1x1x9 anchors at 64 px");
    for round in ["round-1-navigator", "round-2-parts"] {
        assert_eq!(fgia_core::record::read_metrics(&runs.join("tiny-nts-net").join(round)).expect("metrics").len(), 4, "{round}");
    }
    assert!(out.contains("top-1"), "{out}");
    let again = ok(&fgia(&argv));
    assert_eq!(again.matches("skipped").count(), methods.len(), "{again}");

    let w = weights.display().to_string();
    let run_one = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("recipe");
        let o = fgia(&[
            "localization",
            "--quiet",
            "--weights",
            &w,
            "--data-root",
            data.to_str().expect("utf8"),
            "--recipe",
            p.to_str().expect("utf8"),
            "--runs-dir",
            dir.path().join(format!("{name}-runs")).to_str().expect("utf8"),
            "--results-dir",
            results.to_str().expect("utf8"),
        ]);
        String::from_utf8_lossy(&o.stderr).into_owned() + if o.status.success() { "(succeeded)" } else { "" }
    };
    let err = run_one("bad-param.toml", localization_recipe("nts-net", "nms_iou = 2.0"));
    assert!(err.contains("bad-param.toml") && err.contains("nms_iou") && !err.contains("(succeeded)"), "{err}");
}

/// `fgia localization` with `mode = "end-to-end"`: every §5.1 method (and WS-DAN and CAL) crops
/// or resamples the pixels inside the step and runs them through the backbone it trains
/// (DFL-CNN and OSME + MAMC on the live map alone); each writes a record whose protocol says end to end (no cached round), the
/// backbone's rate and the last epoch, beats chance, and draws what it looked at.
#[test]
fn localization_trains_end_to_end_through_the_crops() {
    let Some(weights) = lite0_weights("localization_trains_end_to_end_through_the_crops") else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("cub");
    fgia_core::testing::write_tiny_cub(&data, 4, 6, 3, 72);
    add_boxes_and_parts(&data, 36, 72.0);
    let methods = [
        ("part-rcnn", "region_size = 32, test_annotations = \"box-and-parts\""),
        ("dfl-cnn", "filters_per_class = 2"),
        ("s3n", "sample_size = 32"),
        ("ra-cnn", "part_size = 32, apn_hidden = 32"),
        ("ma-cnn", "part_size = 32"),
        ("osme-mamc", "embedding = 32"),
        ("tasn", "channels = 16, sample_size = 32"),
        ("stn", "patch_size = 32, hidden = 16"),
        ("nts-net", "part_size = 32"),
        ("ws-dan", "attentions = 4, crop_size = 32"),
        ("cal", "attentions = 4, crop_size = 32"),
    ];
    let mut args: Vec<String> = vec!["localization".into(), "--quiet".into(), "--weights".into(), weights.display().to_string()];
    for (m, p) in methods {
        let path = dir.path().join(format!("live-{m}.toml"));
        let text = localization_recipe(m, p)
            .replace("mode = \"frozen\"", "mode = \"end-to-end\"")
            .replace("seed = 0", "seed = 0\nbackbone_lr_mult = 0.01")
            .replace("resize = 64\ncrop = 64", "resize = 48\ncrop = 48")
            .replace("= 32", "= 24");
        std::fs::write(&path, text).expect("recipe");
        args.extend(["--recipe".into(), path.display().to_string()]);
    }
    let (runs, results) = (dir.path().join("runs"), dir.path().join("results"));
    args.extend(["--runs-dir".into(), runs.display().to_string(), "--results-dir".into(), results.display().to_string()]);
    args.extend(["--data-root".into(), data.display().to_string()]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&fgia(&argv));
    for (m, _) in methods {
        let r = fgia_core::record::ResultRecord::read(&results.join(format!("live-{m}.json"))).expect("record");
        let ep = fgia_core::record::read_metrics(&runs.join(format!("live-{m}")).join("end-to-end")).expect("metrics");
        assert_eq!(r.protocol.mode, fgia_core::record::FeatureMode::EndToEnd, "{m}");
        assert_eq!(r.protocol.checkpoint, "last epoch", "{m}");
        assert!(r.protocol.optimizer.contains("backbone at 0.01 times the rate"), "{m}: {}", r.protocol.optimizer);
        assert!(r.protocol.train_transform.starts_with("decoded every epoch"), "{m}: {}", r.protocol.train_transform);
        assert!(!r.deviations.iter().any(|d| d.contains("cached")), "{m}: {:?}", r.deviations);
        assert!(r.protocol.trained_layers.contains("backbone"), "{m}: {}", r.protocol.trained_layers);
        assert_eq!(r.metrics["test_images"], 12.0, "{m}: {:?}", r.metrics);
        assert!((0.0..=100.0).contains(&r.metrics["top1"]), "{m}: {:?}", r.metrics);
        assert_eq!(r.metrics["looks_drawn"], 8.0, "{m}");
        // The whole pipeline learns: training accuracy through the live backbone and the crops
        // (the main prediction of each method) ends at least twice chance. (Test accuracy after a
        // dozen steps on these synthetic images is not a measure: EfficientNet's batch norm
        // momentum of 0.01 keeps the running statistics at ImageNet's, as the encoding test says.)
        assert_eq!(ep.len(), 4, "{m}");
        assert!(ep[3].train_top1 >= 2.0 * r.metrics["chance"], "{m}: {:?}", ep.iter().map(|e| e.train_top1).collect::<Vec<_>>());
    }
}
