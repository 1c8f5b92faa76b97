//! Readers for the official annotation formats of the fine-grained benchmarks.
//!
//! Every reader returns a [`Dataset`]: the class table, the official train and test records, and
//! the lines it skipped (only with [`ReadOptions::skip_bad`]). Class ids in the files are mapped
//! through a lookup table, never by `id - 1`, because subsets have gaps in their ids. Labels in
//! [`Record::label`] are contiguous indices into [`Dataset::classes`], ordered by original id, and
//! only classes that have at least one image are kept.

mod aircraft;
mod cars;
mod cub;
mod cub_attributes;
mod dogs;
mod external;
mod flowers;
mod inat;
mod list;
mod nabirds;
mod qmul;
mod text;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use aircraft::{AircraftSplit, read_aircraft};
pub use cars::read_cars;
pub use cub::read_cub;
pub use cub_attributes::{ClassAttributes, read_class_attributes};
pub use dogs::read_dogs;
pub use external::{GeoFix, GeoRecord, day_of_year, read_captions, read_inat_locations, read_inat_locations_from, read_location_file, read_webfg};
pub use flowers::{read_flowers, read_flowers_captions};
pub use inat::{InatYear, read_inat};
pub use list::{read_image_folder, read_list_files};
pub use nabirds::read_nabirds;
pub use qmul::{SketchDataset, SketchSplit, TripletSampler, read_qmul};

use crate::error::{DataError, Result};

/// An axis-aligned box in pixels of the image as stored: top-left corner and size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BBox {
    /// Left edge (0-based pixels).
    pub x: f32,
    /// Top edge (0-based pixels).
    pub y: f32,
    /// Width in pixels.
    pub w: f32,
    /// Height in pixels.
    pub h: f32,
}

impl BBox {
    /// The smallest box holding both.
    pub fn union(&self, other: &BBox) -> BBox {
        let x0 = self.x.min(other.x);
        let y0 = self.y.min(other.y);
        let x1 = (self.x + self.w).max(other.x + other.w);
        let y1 = (self.y + self.h).max(other.y + other.h);
        BBox { x: x0, y: y0, w: x1 - x0, h: y1 - y0 }
    }
}

/// A part location (CUB's 15 keypoints, NABirds' 11).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Part {
    /// Part id as in `parts/parts.txt`.
    pub id: u32,
    /// Horizontal position in pixels.
    pub x: f32,
    /// Vertical position in pixels.
    pub y: f32,
    /// Whether the part is visible.
    pub visible: bool,
}

/// One annotated image.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Image file (root joined with the relative path from the annotation).
    pub path: PathBuf,
    /// Contiguous class index into [`Dataset::classes`].
    pub label: usize,
    /// The image's id in the official files (image id, file stem or file name).
    pub id: String,
    /// The object box used for box crops. For Dogs images with several objects, their union.
    pub bbox: Option<BBox>,
    /// Every annotated object box (Dogs can have several).
    pub objects: Vec<BBox>,
    /// Part locations, where the dataset has them.
    pub parts: Vec<Part>,
    /// Labels at coarser levels, parallel to [`Dataset::levels`] (Aircraft family, manufacturer).
    pub levels: Vec<usize>,
    /// Rows to drop at the bottom of the image before any other step (Aircraft's banner).
    pub trim_bottom: u32,
}

impl Record {
    /// A record with no box, parts or levels.
    pub fn new(path: PathBuf, label: usize, id: String) -> Self {
        Record { path, label, id, bbox: None, objects: Vec::new(), parts: Vec::new(), levels: Vec::new(), trim_bottom: 0 }
    }
}

/// The classes of a dataset, ordered by their original id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClassTable {
    /// Original class ids, strictly increasing.
    pub ids: Vec<u32>,
    /// Class names, parallel to `ids`.
    pub names: Vec<String>,
}

impl ClassTable {
    /// Builds a table from `(id, name)` pairs in any order; duplicates are an error.
    pub fn from_pairs(mut pairs: Vec<(u32, String)>) -> std::result::Result<Self, String> {
        pairs.sort_by_key(|p| p.0);
        if let Some(w) = pairs.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(format!("class id {} is defined twice", w[0].0));
        }
        let (ids, names) = pairs.into_iter().unzip();
        Ok(ClassTable { ids, names })
    }

    /// Number of classes.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there is no class.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Contiguous index of an original id.
    pub fn index_of(&self, id: u32) -> Option<usize> {
        self.ids.binary_search(&id).ok()
    }
}

/// A coarser label level (FGVC-Aircraft's family and manufacturer).
#[derive(Debug, Clone, PartialEq)]
pub struct Level {
    /// Level name.
    pub name: String,
    /// Its classes.
    pub classes: ClassTable,
}

/// A line or file passed over because of [`ReadOptions::skip_bad`].
#[derive(Debug, Clone, PartialEq)]
pub struct Skip {
    /// The error that would have been returned.
    pub reason: String,
}

/// Options shared by every reader.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadOptions {
    /// Skip malformed lines and images lacking an entry instead of failing; they are counted in
    /// [`Dataset::skipped`].
    pub skip_bad: bool,
}

