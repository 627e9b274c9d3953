"""`auto` against every fixed head, and a fused row against its blocks, in one compare per dataset.

For photo_vs_drawing, hymenoptera and openclipart22 (built with ../shared/datasets/build_openclipart22.py;
pass its folder with --openclipart), EfficientNet-Lite0 and Lite2 are extracted into
benchmarks/out/auto.h5 (reruns reuse it); one compare per dataset then fits logreg, svm, knn, nb, et
and auto on Lite0, Lite2 and Lite0+Lite2, N = 15 and 30 per class (capped), 5 draws. Printed: per
dataset, N and row, the auto cell beside the best fixed cell and the default logreg; then each fused
row against its best single block; then `fit --head auto --budget B` on each dataset's fused features,
the search's time against its budget; then `fit --head auto` with no --model (each extraction and
their fusion searched) beside `fit --head logreg` on the default extraction, on the same split.
With --views K (default 8): K augmented views of Lite0 are cached for the --views-sets (default
photo_vs_drawing and hymenoptera), compared as views rows (logreg, svm, et, auto), and `fit --head auto`
with no --model then also tries each candidate trained on them.

    python benchmarks/auto.py --openclipart /tmp/openclipart22
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import _common as C
from bottleneck_features import api

HEADS = ["logreg", "svm", "knn", "nb", "et", "auto"]
MODELS = ["efficientnet_lite0", "efficientnet_lite2"]
FUSED = "+".join(MODELS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--openclipart", type=Path, default=C.SHARED / "openclipart22")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--budgets", default="5,20", help="seconds, for the fit --head auto rows")
    ap.add_argument("--views", type=int, default=8, help="augmented views of Lite0 per image; 0: none")
    ap.add_argument("--views-sets", default="photo_vs_drawing,hymenoptera")
    ap.add_argument("--sets", default="photo_vs_drawing,hymenoptera,openclipart22")
    args = ap.parse_args()
    machine = C.machine()
    cache = C.OUT / "auto.h5"
    datasets = {"photo_vs_drawing": C.SHARED / "photo_vs_drawing", "hymenoptera": C.SHARED / "hymenoptera",
                "openclipart22": args.openclipart}
    auto_rows, fused_rows, budget_rows, search_rows, views_rows, results = [], [], [], [], [], []
    budgets = [float(b) for b in args.budgets.split(",")]
    for name, folder in datasets.items():
        if name not in args.sets.split(","):
            continue
        if not folder.is_dir():
            print(f"{name}: {folder} not found, skipped")
            continue
        for model in MODELS:
            api.extract(str(folder), model, cache=cache, name=name)
        start = time.perf_counter()
        compared = api.compare(data=name, models=[*MODELS, FUSED], heads=HEADS, per_class=[15, 30], repeats=args.repeats,
                               cap=True, pixels=None, cache=cache, out=C.OUT / "auto" / name, embedding_map=False)
        seconds = time.perf_counter() - start
        cells = {(c.features, c.head, c.per_class): c.mean_std("accuracy") for c in compared.cells}
        results.append({"dataset": name, "compare_seconds": seconds,
                        "cells": [{"features": c.features, "head": c.head, "per_class": c.per_class,
                                   "draws": c.scores["accuracy"]} for c in compared.cells]})
        auto_rows += _against_fixed(name, compared.cells)
        rows = sorted({f for f, _, _ in cells})
        fused = next(f for f in rows if "+" in f)
        singles = [f for f in rows if "+" not in f]
        for n in (15, 30):
            for head in ("logreg", "svm", "auto"):
                best_single = max(singles, key=lambda f: cells[f, head, n][0])
                fused_rows.append((name, head, n, f"{cells[fused, head, n][0]:.3f}",
                                   f"{best_single} {cells[best_single, head, n][0]:.3f}",
                                   f"{(cells[fused, head, n][0] - cells[best_single, head, n][0]) * 100:+.1f}"))
        for budget in budgets:
            fitted = api.fit("auto", data=name, model=FUSED, cache=cache, budget=budget,
                             out=C.OUT / "auto" / f"{name}-auto.joblib")
            auto = fitted.sidecar["auto"]
            budget_rows.append((name, f"{budget:g}", f"{auto['seconds']:.2f}", f"{auto['seconds'] / budget:.2f}",
                                auto["candidates_scored"], f"{auto['choice']['head']} {auto['choice']['params']}",
                                f"{auto['cv_accuracy']:.3f}", f"{fitted.sidecar['metrics']['test_accuracy']:.3f}"))
        if args.views and name in args.views_sets.split(","):
            views_rows += _views(name, folder, cache, args.views, args.repeats)
        searched = api.fit("auto", data=name, cache=cache, out=C.OUT / "auto" / f"{name}-search.joblib")
        default = api.fit("logreg", data=name, model=MODELS[-1], cache=cache, out=C.OUT / "auto" / f"{name}-logreg.joblib")
        auto = searched.sidecar["auto"]
        search_rows.append((name, f"{auto['choice']['head']} on {auto['choice']['model']}", auto["candidates_scored"],
                            f"{auto['seconds']:.1f}", f"{auto['cv_accuracy']:.3f}",
                            f"{searched.sidecar['metrics']['test_accuracy']:.3f}",
                            f"{default.sidecar['extractor']['label']} {default.sidecar['metrics']['test_accuracy']:.3f}"))
    print("\nauto against the fixed heads (accuracy, mean of the draws; points = 100 x difference)")
    C.print_table(["dataset", "row", "N", "auto", "best fixed", "auto - best ± SE", "auto - logreg"], auto_rows)
    print("\nfused rows against their best single block")
    C.print_table(["dataset", "head", "N", "fused", "best single", "difference (points)"], fused_rows)
    print("\nfit --head auto on the fused features: the search against its budget")
    C.print_table(["dataset", "budget s", "search s", "search / budget", "candidates", "chosen", "CV accuracy",
                   "test accuracy"], budget_rows)
    print("\nfit --head auto with no --model (every extraction and their fusion) against fit --head logreg")
    C.print_table(["dataset", "chosen", "candidates", "search s", "CV accuracy", "test accuracy", "logreg (default)"],
                  search_rows)
    if views_rows:
        print(f"\nviews rows (Lite0 + {args.views} cached augmented views): auto against the fixed heads")
        C.print_table(["dataset", "row", "N", "auto", "best fixed", "auto - best ± SE", "auto - logreg"], views_rows)
    C.write_json(C.OUT / "auto.json", {"machine": machine, "results": results, "budget": budget_rows,
                                       "search": search_rows, "views": views_rows})


def _views(name: str, folder: Path, cache: Path, views: int, repeats: int) -> list[tuple]:
    """Lite0's views cached, then its views rows compared: auto (folds split by image) against the fixed heads."""
    start = time.perf_counter()
    report = api.extract(str(folder), MODELS[0], cache=cache, name=name, views=views)
    print(f"{name}: {views} views of {MODELS[0]} cached in {time.perf_counter() - start:.0f} s")
    heads = ["logreg", "svm", "et", "auto"]
    compared = api.compare(data=name, models=[report.fingerprint], heads=heads,  # the views' extraction
                           per_class=[15, 30], repeats=repeats, cap=True, pixels=None, cache=cache,
                           out=C.OUT / "auto" / f"{name}-views", embedding_map=False)
    return _against_fixed(name, compared.cells)


def _against_fixed(name: str, cells: list) -> list[tuple]:
    """Per row and N: the auto cell beside the best fixed one and logreg, in points; the gap to the best
    with its standard error over the paired draws (the same training images)."""
    draws = {(c.features, c.head, c.per_class): np.array(c.scores["accuracy"]) for c in cells}
    rows = []
    for features, n in sorted({(f, n) for f, _, n in draws}):
        fixed = {h: d for (f, h, k), d in draws.items() if (f, k) == (features, n) and h != "auto"}
        best = max(fixed, key=lambda h: fixed[h].mean())
        auto = draws[features, "auto", n]
        gap = (auto - fixed[best]) * 100
        se = gap.std(ddof=1) / np.sqrt(len(gap)) if len(gap) > 1 else float("nan")
        rows.append((name, features, n, f"{auto.mean():.3f}", f"{best} {fixed[best].mean():.3f}",
                     f"{gap.mean():+.1f} ± {se:.1f}", f"{(auto - fixed['logreg']).mean() * 100:+.1f}"))
    return rows


if __name__ == "__main__":
    main()
