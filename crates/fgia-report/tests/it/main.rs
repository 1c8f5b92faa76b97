//! Renders a report from fixture records and checks what the pages say.

use std::collections::BTreeMap;
use std::path::Path;

use fgia_core::record::{EpochMetrics, Protocol, RECORD_SCHEMA, ResultRecord};

fn record(run_dir: &Path, res: u32, paper: u32, seed: u64, top1: f64) -> ResultRecord {
    ResultRecord {
        schema: RECORD_SCHEMA,
        table: "table4".into(),
        method: "Vanilla fine-tuning".into(),
        dataset: "CUB-200-2011".into(),
        data: "cub-mini (40 classes)".into(),
        backbone: "EfficientNet-Lite0".into(),
        resolution: res,
        paper_resolution: Some(paper),
        paper_backbone: None,
        section: None,
        protocol: Protocol {
            split: "official train_test_split.txt".into(),
            train_transform: "resize 128, random crop 112".into(),
            eval_transform: "resize 128, centre crop 112".into(),
            tta: "none".into(),
            checkpoint: "last epoch".into(),
            seeds: vec![seed],
            epochs: 3,
            batch_size: 16,
            optimizer: "SGD".into(),
            trained_layers: "head".into(),
            mode: fgia_core::record::FeatureMode::Frozen,
            trained_from_stage: None,
            loss: None,
            data_parallel: None,
        },
        seed,
        metrics: BTreeMap::from([("top1".to_string(), top1)]),
        deviations: vec!["EfficientNet-Lite0 <instead> of ResNet-50".into()],
        git_revision: "abc123".into(),
        burn_version: "0.21.0".into(),
        device: "cpu".into(),
        wall_time_s: 12.0,
        created_utc: "2026-11-27T00:00:00Z".into(),
        run_dir: run_dir.display().to_string(),
    }
}

#[test]
fn table4_page_shows_paper_ours_delta_and_deviations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let results = dir.path().join("results");
    let run = results.join("runs/table4/a");
    std::fs::create_dir_all(&run).expect("mkdir");
    let lines: String = (1..=3)
        .map(|e| {
            serde_json::to_string(&EpochMetrics {
                epoch: e,
                train_loss: 3.0 / e as f64,
                train_top1: 20.0 * e as f64,
                lr: 0.01,
                grad_norm: 1.0,
                test_top1: None,
                seconds: 1.0,
                skipped_images: 0,
            })
            .expect("json")
                + "\n"
        })
        .collect();
    std::fs::write(run.join("metrics.jsonl"), lines).expect("metrics");
    record(&run, 112, 224, 0, 50.0).write(&results.join("table4/s0.json")).expect("write");
    record(&run, 112, 224, 1, 52.0).write(&results.join("table4/s1.json")).expect("write");
    record(&run, 140, 280, 0, 60.0).write(&results.join("table4/t0.json")).expect("write");
    std::fs::write(results.join("table4/broken.json"), "{").expect("write");
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/reference/survey-results.csv");
    let out = dir.path().join("reports");
    let s = fgia_report::render(&results, &reference, &out).expect("renders");
    assert_eq!(s.records, 3);
    assert_eq!(s.unreadable.len(), 1, "the broken record is reported, not fatal");

    let t4 = std::fs::read_to_string(out.join("table4.html")).expect("table4.html");
    // Paper values with their provenance, for all four sizes.
    for v in ["81.6", "83.3", "85.0", "85.6"] {
        assert!(t4.contains(v), "paper value {v}");
    }
    assert!(t4.contains("survey (TPAMI text)"));
    // 224: mean 51.00 ± sample std 1.41 over two seeds; delta 51.0 - 81.6 = -30.6.
    assert!(t4.contains("<b>51.00</b> ± 1.41"), "{t4}");
    assert!(t4.contains("-30.6"));
    // 280: one seed, delta -23.3; 336 and 392 were not run.
    assert!(t4.contains("<b>60.00</b> (one seed)") && t4.contains("-23.3"));
    assert_eq!(t4.matches("not run").count(), 2);
    // Deviations are shown, escaped.
    assert!(t4.contains("EfficientNet-Lite0 &lt;instead&gt; of ResNet-50"));
    assert!(t4.contains("table4-accuracy.svg") && out.join("table4-accuracy.svg").is_file());

    let index = std::fs::read_to_string(out.join("index.html")).expect("index");
    assert!(index.contains("table4.html") && index.contains("could not be read"));
    let run_page = std::fs::read_to_string(out.join("run-table4-s0.html")).expect("run page");
    assert!(run_page.contains("Training curves") && out.join("run-table4-s0-loss.svg").is_file());
    assert!(run_page.contains("abc123"));
}

