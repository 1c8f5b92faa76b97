//! CUB-200-2011 (Wah et al., 2011), official `CUB_200_2011/` layout:
//! `images.txt`, `image_class_labels.txt`, `train_test_split.txt`, `classes.txt`, and the optional
//! `bounding_boxes.txt`, `parts/parts.txt` and `parts/part_locs.txt`.
//!
//! NABirds (Van Horn et al., CVPR 2015) uses the same files with UUID image ids; both readers go
//! through [`read_cub_style`], which takes the form of the image ids as a parameter.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::text::{Line, TextFile};
use super::{BBox, ClassTable, Dataset, Part, ReadOptions, Record, Strictness, compact_classes};
use crate::error::{DataError, Result};

/// Reads CUB-200-2011 from its root (the folder holding `images.txt`; a parent holding
/// `CUB_200_2011/` is accepted too).
pub fn read_cub(root: &Path, opts: ReadOptions) -> Result<Dataset> {
    let root = layout_root(root, "CUB_200_2011");
    let CubStyle { all_classes, mut train, mut test, strict, .. } = read_cub_style(&root, "CUB", IdForm::Integer, opts)?;
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

/// `root`, or `root/<sub>` when `images.txt` is only found there.
pub(crate) fn layout_root(root: &Path, sub: &str) -> PathBuf {
    if !root.join("images.txt").exists() && root.join(sub).join("images.txt").exists() { root.join(sub) } else { root.to_path_buf() }
}

/// How a CUB-style layout writes its image ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdForm {
    /// Decimal integers (CUB). Kept in their canonical decimal form, so `010` and `10` agree.
    Integer,
    /// Tokens of ASCII letters, digits and `-` (NABirds' UUIDs), kept as written.
    Token,
}

impl IdForm {
    fn parse(self, line: &Line<'_>, field: &str) -> Result<String> {
        match self {
            IdForm::Integer => Ok(line.parse::<u64>(field, "image id")?.to_string()),
            IdForm::Token if !field.is_empty() && field.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => Ok(field.to_string()),
            IdForm::Token => Err(line.error(format!("image id '{field}' is not a token of letters, digits and '-'"))),
        }
    }
}

/// What [`read_cub_style`] read: every class of `classes.txt` (labels index into it, before
/// [`compact_classes`]), the records of both splits, and the skips so far.
pub(crate) struct CubStyle {
    pub(crate) classes_path: PathBuf,
    pub(crate) all_classes: ClassTable,
    pub(crate) train: Vec<Record>,
    pub(crate) test: Vec<Record>,
    pub(crate) strict: Strictness,
}

