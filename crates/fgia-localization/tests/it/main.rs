//! Each method's distinctive piece against values computed by hand (or by a direct scalar
//! computation written independently of the tensor code), and bad input as errors.

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::prelude::*;
use fgia_core::datasets::{BBox, Part};
use fgia_localization::geometry::{
    NormBox, affine_grid, boxcar_mask, head_and_body, inverse_cdf_grid, mask_box, nms, nts_anchors, nts_levels, roi_align, saliency_grid, tasn_grid,
};

type A = Autodiff<Flex>;
type F = Flex;

fn close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (k, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol, "{what}[{k}]: {x} vs {y}");
    }
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().expect("f32")
}

#[test]
fn nts_anchors_number_1614_at_448_px_and_sit_where_the_authors_put_them() {
    let levels = nts_levels();
    assert_eq!(nts_anchors(&levels, 448).len(), 14 * 14 * 6 + 7 * 7 * 6 + 4 * 4 * 9);
    assert_eq!(nts_anchors(&levels, 448).len(), 1614);
    assert_eq!(nts_anchors(&levels, 224).len(), 7 * 7 * 6 + 4 * 4 * 6 + 2 * 2 * 9);
    let a = nts_anchors(&levels, 448);
    // First anchor: level 1, scale 2^(1/3), ratio 0.667, cell (0, 0): centre (16, 16) px.
    let s = 2f32.powf(1.0 / 3.0);
    let (h, w) = (48.0 * s / 0.667f32.sqrt(), 48.0 * s * 0.667f32.sqrt());
    close(
        &[a[0].x0, a[0].y0, a[0].x1, a[0].y1],
        &[(16.0 - w / 2.0) / 448.0, (16.0 - h / 2.0) / 448.0, (16.0 + w / 2.0) / 448.0, (16.0 + h / 2.0) / 448.0],
        1e-6,
        "anchor 0",
    );
    // The second anchor is the next column of the same type: shifted by one stride (32 px).
    assert!((a[1].x0 - a[0].x0 - 32.0 / 448.0).abs() < 1e-6 && a[1].y0 == a[0].y0);
    // The last anchor: level 3, scale 2^(2/3), ratio 1.5, cell (3, 3): centre (448, 448) px.
    let l = a[1613];
    let side = 192.0 * 2f32.powf(2.0 / 3.0);
    close(&[(l.x0 + l.x1) / 2.0, (l.y0 + l.y1) / 2.0, l.x1 - l.x0], &[448.0 / 448.0, 448.0 / 448.0, side * 1.5f32.sqrt() / 448.0], 1e-5, "last anchor");
}

#[test]
fn nms_keeps_the_best_boxes_that_overlap_the_kept_ones_below_the_threshold() {
    let b = |x0: f32, x1: f32| NormBox { x0, y0: 0.0, x1, y1: 1.0 };
    // IoU(0, 1) = 0.5 / 1.5 = 1/3; IoU(0, 2) = 0; IoU(1, 2) = 0.25 / 1.25 = 0.2; IoU(2, 3) = 1.
    let boxes = [b(0.0, 1.0), b(0.5, 1.5), b(1.25, 2.25), b(1.25, 2.25), b(5.0, 6.0)];
    let scores = [0.9, 0.8, 0.7, 0.95, f32::NAN];
    // Order by score: 3, 0, 1, 2. Keep 3; 0 (IoU 0 with 3); 1 overlaps 0 by 1/3 >= 0.25: out;
    // 2 overlaps 3 fully: out. The NaN score is never kept.
    assert_eq!(nms(&boxes, &scores, 0.25, 6), vec![3, 0]);
    // At 0.4, box 1 (IoU 1/3 with box 0, 0.2 with box 3) stays.
    assert_eq!(nms(&boxes, &scores, 0.4, 6), vec![3, 0, 1]);
    assert_eq!(nms(&boxes, &scores, 0.4, 2), vec![3, 0], "at most `keep`");
}