#[test]
fn an_empty_results_folder_renders_a_hint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/reference/survey-results.csv");
    let out = dir.path().join("reports");
    let s = fgia_report::render(&dir.path().join("none"), &reference, &out).expect("renders");
    assert_eq!(s.records, 0);
    let index = std::fs::read_to_string(out.join("index.html")).expect("index");
    assert!(index.contains("cargo xtask reproduce table4 --smoke"));
}

#[test]
fn table2_page_groups_methods_like_the_survey_with_paper_ours_and_delta() {
    let dir = tempfile::tempdir().expect("tempdir");
    let results = dir.path().join("results");
    let run = results.join("runs/table2/a");
    std::fs::create_dir_all(&run).expect("mkdir");
    let mk = |method: &str, dataset: &str, seed: u64, top1: f64| {
        let mut r = record(&run, 224, 448, seed, top1);
        r.table = "table2".into();
        r.method = method.into();
        r.dataset = dataset.into();
        r.deviations = vec!["EfficientNet-Lite0 (ImageNet) instead of resnet50: the feature map is its last stage".into()];
        r.paper_backbone = Some("resnet50".into());
        r.metrics.insert("chance".into(), 2.5);
        r
    };
    mk("iSQRT-COV (fast MPN-COV)", "CUB-200-2011", 0, 70.0).write(&results.join("table2/a.json")).expect("write");
    mk("iSQRT-COV (fast MPN-COV)", "CUB-200-2011", 1, 72.0).write(&results.join("table2/b.json")).expect("write");
    mk("DCL", "Stanford-Cars", 0, 40.0).write(&results.join("table2/c.json")).expect("write");
    mk("CBP (Random Maclaurin)", "CUB-200-2011", 0, 60.0).write(&results.join("table2/d.json")).expect("write");
    let mut b = mk("B-CNN", "CUB-200-2011", 0, 74.0);
    // The paper backbone comes from the record's field, not from the deviation text.
    b.deviations = vec!["another backbone".into()];
    b.paper_backbone = Some("vgg16".into());
    b.write(&results.join("table2/e.json")).expect("write");
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/reference/survey-results.csv");
    let out = dir.path().join("reports");
    fgia_report::render(&results, &reference, &out).expect("renders");
    let t2 = std::fs::read_to_string(out.join("table2.html")).expect("table2.html");
    // Grouped like the survey: the whole recognition table, §5.1 (not run yet) then §5.2.
    let s51: Vec<usize> = ["§5.1.1", "§5.1.2", "§5.1.3", "§5.1.4"].iter().map(|s| t2.find(s).unwrap_or_else(|| panic!("{s}"))).collect();
    let (a, b, c) = (t2.find("§5.2.1").expect("5.2.1"), t2.find("§5.2.2").expect("5.2.2"), t2.find("§5.2.3").expect("5.2.3"));
    assert!(s51.windows(2).all(|w| w[0] < w[1]) && s51[3] < a && a < b && b < c);
    assert!(t2[s51[0]..a].contains("Part-based R-CNN") && t2[s51[0]..a].contains("not run"), "§5.1 rows listed as not run");
    // iSQRT-COV with ResNet-50 on CUB: paper 88.1 (README provenance); ours 71.0 ± 1.4 over two
    // seeds; delta -17.1.
    assert!(t2.contains("88.1") && t2.contains("<b>71.0</b> ± 1.4") && t2.contains("-17.1"), "{t2}");
    // DCL on Cars: paper 94.5 is unverified: shown marked, with no delta.
    assert!(t2.contains("94.5") && t2.contains("UNVERIFIED") && !t2.contains("-54.5"), "{t2}");
    // A method the survey does not list is shown as such; methods not run say so.
    assert!(t2.contains("CBP (Random Maclaurin)") && t2.contains("not in the survey's table"));
    assert!(t2.contains("not run"));
    // A symmetric B-CNN standing in for VGG-16 is compared with the [D,D] row (84.0), not the
    // [D,M] one (84.1): delta -10.0.
    assert!(t2.contains("VGG-D + VGG-D") && t2.contains("-10.0"), "{t2}");
    assert!(t2.contains("Deviations from the papers") && t2.contains("instead of resnet50"));
    // The protocol table shows the recorded feature mode.
    assert!(t2.contains("<th>Mode</th>") && t2.contains("<td>frozen</td>"), "mode column");
    let index = std::fs::read_to_string(out.join("index.html")).expect("index");
    assert!(index.contains("table2.html"));
}

