//! `cargo xtask datasets verify`: reads a dataset in its official format, prints what it holds,
//! and checks that every referenced file exists (and, with `--decode`, decodes).

use std::path::Path;

use anyhow::{Result, bail};
use fgia_core::datasets::{Dataset, DatasetKind, ReadOptions, SketchDataset, TripletSampler, read_qmul};
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
        decode_all(&all.iter().map(|r| r.path.as_path()).collect::<Vec<_>>())?;
    }
    Ok(ds)
}

/// Decodes every image in parallel; lists up to 20 that fail and is an error if any does.
fn decode_all(paths: &[&Path]) -> Result<()> {
    let bad: Vec<String> = paths.par_iter().filter_map(|p| fgia_core::imaging::load_rgb(p).err().map(|e| e.to_string())).collect();
    if !bad.is_empty() {
        for b in bad.iter().take(20) {
            println!("  undecodable: {b}");
        }
        bail!("{} of {} images cannot be decoded", bad.len(), paths.len());
    }
    println!("  decode: all {} images decode", paths.len());
    Ok(())
}

/// Reads and checks a QMUL sketch / photo set; returns it when everything is in order.
pub fn verify_sketch(root: &Path, decode: bool) -> Result<SketchDataset> {
    let ds = read_qmul(root)?;
    println!("QMUL {} (V1) at {}", ds.name, ds.root.display());
    for (name, split) in [("train", &ds.train), ("test", &ds.test)] {
        let per: Vec<usize> = split.triplets.iter().map(Vec::len).collect();
        let (lo, hi) = (per.iter().min().copied().unwrap_or(0), per.iter().max().copied().unwrap_or(0));
        println!("  {name}: {} sketch / photo pairs, {lo}-{hi} human triplets per sketch", split.len());
        // The sampler needs triplets and easy negatives for every sketch.
        let sampler = TripletSampler::new(&split.triplets, 0.75).map_err(|e| anyhow::anyhow!("{}: {name}: {e}", root.display()))?;
        let easy: Vec<usize> = (0..split.len()).map(|k| sampler.easy_negatives(k).len()).collect();
        println!("    easy negatives per sketch: {}-{}", easy.iter().min().copied().unwrap_or(0), easy.iter().max().copied().unwrap_or(0));
    }
    let files: Vec<&Path> = [&ds.train, &ds.test].iter().flat_map(|s| s.sketches.iter().chain(&s.photos)).map(|p| p.as_path()).collect();
    println!("  files: all {} sketches and photos exist", files.len());
    if decode {
        decode_all(&files)?;
    }
    Ok(ds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sketch_sets_verify_with_decode() {
        for (name, pairs) in [("qmul-shoes-v1", (304, 115)), ("qmul-chairs-v1", (200, 97))] {
            let Some(root) = fgia_core::testing::shared_data(env!("CARGO_MANIFEST_DIR"), "the_sketch_sets_verify_with_decode", name) else { return };
            let ds = verify_sketch(&root, true).expect("verifies");
            assert_eq!((ds.train.len(), ds.test.len()), pairs, "{name}");
        }
    }
}
