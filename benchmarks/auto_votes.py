"""How much auto's votes should weigh the extra-trees, measured on image sets apart from benchmarks/auto.py's.

auto prefers a soft vote (tuned logreg + et; tuned logreg + svm + et) to any single head within the
noise of the best. Here every candidate auto scores is recorded in each compare draw (out-of-fold
probabilities on the draw's training images, test probabilities after the refit), and auto's choice
is replayed for each weight of the trees in the votes (ET_WEIGHT, ET_WEIGHT_TWO_CLASSES), and with
no votes and the trees preferred (`et alone`): the same choice auto makes, without refitting
(replaying the weight auto ships gives its cells exactly).

Design sets, built from Debian packages under benchmarks/out/design (`apt-get install -y
dataset-fashion-mnist tuxpaint-stamps-default openclipart-png`): fmnist2 (Fashion-MNIST T-shirt vs
shirt, 200 each), tux2 (Tux Paint photo stamps, mammals vs birds), fmnist10 (Fashion-MNIST, 80 per
class), clip_other (18 OpenClipart categories none of openclipart22's), and the two-class
fmnist_coat (pullover vs coat), fmnist_boots (sneaker vs ankle boot), fmnist_dress (T-shirt vs dress)
and tux_food (food vs plants). EfficientNet-Lite0, Lite2 and Lite0+Lite2; N = 15 and 30 per class, capped.

    python benchmarks/auto_votes.py --sets fmnist2,tux2 --repeats 10
    python benchmarks/auto_votes.py --sets fmnist10,clip_other --repeats 5
    python benchmarks/auto_votes.py --sets fmnist_coat,fmnist_boots,fmnist_dress,tux_food --repeats 10
"""

from __future__ import annotations

import argparse
import glob
import gzip
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import _common as C
from bottleneck_features import api
from bottleneck_features.evaluate import draw_per_class, protocol_pool
from bottleneck_features.heads._auto import (
    AutoHeadClassifier,
    _aligned,
    cv_standard_error,
    first_within_one_se,
    preference,
    soft_votes,
)
from bottleneck_features.heads._tuning import _StratifiedKFoldUpTo

MODELS = ["efficientnet_lite0", "efficientnet_lite2"]
DESIGN = C.OUT / "design"
LOGREG, SVM, ET = "logreg {'tune': True}", "svm {'C': 0.0005}", "et {'min_samples_leaf': 1}"
FIXED = {"logreg": LOGREG, "svm": SVM, "knn": "knn {'n_neighbors': 5}", "nb": "nb {'var_smoothing': 1e-09}", "et": ET}
WEIGHTS = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 24.0)
CLIP_OTHER = ["recreation/games", "signs_and_symbols/map_symbols", "shapes/arrows", "computer/buttons",
              "recreation/party", "signs_and_symbols/led", "recreation/holiday", "people/stickmen", "shapes/jigsaw",
              "people/bodypart", "shapes/flowchart", "recreation/religion", "signs_and_symbols/clocks",
              "shapes/callouts", "animals/fish", "plants/trees", "education/books"]


def _idx(path: str, offset: int) -> np.ndarray:
    with gzip.open(path) as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def fashion(name: str, classes: list[int], per_class: int) -> Path:
    root = "/usr/share/datasets/fashion-mnist"
    images = _idx(f"{root}/train-images-idx3-ubyte.gz", 16)
    labels = _idx(f"{root}/train-labels-idx1-ubyte.gz", 8)
    for c in classes:
        os.makedirs(DESIGN / name / f"c{c}", exist_ok=True)
        for i, j in enumerate(np.flatnonzero(labels == c)[:per_class]):
            Image.fromarray(images.reshape(-1, 28, 28)[j]).resize((112, 112)).convert("RGB").save(
                DESIGN / name / f"c{c}" / f"{i}.png")
    return DESIGN / name


def drawings(name: str, source: str, classes: list[str], cap: int) -> Path:
    """Class folders of PNG stamps or clip art flattened onto white (symbolic links, duplicates, skipped)."""
    for c in classes:
        files = sorted(f for f in glob.glob(f"{source}/{c}/**/*.png", recursive=True)
                       if not os.path.islink(f) and "cartoon" not in f)
        random.Random(0).shuffle(files)
        target = DESIGN / name / c.replace("/", "-")
        os.makedirs(target, exist_ok=True)
        for i, path in enumerate(files[:cap]):
            image = Image.open(path).convert("RGBA")
            image.thumbnail((256, 256))
            canvas = Image.new("RGB", image.size, "white")
            canvas.paste(image, mask=image.getchannel("A"))
            canvas.save(target / f"{i}.png")
    return DESIGN / name


BUILD = {"fmnist2": lambda: fashion("fmnist2", [0, 6], 200),
         "tux2": lambda: drawings("tux2", "/usr/share/tuxpaint/stamps", ["animals/mammals", "animals/birds"], 80),
         "fmnist10": lambda: fashion("fmnist10", list(range(10)), 80),
         "clip_other": lambda: drawings("clip_other", "/usr/share/openclipart/png", CLIP_OTHER, 80),
         "fmnist_coat": lambda: fashion("fmnist_coat", [2, 4], 200),
         "fmnist_boots": lambda: fashion("fmnist_boots", [7, 9], 200),
         "fmnist_dress": lambda: fashion("fmnist_dress", [0, 3], 200),
         "tux_food": lambda: drawings("tux_food", "/usr/share/tuxpaint/stamps", ["food", "plants"], 80)}


