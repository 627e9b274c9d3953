"""Reading images from WebDataset tar shards against the same images as files, side by side in one run.

N small real JPEGs (photo_vs_drawing, repeated with distinct bytes) as class folders, and the same
images written into S tar shards (`KEY.jpg` + `KEY.cls`, as WebDataset writes them). Each row extracts
them into a fresh cache on the local engine and on a local Ray instance (2 actors, one CPU each,
started once beforehand), then runs again on the full cache (the rerun: nothing read but a stat of
each file or shard). Files and shards take turns, --repeats times; the fastest run of each is shown. The default model is raw32 (raw pixels): the network then costs next to nothing and
the rows measure what differs, reading and decoding; pass --model for a real one.

    python benchmarks/inputs.py                           # 20,000 images, 100 shards, raw32
    python benchmarks/inputs.py --images 2000 --shards 10 --model efficientnet_lite0
"""

from __future__ import annotations

import argparse
import io
import tarfile
import tempfile
import time
from pathlib import Path

import ray

import _common as C
from bottleneck_features.datasets import scan_dataset
from bottleneck_features.extraction import ExtractOptions, extract_dataset
from bottleneck_features.registry import Backbone
from bottleneck_features.sources import load_backbone


def write_shards(root: Path, shards: int) -> str:
    """The folder's images as `shards` tar shards under benchmarks/out/; reused when complete."""
    entries = scan_dataset(root).entries
    out = C.OUT / f"shards-{len(entries)}-{shards}"
    pattern = f"{out}/train-{{000000..{shards - 1:06d}}}.tar"
    if (out / ".complete").exists():
        return pattern
    out.mkdir(parents=True, exist_ok=True)
    per_shard = -(-len(entries) // shards)
    for s in range(shards):
        with tarfile.open(out / f"train-{s:06d}.tar", "w") as tar:
            for i, entry in enumerate(entries[s * per_shard:(s + 1) * per_shard], s * per_shard):
                for name, data in ((f"{i:08d}.jpg", (root / entry.path).read_bytes()),
                                   (f"{i:08d}.cls", entry.label.encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    (out / ".complete").write_text(str(shards))
    return pattern


def run(data: str, backbone: Backbone, options: ExtractOptions, images: int) -> tuple[float, float]:
    """(seconds to extract `data` into a fresh cache, seconds to run again on it)."""
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache.h5"
        start = time.perf_counter()
        report = extract_dataset(data, backbone, cache, options=options)
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        again = extract_dataset(data, backbone, cache, options=options)
        rerun = time.perf_counter() - start
    assert report.computed == images and again.computed == 0, (report.summary(), again.summary())
    return seconds, rerun


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--shards", type=int, default=100)
    ap.add_argument("--model", default="raw32")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each row, taking turns; the fastest is shown")
    args = ap.parse_args()
    machine = C.machine()
    files = C.small_set(args.images)
    start = time.perf_counter()
    shards = write_shards(files, args.shards)
    print(f"{args.images} files in {args.shards} shards ready ({time.perf_counter() - start:.1f} s)")
    backbone = load_backbone(args.model)
    start = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    print(f"ray.init (a local instance, {int(ray.cluster_resources()['CPU'])} CPUs): {time.perf_counter() - start:.1f} s")
    rows, results = [], []
    for engine in ("local", "ray"):
        options = ExtractOptions(batch_size=args.batch_size, engine=engine, actors=2 if engine == "ray" else 1)
        timed: dict[str, list[tuple[float, float]]] = {"files": [], "shards": []}
        for _ in range(args.repeats):  # files and shards take turns, so a busy moment hits both
            for layout, data in (("files", str(files)), ("shards", shards)):
                timed[layout].append(run(data, backbone, options, args.images))
        for layout, runs in timed.items():
            seconds, rerun = min(runs)
            name = engine if engine == "local" else "ray, 2 actors"
            rows.append((name, layout, f"{seconds:.1f}", f"{args.images / seconds:.0f}", f"{rerun:.2f}"))
            results.append({"engine": engine, "layout": layout, "seconds": seconds, "rerun_seconds": rerun,
                            "runs": runs, "images": args.images, "shards": args.shards, "model": args.model})
    C.print_table(["engine", "input", "seconds", "images/s", "rerun s"], rows)
    for engine in ("local", "ray"):
        by = {r["layout"]: r["seconds"] for r in results if r["engine"] == engine}
        print(f"{engine}: shards / files time {by['shards'] / by['files']:.2f}")
    C.write_json(C.OUT / "inputs.json", {"machine": machine, "results": results})


if __name__ == "__main__":
    main()
