"""`export-model`: a head written by `fit` and the backbone its features came from, as one network
file: uint8 RGB crops (N, S, S, 3) in, class probabilities out.

`.onnx`: the backbone (normalisation, layer cut and pooling inside) is exported by torch's dynamo
exporter, the head by torch too or, for the trees, by skl2onnx, and the two graphs are joined with
`onnx.compose`; `--quantize int8` quantises the backbone's graph (static, per channel, calibrated on
training images) and keeps the head in float. `.pt2`: one `torch.export` program. Either is checked
against `predict` on the dataset's images before it replaces anything (`model_proof`).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sklearn.ensemble import VotingClassifier

from ._version import __version__
from .classifier_graph import ClassifierNet, head_module, linear_form, refuse, tree_count, unwrap
from .errors import FitError, one_line_reason
from .heads import AutoHeadClassifier
from .model_file import (
    CLASSES,
    CROP_RULE,
    FEATURES,
    HEAD,
    HEAD_SHA256,
    INPUT,
    INPUT_INFO,
    OUTPUT,
    PREPROCESS,
    PT2_METADATA,
    QUANTIZATION,
    SPEC,
    SUFFIXES,
    VERSION,
    open_model,
    require,
)
from .model_proof import Check, Progress, QuantCheck, calibration_crops, check_models, dataset_rows
from .outputs import check_outputs, writing
from .registry import Backbone
from .sources import build
from .spec import ExtractorSpec
from .training import head_spec, load_head, sidecar_path

OPSET = 20  # the default (ai.onnx) opset of both graphs; onnxruntime 1.17 and later run it
ML_OPSET = 3  # ai.onnx.ml, for skl2onnx's trees
QUANTIZE = ("int8",)


@dataclass
class ExportResult:
    path: Path
    head: str  # the head's name in the sidecar (logreg, svm, et, ...)
    form: str  # how the head went in: one matrix, torch, or skl2onnx
    label: str  # the extractor's label
    classes: list[str]
    input_size: int
    bytes: int
    check: Check | None
    quantized: QuantCheck | None

    def summary(self) -> str:
        lines = [f"{self.path}: {self.label} + {self.head} ({self.form}), {len(self.classes)} classes, "
                 f"uint8 (N, {self.input_size}, {self.input_size}, 3) in, probabilities out; "
                 f"{self.bytes / 1e6:.1f} MB"]
        if self.check is not None:
            lines.append(self.check.summary())
        if self.quantized is not None:
            lines.append(self.quantized.summary())
        return "\n".join(lines)


def export_model(head_path: Path, out: Path, *, cache: Path, weights: str | None = None,
                 quantize: str | None = None, check: bool = True, progress: Progress | None = None) -> ExportResult:
    """Write `out` (.onnx or .pt2) from the head at `head_path`; with `check`, only once it agrees with
    `predict` on every image of the head's dataset (same top-1, probabilities within 1e-4)."""
    out, head_path = Path(out), Path(head_path)
    if out.suffix not in SUFFIXES:
        raise FitError(f"{out}: the model file must end in .onnx or .pt2 (its format)")
    if quantize is not None and (quantize not in QUANTIZE or out.suffix != ".onnx"):
        raise FitError(f"--quantize {quantize}: use --quantize int8, with an .onnx file")
    if out.suffix == ".onnx":
        require(["onnx", "onnxruntime", "onnxscript"], "export-model to .onnx")
    estimator, meta = load_head(head_path)
    if isinstance(estimator, AutoHeadClassifier):
        estimator = estimator.estimator_  # the head auto chose, refitted: what it predicts with
    spec, fingerprint = head_spec(meta, sidecar_path(head_path))
    if spec.augment:
        raise FitError(f"{head_path}: trained on augmented views ({spec.label()}), which predict would extract "
                       "again from each image: export a head fitted on plain vectors")
    width = getattr(estimator, "n_features_in_", None)
    if spec.feature_dim is None or (width is not None and int(width) != spec.feature_dim):
        raise FitError(f"{head_path}: the head takes {width}-d features but its sidecar's extractor {spec.label()} "
                       f"gives {spec.feature_dim}-d: the sidecar is not this head's; refit with `bottleneck fit`")
    head = head_module(estimator, spec.feature_dim)
    if head is None and out.suffix == ".pt2":
        raise FitError(f"{head_path}: a {type(unwrap(estimator)[1]).__name__} head runs in no torch program: "
                       f"export it as .onnx (skl2onnx converts it)")
    if head is None:
        require(["skl2onnx"], f"export-model of a {meta.get('head')} head")
    partial = out.with_suffix(".partial" + out.suffix)
    check_outputs([("the model file", out), ("its temporary file", partial)], option="OUT", cache=Path(cache),
                  inputs=[("the head", head_path), ("the head's sidecar", sidecar_path(head_path)),
                          *([("the weights file", Path(weights))] if weights else [])])
    backbone = build(spec, weights_file=weights)
    form = _form(estimator, head)
    metadata = {CLASSES: [str(c) for c in estimator.classes_],
                PREPROCESS: {**spec.preprocess.to_dict(), "rule": CROP_RULE}, SPEC: spec.to_dict(),
                HEAD: {"name": meta.get("head"), "file": head_path.name, "form": form,
                       "classifier": type(unwrap(estimator)[1]).__name__, "dataset": meta.get("dataset"),
                       "metrics": meta.get("metrics", {}).get("test_accuracy")},
                HEAD_SHA256: meta["sha256"], VERSION: __version__, QUANTIZATION: None,
                INPUT_INFO: {"name": INPUT, "dtype": "uint8", "layout": "NHWC", "channels": "RGB",
                             "shape": ["N", spec.preprocess.input_size, spec.preprocess.input_size, 3],
                             "outputs": {OUTPUT: "(N, classes)", FEATURES: "(N, D), the pooled embedding (.onnx)"},
                             "computed_in": "float32"}}
    rows = dataset_rows(Path(cache), meta, fingerprint) if check or quantize else None
    calibrated = 0
    try:
        with tempfile.TemporaryDirectory(prefix="bottleneck-export-") as scratch, writing(out, "OUT"):
            out.parent.mkdir(parents=True, exist_ok=True)
            if out.suffix == ".pt2":
                _write_pt2(ClassifierNet(backbone.model, spec.preprocess, head), spec, partial, metadata)
                fp32 = partial
            else:
                fp32 = partial if quantize is None else Path(scratch, "fp32.onnx")
                parts = _onnx_parts(backbone, head, estimator, spec)
                _save(_join(*parts), metadata, fp32)
                if quantize is not None:
                    assert rows is not None
                    calibration = calibration_crops(rows, spec.preprocess)
                    calibrated = len(calibration)
                    int8 = _quantize(parts[0], Path(scratch), calibration)
                    _save(_join(int8, parts[1]), {**metadata, QUANTIZATION: {
                        "kind": "int8", "method": "static QDQ, per-channel weights, uint8 activations; the head in "
                        "float32", "calibration_images": calibrated}}, partial)
            models = {"fp32": open_model(fp32)} | ({"int8": open_model(partial)} if quantize else {})
            proof, quantized = (None, None) if rows is None else check_models(
                rows, estimator, backbone, models, verify=check, calibration=calibrated, progress=progress,
                trees=tree_count(estimator) if head is None else None)
            if proof is not None and not proof.passed:
                raise FitError(f"{out}: not written: {proof.failure()}")
            os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return ExportResult(out, str(meta.get("head")), form, spec.label(), metadata[CLASSES],
                        spec.preprocess.input_size, out.stat().st_size, proof, quantized)


