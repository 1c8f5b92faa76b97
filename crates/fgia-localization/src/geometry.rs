//! Boxes, proposals and resampling grids: the pieces every §5.1 method shares.
//!
//! Coordinates: a [`NormBox`] lives in the unit square of the view it was found on (`0` the
//! left or top edge, `1` the right or bottom edge), so it survives a change of resolution.
//! Sampling grids follow `grid_sample`'s convention: `[-1, 1]` spans the input's outer edges
//! (`align_corners = false`), and every grid here says so where it is built.
//!
//! - [`nms`]: hard non-maximum suppression (NTS-Net's `hard_nms`);
//! - [`nts_anchors`]: NTS-Net's three-level anchor set (1,614 at 448 px);
//! - [`affine_grid`] and [`roi_align`]: a box (or any `2 x 3` transform) as a grid, sampled with
//!   burn's `grid_sample_2d`; RoI-align is exactly that, one sample at each bin's centre;
//! - [`boxcar_mask`]: RA-CNN's differentiable crop mask;
//! - [`inverse_cdf_grid`]: TASN's attention sampler (inverse CDFs of the row and column maxima);
//! - [`saliency_grid`]: S3N's (and Recasens et al.'s) Gaussian saliency sampler;
//! - [`head_and_body`]: Part-based R-CNN's head and body boxes from CUB's keypoints.

use burn::prelude::*;
use burn::tensor::activation::sigmoid;
use burn::tensor::ops::{GridSampleOptions, GridSamplePaddingMode, InterpolateMode};
use fgia_core::datasets::{BBox, Part};
use serde::{Deserialize, Serialize};

/// An axis-aligned box in the unit square of a view: `x0 < x1`, `y0 < y1`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NormBox {
    /// Left edge.
    pub x0: f32,
    /// Top edge.
    pub y0: f32,
    /// Right edge.
    pub x1: f32,
    /// Bottom edge.
    pub y1: f32,
}

impl NormBox {
    /// The whole view.
    pub const FULL: NormBox = NormBox { x0: 0.0, y0: 0.0, x1: 1.0, y1: 1.0 };

    /// A box from its edges; an error names the degenerate or non-finite edge.
    pub fn new(x0: f32, y0: f32, x1: f32, y1: f32) -> Result<Self, String> {
        if ![x0, y0, x1, y1].iter().all(|v| v.is_finite()) {
            return Err(format!("box ({x0}, {y0}, {x1}, {y1}) has a non-finite edge"));
        }
        if x1 <= x0 || y1 <= y0 {
            return Err(format!("box ({x0}, {y0}, {x1}, {y1}) is degenerate (right <= left or bottom <= top)"));
        }
        Ok(NormBox { x0, y0, x1, y1 })
    }

    /// Area.
    pub fn area(&self) -> f32 {
        (self.x1 - self.x0).max(0.0) * (self.y1 - self.y0).max(0.0)
    }

    /// Intersection over union.
    pub fn iou(&self, o: &NormBox) -> f32 {
        let w = (self.x1.min(o.x1) - self.x0.max(o.x0)).max(0.0);
        let h = (self.y1.min(o.y1) - self.y0.max(o.y0)).max(0.0);
        let inter = w * h;
        let union = self.area() + o.area() - inter;
        if union > 0.0 { inter / union } else { 0.0 }
    }

    /// The part of the box inside the view, or `None` when none is.
    pub fn clipped(&self) -> Option<NormBox> {
        NormBox::new(self.x0.max(0.0), self.y0.max(0.0), self.x1.min(1.0), self.y1.min(1.0)).ok()
    }

    /// The box grown by `dx`, `dy` on each side (fractions of the view).
    pub fn padded(&self, dx: f32, dy: f32) -> NormBox {
        NormBox { x0: self.x0 - dx, y0: self.y0 - dy, x1: self.x1 + dx, y1: self.y1 + dy }
    }

    /// The box mirrored left to right.
    pub fn mirrored(&self) -> NormBox {
        NormBox { x0: 1.0 - self.x1, y0: self.y0, x1: 1.0 - self.x0, y1: self.y1 }
    }