#[test]
fn hostile_table_names_and_file_names_stay_escaped_and_inside_the_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let results = dir.path().join("results");
    let run = results.join("runs/x");
    std::fs::create_dir_all(&run).expect("mkdir");
    let mut script = record(&run, 112, 224, 0, 50.0);
    script.table = "\"><script>alert(1)</script>".into();
    script.method = "<img src=x onerror=alert(2)>".into();
    script.write(&results.join("table4/script.json")).expect("write");
    let mut escape = record(&run, 112, 224, 1, 51.0);
    escape.table = "/../../../escaped/p".into();
    escape.write(&results.join("table4/escape.json")).expect("write");
    // A record file whose own name carries markup.
    record(&run, 112, 224, 2, 52.0).write(&results.join("table4/a\"><svg onload=alert(3)>.json")).expect("write");
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/reference/survey-results.csv");
    let out = dir.path().join("deep/reports");
    fgia_report::render(&results, &reference, &out).expect("renders");
    // Nothing was written outside `reports/`.
    assert!(!dir.path().join("escaped").exists() && !dir.path().join("deep/escaped").exists());
    let mut outside: Vec<String> =
        std::fs::read_dir(dir.path().join("deep")).expect("ls").map(|e| e.expect("e").file_name().to_string_lossy().into_owned()).collect();
    outside.sort();
    assert_eq!(outside, ["reports"]);
    for e in std::fs::read_dir(&out).expect("ls") {
        let name = e.expect("e").file_name().to_string_lossy().into_owned();
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c)), "{name}");
        let text = std::fs::read_to_string(out.join(&name)).unwrap_or_default();
        assert!(!text.contains("<script>") && !text.contains("<img src=x") && !text.contains("<svg onload"), "{name} carries live markup");
    }
    let index = std::fs::read_to_string(out.join("index.html")).expect("index");
    assert!(index.contains("&lt;script&gt;"), "the table name is shown, escaped");
}

#[test]
fn table6_page_keeps_survey_and_released_rows_apart_and_draws_acc_at_k() {
    let dir = tempfile::tempdir().expect("tempdir");
    let results = dir.path().join("results");
    let run = results.join("runs/table6/a");
    std::fs::create_dir_all(&run).expect("mkdir");
    let mk = |method: &str, loss: &str, seed: u64, acc1: f64| {
        let mut r = record(&run, 225, 225, seed, 0.0);
        r.table = "table6".into();
        r.method = method.into();
        r.dataset = "QMUL-Shoe".into();
        r.data = "qmul-shoes-v1 (304 train / 115 test pairs)".into();
        r.metrics = (1..=20).map(|k| (format!("acc@{k}"), (acc1 + 3.0 * (k - 1) as f64).min(100.0))).collect();
        r.metrics.extend([("chance@1".to_string(), 100.0 / 115.0), ("triplets_correct".to_string(), 66.0), ("acc@1_1view".to_string(), acc1 - 4.0)]);
        r.protocol.loss = Some(loss.into());
        r
    };
    mk("Triplet Sketch-a-Net", "triplet loss on squared Euclidean distances", 0, 25.0).write(&results.join("table6/a.json")).expect("write");
    mk("Triplet Sketch-a-Net", "triplet loss on squared Euclidean distances", 1, 27.0).write(&results.join("table6/b.json")).expect("write");
    mk("DSSA (HOLEF)", "triplet loss on HOLEF", 0, 38.0).write(&results.join("table6/c.json")).expect("write");
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/reference/survey-results.csv");
    let out = dir.path().join("reports");
    fgia_report::render(&results, &reference, &out).expect("renders");
    let t6 = std::fs::read_to_string(out.join("table6.html")).expect("table6.html");
    // The survey's row (39.1) and the released model on the cleaned data (52.17), apart.
    assert!(t6.contains("39.10") && t6.contains("52.17") && t6.contains("released model, cleaned re-release"), "{t6}");
    // Ours over two seeds: 26.0 ± 1.4; Δ against the released model: 26.0 − 52.17 = −26.2.
    assert!(t6.contains("<b>26.0</b> ± 1.4") && t6.contains("-26.2<br><span class=\"muted\">vs released model"), "{t6}");
    // DSSA has no released model: Δ against the survey's ICCV 2017 row (61.7), not BMVC 2016.
    assert!(t6.contains("-23.7<br><span class=\"muted\">vs survey"), "{t6}");
    assert!(t6.contains("triplet loss on HOLEF"), "the loss of each row");
    // One chart per set we ran, and sets we did not run listed with the survey's rows only.
    assert!(out.join("table6-acck-0.svg").is_file());
    let svg = std::fs::read_to_string(out.join("table6-acck-0.svg")).expect("svg");
    assert!(svg.contains("DSSA (HOLEF) (ours)") && svg.contains("chance"), "legend");
    assert!(t6.contains("QMUL-Handbag") && t6.contains("not run on this set"));
    let index = std::fs::read_to_string(out.join("index.html")).expect("index");
    assert!(index.contains("table6.html") && index.contains("3 runs"));
}

