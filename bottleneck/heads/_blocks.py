"""Fused extractions: several cached embeddings side by side, each block standardised and weighted so
that every block carries the same total variance whatever its width (a 3,072-d raw-pixel block does
not outvote a 1,280-d embedding by having more columns)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.preprocessing import StandardScaler

from ..errors import FitError


def block_weights(blocks: Sequence[int]) -> np.ndarray:
    """Per column: sqrt(D / (B d_b)) for the d_b columns of block b (B blocks, D columns in all), so
    that each standardised block's variance sums to D / B. Blocks of one width are weighted 1."""
    total = sum(blocks)
    return np.concatenate([np.full(d, np.sqrt(total / (len(blocks) * d))) for d in blocks])


class BlockScaler(StandardScaler):
    """StandardScaler, then each block of columns times its `block_weights`: a StandardScaler whose
    `scale_` is divided by the weights, so whatever folds a fitted scaler (export) folds this one."""

    scale_: np.ndarray | None

    def __init__(self, *, blocks: tuple[int, ...] = (), copy: bool = True, with_mean: bool = True,
                 with_std: bool = True) -> None:
        super().__init__(copy=copy, with_mean=with_mean, with_std=with_std)
        self.blocks = blocks

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> BlockScaler:
        super().fit(X, y, sample_weight)
        if self.blocks:
            if sum(self.blocks) != self.n_features_in_:
                raise FitError(f"blocks {self.blocks} sum to {sum(self.blocks)} columns, the features have "
                               f"{self.n_features_in_}")
            self.scale_ = (self.scale_ if self.scale_ is not None else np.ones(self.n_features_in_)) \
                / block_weights(self.blocks)
        return self
