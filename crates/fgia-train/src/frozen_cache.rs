//! Outputs of a network's frozen leading stages, computed once per run.
//!
//! When the first `k` stages are frozen (inference-mode batch norm, no gradient), their output
//! depends only on the input image. Computing it once for `views` augmented views of each
//! training image, and once for the centre crop of each test image (plus its mirror with flip
//! test-time augmentation), turns every later epoch into training the remaining layers only.
//! Each epoch draws one of the views per image, from `(seed, epoch, index)`, so augmentation is
//! kept (limited to `views` distinct crops) and runs repeat exactly.
//!
//! View `v` of training image `i` is the image transformed with the augmentation stream
//! `(seed, v, i)`, the same stream epoch `v` of an uncached run would use.
//!
//! [`FrozenCache::build_with`] also records the outputs of several stages ("taps", for
//! methods that read more than one layer) and can edit each image's pixels before the
//! backbone (region shuffling, jigsaw patches), with a function of the image index and view.

use burn::prelude::*;
use fgia_core::datasets::Record;
use fgia_core::imaging::{Transform, load_batch};
use fgia_core::rng::SplitMix64;
use fgia_nn::Network;

use crate::error::TrainError;

/// Edits the pixels `[3, s, s]` of training image `index`, view `view`, before the backbone.
pub type PixelEdit<'a> = &'a (dyn Fn(&mut [f32], usize, usize, u64) + Sync);

/// What [`FrozenCache::build_with`] records.
#[derive(Clone, Copy)]
pub struct CacheSpec<'a> {
    /// Stage indices whose outputs are recorded, in this order; the backbone runs up to the
    /// largest.
    pub taps: &'a [usize],
    /// Augmented views per training image.
    pub views: usize,
    /// Whether test images are cached at all (an edited cache of training views may skip them).
    pub test: bool,
    /// Mirrored test maps (flip test-time augmentation).
    pub flip: bool,
    /// Pixel edit applied to training views (never to test images).
    pub edit: Option<PixelEdit<'a>>,
}

/// Cached stage outputs.
#[derive(Debug, Clone)]
pub struct FrozenCache {
    /// Shape `[C, h, w]` of one map (the last tap's).
    pub shape: [usize; 3],
    /// Stage indices of the taps, in the order recorded.
    pub taps: Vec<usize>,
    /// Shapes of all taps, in the same order.
    pub tap_shapes: Vec<[usize; 3]>,
    /// Augmented views of training images: `train[i * views + v]`; `None` for an image that
    /// could not be decoded (skipped).
    train: Vec<Option<Vec<f32>>>,
    /// Views per training image.
    pub views: usize,
    /// Test maps (centre crop), then their mirrors when built with `flip`.
    test: Vec<Option<Vec<f32>>>,
    test_flipped: Vec<Option<Vec<f32>>>,
}

#[allow(clippy::too_many_arguments)]
fn run_prefix<B: Backend>(
    net: &Network<B>,
    taps: &[usize],
    edit: Option<PixelEdit<'_>>,
    records: &[Record],
    transform: &Transform,
    seed: u64,
    epoch: u64,
    skip_bad: bool,
    device: &B::Device,
    out: &mut [Option<Vec<f32>>],
    stride: usize,
    offset: usize,
    shapes: &mut Vec<[usize; 3]>,
    flip_input: bool,
    progress: &indicatif::ProgressBar,
) -> Result<usize, TrainError> {
    let c = transform.crop as usize;
    let idx: Vec<usize> = (0..records.len()).collect();
    let mut skipped = 0;
    for chunk in idx.chunks(32) {
        let batch = load_batch(records, chunk, transform, seed, epoch, skip_bad)?;
        skipped += batch.skipped.len();
        let n = batch.labels.len();
        if n > 0 {
            let mut pixels = batch.pixels;
            if let Some(edit) = edit {
                let per = 3 * c * c;
                for (k, &i) in batch.indices.iter().enumerate() {
                    edit(&mut pixels[k * per..(k + 1) * per], c, i, epoch);
                }
            }
            let mut h = Tensor::<B, 4>::from_data(TensorData::new(pixels, [n, 3, c, c]), device); // [B, 3, H, W]
            if flip_input {
                h = h.flip([3]);
            }
            let last = taps.iter().copied().max().expect("at least one tap");
            let mut outs: Vec<Vec<f32>> = vec![Vec::new(); n];
            shapes.clear();
            let mut recorded: Vec<(usize, Vec<f32>, usize)> = Vec::new();
            for s in 0..=last {
                h = net.forward_stage(s, h);
                if taps.contains(&s) {
                    let [_, ch, hh, ww] = h.dims(); // [B, C, h, w]
                    let flat: Vec<f32> =
                        h.clone().into_data().to_vec().map_err(|e| TrainError::Checkpoint { path: "<feature cache>".into(), message: format!("{e:?}") })?;
                    recorded.push((s, flat, ch * hh * ww));
                    shapes.push([ch, hh, ww]);
                }
            }
            // Reorder to the order the taps were asked in.
            let order: Vec<usize> = taps.iter().map(|t| recorded.iter().position(|r| r.0 == *t).expect("recorded")).collect();
            *shapes = order.iter().map(|&o| shapes[o]).collect();
            for (k, item) in outs.iter_mut().enumerate() {
                for &o in &order {
                    let (_, flat, per) = &recorded[o];
                    item.extend_from_slice(&flat[k * per..(k + 1) * per]);
                }
            }
            for (k, &i) in batch.indices.iter().enumerate() {
                out[i * stride + offset] = Some(std::mem::take(&mut outs[k]));
            }
        }
        progress.inc(chunk.len() as u64);
    }
    Ok(skipped)
}

