//! Where a reproduction's settings run: here, one `fgia` process after another ([`Runner::Local`]),
//! or on a Slurm cluster as one job array with one task per setting ([`Runner::Slurm`]).
//!
//! A Slurm sweep lives in `<results>/sweeps/<table>-<profile>/`:
//!
//! - `sweep.json`: every setting ever submitted (its result record and run folder) and every
//!   submission (job id, array index of each setting); `cargo xtask sweep status` reads it;
//! - `array-<n>.sbatch`: the script of submission `n`, kept as submitted;
//! - `bin/fgia`: the release binary the tasks run, copied at submission so a rebuild does not
//!   change pending tasks;
//! - `logs/<job>_<index>.out`: each task's output.
//!
//! Tasks need no coordination: each writes its own run folder and its own result record
//! (`write_atomic`, distinct names). A resubmission plans again: finished settings (a readable
//! record) are left out and interrupted ones resume from their newest checkpoint, so after a
//! `scancel` only the cancelled settings run again.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// The `--slurm` options of `reproduce`.
#[derive(Debug, Clone, Default)]
pub struct SlurmOptions {
    /// `--partition`.
    pub partition: Option<String>,
    /// `--gpus-per-task`.
    pub gpus_per_task: Option<u32>,
    /// `--cpus-per-task`.
    pub cpus_per_task: Option<u32>,
    /// `--time` (Slurm's formats: `minutes`, `hh:mm:ss`, `d-hh`).
    pub time: Option<String>,
    /// `--account`.
    pub account: Option<String>,
    /// Print the script instead of submitting it.
    pub dry_run: bool,
}

/// One setting as a task: the `fgia` arguments that run it, and where it writes.
#[derive(Debug, Clone)]
pub struct Task {
    /// The setting's key (`smoke-efficientnet-lite0-112px-seed0`).
    pub key: String,
    /// Arguments of `fgia`.
    pub args: Vec<OsString>,
    /// Its result record.
    pub result: PathBuf,
    /// Its run folder.
    pub run_dir: PathBuf,
}

/// Runs the settings of a reproduction.
pub enum Runner {
    /// Here and now, in order.
    Local {
        /// The `fgia` binary.
        fgia: PathBuf,
        /// Code revision for the records.
        rev: String,
    },
    /// Collected, then submitted as one job array by [`Runner::finish`].
    Slurm {
        /// The `fgia` binary (copied into the sweep folder at submission).
        fgia: PathBuf,
        /// Code revision for the records.
        rev: String,
        /// Submission options.
        options: SlurmOptions,
        /// The settings to submit.
        tasks: Vec<Task>,
    },
}

impl Runner {
    /// Runs (or collects) `fgia <args>` for one setting.
    pub fn run(&mut self, task: Task) -> Result<()> {
        match self {
            Runner::Local { fgia, rev } => {
                let status =
                    Command::new(&*fgia).args(&task.args).env("FGIA_GIT_REV", &*rev).status().with_context(|| format!("running {}", fgia.display()))?;
                if !status.success() {
                    bail!("{} failed ({status}); rerun the same command to resume it (finished settings are skipped)", task.key);
                }
                Ok(())
            }
            Runner::Slurm { tasks, .. } => {
                tasks.push(task);
                Ok(())
            }
        }
    }

    /// Runs several recipes of one `fgia <command>` on one dataset: here in one process (they
    /// share the backbone's cached maps), on Slurm one task each.
    #[allow(clippy::too_many_arguments)]
    pub fn run_recipes(&mut self, device: &str, command: &str, runs: &Path, results: &Path, root: &Path, recipes: &[PathBuf]) -> Result<()> {
        let base = |recipes: &[PathBuf]| -> Vec<OsString> {
            let mut a: Vec<OsString> =
                vec!["--device".into(), device.into(), command.into(), "--runs-dir".into(), runs.into(), "--results-dir".into(), results.into()];
            a.extend(["--data-root".into(), root.into(), "--resume".into()]);
            for p in recipes {
                a.push("--recipe".into());
                a.push(p.into());
            }
            a
        };
        match self {
            Runner::Local { .. } => {
                let args = base(recipes);
                let key = format!("`fgia {command}` on {} ({} recipes)", root.display(), recipes.len());
                self.run(Task { key, args, result: PathBuf::new(), run_dir: PathBuf::new() })
            }
            Runner::Slurm { .. } => {
                for p in recipes {
                    let key = recipe_key(p)?;
                    let task = Task { args: base(std::slice::from_ref(p)), result: results.join(format!("{key}.json")), run_dir: runs.join(&key), key };
                    self.run(task)?;
                }
                Ok(())
            }
        }
    }

