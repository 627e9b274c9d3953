"""The model sources, registered in the order names resolve: models registered with `register_model`
(always first), the packaged offline weights, raw pixels, `timm:NAME`, then every torchvision classifier.

Importing this package registers them; it is the registry's public face.
"""

from ..registry import (DEFAULT_MODEL, Backbone, ModelInfo, build, list_models, register_model,
                                 register_source, resolve_spec)
from .packaged import PackagedSource
from ._common import weights_cache_dir
from .raw import RawSource, is_raw_name
from .timm_models import TimmSource
from .torchvision_models import TorchvisionSource

for _source in (PackagedSource(), RawSource(), TimmSource(), TorchvisionSource()):
    register_source(_source)


def load_backbone(model: str, weights: str | None = None, layer: str | None = None, pool: str = "avg") -> Backbone:
    """Build `model` now (for use in Python); `extract` resolves a spec and builds only when needed."""
    return build(resolve_spec(model, weights=weights, layer=layer, pool=pool))

__all__ = ["DEFAULT_MODEL", "Backbone", "ModelInfo", "build", "is_raw_name", "list_models", "load_backbone",
           "register_model",
           "resolve_spec", "weights_cache_dir"]
