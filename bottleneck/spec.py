"""`ExtractorSpec`: the one value that names an extractor everywhere (store, sidecar, compare, predict).

A spec holds everything that changes the stored vectors: the model, the identity of its weights,
the layer and pooling, the preprocessing those weights expect, the autocast precision, the storage
dtype and the decoder. Its `fingerprint()` names the cache group of its vectors. It is plain data
(no torch): a cached rerun, `fit`, `compare` and `predict` all work from it without building a
network, and `registry.build` turns it back into exactly that network when vectors are missing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from .errors import SpecError

POOLS = ("avg", "max", "none")  # none: a layer's whole map, flattened (what a fine-tuned tail reads)
PRECISIONS = ("fp32", "fp16", "bf16")  # autocast dtype of the forward pass
AUTO = "auto"  # precision not decided yet: the machine that extracts decides (runtime.auto_precision)
STORAGE_DTYPES = ("float32", "float16")
DECODERS = ("pil", "torchvision")  # PIL on CPU threads/workers | torchvision.io on the model's device
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """Shorter side to `resize_size`, centre crop `input_size`, then (x / 255 - mean) / std."""

    input_size: int
    resize_size: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise SpecError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, not {self.interpolation!r}")
        # Plain ints and floats, so the fingerprint doesn't depend on how the numbers came in.
        object.__setattr__(self, "input_size", int(self.input_size))
        object.__setattr__(self, "resize_size", int(self.resize_size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        return cls(d["input_size"], d["resize_size"], d["interpolation"], tuple(d["mean"]), tuple(d["std"]))


@dataclass(frozen=True)
class ExtractorSpec:
    model: str  # registry name: "efficientnet_lite0", "resnet50", "timm:convnext_tiny", "raw32", ...
    weights: str  # identity: "sha256:<hex>" of a file, "torchvision:<Enum>.<name>", "timm:<arch>.<tag>", "random"
    preprocess: Preprocess
    feature_dim: int | None = None  # None until known: a layer's width is only known once its net is built
    layer: str | None = None  # graph node read instead of the penultimate features
    pool: str = "avg"
    precision: str = AUTO
    dtype: str = "float32"
    decode: str = "pil"
    augment: str | None = None  # augment.Augment.canonical(): vectors of augmented views (see augment.py)
    # Where file weights were read from: a hint for rebuilding, not part of the identity.
    weights_file: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for option, value, allowed in (("pool", self.pool, POOLS), ("precision", self.precision, (*PRECISIONS, AUTO)),
                                       ("dtype", self.dtype, STORAGE_DTYPES), ("decode", self.decode, DECODERS)):
            if value not in allowed:
                raise SpecError(f"--{option} {value}: use one of {', '.join(allowed)}")
        if self.pool == "none" and self.layer is None:
            raise SpecError(f"{self.model}: --pool none keeps a layer's whole feature map; name the layer with --layer")

    def replace(self, **changes: Any) -> ExtractorSpec:
        return dataclasses.replace(self, **changes)

    @property
    def pixels(self) -> bool:
        """Raw pixels, not a network's embedding: a model without weights (the registry's "none")."""
        return self.weights == "none"

    @property
    def embedding(self) -> bool:
        """A network's pooled vectors of the images as they are: not raw pixels, augmented views or whole maps."""
        return not (self.pixels or self.augment or self.pool == "none")

    @property
    def complete(self) -> bool:
        """Whether the vectors are named yet: the width known and the precision decided."""
        return self.feature_dim is not None and self.precision != AUTO

    def fingerprint(self) -> str:
        """`<model>-<16 hex>`: a readable name that changes whenever the vectors would."""
        if self.feature_dim is None:
            raise SpecError(f"{self.model}: the feature width is not known until the model is built")
        if self.precision == AUTO:
            raise SpecError(f"{self.model}: precision auto is decided by the machine that extracts")
        return fingerprint(self._identity())

    def _identity(self) -> dict[str, Any]:
        # The key names and layout of the first release, so caches it wrote keep their fingerprints.
        identity: dict[str, Any] = {
            "name": self.model, "weights_id": self.weights, "layer": self.layer, "pool": self.pool,
            "preprocess": self.preprocess.to_dict(), "feature_dim": self.feature_dim,
            "precision": self.precision, "dtype": self.dtype,
        }
        if self.decode != "pil":
            identity["decode"] = self.decode
        if self.augment:
            identity["augment"] = self.augment
        return identity

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["preprocess"] = self.preprocess.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | str) -> ExtractorSpec:
        """From `to_dict()`, or from the identity dict the first release stored (JSON text or dict)."""
        if isinstance(d, str):
            d = json.loads(d)
        if not isinstance(d, dict):
            raise SpecError(f"not an extractor spec (a JSON {type(d).__name__}, not an object)")
        try:
            return cls(
                model=d["model"] if "model" in d else d["name"],
                weights=d["weights"] if "weights" in d else d["weights_id"],
                preprocess=Preprocess.from_dict(d["preprocess"]),
                feature_dim=None if d.get("feature_dim") is None else int(d["feature_dim"]),
                layer=d.get("layer") or None, pool=d.get("pool", "avg"), precision=d.get("precision", "fp32"),
                dtype=d.get("dtype", "float32"), decode=d.get("decode", "pil"), augment=d.get("augment") or None,
                weights_file=d.get("weights_file"),
            )
        except (KeyError, TypeError) as exc:
            raise SpecError(f"not an extractor spec (missing {exc})") from None

    def label(self) -> str:
        """A name for people: the model, then what differs from its defaults, e.g. `resnet50[layer3,max]`."""
        parts = [self.layer] if self.layer else []
        if self.pool != "avg":
            parts.append(self.pool)
        if self.weights == "random":
            parts.append("random")
        elif self.weights_file:
            parts.append(f"weights={PurePath(self.weights_file).name}")
        parts += [v for v, default in ((self.precision, "fp32"), (self.dtype, "float32"), (self.decode, "pil"))
                  if v != default and v != AUTO]
        if self.augment:
            parts.append(f"augment={self.augment}")
        return f"{self.model}[{','.join(parts)}]" if parts else self.model


def fingerprint(identity: dict[str, Any]) -> str:
    """A readable, collision-safe name for a JSON-able identity dict."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
    name = re.sub(r"[^\w.\-]+", "_", str(identity.get("name", "extractor")))
    return f"{name}-{digest[:16]}"