    /// Whether the settings run elsewhere (the report waits for them).
    pub fn is_slurm(&self) -> bool {
        matches!(self, Runner::Slurm { .. })
    }

    /// Submits the collected tasks as one job array (Slurm), or does nothing (local).
    pub fn finish(self, results: &Path, sweep_name: &str, ws: &Path) -> Result<()> {
        let Runner::Slurm { fgia, rev, options, tasks } = self else { return Ok(()) };
        let dir = results.join("sweeps").join(sweep_name);
        if tasks.is_empty() {
            println!("{sweep_name}: every setting has its result record; nothing to submit (cargo xtask sweep status --results {})", results.display());
            return Ok(());
        }
        let mut state = SweepState::read(&dir)?;
        let n = state.submissions.len();
        let script_path = dir.join(format!("array-{n}.sbatch"));
        let bin = dir.join("bin").join("fgia");
        let script = sbatch_script(sweep_name, &options, &bin, &dir.join("logs"), &rev, &tasks);
        if options.dry_run {
            println!("{script}");
            eprintln!("(--dry-run: not submitted; {} tasks)", tasks.len());
            return Ok(());
        }
        std::fs::create_dir_all(dir.join("logs"))?;
        std::fs::create_dir_all(dir.join("bin"))?;
        // The binary the tasks run, replaced atomically (a running task keeps its copy).
        let staging = dir.join("bin").join(".fgia.partial");
        std::fs::copy(&fgia, &staging).with_context(|| format!("copying {} into the sweep", fgia.display()))?;
        std::fs::rename(&staging, &bin)?;
        fgia_core::record::write_atomic(&script_path, script.as_bytes())?;
        let out = Command::new("sbatch")
            .arg("--parsable")
            .arg(&script_path)
            .current_dir(ws)
            .output()
            .context("running sbatch (is Slurm installed here? scripts/slurm-local.sh starts a one-machine cluster)")?;
        if !out.status.success() {
            bail!("sbatch {} failed: {}", script_path.display(), String::from_utf8_lossy(&out.stderr).trim());
        }
        let job = String::from_utf8_lossy(&out.stdout).trim().split(';').next().unwrap_or_default().to_string();
        if job.is_empty() || !job.chars().all(|c| c.is_ascii_digit()) {
            bail!("sbatch printed no job id ({:?})", String::from_utf8_lossy(&out.stdout));
        }
        for t in &tasks {
            state.settings.insert(t.key.clone(), SettingFiles { result: t.result.clone(), run_dir: t.run_dir.clone() });
        }
        state.submissions.push(Submission {
            job: job.clone(),
            script: script_path.clone(),
            submitted_utc: fgia_core::record::now_utc_rfc3339(),
            tasks: tasks.iter().map(|t| t.key.clone()).collect(),
        });
        state.write(&dir)?;
        println!(
            "submitted job array {job} ({} tasks: {}) from {}",
            tasks.len(),
            tasks.iter().map(|t| t.key.as_str()).collect::<Vec<_>>().join(", "),
            script_path.display()
        );
        println!("follow it with: cargo xtask sweep status --results {}", results.display());
        println!("when it is done: cargo xtask report --results {}", results.display());
        Ok(())
    }
}

/// The key of a staged recipe (`<key>.recipe.toml`).
fn recipe_key(p: &Path) -> Result<String> {
    let name = p.file_name().and_then(|s| s.to_str()).with_context(|| format!("{}: recipe file name", p.display()))?;
    Ok(name.trim_end_matches(".toml").trim_end_matches(".recipe").to_string())
}

