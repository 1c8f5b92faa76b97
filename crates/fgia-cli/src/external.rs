//! `fgia external`: run Table 3 recipes (external information, §5.3).

use anyhow::Result;
use burn::backend::Autodiff;
use burn::prelude::*;
use fgia_external::recipe::ExternalRecipe;
use fgia_external::run::{SharedFeatures, run_recipe};

use crate::{Placement, RetrievalArgs};

pub fn external<B: Backend>(a: RetrievalArgs, device: B::Device, place: Placement) -> Result<()> {
    // The recipes of one process share the backbone's pooled features.
    let mut shared = SharedFeatures::new();
    a.run_all(
        &place,
        |path| Ok(ExternalRecipe::load(path)?),
        |r| r.model.backbone,
        |r, ctx| run_recipe::<Autodiff<B>>(r, ctx, &mut shared, &device),
        |record| {
            let g = |k: &str| record.metrics.get(k).copied().unwrap_or(f64::NAN);
            let mut s = format!("top-1 {:.2} (chance {:.2})", g("top1"), g("chance"));
            if let Some(n) = record.metrics.get("noise_rate") {
                s.push_str(&format!(", noise {n:.0} %"));
            }
            if let Some(q) = record.metrics.get("questions") {
                let at = |p: &str| g(&format!("acc_q{}_{p}", *q as usize));
                s.push_str(&format!("; after {q:.0} questions: information gain {:.2}, random {:.2}", at("info_gain"), at("random")));
            }
            s
        },
    )
}
