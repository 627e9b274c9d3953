"""Extraction throughput: `bottleneck extract` against a naive loop and against the model alone.

For each image set and model, in one process, on the same files and the same loaded model:
  (a) extract  `extract_dataset` in-process with default options: files -> HDF5, empty cache, image
               files evicted from the OS page cache first; images/s = images / its wall time
  (b) naive    the tutorial loop: PIL open -> RGB -> Resize -> CenterCrop -> ToTensor -> Normalize ->
               model, batch by batch in the main process, no workers (files evicted first too)
  (c) ceiling  the model alone, run as extract runs it, on already-decoded batches, same batch size
               and threads, after one warm-up batch; in the precision --precision gives (default:
               what `extract --precision auto` picks for the model here), with (c32), the fp32
               ceiling, beside it where that is not fp32
  (d) rerun    (a) again on the now-cached folder
  (a0) before  with --before REF: (a) with the bottleneck package as it was at git REF
  (aT) device decode  with --device-decode: (a) with `--decode torchvision`, JPEGs decoded on the
               model's device (nvJPEG on CUDA; torchvision's libjpeg-turbo in the main process on CPU)
Start-up costs (imports, model build, BatchNorm folding, first batch's extra time) are measured
apart, in a fresh subprocess; (a) includes the folding and first batch but not imports or build.

    python benchmarks/throughput.py                          # everything (about 10 min on 2 cores)
    python benchmarks/throughput.py --models squeezenet1_1 --sets small --small 64   # quick check
    python benchmarks/throughput.py --models resnet50 --sets small,large --small 20000 --large 512 \
        --precision bf16 --device-decode      # on a GPU
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib
import io
import json
import math
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch
import torchvision.transforms as T
from PIL import Image

import _common as C
from bottleneck_features.decode import collate, resize_crop
from bottleneck_features.extraction import ExtractOptions, extract_dataset
from bottleneck_features.images import decode_rgb, find_images
from bottleneck_features.inference import forward_batch, prepare_model
from bottleneck_features.registry import Backbone
from bottleneck_features.runtime import AUTOCAST, auto_precision, cpu_runtime, default_batch_size, resolve_device
from bottleneck_features.sources import load_backbone

MODELS = {"efficientnet_lite0": None, "squeezenet1_1": None, "resnet50": "random", "inception_v3": "random"}
STARTUP = """
import statistics, time; t0 = time.perf_counter()
import torch
from bottleneck_features.sources import load_backbone
from bottleneck_features.extraction import ExtractOptions, extract_dataset
from bottleneck_features.inference import forward_batch, prepare_model
from bottleneck_features.runtime import cpu_runtime, resolve_device
t1 = time.perf_counter()
backbone = load_backbone({name!r}, weights={weights!r})
t2 = time.perf_counter()
device = resolve_device("auto")
model = prepare_model(backbone, device)
t3 = time.perf_counter()
size = backbone.preprocess.input_size
batch = torch.zeros({batch}, 3, size, size, dtype=torch.uint8)
times = []
with torch.inference_mode(), cpu_runtime(device, None) as settle:
    for _ in range(4):
        start = time.perf_counter(); forward_batch(model, backbone.preprocess, batch, device, None).cpu(); settle()
        times.append(time.perf_counter() - start)
print(t1 - t0, t2 - t1, t3 - t2, times[0] - statistics.median(times[1:]))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated, from: " + ", ".join(MODELS))
    ap.add_argument("--sets", default="small,large", help="small (~224 px JPEGs), large (12 MP photos)")
    ap.add_argument("--small", type=int, default=434, help="small JPEGs per model")
    ap.add_argument("--large", type=int, default=64, help="large photos per model")
    ap.add_argument("--batch-size", type=int, default=None, help="default: extract's own choice")
    ap.add_argument("--precision", default="auto", help="auto (as extract), fp32, bf16 or fp16")
    ap.add_argument("--before", metavar="REF", help="also time extract as of this git ref (column a0)")
    ap.add_argument("--device-decode", action="store_true", help="also time (a) with --decode torchvision (column aT)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds per measurement; the median is reported")
    ap.add_argument("--warm-files", action="store_true", help="do not evict image files from the page cache")
    ap.add_argument("--json", type=Path, default=C.OUT / "throughput.json")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # the model a child process measures
    args = ap.parse_args()
    machine = C.machine()  # load average at the start

    device = resolve_device("auto")
    if args.one:
        C.write_json(args.json, _measure_model(args, args.one, device))
        return
    results, startup = [], {}
    for model_name in args.models.split(","):
        # One fresh process per model: extract tunes malloc for its run, which must not leak into
        # the next model's naive loop.
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "one.json"
            subprocess.run([sys.executable, __file__, *sys.argv[1:], "--one", model_name, "--json", str(out)],
                           check=True)
            one = json.loads(out.read_text())
        results += one["results"]
        startup[model_name] = one["startup"]

    print(f"\nimages/s on {device}; (a) extract, (b) naive loop, (c) model alone, (d) cached rerun")
    for model_name, (precision, why) in {r["model"]: (r["precision"], r["why"]) for r in results}.items():
        print(f"{model_name}: {precision}{f' ({why})' if why else ''}")
    c32 = any("c32" in r for r in results)
    extra = (["c32", "c/c32"] if c32 else []) + (["a0", "a/a0"] if args.before else []) + \
        (["aT", "aT/c"] if args.device_decode else [])
    C.print_table(
        ["set", "model", "images", "a", "b", "c", "d", "a/c", "a/b", "d/a", *extra],
        [[r["set"], r["model"], r["images"], r["a"], r["b"], r["c"], r["d"], r["a"] / r["c"], r["a"] / r["b"],
          r["d"] / r["a"], *([r.get("c32", r["c"]), r["c"] / r.get("c32", r["c"])] if c32 else []),
          *([r["a0"], r["a"] / r["a0"]] if args.before else []),
          *([r["aT"], r["aT"] / r["c"]] if args.device_decode else [])] for r in results],
    )
    print("\nfixed start-up cost, seconds (fresh process)")
    C.print_table(["model", "imports", "model build", "fold + layout", "first batch extra"],
                  [[m, *s.values()] for m, s in startup.items()])
    C.write_json(args.json, {"machine": machine, "device": str(device), "before": args.before,
                             "results": results, "startup": startup})


