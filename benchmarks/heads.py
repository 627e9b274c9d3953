"""Head fit times at Caltech-101 scale, old and new defaults side by side, and the end-to-end compare.

Features are Gaussian clusters (timing only: their accuracies say nothing about real images): 102
classes, 1,280-d (an EfficientNet-Lite0 embedding) and 3,072-d (raw32 pixels), N = 15 and 30
training images per class, the rest of 90 per class as the test set.

1. One fit per head and N: seconds and accuracy, with the heads as they were before issue 11
   (`old`: logreg tuned by a 5 C x 5-fold GridSearchCV, calibrated RBF SVM, 300-tree random forest)
   next to today's, as compare fits them (tuned logreg along a C path; uncalibrated SVM, linear
   on 1,280-d and RBF on 3,072-d as on raw pixels; 300 extremely randomised trees). Synthetic clusters are hard for trees (their accuracy here
   means nothing); the forests' real accuracy is in RESULTS.md.
2. `compare` with its defaults (logreg tuned, svm, et; raw32 with nb; N = 15, 30; 5 draws) on a
   cache holding both feature sets, end to end, as `bottleneck compare` runs it.

    python benchmarks/heads.py                      # both parts
    python benchmarks/heads.py --compare 0          # part 1 only
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from threadpoolctl import threadpool_limits

import _common as C
from bottleneck_features.comparison import run_compare
from bottleneck_features.heads import input_params, make_head
from bottleneck_features.sources import resolve_spec
from bottleneck_features.store import ManifestRow, Store

CLASSES, TOTAL = 102, 90


def clusters(dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """CLASSES x TOTAL points around random means, spread so that logreg at N=15 scores about 0.9
    at 1,280-d and about 0.3 at 3,072-d (as embeddings and raw pixels do on Caltech-101)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(CLASSES, dim))
    y = np.repeat(np.arange(CLASSES), TOTAL)
    X = means[y] + rng.normal(scale=5.0 if dim <= 2048 else 12.0, size=(len(y), dim))
    return X.astype(np.float32), np.array([f"c{c:03d}" for c in y])


def old_head(name: str, tune: bool) -> object:
    """The defaults before issue 11, for side-by-side timing."""
    if name == "logreg" and tune:
        pipeline = make_head("logreg")
        return GridSearchCV(pipeline, {"clf__C": [0.001, 0.01, 0.1, 1.0, 10.0]},
                            cv=StratifiedKFold(5, shuffle=True, random_state=0))
    if name == "svm":
        return Pipeline([("scale", StandardScaler()),
                         ("clf", CalibratedClassifierCV(SVC(C=1.0), cv=3, ensemble=False))])
    if name == "forest":
        return make_head("rf", n_jobs=1)
    return make_head(name, tune=tune)


def new_head(name: str, tune: bool, pixels: bool) -> object:
    """Today's head as compare fits it (one core, no probabilities), on a raw-pixel row if `pixels`."""
    name = "et" if name == "forest" else name
    return make_head(name, tune=tune, probabilities=False, **({"n_jobs": 1} if name == "et" else {}),
                     **input_params(name, pixels))


def split(y: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:n] for c in np.unique(y)])
    return np.sort(train), np.setdiff1d(np.arange(len(y)), train)


def fit_times(dims: list[int], ns: list[int], heads: list[str], skip_old: list[str]) -> list[list]:
    rows = []
    cases = [(h, t) for h, t in [("logreg", False), ("logreg", True), ("svm", False), ("forest", False),
                                 ("nb", False)] if h in heads]
    changed = {("logreg", True), ("svm", False), ("forest", False)}
    for dim in dims:
        X, y = clusters(dim)
        for n in ns:
            train, test = split(y, n)
            for name, tune in cases:
                for version in ("old", "new"):
                    if version == "old" and ((name, tune) not in changed or name in skip_old):
                        continue  # unchanged heads are timed once
                    model = old_head(name, tune) if version == "old" else new_head(name, tune, dim == 3072)
                    with threadpool_limits(limits=1, user_api="blas"):
                        start = time.perf_counter()
                        model.fit(X[train], y[train])
                        seconds = time.perf_counter() - start
                    accuracy = float((model.predict(X[test]) == y[test]).mean())
                    label = {"forest": "rf" if version == "old" else "et"}.get(name, name) + (" tuned" if tune else "")
                    rows.append([f"{dim}-d", n, label, version, seconds, accuracy])
                    print(rows[-1], flush=True)
    return rows


def synthetic_cache(path: Path) -> None:
    """A cache with one 102-class dataset under efficientnet_lite0 (1,280-d) and raw32 (3,072-d)."""
    _, y = clusters(8)
    shas = [f"{i:064x}" for i in range(len(y))]
    rows = [ManifestRow(f"{label}/{i}.jpg", label, "", sha, "ok") for i, (label, sha) in enumerate(zip(y, shas, strict=True))]
    with Store.open(path, writable=True) as store:
        for model, dim in (("efficientnet_lite0", 1280), ("raw32", 3072)):
            spec = resolve_spec(model, precision="fp32")
            fp = spec.fingerprint()
            store.ensure_extractor(fp, spec)
            X, _ = clusters(dim, seed=dim)
            for start in range(0, len(shas), 1024):
                store.add_vectors(fp, shas[start:start + 1024], X[start:start + 1024])
            store.write_manifest("caltech_like", Path("/nonexistent/caltech_like"), "classes", rows, fp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", default="1280,3072")
    ap.add_argument("--n", default="15,30")
    ap.add_argument("--heads", default="logreg,svm,forest,nb", help="heads timed in part 1 (forest: rf old, et new)")
    ap.add_argument("--fits", type=int, default=1, help="0: skip part 1")
    ap.add_argument("--skip-old", default="", help="heads whose old version part 1 skips (forest: 3-5 min a fit)")
    ap.add_argument("--compare", type=int, default=1, help="0: skip part 2")
    ap.add_argument("--jobs", type=int, default=None, help="compare's --jobs (default: its own default)")
    ap.add_argument("--json", type=Path, default=C.OUT / "heads.json")
    args = ap.parse_args()
    result: dict = {"machine": C.machine()}
    if args.fits:
        rows = fit_times([int(d) for d in args.dims.split(",")], [int(n) for n in args.n.split(",")],
                         args.heads.split(","), args.skip_old.split(","))
        C.print_table(["input", "N", "head", "code", "fit s", "accuracy"], rows)
        result["fits"] = rows
    if args.compare:
        with tempfile.TemporaryDirectory() as tmp:
            cache = Path(tmp) / "cache.h5"
            synthetic_cache(cache)
            start = time.perf_counter()
            kwargs = {} if args.jobs is None else {"jobs": args.jobs}
            compared = run_compare(cache, out=Path(tmp) / "report", **kwargs)
            seconds = time.perf_counter() - start
        print(f"\ndefault compare, 102 classes x 90, efficientnet_lite0-like + raw32-like: {seconds:.0f} s")
        result["compare_s"] = seconds
        result["compare_cells"] = [{"features": c.features, "head": c.head, "n": c.per_class,
                                    "mean": c.mean_std("accuracy")[0], "fit_s": c.mean_fit_seconds}
                                   for c in compared.cells]
        C.print_table(["features", "head", "N", "accuracy", "fit s per draw"],
                      [[c["features"], c["head"], c["n"], c["mean"], c["fit_s"]] for c in result["compare_cells"]])
    C.write_json(args.json, result)


if __name__ == "__main__":
    main()
