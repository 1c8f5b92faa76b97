//! Index benchmark (a plain timing program, not criterion: one HNSW build of a million vectors
//! takes minutes). `cargo bench -p fgia-bench --bench ann [-- N DIM QUERIES]`, or
//! `cargo bench -p fgia-bench --bench ann -- exact` for exact Recall@K on 100k x 512.
//!
//! On `N x DIM` random unit vectors (default 1,000,000 x 128; the generator of
//! `python/faiss_bench.py`) with QUERIES separate queries (default 1,000), inner product:
//! exact top-10 search (blocked matrix products), the HNSW build (M = 16, ef_construction =
//! 200), HNSW search at ef_search 64-512, and HNSW recall@10 against the exact result.

use std::time::Instant;

use fgia_cbir::hnsw::{Hnsw, HnswParams};
use fgia_cbir::search::exact_knn;
use fgia_core::retrieval::Distance;

/// Exact Recall@{1,2,4,8} on the 100,000 x 512 embeddings of the `retrieval` criterion bench,
/// three runs, median: the figure to set beside `python/faiss_bench.py exact`.
fn exact_recall() {
    let (x, labels) = fgia_bench::random_embeddings(100_000, 512, 50, 7);
    let mut times = Vec::new();
    let mut r = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        r = fgia_core::retrieval::recall_at_k(fgia_core::retrieval::Embeddings::new(&x, 512), &labels, &[1, 2, 4, 8], Distance::Cosine);
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    println!("exact recall@K 100000x512: median {:.2} s of 3 ({:.2?}); recall@1,2,4,8 = {r:.3?}", times[1], times);
}

fn main() {
    if std::env::args().any(|a| a == "exact") {
        exact_recall();
        return;
    }
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (n, dim, nq) = (args.first().copied().unwrap_or(1_000_000), args.get(1).copied().unwrap_or(128), args.get(2).copied().unwrap_or(1000));
    let k = 10;
    let threads = std::thread::available_parallelism().map(|t| t.get()).unwrap_or(1);
    println!("ann benchmark: {n} x {dim} gallery, {nq} queries, top-{k}, inner product on unit vectors, {threads} threads");
    let (mut data, _) = fgia_bench::random_embeddings(n, dim, 1, 21);
    let (mut queries, _) = fgia_bench::random_embeddings(nq, dim, 1, 22);
    fgia_cbir::pca::l2_normalise_rows(&mut data, dim);
    fgia_cbir::pca::l2_normalise_rows(&mut queries, dim);

    let t = Instant::now();
    let exact = exact_knn(&queries, &data, dim, k, Distance::Cosine, false);
    let exact_s = t.elapsed().as_secs_f64();
    println!("exact search: {exact_s:.3} s ({:.3} ms/query)", 1e3 * exact_s / nq as f64);

    let t = Instant::now();
    let g = Hnsw::build(data, dim, Distance::Cosine, HnswParams::default());
    let build_s = t.elapsed().as_secs_f64();
    println!("hnsw build (M 16, ef_construction 200): {build_s:.1} s");
    for ef in [64, 128, 256, 512] {
        let mut g2 = g.clone();
        g2.params.ef_search = ef;
        let t = Instant::now();
        let approx = g2.search_many(&queries, k);
        let s = t.elapsed().as_secs_f64();
        let hits: usize = exact.iter().zip(&approx).map(|(e, a)| a.iter().filter(|x| e.iter().any(|y| y.0 == x.0)).count()).sum();
        println!("hnsw search ef_search {ef}: {s:.3} s ({:.3} ms/query), recall@{k} vs exact {:.4}", 1e3 * s / nq as f64, hits as f64 / (nq * k) as f64);
    }
}