#[test]
fn the_environment_page_shows_each_devices_checks_and_step_times() {
    use fgia_core::record::{DeviceAgreement, EnvironmentReport, StepTiming};
    let dir = tempfile::tempdir().expect("tmp");
    let results = dir.path().join("results");
    std::fs::create_dir_all(results.join("environment")).expect("mkdir");
    let check = |name: &str, f: f64| DeviceAgreement {
        name: name.into(),
        kind: "pooling".into(),
        shape: vec![4, 256, 14, 14],
        forward_rel: f,
        backward_rel: f / 2.0,
        tolerance: 2e-3,
        pass: f <= 2e-3,
    };
    let timing = |side: usize, ips: f64| StepTiming { backbone: "resnet50".into(), side, batch: 16, median_ms: 16_000.0 / ips, images_per_s: ips, steps: 5 };
    let report = EnvironmentReport {
        device: "cuda:0 (burn-cuda)".into(),
        reference: "burn-flex on the CPU".into(),
        burn_version: "0.21.0".into(),
        git_revision: "abc".into(),
        created_utc: "2026-12-07T00:00:00Z".into(),
        quick: false,
        checks: vec![check("bcnn", 1e-6), check("mpn-cov", 3e-2)],
        timings: vec![timing(224, 400.0), timing(448, 110.0)],
    };
    fgia_core::record::write_json_atomic(&results.join("environment/gpu-cuda.json"), &report).expect("write");
    // A record file elsewhere keeps rendering; the environment file is not taken for a record.
    let out = dir.path().join("reports");
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/reference/survey-results.csv");
    let s = fgia_report::render(&results, &reference, &out).expect("renders");
    assert!(s.unreadable.is_empty(), "{:?}", s.unreadable);
    let page = std::fs::read_to_string(out.join("environment.html")).expect("page");
    assert!(page.contains("cuda:0 (burn-cuda)") && page.contains("1 of 2 checks within tolerance"), "{page}");
    assert!(page.contains("mpn-cov") && page.contains("differs") && page.contains("3.0e-2"), "{page}");
    assert!(page.contains("448 px") && page.contains("110.0") && page.contains("environment-0.svg"), "{page}");
    assert!(out.join("environment-0.svg").is_file());
    assert!(std::fs::read_to_string(out.join("index.html")).expect("index").contains("environment.html"));
}