#[test]
fn affine_grids_state_align_corners() {
    let device = Default::default();
    let id = Tensor::<F, 3>::from_data(TensorData::new(vec![1.0f32, 0.0, 0.0, 0.0, 1.0, 0.0], [1, 2, 3]), &device);
    let g = host(affine_grid(id.clone(), 1, 4, false));
    close(&[g[0], g[2], g[4], g[6]], &[-0.75, -0.25, 0.25, 0.75], 1e-6, "align_corners = false");
    let g = host(affine_grid(id, 1, 4, true));
    close(&[g[0], g[2], g[4], g[6]], &[-1.0, -1.0 / 3.0, 1.0 / 3.0, 1.0], 1e-6, "align_corners = true");
}

/// A `[1, 2, 8, 8]` map whose value is `100 c + 8 y + x`.
fn ramp() -> (Vec<f32>, Tensor<F, 4>) {
    let v: Vec<f32> = (0..2 * 64).map(|k| (k / 64 * 100 + k % 64) as f32).collect();
    let t = Tensor::from_data(TensorData::new(v.clone(), [1, 2, 8, 8]), &Default::default());
    (v, t)
}

#[test]
fn roi_align_equals_the_reference_crop() {
    let (v, t) = ramp();
    // Pixels x in [2, 6), y in [1, 5): a 4x4 output samples the pixel centres exactly.
    let b = NormBox::new(2.0 / 8.0, 1.0 / 8.0, 6.0 / 8.0, 5.0 / 8.0).expect("box");
    let out = host(roi_align(t.clone(), &[(0, b)], 4, 4));
    let want: Vec<f32> = (0..2).flat_map(|c| (1..5).flat_map(move |y| (2..6).map(move |x| (c, y, x)))).map(|(c, y, x)| v[c * 64 + y * 8 + x]).collect();
    close(&out, &want, 1e-4, "RoI-align of a pixel-aligned box");
    // A 2x2 output of the same box: each bin's centre sits between four pixels, and bilinear
    // interpolation of the ramp gives their mean: bin (0, 0) centres at (3, 2) in pixel edges.
    let out = host(roi_align(t, &[(0, b)], 2, 2));
    let at = |c: usize, y: f32, x: f32| (c * 100) as f32 + 8.0 * (y - 0.5) + (x - 0.5);
    close(&out[..4], &[at(0, 2.0, 3.0), at(0, 2.0, 5.0), at(0, 4.0, 3.0), at(0, 4.0, 5.0)], 1e-4, "2x2 bins");
}

#[test]
fn the_boxcar_crop_approaches_the_hard_crop_and_passes_gradients_to_the_box() {
    let device = Default::default();
    let one = |v: f32| Tensor::<F, 1>::from_data(TensorData::new(vec![v], [1]), &device);
    // A 16x16 image, square centred at (8, 8) with half side 4: pixels [4, 12) in both axes.
    let m = host(boxcar_mask(one(8.0), one(8.0), one(4.0), 16, 16, 50.0));
    for y in 0..16 {
        for x in 0..16 {
            let inside = (4..12).contains(&x) && (4..12).contains(&y);
            assert!((m[y * 16 + x] - f32::from(u8::from(inside))).abs() < 1e-6, "({x}, {y}): {}", m[y * 16 + x]);
        }
    }
    // Masked image, then the crop of the box: equal to the hard crop of the image.
    let img: Vec<f32> = (0..256).map(|k| (k as f32 * 0.37).sin()).collect();
    let it = Tensor::<F, 4>::from_data(TensorData::new(img.clone(), [1, 1, 16, 16]), &device);
    let masked = it * boxcar_mask(one(8.0), one(8.0), one(4.0), 16, 16, 50.0);
    let b = NormBox::new(0.25, 0.25, 0.75, 0.75).expect("box");
    let soft = host(roi_align(masked, &[(0, b)], 8, 8));
    let hard: Vec<f32> = (4..12).flat_map(|y| (4..12).map(move |x| (y, x))).map(|(y, x)| img[y * 16 + x]).collect();
    close(&soft, &hard, 1e-5, "boxcar crop vs hard crop");
    // At the paper's k = 10 the mask is differentiable in the box: the gradient reaches t_x.
    let tx = Tensor::<A, 1>::from_data(TensorData::new(vec![8.0f32], [1]), &device).require_grad();
    let mask = boxcar_mask(
        tx.clone(),
        Tensor::from_data(TensorData::new(vec![8.0f32], [1]), &device),
        Tensor::from_data(TensorData::new(vec![4.0f32], [1]), &device),
        16,
        16,
        10.0,
    );
    let weights = Tensor::<A, 4>::from_data(TensorData::new((0..256).map(|k| (k % 16) as f32).collect::<Vec<_>>(), [1, 1, 16, 16]), &device);
    let grads = (mask * weights).sum().backward();
    let g = host(tx.grad(&grads).expect("gradient"));
    // Moving the box right moves mass to larger x: positive gradient of Σ x M.
    assert!(g[0] > 1.0, "dL/dt_x = {}", g[0]);
}