def _form(estimator: Any, head: torch.nn.Module | None) -> str:
    if head is None:
        return "skl2onnx" + (" and torch, averaged" if isinstance(estimator, VotingClassifier) else "")
    try:
        form = linear_form(estimator)
    except FitError:
        return "torch"
    temperature = f", inverse temperature {form.temperature:.4g} inside" if form.temperature else ""
    return f"linear: one {form.weight.shape[0]} x {form.weight.shape[1]} matrix{temperature}"


def _example(spec: ExtractorSpec) -> torch.Tensor:
    size = spec.preprocess.input_size
    return torch.randint(0, 256, (2, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def _batch_dim() -> dict[int, Any]:
    return {0: torch.export.Dim("batch", min=1, max=1 << 20)}


def _write_pt2(net: ClassifierNet, spec: ExtractorSpec, path: Path, metadata: dict[str, Any]) -> None:
    try:
        program = torch.export.export(net.eval(), (_example(spec),), dynamic_shapes=(_batch_dim(),))
    except Exception as exc:  # torch.export raises many kinds for a network it cannot trace
        raise FitError(f"{spec.label()}: torch.export could not trace it ({one_line_reason(exc)})") from None
    torch.export.save(program, str(path), extra_files={PT2_METADATA: json.dumps(metadata)})


def _torch_onnx(module: torch.nn.Module, example: torch.Tensor, names: tuple[str, str], what: str) -> Any:
    try:
        program = torch.onnx.export(module.eval(), (example,), dynamo=True, opset_version=OPSET, verbose=False,
                                    input_names=[names[0]], output_names=[names[1]],
                                    dynamic_shapes=(_batch_dim(),))
    except Exception as exc:  # the exporter raises many kinds for a network it cannot translate
        raise FitError(f"{what}: torch could not export it to ONNX ({one_line_reason(exc)})") from None
    assert program is not None
    return program.model_proto


def _onnx_parts(backbone: Backbone, head: torch.nn.Module | None, estimator: Any, spec: ExtractorSpec
                ) -> tuple[Any, Any]:
    """(the backbone's graph: images → features, the head's graph: features → probabilities)."""
    net = ClassifierNet(backbone.model, spec.preprocess, None)
    features = _torch_onnx(net, _example(spec), (INPUT, FEATURES), spec.label())
    assert spec.feature_dim is not None
    if head is not None:
        return features, _torch_onnx(head, torch.zeros(2, spec.feature_dim), (FEATURES, OUTPUT), "the head")
    if isinstance(estimator, VotingClassifier):  # its members each as they export, then their mean
        return features, _mean_of([_head_graph(member, spec.feature_dim) for member in estimator.estimators_])
    return features, _skl2onnx(estimator, spec.feature_dim)


def _head_graph(head: Any, width: int) -> Any:
    module = head_module(head, width)
    if module is not None:
        return _torch_onnx(module, torch.zeros(2, width), (FEATURES, OUTPUT), "the head")
    return _skl2onnx(head, width)


def _skl2onnx(head: Any, width: int) -> Any:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    classifier = unwrap(head)[1]
    fitted = head.best_estimator_ if hasattr(head, "best_estimator_") else head
    try:
        return convert_sklearn(fitted, initial_types=[(FEATURES, FloatTensorType([None, width]))],
                               target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
                               options={id(classifier): {"zipmap": False}})
    except Exception as exc:  # skl2onnx raises many kinds for what it cannot convert
        raise refuse(f"skl2onnx could not convert the {type(classifier).__name__} head ({one_line_reason(exc)})") from None


def _mean_of(graphs: list[Any]) -> Any:
    """One graph of several heads' graphs side by side on the same features, their probabilities averaged."""
    import onnx
    from onnx import compose, helper

    parts = [compose.add_prefix(graph, f"member{i}/", rename_inputs=False) for i, graph in enumerate(graphs)]
    mean = helper.make_node("Mean", [f"member{i}/{OUTPUT}" for i in range(len(parts))], [OUTPUT])
    output = onnx.ValueInfoProto()
    output.CopyFrom(next(o for o in parts[0].graph.output if o.name == f"member0/{OUTPUT}"))
    output.name = OUTPUT
    graph = helper.make_graph([node for part in parts for node in part.graph.node] + [mean], "vote",
                              [parts[0].graph.input[0]], [output],
                              [tensor for part in parts for tensor in part.graph.initializer])
    versions: dict[str, int] = {}
    for part in parts:
        for opset in part.opset_import:
            versions[opset.domain] = max(versions.get(opset.domain, 1), opset.version)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(versions.items())],
                              functions=[f for part in parts for f in part.functions])
    model.ir_version = max(part.ir_version for part in parts)
    return model


