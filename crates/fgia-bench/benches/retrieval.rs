//! Recall@K over blocked matrix products (`fgia_core::retrieval`).
//!
//! `retrieval/recall_at_k/n100000_d512` is the reference size: 100k queries against the other
//! 99,999 items, 512-d, cosine. Compare with `python/recall_numpy.py` on the same machine.

// criterion_group!/criterion_main! generate undocumented items.
#![allow(missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use fgia_bench::random_embeddings;
use fgia_core::retrieval::{Distance, Embeddings, recall_at_k};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("retrieval/recall_at_k");
    group.sample_size(10);
    for (n, d) in [(10_000usize, 512usize), (100_000, 512)] {
        let (emb, labels) = random_embeddings(n, d, 50, 7);
        // The values, to compare with python/recall_numpy.py (same data).
        eprintln!("n{n}_d{d}: recall@1,2,4,8 = {:?}", recall_at_k(Embeddings::new(&emb, d), &labels, &[1, 2, 4, 8], Distance::Cosine));
        group.bench_function(format!("n{n}_d{d}"), |b| b.iter(|| recall_at_k(Embeddings::new(&emb, d), &labels, &[1, 2, 4, 8], Distance::Cosine)));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
