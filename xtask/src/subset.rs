//! Builds the 40-class CUB subset of the smoke profile from a full CUB-200-2011 download, by the
//! rule `cub-mini` was made with: classes 1-40, and per class the first 15 official-train and
//! the first 15 official-test images by image id. Ids, labels, split flags, boxes and parts are
//! the official values; images are hard-linked (or copied) at their original size.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use anyhow::{Context, Result, bail};

/// Classes of the smoke subset.
pub const SMOKE_CLASSES: std::ops::RangeInclusive<u32> = 1..=40;
/// Images per class and split.
pub const PER_SPLIT: usize = 15;

fn lines(path: &Path) -> Result<Vec<String>> {
    Ok(std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?.lines().map(|l| l.trim_end().to_string()).collect())
}

/// Writes the smoke subset of the CUB root `src` into `dest` (which must not exist).
pub fn build_cub_subset(src: &Path, dest: &Path) -> Result<usize> {
    build_cub_subset_of(src, dest, SMOKE_CLASSES, PER_SPLIT)
}

/// Writes the subset of `src` with the class ids `classes`, and per class the first `per_split`
/// official-train and official-test images by id, into `dest` (which must not exist). Returns
/// the number of images.
pub fn build_cub_subset_of(src: &Path, dest: &Path, classes: std::ops::RangeInclusive<u32>, per_split: usize) -> Result<usize> {
    if dest.exists() {
        bail!("{}: already exists; the subset is written to a new folder", dest.display());
    }
    // Parse with the toolkit's reader first: a malformed official file fails here, clearly.
    let ds = fgia_core::datasets::read_cub(src, fgia_core::datasets::ReadOptions::default())?;
    let mut chosen: HashSet<String> = HashSet::new();
    let mut per: BTreeMap<(usize, bool), usize> = BTreeMap::new();
    let mut all: Vec<(u64, usize, bool)> = ds
        .train
        .iter()
        .map(|r| (r, true))
        .chain(ds.test.iter().map(|r| (r, false)))
        .filter(|(r, _)| classes.contains(&ds.classes.ids[r.label]))
        .filter_map(|(r, t)| r.id.parse::<u64>().ok().map(|id| (id, r.label, t)))
        .collect();
    all.sort();
    for (id, label, train) in all {
        let n = per.entry((label, train)).or_default();
        if *n < per_split {
            *n += 1;
            chosen.insert(id.to_string());
        }
    }
    // The subset is written beside, never inside or onto, the source.
    let src_real = std::fs::canonicalize(src).with_context(|| format!("{}: cannot resolve", src.display()))?;
    let dest_parent = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dest_parent)?;
    let dest_real = std::fs::canonicalize(dest_parent)?.join(dest.file_name().context("the subset folder has no name")?);
    if dest_real.starts_with(&src_real) || src_real.starts_with(&dest_real) {
        bail!("{}: the subset folder must lie outside the source {} (and not contain it)", dest.display(), src.display());
    }
    let tmp = dest.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(tmp.join("parts"))?;
    let keep_id = |l: &str| l.split_whitespace().next().is_some_and(|id| chosen.contains(id));
    for file in ["images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt", "parts/part_locs.txt"] {
        let kept: Vec<String> = lines(&src.join(file))?.into_iter().filter(|l| keep_id(l)).collect();
        std::fs::write(tmp.join(file), kept.join("\n") + "\n")?;
    }
    let classes: Vec<String> = lines(&src.join("classes.txt"))?
        .into_iter()
        .filter(|l| l.split_whitespace().next().and_then(|i| i.parse::<u32>().ok()).is_some_and(|i| classes.contains(&i)))
        .collect();
    std::fs::write(tmp.join("classes.txt"), classes.join("\n") + "\n")?;
    std::fs::copy(src.join("parts/parts.txt"), tmp.join("parts/parts.txt")).ok();
    // Each image once: two ids may list the same file, and a second copy onto the hard link
    // made for the first would truncate the source itself.
    let mut placed: HashSet<String> = HashSet::new();
    for l in lines(&src.join("images.txt"))?.into_iter().filter(|l| keep_id(l)) {
        let rel = l.split_once(' ').map(|(_, p)| p.trim()).unwrap_or_default();
        if !placed.insert(rel.to_string()) {
            continue;
        }
        let (from, to) = (src.join("images").join(rel), tmp.join("images").join(rel));
        std::fs::create_dir_all(to.parent().context("image path has no folder")?)?;
        if std::fs::symlink_metadata(&to).is_ok() {
            bail!("{}: already exists; refusing to overwrite it", to.display());
        }
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).with_context(|| format!("{}: cannot copy", from.display()))?;
        }
    }
    std::fs::rename(&tmp, dest)?;
    Ok(chosen.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_first_images_of_each_class_and_split() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("CUB_200_2011");
        std::fs::create_dir_all(src.join("parts")).expect("mkdir");
        let mut images = String::new();
        let mut labels = String::new();
        let mut split = String::new();
        // Class 1: 20 train + 20 test images; class 41: 2 images (outside the subset).
        let mut id = 0;
        for (class, n) in [(1u32, 40), (41, 2)] {
            for k in 0..n {
                id += 1;
                let rel = format!("{class:03}.C/img{id}.jpg");
                images.push_str(&format!("{id} {rel}\n"));
                labels.push_str(&format!("{id} {class}\n"));
                split.push_str(&format!("{id} {}\n", k % 2));
                let p = src.join("images").join(&rel);
                std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
                std::fs::write(p, b"jpg").expect("write");
            }
        }
        std::fs::write(src.join("images.txt"), images).expect("w");
        std::fs::write(src.join("image_class_labels.txt"), labels).expect("w");
        std::fs::write(src.join("train_test_split.txt"), split).expect("w");
        std::fs::write(src.join("classes.txt"), "1 001.C\n41 041.C\n").expect("w");
        std::fs::write(src.join("bounding_boxes.txt"), "").expect("w");
        std::fs::write(src.join("parts/part_locs.txt"), "").expect("w");
        let dest = dir.path().join("subset");
        assert_eq!(build_cub_subset(&src, &dest).expect("builds"), 30);
        let ds = fgia_core::datasets::read_cub(&dest, Default::default()).expect("subset reads");
        assert_eq!((ds.num_classes(), ds.train.len(), ds.test.len()), (1, 15, 15));
        // The first 15 training images by id: ids 2, 4, ..., 30.
        assert_eq!(ds.train.last().map(|r| r.id.as_str()), Some("30"));
    }

    #[test]
    fn an_image_listed_twice_is_placed_once_and_the_source_is_never_truncated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("CUB_200_2011");
        std::fs::create_dir_all(src.join("parts")).expect("mkdir");
        std::fs::create_dir_all(src.join("images/001.C")).expect("mkdir");
        let body = b"the only copy of this image".to_vec();
        std::fs::write(src.join("images/001.C/a.jpg"), &body).expect("write");
        std::fs::write(src.join("images/001.C/b.jpg"), &body).expect("write");
        // Ids 1 and 2 both name a.jpg.
        std::fs::write(src.join("images.txt"), "1 001.C/a.jpg\n2 001.C/a.jpg\n3 001.C/b.jpg\n").expect("w");
        std::fs::write(src.join("image_class_labels.txt"), "1 1\n2 1\n3 1\n").expect("w");
        std::fs::write(src.join("train_test_split.txt"), "1 1\n2 0\n3 0\n").expect("w");
        std::fs::write(src.join("classes.txt"), "1 001.C\n").expect("w");
        std::fs::write(src.join("bounding_boxes.txt"), "").expect("w");
        std::fs::write(src.join("parts/part_locs.txt"), "").expect("w");
        build_cub_subset(&src, &dir.path().join("subset")).expect("builds");
        assert_eq!(std::fs::read(src.join("images/001.C/a.jpg")).expect("source"), body, "the source image is intact");
        assert_eq!(std::fs::read(dir.path().join("subset/images/001.C/a.jpg")).expect("subset"), body);
        // A subset inside its own source is refused before anything is written.
        let e = build_cub_subset(&src, &src.join("images/mini")).expect_err("inside");
        assert!(e.to_string().contains("outside the source"), "{e}");
        assert!(!src.join("images/mini").exists() && !src.join("images/mini.partial").exists());
    }
}
