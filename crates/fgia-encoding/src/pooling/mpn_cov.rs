//! MPN-COV: covariance pooling with matrix power normalisation by eigendecomposition.
//!
//! Li, Xie, Wang and Zuo, "Is Second-order Information Helpful for Large-scale Visual
//! Recognition?", ICCV 2017, §3:
//!
//! - covariance `Σ = (1/M) X Ī Xᵀ = U Λ Uᵀ` (eq. 1, 2);
//! - power normalisation `Q = U Λ^α Uᵀ`, `α = ½` (eq. 3);
//! - the upper triangle of `Q` as the descriptor.
//!
//! burn 0.21 has no eigendecomposition, so `U, Λ` come from our symmetric eigensolver
//! (`fgia_core::linalg`, Householder + implicit QL in f64, the batch in parallel). The backward
//! is the paper's (§3.2, after Ionescu et al., ICCV 2015), written in the equivalent
//! Daleckii-Krein form: for a symmetric perturbation `dΣ`,
//!
//! `dQ = U (F ∘ (Uᵀ dΣ U)) Uᵀ`, `F_ij = (λ_i^α − λ_j^α) / (λ_i − λ_j)` for `λ_i ≠ λ_j`,
//! `F_ii = α λ_i^{α−1}`,
//!
//! so `∂L/∂Σ = U (F ∘ (Uᵀ ∂L/∂Q U)) Uᵀ`. It reaches burn's autodiff as an exact linear
//! surrogate: `Q = L(Σ) + stop_gradient(Q* − L(Σ))` with `L(S) = U (F ∘ (Uᵀ S U)) Uᵀ` built from
//! the detached `U` and `F`; the value is `Q*` and the gradient is the formula above.
//!
//! Eigenvalues below `1e-10 · λ_max` are clamped there (the covariance of `M < C` descriptors is
//! singular); equal eigenvalues use the derivative in `F`.
//!
//! Recipe: `recipes/table2/mpn-cov.toml` (`cargo xtask reproduce table2 --smoke --methods mpn-cov`).

use burn::prelude::*;
use fgia_core::linalg::symmetric_eigen;
use rayon::prelude::*;

use super::{covariance, descriptors, upper_triangle};

/// The paper's exponent.
pub const ALPHA: f64 = 0.5;

/// `Σ^α` of symmetric positive semi-definite matrices, with the eigendecomposition's gradient.
///
/// # Shapes
/// `[B, C, C]` to `[B, C, C]`.
pub fn matrix_power<B: Backend>(sigma: Tensor<B, 3>, alpha: f64) -> Tensor<B, 3> {
    let [b, c, _] = sigma.dims();
    let device = sigma.device();
    let values: Vec<f32> = sigma.clone().into_data().convert::<f32>().to_vec().unwrap_or_default();
    let per: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..b)
        .into_par_iter()
        .map(|i| {
            let a: Vec<f64> = values[i * c * c..(i + 1) * c * c].iter().map(|&v| v as f64).collect();
            let Some(e) = symmetric_eigen(&a, c) else {
                // A non-finite covariance: the output is NaN too, so that training's NaN check
                // stops the run instead of continuing on a made-up value.
                return (vec![0.0; c * c], vec![0.0; c * c], vec![f32::NAN; c * c]) // W, so Q* is NaN;
            };
            let floor = e.values.first().copied().unwrap_or(0.0).abs() * 1e-10 + f64::MIN_POSITIVE;
            let lam: Vec<f64> = e.values.iter().map(|&l| l.max(floor)).collect();
            let pw: Vec<f64> = lam.iter().map(|l| l.powf(alpha)).collect();
            // U with eigenvectors as columns: u[r * c + k] = vector k, component r.
            let mut u = vec![0.0f32; c * c];
            for k in 0..c {
                for r in 0..c {
                    u[r * c + k] = e.vector(k)[r] as f32;
                }
            }
            let mut f = vec![0.0f32; c * c];
            for p in 0..c {
                for q in 0..c {
                    let (lp, lq) = (lam[p], lam[q]);
                    f[p * c + q] = if (lp - lq).abs() > 1e-9 * lp.abs().max(lq.abs()) {
                        ((pw[p] - pw[q]) / (lp - lq)) as f32
                    } else {
                        (alpha * lp.powf(alpha - 1.0)) as f32
                    };
                }
            }
            // Q* = U diag(λ^α) Uᵀ = W Wᵀ with W = U diag(λ^{α/2}), a Gram product (below).
            let mut w = vec![0.0f32; c * c];
            for k in 0..c {
                let scale = pw[k].sqrt();
                for (r, v) in e.vector(k).iter().enumerate() {
                    w[r * c + k] = (scale * v) as f32;
                }
            }
            (u, f, w)
        })
        .collect();
    let stack = |k: usize| -> Tensor<B, 3> {
        let flat: Vec<f32> = per
            .iter()
            .flat_map(|t| if k == 0 { t.0.clone() } else { t.1.clone() })
            .collect();
        Tensor::from_data(TensorData::new(flat, [b, c, c]), &device)
    };
    let w: Vec<f32> = per.iter().flat_map(|t| t.2.iter().copied()).collect();
    let q = Tensor::<B, 3>::from_data(TensorData::new(fgia_nn::kernels::gram::forward(&w, [b, c, c], 1.0), [b, c, c]), &device);
    if !B::ad_enabled(&device) {
        // No gradient to carry: the value alone, without the surrogate's four products.
        return q;
    }
    let (u, f) = (stack(0), stack(1));
    let linear = u.clone().matmul(f * u.clone().swap_dims(1, 2).matmul(sigma).matmul(u.clone())).matmul(u.swap_dims(1, 2));
    let offset = q - linear.clone().detach();
    linear + offset
}

/// The MPN-COV descriptor of a (reduced) feature map.
///
/// # Shapes
/// `[B, C, h, w]` to `[B, C (C + 1) / 2]`.
pub fn mpn_cov<B: Backend>(x: Tensor<B, 4>, alpha: f64) -> Tensor<B, 2> {
    upper_triangle(matrix_power(covariance(descriptors(x)), alpha))
}
