"""Any timm model as `timm:NAME` (a pretrained tag may follow: `timm:convnext_tiny.fb_in22k_ft_in1k`),
with the preprocessing its `pretrained_cfg` gives."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

from torch import nn

from ..errors import BackboneError, UnknownModelError
from ..registry import Backbone, ModelConfig, ModelInfo, Source
from ..spec import Preprocess
from ._common import Net, apply_weights, finish, first_line, reachable, unavailable

PREFIX = "timm:"


class TimmSource(Source):
    name = "timm"

    def owns(self, model: str) -> bool:
        return model.startswith(PREFIX)

    def config(self, model: str) -> ModelConfig:
        import timm
        import timm.data

        arch = model.removeprefix(PREFIX)
        if not timm.is_model(arch):
            raise UnknownModelError(f"unknown timm model {arch!r}: see timm.list_models() for names")
        try:
            cfg = timm.models.get_pretrained_cfg(arch)
        except RuntimeError as e:  # a tag the architecture doesn't have
            raise BackboneError(f"{model}: {first_line(e)}") from None
        if cfg is None:  # no pretrained cfg registered: read the defaults off a random model
            return ModelConfig(_preprocess(timm.data.resolve_model_data_config(timm.create_model(arch))),
                               "random", None)
        return ModelConfig(_preprocess(timm.data.resolve_data_config(pretrained_cfg=cfg.to_dict())),
                           _identity(cfg.architecture, cfg.tag), None)

    def build(self, model: str, weights: str | None, layer: str | None, pool: str) -> Backbone:
        return finish(model, load_net(model.removeprefix(PREFIX), weights), layer, pool)

    def infos(self) -> list[ModelInfo]:
        return [ModelInfo("timm:NAME", "timm", False,
                          "any timm model, e.g. timm:convnext_tiny.fb_in22k_ft_in1k (weights from the HF hub)")]


def _identity(architecture: str | None, tag: str | None) -> str:
    return f"timm:{architecture}" + (f".{tag}" if tag else "")


def load_net(arch: str, weights: str | None) -> Net:
    import timm
    import timm.data

    if not timm.is_model(arch):
        raise UnknownModelError(f"unknown timm model {arch!r}: see timm.list_models() for names")
    if weights is None:
        model = _pretrained(arch)
        cfg: dict = getattr(model, "pretrained_cfg")  # noqa: B009 -- timm's, unknown to nn.Module's type
        weights_id = _identity(cfg["architecture"], cfg.get("tag"))
    else:
        model = timm.create_model(arch)
        weights_id = apply_weights(model, f"timm:{arch}", weights)
    return Net(model, _preprocess(timm.data.resolve_model_data_config(model)), weights_id, trunk)


def _pretrained(arch: str) -> nn.Module:
    import huggingface_hub.constants
    import timm

    online = reachable(huggingface_hub.constants.ENDPOINT)
    try:
        with _hf_offline(not online):  # else huggingface_hub retries for ~a minute before failing
            return timm.create_model(arch, pretrained=True)
    except OSError as e:
        host = urlparse(huggingface_hub.constants.ENDPOINT).hostname
        reason = f"download failed: {first_line(e)}" if online else f"{host} can't be reached"
        raise unavailable(f"timm:{arch}", f"are not in {huggingface_hub.constants.HF_HUB_CACHE}", reason) from None
    except RuntimeError as e:  # e.g. "No pretrained weights exist for ..."
        raise BackboneError(f"timm:{arch}: {first_line(e)}") from None


@contextmanager
def _hf_offline(offline: bool) -> Iterator[None]:
    """huggingface_hub reads this flag at request time; offline it serves cached files and fails fast."""
    import huggingface_hub.constants

    saved = huggingface_hub.constants.HF_HUB_OFFLINE
    huggingface_hub.constants.HF_HUB_OFFLINE = saved or offline
    try:
        yield
    finally:
        huggingface_hub.constants.HF_HUB_OFFLINE = saved


def _preprocess(cfg: dict) -> Preprocess:
    size = cfg["input_size"][-1]
    return Preprocess(size, math.floor(size / cfg["crop_pct"]), cfg["interpolation"], cfg["mean"], cfg["std"])


def trunk(model: Any, pool: str) -> nn.Module:
    try:  # "avg" keeps the model's own default pooling (a ViT's class token, say)
        model.reset_classifier(0) if pool == "avg" else model.reset_classifier(0, global_pool=pool)
    except (TypeError, ValueError, AssertionError):
        raise BackboneError(f"{type(model).__name__} doesn't support pool={pool!r}; pass a layer instead") from None
    return model
