//! `fgia`: train, evaluate, predict, embed and inspect fine-grained models.
//!
//! The only crate that picks a burn backend: `Flex` on the CPU (default) and, with the `cuda`
//! feature, `Cuda`. Everything below the command-line layer is generic over the backend.

mod ask;
mod commands;
mod device_check;
mod encoding;
mod external;
mod localization;
mod npy;
mod retrieval;
mod sbir;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

/// Compute device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DeviceArg {
    /// burn-flex on all CPU cores.
    Cpu,
    /// burn-cuda on GPU 0 (build with `--features cuda`).
    Cuda,
}

#[derive(Parser, Debug)]
#[command(name = "fgia", version, about = "Fine-grained image analysis: train, evaluate, predict, embed, inspect")]
struct Cli {
    /// Compute device.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu, global = true)]
    device: DeviceArg,
    /// Train data parallel over these devices (`cuda:0,cuda:1`; `cpu,cpu` runs two replicas on
    /// the CPU): each batch is split over one model replica per device, the gradients averaged,
    /// one step. Batch-norm statistics are per replica; the record says so.
    #[arg(long, global = true)]
    devices: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a recipe in a new run folder (or continue one with --resume), then evaluate the last
    /// epoch on the test split and write result.json.
    Train(TrainArgs),
    /// Evaluate a run's newest checkpoint on its test split.
    Eval(EvalArgs),
    /// Top-5 classes with probabilities for image files.
    Predict(PredictArgs),
    /// Write pooled embeddings of a dataset split (for retrieval) as .npy plus a .json index.
    Embed(EmbedArgs),
    /// Parameter count and multiply-accumulates of a backbone at a resolution.
    Info(InfoArgs),
    /// Run retrieval recipes (Table 5): class-disjoint split, SCDA or a trained embedding,
    /// Recall@K and mAP, one result record per recipe.
    Retrieval(RetrievalArgs),
    /// Run feature-encoding recipes (Table 2, §5.2): high-order pooling, fine-grained losses,
    /// DCL, PMG; one result record per recipe.
    Encoding(RetrievalArgs),
    /// Run sketch-based retrieval recipes (Table 6, §6.2): triplet training on QMUL Shoe or
    /// Chair, ten-view acc@K; one result record per recipe.
    Sbir(RetrievalArgs),
    /// Run recipes with external information (Table 3, §5.3): cross-entropy, co-teaching and
    /// Peer-learning on noisy labels, attribute embeddings (classifier and zero-shot), KERL's
    /// knowledge graph, the geo prior with an image classifier, the 20-questions game; one
    /// result record per recipe.
    External(RetrievalArgs),
    /// Run localization-classification recipes (Table 2, §5.1): Part-based R-CNN, DFL-CNN,
    /// S3N, RA-CNN, MA-CNN, OSME + MAMC, TASN, STN, NTS-Net, and WS-DAN and CAL (not in the
    /// survey); cached rounds on the frozen trunk, crops resampled on pixels; one result record
    /// and a `looks.svg` (what the method looked at on 8 test images) per recipe.
    Localization(RetrievalArgs),
    /// Embed a folder of photos (edge maps) with a finished `fgia sbir` run, for `sbir-query`.
    SbirIndex(SbirIndexArgs),
    /// Rank the photos of an SBIR index for sketches: top-K with energies, and an HTML page.
    SbirQuery(SbirQueryArgs),
    /// Index a folder of images (recursively) for retrieval.
    Index(IndexArgs),
    /// Search an index with query images: top-K with distances, and an HTML page.
    Query(QueryArgs),
    /// The 20-questions game: the machine asks attribute questions chosen by expected
    /// information gain and refines its guess with each answer (§5.3.3).
    Ask(ask::AskArgs),
    /// Check the --device backend against the CPU: every backbone and pooling operator forward
    /// and backward with the same weights and inputs, then a timed training step per backbone;
    /// writes a JSON report for the environment page (`cargo xtask gpu-check` runs it on CUDA).
    CheckDevice(device_check::CheckArgs),
    /// Time the training data loader alone: decode and augment a dataset's training split
    /// through the engine's prefetching batch source, without training; prints images/s.
    Loader(LoaderArgs),
}

