"""The model sources, registered in the order names resolve: models registered with `register_model`
(always first), the packaged offline weights, raw pixels, `timm:NAME`, then every torchvision classifier.

Importing this package registers them; it is the registry's public face.
"""

from torch import nn

from ..errors import SpecError
from ..registry import (
    DEFAULT_MODEL,
    Backbone,
    ModelInfo,
    build,
    list_models,
    register_model,
    register_source,
    registration_scope,
    resolve_spec,
)
from ..spec import ExtractorSpec
from ._common import split_tail, weights_cache_dir
from .packaged import PackagedSource
from .raw import RawSource, is_raw_name
from .timm_models import TimmSource
from .torchvision_models import TorchvisionSource

for _source in (PackagedSource(), RawSource(), TimmSource(), TorchvisionSource()):
    register_source(_source)


def load_backbone(model: str, weights: str | None = None, layer: str | None = None, pool: str = "avg") -> Backbone:
    """Build `model` now (for use in Python); `extract` resolves a spec and builds only when needed."""
    return build(resolve_spec(model, weights=weights, layer=layer, pool=pool))


def build_tail(spec: ExtractorSpec) -> tuple[nn.Module, tuple[int, ...]]:
    """For a `--pool none` spec (a layer's whole map): the network after that layer, with its
    pretrained weights, as a module from the map to the model's features, and the map's shape."""
    if spec.layer is None:
        raise SpecError(f"{spec.label()}: a fine-tuned tail starts at a layer; name one")
    trunk = build(spec.replace(layer=None, pool="avg", feature_dim=None, precision="fp32")).model
    return split_tail(trunk, spec.layer, spec.preprocess.input_size)


__all__ = ["DEFAULT_MODEL", "Backbone", "ModelInfo", "build", "build_tail", "is_raw_name", "list_models",
           "load_backbone", "register_model", "registration_scope", "resolve_spec", "weights_cache_dir"]