def record(X: np.ndarray, widths: tuple[int, ...], y: np.ndarray, test: np.ndarray) -> dict[str, Any]:
    """Every single candidate's out-of-fold and test probabilities in one draw."""
    auto = AutoHeadClassifier(blocks=widths)
    auto.classes_ = np.unique(y)
    folds = list(_StratifiedKFoldUpTo(5, 0).split(y, y))
    smallest = min(len(train) for train, _ in folds)
    found: dict[str, Any] = {"y": y, "classes": auto.classes_, "folds": folds, "oof": {}, "test": {}}
    for candidate in auto.candidates(len(auto.classes_)):
        if len(candidate.members) > 1 or candidate.params.get("n_neighbors", 0) > smallest:
            continue
        key = f"{candidate.head} {candidate.params}"
        oof = np.zeros((len(y), len(auto.classes_)))
        for train, held in folds:
            oof[held] = _aligned(auto._build(candidate).fit(X[train], y[train]), X[held], auto.classes_)
        found["oof"][key] = oof
        found["test"][key] = _aligned(auto._build(candidate).fit(X, y), test, auto.classes_)
    return found


def choose(draw: dict[str, Any], et_weight: float | None) -> np.ndarray:
    """auto's choice replayed with the trees weighing `et_weight` in the votes (None: no votes, the trees
    preferred to the other heads). Returns its test probabilities."""
    entries = {k: (draw["oof"][k], draw["test"][k]) for k in draw["oof"]}
    votes = []
    if et_weight is not None:
        for vote, shipped in soft_votes(len(draw["classes"])):  # auto's votes, the trees' weight replaced
            members = [f"{head} {params}" for head, params in vote]
            weights = [et_weight if head == "et" else w for (head, _), w in zip(vote, shipped, strict=True)]
            votes.append("+".join(members))
            entries[votes[-1]] = tuple(np.average([entries[m][i] for m in members], axis=0, weights=weights)
                                       for i in (0, 1))
    names = list(entries)
    y, classes = draw["y"], draw["classes"]
    folds = [[np.mean(classes[entries[k][0][held].argmax(1)] == y[held]) for _, held in draw["folds"]] for k in names]
    accuracies = [float(np.mean(f)) for f in folds]
    order = preference(accuracies, [k in votes for k in names], [False] * len(names)) if votes else \
        [names.index(ET)] + [i for i, k in enumerate(names) if k != ET]
    chosen = first_within_one_se(accuracies, [cv_standard_error(f, len(y)) for f in folds], order)
    return entries[names[chosen]][1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="fmnist2,tux2,fmnist10,clip_other")
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    cache = C.OUT / "design.h5"
    rules = {f"votes, trees x{w:g}": w for w in WEIGHTS} | {"et alone": None}
    rows, payload = [], []
    gaps: dict[str, list[list[float]]] = {}
    for name in args.sets.split(","):
        folder = DESIGN / name if (DESIGN / name).is_dir() else BUILD[name]()
        for model in MODELS:
            api.extract(str(folder), model, cache=cache, name=name)
        first, second = (api.load_features(name, m, cache=cache) for m in MODELS)
        order = {p: i for i, p in enumerate(second.paths)}
        X0, X2 = first.X, second.X[[order[p] for p in first.paths]]
        features = {"Lite0": (X0, ()), "Lite2": (X2, ()), "Lite0+Lite2": (np.hstack([X0, X2]), (X0.shape[1], X2.shape[1]))}
        pool, test = protocol_pool(first.splits)
        for n in (15, 30):
            cells: dict[tuple[str, str], list[float]] = {}
            for split in draw_per_class(first.labels, n, args.repeats, 0, pool=pool, test=test, cap=True):
                y, truth = first.labels[split.train], first.labels[split.test]
                for row, (X, widths) in features.items():
                    draw = record(X[split.train], widths, y, X[split.test])
                    accuracy = {h: draw["test"][k] for h, k in FIXED.items()} | {r: choose(draw, w) for r, w in rules.items()}
                    for what, probabilities in accuracy.items():
                        score = float(np.mean(draw["classes"][probabilities.argmax(1)] == truth))
                        cells.setdefault((row, what), []).append(score)
            for row in features:
                fixed = {h: np.mean(cells[row, h]) for h in FIXED}
                best = max(fixed, key=lambda h: fixed[h])
                gaps.setdefault(name, []).append([(np.mean(cells[row, r]) - fixed[best]) * 100 for r in rules])
                rows.append((name, row, n, f"{best} {fixed[best]:.3f}", f"{fixed['logreg']:.3f}",
                             *(f"{g:+.1f}" for g in gaps[name][-1])))
                payload.append({"dataset": name, "row": row, "per_class": n,
                                "draws": {what: scores for (r, what), scores in cells.items() if r == row}})
        print(f"{name}: done", flush=True)
    print("\nauto's choice replayed, points from the best fixed head (mean of the draws)")
    C.print_table(["dataset", "row", "N", "best fixed", "logreg", *rules], rows)
    print("\nper set: the mean of its cells, how many within 0.5 points, the worst")
    summary = [(name, *(f"{g.mean():+.2f}, {(g >= -0.5).sum()}/{len(g)}, {g.min():+.1f}" for g in np.array(per_cell).T))
               for name, per_cell in gaps.items()]
    C.print_table(["dataset", *rules], summary)
    C.write_json(C.OUT / f"auto_votes-{args.sets.replace(',', '-')}.json", {"machine": C.machine(), "cells": payload})


if __name__ == "__main__":
    main()
