"""`fit` and `predict`: heads trained on cached embeddings, saved with a verifiable sidecar."""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import joblib
import numpy as np
import sklearn
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, classification_report, f1_score
from threadpoolctl import threadpool_limits

from ._version import __version__
from .datasets import hash_split
from .errors import FitError, SpecError, one_line_reason
from .formats import spreadsheet_safe
from .heads import input_params, make_head
from .heads._factory import check_head
from .images import find_images, is_image_file, sha256_file
from .outputs import check_outputs, writing
from .spec import ExtractorSpec
from .store import Features, Store, auto_extractions, load_fused, plain_and_views, select_extractions, with_views

if TYPE_CHECKING:
    from .extraction import ExtractOptions


@dataclass
class FitResult:
    head_path: Path
    sidecar: dict
    report: str  # per-class precision/recall table


@dataclass
class Prediction:
    path: str
    labels: list[str]  # best first, top-k long
    probabilities: list[float]


def split_indices(features: Features, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) row indices.

    Split folders are used as they are (test falls back to val when there is no test folder).
    Otherwise each image's split follows from its content hash, so adding images never moves old
    ones between train and test; val is then empty and tuning uses cross-validation inside train.
    """
    splits = features.splits
    if (splits != "").any():
        train = np.flatnonzero(splits == "train")
        val = np.flatnonzero(splits == "val")
        test = np.flatnonzero(splits == "test")
        if len(test) == 0:
            test, val = val, np.array([], dtype=int)
        return train, val, test
    assigned = np.array([hash_split(s, test_size, seed) for s in features.shas])
    return np.flatnonzero(assigned == "train"), np.array([], dtype=int), np.flatnonzero(assigned == "test")


def _check_trainable(labels: np.ndarray, dataset: str) -> None:
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise FitError(f"dataset {dataset!r}: only one class ({classes[0] if len(classes) else 'none'}) "
                       "in the training split; a classifier needs at least two class folders")
    if counts.min() < 2:
        raise FitError(f"dataset {dataset!r}: class {classes[counts.argmin()]!r} has {counts.min()} training "
                       "image; add images or lower --test-size")


def fit_head(cache: Path, *, head: str, dataset: str | None = None, model: str | None = None,
             tune: bool = False, test_size: float = 0.25, seed: int = 0, out: Path | None = None,
             params: dict | None = None, budget: float | None = None) -> FitResult:
    """Train `head` on the cached features of `dataset`, score it on the held-out split, save it.
    `model` a+b: the extractions' vectors side by side (a fused head, `heads.BlockScaler`). Head
    `auto`: chosen by cross-validation on the training split within `budget` seconds; without `model`,
    on each of the dataset's extractions and on them all fused, and only the chosen ones are kept."""
    check_head(head)
    if budget is not None and (head != "auto" or budget <= 0):
        raise FitError(f"--budget {budget:g}: a positive number of seconds, for --head auto")
    if not 0 < test_size < 1:
        raise FitError(f"--test-size {test_size}: give a fraction between 0 and 1, e.g. 0.25")
    search = head == "auto" and model is None
    dataset, fps = auto_extractions(cache, dataset) if search else select_extractions(cache, dataset, model)
    out = Path(out) if out else Path(cache).parent / "heads" / f"{dataset}-{head}.joblib"
    partial = out.with_name(out.name + ".partial")  # the head and its sidecar land together or not at all
    partial_sidecar = out.with_name(out.name + ".json.partial")
    check_outputs([("--out", out), ("its sidecar", sidecar_path(out)), ("its temporary file", partial),
                   ("its sidecar's temporary file", partial_sidecar)], cache=cache)
    fps, viewed = plain_and_views(cache, dataset, fps, search)
    features, specs, dropped = load_fused(cache, dataset, fps)
    spec = features.spec
    assert spec is not None  # load_features reads it
    blocks = tuple(int(s.feature_dim or 0) for s in specs) if len(fps) > 1 else ()
    X_views = with_views(cache, dataset, features, blocks or (features.X.shape[1],), viewed) if viewed else None
    # views named by --model: every candidate trains on them, as a fixed head does; found by the search: tried
    views = {"views": X_views.shape[1], "view_blocks": tuple(viewed), "try_plain": search} \
        if head == "auto" and X_views is not None else {}
    block_sets = {"block_sets": (*((b,) for b in range(len(fps))), tuple(range(len(fps))))} if search and blocks else {}
    train, val, test = split_indices(features, test_size, seed)
    _check_trainable(features.labels[train], dataset)
    if len(test) == 0:
        raise FitError(f"dataset {dataset!r}: no test images; raise --test-size or add a val/test folder")
    estimator = make_head(head, tune=tune, random_state=seed, blocks=blocks,
                          **{**input_params(head, spec.pixels), **({"budget": budget} if budget else {}), **block_sets,
                             **views, **(params or {})})
    # A separate val split (split folders) joins training: tuning and early stopping split it off again.
    fit_rows = np.concatenate([train, val])
    # One BLAS thread, as in compare: on 2 cores, BLAS threads made a 22-class logistic
    # regression on 330 images take 3.6 s instead of 0.06 s.
    with threadpool_limits(limits=1, user_api="blas"):
        started = time.perf_counter()
        if X_views is None:
            estimator.fit(features.X[fit_rows], features.labels[fit_rows])
        else:  # every view of each training image; the test images by their plain vectors
            estimator.fit(X_views[fit_rows].reshape(-1, X_views.shape[2]),
                          np.repeat(features.labels[fit_rows], X_views.shape[1]))
        fit_seconds = time.perf_counter() - started
        y_true, y_pred = features.labels[test], estimator.predict(features.X[test])
    summary = _auto_summary(estimator, specs) if head == "auto" else None  # named by every extraction searched
    trained_views = None
    if X_views is not None and (head != "auto" or estimator.chosen_.views):
        trained_views = _views_summary(cache, [viewed[b] for b in (estimator.chosen_.blocks if block_sets else viewed)
                                               if b in viewed], X_views.shape[1] - 1)
    if block_sets:
        kept = list(estimator.chosen_.blocks)  # the extractions chosen: all that predict will extract
        fps, specs = [fps[b] for b in kept], [specs[b] for b in kept]
        estimator.narrow()
        spec, blocks = specs[0], tuple(blocks[b] for b in kept) if len(kept) > 1 else ()
    fp = fps[0]

    classes = list(estimator.classes_)  # a class can be missing from a small test split: report it as 0
    per_class = classification_report(y_true, y_pred, labels=classes, output_dict=True, zero_division=0)
    try:
        with writing(out):
            out.parent.mkdir(parents=True, exist_ok=True)
            joblib.dump(estimator, partial)
        sidecar = {
            "head": head,
            "params": {k: _jsonable(v) for k, v in estimator.get_params(deep=False).items()},
            "best_params": _jsonable(getattr(_find_search(estimator), "best_params_", None)),
            "classes": [str(c) for c in estimator.classes_],
            "dataset": dataset,
            "dataset_root": str(features.root),
            "extractor": {"fingerprint": fp, "label": spec.label(), "spec": spec.to_dict()},
            **({"fused": [{"fingerprint": f, "label": s.label(), "spec": s.to_dict()} for f, s in zip(fps, specs, strict=True)],
                "left_out": dropped} if blocks else {}),
            "sizes": {"train": int(len(train)), "val": int(len(val)), "test": int(len(test))},
            "split": {"test_size": test_size, "seed": seed, "from_folders": bool((features.splits != "").any())},
            "metrics": {
                "test_accuracy": float(accuracy_score(y_true, y_pred)),
                "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
                "macro_f1": float(f1_score(y_true, y_pred, average="macro")),
                "per_class": {str(c): {"precision": per_class[str(c)]["precision"], "recall": per_class[str(c)]["recall"],
                                       "support": int(per_class[str(c)]["support"])} for c in classes},
            },
            "fit_seconds": fit_seconds,
            **({"views": trained_views} if trained_views else {}),
            **({"auto": summary} if summary is not None else {}),
            "versions": {"bottleneck-features": __version__, "scikit-learn": sklearn.__version__, "torch": torch.__version__,
                         "numpy": np.__version__, "python": platform.python_version()},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "sha256": sha256_file(partial),
        }
        with writing(out):
            partial_sidecar.write_text(json.dumps(sidecar, indent=2))
            os.replace(partial, out)
            os.replace(partial_sidecar, sidecar_path(out))
    finally:
        partial.unlink(missing_ok=True)
        partial_sidecar.unlink(missing_ok=True)
    missing = [str(c) for c in classes if c not in set(y_true)]
    report = classification_report(y_true, y_pred, labels=classes, zero_division=0)
    if missing:
        report += (f"\nno test images for {', '.join(missing)}: add images, raise --test-size, or use split "
                   "folders to score every class\n")
    return FitResult(out, sidecar, report)