#[derive(clap::Args, Debug)]
struct SbirIndexArgs {
    /// A finished `fgia sbir` run folder (its recipe and newest checkpoint embed the photos).
    #[arg(long)]
    run_dir: PathBuf,
    /// Folder of photos or edge maps (searched recursively; unreadable files are reported and
    /// skipped).
    #[arg(long)]
    photos: PathBuf,
    /// Index file to write.
    #[arg(long)]
    out: PathBuf,
    /// Pretrained trunk weights (default: resolved from the caches).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args, Debug)]
struct SbirQueryArgs {
    /// Index file (`fgia sbir-index`).
    #[arg(long)]
    index: PathBuf,
    /// Results per sketch.
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// Write an HTML page with the sketch and its ranked photos (one page per sketch).
    #[arg(long)]
    html: Option<PathBuf>,
    /// Pretrained trunk weights (default: resolved from the caches).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Sketch images.
    #[arg(required = true)]
    sketches: Vec<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct LoaderArgs {
    /// Dataset root.
    #[arg(long)]
    data_root: PathBuf,
    /// Reader: cub, dogs, cars, aircraft.
    #[arg(long, default_value = "cub")]
    format: String,
    /// Shorter side after resizing.
    #[arg(long, default_value_t = 128)]
    resize: u32,
    /// Random crop side.
    #[arg(long, default_value_t = 112)]
    crop: u32,
    /// Batch size.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Epochs to time (each draws fresh augmentation).
    #[arg(long, default_value_t = 1)]
    epochs: usize,
}

/// Arguments of the commands that run a list of recipes (`retrieval`, `encoding`).
#[derive(clap::Args, Debug)]
struct RetrievalArgs {
    /// Recipe files (TOML); recipes sharing a backbone, dataset, input size and views share one
    /// pass of the backbone (the feature maps they read are cached together).
    #[arg(long, required = true)]
    recipe: Vec<PathBuf>,
    /// Folder of run folders (one per recipe, named after the recipe file).
    #[arg(long)]
    runs_dir: PathBuf,
    /// Folder of result records (`<recipe name>.json`).
    #[arg(long)]
    results_dir: PathBuf,
    /// Dataset root (overrides the recipes').
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// Pretrained weights file (default: resolved from the caches).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Skip recipes whose result record exists.
    #[arg(long)]
    skip_existing: bool,
    /// Continue a recipe's run folder from its newest checkpoint when the folder exists
    /// (without it, an existing run folder is an error: runs are never overwritten).
    #[arg(long)]
    resume: bool,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

impl RetrievalArgs {
    /// Whether the run folder `run_dir` is continued: `--resume` and the folder holds a recipe.
    fn resume_wanted(&self, run_dir: &std::path::Path) -> bool {
        self.resume && run_dir.join("recipe.toml").is_file()
    }

    /// The recipes still to run, as `(recipe file, key, result record)`: the key is the file's
    /// stem, and with `--skip-existing` a recipe whose record exists is left out (said on
    /// stdout). Creates the results folder.
    fn pending(&self) -> Result<Vec<(&std::path::Path, String, PathBuf)>> {
        use anyhow::Context;
        std::fs::create_dir_all(&self.results_dir).with_context(|| self.results_dir.display().to_string())?;
        let mut out = Vec::new();
        for path in &self.recipe {
            let key = path.file_stem().and_then(|s| s.to_str()).context("recipe file name")?.trim_end_matches(".recipe").to_string();
            let result = self.results_dir.join(format!("{key}.json"));
            if self.skip_existing && fgia_core::record::ResultRecord::read(&result).is_ok() {
                println!("{key}: finished earlier ({}), skipped", result.display());
                continue;
            }
            out.push((path.as_path(), key, result));
        }
        Ok(out)
    }

    /// Runs every pending recipe: all are read by `load` first (so a bad one fails before any
    /// work), then each is trained and evaluated by `run` and its record written; `line` says
    /// the result in one line. A failing recipe (a NaN loss, say) does not stop the others; the
    /// command fails at the end, naming them.
    fn run_all<R, E: std::fmt::Display>(
        &self,
        place: &Placement,
        mut load: impl FnMut(&std::path::Path) -> Result<R>,
        backbone: impl Fn(&R) -> fgia_nn::BackboneKind,
        mut run: impl FnMut(&R, &fgia_train::RunContext) -> std::result::Result<Option<fgia_core::record::ResultRecord>, E>,
        line: impl Fn(&fgia_core::record::ResultRecord) -> String,
    ) -> Result<()> {
        let mut todo = Vec::new();
        for (path, key, result) in self.pending()? {
            todo.push((path, key, result, load(path)?));
        }
        let mut failed = Vec::new();
        for (path, key, result, recipe) in todo {
            let ctx = self.context(&key, backbone(&recipe), place)?;
            match run(&recipe, &ctx) {
                Ok(Some(record)) => {
                    record.write(&result)?;
                    println!("{key}: {} on {}: {} in {:.0} s", record.method, record.data, line(&record), record.wall_time_s);
                }
                Ok(None) => {}
                Err(e) => {
                    eprintln!("{key}: failed: {e} (recipe {})", path.display());
                    failed.push(key);
                }
            }
        }
        if !failed.is_empty() {
            anyhow::bail!("{} of the recipes failed: {}", failed.len(), failed.join(", "));
        }
        Ok(())
    }

