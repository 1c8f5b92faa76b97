"""faiss-cpu reference for the retrieval benchmarks, on the same data as the Rust benchmarks.

1. Exact Recall@{1,2,4,8} on 100,000 x 512 embeddings (the data of `cargo bench -p fgia-bench
   --bench retrieval`, n100000_d512): IndexFlatIP over the normalised embeddings, every item
   searching its 9 nearest, itself dropped.
2. 1,000,000 x 128 unit vectors (the data of `cargo bench -p fgia-bench --bench ann`): exact
   top-10 for 1,000 queries with IndexFlatIP, an IndexHNSWFlat build (M 16, efConstruction 200,
   inner product) and its search at efSearch 64/128/256/512 with recall@10 against the exact result.

Run:  sh python/setup.sh && .venv-bench/bin/python python/faiss_bench.py [exact|ann|both]
"""
import statistics
import sys
import time

import faiss
import numpy as np

from recall_numpy import embeddings


def exact_recall(repeats=3):
    x, labels = embeddings(100_000, 512, 50, 7)
    faiss.normalize_L2(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        index = faiss.IndexFlatIP(512)
        index.add(x)
        _, ids = index.search(x, 9)
        # Drop the query itself (ties aside, it is its own nearest).
        rows = []
        for i, r in enumerate(ids):
            r = [j for j in r if j != i][:8]
            rows.append(r)
        top = np.array(rows)
        hit = labels[top] == labels[:, None]
        first = np.where(hit.any(axis=1), hit.argmax(axis=1), 99)
        rec = [100.0 * np.mean(first < k) for k in (1, 2, 4, 8)]
        times.append(time.perf_counter() - t)
    print(f"faiss {faiss.__version__} IndexFlatIP recall@K 100000x512 ({faiss.omp_get_max_threads()} threads): "
          f"median {statistics.median(times):.2f} s of {repeats}; recall@1,2,4,8 = {[round(v, 3) for v in rec]}")


def ann():
    n, d, nq, k = 1_000_000, 128, 1000, 10
    x, _ = embeddings(n, d, 1, 21)
    q, _ = embeddings(nq, d, 1, 22)
    faiss.normalize_L2(x)
    faiss.normalize_L2(q)
    t = time.perf_counter()
    flat = faiss.IndexFlatIP(d)
    flat.add(x)
    _, gt = flat.search(q, k)
    print(f"faiss exact search 1M x 128, {nq} queries: {time.perf_counter() - t:.3f} s")
    t = time.perf_counter()
    h = faiss.IndexHNSWFlat(d, 16, faiss.METRIC_INNER_PRODUCT)
    h.hnsw.efConstruction = 200
    h.add(x)
    print(f"faiss hnsw build (M 16, efConstruction 200): {time.perf_counter() - t:.1f} s")
    for ef in (64, 128, 256, 512):
        h.hnsw.efSearch = ef
        t = time.perf_counter()
        _, ids = h.search(q, k)
        s = time.perf_counter() - t
        rec = np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, gt)])
        print(f"faiss hnsw search efSearch {ef}: {s:.3f} s ({1e3 * s / nq:.3f} ms/query), recall@{k} vs exact {rec:.4f}")


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "both"
    if what in ("exact", "both"):
        exact_recall()
    if what in ("ann", "both"):
        ann()