/// Quotes `s` for bash (single quotes).
fn quote(s: &std::ffi::OsStr) -> String {
    let s = s.to_string_lossy();
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=,+".contains(c)) {
        return s.into_owned();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The job-array script: one array index per task, each running the sweep's copy of `fgia`.
fn sbatch_script(name: &str, o: &SlurmOptions, bin: &Path, logs: &Path, rev: &str, tasks: &[Task]) -> String {
    let mut s = String::from("#!/bin/bash\n");
    s += &format!("#SBATCH --job-name=fgia-{name}\n");
    s += &format!("#SBATCH --array=0-{}\n", tasks.len().saturating_sub(1));
    s += &format!("#SBATCH --output={}\n", logs.join("%A_%a.out").display());
    s += "#SBATCH --ntasks=1\n";
    for (flag, v) in [
        ("partition", o.partition.clone()),
        ("account", o.account.clone()),
        ("time", o.time.clone()),
        ("gpus-per-task", o.gpus_per_task.map(|g| g.to_string())),
        ("cpus-per-task", o.cpus_per_task.map(|c| c.to_string())),
    ] {
        if let Some(v) = v {
            s += &format!("#SBATCH --{flag}={v}\n");
        }
    }
    s += &format!(
        "# {name}: one array task per setting, written by `cargo xtask reproduce ... --slurm`.\n\
         # Each task writes its own run folder and result record; a resubmission runs only the\n\
         # unfinished settings, resuming interrupted ones from their newest checkpoint.\n\
         set -euo pipefail\n\
         export FGIA_GIT_REV={}\n\
         # The CPU threads of burn-flex and the image decoder: the task's CPUs.\n\
         export RAYON_NUM_THREADS=\"${{SLURM_CPUS_PER_TASK:-${{SLURM_CPUS_ON_NODE:-1}}}}\"\n\
         case \"$SLURM_ARRAY_TASK_ID\" in\n",
        quote(rev.as_ref())
    );
    for (i, t) in tasks.iter().enumerate() {
        let args: Vec<String> = t.args.iter().map(|a| quote(a)).collect();
        s += &format!("  {i}) key={}; args=({}) ;;\n", quote(t.key.as_ref()), args.join(" "));
    }
    s += "  *) echo \"no task $SLURM_ARRAY_TASK_ID in this array\" >&2; exit 2 ;;\nesac\n";
    s += &format!(
        "echo \"[fgia sweep] task $SLURM_ARRAY_TASK_ID: $key on $(hostname), job ${{SLURM_ARRAY_JOB_ID:-?}}\"\nexec {} \"${{args[@]}}\"\n",
        quote(bin.as_os_str())
    );
    s
}

/// A setting's files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SettingFiles {
    /// Result record.
    pub result: PathBuf,
    /// Run folder.
    pub run_dir: PathBuf,
}

/// One `sbatch`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Submission {
    /// Slurm job id of the array.
    pub job: String,
    /// The script.
    pub script: PathBuf,
    /// When.
    pub submitted_utc: String,
    /// Setting key of each array index.
    pub tasks: Vec<String>,
}

/// `sweep.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SweepState {
    /// Every setting ever submitted.
    pub settings: BTreeMap<String, SettingFiles>,
    /// Every submission, oldest first.
    pub submissions: Vec<Submission>,
}

impl SweepState {
    fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("sweep.json");
        match std::fs::read_to_string(&path) {
            Ok(t) => serde_json::from_str(&t).with_context(|| format!("{}: not a sweep file", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| path.display().to_string()),
        }
    }

    fn write(&self, dir: &Path) -> Result<()> {
        Ok(fgia_core::record::write_json_atomic(&dir.join("sweep.json"), self)?)
    }

    /// The newest array task of `key`: `(job, index)`.
    fn last_task(&self, key: &str) -> Option<(&str, usize)> {
        self.submissions.iter().rev().find_map(|s| s.tasks.iter().position(|k| k == key).map(|i| (s.job.as_str(), i)))
    }
}

/// Slurm's state of each array task (`<job>_<index>`), from `sacct`, else `squeue` (which
/// knows only queued and running tasks). The second value says which answered.
fn scheduler_states(jobs: &[&str]) -> (BTreeMap<String, String>, &'static str) {
    let mut states = BTreeMap::new();
    if jobs.is_empty() {
        return (states, "none");
    }
    let list = jobs.join(",");
    if let Ok(out) = Command::new("sacct").args(["-X", "-P", "-n", "--format=JobID,State", "-j", &list]).output()
        && out.status.success()
    {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some((id, state)) = line.split_once('|') {
                for id in expand_array_ids(id) {
                    states.insert(id, state.split_whitespace().next().unwrap_or(state).to_string());
                }
            }
        }
        return (states, "sacct");
    }
    if let Ok(out) = Command::new("squeue").args(["-h", "-r", "-o", "%i|%T", "-j", &list]).output()
        && out.status.success()
    {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some((id, state)) = line.split_once('|') {
                states.insert(id.to_string(), state.to_string());
            }
        }
        return (states, "squeue (sacct unavailable: finished tasks are read from the run folders)");
    }
    (states, "no Slurm client answered: states from the run folders only")
}