def _views_summary(cache: Path, fps: list[str], per_image: int) -> dict[str, Any]:
    """The augmented views a head trained on beside the plain vectors (predict reads the plain ones)."""
    with Store.open(cache) as store:
        labels = [store.extractor_spec(fp).label() for fp in fps]
    return {"per_image": per_image, "extractions": labels, "fingerprints": fps}


def _auto_summary(estimator: Any, specs: list[ExtractorSpec]) -> dict[str, Any]:
    """What `--head auto` chose (on which extractions), its cross-validated accuracy, the runners-up and
    the time spent."""
    def named(blocks: Sequence[int], views: bool) -> str:
        return "+".join(specs[b].label() for b in (blocks or range(len(specs)))) + (" and its views" if views else "")

    results = [{**{k: v for k, v in r.items() if k not in ("blocks", "views")}, "model": named(r["blocks"], r["views"])}
               for r in estimator.results_]
    ranked = sorted(results, key=lambda r: -r["cv_accuracy"])
    choice = {**estimator.choice_, "model": named(estimator.chosen_.blocks, estimator.chosen_.views)}
    return {"choice": _jsonable(choice), "cv_accuracy": estimator.cv_score_,
            "runners_up": _jsonable(ranked[1:6]), "candidates_scored": len(ranked), "seconds": estimator.seconds_,
            "budget": estimator.budget}


