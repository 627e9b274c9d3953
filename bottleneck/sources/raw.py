"""Raw-pixel baselines: `raw<N>` flattens the N x N RGB crop.

Pixels go through the same extraction pipeline and cache as embeddings: the preprocessing resizes the
shorter side to N, centre-crops N x N and normalises with mean 0, std 1, so the vector is pixels / 255
(3 * N * N values, channel-major). How far a head gets on these shows what the pretrained features add.
"""

from __future__ import annotations

import re

from ..errors import BackboneError, UnknownModelError
from ..registry import Backbone, ModelConfig, ModelInfo, Source
from ..spec import ExtractorSpec, Preprocess

RAW_SIZES = range(8, 257)
_RAW_NAME = re.compile(r"raw([1-9][0-9]*)")


def is_raw_name(name: str) -> bool:
    return _RAW_NAME.fullmatch(name) is not None


class RawSource(Source):
    name = "pixels"

    def owns(self, model: str) -> bool:
        return is_raw_name(model)

    def check(self, model: str, weights: str | None, layer: str | None, pool: str) -> None:
        """`weights` may be None or "random" (there are none); `layer` must be None; `pool` must be "avg"."""
        if int(model[3:]) not in RAW_SIZES:
            raise UnknownModelError(f"unknown model {model!r}: raw-pixel baselines are raw<N> with {RAW_SIZES[0]} <= "
                                    f"N <= {RAW_SIZES[-1]}, e.g. raw32")
        if weights not in (None, "random") or layer is not None or pool != "avg":
            raise BackboneError(f"{model} is raw pixels: it takes no weights, layer or pool")

    def config(self, model: str) -> ModelConfig:
        n = int(model[3:])
        return ModelConfig(Preprocess(n, n, "bilinear", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)), "none", 3 * n * n)

    def build(self, model: str, weights: str | None, layer: str | None, pool: str) -> Backbone:
        from torch import nn

        self.check(model, weights, layer, pool)
        config = self.config(model)
        return Backbone(nn.Flatten().eval(),
                        ExtractorSpec(model, "none", config.preprocess, config.feature_dim, precision="fp32"))

    def infos(self) -> list[ModelInfo]:
        note = f"raw pixels / 255, {{n}}x{{n}}x3 = {{d}}-d; any raw<N> with {RAW_SIZES[0]} <= N <= {RAW_SIZES[-1]}"
        return [ModelInfo(f"raw{n}", "pixels", True, note.format(n=n, d=3 * n * n)) for n in (32, 64)]
