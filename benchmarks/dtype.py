"""`--dtype float16` storage: how much smaller the cache gets, and what it does to accuracy.

Extracts photo_vs_drawing with efficientnet_lite0 twice into a temporary cache (float32, then
float16 storage), and scores both with the same 5-fold stratified CV of standardised logistic
regression (C=0.1), the protocol of ../shared/datasets/README.md.

    python benchmarks/dtype.py
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import h5py
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import _common as C
from bottleneck_features.extraction import ExtractOptions, extract_dataset
from bottleneck_features.sources import load_backbone
from bottleneck_features.store import load_features


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=C.SMALL_SOURCE)
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--json", type=Path, default=C.OUT / "dtype.json")
    args = ap.parse_args()
    machine = C.machine()  # load average at the start

    backbone = load_backbone(args.model)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache.h5"
        for dtype in ("float32", "float16"):
            report = extract_dataset(args.data, backbone.using(dtype=dtype), cache, options=ExtractOptions())
            feats = load_features(cache, report.dataset, report.fingerprint)
            with h5py.File(cache, "r") as h5:
                vectors = h5[f"extractors/{report.fingerprint}/vectors"]
                stored, payload = vectors.id.get_storage_size(), vectors.size * vectors.dtype.itemsize
            cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
            head = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000))
            scores = cross_val_score(head, feats.X, feats.labels, cv=cv)
            results[dtype] = {"images": len(feats.X), "vector_bytes": stored, "payload_bytes": payload,
                              "bytes_per_image": stored / len(feats.X),
                              "cv_accuracy_mean": float(scores.mean()), "cv_accuracy_std": float(scores.std()),
                              "cv_scores": scores.tolist(), "X": feats.X}
    diff = np.abs(results["float32"].pop("X") - results["float16"].pop("X"))
    rows = [[k, r["images"], r["payload_bytes"] // r["images"], r["bytes_per_image"],
             f"{r['cv_accuracy_mean']:.4f} ± {r['cv_accuracy_std']:.4f}"] for k, r in results.items()]
    print(f"\n{args.model} on {args.data.name}: storage and 5-fold CV logistic regression (C=0.1)")
    C.print_table(["storage", "images", "bytes/image", "allocated/image", "accuracy"], rows)
    saving = 1 - results["float16"]["vector_bytes"] / results["float32"]["vector_bytes"]
    print(f"float16 halves the vectors; allocated on disk here {saving:.0%} less (the last ~1 MiB chunk of "
          f"each is partly empty); max |float32 - float16| = {diff.max():.2e}, mean {diff.mean():.2e}")
    C.write_json(args.json, {"machine": machine, "model": args.model, "data": str(args.data),
                             "results": results, "storage_saving": saving,
                             "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean())})


if __name__ == "__main__":
    main()
