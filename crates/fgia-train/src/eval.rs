//! Evaluation of a classifier on a list of records, with optional flip test-time augmentation.

use burn::prelude::*;
use burn::tensor::activation::softmax;
use fgia_core::datasets::Record;
use fgia_core::imaging::{Transform, load_batch};
use fgia_core::metrics::{argmax_rows, mean_per_class_accuracy, top_k_accuracy};
use fgia_nn::Classifier;

use crate::error::TrainError;

/// Class probabilities `[B, K]` of a batch, with flip test-time augmentation written once:
/// `logits(false)` scores the batch, `logits(true)` its horizontal mirror; with `flip` the
/// result is the mean of the two softmax outputs.
pub fn tta_probabilities<B: Backend>(logits: impl Fn(bool) -> Tensor<B, 2>, flip: bool) -> Tensor<B, 2> {
    let p = softmax(logits(false), 1);
    if flip { (p + softmax(logits(true), 1)) / 2.0 } else { p }
}

/// Predictions and metrics of one evaluation.
#[derive(Debug, Clone)]
pub struct EvalOutput {
    /// Class probabilities `[n, classes]` (averaged over the flips with TTA).
    pub probabilities: Vec<f32>,
    /// True labels.
    pub labels: Vec<usize>,
    /// Top-1 accuracy, percent.
    pub top1: f64,
    /// Top-5 accuracy, percent.
    pub top5: f64,
    /// Mean per-class accuracy, percent.
    pub mean_per_class: f64,
    /// Images skipped as undecodable.
    pub skipped: usize,
}

impl EvalOutput {
    /// Metrics of `[n, classes]` probabilities against the labels.
    pub fn from_probabilities(probabilities: Vec<f32>, labels: Vec<usize>, num_classes: usize, skipped: usize) -> Self {
        let predicted = argmax_rows(&probabilities, num_classes);
        EvalOutput {
            top1: top_k_accuracy(&probabilities, num_classes, &labels, 1),
            top5: top_k_accuracy(&probabilities, num_classes, &labels, 5.min(num_classes)),
            mean_per_class: mean_per_class_accuracy(&predicted, &labels, num_classes),
            probabilities,
            labels,
            skipped,
        }
    }
}

/// Evaluates `model` on `records` in the backend's inference mode.
///
/// With `flip_tta`, each image's probabilities are the mean of the image's and its horizontal
/// mirror's softmax outputs.
#[allow(clippy::too_many_arguments)]
pub fn evaluate<B: Backend>(
    model: &impl Classifier<B>,
    records: &[Record],
    transform: &Transform,
    batch_size: usize,
    flip_tta: bool,
    num_classes: usize,
    skip_bad: bool,
    device: &B::Device,
    progress: bool,
) -> Result<EvalOutput, TrainError> {
    let idx: Vec<usize> = (0..records.len()).collect();
    let c = transform.crop as usize;
    let mut probabilities = Vec::with_capacity(records.len() * num_classes);
    let mut labels = Vec::with_capacity(records.len());
    let mut skipped = 0;
    let bar = if progress { indicatif::ProgressBar::new(records.len() as u64) } else { indicatif::ProgressBar::hidden() };
    for chunk in idx.chunks(batch_size.max(1)) {
        let batch = load_batch(records, chunk, transform, 0, 0, skip_bad)?;
        skipped += batch.skipped.len();
        let n = batch.labels.len();
        if n == 0 {
            continue;
        }
        let x = Tensor::<B, 4>::from_data(TensorData::new(batch.pixels, [n, 3, c, c]), device); // [B, 3, H, W]
        let p = tta_probabilities(|mirror| model.logits(if mirror { x.clone().flip([3]) } else { x.clone() }), flip_tta); // [B, K]
        probabilities.extend(p.into_data().to_vec::<f32>().map_err(|e| TrainError::Checkpoint { path: "<evaluation>".into(), message: format!("{e:?}") })?);
        labels.extend(batch.labels);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(EvalOutput::from_probabilities(probabilities, labels, num_classes, skipped))
}

/// A network applied from stage `from` on (its input is the output of the frozen stages).
pub struct TailClassifier<'a, B: Backend> {
    /// The network.
    pub net: &'a fgia_nn::Network<B>,
    /// First stage to run.
    pub from: usize,
}

/// Evaluates the layers after the frozen stages on cached test maps.
pub fn evaluate_maps<B: Backend>(
    tail: &TailClassifier<'_, B>,
    cache: &crate::frozen_cache::FrozenCache,
    records: &[Record],
    batch_size: usize,
    flip_tta: bool,
    num_classes: usize,
    device: &B::Device,
) -> Result<EvalOutput, TrainError> {
    let [c, h, w] = cache.shape;
    let idx: Vec<usize> = (0..records.len()).collect();
    let mut probabilities = Vec::with_capacity(records.len() * num_classes);
    let mut labels = Vec::with_capacity(records.len());
    let mut skipped = 0;
    let logits = |maps: Vec<f32>, n: usize| {
        let x = Tensor::<B, 4>::from_data(TensorData::new(maps, [n, c, h, w]), device); // [B, C, h, w]
        tail.net.head_from_features(tail.net.forward_stages_from(tail.from, x))
    };
    for chunk in idx.chunks(batch_size.max(1)) {
        let (maps, kept) = cache.test_batch(chunk, false);
        skipped += chunk.len() - kept.len();
        if kept.is_empty() {
            continue;
        }
        let p = tta_probabilities(
            |mirror| if mirror { logits(cache.test_batch(chunk, true).0, kept.len()) } else { logits(maps.clone(), kept.len()) },
            flip_tta && cache.has_flipped_test(),
        );
        probabilities.extend(p.into_data().to_vec::<f32>().map_err(|e| TrainError::Checkpoint { path: "<evaluation>".into(), message: format!("{e:?}") })?);
        labels.extend(kept.iter().map(|&k| records[chunk[k]].label));
    }
    Ok(EvalOutput::from_probabilities(probabilities, labels, num_classes, skipped))
}
