"""NumPy reference for `cargo bench -p fgia-bench --bench retrieval` (n100000_d512).

Recall@{1,2,4,8} with cosine similarity, every item querying the other 99,999, computed the
usual way: normalise, then for blocks of queries a BLAS matrix product against all items,
mask the query itself, and take the top 8 with argpartition. Same data generator as the Rust
bench (SplitMix64, sum of three uniforms minus 1.5; labels = index // 50). Prints the median
of 3 runs.

Run:  sh python/setup.sh && .venv-bench/bin/python python/recall_numpy.py
"""
import statistics
import time

import numpy as np

M = (1 << 64) - 1


def splitmix(seed, count):
    # Vectorised SplitMix64 (Steele et al. 2014), identical to fgia_core::rng::SplitMix64.
    s = (np.uint64(seed) + np.arange(1, count + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))
    z = s
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def embeddings(n, d, per_class, seed):
    u = (splitmix(seed, 3 * n * d) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    x = (u[0::3] + u[1::3] + u[2::3] - 1.5).astype(np.float32).reshape(n, d)
    return x, np.arange(n) // per_class


def recall(x, labels, ks=(1, 2, 4, 8), block=1024):
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    kmax = max(ks)
    first = np.full(len(x), np.iinfo(np.int64).max)
    for s in range(0, len(x), block):
        sims = x[s : s + block] @ x.T
        rows = np.arange(sims.shape[0])
        sims[rows, s + rows] = -np.inf
        top = np.argpartition(-sims, kmax, axis=1)[:, :kmax]
        order = np.take_along_axis(sims, top, axis=1).argsort(axis=1)[:, ::-1]
        top = np.take_along_axis(top, order, axis=1)
        hit = labels[top] == labels[s : s + block, None]
        has = hit.any(axis=1)
        first[s : s + block] = np.where(has, hit.argmax(axis=1), first[s : s + block])
    return [100.0 * np.mean(first < k) for k in ks]


if __name__ == "__main__":
    x, labels = embeddings(100_000, 512, 50, 7)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        r = recall(x, labels)
        times.append(time.perf_counter() - t)
    print(f"retrieval/recall_at_k/n100000_d512 (numpy {np.__version__}): median {statistics.median(times):.2f} s; recall@1,2,4,8 = {[round(v, 3) for v in r]}")
