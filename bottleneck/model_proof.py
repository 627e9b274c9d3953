"""The proof at export: an exported classifier run on its dataset's images against the same torch
fp32 backbone + the head's `predict_proba` on the same uint8 crops (same top-1, probabilities within
1e-4), against `predict` on the cached vectors (top-1), and, for an int8 file, its held-out accuracy,
size and latency beside the fp32 file's. A fused head's blocks each take their own crops, and their
features, torch's or cached, go side by side as `predict` puts them."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .decode import normalize
from .errors import FitError
from .model_file import ExportedModel, block_batches, crop
from .registry import Backbone
from .shards import image_addresses
from .spec import Preprocess
from .store import Features, load_fused
from .training import split_indices

TOLERANCE = 1e-4  # largest probability difference from predict_proba, fp32
CALIBRATION_IMAGES = 128
Progress = Callable[..., None]


@dataclass
class Rows:
    """The dataset the head was fitted on, its training rows and its held-out rows (fit's split)."""

    dataset: str
    features: Features  # a fused head's: the blocks' vectors side by side, on the images all blocks have
    train: np.ndarray
    test: np.ndarray
    addresses: list[str]  # where each image's bytes are (shards.image_addresses)
    precision: str  # how the cached vectors were computed (each block's, where they differ)


def dataset_rows(cache: Path, meta: dict[str, Any], fingerprints: Sequence[str]) -> Rows:
    """The head's dataset as `fit` read it: one extraction's rows, or a fused head's blocks side by side."""
    dataset = meta.get("dataset")
    if not isinstance(dataset, str):
        raise FitError("the head's sidecar names no dataset to check it on; pass --no-check")
    features, specs, _ = load_fused(cache, dataset, fingerprints)
    split = meta.get("split") or {}
    train, val, test = split_indices(features, float(split.get("test_size", 0.25)), int(split.get("seed", 0)))
    return Rows(dataset, features, np.concatenate([train, val]).astype(int), test,
                image_addresses(cache, dataset, features.paths), "+".join(dict.fromkeys(s.precision for s in specs)))


def calibration_crops(rows: Rows, preprocesses: Sequence[Preprocess], limit: int = CALIBRATION_IMAGES
                      ) -> list[np.ndarray]:
    """uint8 crops of up to `limit` training images (a seeded draw), for int8 calibration: one batch
    per block, each cropped by that block's preprocess."""
    paths = rows.addresses
    crops = []
    for i in np.random.default_rng(0).permutation(rows.train):
        try:
            crops.append([crop(paths[i], preprocess) for preprocess in preprocesses])
        except Exception:  # a training image gone or unreadable since: calibrate on the others
            continue
        if len(crops) == limit:
            break
    if not crops:
        raise FitError(f"int8 calibration needs the training images of {rows.dataset!r}; none could be read "
                       f"under {rows.features.root}")
    return [np.stack(block) for block in zip(*crops, strict=True)]


@dataclass
class Check:
    dataset: str
    images: int  # compared
    missing: int  # dataset images that could not be read now
    max_difference: float  # largest |file - (torch fp32 backbone + predict_proba)| over every image and class
    same_top1: int  # images whose top-1 is the torch fp32 backbone + head's
    head_difference: float | None  # largest |file - predict_proba(the file's own features)|; None: .pt2
    head_same_top1: int | None
    cached_same_top1: int  # images whose top-1 is predict's on the cached vectors
    cached_precision: str  # how the cached vectors were computed
    trees: int | None = None  # a tree ensemble's size: its probabilities move in steps of 1/trees
    moved: int = 0  # images whose probabilities differ by more than the tolerance end to end

    @property
    def passed(self) -> bool:
        head = self.head_difference is None or (self.head_difference <= TOLERANCE and self.head_same_top1 == self.images)
        end_to_end = self.max_difference <= TOLERANCE or self.trees is not None
        return self.images > 0 and self.same_top1 == self.images and head and end_to_end

    def summary(self) -> str:
        missing = f" ({self.missing} unreadable now)" if self.missing else ""
        lines = [f"check on {self.images} images of {self.dataset}{missing}, against the torch fp32 backbone + head: "
                 f"top-1 {self.same_top1}/{self.images}, largest probability difference {self.max_difference:.1e} "
                 f"(tolerance {TOLERANCE:.0e})"]
        if self.trees and self.moved:
            images = "1 image" if self.moved == 1 else f"{self.moved} images"
            lines[0] += (f"; {images} moved by a few of the {self.trees} trees' votes (a feature within float "
                         "rounding of a split)")
        if self.head_difference is not None:
            lines.append(f"the head in the file, on the file's own features: top-1 {self.head_same_top1}/{self.images}, "
                         f"largest difference from predict_proba {self.head_difference:.1e}")
        lines.append(f"top-1 as predict on the cached {self.cached_precision} vectors: "
                     f"{self.cached_same_top1}/{self.images}")
        return "\n".join(lines)

    def failure(self) -> str:
        return "it differs from predict: " + self.summary().replace("\n", "; ")


@dataclass
class QuantCheck:
    calibration: int
    test_images: int
    accuracy_fp32: float
    accuracy_int8: float
    same_top1: int  # images whose int8 top-1 is the fp32 file's
    images: int
    bytes_fp32: int
    bytes_int8: int
    ms_fp32: float  # one image, median
    ms_int8: float

    def summary(self) -> str:
        return (f"int8: held-out accuracy {self.accuracy_fp32:.3f} → {self.accuracy_int8:.3f} "
                f"({self.accuracy_int8 - self.accuracy_fp32:+.3f} on {self.test_images} images; top-1 as fp32 on "
                f"{self.same_top1}/{self.images}), size {self.bytes_fp32 / 1e6:.1f} → {self.bytes_int8 / 1e6:.1f} MB "
                f"({self.bytes_int8 / self.bytes_fp32:.2f}x), one image {self.ms_fp32:.1f} → {self.ms_int8:.1f} ms "
                f"({self.ms_fp32 / self.ms_int8:.2f}x as fast); calibrated on {self.calibration} training images")


def torch_reference(estimator: Any, backbones: Sequence[Backbone]) -> Callable[..., np.ndarray]:
    """Crops (one batch per block) → the head's predict_proba on the features of the torch backbones
    in fp32, side by side, normalised by the package's own `decode.normalize`: what `predict`
    computes, without the cache."""
    def features(backbone: Backbone, batch: np.ndarray) -> np.ndarray:
        x = normalize(torch.from_numpy(batch).permute(0, 3, 1, 2), backbone.preprocess)
        return np.asarray(backbone.model.eval()(x.float()).float().numpy())

    def reference(*batches: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            X = np.concatenate([features(b, x) for b, x in zip(backbones, batches, strict=True)], axis=1)
        return np.asarray(estimator.predict_proba(X))

    return reference


def check_models(rows: Rows, estimator: Any, backbones: Sequence[Backbone], models: dict[str, ExportedModel], *,
                 verify: bool = True, calibration: int = 0, trees: int | None = None,
                 progress: Progress | None = None) -> tuple[Check | None, QuantCheck | None]:
    """Run `models` ("fp32", and "int8" when quantised) on every image of the dataset; `verify`: also
    the torch reference and the head on the file's own features, for the Check. `trees`: the size of
    a tree ensemble head, whose probabilities may move by whole votes end to end."""
    paths, reference = rows.addresses, torch_reference(estimator, backbones)
    n, k = len(paths), len(estimator.classes_)
    names = [*models, *(["reference", "head"] if verify else [])]
    outputs = {name: np.full((n, k), np.nan) for name in names}
    first: list[np.ndarray] | None = None
    own_features, done = verify and models["fp32"].run_with_features is not None, 0
    for indices, batches, bad in block_batches(paths, models["fp32"].preprocesses):
        if batches is not None:
            first = [batch[:1] for batch in batches] if first is None else first
            for name, model in models.items():
                if name == "fp32" and own_features and model.run_with_features is not None:
                    outputs[name][indices], features = model.run_with_features(*batches)
                    outputs["head"][indices] = estimator.predict_proba(features)
                else:
                    outputs[name][indices] = model.run(*batches)
            if verify:
                outputs["reference"][indices] = reference(*batches)
        done += len(indices) + len(bad)
        if progress:
            progress("check", done, n)
    seen = np.flatnonzero(~np.isnan(outputs["fp32"][:, 0]))
    if len(seen) == 0:
        raise FitError(f"none of the {n} images of {rows.dataset!r} could be read under {rows.features.root}: "
                       "the check needs them (pass --no-check to export unchecked)")
    check = _check(rows, estimator, outputs, seen, own_features, trees) if verify else None
    quantized = None
    if "int8" in models:
        assert first is not None
        quantized = _quant_check(rows, outputs, seen, models, first, np.asarray(estimator.classes_), calibration)
    return check, quantized


def _check(rows: Rows, estimator: Any, outputs: dict[str, np.ndarray], seen: np.ndarray, own_features: bool,
           trees: int | None) -> Check:
    file, reference = outputs["fp32"][seen], outputs["reference"][seen]
    top1 = file.argmax(axis=1)
    cached = np.asarray(estimator.predict_proba(rows.features.X[seen])).argmax(axis=1)
    head = outputs["head"][seen] if own_features else None
    difference = np.abs(file - reference).max(axis=1)
    return Check(rows.dataset, len(seen), len(rows.features.paths) - len(seen), float(difference.max()),
                 int((top1 == reference.argmax(axis=1)).sum()),
                 None if head is None else float(np.abs(file - head).max()),
                 None if head is None else int((top1 == head.argmax(axis=1)).sum()), int((top1 == cached).sum()),
                 rows.precision, trees, int((difference > TOLERANCE).sum()))


def _quant_check(rows: Rows, outputs: dict[str, np.ndarray], seen: np.ndarray, models: dict[str, ExportedModel],
                 one: list[np.ndarray], classes: np.ndarray, calibration: int) -> QuantCheck:
    test = np.intersect1d(rows.test, seen)
    labels = rows.features.labels[test]
    accuracy = {name: float((classes[outputs[name][test].argmax(axis=1)] == labels).mean()) if len(test) else
                float("nan") for name in ("fp32", "int8")}
    same = int((outputs["int8"][seen].argmax(axis=1) == outputs["fp32"][seen].argmax(axis=1)).sum())
    return QuantCheck(calibration, len(test), accuracy["fp32"], accuracy["int8"], same, len(seen),
                      models["fp32"].path.stat().st_size, models["int8"].path.stat().st_size,
                      latency_ms(models["fp32"], *one), latency_ms(models["int8"], *one))


def latency_ms(model: ExportedModel, *one: np.ndarray, runs: int = 20) -> float:
    """The median time of `runs` calls on one image (its crop for each block), after 3 warm-up calls."""
    for _ in range(3):
        model.run(*one)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model.run(*one)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1000
