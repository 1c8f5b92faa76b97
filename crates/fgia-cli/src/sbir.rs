//! `fgia sbir` (run Table 6 sketch-based retrieval recipes), `fgia sbir-index` (embed a folder
//! of photos with a finished run) and `fgia sbir-query` (rank them for sketches).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::backend::Autodiff;
use burn::prelude::*;
use fgia_cbir::index::IndexItem;
use fgia_sbir::index::{FORMAT, SbirIndex, SbirIndexHeader};
use fgia_sbir::recipe::SbirRecipe;
use fgia_sbir::run::{embed_ten_views, run_recipe, trained_model};

use crate::commands::resolve_pretrained;
use crate::{Placement, RetrievalArgs, SbirIndexArgs, SbirQueryArgs};

pub fn sbir<B: Backend>(a: RetrievalArgs, device: B::Device, place: Placement) -> Result<()> {
    // The recipes of one set share its views through the trunk.
    let mut views = Vec::new();
    a.run_all(
        &place,
        |path| Ok(SbirRecipe::load(path)?),
        |r| r.model.backbone,
        |r, ctx| run_recipe::<Autodiff<B>>(r, ctx, &mut views, &device),
        |record| {
            let g = |k: &str| record.metrics.get(k).copied().unwrap_or(f64::NAN);
            format!(
                "acc@1 {:.2} acc@10 {:.2} (one view: {:.2} / {:.2}; chance {:.2} / {:.2}), human triplets {:.1}% in order",
                g("acc@1"),
                g("acc@10"),
                g("acc@1_1view"),
                g("acc@10_1view"),
                g("chance@1"),
                g("chance@10"),
                g("triplets_correct")
            )
        },
    )
}

/// The readable images among `paths`; the others are reported on stderr and skipped.
fn readable(paths: Vec<PathBuf>) -> Vec<PathBuf> {
    paths
        .into_iter()
        .filter(|p| match fgia_core::imaging::load_rgb(p) {
            Ok(_) => true,
            Err(e) => {
                eprintln!("skipped: {e}");
                false
            }
        })
        .collect()
}

pub fn sbir_index<B: Backend>(a: SbirIndexArgs, device: B::Device) -> Result<()> {
    let recipe = SbirRecipe::load(&a.run_dir.join("recipe.toml")).with_context(|| format!("{} is not an `fgia sbir` run folder", a.run_dir.display()))?;
    let weights = resolve_pretrained(recipe.model.backbone, a.weights.as_deref())?;
    let (r, net, model) = trained_model::<B>(&a.run_dir, &weights, &device)?;
    let files = fgia_cbir::extract::list_images(&a.photos).with_context(|| format!("listing {}", a.photos.display()))?;
    let photos = readable(files.into_iter().map(|f| f.0).collect());
    if photos.is_empty() {
        bail!("{}: no readable .jpg, .jpeg or .png file", a.photos.display());
    }
    let embeddings = embed_ten_views(&r, &net, &model, &photos, &device, !a.quiet)?;
    let dim = embeddings.len() / (photos.len() * 10);
    let w = model.energy().map(|w| w.into_data().to_vec::<f32>().expect("f32 W"));
    let header = SbirIndexHeader {
        format: FORMAT.into(),
        version: 1,
        run_dir: std::fs::canonicalize(&a.run_dir).unwrap_or(a.run_dir.clone()).display().to_string(),
        method: format!("{} ({})", r.report.method, r.train.loss.describe()),
        views: 10,
        dim,
        holef: w.is_some(),
        photos: photos.iter().map(|p| std::fs::canonicalize(p).unwrap_or(p.clone()).display().to_string()).collect(),
    };
    let n = header.photos.len();
    SbirIndex { header, embeddings, w }.write(&a.out)?;
    println!("{}: {n} photos, ten views each, {dim}-d embeddings of {}", a.out.display(), r.report.method);
    Ok(())
}

pub fn sbir_query<B: Backend>(a: SbirQueryArgs, device: B::Device) -> Result<()> {
    let idx = SbirIndex::open(&a.index)?;
    let run_dir = PathBuf::from(&idx.header.run_dir);
    let recipe = SbirRecipe::load(&run_dir.join("recipe.toml")).with_context(|| format!("the run that made {} ({})", a.index.display(), run_dir.display()))?;
    let weights = resolve_pretrained(recipe.model.backbone, a.weights.as_deref())?;
    let (r, net, model) = trained_model::<B>(&run_dir, &weights, &device)?;
    let sketches = readable(a.sketches.clone());
    if sketches.is_empty() {
        bail!("no readable sketch among the {} given", a.sketches.len());
    }
    let emb = embed_ten_views(&r, &net, &model, &sketches, &device, false)?;
    let per = idx.header.views * idx.header.dim;
    if emb.len() != sketches.len() * per {
        bail!(
            "{}: {}-d embeddings, but the run now embeds {}-d (was it retrained?)",
            a.index.display(),
            idx.header.dim,
            emb.len() / (sketches.len() * idx.header.views)
        );
    }
    // `writeln!` so that a closed pipe (`fgia sbir-query ... | head`) ends quietly.
    let mut out = std::io::stdout().lock();
    let paths = idx.photo_paths();
    for (row, sketch) in sketches.iter().enumerate() {
        let ranked: Vec<(usize, f32)> = idx.rank(&emb[row * per..(row + 1) * per]).into_iter().take(a.top).collect();
        writeln!(out, "{}", sketch.display())?;
        for (k, (j, e)) in ranked.iter().enumerate() {
            writeln!(out, "  {:>3}. {e:.4}  {}", k + 1, paths[*j].display())?;
        }
        if let Some(html) = &a.html {
            let page = if sketches.len() > 1 {
                html.with_file_name(format!("{}-{row}.html", html.file_stem().and_then(|s| s.to_str()).unwrap_or("sketch")))
            } else {
                html.clone()
            };
            let items: Vec<IndexItem> = ranked.iter().map(|&(j, _)| IndexItem { path: idx.header.photos[j].clone(), label: None }).collect();
            let shown: Vec<(&IndexItem, f32)> = items.iter().zip(&ranked).map(|(it, &(_, e))| (it, e)).collect();
            let note = format!("{}; energies summed over ten views (lower is nearer).", idx.header.method);
            let p = fgia_cbir::report_html::write_query_page(&page, sketch, &shown, &a.index, "Sketch", &note).map_err(anyhow::Error::msg)?;
            writeln!(out, "  page: {}", p.display())?;
        }
    }
    Ok(())
}
