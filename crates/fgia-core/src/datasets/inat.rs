//! iNaturalist 2017 and 2018 (Van Horn et al., "The iNaturalist species classification and
//! detection dataset", CVPR 2018; competition data of github.com/visipedia/inat_comp), COCO-style
//! JSON:
//!
//! - 2017: `train2017.json` and `val2017.json` (from `train_val2017.zip`), images under
//!   `train_val_images/<supercategory>/<name>/...`;
//! - 2018: `train2018.json` and `val2018.json`, images under `train_val2018/...`.
//!
//! Each file has `images` (`id`, `file_name`: the path relative to the root), `annotations`
//! (`image_id`, `category_id`) and `categories` (`id`, `name`, `supercategory`; 2018 adds
//! `kingdom` ... `genus`). The test images have no public labels, so the validation set is the
//! test split. Locations and dates come in a separate release (`inat2018_locations.zip`:
//! `train2018_locations.json`, `val2018_locations.json`), read by
//! [`super::read_location_file`]; [`InatYear::location_files`] finds them.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{ClassTable, Dataset, Level, ReadOptions, Record, Strictness, compact_classes, stays_inside};
use crate::error::{DataError, Result};

/// The competition year, which fixes the file names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InatYear {
    /// iNat2017: 5,089 classes, 579,184 train / 95,986 val images.
    Y2017,
    /// iNat2018: 8,142 classes, 437,513 train / 24,426 val images.
    Y2018,
}

impl InatYear {
    /// The year as a number.
    pub fn number(self) -> u32 {
        match self {
            InatYear::Y2017 => 2017,
            InatYear::Y2018 => 2018,
        }
    }

    /// The training and validation annotation files under `root`.
    pub fn annotation_files(self, root: &Path) -> (PathBuf, PathBuf) {
        let y = self.number();
        (root.join(format!("train{y}.json")), root.join(format!("val{y}.json")))
    }

    /// The training and validation locations files, in `root` or in `root/inat<year>_locations/`,
    /// where both are present.
    pub fn location_files(self, root: &Path) -> Option<(PathBuf, PathBuf)> {
        let y = self.number();
        [root.to_path_buf(), root.join(format!("inat{y}_locations"))].into_iter().find_map(|dir| {
            let (train, val) = (dir.join(format!("train{y}_locations.json")), dir.join(format!("val{y}_locations.json")));
            (train.is_file() && val.is_file()).then_some((train, val))
        })
    }
}

#[derive(Deserialize)]
struct CocoFile {
    images: Vec<CocoImage>,
    annotations: Vec<CocoAnnotation>,
    categories: Vec<CocoCategory>,
}

#[derive(Deserialize)]
struct CocoImage {
    id: u64,
    file_name: String,
}

#[derive(Deserialize)]
struct CocoAnnotation {
    image_id: u64,
    category_id: u64,
}

#[derive(Deserialize, Clone, PartialEq)]
struct CocoCategory {
    id: u64,
    name: String,
    supercategory: String,
    #[serde(default)]
    kingdom: Option<String>,
    #[serde(default)]
    phylum: Option<String>,
    #[serde(default)]
    class: Option<String>,
    #[serde(default)]
    order: Option<String>,
    #[serde(default)]
    family: Option<String>,
    #[serde(default)]
    genus: Option<String>,
}

/// The taxonomic ranks of 2018's categories, coarse to fine, after `supercategory`.
const RANKS: [&str; 6] = ["kingdom", "phylum", "class", "order", "family", "genus"];

impl CocoCategory {
    fn rank(&self, k: usize) -> Option<&str> {
        [&self.kingdom, &self.phylum, &self.class, &self.order, &self.family, &self.genus][k].as_deref()
    }
}

