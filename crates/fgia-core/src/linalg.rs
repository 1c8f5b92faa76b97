//! Small dense linear algebra in `f64`: the symmetric eigendecomposition (cyclic Jacobi) that
//! PCA-whitening needs.
//!
//! Cyclic Jacobi (Golub and Van Loan, *Matrix Computations*, §8.5) is slow next to a
//! tridiagonal QR solver, O(n³) per sweep with 6-10 sweeps, but it is short, unconditionally
//! convergent and accurate to full precision in every eigenvector, which is what whitening
//! (a division by √λ) needs. It is meant for matrices up to a few thousand rows.

/// Eigenvalues (descending) and eigenvectors of a symmetric matrix.
#[derive(Debug, Clone)]
pub struct SymmetricEigen {
    /// Eigenvalues, largest first.
    pub values: Vec<f64>,
    /// Eigenvectors as rows: `vectors[i * n..(i + 1) * n]` belongs to `values[i]`.
    pub vectors: Vec<f64>,
    /// Order of the matrix.
    pub n: usize,
    /// Jacobi sweeps used.
    pub sweeps: usize,
}

impl SymmetricEigen {
    /// Eigenvector `i` (unit length).
    pub fn vector(&self, i: usize) -> &[f64] {
        &self.vectors[i * self.n..(i + 1) * self.n]
    }
}

/// Decomposes the symmetric `n x n` row-major matrix `a` (only its values are read; it is
/// symmetrised as `(a + aᵀ)/2`). Returns `None` for a wrong buffer size or a non-finite entry.
pub fn symmetric_eigen(a: &[f64], n: usize) -> Option<SymmetricEigen> {
    if a.len() != n * n || a.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let mut m: Vec<f64> = (0..n * n).map(|k| 0.5 * (a[k] + a[(k % n) * n + k / n])).collect();
    // v holds the eigenvectors as rows (the transpose of the accumulated rotation matrix).
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let scale: f64 = m.iter().map(|x| x * x).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
    let mut sweeps = 0;
    for sweep in 0..60 {
        let off: f64 = (0..n).flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j))).map(|(i, j)| m[i * n + j] * m[i * n + j]).sum();
        sweeps = sweep;
        if off.sqrt() <= 1e-15 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = m[p * n + q];
                if apq.abs() <= 1e-300 {
                    continue;
                }
                let app = m[p * n + p];
                let aqq = m[q * n + q];
                let theta = (aqq - app) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                // Rotate rows and columns p, q of m.
                for k in 0..n {
                    let mkp = m[k * n + p];
                    let mkq = m[k * n + q];
                    m[k * n + p] = c * mkp - s * mkq;
                    m[k * n + q] = s * mkp + c * mkq;
                }
                for k in 0..n {
                    let mpk = m[p * n + k];
                    let mqk = m[q * n + k];
                    m[p * n + k] = c * mpk - s * mqk;
                    m[q * n + k] = s * mpk + c * mqk;
                }
                // Accumulate: eigenvector rows p and q.
                for k in 0..n {
                    let vp = v[p * n + k];
                    let vq = v[q * n + k];
                    v[p * n + k] = c * vp - s * vq;
                    v[q * n + k] = s * vp + c * vq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| m[j * n + j].total_cmp(&m[i * n + i]).then(i.cmp(&j)));
    let values = order.iter().map(|&i| m[i * n + i]).collect();
    let vectors = order.iter().flat_map(|&i| v[i * n..(i + 1) * n].iter().copied()).collect();
    Some(SymmetricEigen { values, vectors, n, sweeps })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    #[test]
    fn two_by_two_by_hand() {
        // [[2, 1], [1, 2]]: eigenvalues 3 and 1, eigenvectors (1, 1)/√2 and (1, -1)/√2.
        let e = symmetric_eigen(&[2.0, 1.0, 1.0, 2.0], 2).expect("finite");
        assert!((e.values[0] - 3.0).abs() < 1e-12 && (e.values[1] - 1.0).abs() < 1e-12, "{:?}", e.values);
        let v0 = e.vector(0);
        assert!((v0[0].abs() - 0.5f64.sqrt()).abs() < 1e-12 && (v0[0] - v0[1]).abs() < 1e-12);
    }

    #[test]
    fn reconstructs_a_random_symmetric_matrix() {
        let n = 24;
        let mut g = SplitMix64::new(3);
        let b: Vec<f64> = (0..n * n).map(|_| g.next_f64() - 0.5).collect();
        let a: Vec<f64> = (0..n * n).map(|k| b[k] + b[(k % n) * n + k / n]).collect();
        let e = symmetric_eigen(&a, n).expect("finite");
        for i in 0..n {
            for j in 0..n {
                let r: f64 = (0..n).map(|k| e.values[k] * e.vector(k)[i] * e.vector(k)[j]).sum();
                assert!((r - a[i * n + j]).abs() < 1e-10, "entry ({i},{j}): {r} vs {}", a[i * n + j]);
                let dot: f64 = (0..n).map(|k| e.vector(i)[k] * e.vector(j)[k]).sum();
                assert!((dot - if i == j { 1.0 } else { 0.0 }).abs() < 1e-10, "orthonormality ({i},{j}): {dot}");
            }
        }
        assert!(e.values.windows(2).all(|w| w[0] >= w[1]), "sorted descending");
    }

    #[test]
    fn rejects_bad_input() {
        assert!(symmetric_eigen(&[1.0, f64::NAN, 0.0, 1.0], 2).is_none());
        assert!(symmetric_eigen(&[1.0, 2.0, 3.0], 2).is_none());
    }
}
