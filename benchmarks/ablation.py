"""What each CPU speed-up in extract buys: the model alone (no decoding), one step added at a time.

Steps, each timed in a fresh process (malloc settings must not carry over):
  eager    the model as loaded, NCHW input, glibc's default malloc, batch 32 (the code before)
  +cl      channels_last weights and input
  +fold    BatchNorm folded into the convolutions
  +heap    heap-only malloc with bounded trimming (runtime.cpu_runtime)
  +b16     batch 16 instead of 32 (extract's CPU default)

    python benchmarks/ablation.py --models efficientnet_lite0,resnet50 --seconds 8
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import _common as C

STEPS = ("eager", "+cl", "+fold", "+heap", "+b16")
CHILD = r"""
import contextlib, json, sys, time, torch
from bottleneck_features.fold import fold_batchnorm
from bottleneck_features.runtime import cpu_runtime
from bottleneck_features.sources import load_backbone
name, weights, step, seconds = sys.argv[1], sys.argv[2] or None, int(sys.argv[3]), float(sys.argv[4])
backbone = load_backbone(name, weights=weights)
model, size = backbone.model.eval(), backbone.preprocess.input_size
layout = torch.channels_last if step >= 1 else torch.contiguous_format
if step >= 2:
    model = fold_batchnorm(model, size)
model = model.to(memory_format=layout)
x = torch.randn(16 if step >= 4 else 32, 3, size, size).contiguous(memory_format=layout)
runtime = cpu_runtime(torch.device("cpu"), None) if step >= 3 else contextlib.nullcontext(lambda: None)
with torch.inference_mode(), runtime as settle:
    model(x); settle()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        model(x); settle(); n += len(x)
print(json.dumps(n / (time.perf_counter() - start)))
"""
WEIGHTS = {"efficientnet_lite0": "", "squeezenet1_1": "", "resnet50": "random", "inception_v3": "random"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(WEIGHTS))
    ap.add_argument("--seconds", type=float, default=8.0, help="timed seconds per step")
    ap.add_argument("--json", type=Path, default=C.OUT / "ablation.json")
    args = ap.parse_args()
    machine = C.machine()  # load average at the start

    rates: dict[str, dict[str, float]] = {}
    for name in args.models.split(","):
        rates[name] = {}
        for i, step in enumerate(STEPS):
            out = subprocess.run([sys.executable, "-c", CHILD, name, WEIGHTS.get(name, "random"), str(i),
                                  str(args.seconds)], capture_output=True, text=True, check=True).stdout
            rates[name][step] = json.loads(out.splitlines()[-1])
            print(name, step, f"{rates[name][step]:.1f} img/s", flush=True)
    print("\nmodel alone on CPU, images/s, each step adding to the one before")
    C.print_table(["model", *STEPS, "total"],
                  [[m, *r.values(), f"{r['+b16'] / r['eager']:.2f}x"] for m, r in rates.items()])
    C.write_json(args.json, {"machine": machine, "images_per_s": rates})


if __name__ == "__main__":
    main()
