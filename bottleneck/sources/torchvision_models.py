"""Every torchvision classification model by name, with its DEFAULT weights and their transforms."""

from __future__ import annotations

from functools import cache
from urllib.parse import urlparse

from torch import nn

from ..errors import BackboneError
from ..registry import Backbone, ModelConfig, ModelInfo, Source
from ..spec import Preprocess
from ._common import (
    Net,
    Pooled,
    apply_weights,
    finish,
    first_line,
    reachable,
    unavailable,
    url_filename,
    weights_cache_dir,
)


@cache
def _names() -> tuple[str, ...]:
    import torchvision.models as tvm

    return tuple(sorted(tvm.list_models(module=tvm)))


def _default(name: str):  # -> torchvision.models.WeightsEnum
    import torchvision.models as tvm

    return tvm.get_model_weights(name).DEFAULT


def _preprocess(default) -> Preprocess:
    t = default.transforms()
    return Preprocess(t.crop_size[0], t.resize_size[0], t.interpolation.value, tuple(t.mean), tuple(t.std))


def weights_identity(default) -> str:
    return f"torchvision:{type(default).__name__}.{default.name}"


class TorchvisionSource(Source):
    name = "torchvision"

    def owns(self, model: str) -> bool:
        return model in _names()

    def config(self, model: str) -> ModelConfig:
        default = _default(model)
        return ModelConfig(_preprocess(default), weights_identity(default), None)

    def build(self, model: str, weights: str | None, layer: str | None, pool: str) -> Backbone:
        return finish(model, load_net(model, weights), layer, pool)

    def infos(self) -> list[ModelInfo]:
        infos, cache_dir = [], weights_cache_dir()
        for name in _names():
            w = _default(name)
            top1 = w.meta["_metrics"]["ImageNet-1K"]["acc@1"]
            infos.append(ModelInfo(name, "torchvision", (cache_dir / url_filename(w.url)).is_file(),
                                   f"{w.name}, {w.transforms().crop_size[0]}px, ImageNet top-1 {top1:.1f}"))
        return infos


def load_net(name: str, weights: str | None) -> Net:
    """The full classifier with its weights: the DEFAULT ones (downloaded once), random, or a file."""
    import torchvision.models as tvm

    default = _default(name)
    model = tvm.get_model(name, **_kwargs(name, default))
    if weights is None:
        model.load_state_dict(_state_dict(name, default))
        weights_id = weights_identity(default)
    else:
        weights_id = apply_weights(model, name, weights)
    if name in ("inception_v3", "googlenet"):  # aux heads: training only; without them forward returns a tensor
        model.aux_logits = False
        for aux in ("AuxLogits", "aux1", "aux2"):
            if hasattr(model, aux):
                setattr(model, aux, None)
    return Net(model, _preprocess(default), weights_id, trunk)


def _kwargs(name: str, default) -> dict:
    """Build the architecture its DEFAULT weights expect (what torchvision's builders set when given them)."""
    kwargs: dict = {"num_classes": len(default.meta["categories"])}
    if name in ("inception_v3", "googlenet"):
        kwargs |= {"transform_input": True, "aux_logits": True, "init_weights": False}
    elif name.startswith("vit_"):
        kwargs["image_size"] = default.meta["min_size"][0]
    elif name.startswith("maxvit_"):
        kwargs["input_size"] = default.meta["min_size"]
    return kwargs


def trunk(model: nn.Module, pool: str) -> nn.Module:
    """Replace the last nn.Linear by Identity; squeezenet (conv head) becomes `features` + global pool."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        return Pooled(model.get_submodule("features"), pool)
    if pool != "avg":
        raise BackboneError(
            f"pool={pool!r} needs a spatial feature map: {type(model).__name__}'s penultimate features come from "
            "its own pooling; pass a layer (e.g. the last conv block) to pool it yourself"
        )
    parent, _, child = linears[-1].rpartition(".")
    setattr(model.get_submodule(parent), child, nn.Identity())
    return model


def _state_dict(name: str, default) -> dict:
    cache_dir, url = weights_cache_dir(), default.url
    where = f"{url_filename(url)} are not in {cache_dir}"
    if not (cache_dir / url_filename(url)).is_file() and not reachable(url):
        raise unavailable(name, where, f"{urlparse(url).hostname} can't be reached")
    try:
        return default.get_state_dict(progress=True, check_hash=True)
    except OSError as e:
        raise unavailable(name, where, f"download failed: {first_line(e)}") from None