    /// The `2 x 3` transform of `grid_sample`'s coordinates (`align_corners = false`) that maps
    /// the output's `[-1, 1]` onto this box: `x = (x1 - x0) u + (x0 + x1 - 1)`.
    pub fn theta(&self) -> [f32; 6] {
        [self.x1 - self.x0, 0.0, self.x0 + self.x1 - 1.0, 0.0, self.y1 - self.y0, self.y0 + self.y1 - 1.0]
    }
}

/// Hard non-maximum suppression: the indices of the highest-scoring boxes, in decreasing
/// score, each overlapping every earlier kept box by IoU below `iou` (NTS-Net keeps the top 6 at
/// 0.25), at most `keep` of them. Non-finite scores are never kept; ties keep the lower index.
pub fn nms(boxes: &[NormBox], scores: &[f32], iou: f32, keep: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..boxes.len().min(scores.len())).filter(|&i| scores[i].is_finite()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut kept: Vec<usize> = Vec::with_capacity(keep);
    for i in order {
        if kept.len() == keep {
            break;
        }
        if kept.iter().all(|&k| boxes[k].iou(&boxes[i]) < iou) {
            kept.push(i);
        }
    }
    kept
}

/// One pyramid level of NTS-Net's anchors.
#[derive(Debug, Clone, PartialEq)]
pub struct AnchorLevel {
    /// Stride in input pixels (the map is `ceil(input / stride)` square).
    pub stride: usize,
    /// Base side in input pixels.
    pub size: f32,
    /// Scales of the base side.
    pub scales: Vec<f32>,
    /// Aspect ratios (height / width is `1 / ratio`).
    pub ratios: Vec<f32>,
}

/// NTS-Net's anchor levels (the authors' `_default_anchors_setting`): strides 32, 64 and 128
/// with base sides 48, 96 and 192; scales `2^(1/3)`, `2^(2/3)` (and `1` on the last level);
/// ratios 0.667, 1 and 1.5.
pub fn nts_levels() -> Vec<AnchorLevel> {
    let (a, b) = (2f32.powf(1.0 / 3.0), 2f32.powf(2.0 / 3.0));
    let ratios = vec![0.667, 1.0, 1.5];
    vec![
        AnchorLevel { stride: 32, size: 48.0, scales: vec![a, b], ratios: ratios.clone() },
        AnchorLevel { stride: 64, size: 96.0, scales: vec![a, b], ratios: ratios.clone() },
        AnchorLevel { stride: 128, size: 192.0, scales: vec![1.0, a, b], ratios },
    ]
}

/// The anchors of `levels` on a square `input`-pixel image, as unit-square boxes (they may
/// extend past the image, as the authors' do). Order: level, then anchor type (scale, then
/// ratio), then map row, then map column: the order of a navigator output `[B, A, H, W]`
/// flattened per level. At 448 px: `14·14·6 + 7·7·6 + 4·4·9 = 1614`.
pub fn nts_anchors(levels: &[AnchorLevel], input: usize) -> Vec<NormBox> {
    let s = input as f32;
    let mut out = Vec::new();
    for l in levels {
        let n = input.div_ceil(l.stride);
        for &scale in &l.scales {
            for &ratio in &l.ratios {
                let h = l.size * scale / ratio.sqrt();
                let w = l.size * scale * ratio.sqrt();
                for y in 0..n {
                    for x in 0..n {
                        let (cx, cy) = (l.stride as f32 * (x as f32 + 0.5), l.stride as f32 * (y as f32 + 0.5));
                        out.push(NormBox { x0: (cx - w / 2.0) / s, y0: (cy - h / 2.0) / s, x1: (cx + w / 2.0) / s, y1: (cy + h / 2.0) / s });
                    }
                }
            }
        }
    }
    out
}

/// The anchor types and map side of each level at `input` px: `(types, side)`.
pub fn nts_level_shapes(levels: &[AnchorLevel], input: usize) -> Vec<(usize, usize)> {
    levels.iter().map(|l| (l.scales.len() * l.ratios.len(), input.div_ceil(l.stride))).collect()
}

