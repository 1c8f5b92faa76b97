//! Stanford Cars (Krause et al., 2013), devkit layout: `devkit/cars_meta.mat` (`class_names`),
//! `devkit/cars_train_annos.mat` and `cars_test_annos_withlabels.mat` (struct array
//! `annotations` with `bbox_x1..bbox_y2`, `class`, `fname`), images under `cars_train/` and
//! `cars_test/`.
//!
//! Where the labelled test annotations are absent but a `train_test_split.txt`
//! (`<fname> <1|0>`) is present, the training annotations are split by that file instead; the
//! dataset's `split_note` says so. `cars-mini` is laid out this way.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::text::TextFile;
use super::{BBox, ClassTable, Dataset, ReadOptions, Record, Strictness, compact_classes};
use crate::error::{DataError, Result};
use crate::mat::{MatFile, MatValue};

fn find(root: &Path, name: &str) -> Option<PathBuf> {
    [root.join("devkit").join(name), root.join(name)].into_iter().find(|p| p.is_file())
}

/// Reads Stanford Cars from the folder holding `devkit/`, `cars_train/` and `cars_test/`.
pub fn read_cars(root: &Path, opts: ReadOptions) -> Result<Dataset> {
    let mut strict = Strictness::new(opts);
    let meta_path = find(root, "cars_meta.mat")
        .ok_or_else(|| DataError::NotFound { path: root.join("devkit").join("cars_meta.mat"), what: "Stanford Cars class names".into() })?;
    let meta = MatFile::open(&meta_path)?;
    let names = match meta.get("class_names").map_err(|m| DataError::format(&meta_path, m))? {
        MatValue::Cell { items, .. } => items
            .iter()
            .enumerate()
            .map(|(i, it)| {
                it.as_str().map(|s| (i as u32 + 1, s.to_string())).ok_or_else(|| DataError::format(&meta_path, format!("class_names{{{}}} is not text", i + 1)))
            })
            .collect::<Result<Vec<_>>>()?,
        other => return Err(DataError::format(&meta_path, format!("'class_names' is {}, expected a cell", other.kind()))),
    };
    let all_classes = ClassTable::from_pairs(names).map_err(|m| DataError::format(&meta_path, m))?;

    let train_path = find(root, "cars_train_annos.mat")
        .ok_or_else(|| DataError::NotFound { path: root.join("devkit").join("cars_train_annos.mat"), what: "Stanford Cars training annotations".into() })?;
    let train_annos = read_annos(&train_path, &all_classes, &root.join("cars_train"), &mut strict)?;

    let (mut train, mut test, split_note) = if let Some(test_path) = find(root, "cars_test_annos_withlabels.mat") {
        let test = read_annos(&test_path, &all_classes, &root.join("cars_test"), &mut strict)?;
        (train_annos, test, "official cars_train / cars_test_annos_withlabels".to_string())
    } else if let Some(split) = TextFile::read_optional(&root.join("train_test_split.txt"), "split")? {
        let mut flags: HashMap<String, bool> = HashMap::new();
        for line in split.lines() {
            let r = (|| {
                let f = line.fields(2, "<fname> <1=train|0=test>")?;
                let flag = match f[1] {
                    "1" => true,
                    "0" => false,
                    o => return Err(line.error(format!("flag must be 0 or 1, found '{o}'"))),
                };
                Ok((f[0].to_string(), flag))
            })();
            match r {
                Ok((k, v)) => {
                    flags.insert(k, v);
                }
                Err(e) => strict.bad(e)?,
            }
        }
        let (mut tr, mut te) = (Vec::new(), Vec::new());
        for rec in train_annos {
            match flags.get(&rec.id) {
                Some(true) => tr.push(rec),
                Some(false) => te.push(rec),
                None => strict.bad(DataError::MissingEntry { path: split.path.clone(), id: rec.id.clone(), defined_in: train_path.clone() })?,
            }
        }
        (tr, te, format!("NOT the official test set: training annotations split by {}", split.path.display()))
    } else {
        return Err(DataError::NotFound {
            path: root.join("cars_test_annos_withlabels.mat"),
            what: "labelled test annotations (or a train_test_split.txt)".into(),
        });
    };
    let classes = compact_classes(&all_classes, &mut train, &mut test);
    Ok(Dataset { name: "cars".into(), root: root.to_path_buf(), classes, train, test, levels: Vec::new(), skipped: strict.into_skipped(), split_note })
}

fn read_annos(path: &Path, classes: &ClassTable, images: &Path, strict: &mut Strictness) -> Result<Vec<Record>> {
    let mat = MatFile::open(path)?;
    let items = match mat.get("annotations").map_err(|m| DataError::format(path, m))? {
        MatValue::Struct { items, .. } => items,
        other => return Err(DataError::format(path, format!("'annotations' is {}, expected a struct array", other.kind()))),
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let row = i + 1;
        let r = (|| {
            let num = |f: &str| -> Result<f64> {
                item.get(f)
                    .and_then(MatValue::as_scalar)
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| DataError::format(path, format!("annotations({row}).{f} is missing or not a number")))
            };
            let fname = item
                .get("fname")
                .and_then(MatValue::as_str)
                .ok_or_else(|| DataError::format(path, format!("annotations({row}).fname is missing or not text")))?;
            if fname.contains("..") || fname.contains('/') || fname.contains('\\') {
                return Err(DataError::format(path, format!("annotations({row}).fname '{fname}' is not a plain file name")));
            }
            let class = num("class")?;
            let label = classes
                .index_of(class as u32)
                .filter(|_| class.fract() == 0.0 && class >= 1.0)
                .ok_or_else(|| DataError::format(path, format!("annotations({row}).class = {class} is not in cars_meta.mat")))?;
            let (x1, y1, x2, y2) = (num("bbox_x1")?, num("bbox_y1")?, num("bbox_x2")?, num("bbox_y2")?);
            if x2 < x1 || y2 < y1 {
                return Err(DataError::format(path, format!("annotations({row}) has an empty box")));
            }
            // MATLAB boxes are 1-based and inclusive.
            let bbox = BBox { x: (x1 - 1.0) as f32, y: (y1 - 1.0) as f32, w: (x2 - x1 + 1.0) as f32, h: (y2 - y1 + 1.0) as f32 };
            let mut rec = Record::new(images.join(fname), label, fname.to_string());
            rec.bbox = Some(bbox);
            rec.objects = vec![bbox];
            Ok(rec)
        })();
        match r {
            Ok(rec) => out.push(rec),
            Err(e) => strict.bad(e)?,
        }
    }
    Ok(out)
}
