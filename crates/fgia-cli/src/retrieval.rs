//! Retrieval commands: `retrieval` (run Table 5 recipes), `index` (index a folder of images)
//! and `query` (search an index with images, print the top-K and write an HTML page).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::backend::Autodiff;
use burn::prelude::*;
use fgia_cbir::extract::{Aggregator, extract, list_images, records_for};
use fgia_cbir::hnsw::HnswParams;
use fgia_cbir::index::{ExtractorInfo, Index, IndexItem};
use fgia_cbir::run::SharedCache;
use fgia_cbir::{CbirRecipe, run_recipe};
use fgia_core::imaging::Transform;
use fgia_core::retrieval::Distance;
use fgia_nn::weights::load_network;
use fgia_nn::{BackboneKind, NetworkConfig};

use crate::commands::resolve_pretrained;
use crate::{IndexArgs, Placement, QueryArgs, RetrievalArgs};

pub fn retrieval<B: Backend>(a: RetrievalArgs, device: B::Device, place: Placement) -> Result<()> {
    let mut caches: Vec<SharedCache> = Vec::new();
    for (path, key, result) in a.pending()? {
        let recipe = CbirRecipe::load(path)?;
        let ctx = a.context(&key, recipe.model.backbone, &place)?;
        let Some(record) = run_recipe::<Autodiff<B>>(&recipe, &ctx, &mut caches, &device).with_context(|| format!("recipe {}", path.display()))? else {
            continue;
        };
        record.write(&result)?;
        let m = &record.metrics;
        let g = |k: &str| m.get(k).copied().unwrap_or(f64::NAN);
        println!(
            "{key}: {} on {}: R@1 {:.2} R@2 {:.2} R@4 {:.2} R@8 {:.2} mAP {:.2} (random R@1 {:.2}; +QE R@1 {:.2}, +k-reciprocal R@1 {:.2}) in {:.0} s",
            record.method,
            record.data,
            g("recall@1"),
            g("recall@2"),
            g("recall@4"),
            g("recall@8"),
            g("map"),
            g("random/recall@1"),
            g("qe/recall@1"),
            g("kr/recall@1"),
            record.wall_time_s
        );
    }
    Ok(())
}

fn backbone_and_transform<B: Backend>(name: &str, resolution: u32, weights: Option<&Path>, device: &B::Device) -> Result<(fgia_nn::Network<B>, Transform)> {
    let kind: BackboneKind = name.parse().map_err(anyhow::Error::msg)?;
    let path = resolve_pretrained(kind, weights)?;
    let (net, _) = load_network(NetworkConfig::new(kind).init::<B>(device), kind, &path)?;
    Ok((net, Transform::eval(resolution * 8 / 7, resolution, kind.normalize())))
}

pub fn index<B: Backend>(a: IndexArgs, device: B::Device) -> Result<()> {
    let aggregator: Aggregator = a.aggregator.parse().map_err(anyhow::Error::msg)?;
    let distance: Distance = a.distance.parse().map_err(anyhow::Error::msg)?;
    let files = list_images(&a.images).with_context(|| format!("listing {}", a.images.display()))?;
    if files.is_empty() {
        bail!("{}: no .jpg, .jpeg or .png files", a.images.display());
    }
    let (net, transform) = backbone_and_transform::<B>(&a.backbone, a.resolution, a.weights.as_deref(), &device)?;
    let paths: Vec<PathBuf> = files.iter().map(|f| f.0.clone()).collect();
    let records = records_for(&paths);
    // Unreadable images are reported and skipped, never fatal.
    let ex = extract(&net, &records, &transform, aggregator, true, &device, true)?;
    for s in &ex.skipped {
        eprintln!("skipped: {s}");
    }
    if ex.kept.is_empty() {
        bail!("no image under {} could be read", a.images.display());
    }
    let items: Vec<IndexItem> = ex.kept.iter().map(|&i| IndexItem { path: files[i].0.display().to_string(), label: Some(files[i].1.clone()) }).collect();
    let extractor = ExtractorInfo { backbone: a.backbone.clone(), resolution: a.resolution, aggregator: aggregator.name().into() };
    let hnsw = a.hnsw.then(|| HnswParams { ef_search: a.ef_search, ..HnswParams::default() });
    let n = items.len();
    let idx = Index::build(ex.vectors, ex.dim, distance, extractor, items, hnsw);
    idx.save(&a.out)?;
    println!(
        "indexed {n} images ({} skipped as unreadable) as {}-d {} vectors{} -> {}",
        ex.skipped.len(),
        ex.dim,
        aggregator.name(),
        if a.hnsw { " with an HNSW graph" } else { " (exact search)" },
        a.out.display()
    );
    Ok(())
}

pub fn query<B: Backend>(a: QueryArgs, device: B::Device) -> Result<()> {
    let idx = Index::open(&a.index)?;
    let ex_info = &idx.header.extractor;
    let aggregator: Aggregator = ex_info.aggregator.parse().map_err(anyhow::Error::msg)?;
    let (net, transform) = backbone_and_transform::<B>(&ex_info.backbone, ex_info.resolution, a.weights.as_deref(), &device)?;
    let ex = extract(&net, &records_for(&a.images), &transform, aggregator, false, &device, false)?;
    idx.check_query_dim(ex.dim).map_err(|e| anyhow::anyhow!("{}: {e}", a.index.display()))?;
    // Written with `writeln!` so that a closed pipe (`fgia query ... | head`) ends the command
    // quietly instead of panicking.
    let mut out = std::io::stdout().lock();
    for (row, &i) in ex.kept.iter().enumerate() {
        let q = &ex.vectors[row * ex.dim..(row + 1) * ex.dim];
        let results = idx.search(q, a.top);
        writeln!(out, "{}", a.images[i].display())?;
        for (r, (j, d)) in results.iter().enumerate() {
            let item = &idx.header.items[*j];
            writeln!(out, "  {:>3}. {:.4}  {}{}", r + 1, d.max(0.0), item.path, item.label.as_ref().map(|l| format!("  [{l}]")).unwrap_or_default())?;
        }
        if let Some(html) = &a.html {
            let page = if a.images.len() > 1 {
                html.with_file_name(format!("{}-{row}.html", html.file_stem().and_then(|s| s.to_str()).unwrap_or("query")))
            } else {
                html.clone()
            };
            let shown: Vec<(&IndexItem, f32)> = results.iter().map(|&(j, d)| (&idx.header.items[j], d)).collect();
            let p = fgia_cbir::report_html::write_query_page(
                &page,
                &a.images[i],
                &shown,
                &a.index,
                "Query",
                "Distances are 1 − cosine similarity (cosine index) or euclidean.",
            )
            .map_err(anyhow::Error::msg)?;
            writeln!(out, "  page: {}", p.display())?;
        }
    }
    Ok(())
}
