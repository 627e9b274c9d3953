"""An exported classifier file (`.onnx` or `.pt2`, from `bottleneck export-model`) opened and run:
its metadata (classes, the resize/crop rule, the extractor spec, the head's sha256), and
`predict` from it on image files, cropped exactly as extraction crops them."""

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


@dataclass
class ExportedModel:
    """A classifier file ready to run: `run` takes uint8 (N, S, S, 3) crops, returns (N, K) probabilities;
    `run_with_features` (an .onnx file) also the pooled features the head read, (N, D)."""

    path: Path
    metadata: dict[str, Any]
    run: Callable[[np.ndarray], np.ndarray]
    run_with_features: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.metadata[CLASSES]]

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess.from_dict(self.metadata[PREPROCESS])

    @property
    def spec(self) -> ExtractorSpec:
        return ExtractorSpec.from_dict(self.metadata[SPEC])


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

    def run(images: np.ndarray) -> np.ndarray:
        return np.asarray(session.run([OUTPUT], {INPUT: images})[0])

    def run_with_features(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probabilities, features = session.run([OUTPUT, FEATURES], {INPUT: images})
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

    def run(images: np.ndarray) -> np.ndarray:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads or previous)
        try:
            with torch.no_grad():
                return np.asarray(module(torch.from_numpy(np.ascontiguousarray(images))).numpy())
        finally:
            torch.set_num_threads(previous)

    return ExportedModel(path, metadata, run)


def _parsed(path: Path, raw: dict[str, str]) -> dict[str, Any]:
    try:
        metadata = {key: json.loads(value) for key, value in raw.items()}
        Preprocess.from_dict(metadata[PREPROCESS])
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
    for indices, batch, bad in crop_batches(files, model.preprocess):
        skipped += [(str(files[i]), why) for i, why in bad]
        if batch is not None:
            for i, row in zip(indices, model.run(batch), strict=True):
                order = np.argsort(-row, kind="stable")[:top_k]
                predictions.append(Prediction(str(files[i]), [classes[j] for j in order], [float(row[j]) for j in order]))
        if progress:
            progress("predict", len(predictions) + len(skipped), len(files))
    return predictions, skipped

