"""One registry of model sources, in the style of timm's.

Each source (the packaged offline weights, raw pixels, `timm:NAME`, torchvision, models registered
with `register_model`) registers itself here with a `ModelConfig` per model: the preprocessing and
weights identity its default weights carry, like timm's `pretrained_cfg`. `resolve_spec` turns a
model name and options into an `ExtractorSpec` from that config alone (no network is built, and the
packaged and raw sources import neither torchvision nor timm); `build` turns a spec back into the
network that makes exactly its vectors. This module imports no source and no torch: sources import it.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import BackboneError, UnknownModelError, WeightsUnavailableError
from .images import sha256_file
from .spec import AUTO, ExtractorSpec, Preprocess

if TYPE_CHECKING:
    from torch import nn

DEFAULT_MODEL = "efficientnet_lite0"
OFFLINE_HINT = "efficientnet_lite0, efficientnet_lite1, efficientnet_lite2, squeezenet1_1, raw<N>"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    source: str  # "package" | "torchvision" | "timm" | "pixels" | "custom"
    offline: bool  # usable right now without a download
    note: str


@dataclass(frozen=True)
class ModelConfig:
    """What a model's default weights carry, known without building the network."""

    preprocess: Preprocess
    weights: str  # identity of the default weights
    feature_dim: int | None  # width of the default (penultimate) features; None: known once built


@dataclass
class Backbone:
    """A built extractor: `model` maps a normalised float (B, 3, S, S) batch to (B, D) vectors; `spec`
    says exactly which vectors (its feature_dim is set)."""

    model: nn.Module
    spec: ExtractorSpec

    @property
    def name(self) -> str:
        return self.spec.model

    @property
    def preprocess(self) -> Preprocess:
        return self.spec.preprocess

    @property
    def feature_dim(self) -> int:
        assert self.spec.feature_dim is not None
        return self.spec.feature_dim

    def using(self, **changes: Any) -> Backbone:
        """The same network under a spec with `changes` (precision, dtype, decode, ...)."""
        return dataclasses.replace(self, spec=self.spec.replace(**changes))


class Source(ABC):
    """A family of models. `weights` in `build` is None (the default pretrained weights), "random"
    (random init) or the path of a state_dict file."""

    name: str

    @abstractmethod
    def owns(self, model: str) -> bool: ...

    @abstractmethod
    def config(self, model: str) -> ModelConfig: ...

    @abstractmethod
    def build(self, model: str, weights: str | None, layer: str | None, pool: str) -> Backbone: ...

    def check(self, model: str, weights: str | None, layer: str | None, pool: str) -> None:  # noqa: B027
        """Refuse options this model can't take, before any work (a hook: by default every option goes)."""

    def infos(self) -> list[ModelInfo]:
        return []


_SOURCES: list[Source] = []


def register_source(source: Source, first: bool = False) -> None:
    """Add a source; names resolve in registration order (`first` puts it before the others)."""
    _SOURCES.insert(0, source) if first else _SOURCES.append(source)


def source_for(model: str) -> Source:
    for source in _SOURCES:
        if source.owns(model):
            return source
    raise UnknownModelError(
        f"unknown model {model!r}: see `bottleneck models` (torchvision names, {OFFLINE_HINT}, or timm:NAME)")


def resolve_spec(model: str, *, weights: str | None = None, layer: str | None = None, pool: str = "avg",
                 precision: str = AUTO, dtype: str = "float32", decode: str = "pil") -> ExtractorSpec:
    """The spec of `model` with these options, without building it. `weights`: None for the default
    pretrained weights, "random", or a state_dict file (identified by its sha256). `precision` auto
    is decided where the vectors are computed (`extraction`), on that machine; pixels have none."""
    source = source_for(model)
    source.check(model, weights, layer, pool)
    config = source.config(model)
    weights_id, weights_file = config.weights, None
    if config.weights == "none":  # raw pixels (ExtractorSpec.pixels): no network runs, so no precision
        if precision not in (AUTO, "fp32"):
            raise BackboneError(f"{model} is raw pixels: no network runs, so it takes no --precision")
        precision = "fp32"
    elif weights == "random":
        weights_id = "random"
    elif weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise BackboneError(f"weights file not found: {path} (weights are the default, 'random' or a state_dict file)")
        weights_id, weights_file = f"sha256:{sha256_file(path)}", str(path.resolve())
    return ExtractorSpec(model, weights_id, config.preprocess, config.feature_dim if layer is None else None, layer,
                         pool, precision, dtype, decode, weights_file=weights_file)


