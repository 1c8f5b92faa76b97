//! Small dense linear algebra in `f64`: the symmetric eigendecomposition that PCA-whitening and
//! MPN-COV need.
//!
//! Householder reduction to tridiagonal form followed by the implicit QL algorithm with Wilkinson
//! shifts (the EISPACK `tred2`/`tql2` pair, as in Golub and Van Loan, *Matrix Computations*,
//! §8.3): about `4n³` flops for a full decomposition, accurate eigenvectors, no iteration count
//! to tune. Meant for matrices up to a few thousand rows.

/// Eigenvalues (descending) and eigenvectors of a symmetric matrix.
#[derive(Debug, Clone)]
pub struct SymmetricEigen {
    /// Eigenvalues, largest first.
    pub values: Vec<f64>,
    /// Eigenvectors as rows: `vectors[i * n..(i + 1) * n]` belongs to `values[i]`.
    pub vectors: Vec<f64>,
    /// Order of the matrix.
    pub n: usize,
}

impl SymmetricEigen {
    /// Eigenvector `i` (unit length).
    pub fn vector(&self, i: usize) -> &[f64] {
        &self.vectors[i * self.n..(i + 1) * self.n]
    }
}

/// Householder tridiagonalisation: on return `v` holds the orthogonal transformation, `d` the
/// diagonal and `e` the sub-diagonal (in `e[1..]`).
#[allow(clippy::needless_range_loop)]
fn tred2(v: &mut [f64], d: &mut [f64], e: &mut [f64], n: usize) {
    // Column-major: the inner loops below run down columns, which are then contiguous.
    let at = |i: usize, j: usize| j * n + i;
    for j in 0..n {
        d[j] = v[at(n - 1, j)];
    }
    for i in (1..n).rev() {
        let scale: f64 = d[..i].iter().map(|x| x.abs()).sum();
        let mut h = 0.0;
        if scale == 0.0 {
            e[i] = d[i - 1];
            for j in 0..i {
                d[j] = v[at(i - 1, j)];
                v[at(i, j)] = 0.0;
                v[at(j, i)] = 0.0;
            }
        } else {
            for k in 0..i {
                d[k] /= scale;
                h += d[k] * d[k];
            }
            let f = d[i - 1];
            let mut g = h.sqrt();
            if f > 0.0 {
                g = -g;
            }
            e[i] = scale * g;
            h -= f * g;
            d[i - 1] = f - g;
            for j in 0..i {
                e[j] = 0.0;
            }
            for j in 0..i {
                let f = d[j];
                v[at(j, i)] = f;
                let mut g = e[j] + v[at(j, j)] * f;
                for k in j + 1..i {
                    g += v[at(k, j)] * d[k];
                    e[k] += v[at(k, j)] * f;
                }
                e[j] = g;
            }
            let mut f = 0.0;
            for j in 0..i {
                e[j] /= h;
                f += e[j] * d[j];
            }
            let hh = f / (h + h);
            for j in 0..i {
                e[j] -= hh * d[j];
            }
            for j in 0..i {
                let (f, g) = (d[j], e[j]);
                for k in j..i {
                    v[at(k, j)] -= f * e[k] + g * d[k];
                }
                d[j] = v[at(i - 1, j)];
                v[at(i, j)] = 0.0;
            }
        }
        d[i] = h;
    }
    // Accumulate the transformations.
    for i in 0..n.saturating_sub(1) {
        v[at(n - 1, i)] = v[at(i, i)];
        v[at(i, i)] = 1.0;
        let h = d[i + 1];
        if h != 0.0 {
            for k in 0..=i {
                d[k] = v[at(k, i + 1)] / h;
            }
            for j in 0..=i {
                let g: f64 = (0..=i).map(|k| v[at(k, i + 1)] * v[at(k, j)]).sum();
                for k in 0..=i {
                    v[at(k, j)] -= g * d[k];
                }
            }
        }
        for k in 0..=i {
            v[at(k, i + 1)] = 0.0;
        }
    }
    for j in 0..n {
        d[j] = v[at(n - 1, j)];
        v[at(n - 1, j)] = 0.0;
    }
    v[at(n - 1, n - 1)] = 1.0;
    e[0] = 0.0;
}

