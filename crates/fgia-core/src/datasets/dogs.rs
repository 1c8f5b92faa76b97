//! Stanford Dogs (Khosla et al., 2011): `lists/{train,test}_list.mat` (or the two files directly in
//! the root) with `file_list`, `annotation_list` and `labels`, images under `Images/`, and
//! PASCAL-VOC XML boxes under `Annotation/<wnid-breed>/<stem>` (an image can have several
//! objects; [`Record::bbox`] is their union, [`Record::objects`] keeps each).

use std::path::{Path, PathBuf};

use super::{BBox, ClassTable, Dataset, ReadOptions, Record, Strictness, compact_classes};
use crate::error::{DataError, Result};
use crate::mat::{MatFile, MatValue};

/// Reads Stanford Dogs from its root (holding `Images/`, `Annotation/` and the lists).
pub fn read_dogs(root: &Path, opts: ReadOptions) -> Result<Dataset> {
    let list = |name: &str| -> Result<PathBuf> {
        for p in [root.join("lists").join(name), root.join(name)] {
            if p.is_file() {
                return Ok(p);
            }
        }
        Err(DataError::NotFound { path: root.join("lists").join(name), what: "Stanford Dogs split list (also looked in the root)".into() })
    };
    let mut strict = Strictness::new(opts);
    let annotations = root.join("Annotation");
    let have_annotations = annotations.is_dir();
    let train_rows = read_list(&list("train_list.mat")?)?;
    let test_rows = read_list(&list("test_list.mat")?)?;

    // Class ids are the `labels` (1..=120); names come from the `<wnid>-<breed>` folder.
    let mut pairs: Vec<(u32, String)> = Vec::new();
    for row in train_rows.iter().chain(&test_rows) {
        let folder = row.file.split('/').next().unwrap_or(&row.file);
        let name = folder.split_once('-').map(|(_, b)| b).unwrap_or(folder).to_string();
        match pairs.iter().find(|(id, _)| *id == row.label) {
            Some((_, existing)) if *existing != name => {
                return Err(DataError::format(&row.list, format!("label {} is used for both '{existing}' and '{name}'", row.label)));
            }
            Some(_) => {}
            None => pairs.push((row.label, name)),
        }
    }
    let classes = ClassTable::from_pairs(pairs).map_err(|m| DataError::format(root, m))?;

    let build = |rows: Vec<ListRow>, strict: &mut Strictness| -> Result<Vec<Record>> {
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let label = classes.index_of(row.label).expect("every label was added to the table above");
            let mut rec = Record::new(root.join("Images").join(&row.file), label, row.file.clone());
            if have_annotations {
                let xml = annotations.join(&row.annotation);
                match read_voc_boxes(&xml) {
                    Ok(boxes) => {
                        rec.bbox = boxes.iter().copied().reduce(|a, b| a.union(&b));
                        rec.objects = boxes;
                    }
                    Err(e) => {
                        strict.bad(e)?;
                        continue;
                    }
                }
            }
            out.push(rec);
        }
        Ok(out)
    };
    let mut train = build(train_rows, &mut strict)?;
    let mut test = build(test_rows, &mut strict)?;
    let classes = compact_classes(&classes, &mut train, &mut test);
    Ok(Dataset {
        name: "dogs".into(),
        root: root.to_path_buf(),
        classes,
        train,
        test,
        levels: Vec::new(),
        skipped: strict.into_skipped(),
        split_note: "official train_list.mat / test_list.mat".into(),
    })
}

struct ListRow {
    list: PathBuf,
    file: String,
    annotation: String,
    label: u32,
}

fn strings(v: &MatValue, path: &Path, var: &str) -> Result<Vec<String>> {
    match v {
        MatValue::Cell { items, .. } => items
            .iter()
            .enumerate()
            .map(|(i, it)| {
                it.as_str().map(str::to_string).ok_or_else(|| DataError::format(path, format!("{var}{{{}}} is {} where text was expected", i + 1, it.kind())))
            })
            .collect(),
        MatValue::Char { rows, .. } => Ok(rows.iter().map(|r| r.trim_end().to_string()).collect()),
        other => Err(DataError::format(path, format!("'{var}' is a {} array, expected a cell of strings", other.kind()))),
    }
}

fn read_list(path: &Path) -> Result<Vec<ListRow>> {
    let mat = MatFile::open(path)?;
    let get = |name: &str| mat.get(name).map_err(|m| DataError::format(path, m));
    let files = strings(get("file_list")?, path, "file_list")?;
    let annotations = strings(get("annotation_list")?, path, "annotation_list")?;
    let labels = match get("labels")? {
        MatValue::Numeric { data, .. } => data.clone(),
        other => return Err(DataError::format(path, format!("'labels' is a {} array, expected numeric", other.kind()))),
    };
    if files.len() != labels.len() || annotations.len() != labels.len() {
        return Err(DataError::format(
            path,
            format!("file_list ({}), annotation_list ({}) and labels ({}) differ in length", files.len(), annotations.len(), labels.len()),
        ));
    }
    files
        .into_iter()
        .zip(annotations)
        .zip(labels)
        .enumerate()
        .map(|(i, ((file, annotation), label))| {
            if label < 1.0 || label.fract() != 0.0 || label > u32::MAX as f64 {
                return Err(DataError::format(path, format!("labels({}) = {label} is not a positive integer", i + 1)));
            }
            for (var, p) in [("file_list", &file), ("annotation_list", &annotation)] {
                if !super::stays_inside(p) {
                    return Err(DataError::format(path, format!("{var}({}) = '{p}' leaves the dataset folder", i + 1)));
                }
            }
            Ok(ListRow { list: path.to_path_buf(), file, annotation, label: label as u32 })
        })
        .collect()
}

/// Reads every `<object><bndbox>` of a PASCAL-VOC annotation, as 0-based boxes.
pub(crate) fn read_voc_boxes(path: &Path) -> Result<Vec<BBox>> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    let doc = roxmltree::Document::parse(&text).map_err(|e| DataError::format(path, format!("invalid XML: {e}")))?;
    let mut boxes = Vec::new();
    for obj in doc.descendants().filter(|n| n.has_tag_name("object")) {
        let Some(bnd) = obj.children().find(|n| n.has_tag_name("bndbox")) else {
            return Err(DataError::format(path, format!("object at byte {} has no <bndbox>", obj.range().start)));
        };
        let coord = |tag: &str| -> Result<f32> {
            let node = bnd.children().find(|n| n.has_tag_name(tag)).ok_or_else(|| DataError::format(path, format!("<bndbox> lacks <{tag}>")))?;
            let t = node.text().unwrap_or("").trim();
            t.parse::<f32>().ok().filter(|v| v.is_finite()).ok_or_else(|| DataError::format(path, format!("<{tag}> '{t}' is not a number")))
        };
        let (x0, y0, x1, y1) = (coord("xmin")?, coord("ymin")?, coord("xmax")?, coord("ymax")?);
        if x1 <= x0 || y1 <= y0 {
            return Err(DataError::format(path, format!("empty box ({x0},{y0})-({x1},{y1})")));
        }
        boxes.push(BBox { x: x0, y: y0, w: x1 - x0, h: y1 - y0 });
    }
    if boxes.is_empty() {
        return Err(DataError::format(path, "annotation has no <object>"));
    }
    Ok(boxes)
}