def sidecar_path(head_path: Path) -> Path:
    return Path(head_path).with_suffix(".json")


def load_head(head_path: Path) -> tuple[Any, dict]:
    """The fitted head and its sidecar, refusing a file whose sha256 is not the sidecar's.

    joblib files run code when loaded, so the hash is checked before anything is unpickled.
    """
    head_path = Path(head_path)
    meta_path = sidecar_path(head_path)
    if not head_path.is_file():
        raise FitError(f"{head_path}: no such head file; train one with `bottleneck fit`")
    if not meta_path.is_file():
        raise FitError(f"{meta_path}: sidecar missing; a head is only loaded with the sidecar `bottleneck fit` wrote")
    try:
        meta = json.loads(meta_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FitError(f"{meta_path}: not a JSON sidecar ({exc}); refit with `bottleneck fit`") from None
    if not isinstance(meta, dict):
        raise FitError(f"{meta_path}: not a sidecar (a JSON {type(meta).__name__}, not an object); refit with "
                       "`bottleneck fit`")
    if sha256_file(head_path) != meta.get("sha256"):
        raise FitError(f"{head_path}: sha256 does not match {meta_path.name}; refusing to load it (joblib runs code on load)")
    try:
        estimator = joblib.load(head_path)
    except Exception as exc:  # its hash matched, yet it is anything at all: a truncated or foreign file
        reason = one_line_reason(exc, limit=200)
        raise FitError(f"{head_path}: not a head joblib can load ({reason}); refit with `bottleneck fit`") from None
    if not (hasattr(estimator, "predict_proba") and hasattr(estimator, "classes_")):
        raise FitError(f"{head_path}: holds a {type(estimator).__name__}, not a fitted head; refit with "
                       "`bottleneck fit`")
    return estimator, meta


def predict_files(inputs: list[Path], head_path: Path, cache: Path, *, top_k: int = 1,
                  weights: str | None = None, options: ExtractOptions | None = None
                  ) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """Predictions for every image in `inputs` (files or folders) through the cache, and the skipped files."""
    from .extraction import extract_files  # torch: seconds that `fit` doesn't need

    if top_k < 1:
        raise FitError(f"--top-k {top_k}: must be at least 1")
    estimator, meta = load_head(head_path)
    specs = head_specs(meta, sidecar_path(head_path))
    label = "+".join(spec.label() for spec, _ in specs)
    _check_width(estimator, sum(int(spec.feature_dim or 0) for spec, _ in specs), head_path,
                 f"its sidecar's extractor {label}")
    files = expand_inputs(inputs)
    # The spec fixes every vector; the caller's options only how fast they are made.
    results = [extract_files(files, spec, cache, options, weights_file=weights) for spec, _ in specs]
    for result, (spec, fp) in zip(results, specs, strict=True):
        if result.fingerprint != fp:
            raise FitError(f"{head_path}: trained on features {fp} but {spec.label()} now gives {result.fingerprint}; "
                           "pass the --weights it was trained with, or refit")
    paths = [p for p in map(str, files) if all(p in result.shas for result in results)]
    with Store.open(cache) as store:
        X = np.concatenate([store.get_vectors(result.fingerprint, [result.shas[p] for p in paths])
                            for result in results], axis=1)
    predictions = []
    if paths:
        _check_width(estimator, X.shape[1], head_path, label)
        proba = estimator.predict_proba(X)
        classes = np.asarray(estimator.classes_)
        for path, row in zip(paths, proba, strict=True):
            order = np.argsort(-row)[:top_k]
            predictions.append(Prediction(path, [str(classes[i]) for i in order], [float(row[i]) for i in order]))
    return predictions, list(dict.fromkeys(item for result in results for item in result.skipped))


def head_specs(meta: dict, meta_path: Path) -> list[tuple[ExtractorSpec, str]]:
    """The extractors a head's features came from, and their fingerprints: one, or a fused head's blocks."""
    fused = meta.get("fused")
    if fused is None:
        return [head_spec(meta, meta_path)]
    if not isinstance(fused, list) or not fused:
        raise FitError(f"{meta_path}: its fused extractors are unreadable; refit the head with `bottleneck fit`")
    return [_extractor(block, meta_path) for block in fused]


def head_spec(meta: dict, meta_path: Path) -> tuple[ExtractorSpec, str]:
    """The extractor a head's features came from, and their fingerprint, from its sidecar; a fused
    head (a+b) is refused here, where one extractor is expected (`head_specs` reads its blocks)."""
    if "fused" in meta:
        raise FitError(f"{meta_path}: a head on fused extractions (a+b), where one extractor is expected: its "
                       "blocks are the sidecar's \"fused\" list (`head_specs`)")
    return _extractor(meta.get("extractor"), meta_path)


def _extractor(extractor: Any, meta_path: Path) -> tuple[ExtractorSpec, str]:
    extractor = extractor or {}
    if not isinstance(extractor, dict) or not isinstance(extractor.get("spec"), (dict, str)) \
            or "fingerprint" not in extractor:
        raise FitError(f"{meta_path}: no extractor spec in this sidecar (an older release?); refit the head "
                       "with `bottleneck fit`")
    try:
        spec = ExtractorSpec.from_dict(extractor["spec"])
        if spec.fingerprint() != extractor["fingerprint"]:
            raise SpecError("its spec does not give its fingerprint")
    except (SpecError, ValueError) as exc:
        raise FitError(f"{meta_path}: unreadable extractor spec ({exc}); refit the head with `bottleneck fit`") from None
    return spec, extractor["fingerprint"]


def _check_width(estimator: Any, width: int | None, head_path: Path, source: str) -> None:
    """A head trained on other features (an edited or swapped sidecar) fails here, not deep in scikit-learn."""
    expected = getattr(estimator, "n_features_in_", None)
    if width is not None and expected is not None and int(expected) != width:
        raise FitError(f"{head_path}: the head takes {expected}-d features but {source} gives {width}-d; "
                       "the sidecar is not this head's: refit with `bottleneck fit`")


def predictions_format(out: Path | None, format: str | None) -> str:
    """`format`, else `out`'s suffix, else csv: csv or json."""
    fmt = format or (out.suffix.lstrip(".") if out is not None and out.suffix else "csv")
    if fmt not in ("csv", "json"):
        raise FitError(f"--format {fmt}: use csv or json")
    return fmt


def write_predictions(predictions: list[Prediction], fmt: str, top_k: int = 1) -> str:
    """CSV (path, prediction, probability, then label_i/probability_i for i ≤ top_k) or JSON."""
    if predictions_format(None, fmt) == "json":
        rows = [{"path": p.path, "prediction": p.labels[0], "probability": p.probabilities[0],
                 "top_k": [{"label": l, "probability": q} for l, q in zip(p.labels, p.probabilities, strict=True)]}
                for p in predictions]
        return json.dumps(rows, indent=2) + "\n"
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    extra = [f"{kind}_{i}" for i in range(1, top_k + 1) for kind in ("label", "probability")] if top_k > 1 else []
    writer.writerow(["path", "prediction", "probability", *extra])
    for p in predictions:
        tail = [v for pair in zip(p.labels, p.probabilities, strict=True) for v in pair] if top_k > 1 else []
        writer.writerow([spreadsheet_safe(p.path), spreadsheet_safe(p.labels[0]), f"{p.probabilities[0]:.6f}",
                         *[f"{v:.6f}" if isinstance(v, float) else spreadsheet_safe(v) for v in tail]])
    return buffer.getvalue()


def expand_inputs(inputs: Sequence[Path]) -> list[Path]:
    """The image files of `inputs` (files and folders), or one line naming the input that is neither."""
    files: list[Path] = []
    for item in (Path(i).resolve() for i in inputs):
        if item.is_dir():
            files.extend(find_images(item))
        elif item.is_file() and is_image_file(item):
            files.append(item)
        else:
            raise FitError(f"{item}: not an image file or folder")
    if not files:
        raise FitError(f"no images found in {', '.join(map(str, inputs))}")
    return files


def _find_search(estimator: object) -> object:
    """The GridSearchCV inside a tuned head, if any."""
    if hasattr(estimator, "best_params_"):
        return estimator
    for step in getattr(estimator, "named_steps", {}).values():
        if hasattr(step, "best_params_"):
            return step
    return None


def _jsonable(value: object) -> object:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return repr(value)