/// The benchmark datasets known by name on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    /// CUB-200-2011.
    Cub,
    /// Stanford Dogs.
    Dogs,
    /// Stanford Cars.
    Cars,
    /// FGVC-Aircraft (variant level, trainval/test).
    Aircraft,
    /// NABirds (555 leaf classes, with the `parent` and `top` levels of its hierarchy).
    Nabirds,
    /// Oxford Flowers-102 (train + val / test).
    Flowers,
    /// iNaturalist 2017 (train / val; the test set has no public labels).
    Inat2017,
    /// iNaturalist 2018 (train / val; the test set has no public labels).
    Inat2018,
    /// A WebFG-style folder of crawled web images (`train/<class>/`, noisy labels) with a clean
    /// `val/<class>/` test set (WebFG-496's web-bird, web-car, web-aircraft).
    Webfg,
}

impl DatasetKind {
    /// All kinds, in the survey's order.
    pub const ALL: [DatasetKind; 9] = [
        DatasetKind::Cub,
        DatasetKind::Dogs,
        DatasetKind::Cars,
        DatasetKind::Aircraft,
        DatasetKind::Nabirds,
        DatasetKind::Flowers,
        DatasetKind::Inat2017,
        DatasetKind::Inat2018,
        DatasetKind::Webfg,
    ];

    /// Command-line name.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Cub => "cub",
            DatasetKind::Dogs => "dogs",
            DatasetKind::Cars => "cars",
            DatasetKind::Aircraft => "aircraft",
            DatasetKind::Nabirds => "nabirds",
            DatasetKind::Flowers => "flowers",
            DatasetKind::Inat2017 => "inat2017",
            DatasetKind::Inat2018 => "inat2018",
            DatasetKind::Webfg => "webfg",
        }
    }

    /// The name the survey's tables use.
    pub fn survey_name(self) -> &'static str {
        match self {
            DatasetKind::Cub => "CUB-200-2011",
            DatasetKind::Dogs => "Stanford-Dogs",
            DatasetKind::Cars => "Stanford-Cars",
            DatasetKind::Aircraft => "FGVC-Aircraft",
            DatasetKind::Nabirds => "NABirds",
            DatasetKind::Flowers => "Oxford Flowers-102",
            DatasetKind::Inat2017 => "iNat2017",
            DatasetKind::Inat2018 => "iNat2018",
            DatasetKind::Webfg => "WebFG (web images)",
        }
    }

    /// Reads the dataset at `root` in its official layout.
    pub fn read(self, root: &Path, opts: ReadOptions) -> Result<Dataset> {
        match self {
            DatasetKind::Cub => read_cub(root, opts),
            DatasetKind::Dogs => read_dogs(root, opts),
            DatasetKind::Cars => read_cars(root, opts),
            DatasetKind::Aircraft => read_aircraft(root, AircraftSplit::TrainvalTest, false, opts),
            DatasetKind::Nabirds => read_nabirds(root, opts),
            DatasetKind::Flowers => read_flowers(root, opts),
            DatasetKind::Inat2017 => read_inat(root, InatYear::Y2017, opts),
            DatasetKind::Inat2018 => read_inat(root, InatYear::Y2018, opts),
            // Class folders have no malformed lines to skip.
            DatasetKind::Webfg => read_webfg(root),
        }
    }

    /// Whether `cargo xtask download` knows the dataset: WebFG's archives are linked from its
    /// authors' repository without sizes or checksums, so it has no manifest.
    pub fn has_manifest(self) -> bool {
        !matches!(self, DatasetKind::Webfg)
    }

    /// The standard class-disjoint retrieval split (train classes, by original id), where one
    /// is established: CUB 1-100 / 101-200, Cars 1-98 / 99-196.
    pub fn retrieval_train_classes(self) -> Option<std::ops::RangeInclusive<u32>> {
        match self {
            DatasetKind::Cub => Some(1..=100),
            DatasetKind::Cars => Some(1..=98),
            _ => None,
        }
    }
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DatasetKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        DatasetKind::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            let known: Vec<&str> = DatasetKind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown dataset '{s}' (known: {})", known.join(", "))
        })
    }
}

/// A dataset with its official split.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Short name (`cub`, `dogs`, ... or a list name).
    pub name: String,
    /// Folder the dataset was read from.
    pub root: PathBuf,
    /// Classes that have at least one image.
    pub classes: ClassTable,
    /// Training records.
    pub train: Vec<Record>,
    /// Test records.
    pub test: Vec<Record>,
    /// Coarser label levels, if any.
    pub levels: Vec<Level>,
    /// What was skipped under [`ReadOptions::skip_bad`].
    pub skipped: Vec<Skip>,
    /// How the split was obtained (official file, or a documented substitute).
    pub split_note: String,
}

impl Dataset {
    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// Every image file referenced by a record that does not exist on disk.
    pub fn missing_files(&self) -> Vec<PathBuf> {
        self.train.iter().chain(&self.test).filter(|r| !r.path.is_file()).map(|r| r.path.clone()).collect()
    }