/// The sampling grid `[N, h, w, 2]` of `N` affine transforms `theta` (`[N, 2, 3]`, rows
/// `x`, `y`), like PyTorch's `affine_grid` with `align_corners` stated: with `false` the output
/// pixel `j` sits at `(2j + 1) / w - 1`, with `true` at `2j / (w - 1) - 1`.
pub fn affine_grid<B: Backend>(theta: Tensor<B, 3>, h: usize, w: usize, align_corners: bool) -> Tensor<B, 4> {
    let [n, _, _] = theta.dims();
    let device = theta.device();
    let coord = |k: usize, len: usize| -> f32 {
        if align_corners { if len > 1 { 2.0 * k as f32 / (len - 1) as f32 - 1.0 } else { 0.0 } } else { (2 * k + 1) as f32 / len as f32 - 1.0 }
    };
    // Homogeneous base coordinates [h * w, 3]: (u, v, 1).
    let mut base = Vec::with_capacity(h * w * 3);
    for y in 0..h {
        for x in 0..w {
            base.extend([coord(x, w), coord(y, h), 1.0]);
        }
    }
    let base = Tensor::<B, 2>::from_data(TensorData::new(base, [h * w, 3]), &device);
    // [N, h*w, 3] x [N, 3, 2] -> [N, h*w, 2]
    let grid = base.unsqueeze_dim::<3>(0).expand([n, h * w, 3]).matmul(theta.swap_dims(1, 2));
    grid.reshape([n, h, w, 2])
}

/// Bilinear sampling of `input` `[N, C, H, W]` at `grid` `[N, h, w, 2]`, zeros outside,
/// `align_corners = false`: the one resampler of this crate (pixels and maps alike).
pub fn sample<B: Backend>(input: Tensor<B, 4>, grid: Tensor<B, 4>) -> Tensor<B, 4> {
    let options = GridSampleOptions::new(InterpolateMode::Bilinear).with_padding_mode(GridSamplePaddingMode::Zeros).with_align_corners(false);
    input.grid_sample_2d(grid, options)
}

/// RoI-align built from [`affine_grid`] and [`sample`]: for each `(image, box)` the `h x w`
/// crop of `input` `[N, C, H, W]`, one bilinear sample at the centre of each bin (sampling
/// ratio 1, the "aligned" convention: a box edge is a pixel edge). Returns `[K, C, h, w]`.
pub fn roi_align<B: Backend>(input: Tensor<B, 4>, rois: &[(usize, NormBox)], h: usize, w: usize) -> Tensor<B, 4> {
    let device = input.device();
    let idx: Vec<i64> = rois.iter().map(|(i, _)| *i as i64).collect();
    let picked = input.select(0, Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [rois.len()]), &device));
    let theta: Vec<f32> = rois.iter().flat_map(|(_, b)| b.theta()).collect();
    let theta = Tensor::<B, 3>::from_data(TensorData::new(theta, [rois.len(), 2, 3]), &device);
    sample(picked, affine_grid(theta, h, w, false))
}

/// [`roi_align`] by [`box_zoom`]: the same `bins x bins` values for fixed boxes, as separable
/// matrix products instead of `grid_sample` (several times faster on the CPU).
pub fn roi_zoom<B: Backend>(input: Tensor<B, 4>, rois: &[(usize, NormBox)], bins: usize) -> Tensor<B, 4> {
    let device = input.device();
    let n = rois.len();
    let idx: Vec<i64> = rois.iter().map(|(i, _)| *i as i64).collect();
    let picked = input.select(0, Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [n]), &device));
    let edge = |f: fn(&NormBox) -> f32| Tensor::<B, 1>::from_data(TensorData::new(rois.iter().map(|(_, b)| f(b)).collect::<Vec<_>>(), [n]), &device);
    box_zoom(picked, edge(|b| b.x0), edge(|b| b.y0), edge(|b| b.x1), edge(|b| b.y1), bins, bins)
}

