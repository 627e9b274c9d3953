"""Where an image's time goes in `extract` on a CPU: core-milliseconds per image for each stage, from
reading the file to the model's vectors, all on one thread, files in the page cache.

  read, open (header), decode (JPEG at reduced DCT scale), upright (EXIF), resize + crop (PIL,
  to a uint8 tensor), collate (the batch), normalize, model (as extract runs it: folded,
  channels_last, heap malloc; in fp32, and in what `--precision auto` picks here: "model auto")

It also times normalize against the form it replaced, side by side.

    python benchmarks/stages.py
    python benchmarks/stages.py --models efficientnet_lite0 --small 434 --large 16
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image, ImageOps

import _common as C
from bottleneck_features.decode import collate, normalize, resize_crop
from bottleneck_features.images import _draft, _to_rgb, find_images, read_bytes
from bottleneck_features.inference import prepare_model
from bottleneck_features.registry import Backbone
from bottleneck_features.runtime import AUTOCAST, auto_precision, cpu_runtime
from bottleneck_features.sources import load_backbone

BATCH = 16


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="efficientnet_lite0,squeezenet1_1")
    ap.add_argument("--small", type=int, default=434, help="small JPEGs")
    ap.add_argument("--large", type=int, default=16, help="12 MP photos")
    ap.add_argument("--json", type=Path, default=C.OUT / "stages.json")
    args = ap.parse_args()
    machine = C.machine()
    cpu = torch.device("cpu")
    sets = {"small": C.small_set(args.small), "large": C.large_set(args.large)}
    rows, results = [], []
    with cpu_runtime(cpu, 1):
        for model_name in args.models.split(","):
            backbone = load_backbone(model_name).using(precision="fp32")
            precision, _ = auto_precision(cpu, model=model_name)
            for set_name, root in sets.items():
                ms = _stages(find_images(root), backbone, precision)
                decode = sum(v for k, v in ms.items() if k in DECODE_STAGES)
                rows.append([set_name, f"{model_name} ({precision})", *ms.values(),
                             decode / (decode + ms["model fp32"])])
                results.append({"set": set_name, "model": model_name, "auto": precision, "ms_per_image": ms})
                print(*rows[-1], flush=True)
        columns = list(results[0]["ms_per_image"])
        print("\ncore-ms per image, one thread; share = decode stages / (decode stages + model fp32)")
        C.print_table(["set", "model", *columns, "decode share"], rows)
        broadcast, rows_form = _normalize_forms(load_backbone(args.models.split(",")[0]))
    print(f"\nnormalize, ms per image of a channels_last batch of {BATCH}, one thread: before {broadcast:.3f}, "
          f"now {rows_form:.3f}, {broadcast / rows_form:.1f}x")
    C.write_json(args.json, {"machine": machine, "results": results,
                             "normalize_ms": {"broadcast": broadcast, "rows": rows_form}})


DECODE_STAGES = ("read", "open", "decode", "upright", "resize + crop", "collate", "normalize")


def _stages(files: list[Path], backbone: Backbone, auto: str) -> dict[str, float]:
    """Milliseconds per image of each stage over `files`."""
    p, clock = backbone.preprocess, time.perf_counter
    spent = dict.fromkeys(DECODE_STAGES, 0.0)
    pixels = []
    for f in files:
        t0 = clock()
        data = read_bytes(f)
        t1 = clock()
        img = Image.open(io.BytesIO(data))
        t2 = clock()
        _draft(img, p.resize_size)
        img.load()
        t3 = clock()
        img = _to_rgb(ImageOps.exif_transpose(img))
        t4 = clock()
        pixels.append(resize_crop(img, p))
        t5 = clock()
        for stage, seconds in zip(DECODE_STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            spent[stage] += seconds
    batches = []
    for start in range(0, len(files), BATCH):
        t0 = clock()
        batch = collate([(i, x, "") for i, x in enumerate(pixels[start:start + BATCH])])[1]
        assert batch is not None
        t1 = clock()
        normalize(batch, p)
        spent["collate"] += t1 - t0
        spent["normalize"] += clock() - t1
        batches.append(batch)
    ms = {stage: 1000 * seconds / len(files) for stage, seconds in spent.items()}
    ms["model fp32"] = 1000 * _model_seconds(backbone, batches) / len(files)
    ms["model auto"] = ms["model fp32"] if auto == "fp32" else \
        1000 * _model_seconds(backbone.using(precision=auto), batches) / len(files)
    return ms


def _model_seconds(backbone: Backbone, batches: list[torch.Tensor]) -> float:
    """The network's time on normalized `batches` as extract runs it, after one warm-up batch."""
    model = prepare_model(backbone, torch.device("cpu"))
    autocast = AUTOCAST[backbone.spec.precision]
    inputs = [normalize(batch, backbone.preprocess) for batch in batches]
    with torch.inference_mode(), torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
        model(inputs[0])
        start = time.perf_counter()
        for x in inputs:
            model(x)
        return time.perf_counter() - start


def _normalize_forms(backbone: Backbone) -> tuple[float, float]:
    """ms per image: the normalization extract used before (four passes, each broadcasting a
    per-channel operand over channels_last memory), and `normalize`."""
    p = backbone.preprocess
    batch = torch.randint(0, 256, (BATCH, p.input_size, p.input_size, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
    mean, std = torch.tensor(p.mean).view(1, 3, 1, 1), torch.tensor(p.std).view(1, 3, 1, 1)
    return (_ms_per_image(lambda: batch.float().div_(255).sub_(mean).div_(std)),
            _ms_per_image(lambda: normalize(batch, p)))


def _ms_per_image(fn: Callable[[], object], rounds: int = 30) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(rounds):
        fn()
    return 1000 * (time.perf_counter() - start) / rounds / BATCH


if __name__ == "__main__":
    main()
