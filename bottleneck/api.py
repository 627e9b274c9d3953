"""The Python API (for notebooks): what each command does, as a function with the command's defaults,
returning plain objects. The CLI is a thin layer over these.

    import bottleneck_features as bf
    bf.extract("data/", model="efficientnet_lite0")
    f = bf.load_features()              # f.X, f.y, f.paths; f.to_frame() with pandas
    result = bf.fit(head="logreg")      # result.sidecar["metrics"]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .outputs import check_outputs, writing
from .progress import Progress
from .store import DEFAULT_CACHE, Features, Store

if TYPE_CHECKING:
    from .cache_repair import RepairReport
    from .comparison import CompareResult
    from .dataset_audit import Audit
    from .extraction import ExtractReport
    from .model_export import ExportResult
    from .training import FitResult, Prediction

def extract(data: str | Path, model: str = "efficientnet_lite0", *, cache: str | Path = DEFAULT_CACHE,
            weights: str | None = None, layer: str | None = None, pool: str = "avg", precision: str = "auto",
            dtype: str = "float32", decode: str = "pil", name: str | None = None, batch_size: int | None = None,
            workers: int | None = None, threads: int | None = None, device: str = "auto", compile: bool = False,
            views: int | None = None, augment: str | None = None, engine: str = "local", address: str | None = None,
            actors: int = 1, cpus_per_actor: int = 1, gpus_per_actor: float = 0.0,
            images: str | Path | None = None, id_column: str | None = None, label_column: str | None = None,
            label_key: str | None = None, progress: Progress | None = None) -> ExtractReport:
    """Embed every image of `data` the cache lacks (see `bottleneck extract --help`). `views` K: also K
    augmented views of each image (`augment`, default augment.DEFAULT_AUGMENT), after the plain one;
    the report is then the views'. engine "ray": on the Ray cluster at `address` (None: a local
    one), `actors` each holding the network. precision "auto": decided where the vectors are computed
    (`extraction.decide_precision`); the report's summary says which ran and why.

    `data` may be a label file (.csv, .json, .jsonl, .parquet) with `path,label[,split]` columns, paths
    relative to it (or to `images`); `id_column` names a column of file names under `images` instead.
    Or WebDataset tar shards, `shards/train-{000000..000099}.tar`, each sample's label its cls or txt
    member, or its json member's `label_key`. A path or an fsspec URL (s3://, gs://, https://, memory://)."""
    from .augment import DEFAULT_AUGMENT, parse_augment
    from .extraction import ExtractOptions, check_views, extract_dataset
    from .label_files import LabelColumns
    from .locations import path_or_url
    from .sources import resolve_spec

    check_views(DEFAULT_AUGMENT if augment is None and views is not None else augment, views, decode)
    canonical = parse_augment(augment or DEFAULT_AUGMENT).canonical() if views else None
    options = ExtractOptions(batch_size=batch_size, workers=workers, threads=threads, device=device,
                             progress=progress, compile=compile, engine=engine, address=address, actors=actors,
                             cpus_per_actor=cpus_per_actor, gpus_per_actor=gpus_per_actor)  # checked first
    spec = resolve_spec(model, weights=weights, layer=layer, pool=pool, precision=precision, dtype=dtype,
                        decode=decode)
    columns = None if images is None and id_column is None and label_column is None and label_key is None else \
        LabelColumns(images=None if images is None else path_or_url(str(images)), id_column=id_column,
                     label_column=label_column or "label", label_key=label_key)
    data = path_or_url(str(data))
    report = extract_dataset(data, spec, Path(cache), name=name, options=options, columns=columns)
    if not canonical:
        return report
    with Store.open(Path(cache)) as store:  # the plain spec completed (a layer's width is known now)
        views_spec = store.extractor_spec(report.fingerprint).replace(augment=canonical)
    # remember=False: the plain extraction stays the default of fit and compare --data
    chosen = report.precision  # the views run inherits the plain run's decision
    report = extract_dataset(data, views_spec, Path(cache), name=name, options=options, views=views,
                             remember=False, columns=columns)
    report.precision = chosen
    return report


def load_features(data: str | None = None, model: str | None = None, *,
                  cache: str | Path = DEFAULT_CACHE) -> Features:
    """The cached vectors of dataset `data` (default: the last extracted) under the extraction `model`
    names (a model name, a label such as `resnet50[layer3,max]`, or a fingerprint; default: the
    dataset's last), with their labels, splits, paths and spec. Nothing is computed."""
    from .store import load_features as load
    from .store import select_extraction

    dataset, fp = select_extraction(Path(cache), data, model)
    return load(Path(cache), dataset, fp)


