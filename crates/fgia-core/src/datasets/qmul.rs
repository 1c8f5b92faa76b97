//! The QMUL fine-grained sketch-based retrieval sets (QMUL-Shoe V1, QMUL-Chair V1), in the layout
//! of the authors' release (Yu et al., "Sketch Me That Shoe", CVPR 2016) written out as images:
//!
//! ```text
//! trainA/<N>.png  sketch          trainB/<N>.png  photo (edge map), same N = same object
//! testA/<N>.png   sketch          testB/<N>.png   photo (edge map)
//! train.txt, test.txt             the stems N of each split, in row order
//! <name>_annotation.json          {"train"|"test": {"images", "sketches", "triplets"}}
//! ```
//!
//! `triplets[k]` lists `[a, b]` pairs of 0-based photo indices of the same split, the human
//! relative-similarity annotations of sketch `k`. The authors' sampler takes `a` as the positive
//! and `b` as the negative of a triplet ([`TripletSampler`]).
//!
//! Every check names its file and index: the stems of `<split>.txt` against the annotation's
//! `sketches` and `images` lists (same stem, same row), a regular sketch and photo file for each
//! stem, and every triplet index inside its split.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::text::TextFile;
use crate::error::{DataError, Result};
use crate::rng::SplitMix64;

/// One split: sketch `k` pairs with photo `k`.
#[derive(Debug, Clone, PartialEq)]
pub struct SketchSplit {
    /// File stems, in row order.
    pub stems: Vec<String>,
    /// Sketch files.
    pub sketches: Vec<PathBuf>,
    /// Photo (edge map) files.
    pub photos: Vec<PathBuf>,
    /// Human triplets of each sketch: `[a, b]` photo indices.
    pub triplets: Vec<Vec<[usize; 2]>>,
}

impl SketchSplit {
    /// Number of sketch / photo pairs.
    pub fn len(&self) -> usize {
        self.stems.len()
    }

    /// Whether the split has no pair.
    pub fn is_empty(&self) -> bool {
        self.stems.is_empty()
    }
}

/// A fine-grained SBIR set.
#[derive(Debug, Clone, PartialEq)]
pub struct SketchDataset {
    /// Set name (`shoes`, `chairs`: the annotation file's prefix).
    pub name: String,
    /// Root folder.
    pub root: PathBuf,
    /// Training pairs.
    pub train: SketchSplit,
    /// Test pairs.
    pub test: SketchSplit,
}

#[derive(Deserialize)]
struct AnnotationSplit {
    images: Vec<String>,
    sketches: Vec<String>,
    triplets: Vec<Vec<Vec<i64>>>,
}

#[derive(Deserialize)]
struct Annotation {
    train: AnnotationSplit,
    test: AnnotationSplit,
}

fn stem(name: &str) -> &str {
    name.rsplit_once('.').map(|(s, _)| s).unwrap_or(name)
}

/// Reads and checks a QMUL V1 set at `root`.
pub fn read_qmul(root: &Path) -> Result<SketchDataset> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| DataError::io(root, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().ends_with("_annotation.json")))
        .collect();
    found.sort();
    let ann_path = match found.as_slice() {
        [one] => one.clone(),
        [] => return Err(DataError::NotFound { path: root.join("<name>_annotation.json"), what: "QMUL triplet annotation".into() }),
        _ => return Err(DataError::format(root, format!("{} annotation files; expected one *_annotation.json", found.len()))),
    };
    let name = ann_path.file_name().map(|n| n.to_string_lossy().trim_end_matches("_annotation.json").to_string()).unwrap_or_default();
    let text = std::fs::read_to_string(&ann_path).map_err(|e| DataError::io(&ann_path, e))?;
    let ann: Annotation = serde_json::from_str(&text).map_err(|e| DataError::format(&ann_path, e.to_string()))?;
    let train = read_split(root, "train", &ann.train, &ann_path)?;
    let test = read_split(root, "test", &ann.test, &ann_path)?;
    Ok(SketchDataset { name, root: root.to_path_buf(), train, test })
}

fn read_split(root: &Path, split: &str, ann: &AnnotationSplit, ann_path: &Path) -> Result<SketchSplit> {
    let list = TextFile::read(&root.join(format!("{split}.txt")), "QMUL split list")?;
    let mut stems = Vec::new();
    for line in list.lines() {
        let s = line.fields(1, "<stem>")?[0];
        if !super::stays_inside(s) || s.contains(['/', '\\']) {
            return Err(line.error(format!("'{s}' is not a plain file stem")));
        }
        if stems.iter().any(|x: &String| x == s) {
            return Err(line.error(format!("stem '{s}' is listed twice")));
        }
        stems.push(s.to_string());
    }
    let n = stems.len();
    let bad = |message: String| DataError::format(ann_path, format!("{split}: {message}"));
    for (what, names) in [("sketches", &ann.sketches), ("images", &ann.images)] {
        if names.len() != n {
            return Err(bad(format!("{} {what} for the {n} stems of {split}.txt", names.len())));
        }
        if let Some((k, name)) = names.iter().enumerate().find(|(k, name)| stem(name) != stems[*k]) {
            return Err(bad(format!("{what}[{k}] is '{name}', but row {} of {split}.txt is '{}'", k + 1, stems[k])));
        }
    }
    if ann.triplets.len() != n {
        return Err(bad(format!("{} triplet lists for {n} sketches", ann.triplets.len())));
    }
    let mut triplets = Vec::with_capacity(n);
    for (k, list) in ann.triplets.iter().enumerate() {
        let mut pairs = Vec::with_capacity(list.len());
        for (j, pair) in list.iter().enumerate() {
            let ok = |v: i64| usize::try_from(v).ok().filter(|&v| v < n);
            match pair.as_slice() {
                [a, b] => match (ok(*a), ok(*b)) {
                    (Some(a), Some(b)) => pairs.push([a, b]),
                    _ => return Err(bad(format!("triplets[{k}][{j}] = {pair:?}: a photo index outside 0..{n}"))),
                },
                _ => return Err(bad(format!("triplets[{k}][{j}] has {} indices, expected 2", pair.len()))),
            }
        }
        triplets.push(pairs);
    }
    let mut sketches = Vec::with_capacity(n);
    let mut photos = Vec::with_capacity(n);
    for s in &stems {
        for (side, out, what) in [("A", &mut sketches, "sketch"), ("B", &mut photos, "photo edge map")] {
            let p = root.join(format!("{split}{side}")).join(format!("{s}.png"));
            if !p.is_file() {
                return Err(DataError::NotFound { path: p, what: format!("{what} of stem {s} ({split})") });
            }
            out.push(p);
        }
    }
    Ok(SketchSplit { stems, sketches, photos, triplets })
}

