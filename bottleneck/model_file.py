"""An exported classifier file (`.onnx` or `.pt2`, from `bottleneck export-model`) opened and run:
its metadata (classes, the resize/crop rule, the extractor spec, the head's sha256), and
`predict` from it on image files, cropped exactly as extraction crops them.

A fused head's file (`fit --model a+b`) takes one crop per block, each its own network's resize and
crop (inputs `images_0`, `images_1`, ... in block order); its preprocess, extractor spec and input
entries are lists, one per block. A one-block file keeps one input, `images`, and single entries."""

from __future__ import annotations

import importlib
import json
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .decode import DecodeDataset, alternating_batches, resize_crop
from .errors import BottleneckError, FitError, one_line_reason
from .images import decode_rgb
from .locations import read
from .spec import ExtractorSpec, Preprocess
from .training import Prediction, expand_inputs

INSTALL_HINT = "pip install 'bottleneck-features[onnx]'"
SUFFIXES = (".onnx", ".pt2")
INPUT, OUTPUT, FEATURES = "images", "probabilities", "features"  # the graph's input and outputs (.onnx)
PT2_METADATA = "bottleneck.json"  # the extra file of a .pt2 that holds the metadata
# Metadata keys, each value JSON text (onnx metadata_props; one JSON object in a .pt2).
CLASSES, PREPROCESS, SPEC, HEAD, HEAD_SHA256 = ("classes", "preprocess", "extractor_spec", "head", "head_sha256")
INPUT_INFO, QUANTIZATION, VERSION = "input", "quantization", "bottleneck_version"
CROP_RULE = ("shorter side to resize_size (interpolation, antialiased), centre crop input_size x input_size; "
             "RGB uint8 (N, input_size, input_size, 3)")


def require(modules: Sequence[str], what: str) -> None:
    """Import `modules` or fail in one line that says what to install."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise BottleneckError(f"{what} needs {', '.join(missing)}: {INSTALL_HINT}")


def input_names(blocks: int) -> list[str]:
    """The graph's inputs: `images` for one block (as every file before fused heads), else one per block."""
    return [INPUT] if blocks == 1 else [f"{INPUT}_{i}" for i in range(blocks)]


def per_block(value: Any) -> list[Any]:
    """A metadata entry as one item per block: a fused file's lists, a one-block file's single value."""
    return value if isinstance(value, list) else [value]


@dataclass
class ExportedModel:
    """A classifier file ready to run: `run` takes uint8 (N, S, S, 3) crops, one batch per block (the
    same N images), returns (N, K) probabilities; `run_with_features` (an .onnx file) also the pooled
    features the head read, (N, D), the blocks' side by side."""

    path: Path
    metadata: dict[str, Any]
    run: Callable[..., np.ndarray]
    run_with_features: Callable[..., tuple[np.ndarray, np.ndarray]] | None = None

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.metadata[CLASSES]]

    @property
    def preprocesses(self) -> list[Preprocess]:
        return [Preprocess.from_dict(p) for p in per_block(self.metadata[PREPROCESS])]

    @property
    def specs(self) -> list[ExtractorSpec]:
        return [ExtractorSpec.from_dict(s) for s in per_block(self.metadata[SPEC])]