def _measure_model(args: argparse.Namespace, model_name: str, device: torch.device) -> dict:
    options = ExtractOptions(batch_size=args.batch_size)
    before = _package_at(args.before) if args.before else None
    sets = {"small": lambda: C.small_set(args.small), "large": lambda: C.large_set(args.large)}
    weights = MODELS.get(model_name, "random")
    precision, why = args.precision, ""
    if precision == "auto":
        precision, why = auto_precision(device, model=model_name)
    backbone = load_backbone(model_name, weights=weights).using(precision=precision)
    naive_model = copy.deepcopy(backbone.model)  # extract converts its model to channels_last in place
    batch = args.batch_size or default_batch_size(device)
    results = []
    for set_name in args.sets.split(","):
        root = sets[set_name]()
        r = _measure(root, backbone, naive_model, options, device, batch, not args.warm_files, args.repeat, before,
                     args.device_decode)
        r.update(set=set_name, model=model_name, weights=weights or "pretrained", precision=precision, why=why,
                 mb_per_image=C.folder_bytes(root) / r["images"] / 1e6)
        results.append(r)
        print(f"{set_name} {model_name}: " + ", ".join(f"{k} {v:.3g}" for k, v in r.items()
                                                     if isinstance(v, float)), flush=True)
    return {"results": results, "startup": _startup(model_name, weights, batch)}


def _measure(root: Path, backbone: Backbone, naive_model: torch.nn.Module, options: ExtractOptions,
             device: torch.device, batch: int, evict: bool, repeat: int, before: dict[str, ModuleType] | None,
             device_decode: bool) -> dict:
    """Seconds for (b), then (a0), (a), (d), (aT), (c) in `repeat` interleaved rounds; medians of each.

    The naive loop goes first, before extract has tuned malloc in this process."""
    files = find_images(root)
    samples: dict[str, list[float]] = {"a": [], "d": [], "b": [], "c": [], **({"a0": []} if before else {}),
                                       **({"aT": []} if device_decode else {})}
    for _ in range(repeat):
        if evict:
            C.evict(root)
        samples["b"].append(_naive(files, backbone, naive_model, device, batch))
    for _ in range(repeat):
        if before:  # on a pristine copy of the model: extract converts its model in place
            old, old_options = _backbone_at(before, backbone, copy.deepcopy(naive_model))
            samples["a0"].append(_cold_run(before["bottleneck.extract"].extract_dataset, root, old, old_options, evict))
        with tempfile.TemporaryDirectory() as tmp:
            cache = Path(tmp) / "cache.h5"
            if evict:
                C.evict(root)
            first = extract_dataset(root, backbone, cache, options=options)
            again = extract_dataset(root, backbone, cache, options=options)
        assert first.computed == len(files) and again.computed == 0, (first.summary(), again.summary())
        samples["a"].append(first.seconds)
        samples["d"].append(again.seconds)
        if device_decode:
            samples["aT"].append(_cold_run(extract_dataset, root, backbone.using(decode="torchvision"), options,
                                           evict))
        samples["c"].append(_ceiling(files, backbone, options, device, batch))
        if backbone.spec.precision != "fp32":
            samples.setdefault("c32", []).append(_ceiling(files, backbone.using(precision="fp32"), options, device,
                                                          batch))
    result: dict = {"images": len(files), "batch": batch, "samples_s": samples}
    for key, seconds in samples.items():
        result[f"{key}_seconds"] = statistics.median(seconds)
        result[key] = len(files) / result[f"{key}_seconds"]
    return result


