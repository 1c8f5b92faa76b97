//! The normalisation of bilinear features, fused: per row of `z: [B, D]`,
//! `s = sign(z) √(|z| + ε)`, `y = s / max(‖s‖, δ)` (Lin et al., ICCV 2015), in one pass each
//! way where burn's composition takes ten element-wise passes forward and more backward.
//!
//! Backward, with `n = max(‖s‖, δ)`: `ds = (dy − y (y · dy)) / n` where `‖s‖ > δ`, else
//! `dy / n`; `dz = ds / (2 √(|z| + ε))`, and `0` at `z = 0` (where `sign` has no slope, as in
//! burn's composition).

use rayon::prelude::*;

fn signed_sqrt(z: f32, eps: f32) -> f32 {
    if z == 0.0 { 0.0 } else { z.signum() * (z.abs() + eps).sqrt() }
}

/// `‖s‖`: `Σ s_i² = Σ_{z_i ≠ 0} (|z_i| + ε)`.
fn norm(row: &[f32], eps: f32) -> f32 {
    row.iter().filter(|z| **z != 0.0).map(|z| z.abs() + eps).sum::<f32>().sqrt()
}

/// `y` for `z: [rows, d]`.
pub fn forward(z: &[f32], d: usize, eps: f32, delta: f32) -> Vec<f32> {
    let mut y = vec![0.0f32; z.len()];
    if d == 0 {
        return y;
    }
    y.par_chunks_mut(d).zip(z.par_chunks(d)).for_each(|(out, row)| {
        let n = norm(row, eps).max(delta);
        for (o, &v) in out.iter_mut().zip(row) {
            *o = signed_sqrt(v, eps) / n;
        }
    });
    y
}

/// `dz` for `dy`, given `z`.
pub fn backward(z: &[f32], d: usize, eps: f32, delta: f32, dy: &[f32]) -> Vec<f32> {
    let mut dz = vec![0.0f32; z.len()];
    if d == 0 {
        return dz;
    }
    dz.par_chunks_mut(d).zip(z.par_chunks(d)).zip(dy.par_chunks(d)).for_each(|((out, row), g)| {
        let raw = norm(row, eps);
        let n = raw.max(delta);
        // y · dy, with y = s / n.
        let proj = if raw > delta { row.iter().zip(g).map(|(&v, &gy)| signed_sqrt(v, eps) * gy).sum::<f32>() / (n * n) } else { 0.0 };
        for ((o, &v), &gy) in out.iter_mut().zip(row).zip(g) {
            if v == 0.0 {
                *o = 0.0;
                continue;
            }
            let r = (v.abs() + eps).sqrt();
            let ds = (gy - v.signum() * r * proj) / n;
            *o = ds / (2.0 * r);
        }
    });
    dz
}