#[test]
fn tasn_inverse_cdf_grid_by_hand() {
    // A uniform marginal gives the identity grid (align_corners = false).
    close(&inverse_cdf_grid(&[1.0; 5], 4, 4.0, 5), &[-0.75, -0.25, 0.25, 0.75], 1e-6, "uniform");
    // Marginal (3, 1) over 2 bins, 4 samples, no cap: density (3, 1), CDF (0, 3, 4); targets
    // 0.5, 1.5, 2.5, 3.5 land at x = 1/6, 1/2, 5/6, 1.5; normalised 2x/2 - 1.
    close(&inverse_cdf_grid(&[3.0, 1.0], 4, 100.0, 5), &[1.0 / 6.0 - 1.0, -0.5, 5.0 / 6.0 - 1.0, 0.5], 1e-6, "no cap");
    // Cap 1.2 x uniform = 2.4, one round: (3, 1) -> (2.4, 1) plus the excess 0.6 spread: (2.7, 1.3).
    let want = [0.5 / 2.7 - 1.0, 1.5 / 2.7 - 1.0, 2.5 / 2.7 - 1.0, 1.0 + 0.8 / 1.3 - 1.0];
    close(&inverse_cdf_grid(&[3.0, 1.0], 4, 1.2, 1), &want, 1e-6, "capped");
    // The separable grid: x from the column maxima, y from the row maxima.
    let a = [3.0, 0.0, 0.0, 1.0]; // 2x2: column maxima (3, 1), row maxima (3, 1)
    let g = tasn_grid(&a, 2, 2, 4, 100.0, 5);
    assert_eq!(g.len(), 4 * 4 * 2);
    close(&[g[0], g[1], g[2 * 4 * 2 + 2 * 2 + 1]], &[1.0 / 6.0 - 1.0, 1.0 / 6.0 - 1.0, 5.0 / 6.0 - 1.0], 1e-6, "separable");
}

#[test]
fn s3n_saliency_sampler_by_hand() {
    // Uniform saliency: the identity grid, at any output size.
    let g = saliency_grid(&[1.0; 31 * 31], 31, 30, 13.0 / (2.0 * (2.0 * 2f32.ln()).sqrt()), 8);
    let id: Vec<f32> = (0..8).flat_map(|y| (0..8).flat_map(move |x| [(2 * x + 1) as f32 / 8.0 - 1.0, (2 * y + 1) as f32 / 8.0 - 1.0])).collect();
    close(&g, &id, 1e-5, "uniform saliency");
    // 3x3 grid, all saliency in cell (0, 0), a flat kernel: the centre point moves onto cell
    // (0, 0)'s position, (-2/3, -2/3); so does every point whose window sees only that cell's mass.
    let mut q = vec![0.0f32; 9];
    q[0] = 1.0;
    let g = saliency_grid(&q, 3, 1, 1e4, 3);
    close(&g[(3 + 1) * 2..(3 + 1) * 2 + 2], &[-2.0 / 3.0, -2.0 / 3.0], 1e-5, "centre point");
    // Point (0, 0): its window holds cell (0, 0) and its replicas at -4/3: the mean is -1.
    close(&g[..2], &[-1.0, -1.0], 1e-5, "corner point");
}

