"""Heads trained with torch on cached vectors: softmax, a small MLP, a small CNN on raw pixels."""

from __future__ import annotations

import math

import numpy as np
from torch import nn

from ..errors import FitError
from ._torch import _TorchClassifier


class SoftmaxClassifier(_TorchClassifier):
    """One linear layer + softmax (the tutorials' ``Dense(n_classes, softmax)`` top)."""

    def __init__(
        self,
        *,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-2,
        batch_size: int = 32,
        max_epochs: int = 200,
        validation_fraction: float = 0.1,
        patience: int = 10,
        device: str = "auto",
        random_state: int | np.random.RandomState | None = None,
    ) -> None:
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.device = device
        self.random_state = random_state

    def _build_module(self, n_features: int, n_classes: int) -> nn.Module:
        return nn.Linear(n_features, n_classes)


class MLPHeadClassifier(_TorchClassifier):
    """Dense(hidden_units) + BatchNorm1d + ReLU + Dropout + Dense(n_classes) + softmax."""

    def __init__(
        self,
        *,
        hidden_units: int = 64,
        dropout: float = 0.5,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-2,
        batch_size: int = 32,
        max_epochs: int = 200,
        validation_fraction: float = 0.1,
        patience: int = 10,
        device: str = "auto",
        random_state: int | np.random.RandomState | None = None,
    ) -> None:
        self.hidden_units = hidden_units
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.device = device
        self.random_state = random_state

    def _build_module(self, n_features: int, n_classes: int) -> nn.Module:
        return nn.Sequential(
            nn.Linear(n_features, self.hidden_units),
            nn.BatchNorm1d(self.hidden_units),
            nn.ReLU(),
            nn.Dropout(self.dropout),
            nn.Linear(self.hidden_units, n_classes),
        )


class SmallCNNClassifier(_TorchClassifier):
    """A small CNN trained from scratch on raw pixels: the seeds' from-scratch baseline.

    It reads a rawN vector (3 x N x N pixels, as `raw32` caches them) back into an image: three
    conv + batch-norm + ReLU blocks (32, 64, 128 channels; the first two max-pooled), global
    average pooling, dropout and a linear layer. Any other input width is an error naming the fix.
    """

    def __init__(
        self,
        *,
        dropout: float = 0.3,
        learning_rate: float = 3e-3,
        weight_decay: float = 1e-3,
        batch_size: int = 32,
        max_epochs: int = 100,
        validation_fraction: float = 0.1,
        patience: int = 10,
        device: str = "auto",
        random_state: int | np.random.RandomState | None = None,
    ) -> None:
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.device = device
        self.random_state = random_state

    def _build_module(self, n_features: int, n_classes: int) -> nn.Module:
        side = math.isqrt(n_features // 3)
        if 3 * side * side != n_features:
            raise FitError(f"the cnn head trains on raw pixels (3 x N x N values, e.g. raw32), not {n_features} "
                           "features: pass --model raw32, or another head")

        def block(inputs: int, outputs: int, pool: bool) -> list[nn.Module]:
            return [nn.Conv2d(inputs, outputs, 3, padding=1), nn.BatchNorm2d(outputs), nn.ReLU(),
                    *([nn.MaxPool2d(2)] if pool else [])]

        return nn.Sequential(nn.Unflatten(1, (3, side, side)), *block(3, 32, True), *block(32, 64, True),
                             *block(64, 128, False), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(self.dropout),
                             nn.Linear(128, n_classes))