/// Reads the CUB file set at `root`; `what` names the dataset in "not found" errors.
pub(crate) fn read_cub_style(root: &Path, what: &str, ids: IdForm, opts: ReadOptions) -> Result<CubStyle> {
    let mut strict = Strictness::new(opts);

    let classes_file = TextFile::read(&root.join("classes.txt"), &format!("{what} class list"))?;
    let mut pairs = Vec::new();
    for line in classes_file.lines() {
        let (id, name) = line.head_rest("<class_id> <class_name>")?;
        pairs.push((line.parse::<u32>(id, "class id")?, name.to_string()));
    }
    let all_classes = ClassTable::from_pairs(pairs).map_err(|m| DataError::format(&classes_file.path, m))?;

    // images.txt defines the image ids; every other file must refer only to them.
    let images = TextFile::read(&root.join("images.txt"), &format!("{what} image list"))?;
    let mut order: Vec<String> = Vec::new();
    let mut rel_paths: HashMap<String, String> = HashMap::new();
    for line in images.lines() {
        let parsed = line.head_rest("<image_id> <relative/path.jpg>").and_then(|(id, p)| Ok((ids.parse(&line, id)?, p)));
        match parsed {
            Ok((_, p)) if !super::stays_inside(p) => strict.bad(line.error(format!("path '{p}' leaves the dataset root")))?,
            Ok((id, p)) => {
                if rel_paths.contains_key(&id) {
                    strict.bad(line.error(format!("image id {id} is listed twice")))?;
                } else {
                    rel_paths.insert(id.clone(), p.to_string());
                    order.push(id);
                }
            }
            Err(e) => strict.bad(e)?,
        }
    }
    // The id of a line's first field, which must be listed in images.txt.
    let known = |line: &Line<'_>, field: &str| -> Result<String> {
        let id = ids.parse(line, field)?;
        if !rel_paths.contains_key(&id) {
            return Err(DataError::UnknownId { path: line.path.to_path_buf(), line: line.number, id, other: images.path.clone() });
        }
        Ok(id)
    };

    let mut labels: HashMap<String, usize> = HashMap::new();
    let labels_file = TextFile::read(&root.join("image_class_labels.txt"), &format!("{what} image labels"))?;
    for line in labels_file.lines() {
        let r = (|| {
            let f = line.fields(2, "<image_id> <class_id>")?;
            let id = known(&line, f[0])?;
            let class: u32 = line.parse(f[1], "class id")?;
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

    let mut is_train: HashMap<String, bool> = HashMap::new();
    let split_file = TextFile::read(&root.join("train_test_split.txt"), &format!("{what} train/test split"))?;
    for line in split_file.lines() {
        let r = (|| {
            let f = line.fields(2, "<image_id> <is_training_image>")?;
            let flag = zero_one(&line, f[1], "is_training_image")?;
            Ok((known(&line, f[0])?, flag))
        })();
        match r {
            Ok((id, flag)) => {
                is_train.insert(id, flag);
            }
            Err(e) => strict.bad(e)?,
        }
    }

    let mut boxes: HashMap<String, BBox> = HashMap::new();
    if let Some(file) = TextFile::read_optional(&root.join("bounding_boxes.txt"), &format!("{what} boxes"))? {
        for line in file.lines() {
            let r = (|| {
                let f = line.fields(5, "<image_id> <x> <y> <width> <height>")?;
                let id = known(&line, f[0])?;
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

    // parts.txt, where present, defines the part ids that part_locs.txt may use.
    let part_names = TextFile::read_optional(&root.join("parts").join("parts.txt"), &format!("{what} part names"))?;
    let mut part_ids: Option<HashSet<u32>> = None;
    if let Some(file) = &part_names {
        let mut set = HashSet::new();
        for line in file.lines() {
            let (id, _) = line.head_rest("<part_id> <part_name>")?;
            if !set.insert(line.parse::<u32>(id, "part id")?) {
                return Err(line.error(format!("part id {id} is defined twice")));
            }
        }
        part_ids = Some(set);
    }
    let mut parts: HashMap<String, Vec<Part>> = HashMap::new();
    if let Some(file) = TextFile::read_optional(&root.join("parts").join("part_locs.txt"), &format!("{what} part locations"))? {
        for line in file.lines() {
            let r = (|| {
                let f = line.fields(5, "<image_id> <part_id> <x> <y> <visible>")?;
                let id = known(&line, f[0])?;
                let part: u32 = line.parse(f[1], "part id")?;
                if let (Some(set), Some(names)) = (&part_ids, &part_names)
                    && !set.contains(&part)
                {
                    return Err(DataError::UnknownId {
                        path: line.path.to_path_buf(),
                        line: line.number,
                        id: format!("part {part}"),
                        other: names.path.clone(),
                    });
                }
                let visible = zero_one(&line, f[4], "visible")?;
                Ok((id, Part { id: part, x: line.float(f[2], "x")?, y: line.float(f[3], "y")?, visible }))
            })();
            match r {
                Ok((id, p)) => parts.entry(id).or_default().push(p),
                Err(e) => strict.bad(e)?,
            }
        }
    }

    let (mut train, mut test) = (Vec::new(), Vec::new());
    for id in order {
        let missing = |path: &Path| DataError::MissingEntry { path: path.to_path_buf(), id: id.clone(), defined_in: images.path.clone() };
        let Some(&label) = labels.get(&id) else {
            strict.bad(missing(&labels_file.path))?;
            continue;
        };
        let Some(&flag) = is_train.get(&id) else {
            strict.bad(missing(&split_file.path))?;
            continue;
        };
        let mut rec = Record::new(root.join("images").join(&rel_paths[&id]), label, id.clone());
        rec.bbox = boxes.get(&id).copied();
        rec.objects = rec.bbox.into_iter().collect();
        rec.parts = parts.remove(&id).unwrap_or_default();
        rec.parts.sort_by_key(|p| p.id);
        if flag { train.push(rec) } else { test.push(rec) }
    }
    Ok(CubStyle { classes_path: classes_file.path, all_classes, train, test, strict })
}

fn zero_one(line: &Line<'_>, field: &str, name: &str) -> Result<bool> {
    match field {
        "1" => Ok(true),
        "0" => Ok(false),
        other => Err(line.error(format!("{name} must be 0 or 1, found '{other}'"))),
    }
}
