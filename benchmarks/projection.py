"""The embedding map's projection: openTSNE against UMAP (umap-learn) on clustered synthetic vectors.

    pip install 'bottleneck-features[map]' umap-learn   # umap-learn only for this comparison
    python benchmarks/projection.py [--n 1500 10000] [--dim 1280] [--threads 2]

Vectors: 40 classes in 8 super-groups (a super-group centre, a class offset, per-image noise in a
random 64-d subspace plus isotropic noise), passed through ReLU as pooled CNN features are. Both
libraries get what the package feeds them (`map_layout.prepare`: unit rows, PCA to 50 dimensions).
Printed per method: seconds (the first UMAP call includes numba's compilation, said apart), the
fraction of each point's 10 nearest neighbours (cosine, full width) that are still among its 10
nearest on the map, and the same for classes (kNN accuracy of the class label on the map).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from _common import machine


def clustered(n: int, dim: int, classes: int = 40, groups: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Classes in super-groups; inside a class, images vary along a curved 4-d manifold (a random
    non-linear map of 4 latent factors), so that near neighbours mean something, plus isotropic noise."""
    rng = np.random.default_rng(seed)
    group_centres = rng.normal(size=(groups, dim))
    class_centres = group_centres[np.arange(classes) % groups] + rng.normal(size=(classes, dim)) * 0.6
    maps = rng.normal(size=(classes, 4, dim)) / 2  # each class's own way of varying
    labels = rng.integers(0, classes, size=n)
    latent = rng.normal(size=(n, 4))
    X = class_centres[labels] + np.sin(np.einsum("nk,nkd->nd", latent, maps[labels])) * 0.8
    X += rng.normal(size=(n, dim)) * 0.1
    return np.maximum(X, 0).astype(np.float32), labels


def knn(X: np.ndarray, k: int, cosine: bool) -> np.ndarray:
    """Indices of each row's k nearest other rows, in blocks (exact)."""
    Y = X / np.linalg.norm(X, axis=1, keepdims=True) if cosine else X
    squared = (Y * Y).sum(axis=1)
    out = np.empty((len(Y), k), dtype=np.int64)
    for start in range(0, len(Y), 1024):
        block = Y[start:start + 1024]
        distance = squared[start:start + 1024, None] - 2 * block @ Y.T + squared[None, :]
        distance[np.arange(len(block)), np.arange(start, start + len(block))] = np.inf
        part = np.argpartition(distance, k, axis=1)[:, :k]
        out[start:start + len(block)] = part
    return out


def kept(high: np.ndarray, low: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(high, low, strict=True)]))


def label_accuracy(low: np.ndarray, labels: np.ndarray) -> float:
    votes = labels[low]
    predicted = np.array([np.bincount(v).argmax() for v in votes])
    return float(np.mean(predicted == labels))


def run_tsne(Z: np.ndarray, threads: int, seed: int) -> np.ndarray:
    from openTSNE import TSNE

    return np.asarray(TSNE(n_jobs=threads, random_state=seed, verbose=False).fit(Z))


def run_umap(Z: np.ndarray, threads: int, seed: int) -> np.ndarray:
    import umap

    reducer = umap.UMAP(n_neighbors=15, min_dist=0.1, n_jobs=threads, random_state=None, init="spectral")
    return np.asarray(reducer.fit_transform(Z))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1_500, 10_000])
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    info = machine()
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    print(f"machine: {info.get('cpu')}, {info.get('cores', os.cpu_count())} cores, avx512_bf16: "
          f"{'avx512_bf16' in flags}; threads {args.threads}; load average {info.get('load_average_start')}")
    print("| images | method | seconds | 10-NN kept | 10-NN class accuracy on the map |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for n in args.n:
        for name, seconds, keep, accuracy in measure(n, args.dim, args.threads):
            print(f"| {n:,} | {name} | {seconds:.1f} | {keep:.3f} | {accuracy:.3f} |", flush=True)


def measure(n: int, dim: int, threads: int) -> list[tuple[str, float, float, float]]:
    from bottleneck_features.map_layout import prepare

    X, labels = clustered(n, dim)
    start = time.perf_counter()
    Z = prepare(X)
    prep = time.perf_counter() - start
    high = knn(X, 10, cosine=True)
    rows = [("full width (cosine), for reference", 0.0, 1.0, label_accuracy(high, labels)),
            ("prepare: unit rows, PCA to 50", prep, float("nan"), float("nan"))]
    start = time.perf_counter()  # numba compiles UMAP's kernels on a process's first call: measured apart
    run_umap(Z[:300], threads, 0)
    rows.append(("UMAP's first call in a process (numba compiling), 300 points", time.perf_counter() - start,
                 float("nan"), float("nan")))
    methods = (("openTSNE (perplexity 30; its default: Barnes-Hut below 10,000 points, FFT from there)", run_tsne),
               ("UMAP (15 neighbours, min_dist 0.1)", run_umap))
    for name, run in methods:
        start = time.perf_counter()
        xy = run(Z, threads, 0)
        seconds = time.perf_counter() - start
        low = knn(xy.astype(np.float64), 10, cosine=False)
        rows.append((name, seconds, kept(high, low), label_accuracy(low, labels)))
    pca = Z[:, :2]
    low = knn(pca.astype(np.float64), 10, cosine=False)
    rows.append(("PCA, first 2 components (reference)", 0.0, kept(high, low), label_accuracy(low, labels)))
    return rows


if __name__ == "__main__":
    main()
