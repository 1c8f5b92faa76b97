//! Class-balanced mini-batches (`P` classes x `K` images), the sampling that pair- and
//! centre-based losses need: every anchor has positives in its batch.

use crate::rng::SplitMix64;

/// The batches of one epoch: `batches` lists of training-set indices, each of `P` distinct
/// classes (fewer when there are fewer classes) with `K` images each, drawn without
/// replacement within the batch when a class has at least `K` images. Deterministic in
/// `(seed, epoch)`.
pub fn pk_batches(labels: &[usize], p: usize, k: usize, batches: usize, seed: u64, epoch: u64) -> Vec<Vec<usize>> {
    let classes = labels.iter().copied().max().map_or(0, |m| m + 1);
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l].push(i);
    }
    let usable: Vec<usize> = (0..classes).filter(|&c| !by_class[c].is_empty()).collect();
    let mut out = Vec::with_capacity(batches);
    for bi in 0..batches {
        let mut rng = SplitMix64::for_item(seed ^ 0x7a11_5a3b, epoch, bi as u64);
        let mut cls = usable.clone();
        rng.shuffle(&mut cls);
        let mut batch = Vec::with_capacity(p * k);
        for &c in cls.iter().take(p) {
            let mut members = by_class[c].clone();
            rng.shuffle(&mut members);
            for j in 0..k {
                batch.push(members[j % members.len()]);
            }
        }
        out.push(batch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_balanced_and_repeat() {
        let labels: Vec<usize> = (0..60).map(|i| i % 6).collect();
        let a = pk_batches(&labels, 4, 3, 5, 1, 2);
        assert_eq!(a, pk_batches(&labels, 4, 3, 5, 1, 2));
        assert_ne!(a, pk_batches(&labels, 4, 3, 5, 1, 3));
        for b in &a {
            assert_eq!(b.len(), 12);
            let mut classes: Vec<usize> = b.iter().map(|&i| labels[i]).collect();
            classes.sort();
            classes.dedup();
            assert_eq!(classes.len(), 4);
            for c in classes {
                let mut m: Vec<usize> = b.iter().copied().filter(|&i| labels[i] == c).collect();
                assert_eq!(m.len(), 3);
                m.sort();
                m.dedup();
                assert_eq!(m.len(), 3, "distinct images within a class");
            }
        }
    }
}