/// The task ids of one `sacct` / `squeue` job id: `18_3` itself; `18_[2-4,7%2]` (tasks not yet
/// started, `%` the throttle) as `18_2, 18_3, 18_4, 18_7`.
fn expand_array_ids(id: &str) -> Vec<String> {
    let Some((job, rest)) = id.split_once("_[") else { return vec![id.to_string()] };
    let inner = rest.trim_end_matches(']');
    let inner = inner.split('%').next().unwrap_or(inner);
    let mut out = Vec::new();
    for part in inner.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
            out.extend((a..=b.min(a + 100_000)).map(|i| format!("{job}_{i}")));
        }
    }
    out
}

/// The last `n` lines of a file.
fn tail(path: &Path, n: usize) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    Some(lines[lines.len().saturating_sub(n)..].join("\n"))
}

/// One setting's state, as `sweep status` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingStatus {
    /// Setting key.
    pub key: String,
    /// `finished`, `running`, `pending`, `failed`, `cancelled`, `interrupted`, `not started`.
    pub state: String,
    /// `<job>_<index>` of its newest task.
    pub task: String,
    /// Epochs done (from the run folder's metrics).
    pub epochs: usize,
    /// The task's log, where it failed.
    pub log: Option<PathBuf>,
}

/// The state of every setting of the sweep in `dir`.
pub fn sweep_status(dir: &Path) -> Result<(Vec<SettingStatus>, &'static str)> {
    let state = SweepState::read(dir)?;
    let jobs: Vec<&str> = state.submissions.iter().map(|s| s.job.as_str()).collect();
    let (slurm, source) = scheduler_states(&jobs);
    let mut out = Vec::new();
    for (key, files) in &state.settings {
        let (task, log) = match state.last_task(key) {
            Some((job, i)) => (format!("{job}_{i}"), Some(dir.join("logs").join(format!("{job}_{i}.out")))),
            None => ("-".into(), None),
        };
        let epochs = fgia_core::record::read_metrics(&files.run_dir).map(|m| m.len()).unwrap_or(0);
        let finished = fgia_core::record::ResultRecord::read(&files.result).is_ok();
        let sched = slurm.get(&task).map(String::as_str);
        let st = match (finished, sched) {
            (true, _) => "finished",
            (false, Some("RUNNING" | "COMPLETING")) => "running",
            (false, Some("PENDING" | "REQUEUED" | "CONFIGURING")) => "pending",
            (false, Some("CANCELLED")) => "cancelled",
            (false, Some("FAILED" | "TIMEOUT" | "OUT_OF_MEMORY" | "NODE_FAIL" | "PREEMPTED" | "BOOT_FAIL" | "DEADLINE")) => "failed",
            (false, Some("COMPLETED")) => "failed",
            (false, _) if files.run_dir.join("recipe.toml").is_file() => "interrupted",
            (false, _) => "not started",
        };
        let failed = matches!(st, "failed" | "cancelled");
        out.push(SettingStatus { key: key.clone(), state: st.to_string(), task, epochs, log: if failed { log } else { None } });
    }
    Ok((out, source))
}