/// Bilinear interpolation weights `[n, out, len]` of `out` samples spread over `[lo, hi)` (unit
/// coordinates, `[n]` each) along an axis of `len` cells: the tent `max(0, 1 − |p − k|)` around
/// each sample's position `p` in cell-centre units, zero outside the axis (zeros padding). Built
/// from tensor operations, so it is differentiable in `lo` and `hi`.
pub fn tent_weights<B: Backend>(lo: Tensor<B, 1>, hi: Tensor<B, 1>, out: usize, len: usize) -> Tensor<B, 3> {
    let [n] = lo.dims();
    let device = lo.device();
    let frac =
        Tensor::<B, 1>::from_data(TensorData::new((0..out).map(|o| (o as f32 + 0.5) / out as f32).collect::<Vec<_>>(), [out]), &device).reshape([1, out]);
    let cells = Tensor::<B, 1>::from_data(TensorData::new((0..len).map(|k| k as f32).collect::<Vec<_>>(), [len]), &device).reshape([1, 1, len]);
    let lo = lo.reshape([n, 1]);
    let p = (lo.clone() + (hi.reshape([n, 1]) - lo) * frac).mul_scalar(len as f32).sub_scalar(0.5); // [n, out]
    let d = (p.reshape([n, out, 1]) - cells).abs();
    d.neg().add_scalar(1.0).clamp_min(0.0)
}

/// The crop of `x` `[n, C, h, w]` at one axis-aligned box per item (`x0 .. x1`, `y0 .. y1` in unit
/// coordinates, `[n]` each), resampled to `oh x ow` with separable bilinear weights: the same
/// values as [`roi_align`] (one sample per bin centre, zeros outside, `align_corners = false`),
/// computed as two small matrix products, and differentiable in the box.
pub fn box_zoom<B: Backend>(x: Tensor<B, 4>, x0: Tensor<B, 1>, y0: Tensor<B, 1>, x1: Tensor<B, 1>, y1: Tensor<B, 1>, oh: usize, ow: usize) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    let wy = tent_weights(y0, y1, oh, h).reshape([n, 1, oh, h]).expand([n, c, oh, h]);
    let wx = tent_weights(x0, x1, ow, w).reshape([n, 1, ow, w]).swap_dims(2, 3).expand([n, c, w, ow]);
    wy.matmul(x).matmul(wx)
}

/// RA-CNN's boxcar mask on an `h x w` grid of pixel centres, for square boxes with centre
/// `(tx, ty)` and half side `tl` (in pixels, `[N]` each):
/// `M = [σ(k(x - tx + tl)) - σ(k(x - tx - tl))] · [σ(k(y - ty + tl)) - σ(k(y - ty - tl))]`,
/// differentiable in `tx`, `ty`, `tl`. Returns `[N, 1, h, w]`.
pub fn boxcar_mask<B: Backend>(tx: Tensor<B, 1>, ty: Tensor<B, 1>, tl: Tensor<B, 1>, h: usize, w: usize, k: f32) -> Tensor<B, 4> {
    let device = tx.device();
    let [n] = tx.dims();
    let xs = Tensor::<B, 1>::from_data(TensorData::new((0..w).map(|x| x as f32 + 0.5).collect::<Vec<_>>(), [w]), &device).reshape([1, w]);
    let ys = Tensor::<B, 1>::from_data(TensorData::new((0..h).map(|y| y as f32 + 0.5).collect::<Vec<_>>(), [h]), &device).reshape([1, h]);
    let (tx, ty, tl) = (tx.reshape([n, 1]), ty.reshape([n, 1]), tl.reshape([n, 1]));
    let step = |z: Tensor<B, 2>| sigmoid(z.mul_scalar(k));
    let mx = step(xs.clone() - tx.clone() + tl.clone()) - step(xs - tx - tl.clone()); // [N, w]
    let my = step(ys.clone() - ty.clone() + tl.clone()) - step(ys - ty - tl); // [N, h]
    (my.reshape([n, h, 1]) * mx.reshape([n, 1, w])).reshape([n, 1, h, w])
}

