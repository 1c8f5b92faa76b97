//! CUB-200-2011 (Wah et al., 2011), official `CUB_200_2011/` layout:
//! `images.txt`, `image_class_labels.txt`, `train_test_split.txt`, `classes.txt`, and the optional
//! `bounding_boxes.txt` and `parts/part_locs.txt`.

use std::collections::HashMap;
use std::path::Path;

use super::text::TextFile;
use super::{BBox, ClassTable, Dataset, Part, ReadOptions, Record, Strictness, compact_classes};
use crate::error::{DataError, Result};

/// Reads CUB-200-2011 from its root (the folder holding `images.txt`; a parent holding
/// `CUB_200_2011/` is accepted too).
pub fn read_cub(root: &Path, opts: ReadOptions) -> Result<Dataset> {
    let root =
        if !root.join("images.txt").exists() && root.join("CUB_200_2011").join("images.txt").exists() { root.join("CUB_200_2011") } else { root.to_path_buf() };
    let mut strict = Strictness::new(opts);

    let classes_file = TextFile::read(&root.join("classes.txt"), "CUB class list")?;
    let mut pairs = Vec::new();
    for line in classes_file.lines() {
        let (id, name) = line.head_rest("<class_id> <class_name>")?;
        pairs.push((line.parse::<u32>(id, "class id")?, name.to_string()));
    }
    let all_classes = ClassTable::from_pairs(pairs).map_err(|m| DataError::format(&classes_file.path, m))?;

    // images.txt defines the image ids; every other file must refer only to them.
    let images = TextFile::read(&root.join("images.txt"), "CUB image list")?;
    let mut order: Vec<u64> = Vec::new();
    let mut rel_paths: HashMap<u64, String> = HashMap::new();
    for line in images.lines() {
        let parsed = line.head_rest("<image_id> <relative/path.jpg>").and_then(|(id, p)| Ok((line.parse::<u64>(id, "image id")?, p)));
        match parsed {
            Ok((_, p)) if !super::stays_inside(p) => strict.bad(line.error(format!("path '{p}' leaves the dataset root")))?,
            Ok((id, p)) => {
                if rel_paths.insert(id, p.to_string()).is_some() {
                    strict.bad(line.error(format!("image id {id} is listed twice")))?;
                } else {
                    order.push(id);
                }
            }
            Err(e) => strict.bad(e)?,
        }
    }

    let mut labels: HashMap<u64, usize> = HashMap::new();
    let labels_file = TextFile::read(&root.join("image_class_labels.txt"), "CUB image labels")?;
    for line in labels_file.lines() {
        let r = (|| {
            let f = line.fields(2, "<image_id> <class_id>")?;
            let id: u64 = line.parse(f[0], "image id")?;
            let class: u32 = line.parse(f[1], "class id")?;
            if !rel_paths.contains_key(&id) {
                return Err(unknown(&line, id, &images.path));
            }
            let idx = all_classes.index_of(class).ok_or_else(|| DataError::UnknownId {
                path: line.path.to_path_buf(),
                line: line.number,
                id: format!("class {class}"),
                other: classes_file.path.clone(),
            })?;
            Ok((id, idx))
        })();
        match r {
            Ok((id, idx)) => {
                labels.insert(id, idx);
            }
            Err(e) => strict.bad(e)?,
        }
    }

    let mut is_train: HashMap<u64, bool> = HashMap::new();
    let split_file = TextFile::read(&root.join("train_test_split.txt"), "CUB train/test split")?;
    for line in split_file.lines() {
        let r = (|| {
            let f = line.fields(2, "<image_id> <is_training_image>")?;
            let id: u64 = line.parse(f[0], "image id")?;
            let flag = match f[1] {
                "1" => true,
                "0" => false,
                other => return Err(line.error(format!("is_training_image must be 0 or 1, found '{other}'"))),
            };
            if !rel_paths.contains_key(&id) {
                return Err(unknown(&line, id, &images.path));
            }
            Ok((id, flag))
        })();
        match r {
            Ok((id, flag)) => {
                is_train.insert(id, flag);
            }
            Err(e) => strict.bad(e)?,
        }
    }

    let mut boxes: HashMap<u64, BBox> = HashMap::new();
    if let Some(file) = TextFile::read_optional(&root.join("bounding_boxes.txt"), "CUB boxes")? {
        for line in file.lines() {
            let r = (|| {
                let f = line.fields(5, "<image_id> <x> <y> <width> <height>")?;
                let id: u64 = line.parse(f[0], "image id")?;
                if !rel_paths.contains_key(&id) {
                    return Err(unknown(&line, id, &images.path));
                }
                let b = BBox { x: line.float(f[1], "x")?, y: line.float(f[2], "y")?, w: line.float(f[3], "width")?, h: line.float(f[4], "height")? };
                if b.w <= 0.0 || b.h <= 0.0 {
                    return Err(line.error("box width and height must be positive"));
                }
                Ok((id, b))
            })();
            match r {
                Ok((id, b)) => {
                    boxes.insert(id, b);
                }
                Err(e) => strict.bad(e)?,
            }
        }
    }

    let mut parts: HashMap<u64, Vec<Part>> = HashMap::new();
    if let Some(file) = TextFile::read_optional(&root.join("parts").join("part_locs.txt"), "CUB part locations")? {
        for line in file.lines() {
            let r = (|| {
                let f = line.fields(5, "<image_id> <part_id> <x> <y> <visible>")?;
                let id: u64 = line.parse(f[0], "image id")?;
                if !rel_paths.contains_key(&id) {
                    return Err(unknown(&line, id, &images.path));
                }
                let visible = match f[4] {
                    "1" => true,
                    "0" => false,
                    other => return Err(line.error(format!("visible must be 0 or 1, found '{other}'"))),
                };
                Ok((id, Part { id: line.parse(f[1], "part id")?, x: line.float(f[2], "x")?, y: line.float(f[3], "y")?, visible }))
            })();
            match r {
                Ok((id, p)) => parts.entry(id).or_default().push(p),
                Err(e) => strict.bad(e)?,
            }
        }
    }

    let (mut train, mut test) = (Vec::new(), Vec::new());
    for id in order {
        let Some(&label) = labels.get(&id) else {
            strict.bad(missing(&labels_file.path, id, &images.path))?;
            continue;
        };
        let Some(&flag) = is_train.get(&id) else {
            strict.bad(missing(&split_file.path, id, &images.path))?;
            continue;
        };
        let mut rec = Record::new(root.join("images").join(&rel_paths[&id]), label, id.to_string());
        rec.bbox = boxes.get(&id).copied();
        rec.objects = rec.bbox.into_iter().collect();
        rec.parts = parts.remove(&id).unwrap_or_default();
        rec.parts.sort_by_key(|p| p.id);
        if flag { train.push(rec) } else { test.push(rec) }
    }
    let classes = compact_classes(&all_classes, &mut train, &mut test);
    Ok(Dataset {
        name: "cub".into(),
        root,
        classes,
        train,
        test,
        levels: Vec::new(),
        skipped: strict.into_skipped(),
        split_note: "official train_test_split.txt".into(),
    })
}

fn unknown(line: &super::text::Line<'_>, id: u64, images: &Path) -> DataError {
    DataError::UnknownId { path: line.path.to_path_buf(), line: line.number, id: id.to_string(), other: images.to_path_buf() }
}

fn missing(path: &Path, id: u64, images: &Path) -> DataError {
    DataError::MissingEntry { path: path.to_path_buf(), id: id.to_string(), defined_in: images.to_path_buf() }
}