/// The triplet sampling of the authors' release (`sample_triplets_pos_neg`): for anchor sketch
/// `k`, one of its human triplets `[a, b]` uniformly; `a` is the positive. With probability
/// `hard_ratio` the negative is `b` (hard); otherwise it is drawn uniformly from the photos that
/// occur in some triplet of the split but in none of sketch `k`'s (easy).
#[derive(Debug, Clone)]
pub struct TripletSampler {
    triplets: Vec<Vec<[usize; 2]>>,
    easy: Vec<Vec<usize>>,
    hard_ratio: f64,
}

impl TripletSampler {
    /// A sampler over a split's triplets. Every sketch needs at least one triplet and one easy
    /// negative; `hard_ratio` lies in `[0, 1]`.
    pub fn new(triplets: &[Vec<[usize; 2]>], hard_ratio: f64) -> std::result::Result<Self, String> {
        if !(0.0..=1.0).contains(&hard_ratio) {
            return Err(format!("hard_ratio {hard_ratio} is outside [0, 1]"));
        }
        let mut all: Vec<usize> = triplets.iter().flatten().flatten().copied().collect();
        all.sort_unstable();
        all.dedup();
        let mut easy = Vec::with_capacity(triplets.len());
        for (k, t) in triplets.iter().enumerate() {
            if t.is_empty() {
                return Err(format!("sketch {k} has no triplet"));
            }
            let own: std::collections::HashSet<usize> = t.iter().flatten().copied().collect();
            let e: Vec<usize> = all.iter().copied().filter(|i| !own.contains(i)).collect();
            if e.is_empty() && hard_ratio < 1.0 {
                return Err(format!("sketch {k} has no easy negative: its triplets cover every photo"));
            }
            easy.push(e);
        }
        Ok(TripletSampler { triplets: triplets.to_vec(), easy, hard_ratio })
    }

    /// `(positive, negative, hard)` photo indices for `anchor`.
    pub fn sample(&self, anchor: usize, rng: &mut SplitMix64) -> (usize, usize, bool) {
        let t = &self.triplets[anchor];
        let [pos, hard_neg] = t[rng.below(t.len() as u64) as usize];
        if rng.next_f64() < self.hard_ratio {
            (pos, hard_neg, true)
        } else {
            let e = &self.easy[anchor];
            (pos, e[rng.below(e.len() as u64) as usize], false)
        }
    }

    /// The easy negatives of `anchor`.
    pub fn easy_negatives(&self, anchor: usize) -> &[usize] {
        &self.easy[anchor]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sampler_draws_with_the_authors_probabilities() {
        // Sketch 0: triplets [1, 2] and [3, 4]; photos 5 and 6 occur only in sketch 1's.
        let triplets = vec![vec![[1, 2], [3, 4]], vec![[5, 6], [1, 5]]];
        let s = TripletSampler::new(&triplets, 0.75).expect("valid");
        assert_eq!(s.easy_negatives(0), [5, 6]);
        assert_eq!(s.easy_negatives(1), [2, 3, 4]);
        let mut rng = SplitMix64::new(9);
        let n = 200_000;
        let (mut hard, mut pos1, mut easy5) = (0usize, 0usize, 0usize);
        for _ in 0..n {
            let (p, neg, is_hard) = s.sample(0, &mut rng);
            assert!(p == 1 || p == 3);
            pos1 += usize::from(p == 1);
            if is_hard {
                hard += 1;
                assert_eq!(neg, if p == 1 { 2 } else { 4 }, "a hard negative is the triplet's own");
            } else {
                assert!(neg == 5 || neg == 6);
                easy5 += usize::from(neg == 5);
            }
        }
        // Binomial standard errors at n = 200 000 are below 0.002.
        let frac = |a: usize, b: usize| a as f64 / b as f64;
        assert!((frac(hard, n) - 0.75).abs() < 0.01, "hard share {}", frac(hard, n));
        assert!((frac(pos1, n) - 0.5).abs() < 0.01, "positive 1 share {}", frac(pos1, n));
        assert!((frac(easy5, n - hard) - 0.5).abs() < 0.015, "easy 5 share {}", frac(easy5, n - hard));
        assert!(TripletSampler::new(&[vec![]], 0.5).is_err());
        assert!(TripletSampler::new(&triplets, 1.5).is_err());
    }
}