def _cold_run(extract_dataset_fn, root: Path, backbone, options, evict: bool) -> float:
    """Seconds of one `extract_dataset` into an empty cache, with the files evicted first if asked."""
    with tempfile.TemporaryDirectory() as tmp:
        if evict:
            C.evict(root)
        report = extract_dataset_fn(root, backbone, Path(tmp) / "cache.h5", options=options)
    assert report.computed == report.found, report.summary()
    return report.seconds


def _naive(files: list[Path], backbone: Backbone, model: torch.nn.Module, device: torch.device, batch: int) -> float:
    """The loop the tutorials write (torchvision transforms on PIL images, fp32, default threads)."""
    p = backbone.preprocess
    transform = T.Compose([
        T.Resize(p.resize_size, interpolation=T.InterpolationMode(p.interpolation)),
        T.CenterCrop(p.input_size), T.ToTensor(), T.Normalize(p.mean, p.std),
    ])
    model = model.eval().to(device)
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(files), batch):
            x = torch.stack([transform(Image.open(f).convert("RGB")) for f in files[i:i + batch]])
            model(x.to(device)).cpu()
    return time.perf_counter() - start


def _ceiling(files: list[Path], backbone: Backbone, options: ExtractOptions, device: torch.device, batch: int) -> float:
    """The model as extract runs it, on one batch decoded beforehand, for as many images as `files`."""
    p = backbone.preprocess
    decoded = collate([(i, resize_crop(decode_rgb(f, draft_to=p.resize_size), p), "")
                       for i, f in enumerate(files[:batch])])[1]
    decoded = decoded.repeat(math.ceil(batch / len(decoded)), 1, 1, 1)[:batch]
    sizes = [batch] * (len(files) // batch) + ([len(files) % batch] if len(files) % batch else [])
    model = prepare_model(backbone, device, options.compile)
    autocast = AUTOCAST[backbone.spec.precision]
    with torch.inference_mode(), cpu_runtime(device, options.threads) as settle:
        forward_batch(model, p, decoded, device, autocast).cpu()  # warm-up, not timed
        start = time.perf_counter()
        for n in sizes:
            forward_batch(model, p, decoded[:n], device, autocast).cpu()
            settle()
        return time.perf_counter() - start


def _package_at(ref: str) -> dict[str, ModuleType]:
    """The bottleneck package as it was at git `ref`, imported from a copy of its tree under
    benchmarks/out/ beside the current one: its modules by name ("bottleneck.extract", ...)."""
    repo = C.HERE.parent
    commit = subprocess.run(["git", "rev-parse", "--short", f"{ref}^{{commit}}"], cwd=repo, check=True,
                            capture_output=True, text=True).stdout.strip()
    tree = C.OUT / f"before-{commit}"
    if not (tree / "bottleneck" / "__init__.py").is_file():
        archive = subprocess.run(["git", "archive", commit, "bottleneck"], cwd=repo, check=True,
                                 capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tree, filter="data")
    current = {k: sys.modules.pop(k) for k in list(sys.modules) if k.partition(".")[0] == "bottleneck"}
    sys.path.insert(0, str(tree))
    renamed = (tree / "bottleneck" / "extraction.py").is_file()  # extract.py until 0.2.0
    try:
        importlib.import_module("bottleneck.extraction" if renamed else "bottleneck.extract")
    finally:
        sys.path.remove(str(tree))
        modules = {k: sys.modules.pop(k) for k in list(sys.modules) if k.partition(".")[0] == "bottleneck"}
        sys.modules.update(current)
    if renamed:
        modules["bottleneck.extract"] = modules["bottleneck.extraction"]
    return modules


def _backbone_at(before: dict[str, ModuleType], backbone: Backbone, model: torch.nn.Module) -> tuple[object, object]:
    """`backbone` with `model`, and quiet default options, as the extract of `before` takes them."""
    extract_at = before["bottleneck.extract"]
    if "bottleneck.spec" in before:  # 5303c68 and later: Backbone(model, spec)
        spec = before["bottleneck.spec"].ExtractorSpec.from_dict(backbone.spec.replace(precision="fp32").to_dict())
        return before["bottleneck.registry"].Backbone(model, spec), extract_at.ExtractOptions()
    old = before["bottleneck.backbones"]  # before: Backbone(name, model, preprocess, ...); options hold precision
    preprocess = old.Preprocess(**dataclasses.asdict(backbone.preprocess))
    return (old.Backbone(name=backbone.name, model=model, preprocess=preprocess, feature_dim=backbone.feature_dim,
                         weights_id=backbone.spec.weights, layer=backbone.spec.layer, pool=backbone.spec.pool),
            extract_at.ExtractOptions(progress=False))


def _startup(name: str, weights: str | None, batch: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", STARTUP.format(name=name, weights=weights, batch=batch)],
                         capture_output=True, text=True, check=True).stdout.split()
    return dict(zip(("imports_s", "build_s", "prepare_s", "first_batch_extra_s"), map(float, out), strict=True))


if __name__ == "__main__":
    main()
