"""Blocked cosine nearest neighbours (audit's near-duplicates and outliers)."""

import numpy as np

from bottleneck_features.neighbours import cosine_neighbours


def _brute(X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    scores = unit @ unit.T
    np.fill_diagonal(scores, -np.inf)
    index = np.argsort(-scores, axis=1)[:, :k]
    return index, np.take_along_axis(scores, index, axis=1)


def test_blocks_give_the_brute_force_answer() -> None:
    X = np.random.default_rng(0).normal(size=(300, 24)).astype(np.float32)
    found = cosine_neighbours(X, 4, block=64)
    index, similarity = _brute(X, 4)
    np.testing.assert_array_equal(found.index, index)
    np.testing.assert_allclose(found.similarity, similarity, atol=1e-5)
    assert not (found.index == np.arange(300)[:, None]).any()  # never its own neighbour


def test_projected_candidates_are_rescored_on_the_full_vectors() -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(20, 256)) * 3
    X = (centres[rng.integers(0, 20, 1000)] + rng.normal(size=(1000, 256))).astype(np.float32)
    X[500:520] = X[:20] + rng.normal(scale=0.05, size=(20, 256))  # 20 near-duplicates
    found = cosine_neighbours(X, 3, exact_max_rows=100, components=16, block=128)  # forced onto 16 dimensions
    exact = cosine_neighbours(X, 3)
    assert (found.index[500:520, 0] == np.arange(20)).all()
    np.testing.assert_allclose(found.similarity[:20, 0], exact.similarity[:20, 0], atol=1e-5)