#[test]
fn dfl_cross_channel_pooling_by_hand() {
    let x = Tensor::<F, 2>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 9.0, 0.0, 0.0, 3.0, -3.0, 6.0, 6.0], [2, 6]), &Default::default());
    // k = 3 filters per class, 2 classes: class 0 = mean(1, 2, 3), class 1 = mean(4, 5, 9).
    close(&host(fgia_localization::dfl::cross_channel_pool(x, 3)), &[2.0, 6.0, 1.0, 3.0], 1e-6, "k = 3");
    // Energy patches: the strongest 3x3 peak's vector, normalised.
    let map = vec![0.0, 0.0, 3.0, 0.0, /* channel 2 */ 0.0, 0.0, 4.0, 0.0];
    let p = fgia_localization::dfl::energy_patches(&map, 2, 2, 2, 1);
    close(&p[0], &[0.6, 0.8], 1e-6, "energy patch");
}

#[test]
fn head_and_body_boxes_from_the_keypoints_by_hand() {
    let obj = BBox { x: 10.0, y: 20.0, w: 100.0, h: 50.0 };
    let part = |id: u32, x: f32, y: f32, visible: bool| Part { id, x, y, visible };
    let parts = [
        part(2, 30.0, 30.0, true),   // beak
        part(5, 40.0, 25.0, true),   // crown
        part(10, 45.0, 35.0, true),  // nape
        part(7, 0.0, 0.0, false),    // left eye, not visible: ignored
        part(1, 60.0, 40.0, true),   // back
        part(3, 70.0, 60.0, true),   // belly
        part(14, 110.0, 65.0, true), // tail: not in either group
    ];
    let (head, body) = head_and_body(obj, &parts, 0.1);
    // Margin 0.1 x 100 = 10 px; head: x 30..45, y 25..35 -> 20..55, 15..45, clipped to the grown
    // object box (0..120, 10..80): (20, 15, 35, 30).
    assert_eq!(head, Some(BBox { x: 20.0, y: 15.0, w: 35.0, h: 30.0 }));
    // Body: x 60..70, y 40..60 -> 50..80, 30..70.
    assert_eq!(body, Some(BBox { x: 50.0, y: 30.0, w: 30.0, h: 40.0 }));
    let (head, _) = head_and_body(obj, &parts[4..], 0.1);
    assert_eq!(head, None, "no visible head keypoint");
}

#[test]
fn the_mamc_loss_matches_a_direct_scalar_computation() {
    let (n, p, d) = (4usize, 2usize, 3usize);
    let labels = [0usize, 0, 1, 1];
    let f: Vec<f32> = (0..n * p * d).map(|k| ((k * 7 % 11) as f32 - 5.0) * 0.3).collect();
    let t = Tensor::<F, 3>::from_data(TensorData::new(f.clone(), [n, p, d]), &Default::default());
    let got = host(fgia_localization::osme_mamc::mamc_loss(t, &labels))[0];
    // Direct: for each anchor (i, a) and the four sets.
    let emb = |i: usize, a: usize| &f[(i * p + a) * d..(i * p + a + 1) * d];
    let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(a, b)| f64::from(a * b)).sum::<f64>();
    let mut total = 0.0f64;
    for i in 0..n {
        for a in 0..p {
            let anchor = emb(i, a);
            let set = |same_att: bool, same_class: bool| -> Vec<(usize, usize)> {
                (0..n)
                    .flat_map(|j| (0..p).map(move |b| (j, b)))
                    .filter(|&(j, b)| (j, b) != (i, a) && (a == b) == same_att && (labels[i] == labels[j]) == same_class)
                    .collect()
            };
            let term = |pos: Vec<(usize, usize)>, neg: Vec<(usize, usize)>| -> f64 {
                if pos.is_empty() {
                    return 0.0;
                }
                pos.iter()
                    .map(|&(j, b)| {
                        let sp = dot(anchor, emb(j, b));
                        (1.0 + neg.iter().map(|&(k, c)| (dot(anchor, emb(k, c)) - sp).exp()).sum::<f64>()).ln()
                    })
                    .sum::<f64>()
                    / pos.len() as f64
            };
            let mut neg_all = set(true, false);
            neg_all.extend(set(false, true));
            neg_all.extend(set(false, false));
            total += term(set(true, true), neg_all) + term(set(true, false), set(false, false)) + term(set(false, true), set(false, false));
        }
    }
    let want = (total / (n * p) as f64) as f32;
    assert!((got - want).abs() < 1e-4 * want.abs().max(1.0), "{got} vs {want}");
    assert!(want > 0.1, "a loss that can be zero by construction would test nothing ({want})");
}

