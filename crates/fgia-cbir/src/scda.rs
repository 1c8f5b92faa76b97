//! SCDA: Selective Convolutional Descriptor Aggregation.
//!
//! Wei, Luo, Wu and Zhou, "Selective Convolutional Descriptor Aggregation for Fine-Grained
//! Image Retrieval", IEEE TIP 26(6), 2017. Unsupervised: ImageNet features, no training.
//!
//! For a last-layer activation tensor `S` of shape `[C, h, w]` (post-ReLU):
//!
//! 1. aggregation map `A(i, j) = Σ_c S_c(i, j)` (eq. 1);
//! 2. mask `M(i, j) = 1` where `A(i, j) > ā`, the mean of `A` (eq. 2);
//! 3. keep the largest connected component of `M` (8-connectivity, as MATLAB's `bwlabel`
//!    default the authors used), giving `M̃`;
//! 4. average- and max-pool the descriptors `S(i, j)` with `M̃(i, j) = 1` and concatenate them:
//!    `SCDA = [avg, max]` (§3.3, "avg&maxPool").
//!
//! **SCDA+** (§4.3) combines two layers: `pool5` and `relu5_2`. The mask of the lower layer is
//! its own mask intersected with the upper layer's `M̃` upsampled (nearest) to its size; each
//! layer's SCDA vector is ℓ2-normalised, and the lower one is weighted by `α = 0.5`.
//! **SCDA_flip+** averages SCDA+ of the image and of its horizontal mirror; the survey's numbers
//! are for this variant.
//!
//! The two layers come from [`fgia_nn::Network::scda_layers`]: on VGG-16 the paper's `pool5`
//! (7x7 at 224 px) and `relu5_2` (14x14). Deviations on the other backbones, which have no such
//! layers: the last stage and the deepest stage at a larger resolution (ResNet: `layer4` and
//! `layer3`; EfficientNet-Lite0: the 1280-d head convolution and the 112-channel stage). Stage
//! outputs that are not post-ReLU (EfficientNet's
//! linear bottlenecks) are clamped at 0 before aggregation. When the lower layer's intersected
//! mask is empty, its own mask is used.

/// An activation map `[C, h, w]`, row-major.
#[derive(Debug, Clone, Copy)]
pub struct Activations<'a> {
    /// The values, `c * h * w + y * w + x`.
    pub data: &'a [f32],
    /// Channels.
    pub c: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
}

impl<'a> Activations<'a> {
    /// Wraps a `[C, h, w]` buffer; `None` if the sizes do not match.
    pub fn new(data: &'a [f32], c: usize, h: usize, w: usize) -> Option<Self> {
        (data.len() == c * h * w && c * h * w > 0).then_some(Activations { data, c, h, w })
    }

    /// The aggregation map `A` (eq. 1), with negative activations clamped at 0.
    pub fn aggregation_map(&self) -> Vec<f32> {
        let hw = self.h * self.w;
        let mut a = vec![0.0f32; hw];
        for ch in 0..self.c {
            for (acc, &v) in a.iter_mut().zip(&self.data[ch * hw..(ch + 1) * hw]) {
                *acc += v.max(0.0);
            }
        }
        a
    }
}

/// The mask `A > mean(A)` (eq. 2).
pub fn mean_threshold_mask(a: &[f32]) -> Vec<bool> {
    let mean = a.iter().map(|&v| v as f64).sum::<f64>() / a.len().max(1) as f64;
    a.iter().map(|&v| v as f64 > mean).collect()
}

/// The largest 8-connected component of `mask` (`h x w`); ties go to the component that starts
/// first in row-major order. An empty mask stays empty.
pub fn largest_component(mask: &[bool], h: usize, w: usize) -> Vec<bool> {
    let mut label = vec![0u32; h * w];
    let mut best = (0usize, 0u32);
    let mut next = 0u32;
    let mut stack = Vec::new();
    for start in 0..h * w {
        if !mask[start] || label[start] != 0 {
            continue;
        }
        next += 1;
        label[start] = next;
        stack.push(start);
        let mut size = 0;
        while let Some(p) = stack.pop() {
            size += 1;
            let (y, x) = ((p / w) as isize, (p % w) as isize);
            for dy in -1..=1isize {
                for dx in -1..=1isize {
                    let (ny, nx) = (y + dy, x + dx);
                    if ny < 0 || nx < 0 || ny >= h as isize || nx >= w as isize {
                        continue;
                    }
                    let q = ny as usize * w + nx as usize;
                    if mask[q] && label[q] == 0 {
                        label[q] = next;
                        stack.push(q);
                    }
                }
            }
        }
        if size > best.0 {
            best = (size, next);
        }
    }
    label.iter().map(|&l| best.1 != 0 && l == best.1).collect()
}

