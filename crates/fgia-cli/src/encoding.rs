//! `fgia encoding`: run Table 2 feature-encoding recipes.

use anyhow::{Context, Result, bail};
use burn::backend::Autodiff;
use burn::prelude::*;
use fgia_encoding::run::Caches;
use fgia_encoding::{EncodingRecipe, run_recipe};
use fgia_train::RunContext;

use crate::RetrievalArgs;
use crate::commands::{git_revision, resolve_pretrained};

pub fn encoding<B: Backend>(a: RetrievalArgs, device: B::Device, device_name: String) -> Result<()> {
    std::fs::create_dir_all(&a.results_dir).with_context(|| a.results_dir.display().to_string())?;
    // Read every recipe first: errors surface before any work, and the cache plan sees them all.
    let mut todo = Vec::new();
    let mut caches = Caches::default();
    for path in &a.recipe {
        let key = path.file_stem().and_then(|s| s.to_str()).context("recipe file name")?.trim_end_matches(".recipe").to_string();
        let result = a.results_dir.join(format!("{key}.json"));
        if a.skip_existing && fgia_core::record::ResultRecord::read(&result).is_ok() {
            println!("{key}: finished earlier ({}), skipped", result.display());
            continue;
        }
        let recipe = EncodingRecipe::load(path)?;
        caches.plan(&recipe, a.data_root.as_deref())?;
        todo.push((path, key, result, recipe));
    }
    // A failing recipe (a NaN loss, say) does not stop the others; the command fails at the end.
    let mut failed = Vec::new();
    for (path, key, result, recipe) in todo {
        let run_dir = a.runs_dir.join(&key);
        let ctx = RunContext {
            resume: a.resume_wanted(&run_dir),
            stop_after_epochs: None,
            run_dir,
            data_root: a.data_root.clone(),
            pretrained: Some(resolve_pretrained(recipe.model.backbone, a.weights.as_deref())?),
            device_name: device_name.clone(),
            git_revision: git_revision(),
            progress: !a.quiet,
        };
        let record = match run_recipe::<Autodiff<B>>(&recipe, &ctx, &mut caches, &device) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                eprintln!("{key}: failed: {e} (recipe {})", path.display());
                failed.push(key);
                continue;
            }
        };
        record.write(&result)?;
        let g = |k: &str| record.metrics.get(k).copied().unwrap_or(f64::NAN);
        println!(
            "{key}: {} on {}: top-1 {:.2} top-5 {:.2} mean/class {:.2} (chance {:.2}; train top-1 {:.2}) in {:.0} s",
            record.method,
            record.data,
            g("top1"),
            g("top5"),
            g("mean_per_class"),
            g("chance"),
            g("train_top1"),
            record.wall_time_s
        );
    }
    if !failed.is_empty() {
        bail!("{} of the recipes failed: {}", failed.len(), failed.join(", "));
    }
    Ok(())
}