#[test]
fn the_nts_ranking_loss_by_hand_and_dropout_is_off_at_evaluation() {
    use fgia_localization::nts_net::{NtsConfig, NtsRound2, ranking_loss};
    let device = Default::default();
    // Part 0 is the more confident (teacher loss 1.0 < 2.0): pair (0, 1) gives max(0, 1 - 0.2 + 0.5).
    let s = Tensor::<F, 2>::from_data(TensorData::new(vec![0.2f32, 0.5, 3.0, 0.0], [2, 2]), &device);
    let l = host(ranking_loss(s, &[1.0, 2.0, 1.0, 2.0], 1.0))[0];
    // Second item: part 0 scores 3 above part 1, hinge max(0, 1 - 3 + 0) = 0. Mean over 2 items.
    assert!((l - 1.3 / 2.0).abs() < 1e-6, "{l}");
    let model = NtsRound2::<A>::new(8, 3, &NtsConfig::default(), &device);
    let g = Tensor::<A, 4>::ones([2, 8, 2, 2], &device);
    let parts = Tensor::<A, 3>::ones([2, 4, 8], &device);
    let train_a = host(model.scrutinize(g.clone(), &parts));
    let train_b = host(model.scrutinize(g.clone(), &parts));
    assert_ne!(train_a, train_b, "dropout is on in training");
    let eval = model.valid();
    let (gv, pv) = (g.inner(), parts.inner());
    assert_eq!(host(eval.scrutinize(gv.clone(), &pv)), host(eval.scrutinize(gv, &pv)), "dropout is off at evaluation");
}

#[test]
fn the_attention_crop_box_and_bad_boxes() {
    // A 4x4 map with its mass in the top-left 2x2: the box at 0.5 of the maximum.
    let mut m = vec![0.0f32; 16];
    for (y, x) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
        m[y * 4 + x] = 1.0;
    }
    let b = mask_box(&m, 4, 0.5, 32).expect("box");
    assert!(b.x0 == 0.0 && b.y0 == 0.0 && (b.x1 - 0.5).abs() <= 1.0 / 16.0 && (b.y1 - 0.5).abs() <= 1.0 / 16.0, "{b:?}");
    assert!(mask_box(&[f32::NAN; 16], 4, 0.5, 32).is_none(), "a non-finite map has no box");
    assert!(NormBox::new(0.3, 0.2, 0.3, 0.9).expect_err("degenerate").contains("degenerate"));
    assert!(NormBox::new(1.5, 0.0, 2.0, 1.0).expect("outside").clipped().is_none(), "a crop outside the image has nothing inside");
}

#[test]
fn part_rcnn_refuses_a_dataset_without_boxes_or_parts_naming_the_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    fgia_core::testing::write_tiny_cub(dir.path(), 2, 2, 1, 32);
    let ds = fgia_core::datasets::read_cub(dir.path(), Default::default()).expect("tiny CUB");
    let e = fgia_localization::Method::PartRcnn.check_data(&ds).expect_err("no boxes");
    assert!(e.contains("object box") && e.contains("img1.png"), "{e}");
    assert!(fgia_localization::Method::NtsNet.check_data(&ds).is_ok(), "NTS-Net needs no annotations");
}