/// TASN's attention sampler, one axis: the output coordinates (`grid_sample`, `align_corners =
/// false`) of `out` samples along an axis of `m.len()` bins whose attention marginal is `m`
/// (the row or column maxima of the attention map).
///
/// The marginal is normalised to a density of `out` samples, capped at `dense` times the
/// uniform density (`iters` rounds of clipping at the cap and spreading the excess evenly, so
/// no region is magnified more than `dense` times), and inverted: output sample `i` (centre
/// `i + 1/2`) lands where the piecewise-linear CDF reaches `i + 1/2`. A uniform marginal gives
/// the identity grid.
pub fn inverse_cdf_grid(m: &[f32], out: usize, dense: f32, iters: usize) -> Vec<f32> {
    let n = m.len();
    if n == 0 || out == 0 {
        return Vec::new();
    }
    let total: f64 = m.iter().map(|&v| f64::from(v.max(0.0))).sum();
    let mut d: Vec<f64> =
        if total > 0.0 && total.is_finite() { m.iter().map(|&v| f64::from(v.max(0.0)) / total * out as f64).collect() } else { vec![out as f64 / n as f64; n] };
    let cap = f64::from(dense.max(1.0)) * out as f64 / n as f64;
    for _ in 0..iters {
        let mut excess = 0.0;
        for v in &mut d {
            if *v > cap {
                excess += *v - cap;
                *v = cap;
            }
        }
        if excess <= 0.0 {
            break;
        }
        for v in &mut d {
            *v += excess / n as f64;
        }
    }
    // cdf[j] = mass of bins 0..j (cdf[0] = 0, cdf[n] = out).
    let mut cdf = Vec::with_capacity(n + 1);
    cdf.push(0.0f64);
    for v in &d {
        cdf.push(cdf.last().copied().unwrap_or(0.0) + v);
    }
    let scale = cdf[n] / out as f64;
    let mut j = 0usize;
    (0..out)
        .map(|i| {
            let target = (i as f64 + 0.5) * scale;
            while j + 1 < n && cdf[j + 1] < target {
                j += 1;
            }
            let width = cdf[j + 1] - cdf[j];
            let x = j as f64 + if width > 0.0 { ((target - cdf[j]) / width).clamp(0.0, 1.0) } else { 0.5 };
            (2.0 * x / n as f64 - 1.0) as f32
        })
        .collect()
}

/// The separable TASN grid `[out, out, 2]` (`x` from the column maxima, `y` from the row
/// maxima) of an attention map `a` (`h x w`, row-major).
pub fn tasn_grid(a: &[f32], h: usize, w: usize, out: usize, dense: f32, iters: usize) -> Vec<f32> {
    let cols: Vec<f32> = (0..w).map(|c| (0..h).map(|r| a[r * w + c]).fold(f32::MIN, f32::max)).collect();
    let rows: Vec<f32> = (0..h).map(|r| a[r * w..(r + 1) * w].iter().copied().fold(f32::MIN, f32::max)).collect();
    let gx = inverse_cdf_grid(&cols, out, dense, iters);
    let gy = inverse_cdf_grid(&rows, out, dense, iters);
    let mut g = Vec::with_capacity(out * out * 2);
    for &y in &gy {
        for &x in &gx {
            g.extend([x, y]);
        }
    }
    g
}

/// The saliency sampler of S3N (after Recasens et al. 2018): each point `u` of a `g x g` grid
/// moves to the saliency-weighted mean of its neighbours' positions,
/// `x(u) = Σ_u' Q(u') k(u, u') x(u') / Σ_u' Q(u') k(u, u')`, with a Gaussian `k` of standard
/// deviation `sigma` (grid cells) over a `(2 pad + 1)²` window and `Q` padded by replication
/// (the window never leaves the padded grid). Grid point `u` sits at the centre of cell `u`, so
/// a uniform `Q` gives the identity. The result, bilinearly upsampled to `out x out`, is a
/// `grid_sample` grid (`[out, out, 2]`, `align_corners = false`).
pub fn saliency_grid(q: &[f32], g: usize, pad: usize, sigma: f32, out: usize) -> Vec<f32> {
    upsample_grid(&saliency_coarse(q, g, pad, sigma), g, out)
}

