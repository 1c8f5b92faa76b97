//! `cargo xtask datasets verify`: reads a dataset in its official format, prints what it holds,
//! and checks that every referenced file exists (and, with `--decode`, decodes).

use std::path::Path;

use anyhow::{Result, bail};
use fgia_core::datasets::{Dataset, DatasetKind, ReadOptions};
use rayon::prelude::*;

/// Reads and checks a dataset; returns it when everything is in order.
pub fn verify(kind: DatasetKind, root: &Path, skip_bad: bool, decode: bool) -> Result<Dataset> {
    let ds = match kind.read(root, ReadOptions { skip_bad }) {
        Ok(ds) => ds,
        Err(e) => bail!("{e}\n(use --skip-bad to skip and count malformed entries instead)"),
    };
    println!("{} at {}", kind.survey_name(), ds.root.display());
    println!("  classes: {}", ds.num_classes());
    println!("  train: {} images", ds.train.len());
    println!("  test: {} images", ds.test.len());
    println!("  split: {}", ds.split_note);
    let all: Vec<_> = ds.train.iter().chain(&ds.test).collect();
    let boxes = all.iter().filter(|r| r.bbox.is_some()).count();
    let parts = all.iter().filter(|r| !r.parts.is_empty()).count();
    println!("  annotations: {boxes} with a box, {parts} with part locations");
    for level in &ds.levels {
        println!("  level '{}': {} classes", level.name, level.classes.len());
    }
    let counts = ds.class_counts();
    let (min_train, max_train) = (counts.iter().map(|c| c.0).min().unwrap_or(0), counts.iter().map(|c| c.0).max().unwrap_or(0));
    let (min_test, max_test) = (counts.iter().map(|c| c.1).min().unwrap_or(0), counts.iter().map(|c| c.1).max().unwrap_or(0));
    println!("  per class: train {min_train}-{max_train}, test {min_test}-{max_test}");
    if !ds.skipped.is_empty() {
        println!("  skipped {} malformed entries:", ds.skipped.len());
        for s in ds.skipped.iter().take(20) {
            println!("    {}", s.reason);
        }
        if ds.skipped.len() > 20 {
            println!("    ... and {} more", ds.skipped.len() - 20);
        }
    }
    let missing = ds.missing_files();
    if !missing.is_empty() {
        for m in missing.iter().take(20) {
            println!("  missing: {}", m.display());
        }
        bail!("{} of {} referenced images are missing", missing.len(), all.len());
    }
    println!("  files: all {} referenced images exist", all.len());
    if decode {
        let bad: Vec<String> = all.par_iter().filter_map(|r| fgia_core::imaging::load_rgb(&r.path).err().map(|e| e.to_string())).collect();
        if !bad.is_empty() {
            for b in bad.iter().take(20) {
                println!("  undecodable: {b}");
            }
            bail!("{} of {} images cannot be decoded", bad.len(), all.len());
        }
        println!("  decode: all {} images decode", all.len());
    }
    Ok(ds)
}
