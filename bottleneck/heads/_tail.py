"""The network after a layer, fine-tuned on its cached maps (compare --finetune), started from a probe."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import FitError
from ._torch import _TorchClassifier


class FrozenNorm(nn.Module):
    """A pretrained part whose batch-norm layers keep their ImageNet statistics in training: with
    tens of images per class, batch statistics would replace them with noise."""

    def __init__(self, part: nn.Module) -> None:
        super().__init__()
        self.part = part

    def train(self, mode: bool = True) -> FrozenNorm:
        super().train(mode)
        for layer in self.part.modules():
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                layer.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.part(x)


class FineTunedTailClassifier(_TorchClassifier):
    """The last layers of a pretrained network, trained with a new linear layer on cached maps.

    The bottleneck way to fine-tune: `tail` (from `sources.build_tail`) maps a layer's output of
    shape `map_shape`, which the cache holds flattened (`--pool none`), to the network's features.
    Each fit trains a copy of it (batch-norm statistics frozen) and a linear layer on top, so no
    image is decoded or run through the frozen part again: linear probe, then fine-tune, with small
    steps (AdamW at 1e-4) from the probe.
    """

    def __init__(
        self,
        tail: nn.Module | None = None,
        map_shape: tuple[int, ...] = (),
        *,
        probe_first: bool = True,
        learning_rate: float = 1e-4,
        weight_decay: float = 1e-2,
        batch_size: int = 32,
        max_epochs: int = 30,
        validation_fraction: float = 0.1,
        patience: int = 5,
        device: str = "auto",
        random_state: int | np.random.RandomState | None = None,
    ) -> None:
        self.tail = tail
        self.map_shape = map_shape
        self.probe_first = probe_first
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.device = device
        self.random_state = random_state

    def _build_module(self, n_features: int, n_classes: int) -> nn.Module:
        if self.tail is None or math.prod(self.map_shape) != n_features:
            raise FitError(f"a fine-tuned tail reads a layer's whole map ({math.prod(self.map_shape)} values, "
                           f"shape {self.map_shape}), not {n_features} features: pass the --pool none extraction")
        tail = FrozenNorm(copy.deepcopy(self.tail).requires_grad_(True))
        with torch.no_grad():
            width = tail.eval()(torch.zeros(1, *self.map_shape)).shape[1]
        return nn.Sequential(nn.Unflatten(1, self.map_shape), tail, nn.Linear(width, n_classes))

    def _initialise(self, module: Any, X: np.ndarray, y: np.ndarray, device: torch.device) -> None:
        """Linear probe, then fine-tune: the linear layer starts as compare's tuned `logreg` fitted
        on the pretrained tail's output (the frozen embedding), so training begins from the frozen
        features' best linear head instead of from noise."""
        if not self.probe_first:
            return
        frozen, linear = module[:2].eval(), module[2]
        with torch.no_grad():
            features = torch.cat([frozen(torch.as_tensor(X[i:i + 256], device=device))
                                  for i in range(0, len(X), 256)]).cpu().numpy().astype(np.float64)
        start_from_probe(linear, features, y)


def start_from_probe(linear: nn.Linear, features: np.ndarray, y: np.ndarray) -> None:
    """Set `linear` to compare's tuned logreg fitted on `features` (class indices `y`), the
    standardisation folded in: fine-tuning then starts from the frozen features' best linear head."""
    from ._factory import make_pipeline  # the factory builds this module's head too

    probe = make_pipeline("logreg", tune=True, random_state=0).fit(features, y)
    scaler, logreg = probe[0], probe[-1].model_
    coef = logreg.coef_ / scaler.scale_
    intercept = logreg.intercept_ - coef @ scaler.mean_
    if len(coef) == 1:  # two classes: one logit difference
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.r_[0.0, intercept]
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(coef, dtype=torch.float32))
        linear.bias.copy_(torch.as_tensor(intercept, dtype=torch.float32))


# ---------------------------------------------------------------------------------------------
# registry
