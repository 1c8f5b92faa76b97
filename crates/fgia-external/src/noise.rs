//! A label-noise layer for any dataset: the controlled stand-in for noisy web labels (§5.3.1).
//!
//! Webly supervised fine-grained recognition trains on crawled images whose labels are wrong at
//! an unknown rate, and mostly wrong in a structured way: a crawled "Fish Crow" is far more often
//! an American Crow than an albatross. Two corruptions of a clean training split model that, each
//! item's draw made from `(seed, item)` so that a run is reproducible and resumable:
//!
//! - **symmetric** (Han et al., "Co-teaching", NeurIPS 2018): with probability `r` a label is
//!   replaced by one of the other `C − 1` classes, uniformly;
//! - **pair flip inside confusable groups**: with probability `r` a label becomes the next class
//!   of its group (cyclically, in class order), the fine-grained analogue of co-teaching's pair
//!   flip to the next class. A class alone in its group flips to the next class overall.
//!
//! Groups are ours: classes whose names end in the same word (`Black_footed_Albatross`,
//! `Laysan_Albatross`, `Sooty_Albatross`), [`groups_by_last_word`]. On cub-mini this gives the
//! albatrosses, auklets, blackbirds, buntings, catbirds, cormorants, cowbirds, crows, cuckoos,
//! finches and flycatchers, and singletons. Every noisy run records the kind, the rate asked for,
//! the rate drawn and the seed ([`NoisyLabels::describe`]).

use fgia_core::rng::SplitMix64;

/// Which corruption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoiseKind {
    /// Uniform over the other classes.
    Symmetric,
    /// To the next class of the confusable group.
    PairFlip,
}

impl NoiseKind {
    /// Name in records.
    pub fn name(self) -> &'static str {
        match self {
            NoiseKind::Symmetric => "symmetric",
            NoiseKind::PairFlip => "pair flip inside confusable groups",
        }
    }
}

/// A corrupted label list and how it was made.
#[derive(Debug, Clone, PartialEq)]
pub struct NoisyLabels {
    /// The labels to train on.
    pub labels: Vec<usize>,
    /// The corruption.
    pub kind: NoiseKind,
    /// The rate asked for.
    pub rate: f64,
    /// The share of labels actually changed.
    pub drawn_rate: f64,
    /// Seed of the draws.
    pub seed: u64,
}

impl NoisyLabels {
    /// For the record.
    pub fn describe(&self) -> String {
        format!(
            "training labels corrupted: {} noise at rate {:.2} (drawn {:.3} of {} labels), seed {}",
            self.kind.name(),
            self.rate,
            self.drawn_rate,
            self.labels.len(),
            self.seed
        )
    }
}