/// [`saliency_grid`] before upsampling: `[g, g, 2]`.
pub fn saliency_coarse(q: &[f32], g: usize, pad: usize, sigma: f32) -> Vec<f32> {
    let pos = |k: isize| -> f32 { (2 * k + 1) as f32 / g as f32 - 1.0 };
    let at = |r: isize, c: isize| -> f32 {
        let (r, c) = (r.clamp(0, g as isize - 1) as usize, c.clamp(0, g as isize - 1) as usize);
        q[r * g + c].max(0.0)
    };
    let p = pad as isize;
    let kern: Vec<f32> = (-p..=p).map(|d| (-((d * d) as f32) / (2.0 * sigma * sigma)).exp()).collect();
    let mut coarse = vec![0f32; g * g * 2];
    for r in 0..g as isize {
        for c in 0..g as isize {
            let (mut sx, mut sy, mut sw) = (0f64, 0f64, 0f64);
            for dr in -p..=p {
                for dc in -p..=p {
                    let wgt = f64::from(at(r + dr, c + dc) * kern[(dr + p) as usize] * kern[(dc + p) as usize]);
                    sx += wgt * f64::from(pos(c + dc));
                    sy += wgt * f64::from(pos(r + dr));
                    sw += wgt;
                }
            }
            let o = ((r as usize) * g + c as usize) * 2;
            if sw > 0.0 {
                coarse[o] = (sx / sw).clamp(-1.0, 1.0) as f32;
                coarse[o + 1] = (sy / sw).clamp(-1.0, 1.0) as f32;
            } else {
                coarse[o] = pos(c);
                coarse[o + 1] = pos(r);
            }
        }
    }
    coarse
}

/// Bilinear upsampling of a `g x g x 2` grid to `out x out x 2`, by cell centres (a linear
/// grid stays linear, extrapolated past the outer centres).
pub fn upsample_grid(coarse: &[f32], g: usize, out: usize) -> Vec<f32> {
    let mut fine = Vec::with_capacity(out * out * 2);
    // A grid of identity-like coordinates must stay exact at the borders: extrapolate linearly.
    let extrap = |k: usize| -> (usize, usize, f32) {
        if g < 2 {
            return (0, 0, 0.0);
        }
        let t = (k as f32 + 0.5) * g as f32 / out as f32 - 0.5;
        let i0 = (t.floor().max(0.0) as usize).min(g - 2);
        (i0, i0 + 1, t - i0 as f32)
    };
    for y in 0..out {
        let (r0, r1, fy) = extrap(y);
        for x in 0..out {
            let (c0, c1, fx) = extrap(x);
            for ch in 0..2 {
                let v = |r: usize, c: usize| coarse[(r * g + c) * 2 + ch];
                let top = v(r0, c0) * (1.0 - fx) + v(r0, c1) * fx;
                let bot = v(r1, c0) * (1.0 - fx) + v(r1, c1) * fx;
                fine.push((top * (1.0 - fy) + bot * fy).clamp(-1.0, 1.0));
            }
        }
    }
    fine
}

/// Bilinear value of a `g x g` map at the unit-square position `(x, y)`, cell `k` centred at
/// `(k + 1/2) / g` (`align_corners = false`), clamped at the outer centres.
pub fn map_at(map: &[f32], g: usize, x: f32, y: f32) -> f32 {
    let fx = (x * g as f32 - 0.5).clamp(0.0, (g - 1) as f32);
    let fy = (y * g as f32 - 0.5).clamp(0.0, (g - 1) as f32);
    let (x0, y0) = (fx.floor() as usize, fy.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(g - 1), (y0 + 1).min(g - 1));
    let (ax, ay) = (fx - x0 as f32, fy - y0 as f32);
    let v = |r: usize, c: usize| map[r * g + c];
    (v(y0, x0) * (1.0 - ax) + v(y0, x1) * ax) * (1.0 - ay) + (v(y1, x0) * (1.0 - ax) + v(y1, x1) * ax) * ay
}