def fit(head: str = "logreg", *, data: str | None = None, model: str | None = None,
        cache: str | Path = DEFAULT_CACHE, tune: bool = False, test_size: float = 0.25, seed: int = 0,
        out: str | Path | None = None, budget: float | str | None = None) -> FitResult:
    """Train `head` on cached features and save it with its sidecar (see `bottleneck fit --help`); `head`
    auto: chosen by cross-validation on the training split, within `budget` (seconds, or "90s", "2m")."""
    from .training import fit_head

    return fit_head(Path(cache), head=head, dataset=data, model=model, tune=tune, test_size=test_size, seed=seed,
                    out=Path(out) if out else None, budget=seconds(budget) if budget is not None else None)


def seconds(text: float | str) -> float:
    """`--budget`: 90, 90s, 1.5m or 2h as seconds."""
    from .errors import FitError

    value = str(text).strip().lower()
    scale = {"s": 1, "m": 60, "h": 3600}.get(value[-1:], 0)
    try:
        return float(value[:-1] if scale else value) * (scale or 1)
    except ValueError:
        raise FitError(f"--budget {text}: give seconds (90, 90s) or minutes (1.5m)") from None


@dataclass
class Predictions:
    items: list[Prediction]  # best label first, top-k long
    skipped: list[tuple[str, str]]  # (path, why)

    def to_frame(self) -> Any:
        """A pandas DataFrame: path, prediction, probability."""
        import pandas as pd

        return pd.DataFrame({"path": [p.path for p in self.items], "prediction": [p.labels[0] for p in self.items],
                             "probability": [p.probabilities[0] for p in self.items]})


def predict(inputs: str | Path | Sequence[str | Path], head: str | Path | None = None, *,
            model_file: str | Path | None = None, cache: str | Path = DEFAULT_CACHE, top_k: int = 1,
            weights: str | None = None, out: str | Path | None = None, format: str | None = None,
            progress: Progress | None = None) -> Predictions:
    """Label image files or folders with a head written by `fit` (cached images cost nothing). `out`:
    also write the predictions there, when any image could be used, as `format` (csv or json;
    default: from out's suffix, else csv)."""
    from .extraction import ExtractOptions
    from .training import predict_files, predictions_format, sidecar_path, write_predictions

    fmt = predictions_format(Path(out) if out is not None else None, format)
    paths = [Path(inputs)] if isinstance(inputs, (str, Path)) else [Path(p) for p in inputs]
    if model_file is not None or head is None:
        return _predict_with_model(paths, model_file, head, top_k, out, fmt, cache, progress)
    if out is not None:
        read = [*(("the input", p) for p in paths), ("the head", Path(head)),
                ("the head's sidecar", sidecar_path(Path(head))),
                *([("the weights file", Path(weights))] if weights and Path(weights).is_file() else [])]
        check_outputs([("--out", Path(out))], cache=Path(cache), inputs=read)
    items, skipped = predict_files(paths, Path(head), Path(cache), top_k=top_k, weights=weights,
                                   options=ExtractOptions(progress=progress))
    if out is not None and items:
        with writing(Path(out)):
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(write_predictions(items, fmt, top_k))
    return Predictions(items, skipped)


def _predict_with_model(paths: list[Path], model_file: str | Path | None, head: str | Path | None, top_k: int,
                        out: str | Path | None, fmt: str, cache: str | Path, progress: Progress | None) -> Predictions:
    """predict from a file written by `export-model`: no cache, no head file."""
    from .errors import FitError
    from .model_file import predict_with_model
    from .training import write_predictions

    if (model_file is None) == (head is None):
        raise FitError("give a head (--head, from fit) or a model file (--model-file, from export-model), not both")
    assert model_file is not None
    if out is not None:
        check_outputs([("--out", Path(out))], cache=Path(cache),
                      inputs=[*(("the input", p) for p in paths), ("the model file", Path(model_file))])
    items, skipped = predict_with_model(paths, Path(model_file), top_k=top_k, progress=progress)
    if out is not None and items:
        with writing(Path(out)):
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(write_predictions(items, fmt, top_k))
    return Predictions(items, skipped)


def export_model(head: str | Path, out: str | Path, *, cache: str | Path = DEFAULT_CACHE, weights: str | None = None,
                 quantize: str | None = None, check: bool = True, progress: Progress | None = None) -> ExportResult:
    """One network file from a head written by `fit`: .onnx or .pt2 by `out`'s suffix, uint8 RGB crops in,
    probabilities out; written once it agrees with predict on the head's dataset (`check`). `quantize`:
    "int8" (.onnx), with its held-out accuracy, size and latency beside fp32's in `result.summary()`."""
    from .model_export import export_model as export

    return export(Path(head), Path(out), cache=Path(cache), weights=weights, quantize=quantize, check=check,
                  progress=progress)


