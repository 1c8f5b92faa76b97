//! The extractor: a pretrained backbone's feature maps for a list of images, aggregated into
//! one vector per image (SCDA, SCDA_flip+, or global average pooling).

use std::path::{Path, PathBuf};

use burn::prelude::*;
use fgia_core::datasets::Record;
use fgia_core::imaging::{Transform, load_batch};
use fgia_nn::Network;
use fgia_nn::ops::global_avg_pool;
use serde::{Deserialize, Serialize};

use crate::scda::{Activations, scda, scda_flip_plus, scda_plus};

/// How feature maps become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Aggregator {
    /// SCDA on the last stage only.
    Scda,
    /// SCDA+ (last stage and the stage at twice its resolution).
    ScdaPlus,
    /// SCDA_flip+ (SCDA+ averaged with the mirrored image's).
    ScdaFlipPlus,
    /// Global average pooling of the last stage.
    Gap,
}

impl Aggregator {
    /// Name.
    pub fn name(self) -> &'static str {
        match self {
            Aggregator::Scda => "scda",
            Aggregator::ScdaPlus => "scda-plus",
            Aggregator::ScdaFlipPlus => "scda-flip-plus",
            Aggregator::Gap => "gap",
        }
    }
}

impl std::str::FromStr for Aggregator {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [Aggregator::Scda, Aggregator::ScdaPlus, Aggregator::ScdaFlipPlus, Aggregator::Gap]
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| format!("unknown aggregator '{s}' (scda, scda-plus, scda-flip-plus, gap)"))
    }
}

/// Vectors of some images.
#[derive(Debug, Clone)]
pub struct Extracted {
    /// `[kept, dim]` row-major.
    pub vectors: Vec<f32>,
    /// Vector length.
    pub dim: usize,
    /// Indices (into the records) of the images that have a vector.
    pub kept: Vec<usize>,
    /// Images that could not be decoded (with `skip_bad`), as messages naming the file.
    pub skipped: Vec<String>,
}

fn a(data: &[f32], c: usize, h: usize, w: usize) -> Activations<'_> {
    Activations { data, c, h, w }
}

fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap_or_default()
}

/// Runs `net` (inference mode) over `records` and aggregates each image's maps.
pub fn extract<B: Backend>(
    net: &Network<B>,
    records: &[Record],
    transform: &Transform,
    aggregator: Aggregator,
    skip_bad: bool,
    device: &B::Device,
    progress: bool,
) -> Result<Extracted, fgia_core::DataError> {
    let c = transform.crop as usize;
    let bar = if progress { indicatif::ProgressBar::new(records.len() as u64) } else { indicatif::ProgressBar::hidden() };
    let mut out = Extracted { vectors: Vec::new(), dim: 0, kept: Vec::new(), skipped: Vec::new() };
    let idx: Vec<usize> = (0..records.len()).collect();
    for chunk in idx.chunks(16) {
        let batch = load_batch(records, chunk, transform, 0, 0, skip_bad)?;
        out.skipped.extend(batch.skipped.iter().map(|e| e.to_string()));
        let n = batch.indices.len();
        bar.inc(chunk.len() as u64);
        if n == 0 {
            continue;
        }
        let x = Tensor::<B, 4>::from_data(TensorData::new(batch.pixels, [n, 3, c, c]), device);
        let run = |x: Tensor<B, 4>| net.scda_layers(x);
        let vectors: Vec<Vec<f32>> = match aggregator {
            Aggregator::Gap => {
                let g = global_avg_pool(net.features(x)); // [n, C]
                let d = g.dims()[1];
                let v = to_vec(g);
                v.chunks(d).map(<[f32]>::to_vec).collect()
            }
            Aggregator::Scda | Aggregator::ScdaPlus | Aggregator::ScdaFlipPlus => {
                let flip = aggregator == Aggregator::ScdaFlipPlus;
                let (up, low) = run(x.clone());
                let flipped = flip.then(|| run(x.flip([3])));
                let [_, cu, hu, wu] = up.dims();
                let [_, cl, hl, wl] = low.dims();
                let (u, l) = (to_vec(up), to_vec(low));
                let (uf, lf) = flipped.map(|(a, b)| (to_vec(a), to_vec(b))).unwrap_or_default();
                let (su, sl) = (cu * hu * wu, cl * hl * wl);
                (0..n)
                    .map(|i| {
                        let upper = a(&u[i * su..(i + 1) * su], cu, hu, wu);
                        let lower_act = a(&l[i * sl..(i + 1) * sl], cl, hl, wl);
                        match aggregator {
                            Aggregator::Scda => scda(&upper),
                            Aggregator::ScdaPlus => scda_plus(&upper, &lower_act),
                            _ => scda_flip_plus(&upper, &lower_act, &a(&uf[i * su..(i + 1) * su], cu, hu, wu), &a(&lf[i * sl..(i + 1) * sl], cl, hl, wl)),
                        }
                    })
                    .collect()
            }
        };
        for (k, v) in batch.indices.iter().zip(vectors) {
            out.dim = v.len();
            out.vectors.extend(v);
            out.kept.push(*k);
        }
    }
    bar.finish_and_clear();
    Ok(out)
}

/// Image files under `dir` (recursively; `.jpg`, `.jpeg`, `.png`), sorted, each labelled with
/// its parent folder's name.
pub fn list_images(dir: &Path) -> std::io::Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    // Folders by their real path: a symlink back to an ancestor (a loop) is entered only once.
    let mut seen = std::collections::HashSet::new();
    while let Some(d) = stack.pop() {
        if !seen.insert(std::fs::canonicalize(&d)?) {
            continue;
        }
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png")) {
                let label = p.parent().and_then(|q| q.file_name()).map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                out.push((p, label));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Records for plain image files (label 0).
pub fn records_for(paths: &[PathBuf]) -> Vec<Record> {
    paths.iter().map(|p| Record::new(p.clone(), 0, p.display().to_string())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_loop_is_listed_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("birds/a")).expect("mkdir");
        std::fs::write(dir.path().join("birds/a/x.jpg"), b"x").expect("write");
        std::fs::write(dir.path().join("birds/y.png"), b"y").expect("write");
        // birds/a/up -> birds: a loop back to an ancestor.
        std::os::unix::fs::symlink(dir.path().join("birds"), dir.path().join("birds/a/up")).expect("symlink");
        let found = list_images(&dir.path().join("birds")).expect("lists");
        let names: Vec<String> = found.iter().map(|(p, _)| p.file_name().expect("name").to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["x.jpg", "y.png"], "{found:?}");
    }
}