impl FrozenCache {
    /// Runs the first `frozen` stages of `net` (an inference-mode network) over `views`
    /// augmented views of `train` and the centre crop (and, with `flip`, the mirror) of `test`.
    #[allow(clippy::too_many_arguments)]
    pub fn build<B: Backend>(
        net: &Network<B>,
        frozen: usize,
        views: usize,
        train: &[Record],
        train_transform: &Transform,
        test: &[Record],
        test_transform: &Transform,
        flip: bool,
        seed: u64,
        skip_bad: bool,
        device: &B::Device,
        progress: bool,
    ) -> Result<Self, TrainError> {
        let spec = CacheSpec { taps: &[frozen - 1], views, test: true, flip, edit: None };
        Self::build_with(net, spec, train, train_transform, test, test_transform, seed, skip_bad, device, progress)
    }

    /// Records the outputs of stages `spec.taps` (concatenated per image, in that order) for
    /// `spec.views` views of each training image, edited by `spec.edit`, and for the test
    /// images when `spec.test`.
    #[allow(clippy::too_many_arguments)]
    pub fn build_with<B: Backend>(
        net: &Network<B>,
        spec: CacheSpec<'_>,
        train: &[Record],
        train_transform: &Transform,
        test: &[Record],
        test_transform: &Transform,
        seed: u64,
        skip_bad: bool,
        device: &B::Device,
        progress: bool,
    ) -> Result<Self, TrainError> {
        let CacheSpec { taps, views, flip, edit, .. } = spec;
        let test = if spec.test { test } else { &[] };
        let total = (train.len() * views + test.len() * if flip { 2 } else { 1 }) as u64;
        let bar = if progress { indicatif::ProgressBar::new(total).with_prefix("caching frozen stages") } else { indicatif::ProgressBar::hidden() };
        if progress {
            bar.set_style(
                indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} ({elapsed}<{eta})").expect("static template").progress_chars("=> "),
            );
        }
        let mut shapes = Vec::new();
        let mut train_maps = vec![None; train.len() * views];
        for v in 0..views {
            run_prefix(net, taps, edit, train, train_transform, seed, v as u64, skip_bad, device, &mut train_maps, views, v, &mut shapes, false, &bar)?;
        }
        let mut test_maps = vec![None; test.len()];
        run_prefix(net, taps, None, test, test_transform, 0, 0, skip_bad, device, &mut test_maps, 1, 0, &mut shapes, false, &bar)?;
        let mut test_flipped = Vec::new();
        if flip {
            // The mirror of the centre crop (flip test-time augmentation).
            test_flipped = vec![None; test.len()];
            run_prefix(net, taps, None, test, test_transform, 0, 0, skip_bad, device, &mut test_flipped, 1, 0, &mut shapes, true, &bar)?;
        }
        bar.finish_and_clear();
        let shape = shapes.last().copied().unwrap_or([0; 3]);
        Ok(FrozenCache { shape, taps: taps.to_vec(), tap_shapes: shapes, train: train_maps, views, test: test_maps, test_flipped })
    }

    /// Number of floats of one image's entry (all taps).
    pub fn map_len(&self) -> usize {
        self.tap_shapes.iter().map(|s| s.iter().product::<usize>()).sum()
    }

    /// Splits the data of `n` images (as returned by the batch functions) into one
    /// `[n, C, h, w]` buffer per tap.
    pub fn split_taps(&self, data: &[f32], n: usize) -> Vec<Vec<f32>> {
        let lens: Vec<usize> = self.tap_shapes.iter().map(|s| s.iter().product()).collect();
        let per = self.map_len();
        let mut out: Vec<Vec<f32>> = lens.iter().map(|l| Vec::with_capacity(l * n)).collect();
        for k in 0..n {
            let mut at = k * per;
            for (t, &l) in lens.iter().enumerate() {
                out[t].extend_from_slice(&data[at..at + l]);
                at += l;
            }
        }
        out
    }

    /// The view of training image `i` drawn for `epoch` (what [`Self::train_batch`] uses).
    pub fn view_of(&self, i: usize, seed: u64, epoch: usize) -> usize {
        SplitMix64::for_item(seed ^ 0x5eed_cace, epoch as u64, i as u64).below(self.views as u64) as usize
    }

    /// The maps of training images `indices` for `epoch`, one view each; returns the maps and
    /// the positions (in `indices`) that have one.
    pub fn train_batch(&self, indices: &[usize], seed: u64, epoch: usize) -> (Vec<f32>, Vec<usize>) {
        let mut data = Vec::with_capacity(indices.len() * self.map_len());
        let mut kept = Vec::with_capacity(indices.len());
        for (k, &i) in indices.iter().enumerate() {
            let v = self.view_of(i, seed, epoch);
            if let Some(m) = &self.train[i * self.views + v] {
                data.extend_from_slice(m);
                kept.push(k);
            }
        }
        (data, kept)
    }

    /// The test maps of `indices` (mirrored ones with `flipped`), with the positions kept.
    pub fn test_batch(&self, indices: &[usize], flipped: bool) -> (Vec<f32>, Vec<usize>) {
        let src = if flipped { &self.test_flipped } else { &self.test };
        let mut data = Vec::with_capacity(indices.len() * self.map_len());
        let mut kept = Vec::new();
        for (k, &i) in indices.iter().enumerate() {
            if let Some(m) = &src[i] {
                data.extend_from_slice(m);
                kept.push(k);
            }
        }
        (data, kept)
    }

    /// The map of training image `i`, view `v` (`None` when it could not be decoded).
    pub fn train_view(&self, i: usize, v: usize) -> Option<&[f32]> {
        if v >= self.views {
            return None;
        }
        self.train.get(i * self.views + v).and_then(|m| m.as_deref())
    }

    /// The map of test image `i` (centre crop).
    pub fn test_map(&self, i: usize) -> Option<&[f32]> {
        self.test.get(i).and_then(|m| m.as_deref())
    }

    /// Whether mirrored test maps were built.
    pub fn has_flipped_test(&self) -> bool {
        !self.test_flipped.is_empty()
    }

    /// The same cache with every tap's map averaged over its positions (the networks' global
    /// average pooling): `[C, 1, 1]` per tap, for methods that read pooled features.
    pub fn pooled(&self) -> FrozenCache {
        let shapes = self.tap_shapes.clone();
        let pool = |m: &Option<Vec<f32>>| -> Option<Vec<f32>> {
            let m = m.as_ref()?;
            let mut out = Vec::with_capacity(shapes.iter().map(|s| s[0]).sum());
            let mut at = 0;
            for &[c, h, w] in &shapes {
                let hw = (h * w).max(1);
                for ch in 0..c {
                    let s: f64 = m[at + ch * hw..at + (ch + 1) * hw].iter().map(|&v| f64::from(v)).sum();
                    out.push((s / hw as f64) as f32);
                }
                at += c * h * w;
            }
            Some(out)
        };
        let tap_shapes: Vec<[usize; 3]> = shapes.iter().map(|s| [s[0], 1, 1]).collect();
        FrozenCache {
            shape: tap_shapes.last().copied().unwrap_or([0; 3]),
            taps: self.taps.clone(),
            tap_shapes,
            train: self.train.iter().map(pool).collect(),
            views: self.views,
            test: self.test.iter().map(pool).collect(),
            test_flipped: self.test_flipped.iter().map(pool).collect(),
        }
    }

    /// Test images.
    pub fn test_len(&self) -> usize {
        self.test.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_averages_each_taps_positions() {
        // One image, one view, two taps: [1, 2, 2] then [2, 1, 2]; a missing test image.
        let map = vec![1.0, 2.0, 3.0, 6.0, /* tap 2 */ 1.0, 3.0, -2.0, 0.0];
        let cache = FrozenCache {
            shape: [2, 1, 2],
            taps: vec![3, 5],
            tap_shapes: vec![[1, 2, 2], [2, 1, 2]],
            train: vec![Some(map.clone())],
            views: 1,
            test: vec![Some(map), None],
            test_flipped: Vec::new(),
        };
        let p = cache.pooled();
        assert_eq!(p.shape, [2, 1, 1]);
        assert_eq!(p.tap_shapes, vec![[1, 1, 1], [2, 1, 1]]);
        assert_eq!(p.map_len(), 3);
        assert_eq!(p.train_batch(&[0], 0, 0).0, vec![3.0, 2.0, -1.0]);
        let (data, kept) = p.test_batch(&[0, 1], false);
        assert_eq!((data, kept), (vec![3.0, 2.0, -1.0], vec![0]));
        assert_eq!(p.test_len(), 2);
        assert!(!p.has_flipped_test());
    }
}