/// Implicit QL on the tridiagonal matrix (`d`, `e`), accumulating into `v`. Returns `false` if
/// an eigenvalue does not converge in 64 iterations.
fn tql2(v: &mut [f64], d: &mut [f64], e: &mut [f64], n: usize) -> bool {
    // Column-major: the inner loops below run down columns, which are then contiguous.
    let at = |i: usize, j: usize| j * n + i;
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    let mut f = 0.0;
    let mut tst1: f64 = 0.0;
    let eps = f64::EPSILON;
    for l in 0..n {
        tst1 = tst1.max(d[l].abs() + e[l].abs());
        let mut m = l;
        while m < n - 1 && e[m].abs() > eps * tst1 {
            m += 1;
        }
        if m > l {
            let mut iterations = 0;
            loop {
                iterations += 1;
                if iterations > 64 {
                    return false;
                }
                let g = d[l];
                let mut p = (d[l + 1] - g) / (2.0 * e[l]);
                let mut r = p.hypot(1.0);
                if p < 0.0 {
                    r = -r;
                }
                d[l] = e[l] / (p + r);
                d[l + 1] = e[l] * (p + r);
                let dl1 = d[l + 1];
                let h = g - d[l];
                for x in d.iter_mut().take(n).skip(l + 2) {
                    *x -= h;
                }
                f += h;
                p = d[m];
                let (mut c, mut c2, mut c3) = (1.0, 1.0, 1.0);
                let el1 = e[l + 1];
                let (mut s, mut s2) = (0.0, 0.0);
                for i in (l..m).rev() {
                    c3 = c2;
                    c2 = c;
                    s2 = s;
                    let g = c * e[i];
                    let h = c * p;
                    r = p.hypot(e[i]);
                    e[i + 1] = s * r;
                    s = e[i] / r;
                    c = p / r;
                    p = c * d[i] - s * g;
                    d[i + 1] = h + s * (c * g + s * d[i]);
                    for k in 0..n {
                        let h = v[at(k, i + 1)];
                        v[at(k, i + 1)] = s * v[at(k, i)] + c * h;
                        v[at(k, i)] = c * v[at(k, i)] - s * h;
                    }
                }
                p = -s * s2 * c3 * el1 * e[l] / dl1;
                e[l] = s * p;
                d[l] = c * p;
                if e[l].abs() <= eps * tst1 {
                    break;
                }
            }
        }
        d[l] += f;
        e[l] = 0.0;
    }
    true
}

/// Decomposes the symmetric `n x n` row-major matrix `a` (symmetrised as `(a + aᵀ)/2`, so its
/// row-major and column-major storage agree; the routines work column-major, where their inner
/// loops read contiguous memory).
/// Returns `None` for a wrong buffer size, a non-finite entry, or (never seen in practice) an
/// eigenvalue that does not converge.
pub fn symmetric_eigen(a: &[f64], n: usize) -> Option<SymmetricEigen> {
    if a.len() != n * n || a.iter().any(|v| !v.is_finite()) {
        return None;
    }
    if n == 0 {
        return Some(SymmetricEigen { values: Vec::new(), vectors: Vec::new(), n });
    }
    let mut v: Vec<f64> = (0..n * n).map(|k| 0.5 * (a[k] + a[(k % n) * n + k / n])).collect();
    let (mut d, mut e) = (vec![0.0; n], vec![0.0; n]);
    tred2(&mut v, &mut d, &mut e, n);
    if !tql2(&mut v, &mut d, &mut e, n) {
        return None;
    }
    // Column k of the (column-major) v, i.e. v[k n..(k + 1) n], is the eigenvector of d[k].
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| d[j].total_cmp(&d[i]).then(i.cmp(&j)));
    let values = order.iter().map(|&k| d[k]).collect();
    let vectors = order.iter().flat_map(|&k| v[k * n..(k + 1) * n].iter().copied()).collect();
    Some(SymmetricEigen { values, vectors, n })
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

    /// Repeated eigenvalues and a rank-deficient matrix (a covariance of fewer samples than
    /// dimensions) still give an orthonormal basis that reconstructs the matrix.
    #[test]
    fn degenerate_spectra() {
        let n = 12;
        let mut g = SplitMix64::new(8);
        let x: Vec<f64> = (0..3 * n).map(|_| g.next_f64() - 0.5).collect();
        // A = X^T X with X of 3 rows: rank 3, eigenvalue 0 with multiplicity 9.
        let a: Vec<f64> = (0..n * n).map(|k| (0..3).map(|r| x[r * n + k / n] * x[r * n + k % n]).sum()).collect();
        let e = symmetric_eigen(&a, n).expect("finite");
        for i in 0..n {
            for j in 0..n {
                let r: f64 = (0..n).map(|k| e.values[k] * e.vector(k)[i] * e.vector(k)[j]).sum();
                assert!((r - a[i * n + j]).abs() < 1e-10);
                let dot: f64 = (0..n).map(|k| e.vector(i)[k] * e.vector(j)[k]).sum();
                assert!((dot - if i == j { 1.0 } else { 0.0 }).abs() < 1e-10);
            }
        }
        assert!(e.values[3..].iter().all(|v| v.abs() < 1e-12), "{:?}", e.values);
        let id: Vec<f64> = (0..n * n).map(|k| if k % (n + 1) == 0 { 2.0 } else { 0.0 }).collect();
        assert!(symmetric_eigen(&id, n).expect("finite").values.iter().all(|&v| (v - 2.0).abs() < 1e-14));
    }

    #[test]
    fn rejects_bad_input() {
        assert!(symmetric_eigen(&[1.0, f64::NAN, 0.0, 1.0], 2).is_none());
        assert!(symmetric_eigen(&[1.0, 2.0, 3.0], 2).is_none());
    }
}
