//! A real Slurm sweep: `cargo xtask reproduce table4 --smoke --slurm` on the running cluster
//! (`scripts/slurm-local.sh start` brings up a one-machine one), four settings on a small CUB
//! subset. One task is cancelled with `scancel` after its second checkpoint; the resubmission
//! runs that task alone, resumes it, and its record equals an uninterrupted run's.
//!
//! Skipped, saying why, where no Slurm answers; `FGIA_REQUIRE_SLURM=1` (CI) makes that a failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn xtask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask")).args(args).env("FGIA_BIN", fgia_bin()).output().expect("xtask runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The release `fgia` built beside this xtask.
fn fgia_bin() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_xtask")).with_file_name("fgia")
}

fn run(cmd: &str, args: &[&str]) -> Option<String> {
    let o = Command::new(cmd).args(args).output().ok()?;
    o.status.success().then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Why this machine cannot run the test, if it cannot.
fn missing() -> Option<String> {
    match run("sinfo", &["-h", "-o", "%T"]) {
        None => return Some("no Slurm cluster answers `sinfo` (start one with `scripts/slurm-local.sh start`)".into()),
        Some(s) if !s.lines().any(|l| ["idle", "mixed", "allocated"].contains(&l.trim())) => {
            return Some(format!("no usable Slurm node (sinfo: {})", s.trim()));
        }
        Some(_) => {}
    }
    if run("sacct", &["-n", "-X", "-j", "1"]).is_none() {
        return Some("Slurm accounting (`sacct`) does not answer".into());
    }
    if !fgia_bin().is_file() {
        return Some(format!("{} is not built", fgia_bin().display()));
    }
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace");
    if fgia_core::datasets::shared_data_dir(ws).is_none_or(|d| !d.join("cub-mini/images.txt").is_file()) {
        return Some("no shared cub-mini (../shared/data or FGIA_DATA)".into());
    }
    if !fgia_core::paths::weights_dir().join("efficientnet-lite0-57934424.pth").is_file() {
        return Some("no EfficientNet-Lite0 weights (cargo xtask weights fetch efficientnet-lite0)".into());
    }
    None
}

/// Waits until Slurm holds no task of `job`.
fn wait_for(job: &str, limit: Duration) {
    let start = Instant::now();
    loop {
        let queued = run("squeue", &["-h", "-r", "-j", job, "-o", "%i"]).unwrap_or_default();
        if queued.trim().is_empty() {
            return;
        }
        assert!(start.elapsed() < limit, "job {job} still queued after {limit:?}: {queued}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn job_id(out: &str) -> String {
    let line = out.lines().find(|l| l.starts_with("submitted job array ")).unwrap_or_else(|| panic!("no submission in:\n{out}"));
    line["submitted job array ".len()..].split_whitespace().next().expect("job id").to_string()
}

/// The newest checkpoint epoch of a run folder.
fn checkpoint_epoch(run: &Path) -> usize {
    std::fs::read_dir(run.join("checkpoints"))
        .map(|rd| rd.filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("epoch-")?.parse().ok()).max().unwrap_or(0))
        .unwrap_or(0)
}

#[test]
fn a_slurm_sweep_runs_each_setting_once_and_a_cancelled_task_resumes_to_the_same_record() {
    if let Some(why) = missing() {
        assert!(!std::env::var("FGIA_REQUIRE_SLURM").is_ok_and(|v| v == "1"), "FGIA_REQUIRE_SLURM=1 but {why}");
        eprintln!("skipped: {why}");
        return;
    }
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace");
    let cub = fgia_core::datasets::shared_data_dir(ws).expect("shared data").join("cub-mini");
    let dir = tempfile::tempdir().expect("tmp");
    let (tiny, results) = (dir.path().join("tiny"), dir.path().join("results"));
    let (tiny_s, results_s) = (tiny.to_str().expect("utf8"), results.to_str().expect("utf8"));
    let made = xtask(&["datasets", "subset", "--root", cub.to_str().expect("utf8"), "--out", tiny_s, "--classes", "1-8", "--per-split", "8"]);
    assert!(made.status.success(), "{}", text(&made));
    let submit = || xtask(&["reproduce", "table4", "--smoke", "--slurm", "--cpus-per-task", "1", "--root", tiny_s, "--results", results_s]);
    let started = Instant::now();

    // 1. Four settings, one array task each.
    let first = text(&submit());
    assert!(first.contains("(4 tasks:"), "{first}");
    let job = job_id(&first);
    let key = "smoke-efficientnet-lite0-112px-seed0";
    let run_dir = results.join("runs/table4").join(key);
    let result = results.join("table4").join(format!("{key}.json"));
    // 2. Cancel the 112 px task once it has two checkpoints.
    let t = Instant::now();
    while checkpoint_epoch(&run_dir) < 2 {
        assert!(t.elapsed() < Duration::from_secs(600), "no second checkpoint in {}", run_dir.display());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(run("scancel", &[&format!("{job}_0")]).is_some(), "scancel");
    let at_cancel = checkpoint_epoch(&run_dir);
    wait_for(&job, Duration::from_secs(900));
    assert!(!result.exists(), "the cancelled task ran to the end before the cancel landed (epoch {at_cancel})");
    let status = text(&xtask(&["sweep", "status", "--results", results_s]));
    eprintln!("after the cancel (at checkpoint {at_cancel}):\n{status}");
    let state_of =
        |status: &str, k: &str| status.lines().find(|l| l.trim_start().starts_with(k)).map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string());
    assert_eq!(state_of(&status, key).as_deref(), Some("cancelled"), "{status}");
    for px in [140, 168, 196] {
        assert_eq!(state_of(&status, &format!("smoke-efficientnet-lite0-{px}px-seed0")).as_deref(), Some("finished"), "{status}");
    }
    assert!(status.contains("tail of") && status.contains("CANCELLED"), "the cancelled task's log tail: {status}");

    // 3. The resubmission runs only the cancelled setting, from its checkpoint.
    let second = text(&submit());
    assert!(second.contains("(1 tasks: smoke-efficientnet-lite0-112px-seed0)"), "{second}");
    assert_eq!(second.matches("finished earlier").count(), 3, "{second}");
    assert!(second.contains(&format!("{key}: resuming")), "{second}");
    let job2 = job_id(&second);
    wait_for(&job2, Duration::from_secs(900));
    let log = std::fs::read_to_string(results.join("sweeps/table4-smoke/logs").join(format!("{job2}_0.out"))).expect("log of the resumed task");
    assert!(log.contains("epoch 15/15"), "{log}");
    assert!(!log.contains("epoch 1/15:"), "the resumed task started over:\n{log}");
    let status = text(&xtask(&["sweep", "status", "--results", results_s]));
    eprintln!("after the resubmission:\n{status}");
    assert!(status.contains("4 settings (4 finished)"), "{status}");
    let sweep_s = started.elapsed().as_secs_f64();

    // 4. The same setting uninterrupted, with the task's one thread: the same record.
    let reference = dir.path().join("reference.json");
    let recipe = results.join("runs/table4").join(format!("{key}.recipe.toml"));
    let out = Command::new(fgia_bin())
        .args(["train", "--run-dir"])
        .arg(dir.path().join("reference-run"))
        .args(["--recipe", recipe.to_str().expect("utf8"), "--data-root", tiny_s, "--quiet", "--result", reference.to_str().expect("utf8")])
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .expect("fgia");
    assert!(out.status.success(), "{}", text(&out));
    let (resumed, whole) =
        (fgia_core::record::ResultRecord::read(&result).expect("resumed"), fgia_core::record::ResultRecord::read(&reference).expect("reference"));
    assert_eq!(resumed.metrics, whole.metrics, "the resumed record differs from the uninterrupted run's");
    assert_eq!((&resumed.protocol, &resumed.deviations), (&whole.protocol, &whole.deviations));
    let (a, b) =
        (fgia_core::record::read_metrics(&run_dir).expect("metrics"), fgia_core::record::read_metrics(&dir.path().join("reference-run")).expect("metrics"));
    assert_eq!(a.len(), 15);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((x.epoch, x.train_loss, x.train_top1, x.grad_norm, x.lr), (y.epoch, y.train_loss, y.train_top1, y.grad_norm, y.lr), "epoch {}", x.epoch);
    }
    eprintln!(
        "sweep: 4 settings, task 0 cancelled at checkpoint {at_cancel} and resumed; top-1 {:.2} % resumed = {:.2} % uninterrupted; sweep {sweep_s:.0} s",
        resumed.metrics["top1"], whole.metrics["top1"]
    );
}
