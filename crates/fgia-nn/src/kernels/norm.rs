//! Batch normalisation in training, fused with the activation after it, on contiguous NCHW
//! `f32` slices: one pass for the statistics, one for the output, and in the backward one for
//! the sums and one for the input's gradient. burn's composition takes a dozen passes and as
//! many temporaries each way.
//!
//! Forward, per channel `c` over `M = N H W` values: `μ`, `σ² = mean((x − μ)²)` (biased, two
//! passes), `x̂ = (x − μ) / √(σ² + ε)`, `z = γ x̂ + β`, `y = act(z)`.
//! Backward, with `g = dy · act'(z)`: `dβ = Σ g`, `dγ = Σ g x̂`,
//! `dx = γ / √(σ² + ε) · (g − dβ / M − x̂ dγ / M)`.

use rayon::prelude::*;

/// The activation fused after the normalisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Act {
    /// None.
    Identity,
    /// `max(z, 0)`.
    Relu,
    /// `min(max(z, 0), 6)`.
    Relu6,
}

impl Act {
    fn apply(self, z: f32) -> f32 {
        match self {
            Act::Identity => z,
            Act::Relu => z.max(0.0),
            Act::Relu6 => z.clamp(0.0, 6.0),
        }
    }
}

/// Per-channel batch statistics: mean and biased variance.
pub struct Stats {
    /// `μ_c`.
    pub mean: Vec<f32>,
    /// `σ²_c` (biased).
    pub var: Vec<f32>,
}

/// `(Σ f(x_i, g_i).0, Σ f(x_i, g_i).1)` in eight independent partial sums (so it vectorises).
fn fold8(xp: &[f32], gp: &[f32], f: impl Fn(f32, f32) -> (f32, f32)) -> (f32, f32) {
    let (mut a, mut b) = ([0.0f32; 8], [0.0f32; 8]);
    let (cx, cg) = (xp.chunks_exact(8), gp.chunks_exact(8));
    let (rx, rg) = (cx.remainder(), cg.remainder());
    for (x8, g8) in cx.zip(cg) {
        for k in 0..8 {
            let (p, q) = f(x8[k], g8[k]);
            a[k] += p;
            b[k] += q;
        }
    }
    let (mut sa, mut sb) = (a.iter().sum::<f32>(), b.iter().sum::<f32>());
    for (&x, &g) in rx.iter().zip(rg) {
        let (p, q) = f(x, g);
        sa += p;
        sb += q;
    }
    (sa, sb)
}

/// Per channel `ch`, the sums over its `N` planes of `fold8(x plane, dy plane, f(ch))`, in f64
/// across planes. `f(ch)` builds the element function once per plane, so its per-channel
/// constants stay in registers. `x, dy: [N, C, H W]`.
fn per_channel<F: Fn(f32, f32) -> (f32, f32)>(x: &[f32], dy: &[f32], [n, c, hw]: [usize; 3], f: impl Fn(usize) -> F + Sync) -> Vec<(f64, f64)> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let g = f(ch);
            (0..n).fold((0.0f64, 0.0f64), |(sa, sb), i| {
                let at = (i * c + ch) * hw;
                let (a, b) = fold8(&x[at..at + hw], &dy[at..at + hw], &g);
                (sa + a as f64, sb + b as f64)
            })
        })
        .collect()
}

/// `act'(z) dy` as a select the compiler vectorises (`z` inside the pass band, bounds included).
#[inline(always)]
fn gate(act: Act, z: f32, g: f32) -> f32 {
    match act {
        Act::Identity => g,
        Act::Relu => {
            if z > 0.0 {
                g
            } else {
                0.0
            }
        }
        Act::Relu6 => {
            if (0.0..=6.0).contains(&z) {
                g
            } else {
                0.0
            }
        }
    }
}

/// Forward: `y` and the batch statistics. `x: [N, C, H W]`.
pub fn forward(x: &[f32], shape: [usize; 3], gamma: &[f32], beta: &[f32], eps: f32, act: Act) -> (Vec<f32>, Stats) {
    let [n, c, hw] = shape;
    let count = (n * hw).max(1) as f64;
    let mean: Vec<f32> = per_channel(x, x, shape, |_| |v: f32, _| (v, 0.0)).into_iter().map(|s| (s.0 / count) as f32).collect();
    let var: Vec<f32> = per_channel(x, x, shape, |ch| {
        let m = mean[ch];
        move |v: f32, _| ((v - m) * (v - m), 0.0)
    })
    .into_iter()
    .map(|s| (s.0 / count) as f32)
    .collect();
    let scale: Vec<f32> = (0..c).map(|ch| gamma[ch] / (var[ch] + eps).sqrt()).collect();
    let shift: Vec<f32> = (0..c).map(|ch| beta[ch] - mean[ch] * scale[ch]).collect();
    let mut y = vec![0.0f32; n * c * hw];
    y.par_chunks_mut(hw.max(1)).zip(x.par_chunks(hw.max(1))).enumerate().for_each(|(nc, (out, inp))| {
        let (a, b) = (scale[nc % c], shift[nc % c]);
        for (o, v) in out.iter_mut().zip(inp) {
            *o = act.apply(a * v + b);
        }
    });
    (y, Stats { mean, var })
}

/// Backward: `(dx, dγ, dβ)` for `dy`, given the forward's input and statistics.
#[allow(clippy::too_many_arguments)]
pub fn backward(x: &[f32], shape: [usize; 3], gamma: &[f32], beta: &[f32], stats: &Stats, eps: f32, act: Act, dy: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let [n, c, hw] = shape;
    let count = (n * hw).max(1) as f32;
    let istd: Vec<f32> = stats.var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    // z = a x + b per channel.
    let a: Vec<f32> = (0..c).map(|ch| gamma[ch] * istd[ch]).collect();
    let b: Vec<f32> = (0..c).map(|ch| beta[ch] - stats.mean[ch] * a[ch]).collect();
    // g = act'(z) dy; sums of g and g (x - μ), then g x̂.
    let sums: Vec<(f64, f64)> = per_channel(x, dy, shape, |ch| {
        let (a, b, m) = (a[ch], b[ch], stats.mean[ch]);
        move |v: f32, g: f32| {
            let g = gate(act, a * v + b, g);
            (g, g * (v - m))
        }
    })
    .into_iter()
    .enumerate()
    .map(|(ch, (s, sx))| (s, sx * istd[ch] as f64))
    .collect();
    let dbeta: Vec<f32> = sums.iter().map(|s| s.0 as f32).collect();
    let dgamma: Vec<f32> = sums.iter().map(|s| s.1 as f32).collect();
    let mut dx = vec![0.0f32; n * c * hw];
    dx.par_chunks_mut(hw.max(1)).enumerate().for_each(|(nc, out)| {
        let ch = nc % c;
        let at = nc * hw;
        let (xp, gp) = (&x[at..at + hw], &dy[at..at + hw]);
        // dx = k (g - mb - (x - μ) istd mg) = k g - k mb + k istd mg μ - k istd mg x
        let (za, zb) = (a[ch], b[ch]);
        let k = a[ch];
        let slope = k * istd[ch] * dgamma[ch] / count;
        let offset = -k * dbeta[ch] / count + slope * stats.mean[ch];
        for ((o, &v), &g) in out.iter_mut().zip(xp).zip(gp) {
            *o = k * gate(act, za * v + zb, g) - slope * v + offset;
        }
    });
    (dx, dgamma, dbeta)
}
