//! The registry, the head, and an end-to-end retrieval run on the shared data.

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use fgia_cbir::Method;
use fgia_cbir::model::{EmbeddingHeadConfig, avg_max_pool};

type B = Autodiff<Flex>;

/// Every trained method: a tiny head on random maps runs forward and backward, with a finite
/// loss and gradients reaching the embedding layer (and the class weights where it has them).
#[test]
fn every_trained_method_runs_forward_and_backward() {
    let device = Default::default();
    let labels = [0usize, 0, 1, 1, 2, 2, 0, 1];
    for method in Method::ALL.into_iter().filter(|m| m.is_trained()) {
        B::seed(&device, 1);
        let head = EmbeddingHeadConfig::new(6, 4).with_classes(if method.has_class_weights() { 3 } else { 0 }).init::<B>(&device);
        let maps = Tensor::<B, 4>::random([8, 6, 5, 5], burn::tensor::Distribution::Uniform(0.0, 1.0), &device);
        let emb = head.forward(maps, method.pooling());
        assert_eq!(emb.dims(), [8, 4], "{method}");
        let w = head.weights();
        let loss = match method {
            Method::Contrastive => fgia_cbir::losses::contrastive::contrastive_loss(emb, &labels, 0.5),
            Method::Triplet => fgia_cbir::losses::triplet::triplet_semi_hard_loss(emb, &labels, 0.2),
            Method::MultiSimilarity => fgia_cbir::losses::multi_similarity::multi_similarity_loss(emb, &labels, Default::default()),
            Method::ProxyAnchor => fgia_cbir::losses::proxy_anchor::proxy_anchor_loss(emb, w.clone().expect("proxies"), &labels, 32.0, 0.1),
            Method::CrlWsl => fgia_cbir::losses::crl::centralized_ranking_loss(emb, &labels, 0.5),
            Method::Dgcrl => fgia_cbir::losses::dgcrl::dgcrl_loss(emb, w.clone().expect("centres"), &labels, Default::default()),
            Method::PiecewiseCe => fgia_cbir::losses::piecewise_ce::piecewise_ce_loss(emb, w.clone().expect("weights"), &labels, Default::default()),
            Method::Scda => unreachable!(),
        };
        let v: f32 = loss.clone().into_scalar().elem();
        assert!(v.is_finite(), "{method}: loss {v}");
        let grads = loss.backward();
        let g = head.embed.weight.grad(&grads).expect("gradient reaches the embedding layer");
        let gn: f32 = g.powi_scalar(2).sum().into_scalar().elem();
        assert!(gn.is_finite() && gn > 0.0, "{method}: embedding gradient norm {gn}");
        if let (Some(w), true) = (&head.class_weights, method.has_class_weights()) {
            assert!(w.grad(&grads).is_some(), "{method}: gradient reaches the class weights");
        }
    }
}

#[test]
fn masked_pooling_by_hand() {
    let device = Default::default();
    // One 1-channel 2x2 map [1, 2; 3, 4] with mask [1, 0; 0, 1]: avg 2.5, max 4.
    let maps = Tensor::<Flex, 4>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [1, 1, 2, 2]), &device);
    let mask = Tensor::<Flex, 4>::from_data(TensorData::new(vec![1.0f32, 0.0, 0.0, 1.0], [1, 1, 2, 2]), &device);
    let p: Vec<f32> = avg_max_pool(maps.clone(), Some(mask)).into_data().to_vec().expect("f32");
    assert_eq!(p, vec![2.5, 4.0]);
    let p: Vec<f32> = avg_max_pool(maps, None).into_data().to_vec().expect("f32");
    assert_eq!(p, vec![2.5, 4.0]);
}

#[test]
fn registry_names_round_trip() {
    for m in Method::ALL {
        assert_eq!(m.name().parse::<Method>(), Ok(m));
    }
    assert!("nope".parse::<Method>().is_err());
}
