//! Classification metrics as plain functions over scores and labels.
//!
//! Ties in scores are broken towards the lower class index, so a metric never depends on the
//! order a sort happens to leave equal values in.

/// Indices of the `k` highest scores of one row, best first; ties go to the lower index.
pub fn top_k_indices(scores: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    let better = |a: &usize, b: &usize| scores[*b].partial_cmp(&scores[*a]).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(b));
    let k = k.min(scores.len());
    if k == 0 {
        return Vec::new();
    }
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, better);
        idx.truncate(k);
    }
    idx.sort_by(better);
    idx
}

/// Top-k accuracy in percent: the share of rows whose label is among the `k` best scores.
/// `scores` is `[n, classes]` row-major.
pub fn top_k_accuracy(scores: &[f32], num_classes: usize, labels: &[usize], k: usize) -> f64 {
    assert_eq!(scores.len(), labels.len() * num_classes, "scores must be [n, classes]");
    if labels.is_empty() {
        return 0.0;
    }
    let hits = scores.chunks_exact(num_classes).zip(labels).filter(|(row, l)| top_k_indices(row, k).contains(l)).count();
    100.0 * hits as f64 / labels.len() as f64
}

/// Predicted class of each row (arg-max, ties to the lower index).
pub fn argmax_rows(scores: &[f32], num_classes: usize) -> Vec<usize> {
    scores.chunks_exact(num_classes).map(|row| top_k_indices(row, 1)[0]).collect()
}

/// Confusion matrix `m[true][predicted]` of counts.
pub fn confusion_matrix(predicted: &[usize], labels: &[usize], num_classes: usize) -> Vec<Vec<u64>> {
    let mut m = vec![vec![0u64; num_classes]; num_classes];
    for (&p, &l) in predicted.iter().zip(labels) {
        m[l][p] += 1;
    }
    m
}

/// Mean over classes of the per-class accuracy, in percent. Classes without test images are
/// left out of the mean.
pub fn mean_per_class_accuracy(predicted: &[usize], labels: &[usize], num_classes: usize) -> f64 {
    let m = confusion_matrix(predicted, labels, num_classes);
    let per: Vec<f64> = m
        .iter()
        .enumerate()
        .filter_map(|(c, row)| {
            let total: u64 = row.iter().sum();
            (total > 0).then(|| row[c] as f64 / total as f64)
        })
        .collect();
    if per.is_empty() { 0.0 } else { 100.0 * per.iter().sum::<f64>() / per.len() as f64 }
}

/// Mean and sample standard deviation (n-1); the deviation is 0 for fewer than two values.
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// The rank of each query's true match in a row-major `queries x gallery` distance matrix: the
/// number of gallery items closer than it, plus the number at the same distance with a lower
/// index (ties go to the lower index, so a constant matrix ranks match `j` at `j`). A NaN
/// distance ranks after every number.
pub fn true_match_ranks(dist: &[f32], gallery: usize, truth: &[usize]) -> Vec<usize> {
    assert_eq!(dist.len(), truth.len() * gallery, "distance matrix is not queries x gallery");
    let key = |d: f32| if d.is_nan() { f32::INFINITY } else { d };
    truth
        .iter()
        .enumerate()
        .map(|(q, &t)| {
            let row = &dist[q * gallery..(q + 1) * gallery];
            let dt = key(row[t]);
            row.iter().enumerate().filter(|&(j, &d)| key(d) < dt || (key(d) == dt && j < t)).count()
        })
        .collect()
}

/// acc@K of fine-grained SBIR, percent: the share of sketches whose own photo ranks in the top
/// `K` ([`true_match_ranks`]), for each `K` of `ks`.
pub fn acc_at_k(dist: &[f32], gallery: usize, truth: &[usize], ks: &[usize]) -> Vec<f64> {
    let ranks = true_match_ranks(dist, gallery, truth);
    ks.iter().map(|&k| 100.0 * ranks.iter().filter(|&&r| r < k).count() as f64 / ranks.len().max(1) as f64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acc_at_k_on_hand_made_distances_with_ties() {
        // 3 sketches x 4 photos; sketch q's own photo is q.
        #[rustfmt::skip]
        let d = [
            0.1, 0.5, 0.5, 0.9,   // own at 0.1: rank 0
            0.2, 0.2, 0.0, 0.7,   // own 0.2 ties photo 0 (lower index, ahead) and photo 2 is closer: rank 2
            0.3, 0.3, 0.3, 0.3,   // all tied: photos 0 and 1 come first: rank 2
        ];
        assert_eq!(true_match_ranks(&d, 4, &[0, 1, 2]), [0, 2, 2]);
        let acc = acc_at_k(&d, 4, &[0, 1, 2], &[1, 2, 3, 4]);
        assert_eq!(acc.iter().map(|a| (a * 3.0 / 100.0).round() as usize).collect::<Vec<_>>(), [1, 1, 3, 3]);
        // A NaN distance ranks last, wherever it is.
        let d = [f32::NAN, 0.5, 0.1, 0.2];
        assert_eq!(true_match_ranks(&d, 2, &[0, 0]), [1, 0]);
        assert_eq!(true_match_ranks(&d, 2, &[1, 1]), [0, 1]);
    }

    #[test]
    fn top_k_with_ties_prefers_lower_index() {
        assert_eq!(top_k_indices(&[0.5, 0.9, 0.9, 0.1], 2), vec![1, 2]);
        assert_eq!(top_k_indices(&[1.0, 1.0, 1.0], 1), vec![0]);
        assert_eq!(top_k_indices(&[0.2, 0.1], 5), vec![0, 1]);
    }

    #[test]
    fn accuracies_by_hand() {
        // 4 samples, 3 classes.
        let s = [
            0.1, 0.7, 0.2, // pred 1, label 1: top1 hit
            0.5, 0.5, 0.0, // tie -> pred 0, label 1: top1 miss, top2 hit
            0.3, 0.3, 0.4, // pred 2, label 0: top1 miss, top2 hit (0 beats 1 on tie)
            0.9, 0.05, 0.05, // pred 0, label 2: top2 = {0, 1}: miss
        ];
        let labels = [1, 1, 0, 2];
        assert_eq!(top_k_accuracy(&s, 3, &labels, 1), 25.0);
        assert_eq!(top_k_accuracy(&s, 3, &labels, 2), 75.0);
        assert_eq!(top_k_accuracy(&s, 3, &labels, 3), 100.0);
        let pred = argmax_rows(&s, 3);
        assert_eq!(pred, vec![1, 0, 2, 0]);
        let m = confusion_matrix(&pred, &labels, 3);
        assert_eq!(m, vec![vec![0, 0, 1], vec![1, 1, 0], vec![1, 0, 0]]);
        // Per class: class0 0/1, class1 1/2, class2 0/1 -> mean 1/6.
        assert!((mean_per_class_accuracy(&pred, &labels, 3) - 100.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn mean_std_is_the_sample_deviation() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(m, 2.5);
        assert!((s - 1.2909944487358056).abs() < 1e-12);
        assert_eq!(mean_std(&[5.0]), (5.0, 0.0));
    }
}
