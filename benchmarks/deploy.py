"""export-model, measured: every head exported as .onnx (fp32 and int8) and checked against predict,
then images/s and one-image latency of onnxruntime fp32 / int8 and the .pt2 program against this
package's own predict, on the same images.

For each dataset (photo_vs_drawing, hymenoptera) the Lite0 features are extracted into
benchmarks/out/deploy.h5 with --precision fp32 and with the default (auto: bf16 where native), and
heads are fitted on each; reruns reuse the cache.

    python benchmarks/deploy.py                          # logreg, svm, et; both datasets; both precisions
    python benchmarks/deploy.py --heads logreg --precisions fp32 --data photo_vs_drawing

Tables: (1) per dataset x precision x head: the check against the torch fp32 backbone + head and
against predict on the cached vectors, and the int8 file's held-out accuracy, size and latency beside
the fp32 file's; (2) per dataset, the logreg head: images/s end to end (decode + network, batches of
32, every image of the dataset) and one image's latency (the network alone, warm, median of 30).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import _common as C
from bottleneck_features.classifier_graph import ClassifierNet, head_module
from bottleneck_features.extraction import ExtractOptions, extract_dataset
from bottleneck_features.images import find_images
from bottleneck_features.inference import forward_batch, prepare_model
from bottleneck_features.model_export import export_model
from bottleneck_features.model_file import crop_batches, open_model, predict_with_model
from bottleneck_features.model_proof import latency_ms
from bottleneck_features.registry import Backbone
from bottleneck_features.runtime import AUTOCAST, auto_precision
from bottleneck_features.sources import build, resolve_spec
from bottleneck_features.training import fit_head, head_spec, load_head, predict_files, sidecar_path

MODEL = "efficientnet_lite0"


def fitted(cache: Path, data: str, precision: str, head: str) -> Path:
    report = extract_dataset(C.SHARED / data, resolve_spec(MODEL, precision=precision), cache, name=data,
                             options=ExtractOptions())
    out = C.OUT / "deploy" / f"{data}-{precision}-{head}.joblib"
    if out.is_file() and sidecar_path(out).is_file():
        return out
    return fit_head(cache, head=head, dataset=data, model=report.fingerprint, out=out).head_path


def exports(cache: Path, data: str, precision: str, head: str) -> dict:
    head_path = fitted(cache, data, precision, head)
    base = C.OUT / "deploy" / head_path.stem
    started = time.perf_counter()
    fp32 = export_model(head_path, base.with_suffix(".onnx"), cache=cache)
    seconds = time.perf_counter() - started
    int8 = export_model(head_path, base.with_suffix(".int8.onnx"), cache=cache, quantize="int8", check=False)
    print(fp32.summary(), int8.quantized.summary() if int8.quantized else "", sep="\n", flush=True)
    check, q = fp32.check, int8.quantized
    assert check is not None and q is not None
    return {"data": data, "precision": precision, "head": head, "form": fp32.form, "export_s": round(seconds, 1),
            "images": check.images, "same_top1_torch": check.same_top1, "max_difference": check.max_difference,
            "same_top1_cached": check.cached_same_top1, "cached_precision": check.cached_precision,
            "accuracy_fp32": q.accuracy_fp32, "accuracy_int8": q.accuracy_int8, "test_images": q.test_images,
            "int8_same_top1": q.same_top1, "mb_fp32": q.bytes_fp32 / 1e6, "mb_int8": q.bytes_int8 / 1e6,
            "ms_fp32": q.ms_fp32, "ms_int8": q.ms_int8, "head_path": str(head_path)}


def throughput(cache: Path, data: str, head_path: Path, repeat: int) -> dict:
    """images/s end to end on every image of `data`, and one image's latency (warm, network only)."""
    files = find_images(C.SHARED / data)
    base = C.OUT / "deploy" / head_path.stem
    pt2 = export_model(head_path, base.with_suffix(".pt2"), cache=cache, check=False).path
    models = {"onnxruntime fp32": base.with_suffix(".onnx"), "onnxruntime int8": base.with_suffix(".int8.onnx"),
              "torch.export .pt2 fp32": pt2}
    estimator, meta = load_head(head_path)
    spec, _ = head_spec(meta, sidecar_path(head_path))
    rates: dict[str, list[float]] = {}
    for _ in range(repeat):
        for precision in ("auto", "fp32"):  # this package's predict: decode, extract (into a fresh cache), head
            respec = fitted(cache, data, precision, "logreg")
            with tempfile.TemporaryDirectory() as scratch:
                started = time.perf_counter()
                predict_files(files, respec, Path(scratch, "c.h5"), options=ExtractOptions())
                rates.setdefault(f"bottleneck predict --head ({precision})", []).append(
                    len(files) / (time.perf_counter() - started))
        for name, path in models.items():
            started = time.perf_counter()
            predict_with_model(files, path)
            rates.setdefault(f"bottleneck predict --model-file, {name}", []).append(
                len(files) / (time.perf_counter() - started))
    one = next(batch for _, batch, _ in crop_batches(files[:1], spec.preprocess))
    assert one is not None
    latency = {name: latency_ms(open_model(path), one, runs=30) for name, path in models.items()}
    latency |= torch_latency(build(spec), estimator, one)
    return {"data": data, "images": len(files), "images_per_s": {k: float(np.median(v)) for k, v in rates.items()},
            "one_image_ms": latency}