    /// The run context of recipe `key`, whose trunk is `backbone`.
    fn context(&self, key: &str, backbone: fgia_nn::BackboneKind, place: &Placement) -> Result<fgia_train::RunContext> {
        let run_dir = self.runs_dir.join(key);
        Ok(fgia_train::RunContext {
            resume: self.resume_wanted(&run_dir),
            stop_after_epochs: None,
            run_dir,
            data_root: self.data_root.clone(),
            pretrained: Some(commands::resolve_pretrained(backbone, self.weights.as_deref())?),
            device_name: place.name.clone(),
            git_revision: commands::git_revision(),
            progress: !self.quiet,
            replicas: place.replicas.clone(),
        })
    }
}

#[derive(clap::Args, Debug)]
struct IndexArgs {
    /// Folder of images (searched recursively; the parent folder names are the labels).
    #[arg(long)]
    images: PathBuf,
    /// Index file to write.
    #[arg(long)]
    out: PathBuf,
    /// ImageNet-pretrained backbone.
    #[arg(long, default_value = "efficientnet-lite0")]
    backbone: String,
    /// Input side.
    #[arg(long, default_value_t = 224)]
    resolution: u32,
    /// Aggregator: scda, scda-plus, scda-flip-plus, gap.
    #[arg(long, default_value = "scda-plus")]
    aggregator: String,
    /// cosine or euclidean.
    #[arg(long, default_value = "cosine")]
    distance: String,
    /// Also build an HNSW graph (approximate search for large galleries).
    #[arg(long)]
    hnsw: bool,
    /// HNSW candidate list size at search time.
    #[arg(long, default_value_t = 128)]
    ef_search: usize,
    /// Pretrained weights file (default: resolved from the caches).
    #[arg(long)]
    weights: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct QueryArgs {
    /// Index file.
    #[arg(long)]
    index: PathBuf,
    /// Results per query.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Write an HTML page with the query and its results (one page per query image).
    #[arg(long)]
    html: Option<PathBuf>,
    /// Pretrained weights file (default: resolved from the caches).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Query images.
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct TrainArgs {
    /// Recipe file (TOML). Ignored with --resume: the run folder's copy is used.
    #[arg(long)]
    recipe: Option<PathBuf>,
    /// Run folder; must not exist unless --resume.
    #[arg(long)]
    run_dir: PathBuf,
    /// Continue the run in --run-dir from its newest checkpoint.
    #[arg(long)]
    resume: bool,
    /// Dataset root (overrides the recipe's data.root).
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// Pretrained weights file (default: resolved from the caches).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Also copy result.json here (atomically).
    #[arg(long)]
    result: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args, Debug)]
struct EvalArgs {
    /// Run folder.
    #[arg(long)]
    run_dir: PathBuf,
    /// Dataset root (overrides the recipe's).
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// Test-time augmentation (overrides the recipe's).
    #[arg(long, value_parser = ["none", "flip"])]
    tta: Option<String>,
}

#[derive(clap::Args, Debug)]
struct PredictArgs {
    /// A trained run folder (its classes), or leave out and give --backbone for ImageNet classes.
    #[arg(long, conflicts_with = "backbone")]
    run_dir: Option<PathBuf>,
    /// An ImageNet-pretrained backbone (prints ImageNet-1k class names).
    #[arg(long)]
    backbone: Option<String>,
    /// Input side (default: the run's crop, or 224).
    #[arg(long)]
    resolution: Option<u32>,
    /// Feed each image at its own size (normalised only), without the resize-then-centre-crop.
    #[arg(long, conflicts_with = "resolution")]
    native_size: bool,
    /// How many classes to print.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Image files.
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct EmbedArgs {
    /// A trained run folder, or leave out and give --backbone for ImageNet features.
    #[arg(long, conflicts_with = "backbone")]
    run_dir: Option<PathBuf>,
    /// An ImageNet-pretrained backbone.
    #[arg(long)]
    backbone: Option<String>,
    /// Dataset format: cub, dogs, cars, aircraft.
    #[arg(long)]
    format: String,
    /// Dataset root.
    #[arg(long)]
    data_root: PathBuf,
    /// Which images: train, test, or all.
    #[arg(long, default_value = "test", value_parser = ["train", "test", "all"])]
    split: String,
    /// Input side (crop); the shorter side is resized to 8/7 of it.
    #[arg(long, default_value_t = 224)]
    resolution: u32,
    /// Output .npy file (a .json index with paths and labels is written beside it).
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args, Debug)]
struct InfoArgs {
    /// Backbone name.
    #[arg(long)]
    backbone: String,
    /// Input side.
    #[arg(long, default_value_t = 224)]
    resolution: usize,
    /// Classes of the head.
    #[arg(long, default_value_t = 1000)]
    num_classes: usize,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let replicas = parse_devices(cli.device, cli.devices.as_deref())?;
    let result = match cli.device {
        DeviceArg::Cpu => commands::run::<burn::backend::Flex>(cli.command, Default::default(), Placement::new(cpu_name(), replicas)),
        DeviceArg::Cuda => run_cuda(cli.command, replicas),
    };
    match result {
        // The reader of our output went away (`fgia query ... | head`): not an error.
        Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) => Ok(()),
        r => r,
    }
}

/// Where training runs: the main device's name, and the replicas of a data-parallel run.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The main device, in words, for the record.
    pub name: String,
    /// One per device of `--devices` (empty, or one, for a single device).
    pub replicas: Vec<fgia_train::parallel::ReplicaDevice>,
}

impl Placement {
    fn new(main: String, replicas: Vec<fgia_train::parallel::ReplicaDevice>) -> Self {
        let name = if replicas.len() > 1 {
            format!("{main}; {} replicas: {}", replicas.len(), replicas.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", "))
        } else {
            main
        };
        Placement { name, replicas }
    }
}

/// Parses `--devices cuda:0,cuda:1` (or `cpu,cpu`: replicas on the CPU, for tests): every
/// entry of the `--device` kind, no CUDA index twice.
fn parse_devices(kind: DeviceArg, list: Option<&str>) -> Result<Vec<fgia_train::parallel::ReplicaDevice>> {
    let Some(list) = list else { return Ok(Vec::new()) };
    let mut out: Vec<fgia_train::parallel::ReplicaDevice> = Vec::new();
    for entry in list.split(',').map(str::trim) {
        let index = match (kind, entry.split_once(':')) {
            (DeviceArg::Cpu, None) if entry == "cpu" => 0,
            (DeviceArg::Cuda, Some(("cuda", i))) => i.parse::<u16>().map_err(|_| anyhow::anyhow!("--devices: '{entry}' is not cuda:<index>"))?,
            _ => anyhow::bail!(
                "--devices: '{entry}' is not a {} device (write {})",
                if kind == DeviceArg::Cpu { "cpu" } else { "cuda" },
                if kind == DeviceArg::Cpu { "cpu,cpu" } else { "cuda:0,cuda:1" }
            ),
        };
        if kind == DeviceArg::Cuda && out.iter().any(|r| r.index == index) {
            anyhow::bail!("--devices: {entry} is listed twice");
        }
        out.push(fgia_train::parallel::ReplicaDevice { index, name: entry.to_string() });
    }
    Ok(out)
}

fn cpu_name() -> String {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    format!("cpu (burn-flex, {threads} threads)")
}

#[cfg(feature = "cuda")]
fn run_cuda(command: Command, replicas: Vec<fgia_train::parallel::ReplicaDevice>) -> Result<()> {
    let main = replicas.first().map_or(0, |r| r.index as usize);
    commands::run::<burn::backend::Cuda>(command, burn::backend::cuda::CudaDevice::new(main), Placement::new(format!("cuda:{main} (burn-cuda)"), replicas))
}

#[cfg(not(feature = "cuda"))]
fn run_cuda(_command: Command, _replicas: Vec<fgia_train::parallel::ReplicaDevice>) -> Result<()> {
    anyhow::bail!("this fgia was built without CUDA; rebuild with `cargo build --release -p fgia-cli --features cuda`")
}
