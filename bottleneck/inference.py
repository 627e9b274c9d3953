"""The backbone as extraction runs it, shared by the local and the Ray engines: batch-norm folded,
channels_last, autocast; a uint8 batch in, vectors out."""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from .decode import normalize
from .fold import fold_batchnorm
from .registry import Backbone
from .spec import Preprocess


def prepare_model(backbone: Backbone, device: torch.device, compile: bool = False) -> nn.Module:
    """Inference-only speed-ups that keep the vectors (to float rounding): BatchNorm folded into
    convolutions, and channels_last on every device (oneDNN and cuDNN run convolutions faster in it)."""
    model = fold_batchnorm(backbone.model.eval(), backbone.preprocess.input_size)
    model = model.to(device).to(memory_format=torch.channels_last)
    if compile:
        model = cast(nn.Module, torch.compile(model))
    return model


def forward_batch(model: nn.Module, preprocess: Preprocess, batch: torch.Tensor, device: torch.device,
                  autocast_dtype: torch.dtype | None) -> torch.Tensor:
    """A uint8 (B, 3, S, S) batch → (B, D) vectors on `device`."""
    x = normalize(batch.to(device, non_blocking=True), preprocess)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        return model(x)
