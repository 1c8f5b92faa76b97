//! `fgia encoding`: run Table 2 feature-encoding recipes.

use anyhow::{Result, bail};
use burn::backend::Autodiff;
use burn::prelude::*;
use fgia_encoding::run::Caches;
use fgia_encoding::{EncodingRecipe, run_recipe};

use crate::{Placement, RetrievalArgs};

pub fn encoding<B: Backend>(a: RetrievalArgs, device: B::Device, place: Placement) -> Result<()> {
    // Read every recipe first: errors surface before any work, and the cache plan sees them all.
    let mut todo = Vec::new();
    let mut caches = Caches::default();
    for (path, key, result) in a.pending()? {
        let recipe = EncodingRecipe::load(path)?;
        caches.plan(&recipe, a.data_root.as_deref())?;
        todo.push((path, key, result, recipe));
    }
    // A failing recipe (a NaN loss, say) does not stop the others; the command fails at the end.
    let mut failed = Vec::new();
    for (path, key, result, recipe) in todo {
        let ctx = a.context(&key, recipe.model.backbone, &place)?;
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
