//! Post-processing of embeddings: ℓ2 normalisation and PCA-whitening learned on the training
//! classes (Jégou and Chum, "Negative evidences and co-occurrences in image retrieval", ECCV
//! 2012; the step PyRetri calls `PCA` with `whiten=True`).
//!
//! `y = diag(λ + ε)^{-1/2} Uᵀ (x - μ)`, keeping the `d` leading components, then ℓ2. When
//! there are fewer training vectors than dimensions, the components come from the `n x n` Gram
//! matrix of the centred data (the same non-zero spectrum, far cheaper).

use fgia_core::linalg::symmetric_eigen;
use serde::{Deserialize, Serialize};

/// ℓ2-normalises every `dim`-long row in place (zero rows stay zero).
pub fn l2_normalise_rows(data: &mut [f32], dim: usize) {
    for row in data.chunks_mut(dim) {
        let n = row.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>().sqrt();
        if n > 0.0 {
            for x in row.iter_mut() {
                *x = (*x as f64 / n) as f32;
            }
        }
    }
}

/// A learned PCA-whitening.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PcaWhitening {
    /// Input dimension.
    pub input_dim: usize,
    /// Output dimension.
    pub output_dim: usize,
    /// Mean of the training vectors.
    pub mean: Vec<f32>,
    /// Projection rows (already divided by `sqrt(λ + ε)`), `[output_dim, input_dim]`.
    pub projection: Vec<f32>,
    /// The kept eigenvalues.
    pub eigenvalues: Vec<f64>,
}

/// Why a whitening could not be learned.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PcaError {
    /// Too few vectors.
    #[error("PCA-whitening needs at least 2 training vectors, got {0}")]
    TooFew(usize),
    /// A NaN or infinite value.
    #[error("PCA-whitening: the training vectors contain a non-finite value")]
    NonFinite,
}

