"""extract --engine ray against the local engine, side by side in one run on this machine.

Each row extracts the same N small JPEGs (photo_vs_drawing, repeated) into a fresh cache: the local
engine, then Ray Data with 1 and 2 actors (one CPU each) on a local Ray instance started once
beforehand (its start-up is reported on its own line, not charged to a row). Each Ray row is timed
from the call to the last vector written, so it includes the actors' start-up (importing torch,
receiving the network): that fixed cost is the intercept of the two sizes, the per-image overhead
their slope against the local engine's.

    python benchmarks/ray_scaling.py                          # efficientnet_lite0, 200 and 800 images
    python benchmarks/ray_scaling.py --model squeezenet1_1 --sizes 400
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import ray

import _common as C
from bottleneck_features.extraction import ExtractOptions, extract_dataset
from bottleneck_features.sources import load_backbone


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--sizes", default="200,800")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    machine = C.machine()
    backbone = load_backbone(args.model)
    start = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    startup = time.perf_counter() - start
    print(f"ray.init (a local instance, {int(ray.cluster_resources()['CPU'])} CPUs): {startup:.1f} s")
    rows, results = [], []
    for n in (int(s) for s in args.sizes.split(",")):
        root = C.small_set(n)
        for engine, actors in (("local", 1), ("ray", 1), ("ray", 2)):
            options = ExtractOptions(batch_size=args.batch_size, engine=engine,
                                     actors=actors if engine == "ray" else 1)
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                report = extract_dataset(root, backbone, Path(tmp) / "cache.h5", options=options)
                seconds = time.perf_counter() - start
            assert report.computed == n, report.summary()
            name = engine if engine == "local" else f"ray, {actors} actor{'s' * (actors > 1)}"
            rows.append((n, name, seconds, n / seconds))
            results.append({"images": n, "engine": engine, "actors": actors, "seconds": seconds})
    C.print_table(["images", "engine", "seconds", "images/s"], rows)
    sizes = sorted({r["images"] for r in results})
    if len(sizes) >= 2:
        small, large = sizes[0], sizes[-1]

        def seconds(engine: str, actors: int, n: int) -> float:
            return next(r["seconds"] for r in results if (r["engine"], r["actors"], r["images"]) == (engine, actors, n))

        local_slope = (seconds("local", 1, large) - seconds("local", 1, small)) / (large - small)
        for actors in (1, 2):
            slope = (seconds("ray", actors, large) - seconds("ray", actors, small)) / (large - small)
            fixed = seconds("ray", actors, small) - slope * small
            print(f"ray, {actors} actor(s): {fixed:.1f} s fixed (actor start-up) + {slope * 1000:.1f} ms an image; "
                  f"local engine {local_slope * 1000:.1f} ms an image: "
                  f"{(slope - local_slope) * 1000:+.1f} ms an image on the Ray path")
    C.write_json(C.OUT / "ray_scaling.json", {"machine": machine, "ray_init_seconds": startup, "results": results})


if __name__ == "__main__":
    main()