def compare(*, data: str | None = None, models: Sequence[str] | None = None, heads: Sequence[str] | None = None,
            per_class: Sequence[int] | None = None, cv: int | None = None, repeats: int = 5, seed: int = 0,
            pixels: int | None = 32, metric: str = "accuracy", tune: Sequence[str] | None = None,
            cap: bool = False, out: str | Path | None = None, jobs: int | None = None, device: str = "auto",
            finetune: Sequence[str] | None = None, cache: str | Path = DEFAULT_CACHE,
            progress: Progress | None = None, embedding_map: bool = True) -> CompareResult:
    """Heads × extractions × raw pixels on one dataset, with the report (see `bottleneck compare --help`;
    heads and tune: None for compare's defaults). `result.to_frame()` gives one row per cell and metric.
    `embedding_map`: report.html shows each extraction's 2-D map (needs the `map` extra; without it the
    report says so)."""
    from .comparison import DEFAULT_HEADS, DEFAULT_TUNED, run_compare

    return run_compare(Path(cache), dataset=data, models=models, heads=DEFAULT_HEADS if heads is None else heads,
                       per_class=per_class, cv=cv, repeats=repeats, seed=seed, pixels=pixels, metric=metric,
                       tune=DEFAULT_TUNED if tune is None else tune, cap=cap, out=Path(out) if out else None,
                       jobs=jobs, device=device, finetune=finetune or (), progress=progress,
                       embedding_map=embedding_map)


def export(out: str | Path, *, data: str | None = None, model: str | None = None, format: str | None = None,
           cache: str | Path = DEFAULT_CACHE) -> Path:
    """Write cached features as npz, csv or parquet (`format`, default from `out`'s suffix); `model` a+b:
    the extractions' vectors side by side (as cached, unweighted), on the images they all have."""
    from .formats import export_features
    from .store import load_fused, select_extractions

    check_outputs([("OUT", Path(out))], option="OUT", cache=Path(cache))
    dataset, fps = select_extractions(Path(cache), data, model)
    features, specs, _ = load_fused(Path(cache), dataset, fps)
    with writing(Path(out), "OUT"):
        return export_features(features, Path(out), format, specs=specs)


def audit(*, data: str | None = None, model: str | None = None, threshold: float | None = None, folds: int = 5,
          out: str | Path | None = None, cache: str | Path = DEFAULT_CACHE, embedding_map: bool = True) -> Audit:
    """Duplicates, leakage, likely label errors and outliers of a cached dataset (see `bottleneck audit
    --help`); writes audit.csv, audit.json and audit.html under `out` (default reports/<dataset>/audit).
    `embedding_map`: audit.html shows the extraction's 2-D map with the findings marked (the `map` extra)."""
    from .audit_report import audit_files, audit_map, write_audit
    from .dataset_audit import DEFAULT_THRESHOLD, run_audit
    from .store import select_extraction

    extraction = select_extraction(Path(cache), data, model)  # (dataset, fingerprint), resolved once
    folder = Path(out) if out else Path("reports") / extraction[0] / "audit"
    check_outputs([("the audit report", f) for f in audit_files(folder).values()], cache=Path(cache),
                  folder=folder)
    result = run_audit(Path(cache), threshold=DEFAULT_THRESHOLD if threshold is None else threshold, folds=folds,
                       extraction=extraction)
    drawn, note = audit_map(Path(cache), extraction[1], result) if embedding_map else (None, "")
    with writing(folder):
        result.files = write_audit(folder, result, drawn, note)
    return result


def repair(*, cache: str | Path = DEFAULT_CACHE) -> RepairReport:
    """Rebuild a cache whose HDF5 structures are damaged from everything still readable (see
    `bottleneck repair --help`); the damaged file is kept beside it, `report.summary()` says what was kept."""
    from .cache_repair import repair_cache

    return repair_cache(Path(cache))


def embedding_map(data: str | None = None, *, model: str | None = None, out: str | Path | None = None,
                  cache: str | Path = DEFAULT_CACHE) -> Path:
    """Write the 2-D map of dataset `data` (default: the last extracted) under the extraction `model` names
    (default: the dataset's last) as one page, `out` (default reports/<dataset>/map.html); the layout is
    computed once and kept in the cache. Needs the `map` extra."""
    from .map_layout import cached_projection, check_available
    from .map_page import EmbeddingMap, MapView, map_document
    from .shards import image_addresses
    from .store import load_features as load
    from .store import select_extraction

    check_available()
    dataset, fp = select_extraction(Path(cache), data, model)
    target = Path(out) if out else Path("reports") / dataset / "map.html"
    features = load(Path(cache), dataset, fp)
    folder = [("the dataset folder", features.root)] if isinstance(features.root, Path) else []
    check_outputs([("the map", target)], cache=Path(cache), inputs=folder)
    xy, _ = cached_projection(Path(cache), fp, features.shas, features.X)
    label = features.spec.label() if features.spec else fp
    page = map_document(f"{dataset}: embedding map ({label})", EmbeddingMap(
        features.paths, image_addresses(Path(cache), dataset, features.paths), [str(x) for x in features.labels],
        [MapView(label, xy)]))
    with writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(page)
    return target
