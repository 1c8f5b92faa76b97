//! Generic layouts: `label relative/path` list files, and class-per-folder image trees.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::text::TextFile;
use super::{ClassTable, Dataset, ReadOptions, Record, Strictness};
use crate::error::{DataError, Result};

/// The class table of a set of labels, and the index of each label string in it.
fn label_table(labels: &[String]) -> (ClassTable, HashMap<String, usize>) {
    let mut unique: Vec<String> = labels.to_vec();
    unique.sort();
    unique.dedup();
    let numeric: Option<Vec<u32>> = unique.iter().map(|l| l.parse::<u32>().ok()).collect();
    let pairs: Vec<(u32, String)> = match numeric {
        // Integer labels keep their value as the class id, unless two spellings ("01", "1")
        // collide; then they are treated as names.
        Some(ids)
            if {
                let mut s = ids.clone();
                s.sort();
                s.dedup();
                s.len() == ids.len()
            } =>
        {
            ids.into_iter().zip(unique).collect()
        }
        // Names get ids 1..=n in sorted order.
        _ => unique.into_iter().enumerate().map(|(i, n)| (i as u32 + 1, n)).collect(),
    };
    let table = ClassTable::from_pairs(pairs).expect("ids are unique by construction");
    let index = table.names.iter().enumerate().map(|(i, n)| (n.clone(), i)).collect();
    (table, index)
}

/// Reads two list files of `label relative/path` lines (paths may contain spaces), resolving
/// paths against `root`. Integer labels are used as class ids; other labels are sorted by name.
pub fn read_list_files(root: &Path, train_list: &Path, test_list: &Path, opts: ReadOptions) -> Result<Dataset> {
    let mut strict = Strictness::new(opts);
    let mut sides: Vec<Vec<(String, String)>> = Vec::new();
    for list in [train_list, test_list] {
        let f = TextFile::read(list, "image list")?;
        let mut rows = Vec::new();
        for line in f.lines() {
            match line.head_rest("<label> <relative/path>") {
                Ok((_, p)) if !super::stays_inside(p) => {
                    strict.bad(line.error(format!("path '{p}' leaves the dataset root")))?;
                }
                Ok((l, p)) => rows.push((l.to_string(), p.to_string())),
                Err(e) => strict.bad(e)?,
            }
        }
        sides.push(rows);
    }
    let all: Vec<String> = sides.iter().flatten().map(|(l, _)| l.clone()).collect();
    let (classes, index) = label_table(&all);
    let to_records = |rows: &[(String, String)]| -> Vec<Record> { rows.iter().map(|(l, p)| Record::new(root.join(p), index[l.as_str()], p.clone())).collect() };
    Ok(Dataset {
        name: train_list.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "list".into()),
        root: root.to_path_buf(),
        train: to_records(&sides[0]),
        test: to_records(&sides[1]),
        classes,
        levels: Vec::new(),
        skipped: strict.into_skipped(),
        split_note: format!("list files {} / {}", train_list.display(), test_list.display()),
    })
}

const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// Reads `root/train/<class>/*.{jpg,jpeg,png}` and `root/test/<class>/...` (or `val/` when there
/// is no `test/`). Class folders are sorted by name; a class present on one side only is kept.
pub fn read_image_folder(root: &Path) -> Result<Dataset> {
    let train_dir = root.join("train");
    let test_dir = [root.join("test"), root.join("val")]
        .into_iter()
        .find(|p| p.is_dir())
        .ok_or_else(|| DataError::NotFound { path: root.join("test"), what: "test (or val) folder of an image-folder dataset".into() })?;
    if !train_dir.is_dir() {
        return Err(DataError::NotFound { path: train_dir, what: "train folder of an image-folder dataset".into() });
    }
    let class_dirs = |dir: &Path| -> Result<Vec<String>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
            let e = e.map_err(|e| DataError::io(dir, e))?;
            if e.file_type().map_err(|err| DataError::io(e.path(), err))?.is_dir() {
                v.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(v)
    };
    let mut names = class_dirs(&train_dir)?;
    names.extend(class_dirs(&test_dir)?);
    names.sort();
    names.dedup();
    let classes = ClassTable::from_pairs(names.iter().enumerate().map(|(i, n)| (i as u32 + 1, n.clone())).collect()).expect("names were deduplicated");
    let collect = |dir: &Path| -> Result<Vec<Record>> {
        let mut out = Vec::new();
        for (label, name) in names.iter().enumerate() {
            let cdir = dir.join(name);
            if !cdir.is_dir() {
                continue;
            }
            let mut files: Vec<PathBuf> = Vec::new();
            for e in std::fs::read_dir(&cdir).map_err(|e| DataError::io(&cdir, e))? {
                let p = e.map_err(|e| DataError::io(&cdir, e))?.path();
                let ext = p.extension().map(|x| x.to_string_lossy().to_ascii_lowercase());
                if p.is_file() && ext.is_some_and(|x| IMAGE_EXTENSIONS.contains(&x.as_str())) {
                    files.push(p);
                }
            }
            files.sort();
            for p in files {
                let id = p.strip_prefix(dir).unwrap_or(&p).to_string_lossy().into_owned();
                out.push(Record::new(p, label, id));
            }
        }
        Ok(out)
    };
    Ok(Dataset {
        name: root.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "folder".into()),
        root: root.to_path_buf(),
        train: collect(&train_dir)?,
        test: collect(&test_dir)?,
        classes,
        levels: Vec::new(),
        skipped: Vec::new(),
        split_note: format!("image folders train/ and {}/", test_dir.file_name().map(|s| s.to_string_lossy()).unwrap_or_default()),
    })
}