impl PcaWhitening {
    /// Learns from `n x dim` row-major `data`, keeping at most `output_dim` components (and at
    /// most the rank, `min(n - 1, dim)`). `eps` regularises small eigenvalues, relative to the
    /// largest.
    pub fn fit(data: &[f32], dim: usize, output_dim: usize, eps: f64) -> Result<Self, PcaError> {
        let n = data.len() / dim;
        if n < 2 {
            return Err(PcaError::TooFew(n));
        }
        if data.iter().any(|v| !v.is_finite()) {
            return Err(PcaError::NonFinite);
        }
        let mut mean = vec![0.0f64; dim];
        for row in data.chunks(dim) {
            for (m, &v) in mean.iter_mut().zip(row) {
                *m += v as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let centred: Vec<f64> = data.chunks(dim).flat_map(|r| r.iter().zip(&mean).map(|(&v, m)| v as f64 - m).collect::<Vec<_>>()).collect();
        let keep = output_dim.min(n - 1).min(dim);
        // (eigenvalue of the covariance, unit eigenvector in input space)
        let mut comps: Vec<(f64, Vec<f64>)> = Vec::with_capacity(keep);
        if n < dim {
            // Gram trick: X Xᵀ u = λ' u  =>  v = Xᵀ u / sqrt(λ'), covariance eigenvalue λ'/(n-1).
            let mut g = vec![0.0; n * n];
            for i in 0..n {
                for j in 0..=i {
                    let s: f64 = centred[i * dim..(i + 1) * dim].iter().zip(&centred[j * dim..(j + 1) * dim]).map(|(a, b)| a * b).sum();
                    g[i * n + j] = s;
                    g[j * n + i] = s;
                }
            }
            let e = symmetric_eigen(&g, n).ok_or(PcaError::NonFinite)?;
            for k in 0..keep {
                let lam = e.values[k].max(0.0);
                if lam <= 0.0 {
                    break;
                }
                let u = e.vector(k);
                let mut v = vec![0.0; dim];
                for i in 0..n {
                    for (vd, &x) in v.iter_mut().zip(&centred[i * dim..(i + 1) * dim]) {
                        *vd += u[i] * x;
                    }
                }
                let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
                v.iter_mut().for_each(|x| *x /= norm);
                comps.push((lam / (n - 1) as f64, v));
            }
        } else {
            let mut c = vec![0.0; dim * dim];
            for row in centred.chunks(dim) {
                for i in 0..dim {
                    let ri = row[i];
                    for j in 0..=i {
                        c[i * dim + j] += ri * row[j];
                    }
                }
            }
            for i in 0..dim {
                for j in 0..=i {
                    let v = c[i * dim + j] / (n - 1) as f64;
                    c[i * dim + j] = v;
                    c[j * dim + i] = v;
                }
            }
            let e = symmetric_eigen(&c, dim).ok_or(PcaError::NonFinite)?;
            for k in 0..keep {
                comps.push((e.values[k].max(0.0), e.vector(k).to_vec()));
            }
        }
        let top = comps.first().map(|c| c.0).unwrap_or(1.0).max(f64::MIN_POSITIVE);
        let mut projection = Vec::with_capacity(comps.len() * dim);
        for (lam, v) in &comps {
            let s = 1.0 / (lam + eps * top).sqrt();
            projection.extend(v.iter().map(|x| (x * s) as f32));
        }
        Ok(PcaWhitening {
            input_dim: dim,
            output_dim: comps.len(),
            mean: mean.iter().map(|&m| m as f32).collect(),
            projection,
            eigenvalues: comps.iter().map(|c| c.0).collect(),
        })
    }

    /// Whitens `n x input_dim` rows into `n x output_dim` rows, ℓ2-normalised.
    pub fn apply(&self, data: &[f32]) -> Vec<f32> {
        let mut out = Vec::with_capacity(data.len() / self.input_dim * self.output_dim);
        let mut centred = vec![0.0f32; self.input_dim];
        for row in data.chunks(self.input_dim) {
            for ((c, &v), &m) in centred.iter_mut().zip(row).zip(&self.mean) {
                *c = v - m;
            }
            for p in self.projection.chunks(self.input_dim) {
                out.push(p.iter().zip(&centred).map(|(a, b)| a * b).sum());
            }
        }
        l2_normalise_rows(&mut out, self.output_dim);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fgia_core::rng::SplitMix64;

    fn covariance(data: &[f32], dim: usize) -> Vec<f64> {
        let n = data.len() / dim;
        let mut mean = vec![0.0f64; dim];
        for r in data.chunks(dim) {
            for (m, &v) in mean.iter_mut().zip(r) {
                *m += v as f64 / n as f64;
            }
        }
        let mut c = vec![0.0; dim * dim];
        for r in data.chunks(dim) {
            for i in 0..dim {
                for j in 0..dim {
                    c[i * dim + j] += (r[i] as f64 - mean[i]) * (r[j] as f64 - mean[j]) / (n - 1) as f64;
                }
            }
        }
        c
    }

    /// Correlated data: x = A z with z standard normal-ish.
    fn correlated(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut g = SplitMix64::new(seed);
        let a: Vec<f64> = (0..dim * dim).map(|_| g.next_f64() - 0.5).collect();
        (0..n)
            .flat_map(|_| {
                let z: Vec<f64> = (0..dim).map(|_| g.next_f64() * 2.0 - 1.0).collect();
                (0..dim).map(|i| (0..dim).map(|k| a[i * dim + k] * z[k]).sum::<f64>() as f32 + 3.0).collect::<Vec<f32>>()
            })
            .collect()
    }

    /// Whitened training data has identity covariance (before the final ℓ2 step).
    #[test]
    fn whitened_training_data_has_identity_covariance() {
        for (n, dim) in [(400, 6), (5, 12)] {
            let data = correlated(n, dim, 7);
            let p = PcaWhitening::fit(&data, dim, dim, 0.0).expect("fit");
            let keep = dim.min(n - 1);
            assert_eq!(p.output_dim, keep);
            let mut raw = Vec::new();
            for row in data.chunks(dim) {
                for pr in p.projection.chunks(dim) {
                    raw.push(pr.iter().zip(row.iter().zip(&p.mean)).map(|(a, (v, m))| a * (v - m)).sum::<f32>());
                }
            }
            let c = covariance(&raw, keep);
            for i in 0..keep {
                for j in 0..keep {
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((c[i * keep + j] - want).abs() < 1e-3, "n={n} dim={dim}: cov({i},{j}) = {}", c[i * keep + j]);
                }
            }
            let out = p.apply(&data);
            assert!(out.chunks(keep).all(|r| (r.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-4));
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        assert_eq!(PcaWhitening::fit(&[1.0, 2.0], 2, 2, 0.0), Err(PcaError::TooFew(1)));
        assert_eq!(PcaWhitening::fit(&[1.0, f32::NAN, 0.0, 1.0], 2, 2, 0.0), Err(PcaError::NonFinite));
    }
}