def open_model(path: Path, threads: int | None = None) -> ExportedModel:
    """A `.onnx` file run by onnxruntime, or a `.pt2` program run by torch."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise FitError(f"{path}: a model file is .onnx or .pt2 (written by `bottleneck export-model`)")
    if not path.is_file():
        raise FitError(f"{path}: no such model file; write one with `bottleneck export-model`")
    if path.suffix == ".pt2":
        return _open_pt2(path, threads)
    require(["onnxruntime"], "running an .onnx model")
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for a bad file
        raise FitError(f"{path}: not an ONNX model onnxruntime can load ({one_line_reason(exc)})") from None
    raw = session.get_modelmeta().custom_metadata_map
    metadata = _parsed(path, {k[len("bottleneck."):]: v for k, v in raw.items() if k.startswith("bottleneck.")})
    names = input_names(len(per_block(metadata[PREPROCESS])))

    def run(*images: np.ndarray) -> np.ndarray:
        return np.asarray(session.run([OUTPUT], dict(zip(names, images, strict=True)))[0])

    def run_with_features(*images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probabilities, features = session.run([OUTPUT, FEATURES], dict(zip(names, images, strict=True)))
        return np.asarray(probabilities), np.asarray(features)

    outputs = {output.name for output in session.get_outputs()}
    return ExportedModel(path, metadata, run, run_with_features if FEATURES in outputs else None)


def _open_pt2(path: Path, threads: int | None) -> ExportedModel:
    import torch

    extra = {PT2_METADATA: ""}
    try:
        with warnings.catch_warnings():  # torch's note about tensors split across devices: all are on the CPU
            warnings.simplefilter("ignore", UserWarning)
            program = torch.export.load(str(path), extra_files=extra)
    except Exception as exc:  # a truncated or foreign archive
        raise FitError(f"{path}: not a torch.export program torch can load ({one_line_reason(exc)})") from None
    try:
        fields = json.loads(extra[PT2_METADATA] or "null")
    except json.JSONDecodeError:
        fields = None
    if not isinstance(fields, dict):
        raise FitError(f"{path}: no bottleneck metadata in this .pt2; write it with `bottleneck export-model`")
    metadata = _parsed(path, {k: json.dumps(v) for k, v in fields.items()})
    module = program.module()

    def run(*images: np.ndarray) -> np.ndarray:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads or previous)
        try:
            with torch.no_grad():
                return np.asarray(module(*(torch.from_numpy(np.ascontiguousarray(x)) for x in images)).numpy())
        finally:
            torch.set_num_threads(previous)

    return ExportedModel(path, metadata, run)


def _parsed(path: Path, raw: dict[str, str]) -> dict[str, Any]:
    try:
        metadata = {key: json.loads(value) for key, value in raw.items()}
        for preprocess in per_block(metadata[PREPROCESS]):
            Preprocess.from_dict(preprocess)
        if not isinstance(metadata[CLASSES], list):
            raise TypeError("classes")
    except (KeyError, TypeError, ValueError, BottleneckError) as exc:
        raise FitError(f"{path}: its metadata lacks {exc} (not written by `bottleneck export-model`?)") from None
    return metadata


def crop(path: Path | str, preprocess: Preprocess) -> np.ndarray:
    """uint8 (S, S, 3): the crop extraction makes of the image at `path` (a file, URL or shard member:
    `locations`), draft-mode JPEG and resize_crop as extract decodes it."""
    tensor = resize_crop(decode_rgb(read(str(path)), draft_to=preprocess.resize_size), preprocess)
    return np.ascontiguousarray(tensor.permute(1, 2, 0).numpy())


def crop_batches(paths: Sequence[Path | str], preprocess: Preprocess, batch_size: int = 32, threads: int | None = None
                 ) -> Iterator[tuple[list[int], np.ndarray | None, list[tuple[int, str]]]]:
    """(indices, uint8 (B, S, S, 3) crops, [(index, why skipped)]) for `paths`, a batch at a time:
    extraction's own decode (threads taking turns with the network), as NHWC arrays."""
    dataset = DecodeDataset([("", str(p)) for p in paths], preprocess)
    for indices, batch, bad in alternating_batches(dataset, batch_size, threads or os.cpu_count() or 1):
        # collate stacks (B, H, W, C) and views it as NCHW: permuted back, it is that buffer again
        yield indices, None if batch is None else batch.permute(0, 2, 3, 1).numpy(), bad


def block_batches(paths: Sequence[Path | str], preprocesses: Sequence[Preprocess], batch_size: int = 32,
                  threads: int | None = None
                  ) -> Iterator[tuple[list[int], list[np.ndarray] | None, list[tuple[int, str]]]]:
    """`crop_batches` once per block, in step: (indices, one uint8 batch per block, [(index, why
    skipped)]). Each block decodes the files itself: its JPEG draft follows its own resize_size, as
    its extraction's did. An image any block could not read is skipped."""
    streams = [crop_batches(paths, p, batch_size, threads) for p in preprocesses]
    for parts in zip(*streams, strict=True):
        reasons = {i: why for _, _, bad in reversed(parts) for i, why in bad}  # the first block's reason
        indices = [i for i in parts[0][0] if i not in reasons]
        batches = [batch[[k for k, i in enumerate(got) if i not in reasons]] for got, batch, _ in parts
                   if batch is not None]
        bad = sorted(reasons.items())
        yield indices, batches if indices else None, bad


def predict_with_model(inputs: Sequence[Path], model_file: Path, *, top_k: int = 1,
                       progress: Callable[[str, int, int], None] | None = None
                       ) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """Predictions for every image in `inputs` (files or folders) from an exported model, and the
    skipped files: the same records as `training.predict_files`, no cache and no head file."""
    if top_k < 1:
        raise FitError(f"--top-k {top_k}: must be at least 1")
    model = open_model(model_file)
    files = expand_inputs(inputs)
    classes, predictions, skipped = model.classes, [], []
    for indices, batches, bad in block_batches(files, model.preprocesses):
        skipped += [(str(files[i]), why) for i, why in bad]
        if batches is not None:
            for i, row in zip(indices, model.run(*batches), strict=True):
                order = np.argsort(-row, kind="stable")[:top_k]
                predictions.append(Prediction(str(files[i]), [classes[j] for j in order], [float(row[j]) for j in order]))
        if progress:
            progress("predict", len(predictions) + len(skipped), len(files))
    return predictions, skipped