def build(spec: ExtractorSpec, weights_file: str | None = None) -> Backbone:
    """The network that makes `spec`'s vectors. `weights_file` overrides the file the spec remembers
    (a head's weights that have moved); it must have the same sha256."""
    source = source_for(spec.model)
    if weights_file is not None or spec.weights == "random":
        weights = weights_file or "random"
    elif spec.weights == source.config(spec.model).weights:
        weights = None
    elif spec.weights_file and Path(spec.weights_file).is_file():
        weights = spec.weights_file
    else:
        raise WeightsUnavailableError(
            f"{spec.label()}: its vectors were made with weights {spec.weights}"
            + (f" from {spec.weights_file}, which is gone" if spec.weights_file else "")
            + "; pass --weights FILE with that file")
    backbone = source.build(spec.model, weights, spec.layer, spec.pool)
    made = backbone.spec
    if made.weights != spec.weights:
        raise WeightsUnavailableError(f"{spec.label()}: {weights} holds weights {made.weights}, not the {spec.weights} "
                                      "its vectors were made with; pass the right --weights FILE")
    if made.preprocess != spec.preprocess or spec.feature_dim not in (None, made.feature_dim):
        raise BackboneError(f"{spec.label()}: the model built now differs from the one its vectors were made with "
                            f"(preprocessing or width; another library version?); re-extract under a new cache")
    return backbone.using(precision=spec.precision, dtype=spec.dtype, decode=spec.decode,
                          weights_file=spec.weights_file if weights_file is None else weights_file)


def list_models() -> list[ModelInfo]:
    """What each source offers; a name two sources offer is listed as the one it resolves to."""
    infos: dict[str, ModelInfo] = {}
    for source in _SOURCES:
        for info in source.infos():
            infos.setdefault(info.name, info)
    return list(infos.values())


# --- models registered in code ----------------------------------------------------------------------


class _Registered(Source):
    """A model registered with `register_model`; its config is read from one default build."""

    name = "custom"

    def __init__(self, model: str, factory: Callable[..., Backbone]) -> None:
        self.model, self.factory = model, factory
        self._config: ModelConfig | None = None

    def owns(self, model: str) -> bool:
        return model == self.model

    def config(self, model: str) -> ModelConfig:
        if self._config is None:
            spec = self.factory(weights=None, layer=None, pool="avg").spec
            self._config = ModelConfig(spec.preprocess, spec.weights, spec.feature_dim)
        return self._config

    def build(self, model: str, weights: str | None, layer: str | None, pool: str) -> Backbone:
        return self.factory(weights=weights, layer=layer, pool=pool)

    def infos(self) -> list[ModelInfo]:
        return [ModelInfo(self.model, "custom", True, "registered with register_model")]


def register_model(name: str, factory: Callable[..., Backbone]) -> None:
    """Make `name` loadable, ahead of every other source; `factory(weights=, layer=, pool=)` returns
    the Backbone. Registering a name again replaces it."""
    _SOURCES[:] = [s for s in _SOURCES if not (isinstance(s, _Registered) and s.model == name)]
    register_source(_Registered(name, factory), first=True)


@contextmanager
def registration_scope() -> Iterator[None]:
    """Models registered inside the block are forgotten when it ends (a test, a notebook trying a
    model), and a name registered again inside resolves as before afterwards."""
    before = list(_SOURCES)
    try:
        yield
    finally:
        _SOURCES[:] = before
