//! `fgia encoding`: run Table 2 feature-encoding recipes.

use anyhow::Result;
use burn::backend::Autodiff;
use burn::prelude::*;
use fgia_encoding::run::Caches;
use fgia_encoding::{EncodingRecipe, run_recipe};

use crate::{Placement, RetrievalArgs};

pub fn encoding<B: Backend>(a: RetrievalArgs, device: B::Device, place: Placement) -> Result<()> {
    // The cache plan sees every recipe before the first runs.
    let caches = std::cell::RefCell::new(Caches::default());
    a.run_all(
        &place,
        |path| {
            let recipe = EncodingRecipe::load(path)?;
            caches.borrow_mut().plan(&recipe, a.data_root.as_deref())?;
            Ok(recipe)
        },
        |r| r.model.backbone,
        |r, ctx| run_recipe::<Autodiff<B>>(r, ctx, &mut caches.borrow_mut(), &device),
        |record| {
            let g = |k: &str| record.metrics.get(k).copied().unwrap_or(f64::NAN);
            format!(
                "top-1 {:.2} top-5 {:.2} mean/class {:.2} (chance {:.2}; train top-1 {:.2})",
                g("top1"),
                g("top5"),
                g("mean_per_class"),
                g("chance"),
                g("train_top1")
            )
        },
    )
}