#[test]
fn the_stn_localiser_learns_through_grid_sample() {
    // Sampling a map at an affine grid is differentiable in θ.
    let device = Default::default();
    let theta = Tensor::<A, 3>::from_data(TensorData::new(vec![0.5f32, 0.0, 0.1, 0.0, 0.5, -0.2], [1, 2, 3]), &device).require_grad();
    let map = Tensor::<A, 4>::from_data(TensorData::new((0..49).map(|k| (k % 7) as f32 + 0.1 * (k / 7) as f32).collect::<Vec<_>>(), [1, 1, 7, 7]), &device);
    let out = fgia_localization::geometry::sample(map, affine_grid(theta.clone(), 7, 7, false));
    let grads = out.sum().backward();
    let g = host(theta.grad(&grads).expect("gradient"));
    // The map grows by 1 per column (over 2/7 of the normalised axis): d/dt_x of the sum is
    // about 49 · 7/2 inside the image.
    assert!(g[2] > 50.0, "dL/dt_x = {}", g[2]);
}

#[test]
fn the_separable_box_zoom_equals_roi_align_on_grid_sample_and_differentiates_in_the_box() {
    use fgia_localization::geometry::box_zoom;
    let device = Default::default();
    let x: Vec<f32> = (0..2 * 3 * 7 * 7).map(|k| ((k * 13 % 17) as f32 - 8.0) * 0.25).collect();
    let t = Tensor::<F, 4>::from_data(TensorData::new(x, [2, 3, 7, 7]), &device);
    // Two boxes, one reaching past the map (zeros padding there in both).
    let boxes = [NormBox { x0: 0.1, y0: 0.2, x1: 0.7, y1: 0.9 }, NormBox { x0: -0.2, y0: 0.35, x1: 0.5, y1: 1.1 }];
    let want = host(roi_align(t.clone(), &[(0, boxes[0]), (1, boxes[1])], 5, 6));
    let col = |f: fn(&NormBox) -> f32| Tensor::<F, 1>::from_data(TensorData::new(boxes.iter().map(f).collect::<Vec<_>>(), [2]), &device);
    let got = host(box_zoom(t.clone(), col(|b| b.x0), col(|b| b.y0), col(|b| b.x1), col(|b| b.y1), 5, 6));
    close(&got, &want, 1e-5, "separable zoom vs grid_sample");
    // RoI-align by the separable zoom (NTS-Net's round 1), rois in any order.
    use fgia_localization::geometry::roi_zoom;
    let rois = [(1, boxes[1]), (0, boxes[0]), (1, boxes[0])];
    close(&host(roi_zoom(t.clone(), &rois, 4)), &host(roi_align(t.clone(), &rois, 4, 4)), 1e-5, "roi_zoom vs roi_align");
    // The gradient reaches the box.
    let x0 = Tensor::<A, 1>::from_data(TensorData::new(vec![0.1f32], [1]), &device).require_grad();
    let map = Tensor::<A, 4>::from_data(TensorData::new((0..49).map(|k| (k % 7) as f32).collect::<Vec<_>>(), [1, 1, 7, 7]), &device);
    let one = |v: f32| Tensor::<A, 1>::from_data(TensorData::new(vec![v], [1]), &device);
    let grads = box_zoom(map, x0.clone(), one(0.1), one(0.8), one(0.8), 4, 4).sum().backward();
    assert!(host(x0.grad(&grads).expect("gradient"))[0].abs() > 1.0, "dL/dx0");
}