/// Reads iNaturalist `year` from the folder holding its JSON files and image folder: the
/// training file is the training split and the validation file the test split. Levels are
/// `supercategory` and, where every category has them (2018), the ranks `kingdom` ... `genus`.
/// Record ids are the image ids.
pub fn read_inat(root: &Path, year: InatYear, opts: ReadOptions) -> Result<Dataset> {
    let mut strict = Strictness::new(opts);
    let (train_path, val_path) = year.annotation_files(root);
    let train_file = load(&train_path, year)?;
    let val_file = load(&val_path, year)?;

    // The class table and the levels come from the training file; the validation file may
    // only repeat its categories.
    let mut cats = train_file.categories.clone();
    cats.sort_by_key(|c| c.id);
    if let Some(w) = cats.windows(2).find(|w| w[0].id == w[1].id) {
        return Err(DataError::format(&train_path, format!("category id {} appears twice", w[0].id)));
    }
    let pairs = cats
        .iter()
        .map(|c| u32::try_from(c.id).map(|id| (id, c.name.clone())).map_err(|_| DataError::format(&train_path, format!("category id {} is too large", c.id))))
        .collect::<Result<Vec<_>>>()?;
    let all_classes = ClassTable::from_pairs(pairs).map_err(|m| DataError::format(&train_path, m))?;

    // Levels: supercategory, then each rank that every category carries.
    let mut level_names: Vec<(String, Vec<&str>)> = vec![("supercategory".into(), cats.iter().map(|c| c.supercategory.as_str()).collect())];
    for (k, rank) in RANKS.iter().enumerate() {
        let values: Vec<Option<&str>> = cats.iter().map(|c| c.rank(k)).collect();
        match values.iter().position(Option::is_none) {
            None => level_names.push((rank.to_string(), values.into_iter().flatten().collect())),
            Some(i) if values.iter().any(Option::is_some) => {
                return Err(DataError::format(&train_path, format!("category {} has no '{rank}' while others have one", cats[i].id)));
            }
            Some(_) => {}
        }
    }
    // Per level: its table, and the level index of each category (by position in `cats`).
    let levels_of: Vec<(Level, Vec<usize>)> = level_names
        .into_iter()
        .map(|(name, values)| {
            let sorted: Vec<&str> = values.iter().copied().collect::<BTreeSet<_>>().into_iter().collect();
            let index: HashMap<&str, usize> = sorted.iter().enumerate().map(|(i, v)| (*v, i)).collect();
            let table = ClassTable { ids: (0..sorted.len() as u32).collect(), names: sorted.iter().map(|s| s.to_string()).collect() };
            (Level { name, classes: table }, values.iter().map(|v| index[v]).collect())
        })
        .collect();

    for c in &val_file.categories {
        if cats.binary_search_by_key(&c.id, |t| t.id).map(|i| cats[i] != *c).unwrap_or(true) {
            return Err(DataError::format(&val_path, format!("category {} ('{}') is not the same in {}", c.id, c.name, train_path.display())));
        }
    }
    let mut train = records(root, &train_path, train_file, &all_classes, &levels_of, &mut strict)?;
    let mut test = records(root, &val_path, val_file, &all_classes, &levels_of, &mut strict)?;
    let classes = compact_classes(&all_classes, &mut train, &mut test);
    let (y, train_name, val_name) = (year.number(), file_name(&train_path), file_name(&val_path));
    Ok(Dataset {
        name: format!("inat{y}"),
        root: root.to_path_buf(),
        classes,
        train,
        test,
        levels: levels_of.into_iter().map(|(l, _)| l).collect(),
        skipped: strict.into_skipped(),
        split_note: format!("{train_name} for training, {val_name} (the validation set) for testing: the iNat{y} test images have no public labels"),
    })
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default()
}

fn load(path: &Path, year: InatYear) -> Result<CocoFile> {
    if !path.is_file() {
        return Err(DataError::NotFound { path: path.to_path_buf(), what: format!("iNat{} annotation file", year.number()) });
    }
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| DataError::malformed(path, e.line(), e.to_string()))
}

/// The records of one file, in the order of its `images`.
fn records(root: &Path, path: &Path, file: CocoFile, classes: &ClassTable, levels: &[(Level, Vec<usize>)], strict: &mut Strictness) -> Result<Vec<Record>> {
    let image_ids: HashSet<u64> = file.images.iter().map(|im| im.id).collect();
    let mut label_of: HashMap<u64, usize> = HashMap::with_capacity(file.annotations.len());
    for (i, a) in file.annotations.iter().enumerate() {
        let at = format!("annotations[{i}] (image {})", a.image_id);
        let r = (|| {
            if !image_ids.contains(&a.image_id) {
                return Err(DataError::format(path, format!("{at}: the image id is not in images")));
            }
            let label = u32::try_from(a.category_id)
                .ok()
                .and_then(|c| classes.index_of(c))
                .ok_or_else(|| DataError::format(path, format!("{at}: category {} is not in categories", a.category_id)))?;
            if label_of.contains_key(&a.image_id) {
                return Err(DataError::format(path, format!("{at}: the image has a second annotation")));
            }
            Ok(label)
        })();
        match r {
            Ok(label) => {
                label_of.insert(a.image_id, label);
            }
            Err(e) => strict.bad(e)?,
        }
    }
    let mut seen = HashSet::with_capacity(file.images.len());
    let mut out = Vec::with_capacity(file.images.len());
    for (i, im) in file.images.into_iter().enumerate() {
        let at = format!("images[{i}] (id {})", im.id);
        if !seen.insert(im.id) {
            strict.bad(DataError::format(path, format!("{at}: the id appears twice")))?;
            continue;
        }
        if !stays_inside(&im.file_name) {
            strict.bad(DataError::format(path, format!("{at}: file name '{}' leaves the dataset root", im.file_name)))?;
            continue;
        }
        let Some(&label) = label_of.get(&im.id) else {
            strict.bad(DataError::format(path, format!("{at}: the image has no annotation")))?;
            continue;
        };
        let mut rec = Record::new(root.join(&im.file_name), label, im.id.to_string());
        rec.levels = levels.iter().map(|(_, of)| of[label]).collect();
        out.push(rec);
    }
    Ok(out)
}
