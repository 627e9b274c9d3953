"""Where does extraction time go, and which decode workers x torch threads x batch size is best here?

Runs `extract_dataset` (cold HDF5 cache) for each combination and splits its wall time into model
forward (with input normalisation), HDF5 writes, and the rest (decoding, which on a CPU takes turns
with the model, or waiting for decoded batches; hashing, scanning, start-up).

    python benchmarks/tune.py --model efficientnet_lite0 --set small --count 256 --workers 0,1,2 --threads 1,2
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from throughput import _ceiling

import _common as C
from bottleneck_features import extraction as extract
from bottleneck_features.extraction import ExtractOptions, extract_dataset
from bottleneck_features.runtime import resolve_device
from bottleneck_features.sources import load_backbone
from bottleneck_features.store import Store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--set", choices=("small", "large"), default="small")
    ap.add_argument("--count", type=int, default=256)
    ap.add_argument("--workers", default="auto,0,1,2", help="decode workers (threads taking turns with the model on a CPU); auto: extract's default")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batch-sizes", default="32")
    ap.add_argument("--json", type=Path, default=C.OUT / "tune.json")
    args = ap.parse_args()
    machine = C.machine()  # load average at the start

    root = C.small_set(args.count) if args.set == "small" else C.large_set(args.count)
    weights = None if args.model in ("efficientnet_lite0", "squeezenet1_1") else "random"
    backbone = load_backbone(args.model, weights=weights)
    seconds = {"model": 0.0, "hdf5": 0.0}
    extract.forward_batch = _timed(extract.forward_batch, seconds, "model")  # synchronous on CPU
    Store.add_vectors = _timed(Store.add_vectors, seconds, "hdf5")  # type: ignore[method-assign]
    workers_choices = [None if w == "auto" else int(w) for w in args.workers.split(",")]
    combos = itertools.product(_ints(args.batch_sizes), workers_choices, _ints(args.threads))
    rows, results = [], []
    for batch, workers, threads in combos:
        seconds.update(model=0.0, hdf5=0.0)
        C.evict(root)
        with tempfile.TemporaryDirectory() as tmp:
            options = ExtractOptions(batch_size=batch, workers=workers, threads=threads)
            report = extract_dataset(root, backbone, Path(tmp) / "cache.h5", options=options)
        other = report.seconds - seconds["model"] - seconds["hdf5"]
        result = dict(batch=batch, workers=workers, threads=threads, images=report.found,
                      images_per_s=report.found_per_second, seconds=report.seconds,
                      model_s=seconds["model"], hdf5_s=seconds["hdf5"], other_s=other)
        results.append(result)
        rows.append([batch, workers, threads, report.found_per_second, report.seconds, seconds["model"],
                     seconds["hdf5"], other])
        rows[-1][1] = "auto" if workers is None else workers
        print(*(f"{v:.2f}" if isinstance(v, float) else v for v in rows[-1]), flush=True)
    files = sorted(p for p in root.rglob("*.jpg"))
    for batch, threads in itertools.product(_ints(args.batch_sizes), _ints(args.threads)):
        options = ExtractOptions(batch_size=batch, threads=threads)
        ceiling = _ceiling(files, backbone, options, resolve_device("cpu"), batch)
        results.append(dict(batch=batch, threads=threads, ceiling_s=ceiling, images=len(files)))
        rows.append([batch, "model alone", threads, len(files) / ceiling, ceiling, ceiling, 0.0, 0.0])
    print(f"\n{args.model}, {args.set} JPEGs x {args.count}, cold HDF5 cache")
    C.print_table(["batch", "workers", "threads", "img/s", "total s", "model s", "hdf5 s", "other s"], rows)
    C.write_json(args.json, {"machine": machine, "model": args.model, "set": args.set, "results": results})


def _timed(fn: Callable, seconds: dict[str, float], key: str) -> Callable:
    """`fn`, adding the seconds each call takes to `seconds[key]`."""

    def wrapper(*args: object, **kwargs: object) -> object:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            seconds[key] += time.perf_counter() - start

    return wrapper


def _ints(csv: str) -> list[int]:
    return [int(v) for v in csv.split(",")]


if __name__ == "__main__":
    main()