def _join(features: Any, head: Any) -> Any:
    """One graph: the backbone's, then the head's (its names prefixed), output renamed `probabilities`."""
    import onnx
    from onnx import compose

    # Each graph declares only the domains its nodes use (onnxruntime's optimiser, run before
    # quantisation, declares a dozen, ai.onnx.ml 5 among them, where skl2onnx's trees need 3), at the
    # higher of the two versions where both use one.
    used = [{node.domain for node in model.graph.node} | {""} for model in (features, head)]
    declared = [{e.domain: e.version for e in model.opset_import} for model in (features, head)]
    versions = {d: max(v.get(d, 1) for u, v in zip(used, declared, strict=True) if d in u) for d in used[0] | used[1]}
    for model, domains in zip((features, head), used, strict=True):
        del model.opset_import[:]
        model.opset_import.extend(onnx.helper.make_opsetid(d, versions[d]) for d in sorted(domains))
        model.ir_version = max(features.ir_version, head.ir_version)
    joined = compose.merge_models(features, head, io_map=[(FEATURES, FEATURES)], prefix2="head/",
                                  outputs=["head/" + OUTPUT, FEATURES], producer_name="bottleneck-features",
                                  producer_version=__version__)
    for node in joined.graph.node:
        node.output[:] = [OUTPUT if name == "head/" + OUTPUT else name for name in node.output]
    for output in joined.graph.output:
        output.name = OUTPUT if output.name == "head/" + OUTPUT else output.name
    del joined.opset_import[:]  # merge_models lists each domain once per graph
    joined.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in sorted(versions.items()))
    return joined


def _save(model: Any, metadata: dict[str, Any], path: Path) -> None:
    import onnx

    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {f"bottleneck.{k}": json.dumps(v) for k, v in metadata.items()})
    onnx.save(model, str(path))


def _quantize(features: Any, scratch: Path, calibration: Any) -> Any:
    """The backbone's graph in int8: QDQ, weights per channel, uint8 activations calibrated (min-max)
    on `calibration` crops. Only the backbone: a head's folded standardisation turns 8-bit feature
    steps into large logit errors (photo_vs_drawing's logreg: 0.52 accuracy quantised with it)."""
    import onnx
    from onnxruntime import quantization as q

    source, prepared, quantized = scratch / "features.onnx", scratch / "features.pre.onnx", scratch / "int8.onnx"
    onnx.save(features, str(source))
    q.quant_pre_process(str(source), str(prepared))

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{INPUT: calibration[i:i + 16]} for i in range(0, len(calibration), 16)])

        def get_next(self) -> dict[str, Any] | None:
            return next(self.batches, None)

    q.quantize_static(str(prepared), str(quantized), Reader(), quant_format=q.QuantFormat.QDQ, per_channel=True,
                      activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8)
    return onnx.load(str(quantized))

