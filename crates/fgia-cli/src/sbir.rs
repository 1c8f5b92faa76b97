//! `fgia sbir`: run Table 6 sketch-based retrieval recipes.

use anyhow::{Context, Result, bail};
use burn::backend::Autodiff;
use burn::prelude::*;
use fgia_sbir::recipe::SbirRecipe;
use fgia_sbir::run::run_recipe;
use fgia_train::RunContext;

use crate::RetrievalArgs;
use crate::commands::{git_revision, resolve_pretrained};

pub fn sbir<B: Backend>(a: RetrievalArgs, device: B::Device, device_name: String) -> Result<()> {
    std::fs::create_dir_all(&a.results_dir).with_context(|| a.results_dir.display().to_string())?;
    let mut todo = Vec::new();
    for path in &a.recipe {
        let key = path.file_stem().and_then(|s| s.to_str()).context("recipe file name")?.trim_end_matches(".recipe").to_string();
        let result = a.results_dir.join(format!("{key}.json"));
        if a.skip_existing && fgia_core::record::ResultRecord::read(&result).is_ok() {
            println!("{key}: finished earlier ({}), skipped", result.display());
            continue;
        }
        todo.push((path, key, result, SbirRecipe::load(path)?));
    }
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
        let record = match run_recipe::<Autodiff<B>>(&recipe, &ctx, &device) {
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
            "{key}: {} on {}: acc@1 {:.2} acc@10 {:.2} (one view: {:.2} / {:.2}; chance {:.2} / {:.2}) in {:.0} s",
            record.method,
            record.data,
            g("acc@1"),
            g("acc@10"),
            g("acc@1_1view"),
            g("acc@10_1view"),
            g("chance@1"),
            g("chance@10"),
            record.wall_time_s
        );
    }
    if !failed.is_empty() {
        bail!("{} of the recipes failed: {}", failed.len(), failed.join(", "));
    }
    Ok(())
}