def torch_latency(backbone: Backbone, estimator: object, one: np.ndarray) -> dict[str, float]:
    """The package's own network on one crop, warm: as predict runs it (BatchNorm folded, channels_last,
    autocast as `auto` picks; the head in scikit-learn), and the exported torch module in eager fp32."""
    device = torch.device("cpu")
    model, batch = prepare_model(backbone, device), torch.from_numpy(one).permute(0, 3, 1, 2)
    net = ClassifierNet(backbone.model, backbone.preprocess, head_module(estimator, backbone.feature_dim))
    results = {}
    for precision in dict.fromkeys((auto_precision(device, model=backbone.name)[0], "fp32")):
        dtype, name = AUTOCAST[precision], f"torch, as predict ({precision})"

        def run(_: np.ndarray, dtype: torch.dtype | None = dtype) -> np.ndarray:
            with torch.no_grad():
                features = forward_batch(model, backbone.preprocess, batch, device, dtype).float().numpy()
            return estimator.predict_proba(features)  # type: ignore[attr-defined]

        results[name] = _timed(run, one)
    with torch.no_grad():
        results["torch eager, exported module fp32"] = _timed(lambda x: net(torch.from_numpy(x)).numpy(), one)
    return results


def _timed(run, one: np.ndarray, runs: int = 30) -> float:
    for _ in range(3):
        run(one)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run(one)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="photo_vs_drawing,hymenoptera")
    ap.add_argument("--heads", default="logreg,svm,et")
    ap.add_argument("--precisions", default="fp32,auto")
    ap.add_argument("--repeat", type=int, default=2, help="rounds of the images/s runs (median)")
    ap.add_argument("--cache", type=Path, default=C.OUT / "deploy.h5")
    args = ap.parse_args()
    machine = C.machine()
    checks, speeds = [], []
    for data in args.data.split(","):
        for precision in args.precisions.split(","):
            for head in args.heads.split(","):
                checks.append(exports(args.cache, data, precision, head))
        logreg = next((c for c in checks if c["data"] == data and c["head"] == "logreg"), None)
        if logreg is not None:
            speeds.append(throughput(args.cache, data, Path(logreg["head_path"]), args.repeat))
    C.print_table(["data", "features", "head", "images", "top-1 = torch+head", "max |Δp|", "top-1 = predict",
                   "acc fp32", "acc int8", "MB fp32", "MB int8", "ms fp32", "ms int8"],
                  [(c["data"], c["cached_precision"], c["head"], c["images"], c["same_top1_torch"],
                    f"{c['max_difference']:.1e}", c["same_top1_cached"], f"{c['accuracy_fp32']:.3f}",
                    f"{c['accuracy_int8']:.3f}", c["mb_fp32"], c["mb_int8"], c["ms_fp32"], c["ms_int8"])
                   for c in checks])
    for s in speeds:
        print(f"\n{s['data']} ({s['images']} images): images/s end to end")
        C.print_table(["path", "images/s"], list(s["images_per_s"].items()))
        C.print_table(["network", "one image, ms"], list(s["one_image_ms"].items()))
    C.write_json(C.OUT / "deploy.json", {"machine": machine, "checks": checks, "speeds": speeds})


if __name__ == "__main__":
    main()