/// Groups of class indices whose names (`001.Black_footed_Albatross`) end in the same word,
/// case-insensitively, each group in class order; every class is in exactly one group.
pub fn groups_by_last_word(names: &[String]) -> Vec<Vec<usize>> {
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let word = n.rsplit(['_', ' ', '.', '-']).next().unwrap_or(n).to_lowercase();
        match groups.iter_mut().find(|(w, _)| *w == word) {
            Some((_, g)) => g.push(i),
            None => groups.push((word, vec![i])),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

/// Corrupts `labels` (of `classes` classes) at `rate` in [0, 1); `groups` is needed for
/// [`NoiseKind::PairFlip`].
pub fn corrupt(labels: &[usize], classes: usize, kind: NoiseKind, rate: f64, seed: u64, groups: &[Vec<usize>]) -> Result<NoisyLabels, String> {
    if !(0.0..1.0).contains(&rate) {
        return Err(format!("noise rate {rate} must be in [0, 1)"));
    }
    if classes < 2 {
        return Err("label noise needs at least 2 classes".into());
    }
    if let Some(&bad) = labels.iter().find(|&&l| l >= classes) {
        return Err(format!("label {bad} out of range for {classes} classes"));
    }
    let mut next = vec![usize::MAX; classes];
    if kind == NoiseKind::PairFlip {
        for g in groups {
            for (k, &c) in g.iter().enumerate() {
                if c >= classes {
                    return Err(format!("group member {c} out of range for {classes} classes"));
                }
                next[c] = if g.len() > 1 { g[(k + 1) % g.len()] } else { (c + 1) % classes };
            }
        }
        if let Some(c) = next.iter().position(|&n| n == usize::MAX) {
            return Err(format!("class {c} is in no confusable group"));
        }
    }
    let mut changed = 0usize;
    let out: Vec<usize> = labels
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            let mut g = SplitMix64::for_item(seed, 0x401e, i as u64);
            if g.next_f64() >= rate {
                return l;
            }
            changed += 1;
            match kind {
                NoiseKind::Symmetric => {
                    let k = g.below(classes as u64 - 1) as usize;
                    if k >= l { k + 1 } else { k }
                }
                NoiseKind::PairFlip => next[l],
            }
        })
        .collect();
    Ok(NoisyLabels { drawn_rate: changed as f64 / labels.len().max(1) as f64, labels: out, kind, rate, seed })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross", "004.Groove_billed_Ani", "005.Crested_Auklet", "006.Least_Auklet"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn groups_follow_the_last_word_of_the_name() {
        assert_eq!(groups_by_last_word(&names()), vec![vec![0, 1, 2], vec![3], vec![4, 5]]);
    }

    #[test]
    fn rates_over_many_draws() {
        let classes = 6;
        let labels: Vec<usize> = (0..60_000).map(|i| i % classes).collect();
        let groups = groups_by_last_word(&names());
        for rate in [0.0, 0.2, 0.4] {
            let sym = corrupt(&labels, classes, NoiseKind::Symmetric, rate, 5, &groups).expect("symmetric");
            // Binomial: std sqrt(r(1-r)/n) < 0.0021; 5 sigma.
            assert!((sym.drawn_rate - rate).abs() < 0.011, "{rate}: {}", sym.drawn_rate);
            let mut to = vec![0usize; classes];
            for (&a, &b) in labels.iter().zip(&sym.labels) {
                if a == 0 && b != 0 {
                    to[b] += 1;
                }
            }
            if rate > 0.0 {
                // Uniform over the other five classes: each near 1/5 of the flips of class 0.
                let n: usize = to.iter().sum();
                for &k in &to[1..] {
                    assert!((k as f64 / n as f64 - 0.2).abs() < 0.03, "{to:?}");
                }
            }
            let pair = corrupt(&labels, classes, NoiseKind::PairFlip, rate, 5, &groups).expect("pair");
            assert!((pair.drawn_rate - rate).abs() < 0.011);
            for (&a, &b) in labels.iter().zip(&pair.labels) {
                if a != b {
                    let expected = match a {
                        0 => 1,
                        1 => 2,
                        2 => 0,
                        3 => 4, // alone in its group: the next class
                        4 => 5,
                        _ => 4,
                    };
                    assert_eq!(b, expected, "class {a}");
                }
            }
            assert!(pair.describe().contains(&format!("rate {rate:.2}")) && pair.describe().contains("seed 5"));
        }
        // The same seed draws the same labels; another seed others.
        let a = corrupt(&labels, classes, NoiseKind::Symmetric, 0.4, 5, &groups).expect("a");
        assert_eq!(a, corrupt(&labels, classes, NoiseKind::Symmetric, 0.4, 5, &groups).expect("b"));
        assert_ne!(a.labels, corrupt(&labels, classes, NoiseKind::Symmetric, 0.4, 6, &groups).expect("c").labels);
    }

    #[test]
    fn bad_settings_are_errors() {
        let g = groups_by_last_word(&names());
        assert!(corrupt(&[0, 1], 6, NoiseKind::Symmetric, 1.0, 0, &g).is_err());
        assert!(corrupt(&[0, 9], 6, NoiseKind::Symmetric, 0.2, 0, &g).is_err());
        assert!(corrupt(&[0, 1], 6, NoiseKind::PairFlip, 0.2, 0, &[vec![0, 1]]).expect_err("uncovered").contains("no confusable group"));
    }
}
