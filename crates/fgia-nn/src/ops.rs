//! Small tensor operations shared by the backbones and the method crates.

use burn::prelude::*;

/// Global average pooling.
///
/// # Shapes
/// `[B, C, H, W]` to `[B, C]`.
pub fn global_avg_pool<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 2> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h * w]).mean_dim(2).reshape([b, c]) // [B, C]
}

/// Signed square root `sign(x) * sqrt(|x| + eps)`, the element-wise normalisation of bilinear
/// features (Lin et al., ICCV 2015). `eps` keeps the gradient finite at 0.
pub fn signed_sqrt<B: Backend, const D: usize>(x: Tensor<B, D>, eps: f64) -> Tensor<B, D> {
    x.clone().sign() * x.abs().add_scalar(eps).sqrt()
}

/// ℓ2 normalisation of each row: `x / max(|x|, eps)`.
///
/// # Shapes
/// `[B, D]` to `[B, D]`.
pub fn l2_normalize<B: Backend>(x: Tensor<B, 2>, eps: f64) -> Tensor<B, 2> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(eps); // [B, 1]
    x / norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    #[test]
    fn pooling_and_normalisation_by_hand() {
        let dev = Default::default();
        let x = Tensor::<Flex, 4>::from_data(TensorData::new((0..8).map(|v| v as f32).collect::<Vec<_>>(), [1, 2, 2, 2]), &dev);
        global_avg_pool(x).into_data().assert_approx_eq::<f32>(&TensorData::from([[1.5f32, 5.5]]), Default::default());
        let v = Tensor::<Flex, 2>::from_data([[3.0f32, -4.0], [0.0, 0.0]], &dev);
        l2_normalize(v, 1e-12).into_data().assert_approx_eq::<f32>(&TensorData::from([[0.6f32, -0.8], [0.0, 0.0]]), Default::default());
        let s = Tensor::<Flex, 1>::from_data([4.0f32, -9.0, 0.0], &dev);
        signed_sqrt(s, 0.0).into_data().assert_approx_eq::<f32>(&TensorData::from([2.0f32, -3.0, 0.0]), Default::default());
    }
}