#[test]
fn table3_page_marks_what_each_row_is_draws_both_charts_and_computes_no_delta() {
    let dir = tempfile::tempdir().expect("tempdir");
    let results = dir.path().join("results");
    let run = results.join("runs/table3/a");
    std::fs::create_dir_all(&run).expect("mkdir");
    let mut n = 0;
    let mut put = |r: ResultRecord| {
        n += 1;
        r.write(&results.join(format!("table3/r{n}.json"))).expect("write");
    };
    for (method, at40) in [("Cross-entropy (noisy labels)", 41.0), ("Co-teaching", 50.0), ("Peer-learning", 55.0)] {
        for (rate, pair, top1) in [(0.0, None, 70.0), (20.0, Some(1.0), 62.0), (40.0, Some(1.0), at40), (20.0, Some(0.0), 66.0), (40.0, Some(0.0), at40 + 3.0)]
        {
            let mut r = record(&run, 224, 224, 0, top1);
            r.table = "table3".into();
            r.method = method.into();
            r.section = Some("5.3.1".into());
            r.data = format!("cub-mini; {rate:.0} % noise {pair:?} (synthetic)");
            r.metrics.extend([("noise_rate".to_string(), rate), ("chance".to_string(), 2.5)]);
            if let Some(p) = pair {
                r.metrics.insert("noise_pair_flip".into(), p);
            }
            put(r);
        }
    }
    let mut q = record(&run, 224, 224, 0, 70.0);
    q.table = "table3".into();
    q.method = "20 questions (attributes)".into();
    q.section = Some("5.3.3".into());
    q.metrics.insert("questions".into(), 20.0);
    for t in 0..=20 {
        q.metrics.insert(format!("acc_q{t}_vision"), 70.0);
        q.metrics.insert(format!("acc_q{t}_random"), 70.0 + t as f64);
        q.metrics.insert(format!("acc_q{t}_info_gain"), (70.0 + 3.0 * t as f64).min(100.0));
    }
    put(q);
    let mut geo = record(&run, 224, 224, 0, 80.0);
    geo.table = "table3".into();
    geo.method = "Geo prior x image classifier (synthetic locations)".into();
    geo.section = Some("5.3".into());
    geo.metrics.insert("top1_image_only".into(), 75.0);
    put(geo);
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/reference/survey-results.csv");
    let out = dir.path().join("reports");
    fgia_report::render(&results, &reference, &out).expect("renders");
    let t3 = std::fs::read_to_string(out.join("table3.html")).expect("table3.html");
    // The survey's rows with provenance; an unverified one is marked.
    assert!(t3.contains("KERL") && t3.contains("87.0") && t3.contains("survey authors' leaderboard"), "{t3}");
    assert!(t3.contains("class=\"unverified\">UNVERIFIED"), "Krause et al. is unverified: {t3}");
    // Ours, with what the data is; no Δ anywhere.
    assert!(t3.contains("real images, synthetic label noise") && t3.contains("simulated users"), "{t3}");
    assert!(!t3.contains("Δ top-1") && !t3.contains("vs survey"), "no delta: {t3}");
    // The noise table and chart: Peer-learning's 55.0 with pair flips and 58.0 with symmetric
    // noise at 40 %, in that order of columns.
    assert!(t3.contains("40 % pair flips") && t3.contains("40 % symmetric"), "{t3}");
    let peer_row = t3.split("<tr><td>Peer-learning</td>").nth(1).and_then(|r| r.split("</tr>").next()).expect("peer row");
    assert!(peer_row.find("<b>55.0</b>").expect("55.0") < peer_row.find("<b>58.0</b>").expect("58.0"), "{peer_row}");
    let svg = std::fs::read_to_string(out.join("table3-noise.svg")).expect("noise chart");
    assert!(svg.contains("Peer-learning, pair flips") && svg.contains("Co-teaching, symmetric"), "legend");
    // The 20-questions chart and table: information gain at 10 questions is 100.0.
    let svg = std::fs::read_to_string(out.join("table3-questions.svg")).expect("questions chart");
    assert!(svg.contains("information gain") && svg.contains("random questions"), "legend");
    assert!(t3.contains("<b>100.0</b>"), "{t3}");
    // The rows that need data, each with its reader.
    assert!(t3.contains("Needs data") && t3.contains("read_captions") && t3.contains("read_inat"), "{t3}");
    // The geo prior's row says its locations are synthetic; KERL runs, so it needs no data.
    assert!(t3.contains("SYNTHETIC locations") && t3.contains("no offline benchmark data"), "{t3}");
    // Its image classifier alone beside it, with the gain: 80.0 against 75.0.
    let extra = t3.split("What the extra information adds").nth(1).and_then(|s| s.split("</table>").next()).expect("extra-information table");
    assert!(extra.contains("75.0") && extra.contains("<b>80.0</b>") && extra.contains("+5.0"), "{extra}");
    let needs = t3.split("<h2>Needs data</h2>").nth(1).and_then(|s| s.split("</table>").next()).expect("needs-data table");
    assert!(!needs.contains("KERL"), "{needs}");
    let index = std::fs::read_to_string(out.join("index.html")).expect("index");
    assert!(index.contains("table3.html") && index.contains("17 runs"), "{index}");
}
