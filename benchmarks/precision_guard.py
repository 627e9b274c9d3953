"""The bf16 accuracy guard of `--precision auto`: for every backbone with offline weights, bf16
features must give a 5-fold cross-validated logreg accuracy no more than 0.3 points below fp32's on
photo_vs_drawing, hymenoptera (train and val together) and openclipart22 (a gain is no failure).

Both precisions are extracted into one cache (benchmarks/out/guard.h5, reused by reruns), then
scored on the same folds. openclipart22 is built by ../shared/datasets/build_openclipart22.py;
pass its folder with --oc22 (skipped when missing).

    python benchmarks/precision_guard.py --oc22 /tmp/oc22
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold, cross_val_score

import _common as C
from bottleneck_features.extraction import ExtractOptions, extract_dataset
from bottleneck_features.heads import make_head
from bottleneck_features.sources import resolve_spec
from bottleneck_features.store import load_features

MODELS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "squeezenet1_1")
GUARD = 0.003


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--oc22", type=Path, default=Path("/tmp/oc22"))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--cache", type=Path, default=C.OUT / "guard.h5")
    args = ap.parse_args()
    machine = C.machine()
    datasets = {"photo_vs_drawing": C.SHARED / "photo_vs_drawing", "hymenoptera": C.SHARED / "hymenoptera",
                "openclipart22": args.oc22}
    rows, results = [], []
    for model in args.models.split(","):
        for name, root in datasets.items():
            if not root.is_dir():
                print(f"skipped {name}: {root} not found")
                continue
            scores = {}
            for precision in ("fp32", "bf16"):
                report = extract_dataset(root, resolve_spec(model, precision=precision), args.cache, name=name,
                                         options=ExtractOptions(), remember=False)
                features = load_features(args.cache, name, report.fingerprint)
                folds = StratifiedKFold(5, shuffle=True, random_state=0)
                scores[precision] = float(np.mean(cross_val_score(make_head("logreg"), features.X, features.y,
                                                                  cv=folds)))
            delta = scores["bf16"] - scores["fp32"]
            rows.append((model, name, f"{scores['fp32']:.4f}", f"{scores['bf16']:.4f}", f"{100 * delta:+.2f}",
                         "ok" if delta >= -GUARD else "FAILS"))
            results.append({"model": model, "dataset": name, **scores, "passes": delta >= -GUARD})
            print(*rows[-1], flush=True)
    C.print_table(["model", "dataset", "fp32", "bf16", "points", "guard"], rows)
    C.write_json(C.OUT / "precision_guard.json", {"machine": machine, "guard": GUARD, "results": results})


if __name__ == "__main__":
    main()
