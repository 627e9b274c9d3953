"""Cached features written out for other tools: NumPy `.npz`, CSV, or Parquet (with pyarrow).

Every format carries the vectors with each image's path, label, split and sha256, and the extractor
spec (as JSON) that made them: a list of specs for fused extractions (a+b), in column order.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import BottleneckError
from .spec import ExtractorSpec
from .store import Features

FORMATS = ("npz", "csv", "parquet")
# A cell starting with one of these is run as a formula by spreadsheet programs (OWASP: CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(text: str) -> str:
    """`text`, with a leading single quote if a spreadsheet would read it as a formula."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def export_features(features: Features, out: Path, fmt: str | None = None,
                    specs: Sequence[ExtractorSpec] | None = None) -> Path:
    """Write `features` to `out` in `fmt` (default: from out's suffix); the path written. `specs`: the
    extractors of fused blocks, side by side in the vectors; their specs are written as a list."""
    out = Path(out)
    fmt = fmt or out.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise BottleneckError(f"--format {fmt or '(none)'}: use one of {', '.join(FORMATS)} (or an OUT ending in one)")
    out.parent.mkdir(parents=True, exist_ok=True)
    if specs is not None and len(specs) > 1:
        spec = json.dumps([s.to_dict() for s in specs])
    else:
        spec = json.dumps(features.spec.to_dict() if features.spec else None)
    if fmt == "npz":
        with out.open("wb") as f:  # a file object: np.savez would append .npz to other names
            np.savez(f, X=features.X, labels=features.labels.astype(str), splits=features.splits.astype(str),
                     paths=np.array(features.paths, dtype=str), sha256=np.array(features.shas, dtype=str),
                     spec=np.array(spec))
    elif fmt == "csv":
        _write_csv(features, out)
    else:
        _write_parquet(features, out, spec)
    return out


def _write_csv(features: Features, out: Path) -> None:
    dims = features.X.shape[1]
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split", "sha256", *(f"f{i}" for i in range(dims))])
        for path, label, split, sha, row in zip(features.paths, features.labels, features.splits, features.shas,
                                                features.X, strict=True):
            writer.writerow([spreadsheet_safe(path), spreadsheet_safe(str(label)), split, sha,
                             *(f"{v:.9g}" for v in row)])


def _write_parquet(features: Features, out: Path, spec: str) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise BottleneckError("--format parquet needs pyarrow: pip install 'bottleneck-features[parquet]' "
                              "(or pip install pyarrow), or use --format npz or csv") from None
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(features.X.astype(np.float32).ravel()), features.X.shape[1])
    table = pa.table({"path": features.paths, "label": features.labels.astype(str).tolist(),
                      "split": features.splits.astype(str).tolist(), "sha256": features.shas, "vector": vectors})
    pq.write_table(table.replace_schema_metadata({"bottleneck.spec": spec}), out)
