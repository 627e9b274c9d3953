"""Raw-pixel baselines: `raw<N>` is a Backbone whose model just flattens the N x N RGB crop.

Pixels go through the same extraction pipeline and cache as embeddings: the preprocessing resizes the
shorter side to N, centre-crops N x N and normalises with mean 0, std 1, so the vector is pixels / 255
(3 * N * N values, channel-major). How far a head gets on these shows what the pretrained features add.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from bottleneck.backbones import Backbone, BackboneError, ModelInfo, Preprocess, UnknownModelError

RAW_SIZES = range(8, 257)
_RAW_NAME = re.compile(r"raw([1-9][0-9]*)")


class Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def is_raw_name(name: str) -> bool:
    return _RAW_NAME.fullmatch(name) is not None


def raw_backbone(name: str, weights: str | None = None, layer: str | None = None, pool: str = "avg") -> Backbone:
    """`weights` may be None or "random" (there are none); `layer` must be None; `pool` must be "avg"."""
    match = _RAW_NAME.fullmatch(name)
    if match is None or int(match.group(1)) not in RAW_SIZES:
        raise UnknownModelError(f"unknown model {name!r}: raw-pixel baselines are raw<N> with {RAW_SIZES[0]} <= N <= "
                                f"{RAW_SIZES[-1]}, e.g. raw32")
    if weights not in (None, "random") or layer is not None or pool != "avg":
        raise BackboneError(f"{name} is raw pixels: it takes no weights, layer or pool")
    n = int(match.group(1))
    preprocess = Preprocess(n, n, "bilinear", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    return Backbone(name, Flatten().eval(), preprocess, 3 * n * n, "none", None, "avg")


def model_infos() -> list[ModelInfo]:
    note = f"raw pixels / 255, {{n}}x{{n}}x3 = {{d}}-d; any raw<N> with {RAW_SIZES[0]} <= N <= {RAW_SIZES[-1]}"
    return [ModelInfo(f"raw{n}", "pixels", True, note.format(n=n, d=3 * n * n)) for n in (32, 64)]
