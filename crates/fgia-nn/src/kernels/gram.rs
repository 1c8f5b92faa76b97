//! The Gram product `G = s X Xᵀ` of bilinear and covariance pooling, on contiguous `f32` slices.
//!
//! `G` is symmetric, so the forward computes only the blocks on and below the diagonal (about
//! half of a full product's work) and mirrors them; `Xᵀ` is read in place through the product's
//! strides. The backward is one product, `dX = s (dG + dGᵀ) X`, where differentiating
//! `X · Xᵀ` as a general product takes two. Batch items run in parallel.

use rayon::prelude::*;

use super::gemm::{Threads, View, gemm};

/// Rows of a diagonal block: small enough that the skipped upper half is most of the work
/// saved, large enough to keep the product's panels full.
const BLOCK: usize = 64;

fn threads(batch: usize) -> Threads {
    if batch >= rayon::current_num_threads() { Threads::One } else { Threads::All }
}

/// `x: [B, C, M]` to `G = scale X Xᵀ: [B, C, C]`.
pub fn forward(x: &[f32], [b, c, m]: [usize; 3], scale: f32) -> Vec<f32> {
    let mut out = vec![0.0f32; b * c * c];
    if c == 0 {
        return out;
    }
    let t = threads(b);
    out.par_chunks_mut(c * c).zip(x.par_chunks(c * m.max(1))).for_each(|(g, xb)| {
        let blocks = c.div_ceil(BLOCK);
        for bi in 0..blocks {
            let (r0, r1) = (bi * BLOCK, ((bi + 1) * BLOCK).min(c));
            for bj in 0..=bi {
                let (c0, c1) = (bj * BLOCK, ((bj + 1) * BLOCK).min(c));
                // G[r0..r1, c0..c1] = X[r0..r1] · X[c0..c1]ᵀ
                let dst = View { rows: r1 - r0, cols: c1 - c0, rs: c, cs: 1 };
                let lhs = View { rows: r1 - r0, cols: m, rs: m, cs: 1 };
                let rhs = View { rows: m, cols: c1 - c0, rs: 1, cs: m };
                gemm(&mut g[r0 * c + c0..], dst, false, &xb[r0 * m..], lhs, &xb[c0 * m..], rhs, scale, t);
            }
        }
        for i in 0..c {
            for j in i + 1..c {
                g[i * c + j] = g[j * c + i];
            }
        }
    });
    out
}

/// The gradient of [`forward`]: `dX = scale (dG + dGᵀ) X`, `[B, C, M]`.
pub fn backward(x: &[f32], [b, c, m]: [usize; 3], dg: &[f32], scale: f32) -> Vec<f32> {
    let mut dx = vec![0.0f32; b * c * m];
    if c == 0 || m == 0 {
        return dx;
    }
    let t = threads(b);
    dx.par_chunks_mut(c * m).zip(x.par_chunks(c * m)).zip(dg.par_chunks(c * c)).for_each(|((dxb, xb), dgb)| {
        let mut sym = vec![0.0f32; c * c];
        for i in 0..c {
            for j in 0..c {
                sym[i * c + j] = dgb[i * c + j] + dgb[j * c + i];
            }
        }
        gemm(dxb, View::rows(c, m), false, &sym, View::rows(c, c), xb, View::rows(c, m), scale, t);
    });
    dx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_and_backward_match_the_definition_across_block_edges() {
        for (b, c, m) in [(2, 3, 5), (1, 70, 9), (3, 130, 4), (2, 64, 1)] {
            let x: Vec<f32> = (0..b * c * m).map(|i| ((i as f32 + 1.0) * 0.37).sin()).collect();
            let g = forward(&x, [b, c, m], 0.5);
            let dg: Vec<f32> = (0..b * c * c).map(|i| ((i as f32 + 2.0) * 0.13).cos()).collect();
            let dx = backward(&x, [b, c, m], &dg, 0.5);
            for n in 0..b {
                let xb = &x[n * c * m..];
                for i in 0..c {
                    for j in 0..c {
                        let want = 0.5 * (0..m).map(|t| xb[i * m + t] * xb[j * m + t]).sum::<f32>();
                        assert!((g[n * c * c + i * c + j] - want).abs() < 1e-4, "{b} {c} {m}: G[{n}, {i}, {j}]");
                    }
                    for t in 0..m {
                        // d/dX[i, t] of sum(dG * G) = 0.5 sum_j (dG[i, j] + dG[j, i]) X[j, t]
                        let want = 0.5 * (0..c).map(|j| (dg[n * c * c + i * c + j] + dg[n * c * c + j * c + i]) * xb[j * m + t]).sum::<f32>();
                        assert!((dx[n * c * m + i * m + t] - want).abs() < 1e-3, "{b} {c} {m}: dX[{n}, {i}, {t}]");
                    }
                }
            }
        }
    }
}
