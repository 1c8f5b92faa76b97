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

use burn::prelude::*;
use fgia_core::datasets::Record;
use fgia_core::imaging::{Transform, load_batch};
use fgia_core::rng::SplitMix64;
use fgia_nn::Network;

use crate::error::TrainError;

/// Cached stage outputs.
#[derive(Debug, Clone)]
pub struct FrozenCache {
    /// Shape `[C, h, w]` of one map.
    pub shape: [usize; 3],
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
    frozen: usize,
    records: &[Record],
    transform: &Transform,
    seed: u64,
    epoch: u64,
    skip_bad: bool,
    device: &B::Device,
    out: &mut [Option<Vec<f32>>],
    stride: usize,
    offset: usize,
    shape: &mut [usize; 3],
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
            let mut h = Tensor::<B, 4>::from_data(TensorData::new(batch.pixels, [n, 3, c, c]), device); // [B, 3, H, W]
            if flip_input {
                h = h.flip([3]);
            }
            for s in 0..frozen {
                h = net.forward_stage(s, h);
            }
            let [_, ch, hh, ww] = h.dims(); // [B, C, h, w]
            *shape = [ch, hh, ww];
            let flat: Vec<f32> = h.into_data().to_vec().map_err(|e| TrainError::Checkpoint { path: "<feature cache>".into(), message: format!("{e:?}") })?;
            let per = ch * hh * ww;
            for (k, &i) in batch.indices.iter().enumerate() {
                out[i * stride + offset] = Some(flat[k * per..(k + 1) * per].to_vec());
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
        let total = (train.len() * views + test.len() * if flip { 2 } else { 1 }) as u64;
        let bar = if progress { indicatif::ProgressBar::new(total).with_prefix("caching frozen stages") } else { indicatif::ProgressBar::hidden() };
        if progress {
            bar.set_style(
                indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} ({elapsed}<{eta})").expect("static template").progress_chars("=> "),
            );
        }
        let mut shape = [0; 3];
        let mut train_maps = vec![None; train.len() * views];
        for v in 0..views {
            run_prefix(net, frozen, train, train_transform, seed, v as u64, skip_bad, device, &mut train_maps, views, v, &mut shape, false, &bar)?;
        }
        let mut test_maps = vec![None; test.len()];
        run_prefix(net, frozen, test, test_transform, 0, 0, skip_bad, device, &mut test_maps, 1, 0, &mut shape, false, &bar)?;
        let mut test_flipped = Vec::new();
        if flip {
            // The mirror of the centre crop (flip test-time augmentation).
            test_flipped = vec![None; test.len()];
            run_prefix(net, frozen, test, test_transform, 0, 0, skip_bad, device, &mut test_flipped, 1, 0, &mut shape, true, &bar)?;
        }
        bar.finish_and_clear();
        Ok(FrozenCache { shape, train: train_maps, views, test: test_maps, test_flipped })
    }

    /// Number of floats of one map.
    pub fn map_len(&self) -> usize {
        self.shape.iter().product()
    }

    /// The maps of training images `indices` for `epoch`, one view each; returns the maps and
    /// the positions (in `indices`) that have one.
    pub fn train_batch(&self, indices: &[usize], seed: u64, epoch: usize) -> (Vec<f32>, Vec<usize>) {
        let mut data = Vec::with_capacity(indices.len() * self.map_len());
        let mut kept = Vec::with_capacity(indices.len());
        for (k, &i) in indices.iter().enumerate() {
            let v = SplitMix64::for_item(seed ^ 0x5eed_cace, epoch as u64, i as u64).below(self.views as u64) as usize;
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

    /// Whether mirrored test maps were built.
    pub fn has_flipped_test(&self) -> bool {
        !self.test_flipped.is_empty()
    }
}