/// The selection mask `M̃` of one layer: the largest component of `A > mean(A)`.
pub fn selection_mask(act: &Activations<'_>) -> Vec<bool> {
    largest_component(&mean_threshold_mask(&act.aggregation_map()), act.h, act.w)
}

/// `[avg, max]` of the descriptors at the selected positions (`2C` values). With no selected
/// position (a constant map), all positions are used.
pub fn avg_max_pool(act: &Activations<'_>, mask: &[bool]) -> Vec<f32> {
    let hw = act.h * act.w;
    let all = !mask.iter().any(|&m| m);
    let n = if all { hw } else { mask.iter().filter(|&&m| m).count() };
    let mut out = vec![0.0f32; 2 * act.c];
    for ch in 0..act.c {
        let plane = &act.data[ch * hw..(ch + 1) * hw];
        let mut sum = 0.0f64;
        let mut max = f32::NEG_INFINITY;
        for (k, &v) in plane.iter().enumerate() {
            if all || mask[k] {
                sum += v as f64;
                max = max.max(v);
            }
        }
        out[ch] = (sum / n as f64) as f32;
        out[act.c + ch] = max;
    }
    out
}

/// Nearest-neighbour resize of a mask from `h x w` to `h2 x w2`.
pub fn upsample_mask(mask: &[bool], h: usize, w: usize, h2: usize, w2: usize) -> Vec<bool> {
    let mut out = vec![false; h2 * w2];
    for y in 0..h2 {
        let sy = (y * h / h2).min(h - 1);
        for x in 0..w2 {
            let sx = (x * w / w2).min(w - 1);
            out[y * w2 + x] = mask[sy * w + sx];
        }
    }
    out
}

fn l2_normalise(v: &mut [f32]) {
    let n = v.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>().sqrt();
    if n > 0.0 {
        for x in v.iter_mut() {
            *x = (*x as f64 / n) as f32;
        }
    }
}

/// Weight of the lower layer in SCDA+ (the paper's α).
pub const LOWER_LAYER_WEIGHT: f32 = 0.5;

/// SCDA of one layer: `[avg, max]` over its selected descriptors, ℓ2-normalised.
pub fn scda(act: &Activations<'_>) -> Vec<f32> {
    let mut v = avg_max_pool(act, &selection_mask(act));
    l2_normalise(&mut v);
    v
}

/// SCDA+: `[SCDA(upper), α · SCDA(lower)]`, the lower layer's mask intersected with the upper
/// one's (upsampled). Length `2 (C_upper + C_lower)`.
pub fn scda_plus(upper: &Activations<'_>, lower: &Activations<'_>) -> Vec<f32> {
    let mu = selection_mask(upper);
    let mut v = avg_max_pool(upper, &mu);
    l2_normalise(&mut v);
    let up = upsample_mask(&mu, upper.h, upper.w, lower.h, lower.w);
    let own = selection_mask(lower);
    let both: Vec<bool> = own.iter().zip(&up).map(|(&a, &b)| a && b).collect();
    let mask = if both.iter().any(|&m| m) { both } else { own };
    let mut l = avg_max_pool(lower, &mask);
    l2_normalise(&mut l);
    v.extend(l.iter().map(|&x| x * LOWER_LAYER_WEIGHT));
    v
}

