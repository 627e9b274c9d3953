"""audit: recall and precision of each detector on injected faults, and the nearest-neighbour search at scale.

1. Faults: photo_vs_drawing is copied into train/ and test/ folders (a content-hash 75/25 split),
   then 10 train files are copied into test under new names (exact duplicates, leakage), 10 files
   are re-encoded (JPEG quality 60) and resized to 90 % beside their original (near-duplicates), 10
   files are moved to the other class (swapped labels), 5 hymenoptera photos are added to photo/
   (outliers that are still photos) and 5 off-domain files to drawing/ (junk: noise, a page of
   text, a flat colour, a checkerboard, a colour ramp). The copy is extracted with EfficientNet-Lite0 and audited with the defaults;
   each detector's recall is the injected faults it finds, its precision the share of its findings
   that are injected (the set's own near-duplicates and label errors count against it). Swapped
   labels are scored on the top 20 label issues. Near-duplicates also at --threshold 0.85.
2. Scale: cosine_neighbours (k=5) on 20,000 and 100,000 vectors of 1,280-d (Lite0-like: a few
   hundred clusters on a low-rank subspace, plus noise), and the recall of the projected search's
   neighbours against the exact search on 20,000 rows.

    python benchmarks/audit.py                 # both (about 3 min on 2 cores)
    python benchmarks/audit.py --rows 0        # only the faults
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import _common as C
from bottleneck_features.dataset_audit import OUTLIER_K, run_audit
from bottleneck_features.extraction import ExtractOptions, extract_dataset
from bottleneck_features.neighbours import cosine_neighbours
from bottleneck_features.sources import load_backbone
from bottleneck_features.store import Features, load_features

HYMENOPTERA = C.SHARED / "hymenoptera" / "train"


def inject(root: Path) -> dict[str, set]:
    """The faulty copy of photo_vs_drawing under `root`; what was injected, by detector."""
    files = sorted(C.SMALL_SOURCE.rglob("*.jpg"))
    split = {f: "test" if hashlib.sha256(f.read_bytes()).digest()[0] < 64 else "train" for f in files}
    placed = {}
    for f in files:
        target = root / split[f] / f.parent.name / f.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, target)
        placed[f] = target
    rng = np.random.default_rng(0)
    train = [f for f in files if split[f] == "train"]
    chosen = rng.permutation(len(train))
    leaked, near, swapped = ([train[i] for i in chosen[a:a + 10]] for a in (0, 10, 20))
    faults: dict[str, set] = {"duplicate": set(), "near-duplicate": set(), "label-issue": set(), "outlier": set(),
                              "outlier (junk)": set()}
    for i, f in enumerate(leaked):
        copy = root / "test" / f.parent.name / f"leaked{i}.jpg"
        shutil.copy(f, copy)
        faults["duplicate"].add(frozenset({_rel(root, placed[f]), _rel(root, copy)}))
    for i, f in enumerate(near):
        img = Image.open(f).convert("RGB")
        img = img.resize((int(img.width * 0.9), int(img.height * 0.9)), Image.Resampling.BICUBIC)
        copy = placed[f].with_name(f"reencoded{i}.jpg")
        img.save(copy, "JPEG", quality=60)
        faults["near-duplicate"].add(frozenset({_rel(root, placed[f]), _rel(root, copy)}))
    for f in swapped:
        other = "photo" if f.parent.name == "drawing" else "drawing"
        moved = placed[f].parent.parent / other / f"swapped-{f.name}"
        placed[f].rename(moved)
        faults["label-issue"].add(_rel(root, moved))
    for i, f in enumerate(sorted(HYMENOPTERA.rglob("*.jpg"))[::40][:5]):
        copy = root / "train" / "photo" / f"insect{i}.jpg"
        shutil.copy(f, copy)
        faults["outlier"].add(_rel(root, copy))
    for name, img in junk(rng).items():
        copy = root / "train" / "drawing" / f"junk-{name}.png"
        img.save(copy)
        faults["outlier (junk)"].add(_rel(root, copy))
    return faults


def junk(rng: np.random.Generator, size: int = 256) -> dict[str, Image.Image]:
    """Files that creep into scraped folders and belong to no class."""
    text = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(text)
    for line in range(12):
        draw.text((8, 8 + 20 * line), " ".join(["lorem", "ipsum", "dolor", "sit", "amet"][line % 5:]), fill="black")
    ramp = np.linspace(0, 255, size, dtype=np.uint8)
    return {
        "noise": Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)),
        "text": text,
        "flat": Image.new("RGB", (size, size), (90, 140, 200)),
        "checkerboard": Image.fromarray(((np.indices((size, size)).sum(0) // 32 % 2) * 255).astype(np.uint8)).convert("RGB"),
        "ramp": Image.fromarray(np.stack([np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size)),
                                          np.full((size, size), 128, np.uint8)], axis=2)),
    }


def _rel(root: Path, path: Path) -> str:
    return str(path.relative_to(root))


def faults_table() -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "faulty"
        faults = inject(root)
        cache = Path(tmp) / "cache.h5"
        report = extract_dataset(root, load_backbone("efficientnet_lite0"), cache, options=ExtractOptions())
        start = time.perf_counter()
        audit = run_audit(cache)
        seconds = time.perf_counter() - start
        lower = run_audit(cache, threshold=0.85)
        _print_outlier_ranks(load_features(cache, report.dataset, report.fingerprint), faults)
    rows = []
    for issue, injected in [*faults.items(), ("near-duplicate at 0.85", faults["near-duplicate"])]:
        findings = lower.findings if issue.endswith("0.85") else audit.findings
        found = [f for f in findings if f.issue == issue.split()[0]]  # "outlier (junk)": outlier findings
        if issue == "label-issue":
            found = found[:20]
            hits = [f for f in found if f.path in injected]
            recall = len({f.path for f in hits}) / len(injected)
        elif issue.startswith("outlier"):  # precision: the findings that are either kind of injected outlier
            recall = len([f for f in found if f.path in injected]) / len(injected)
            hits = [f for f in found if f.path in faults["outlier"] | faults["outlier (junk)"]]
        else:  # a group counts when it holds an injected pair
            hits = [f for f in found if any(pair <= {f.path, *f.related} for pair in injected)]
            recall = sum(any(pair <= {f.path, *f.related} for f in found) for pair in injected) / len(injected)
        precision = len(hits) / len(found) if found else float("nan")
        rows.append({"detector": issue + (" (top 20)" if issue == "label-issue" else ""), "injected": len(injected),
                     "findings": len(found), "recall": recall, "precision": precision})
    C.print_table(["detector", "injected", "findings", "recall", "precision"], [list(r.values()) for r in rows])
    print(f"audit of {sum(1 for _ in audit.findings)} findings on {sum(c.images for c in audit.classes)} images: "
          f"{seconds:.1f} s")
    return rows


def _print_outlier_ranks(features: Features, faults: dict[str, set]) -> None:
    """Where the injected outliers rank among all images by the outlier score (mean cosine distance
    to the OUTLIER_K nearest), flagged or not."""
    neighbours = cosine_neighbours(features.X, OUTLIER_K)
    order = np.argsort(-(1 - neighbours.similarity.mean(axis=1)))
    rank = {features.paths[row]: r + 1 for r, row in enumerate(order)}
    for issue in ("outlier", "outlier (junk)"):
        print(f"{issue}: ranks {sorted(rank[path] for path in faults[issue])} of {len(rank)}")


def synthetic(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(64, 1280)).astype(np.float32)
    centres = rng.normal(size=(300, 64)).astype(np.float32) * 2
    low = centres[rng.integers(0, 300, n)] + rng.normal(size=(n, 64)).astype(np.float32)
    return np.maximum(low @ basis / 8 + rng.normal(scale=0.3, size=(n, 1280)).astype(np.float32), 0)


def scale_table(rows: int) -> list[dict]:
    results = []
    X = synthetic(20_000)
    start = time.perf_counter()
    exact = cosine_neighbours(X, 5)
    results.append({"rows": 20_000, "search": "exact", "seconds": time.perf_counter() - start, "recall@5": 1.0})
    start = time.perf_counter()
    projected = cosine_neighbours(X, 5, exact_max_rows=0)
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(projected.index, exact.index, strict=True)])
    results.append({"rows": 20_000, "search": "PCA-64 + rescoring", "seconds": time.perf_counter() - start,
                    "recall@5": float(recall)})
    if rows > 20_000:
        X = synthetic(rows, seed=1)
        start = time.perf_counter()
        cosine_neighbours(X, 5)
        results.append({"rows": rows, "search": "PCA-64 + rescoring", "seconds": time.perf_counter() - start,
                        "recall@5": float("nan")})
    C.print_table(["rows", "search", "seconds", "recall@5"], [list(r.values()) for r in results])
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000, help="the scale test's largest size (0: skip it)")
    ap.add_argument("--faults", type=int, default=1, help="0: skip the injected faults")
    args = ap.parse_args()
    machine = C.machine()
    payload: dict = {"machine": machine}
    if args.faults:
        payload["faults"] = faults_table()
    if args.rows:
        payload["scale"] = scale_table(args.rows)
    C.write_json(C.OUT / "audit.json", payload)


if __name__ == "__main__":
    main()
