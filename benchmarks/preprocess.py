"""Resize + centre crop in a decode worker: torchvision's transforms against `decode.resize_crop`,
which resamples only the crop box. Same decoded images, one core, ms per image, and how far apart
the pixels are.

    python benchmarks/preprocess.py
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

import numpy as np
import torchvision.transforms as T

import _common as C
from bottleneck_features.decode import resize_crop
from bottleneck_features.images import decode_rgb, find_images
from bottleneck_features.sources import load_backbone


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="efficientnet_lite0,squeezenet1_1", help="their preprocessing is used")
    ap.add_argument("--small", type=int, default=434)
    ap.add_argument("--large", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path, default=C.OUT / "preprocess.json")
    args = ap.parse_args()
    machine = C.machine()
    rows, results = [], []
    for model in args.models.split(","):
        pre = load_backbone(model).preprocess
        crop = functools.partial(resize_crop, preprocess=pre)
        reference = T.Compose([T.Resize(pre.resize_size, interpolation=T.InterpolationMode(pre.interpolation)),
                               T.CenterCrop(pre.input_size), T.PILToTensor()])
        for set_name, root in (("small", C.small_set(args.small)), ("large", C.large_set(args.large))):
            images = [decode_rgb(f, draft_to=pre.resize_size) for f in find_images(root)]
            times = {"torchvision": _ms_per_image(reference, images, args.rounds),
                     "resize_crop": _ms_per_image(crop, images, args.rounds)}
            diff = np.concatenate([(crop(im).int() - reference(im).int()).abs().numpy().ravel()
                                   for im in images])
            r = {"model": model, "set": set_name, "images": len(images), "size": f"{images[0].size}",
                 **{f"{k}_ms": v for k, v in times.items()}, "max_diff": int(diff.max()),
                 "share_differing": float((diff > 0).mean())}
            results.append(r)
            rows.append([model, set_name, r["size"], times["torchvision"], times["resize_crop"],
                         times["torchvision"] / times["resize_crop"], r["max_diff"], f"{100 * r['share_differing']:.3f} %"])
    print("\nms per image on one core, after decoding (large: JPEG draft mode, as extract decodes them)")
    C.print_table(["model", "set", "first size", "torchvision", "resize_crop", "speed-up", "max |diff|", "pixels differing"],
                  rows)
    C.write_json(args.json, {"machine": machine, "results": results})


def _ms_per_image(fn, images: list, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for im in images:
            fn(im)
        best = min(best, time.perf_counter() - start)
    return 1000 * best / len(images)


if __name__ == "__main__":
    main()
