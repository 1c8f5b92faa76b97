//! The engine's batch sources for one input per image: decoded and augmented images
//! ([`ImageSource`]) and the frozen-map cache ([`CachedSource`]). Both give a [`MapBatch`]:
//! `[n, C, H, W]` floats and labels, pixels or maps alike.

use fgia_core::datasets::Record;
use fgia_core::imaging::{Transform, ViewGeometry, load_batch};

use crate::engine::{BatchSource, HostBatch};
use crate::error::TrainError;
use crate::frozen_cache::{FrozenCache, PixelEdit};
use crate::parallel::{split_items, split_rows};

/// `[n, C, H, W]` floats (pixels or cached maps) with their labels.
#[derive(Debug, Clone)]
pub struct MapBatch {
    /// Row-major data.
    pub data: Vec<f32>,
    /// Shape `[n, C, H, W]`.
    pub shape: [usize; 4],
    /// Labels, parallel to the items.
    pub labels: Vec<usize>,
    /// Indices (into the source's items) of the kept items.
    pub items: Vec<usize>,
    /// Items of the planned batch that were skipped.
    pub skipped: usize,
    /// For pixel batches, where each view lies in its source image, parallel to the items:
    /// a method that needs boxes or parts maps its records' annotations with
    /// [`ViewGeometry::map_box`] / [`ViewGeometry::map_point`]. Empty for cached maps.
    pub geometry: Vec<ViewGeometry>,
}

impl HostBatch for MapBatch {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn skipped(&self) -> usize {
        self.skipped
    }
    fn split(self, sizes: &[usize]) -> Vec<Self> {
        let [_, c, h, w] = self.shape;
        let data = split_rows(&self.data, c * h * w, sizes);
        let (labels, items, geometry) = (split_items(&self.labels, sizes), split_items(&self.items, sizes), split_items(&self.geometry, sizes));
        let parts = data.into_iter().zip(labels).zip(items).zip(geometry).zip(sizes).enumerate();
        parts
            .map(|(i, ((((data, labels), items), geometry), &n))| MapBatch {
                data,
                shape: [n, c, h, w],
                labels,
                items,
                skipped: if i == 0 { self.skipped } else { 0 },
                geometry,
            })
            .collect()
    }
}

/// Training images decoded and augmented per epoch: view `epoch` of image `i` is drawn from
/// `(seed, epoch, i)` (crop, flip, and the optional pixel edit), so every epoch sees fresh
/// augmentation and a resumed run sees the same as an uninterrupted one. Decoding runs on
/// rayon's pool; the engine loads the next batches while the current one trains.
pub struct ImageSource<'a> {
    /// The training records.
    pub records: &'a [Record],
    /// Their labels.
    pub labels: Vec<usize>,
    /// The training transform.
    pub transform: Transform,
    /// Seed of the augmentation.
    pub seed: u64,
    /// Skip undecodable images (counted) instead of failing.
    pub skip_bad: bool,
}

impl<'a> ImageSource<'a> {
    /// A source over `records`.
    pub fn new(records: &'a [Record], transform: Transform, seed: u64, skip_bad: bool) -> Self {
        ImageSource { records, labels: records.iter().map(|r| r.label).collect(), transform, seed, skip_bad }
    }

    /// Decodes and transforms `items` for `epoch`, then applies `edit` to each image's pixels
    /// (with the image index and the epoch as the view).
    pub fn load_edited(&self, epoch: usize, items: &[usize], edit: Option<PixelEdit<'_>>) -> Result<MapBatch, TrainError> {
        let batch = load_batch(self.records, items, &self.transform, self.seed, epoch as u64, self.skip_bad)?;
        // A skipped image is counted in the epoch's metrics and named here, once per epoch.
        for e in &batch.skipped {
            eprintln!("warning: skipped in epoch {}: {e}", epoch + 1);
        }
        let c = self.transform.crop as usize;
        let mut data = batch.pixels;
        if let Some(edit) = edit {
            let per = 3 * c * c;
            for (k, &i) in batch.indices.iter().enumerate() {
                edit(&mut data[k * per..(k + 1) * per], c, i, epoch as u64);
            }
        }
        let n = batch.labels.len();
        Ok(MapBatch { data, shape: [n, 3, c, c], labels: batch.labels, items: batch.indices, skipped: batch.skipped.len(), geometry: batch.geometry })
    }
}

impl BatchSource for ImageSource<'_> {
    type Batch = MapBatch;

    fn labels(&self) -> &[usize] {
        &self.labels
    }

    fn load(&self, epoch: usize, _step: usize, items: &[usize]) -> Result<MapBatch, TrainError> {
        self.load_edited(epoch, items, None)
    }
}

/// Cached maps of frozen leading stages (the last tap), one view per image and epoch.
pub struct CachedSource<'a> {
    /// The cache.
    pub cache: &'a FrozenCache,
    /// Labels of the training images.
    pub labels: Vec<usize>,
    /// Seed of the view draw.
    pub seed: u64,
}

impl BatchSource for CachedSource<'_> {
    type Batch = MapBatch;

    fn labels(&self) -> &[usize] {
        &self.labels
    }

    fn load(&self, epoch: usize, _step: usize, items: &[usize]) -> Result<MapBatch, TrainError> {
        let (data, kept) = self.cache.train_batch(items, self.seed, epoch);
        let [c, h, w] = self.cache.shape;
        let skipped = items.len() - kept.len();
        let items: Vec<usize> = kept.iter().map(|&k| items[k]).collect();
        let n = items.len();
        Ok(MapBatch { data, shape: [n, c, h, w], labels: items.iter().map(|&i| self.labels[i]).collect(), skipped, items, geometry: Vec::new() })
    }
}
