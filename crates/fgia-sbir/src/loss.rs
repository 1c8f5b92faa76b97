//! The triplet ranking loss of both methods, on an energy between embeddings.
//!
//! Triplet Sketch-a-Net (Yu et al. 2016, eq. 1) and DSSA with its plain loss use the squared
//! Euclidean distance; DSSA with HOLEF (Song et al. 2017, §3.4) uses `D_W(s, p) =
//! Σ_ij W_ij (s_i − p_j)²` (`dssa::Holef`), which is the squared Euclidean distance at `W = I`.
//! The loss is `max(0, Δ + D(s, p⁺) − D(s, p⁻))`, with margin `Δ` (0.3 in the authors' release).

use burn::prelude::*;

/// `D_W` of matching rows, `[n, d]` × `[n, d]` → `[n]`; `None` is `W = I` (the squared Euclidean
/// distance).
pub fn pair_energy<B: Backend>(s: Tensor<B, 2>, p: Tensor<B, 2>, w: Option<Tensor<B, 2>>) -> Tensor<B, 1> {
    let n = s.dims()[0];
    let Some(w) = w else {
        return (s - p).powi_scalar(2).sum_dim(1).reshape([n]);
    };
    let rows = w.clone().sum_dim(1); // [d, 1]: W 1
    let cols = w.clone().sum_dim(0).transpose(); // [d, 1]: Wᵀ 1
    let cross = (s.clone().matmul(w) * p.clone()).sum_dim(1); // [n, 1]: sᵀ W p
    (s.powi_scalar(2).matmul(rows) + p.powi_scalar(2).matmul(cols) - cross.mul_scalar(2.0)).reshape([n])
}

/// `D_W` of every pair: `[m, d]` sketches × `[n, d]` photos → `[m, n]`; `None` is `W = I`.
pub fn all_energies<B: Backend>(s: Tensor<B, 2>, p: Tensor<B, 2>, w: Option<Tensor<B, 2>>) -> Tensor<B, 2> {
    let d = s.dims()[1];
    let w = w.unwrap_or_else(|| Tensor::eye(d, &s.device()));
    let rows = w.clone().sum_dim(1);
    let cols = w.clone().sum_dim(0).transpose();
    let a = s.clone().powi_scalar(2).matmul(rows); // [m, 1]
    let b = p.clone().powi_scalar(2).matmul(cols).transpose(); // [1, n]
    a + b - s.matmul(w).matmul(p.transpose()).mul_scalar(2.0)
}

/// The triplet loss on energies, mean over the batch, and `D(s, p⁺) − D(s, p⁻)` per triplet.
pub fn energy_triplet_loss<B: Backend>(
    anchor: Tensor<B, 2>,
    pos: Tensor<B, 2>,
    neg: Tensor<B, 2>,
    w: Option<Tensor<B, 2>>,
    margin: f64,
) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let diff = pair_energy(anchor.clone(), pos, w.clone()) - pair_energy(anchor, neg, w);
    (diff.clone().add_scalar(margin).clamp_min(0.0).mean(), diff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn the_triplet_loss_is_the_hinge_on_squared_distances() {
        let device = Default::default();
        let t = |v: &[f32]| Tensor::<Flex, 2>::from_data(TensorData::new(v.to_vec(), [2, 2]), &device);
        // Row 0: D(a,p)² = 1, D(a,n)² = 4: 0.3 + 1 − 4 < 0 → 0. Row 1: 4 and 1 → 0.3 + 3 = 3.3.
        let a = t(&[0.0, 0.0, 0.0, 0.0]);
        let p = t(&[1.0, 0.0, 2.0, 0.0]);
        let n = t(&[0.0, 2.0, 0.0, 1.0]);
        let (loss, diff) = energy_triplet_loss(a, p, n, None, 0.3);
        let l: f32 = loss.into_scalar();
        assert!((l - 3.3 / 2.0).abs() < 1e-6, "{l}");
        assert_eq!(diff.into_data().to_vec::<f32>().expect("f32"), [-3.0, 3.0]);
    }
}