/// The box around the positions where the `g x g` map, bilinearly upsampled to `res x res`, is
/// at least `frac` times its maximum (WS-DAN's attention crop before padding); `None` when the
/// map is not finite. A map that is zero everywhere selects the whole view.
pub fn mask_box(map: &[f32], g: usize, frac: f32, res: usize) -> Option<NormBox> {
    if map.len() != g * g || g == 0 || !map.iter().all(|v| v.is_finite()) {
        return None;
    }
    let up: Vec<f32> = (0..res * res).map(|k| map_at(map, g, ((k % res) as f32 + 0.5) / res as f32, ((k / res) as f32 + 0.5) / res as f32)).collect();
    let max = up.iter().copied().fold(f32::MIN, f32::max);
    let (mut x0, mut y0, mut x1, mut y1) = (res, res, 0, 0);
    for (k, &v) in up.iter().enumerate() {
        if v >= frac * max {
            let (x, y) = (k % res, k / res);
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1));
        }
    }
    NormBox::new(x0 as f32 / res as f32, y0 as f32 / res as f32, x1 as f32 / res as f32, y1 as f32 / res as f32).ok()
}

/// CUB's keypoints of the head: beak, crown, forehead, left eye, nape, right eye, throat.
pub const CUB_HEAD: [u32; 7] = [2, 5, 6, 7, 10, 11, 15];
/// CUB's keypoints of the body: back, belly, breast, left wing, right wing (legs and tail
/// left out: they stray far from the torso).
pub const CUB_BODY: [u32; 5] = [1, 3, 4, 9, 13];

/// Part-based R-CNN's regions from CUB's annotations: the tight box of the visible keypoints of
/// the head ([`CUB_HEAD`]) and of the body ([`CUB_BODY`]), each grown on every side by
/// `margin` times the object box's longer side and clipped to the object box grown by the same
/// margin. A group with no visible keypoint is `None` (the caller counts it and falls back).
pub fn head_and_body(object: BBox, parts: &[Part], margin: f32) -> (Option<BBox>, Option<BBox>) {
    let pad = margin * object.w.max(object.h);
    let (ox0, oy0, ox1, oy1) = (object.x - pad, object.y - pad, object.x + object.w + pad, object.y + object.h + pad);
    let group = |ids: &[u32]| -> Option<BBox> {
        let pts: Vec<&Part> = parts.iter().filter(|p| p.visible && ids.contains(&p.id) && p.x.is_finite() && p.y.is_finite()).collect();
        if pts.is_empty() {
            return None;
        }
        let x0 = pts.iter().map(|p| p.x).fold(f32::MAX, f32::min) - pad;
        let y0 = pts.iter().map(|p| p.y).fold(f32::MAX, f32::min) - pad;
        let x1 = pts.iter().map(|p| p.x).fold(f32::MIN, f32::max) + pad;
        let y1 = pts.iter().map(|p| p.y).fold(f32::MIN, f32::max) + pad;
        let (x0, y0, x1, y1) = (x0.max(ox0), y0.max(oy0), x1.min(ox1), y1.min(oy1));
        (x1 > x0 && y1 > y0).then_some(BBox { x: x0, y: y0, w: x1 - x0, h: y1 - y0 })
    };
    (group(&CUB_HEAD), group(&CUB_BODY))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degenerate_and_non_finite_boxes_are_errors() {
        assert!(NormBox::new(0.5, 0.1, 0.5, 0.9).expect_err("zero width").contains("degenerate"));
        assert!(NormBox::new(0.1, 0.1, f32::NAN, 0.9).expect_err("nan").contains("non-finite"));
        assert!(NormBox::new(1.2, 0.0, 1.5, 0.5).expect("a box").clipped().is_none(), "a box outside the view has no part inside");
    }
}
