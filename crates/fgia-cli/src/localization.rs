//! `fgia localization`: run §5.1 recipes (localization-classification, Table 2).

use anyhow::Result;
use burn::backend::Autodiff;
use burn::prelude::*;
use fgia_localization::recipe::LocalizationRecipe;
use fgia_localization::run::{Shared, run_recipe};

use crate::{Placement, RetrievalArgs};

pub fn localization<B: Backend>(a: RetrievalArgs, device: B::Device, place: Placement) -> Result<()> {
    // The recipes of one process share the frozen backbone and its cached maps.
    let mut shared = Shared::<B>::default();
    a.run_all(
        &place,
        |path| Ok(LocalizationRecipe::load(path)?),
        |r| r.model.backbone,
        |r, ctx| run_recipe::<Autodiff<B>>(r, ctx, &mut shared, &device),
        |record| {
            let g = |k: &str| record.metrics.get(k).copied().unwrap_or(f64::NAN);
            format!("top-1 {:.2} (chance {:.2}); {} test images drawn in looks.svg", g("top1"), g("chance"), g("looks_drawn"))
        },
    )
}
