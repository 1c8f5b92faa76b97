//! Oxford Flowers-102 (Nilsback & Zisserman, "Automated flower classification over a large
//! number of classes", ICVGIP 2008), official layout:
//!
//! - `jpg/image_00001.jpg` ... `jpg/image_08189.jpg` (from `102flowers.tgz`);
//! - `imagelabels.mat`: `labels`, 1×8189 doubles, the class (1..=102) of image `k` at `k`;
//! - `setid.mat`: `trnid`, `valid` and `tstid`, 1-based image numbers.
//!
//! The standard protocol trains on `trnid` + `valid` (2,040 images, 20 per class) and tests on
//! `tstid` (6,149 images). There is no official file of class names, so classes are named
//! `class 001` ... `class 102` after their label.
//!
//! The captions of Reed et al. (CVPR 2016) for this set live in
//! `text_c10/class_00001/image_00001.txt` (the class folder from the 1-based label):
//! [`read_flowers_captions`] reads them.

use std::path::{Path, PathBuf};

use super::external::read_caption_files;
use super::{ClassTable, Dataset, ReadOptions, Record, Strictness, compact_classes};
use crate::error::{DataError, Result};
use crate::mat::{MatFile, MatValue};

/// Reads Oxford Flowers-102 from the folder holding `jpg/`, `imagelabels.mat` and `setid.mat`:
/// `trnid` + `valid` form the training split, `tstid` the test split. Out-of-range or
/// non-integer image numbers and labels, an image in two splits, and a labelled image in no
/// split are errors (or counted skips with [`ReadOptions::skip_bad`]).
pub fn read_flowers(root: &Path, opts: ReadOptions) -> Result<Dataset> {
    let mut strict = Strictness::new(opts);
    let labels_path = root.join("imagelabels.mat");
    let setid_path = root.join("setid.mat");
    for (p, what) in [(&labels_path, "Flowers-102 image labels"), (&setid_path, "Flowers-102 split ids")] {
        if !p.is_file() {
            return Err(DataError::NotFound { path: p.clone(), what: what.into() });
        }
    }
    let labels_mat = MatFile::open(&labels_path)?;
    let labels = numbers(&labels_mat, &labels_path, "labels")?;
    if labels.is_empty() {
        return Err(DataError::format(&labels_path, "'labels' is empty"));
    }
    // Label of image k (1-based) at k - 1; None where the value is not a class number.
    let mut class_of: Vec<Option<u32>> = Vec::with_capacity(labels.len());
    for (i, &v) in labels.iter().enumerate() {
        match positive_integer(v) {
            Some(c) => class_of.push(Some(c)),
            None => {
                strict.bad(DataError::format(&labels_path, format!("labels({}) = {v} is not a positive integer class number", i + 1)))?;
                class_of.push(None);
            }
        }
    }

    let setid = MatFile::open(&setid_path)?;
    // Which split claimed each image, to refuse an image in two splits.
    let mut claimed: Vec<Option<&'static str>> = vec![None; labels.len()];
    let mut sides: [Vec<u32>; 3] = Default::default();
    for (side, var) in ["trnid", "valid", "tstid"].into_iter().enumerate() {
        for (i, v) in numbers(&setid, &setid_path, var)?.into_iter().enumerate() {
            let at = format!("{var}({})", i + 1);
            let Some(n) = positive_integer(v) else {
                strict.bad(DataError::format(&setid_path, format!("{at} = {v} is not a positive integer image number")))?;
                continue;
            };
            let Some(slot) = claimed.get_mut(n as usize - 1) else {
                strict.bad(DataError::format(&setid_path, format!("{at} = {n} is out of range: imagelabels.mat labels {} images", labels.len())))?;
                continue;
            };
            if let Some(first) = slot {
                strict.bad(DataError::format(&setid_path, format!("{at}: image {n} is already in {first}; an image belongs to one split")))?;
                continue;
            }
            *slot = Some(var);
            sides[side].push(n);
        }
    }
    let unclaimed = claimed.iter().filter(|c| c.is_none()).count();
    if unclaimed > 0 {
        let listed = labels.len() - unclaimed;
        strict.bad(DataError::format(
            &setid_path,
            format!("setid.mat lists {listed} images but imagelabels.mat labels {}; {unclaimed} labelled images are in no split", labels.len()),
        ))?;
    }

    let mut ids: Vec<u32> = class_of.iter().flatten().copied().collect();
    ids.sort_unstable();
    ids.dedup();
    let all_classes = ClassTable { names: ids.iter().map(|id| format!("class {id:03}")).collect(), ids };
    let records = |numbers: &[u32]| -> Vec<Record> {
        numbers
            .iter()
            .filter_map(|&n| {
                let class = class_of[n as usize - 1]?;
                let label = all_classes.index_of(class).expect("every valid label is in the table");
                Some(Record::new(image_path(root, n), label, format!("image_{n:05}")))
            })
            .collect()
    };
    let [trn, val, tst] = &sides;
    let mut train = records(trn);
    train.extend(records(val));
    let mut test = records(tst);
    let classes = compact_classes(&all_classes, &mut train, &mut test);
    Ok(Dataset {
        name: "flowers".into(),
        root: root.to_path_buf(),
        classes,
        train,
        test,
        levels: Vec::new(),
        skipped: strict.into_skipped(),
        split_note: format!("standard protocol: setid.mat trnid + valid ({} images) for training, tstid ({}) for testing", trn.len() + val.len(), tst.len()),
    })
}

/// The Reed et al. captions of Flowers-102 records: `text_dir/class_<label, 5 digits>/<image
/// stem>.txt`, the class folder named after the record's original class id in `classes` (the
/// dataset's class table). Returns the sentences of each record and how many had no file.
pub fn read_flowers_captions(text_dir: &Path, classes: &ClassTable, records: &[Record]) -> Result<(Vec<Vec<String>>, usize)> {
    let files = records
        .iter()
        .map(|r| {
            let class =
                classes.ids.get(r.label).ok_or_else(|| DataError::Invalid(format!("{}: label {} is not in the class table", r.path.display(), r.label)))?;
            let stem = r.path.file_stem().ok_or_else(|| DataError::format(&r.path, "an image path without a file name"))?;
            Ok(text_dir.join(format!("class_{class:05}")).join(stem).with_extension("txt"))
        })
        .collect::<Result<Vec<PathBuf>>>()?;
    read_caption_files(&files)
}

fn image_path(root: &Path, n: u32) -> PathBuf {
    root.join("jpg").join(format!("image_{n:05}.jpg"))
}

/// A whole number in `1..=u32::MAX`.
fn positive_integer(v: f64) -> Option<u32> {
    (v.fract() == 0.0 && (1.0..=u32::MAX as f64).contains(&v)).then_some(v as u32)
}

/// The values of the numeric variable `var`.
fn numbers(mat: &MatFile, path: &Path, var: &str) -> Result<Vec<f64>> {
    match mat.get(var).map_err(|m| DataError::format(path, m))? {
        MatValue::Numeric { data, .. } => Ok(data.clone()),
        other => Err(DataError::format(path, format!("'{var}' is a {} array, expected numeric", other.kind()))),
    }
}
