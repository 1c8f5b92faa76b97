//! Shared set-up of the criterion benchmarks in `benches/` (run with `cargo bench -p fgia-bench`).
//! Inputs are deterministic so runs compare.

use fgia_core::rng::SplitMix64;

/// `n x d` standard-normal-ish embeddings (sum of uniforms) and `n / per_class` class labels.
pub fn random_embeddings(n: usize, d: usize, per_class: usize, seed: u64) -> (Vec<f32>, Vec<usize>) {
    let mut g = SplitMix64::new(seed);
    let data = (0..n * d).map(|_| (g.next_f64() + g.next_f64() + g.next_f64() - 1.5) as f32).collect();
    let labels = (0..n).map(|i| i / per_class.max(1)).collect();
    (data, labels)
}