/// RA-CNN end to end: the classifiers' step trains the backbone (boxes detached, so no APN
/// gradient); the ranking step trains the APNs, whose only way to the loss is the zoomed crop of
/// the pixels through the backbone (classifiers detached), and leaves the backbone's parameters
/// without gradient.
#[test]
fn ra_cnn_end_to_end_the_apns_learn_through_the_crop_and_the_backbone() {
    use fgia_localization::live::{LiveInput, trunk};
    use fgia_localization::ra_cnn::{RaCnnConfig, RaCnnLive};
    use fgia_nn::{BackboneKind, NetworkConfig};
    use fgia_train::engine::TrainMethod;
    let device = Default::default();
    <A as burn::tensor::backend::Backend>::seed(&device, 3);
    let kind = BackboneKind::EfficientNetLite0;
    let net = NetworkConfig::new(kind).init::<A>(&device);
    let cfg = RaCnnConfig { part_size: 32, apn_hidden: 8, apn_channels: 4, ..RaCnnConfig::default() };
    let probe = |s: usize| trunk(&net.clone(), Tensor::<A, 4>::zeros([1, 3, s, s], &device)).dims();
    let ([_, c, h, w], [_, _, h2, w2]) = (probe(64), probe(32));
    let model = RaCnnLive::new(net, &cfg, [c, h * w, h2 * w2], 3, 1.0, &device);
    let px: Vec<f32> = (0..2 * 3 * 64 * 64).map(|k| ((k * 37 % 101) as f32 / 50.0) - 1.0).collect();
    let x = LiveInput {
        pixels: Tensor::<A, 4>::from_data(TensorData::new(px, [2, 3, 64, 64]), &device),
        labels: Tensor::from_data(TensorData::new(vec![0i64, 2], [2]), &device),
        label_vec: vec![0, 2],
        items: vec![0, 1],
        geometry: Vec::new(),
    };
    let groups = |step: usize| {
        let loss = model.loss(&x, step).loss;
        assert!(host(loss.clone())[0].is_finite(), "step {step}");
        model.param_groups(loss.backward()).into_iter().map(|g| (g.name, g.grads.len())).collect::<Vec<_>>()
    };
    let g0 = groups(0);
    let g1 = groups(1);
    let count = |g: &[(&str, usize)], name: &str| g.iter().find(|(n, _)| *n == name).map_or(0, |(_, k)| *k);
    assert!(count(&g0, "backbone") > 10, "step 0 trains the backbone: {g0:?}");
    assert_eq!(count(&g1, "backbone"), 0, "step 1 leaves the backbone's parameters: {g1:?}");
    // Step 1's gradients are the two APNs' (reduce, fc1, fc2: weight and bias each), nothing else.
    assert_eq!(count(&g1, "method"), 12, "step 1 trains exactly the APNs: {g1:?}");
    // Step 0 trains the classifiers and the fusion (weights and biases), not the APNs.
    assert_eq!(count(&g0, "method"), 8, "step 0: three scale classifiers and the fusion: {g0:?}");
}

/// The box of a box sample's grid is the box (the looks draw end-to-end crops from it), and a
/// thinned grid keeps the points nearest to evenly spaced rows and columns.
#[test]
fn box_of_inverts_from_box_and_thin_grid_subsamples() {
    use fgia_localization::looks::thin_grid;
    use fgia_localization::run::{Sample, box_of};
    for b in [NormBox { x0: 0.1, y0: 0.2, x1: 0.7, y1: 0.9 }, NormBox { x0: -0.2, y0: 0.35, x1: 0.5, y1: 1.1 }] {
        let got = box_of(&Sample::from_box(b, 9).grid);
        for (g, w) in [(got.x0, b.x0), (got.y0, b.y0), (got.x1, b.x1), (got.y1, b.y1)] {
            assert!((g - w).abs() < 1e-5, "{got:?} vs {b:?}");
        }
    }
    let grid = Sample::from_box(NormBox::FULL, 8).grid;
    let thin = thin_grid(&grid, 8, 2);
    // Rows and columns 2 and 6 of 8: centres at (2.5 / 8, 6.5 / 8) of the unit square.
    let at = |k: f32| 2.0 * (k + 0.5) / 8.0 - 1.0;
    close(&thin, &[at(2.0), at(2.0), at(6.0), at(2.0), at(2.0), at(6.0), at(6.0), at(6.0)], 1e-6, "thin grid");
}

