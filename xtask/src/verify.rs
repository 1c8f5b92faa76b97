//! `cargo xtask datasets verify`: reads a dataset in its official format, prints what it holds,
//! and checks that every referenced file exists (and, with `--decode`, decodes). For the §5.3
//! sets it also counts the external information that is present: iNat locations and dates (from
//! the separate locations release) and the Flowers-102 captions of Reed et al. (`text_c10/`).

use std::path::Path;

use anyhow::{Result, bail};
use fgia_core::datasets::{
    Dataset, DatasetKind, InatYear, ReadOptions, Record, SketchDataset, TripletSampler, read_flowers_captions, read_location_file, read_qmul,
};
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
    external_information(kind, root, &ds)?;
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

/// Prints how much external information is present where the dataset has some: for iNat, the
/// train and test images with a location and with a date (when the locations files are there);
/// for Flowers-102, the images with captions (when `text_c10/` is there).
fn external_information(kind: DatasetKind, root: &Path, ds: &Dataset) -> Result<()> {
    let year = match kind {
        DatasetKind::Inat2017 => Some(InatYear::Y2017),
        DatasetKind::Inat2018 => Some(InatYear::Y2018),
        _ => None,
    };
    if let Some(year) = year {
        match year.location_files(root) {
            Some((train, val)) => {
                for (name, records, file) in [("train", &ds.train, &train), ("test", &ds.test, &val)] {
                    let (located, dated) = geo_counts(records, file)?;
                    println!("  {name} locations ({}): {located} of {} images with a location, {dated} with a date", file.display(), records.len());
                }
            }
            None => println!("  locations: no train{0}_locations.json / val{0}_locations.json (inat{0}_locations.zip)", year.number()),
        }
    }
    if kind == DatasetKind::Flowers {
        let text = root.join("text_c10");
        if text.is_dir() {
            let records: Vec<Record> = ds.train.iter().chain(&ds.test).cloned().collect();
            let (captions, missing) = read_flowers_captions(&text, &ds.classes, &records)?;
            let with = captions.iter().filter(|c| !c.is_empty()).count();
            println!("  captions ({}): {with} of {} images have captions ({missing} without a file)", text.display(), records.len());
        } else {
            println!("  captions: no text_c10/ (Reed et al.'s sentences)");
        }
    }
    Ok(())
}

/// How many of `records` (ids are image ids) have a location, and a date, in the locations file.
fn geo_counts(records: &[Record], file: &Path) -> Result<(usize, usize)> {
    let fixes = read_location_file(file)?;
    let (mut located, mut dated) = (0, 0);
    for r in records {
        if let Some(fix) = r.id.parse::<u64>().ok().and_then(|id| fixes.get(&id)) {
            located += usize::from(fix.location.is_some());
            dated += usize::from(fix.day_of_year.is_some());
        }
    }
    Ok((located, dated))
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

    fn write(path: &Path, bytes: impl AsRef<[u8]>) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, bytes).expect("write");
    }

    /// A stand-in image file (the checks here do not decode).
    fn tiny_jpeg(path: &Path) {
        write(path, b"jpg");
    }

    /// iNat2018 with the locations release: the counts come from the files matched by image id.
    #[test]
    fn inat_verify_counts_locations_and_dates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let cat = r#"{"id": 3, "name": "Danaus plexippus", "supercategory": "Insecta"}"#;
        for (split, ids) in [("train", [1u64, 2, 3]), ("val", [7, 8, 9])] {
            let images: Vec<String> = ids.iter().map(|i| format!(r#"{{"id": {i}, "file_name": "train_val2018/Insecta/3/{i}.jpg"}}"#)).collect();
            let anns: Vec<String> = ids.iter().map(|i| format!(r#"{{"id": {i}, "image_id": {i}, "category_id": 3}}"#)).collect();
            write(
                &root.join(format!("{split}2018.json")),
                format!(r#"{{"images": [{}], "annotations": [{}], "categories": [{cat}]}}"#, images.join(","), anns.join(",")),
            );
            for i in ids {
                tiny_jpeg(&root.join(format!("train_val2018/Insecta/3/{i}.jpg")));
            }
        }
        write(
            &root.join("train2018_locations.json"),
            r#"[{"id": 1, "lat": 10, "lon": 20, "date": "2017-03-04"}, {"id": 2, "lat": null, "lon": null, "date": "2017-03-04"}]"#,
        );
        write(&root.join("val2018_locations.json"), r#"[{"id": 7, "lat": 10, "lon": 20, "date": null}]"#);
        let ds = verify(DatasetKind::Inat2018, root, false, false).expect("verifies");
        assert_eq!((ds.train.len(), ds.test.len()), (3, 3));
        let (train, val) = InatYear::Y2018.location_files(root).expect("present");
        assert_eq!(geo_counts(&ds.train, &train).expect("train"), (1, 2));
        assert_eq!(geo_counts(&ds.test, &val).expect("val"), (1, 0));
        // A damaged locations file fails the check, naming it.
        write(&val, r#"[{"id": 7, "lat": 100, "lon": 20}]"#);
        let e = verify(DatasetKind::Inat2018, root, false, false).expect_err("off the globe");
        assert!(format!("{e:#}").contains("val2018_locations.json"), "{e:#}");
    }

    /// Flowers-102 with two caption files.
    #[test]
    fn flowers_verify_with_captions() {
        use fgia_core::mat::MatValue;
        use fgia_core::mat::write::to_bytes;
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let row = |v: &[f64]| MatValue::Numeric { dims: vec![1, v.len()], data: v.to_vec() };
        write(&root.join("imagelabels.mat"), to_bytes(&[("labels", row(&[1.0, 2.0, 1.0, 2.0]))], true));
        write(&root.join("setid.mat"), to_bytes(&[("trnid", row(&[1.0])), ("valid", row(&[2.0])), ("tstid", row(&[3.0, 4.0]))], true));
        for n in 1..=4 {
            tiny_jpeg(&root.join(format!("jpg/image_{n:05}.jpg")));
        }
        write(&root.join("text_c10/class_00001/image_00001.txt"), "a flower\n");
        write(&root.join("text_c10/class_00002/image_00004.txt"), "another flower\n");
        let ds = verify(DatasetKind::Flowers, root, false, false).expect("verifies");
        assert_eq!((ds.train.len(), ds.test.len(), ds.num_classes()), (2, 2, 2));
        write(&root.join("text_c10/class_00001/image_00003.txt"), b"\xff\xfe");
        let e = verify(DatasetKind::Flowers, root, false, false).expect_err("bad caption");
        assert!(format!("{e:#}").contains("image_00003.txt:1"), "{e:#}");
    }

    #[test]
    fn the_sketch_sets_verify_with_decode() {
        for (name, pairs) in [("qmul-shoes-v1", (304, 115)), ("qmul-chairs-v1", (200, 97))] {
            let Some(root) = fgia_core::testing::shared_data(env!("CARGO_MANIFEST_DIR"), "the_sketch_sets_verify_with_decode", name) else { return };
            let ds = verify_sketch(&root, true).expect("verifies");
            assert_eq!((ds.train.len(), ds.test.len()), pairs, "{name}");
        }
    }
}
