//! `fgia sbir`: run Table 6 sketch-based retrieval recipes.

use anyhow::{Result, bail};
use burn::backend::Autodiff;
use burn::prelude::*;
use fgia_sbir::recipe::SbirRecipe;
use fgia_sbir::run::run_recipe;

use crate::RetrievalArgs;

pub fn sbir<B: Backend>(a: RetrievalArgs, device: B::Device, device_name: String) -> Result<()> {
    // Read every recipe first: errors surface before any work.
    let mut todo = Vec::new();
    for (path, key, result) in a.pending()? {
        todo.push((path, key, result, SbirRecipe::load(path)?));
    }
    let mut failed = Vec::new();
    for (path, key, result, recipe) in todo {
        let ctx = a.context(&key, recipe.model.backbone, &device_name)?;
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