/// SCDA_flip+: the mean of SCDA+ of an image and of its mirror, ℓ2-normalised.
pub fn scda_flip_plus(upper: &Activations<'_>, lower: &Activations<'_>, upper_flipped: &Activations<'_>, lower_flipped: &Activations<'_>) -> Vec<f32> {
    let a = scda_plus(upper, lower);
    let b = scda_plus(upper_flipped, lower_flipped);
    let mut v: Vec<f32> = a.iter().zip(&b).map(|(x, y)| 0.5 * (x + y)).collect();
    l2_normalise(&mut v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2-channel 4x4 map with a bright 2x2 blob at the top left and a single bright pixel at
    /// the bottom right: the mean threshold keeps both, the component step keeps the blob.
    fn hand_made() -> Vec<f32> {
        let c0 = [
            9.0, 8.0, 0.0, 0.0, //
            7.0, 6.0, 0.0, 0.0, //
            0.0, 0.0, 0.0, 0.0, //
            0.0, 0.0, 0.0, 5.0,
        ];
        let c1 = [
            1.0, 2.0, 0.0, 0.0, //
            3.0, 4.0, 0.0, 1.0, //
            0.0, 0.0, 0.0, 0.0, //
            0.0, 0.0, 0.0, 4.0,
        ];
        c0.iter().chain(c1.iter()).copied().collect()
    }

    #[test]
    fn mask_and_aggregation_by_hand() {
        let data = hand_made();
        let act = Activations::new(&data, 2, 4, 4).expect("sizes");
        let a = act.aggregation_map();
        assert_eq!(a, vec![10.0, 10.0, 0.0, 0.0, 10.0, 10.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 9.0]);
        // mean = 50 / 16 = 3.125: the blob and the corner pixel pass, the 1.0 does not.
        let m = mean_threshold_mask(&a);
        let expected_threshold: Vec<bool> = a.iter().map(|&v| v > 3.125).collect();
        assert_eq!(m, expected_threshold);
        assert_eq!(m.iter().filter(|&&b| b).count(), 5);
        let lc = largest_component(&m, 4, 4);
        let kept: Vec<usize> = lc.iter().enumerate().filter(|(_, b)| **b).map(|(i, _)| i).collect();
        assert_eq!(kept, vec![0, 1, 4, 5], "the 2x2 blob, not the lone corner pixel");
        let pooled = avg_max_pool(&act, &lc);
        // Channel 0 over the blob: avg (9+8+7+6)/4 = 7.5, max 9; channel 1: avg 2.5, max 4.
        assert_eq!(pooled, vec![7.5, 2.5, 9.0, 4.0]);
        let s = scda(&act);
        let norm: f32 = s.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-6);
    }

    #[test]
    fn diagonal_pixels_are_connected() {
        // 8-connectivity: (0,0) and (1,1) form one component of size 2, beating a single pixel.
        let m = vec![true, false, false, false, true, false, false, false, true];
        // Here all three diagonal pixels connect: one component of 3.
        assert_eq!(largest_component(&m, 3, 3), m);
        let m2 = vec![true, false, true, false, false, false, true, false, false];
        // Three isolated pixels: the first in row-major order wins the tie.
        assert_eq!(largest_component(&m2, 3, 3), vec![true, false, false, false, false, false, false, false, false]);
    }

    #[test]
    fn constant_map_pools_everything() {
        let data = vec![1.0f32; 2 * 3 * 3];
        let act = Activations::new(&data, 2, 3, 3).expect("sizes");
        let m = selection_mask(&act);
        assert!(m.iter().all(|&b| !b), "nothing is above the mean of a constant map");
        assert_eq!(avg_max_pool(&act, &m), vec![1.0, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn plus_uses_the_upper_mask_on_the_lower_layer() {
        let upper_data = hand_made();
        let upper = Activations::new(&upper_data, 2, 4, 4).expect("sizes");
        // Lower layer: 1 channel at 8x8, bright everywhere on its right half and on the
        // upsampled blob's area; the intersection keeps the top-left 4x4 part only.
        let mut lower_data = vec![0.0f32; 64];
        for y in 0..8 {
            for x in 0..8 {
                if x >= 4 || y < 4 {
                    lower_data[y * 8 + x] = if x < 4 { 2.0 } else { 1.0 };
                }
            }
        }
        let lower = Activations::new(&lower_data, 1, 8, 8).expect("sizes");
        let v = scda_plus(&upper, &lower);
        assert_eq!(v.len(), 2 * 2 + 2);
        // Lower part: avg = max = 2 over the intersected area, normalised then halved.
        let s = 0.5f32.sqrt() * LOWER_LAYER_WEIGHT;
        assert!((v[4] - s).abs() < 1e-6 && (v[5] - s).abs() < 1e-6, "{v:?}");
        assert_eq!(
            upsample_mask(&[true, false, false, false], 2, 2, 4, 4),
            vec![true, true, false, false, true, true, false, false, false, false, false, false, false, false, false, false]
        );
    }
}