/// `cargo xtask sweep status`: every sweep under `<results>/sweeps/`.
pub fn print_status(results: &Path) -> Result<()> {
    let root = results.join("sweeps");
    let mut dirs: Vec<PathBuf> = match std::fs::read_dir(&root) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.join("sweep.json").is_file()).collect(),
        Err(_) => Vec::new(),
    };
    dirs.sort();
    if dirs.is_empty() {
        println!("no sweeps under {} (submit one with `cargo xtask reproduce <table> --slurm`)", root.display());
        return Ok(());
    }
    for dir in dirs {
        let (settings, source) = sweep_status(&dir)?;
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for s in &settings {
            *counts.entry(s.state.as_str()).or_default() += 1;
        }
        let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
        println!("sweep {name}: {} settings ({}); Slurm states from {source}", settings.len(), summary.join(", "));
        let width = settings.iter().map(|s| s.key.len()).max().unwrap_or(7).max(7);
        println!("  {:<width$}  {:<12} {:<10} {:>6}", "setting", "state", "task", "epochs");
        for s in &settings {
            println!("  {:<width$}  {:<12} {:<10} {:>6}", s.key, s.state, s.task, s.epochs);
        }
        for s in settings.iter().filter(|s| s.log.is_some()) {
            let log = s.log.as_deref().unwrap_or(Path::new(""));
            println!("\n  {} ({}, task {}): tail of {}", s.key, s.state, s.task, log.display());
            match tail(log, 8) {
                Some(t) => {
                    for l in t.lines() {
                        println!("    | {l}");
                    }
                }
                None => println!("    (no log)"),
            }
        }
        if settings.iter().any(|s| s.state != "finished") {
            println!("\n  resubmit the same `reproduce ... --slurm` command to run only the unfinished settings");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_array_script_quotes_every_argument_and_maps_each_index_to_one_setting() {
        let tasks = vec![
            Task {
                key: "a".into(),
                args: vec!["--device".into(), "cpu".into(), "train".into(), "/data/it's here".into()],
                result: "r/a.json".into(),
                run_dir: "runs/a".into(),
            },
            Task { key: "b".into(), args: vec!["encoding".into(), "--recipe".into(), "x y.toml".into()], result: "r/b.json".into(), run_dir: "runs/b".into() },
        ];
        let o = SlurmOptions { partition: Some("gpu".into()), gpus_per_task: Some(1), time: Some("04:00:00".into()), ..Default::default() };
        let s = sbatch_script("table2-full", &o, Path::new("/sweep/bin/fgia"), Path::new("/sweep/logs"), "abc123", &tasks);
        assert!(s.contains("#SBATCH --array=0-1\n"), "{s}");
        assert!(s.contains("#SBATCH --partition=gpu\n") && s.contains("#SBATCH --gpus-per-task=1\n") && s.contains("#SBATCH --time=04:00:00\n"));
        assert!(!s.contains("--account"), "unset options are left out");
        assert!(s.contains("0) key=a; args=(--device cpu train '/data/it'\\''s here') ;;"), "{s}");
        assert!(s.contains("1) key=b; args=(encoding --recipe 'x y.toml') ;;"), "{s}");
        assert!(s.contains("#SBATCH --output=/sweep/logs/%A_%a.out"));
        // bash parses it.
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("s.sbatch");
        std::fs::write(&p, &s).expect("write");
        let ok = Command::new("bash").arg("-n").arg(&p).status().expect("bash");
        assert!(ok.success());
    }

    #[test]
    fn pending_ranges_expand_to_their_tasks() {
        assert_eq!(expand_array_ids("18_3"), vec!["18_3"]);
        assert_eq!(expand_array_ids("18_[2-4,7%2]"), vec!["18_2", "18_3", "18_4", "18_7"]);
        assert_eq!(expand_array_ids("18_[x]"), Vec::<String>::new());
    }

    #[test]
    fn status_reads_the_run_folders_where_slurm_does_not_answer() {
        let dir = tempfile::tempdir().expect("tmp");
        let sweep = dir.path().join("sweeps").join("t-smoke");
        let runs = dir.path().join("runs");
        std::fs::create_dir_all(runs.join("b")).expect("mkdir");
        std::fs::write(runs.join("b").join("recipe.toml"), "").expect("write");
        let mut state = SweepState::default();
        for k in ["a", "b"] {
            state.settings.insert(k.into(), SettingFiles { result: dir.path().join(format!("{k}.json")), run_dir: runs.join(k) });
        }
        state.submissions.push(Submission { job: "999999999".into(), script: "s".into(), submitted_utc: String::new(), tasks: vec!["a".into(), "b".into()] });
        std::fs::create_dir_all(&sweep).expect("mkdir");
        state.write(&sweep).expect("write");
        let (st, _) = sweep_status(&sweep).expect("status");
        let by: BTreeMap<&str, &str> = st.iter().map(|s| (s.key.as_str(), s.state.as_str())).collect();
        assert_eq!(by["a"], "not started");
        assert_eq!(by["b"], "interrupted");
        assert_eq!(st[1].task, "999999999_1");
    }
}