/// The end-to-end crops: a full-view sample through `sampled_crops` is the backbone on the
/// view itself, an erasing sample zeroes the pixels where its map reaches the threshold first,
/// and `box_crops` equals `sampled_crops` of the same boxes.
#[test]
fn live_crops_resample_the_pixels_and_erase_first() {
    use fgia_localization::live::{box_crops, sampled_crops, trunk};
    use fgia_localization::run::Sample;
    use fgia_nn::{BackboneKind, NetworkConfig};
    let device = Default::default();
    <F as burn::tensor::backend::Backend>::seed(&device, 5);
    let net = NetworkConfig::new(BackboneKind::EfficientNetLite0).init::<F>(&device);
    let px: Vec<f32> = (0..2 * 3 * 32 * 32).map(|k| ((k * 29 % 97) as f32 / 48.0) - 1.0).collect();
    let pixels = Tensor::<F, 4>::from_data(TensorData::new(px.clone(), [2, 3, 32, 32]), &device);
    let full = || Sample::from_box(NormBox::FULL, 32);
    let samples = vec![vec![full()], vec![full()]];
    let want = host(crate_gap(trunk(&net, pixels.clone())));
    close(&host(sampled_crops(&net, pixels.clone(), &samples, 1, 32, false)), &want, 1e-4, "full-view sample = the view");
    // Erase the left half (a 2x2 map whose left column is 1) of item 0 only.
    let erase = Sample { erase: Some((2, vec![1.0, 0.0, 1.0, 0.0], 0.5)), ..full() };
    let got = host(sampled_crops(&net, pixels.clone(), &[vec![erase], vec![full()]], 1, 32, false));
    let mut erased = px.clone();
    for ch in 0..3 {
        for y in 0..32 {
            for x in 0..32 {
                if map_at_ref(x, y) {
                    erased[ch * 32 * 32 + y * 32 + x] = 0.0;
                }
            }
        }
    }
    let want = host(crate_gap(trunk(&net, Tensor::<F, 4>::from_data(TensorData::new(erased, [2, 3, 32, 32]), &device))));
    let c = want.len() / 2;
    close(&got[..c], &want[..c], 1e-4, "erased item");
    close(&got[c..], &host(crate_gap(trunk(&net, pixels.clone())))[c..], 1e-4, "untouched item");
    // Boxes through box_crops = the same boxes' grids through sampled_crops.
    let boxes = [NormBox { x0: 0.1, y0: 0.2, x1: 0.6, y1: 0.9 }, NormBox { x0: 0.3, y0: 0.0, x1: 1.0, y1: 0.5 }];
    let col = |f: fn(&NormBox) -> f32| Tensor::<F, 1>::from_data(TensorData::new(boxes.iter().map(f).collect::<Vec<_>>(), [2]), &device);
    let a = host(box_crops(&net, pixels.clone(), [col(|b| b.x0), col(|b| b.y0), col(|b| b.x1), col(|b| b.y1)], 1, 16));
    let b = host(sampled_crops(&net, pixels, &[vec![Sample::from_box(boxes[0], 16)], vec![Sample::from_box(boxes[1], 16)]], 1, 16, false));
    close(&a, &b, 1e-4, "box_crops vs sampled_crops");
}

fn crate_gap(x: Tensor<F, 4>) -> Tensor<F, 2> {
    fgia_localization::nn::gap(x)
}

/// Whether pixel `(x, y)` of a 32 px view lies where the 2x2 map `[1, 0; 1, 0]`, bilinearly
/// upsampled, reaches 0.5: the left half.
fn map_at_ref(x: usize, y: usize) -> bool {
    fgia_localization::geometry::map_at(&[1.0, 0.0, 1.0, 0.0], 2, (x as f32 + 0.5) / 32.0, (y as f32 + 0.5) / 32.0) >= 0.5
}

/// DFL-CNN's bank initialised from patches keeps the centres as its weights and stays trainable
/// (weights and biases take gradients).
#[test]
fn the_patch_initialised_filter_bank_holds_the_centres_and_trains() {
    use fgia_localization::dfl::patch_bank;
    let device = Default::default();
    let per_class = vec![vec![vec![1.0f32, 0.0], vec![1.0, 0.0]], vec![vec![0.0f32, 1.0], vec![0.0, 1.0]]];
    let bank = patch_bank::<A>(2, 1, &per_class, &device);
    assert!(bank.weight.is_require_grad() && bank.bias.as_ref().is_some_and(|b| b.is_require_grad()));
    close(&host(bank.weight.val()), &[1.0, 0.0, 0.0, 1.0], 1e-6, "class centres as filters");
    let x = Tensor::<A, 4>::ones([1, 2, 2, 2], &device);
    let mut grads = bank.forward(x).sum().backward();
    assert_eq!(burn::optim::GradientsParams::from_module(&mut grads, &bank).len(), 2);
}