    /// Records per class in the training and the test split.
    pub fn class_counts(&self) -> Vec<(usize, usize)> {
        let mut counts = vec![(0, 0); self.num_classes()];
        for r in &self.train {
            counts[r.label].0 += 1;
        }
        for r in &self.test {
            counts[r.label].1 += 1;
        }
        counts
    }

    /// The class-disjoint retrieval protocol: all images (train and test) of the classes whose
    /// original id is in `train_ids` form the training set, all other images the test set.
    /// Labels keep their meaning (indices into the same class table).
    pub fn retrieval_split(&self, train_ids: std::ops::RangeInclusive<u32>) -> Result<Dataset> {
        let (mut train, mut test) = (Vec::new(), Vec::new());
        for r in self.train.iter().chain(&self.test) {
            if train_ids.contains(&self.classes.ids[r.label]) {
                train.push(r.clone());
            } else {
                test.push(r.clone());
            }
        }
        if train.is_empty() || test.is_empty() {
            return Err(DataError::Invalid(format!(
                "retrieval split {}-{} of '{}' leaves an empty side ({} train, {} test images)",
                train_ids.start(),
                train_ids.end(),
                self.name,
                train.len(),
                test.len()
            )));
        }
        Ok(Dataset {
            train,
            test,
            split_note: format!("class-disjoint retrieval split: classes {}-{} train, the rest test", train_ids.start(), train_ids.end()),
            ..self.clone()
        })
    }

    /// Keeps only the classes whose original id is in `ids` (for example CUB 1-40) and re-indexes
    /// the labels.
    pub fn restrict_classes(&self, ids: std::ops::RangeInclusive<u32>) -> Dataset {
        let keep: Vec<usize> = (0..self.num_classes()).filter(|&i| ids.contains(&self.classes.ids[i])).collect();
        let remap: HashMap<usize, usize> = keep.iter().enumerate().map(|(new, &old)| (old, new)).collect();
        let filter = |rs: &[Record]| -> Vec<Record> { rs.iter().filter_map(|r| remap.get(&r.label).map(|&l| Record { label: l, ..r.clone() })).collect() };
        Dataset {
            classes: ClassTable {
                ids: keep.iter().map(|&i| self.classes.ids[i]).collect(),
                names: keep.iter().map(|&i| self.classes.names[i].clone()).collect(),
            },
            train: filter(&self.train),
            test: filter(&self.test),
            ..self.clone()
        }
    }
}

/// Collects skips or turns the first bad line into an error, depending on the options.
pub(crate) struct Strictness {
    skip_bad: bool,
    skipped: Vec<Skip>,
}

impl Strictness {
    pub(crate) fn new(opts: ReadOptions) -> Self {
        Strictness { skip_bad: opts.skip_bad, skipped: Vec::new() }
    }

    /// Records the problem and continues, or returns it as the error.
    pub(crate) fn bad(&mut self, err: DataError) -> Result<()> {
        if self.skip_bad {
            self.skipped.push(Skip { reason: err.to_string() });
            Ok(())
        } else {
            Err(err)
        }
    }

    pub(crate) fn into_skipped(self) -> Vec<Skip> {
        self.skipped
    }
}

/// Whether a path read from an annotation file stays inside the dataset root once joined to it:
/// not empty, not absolute, and without a `..` component (with `/` or `\\` as separators).
/// Reading only regular files is the image loader's rule ([`crate::imaging::read_image_file`]).
pub(crate) fn stays_inside(p: &str) -> bool {
    !p.is_empty() && !p.starts_with(['/', '\\']) && !Path::new(p).is_absolute() && p.split(['/', '\\']).all(|c| c != "..")
}

/// Keeps only the classes used by some record and re-indexes the labels of both splits.
/// `labels` in the records are indices into `all`.
pub(crate) fn compact_classes(all: &ClassTable, train: &mut [Record], test: &mut [Record]) -> ClassTable {
    let mut used = vec![false; all.len()];
    for r in train.iter().chain(test.iter()) {
        used[r.label] = true;
    }
    let mut remap = vec![usize::MAX; all.len()];
    let mut table = ClassTable::default();
    for (i, u) in used.iter().enumerate() {
        if *u {
            remap[i] = table.len();
            table.ids.push(all.ids[i]);
            table.names.push(all.names[i].clone());
        }
    }
    for r in train.iter_mut().chain(test.iter_mut()) {
        r.label = remap[r.label];
    }
    table
}

/// The shared folder beside the workspace (`$FGIA_SHARED`, else `../shared`), if it exists.
pub fn shared_dir(workspace_root: &Path) -> Option<PathBuf> {
    let p = std::env::var_os("FGIA_SHARED").map(PathBuf::from).unwrap_or_else(|| workspace_root.join("..").join("shared"));
    p.is_dir().then_some(p)
}

/// Where the shared real-data subsets live: `$FGIA_DATA`, else `data/` of [`shared_dir`].
/// Returns `None` when neither exists.
pub fn shared_data_dir(workspace_root: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FGIA_DATA") {
        let p = PathBuf::from(p);
        return p.is_dir().then_some(p);
    }
    shared_dir(workspace_root).map(|s| s.join("data")).filter(|p| p.is_dir())
}
