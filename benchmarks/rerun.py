"""Rerun speed: how long `extract` takes to decide that a cached folder has nothing to do.

1. A 20,000-file folder of tiny PNGs with the cheap `raw8` backbone: the first run, then cached
   reruns in-process (median of 3), then the same rerun through the CLI (`bottleneck extract -q`),
   whose total includes interpreter start, imports and model build.
2. A real case for d/a: 5,000 small JPEGs (photo_vs_drawing, repeated) with squeezenet1_1: first run
   (a) vs cached rerun (d), in images/s.
3. Issue #9: the CLI rerun of the cached photo_vs_drawing folder (434 JPEGs) with efficientnet_lite0
   against `python -c "import torch"`, median of 3 each, interleaved (target: under 1.5x), and whether
   that rerun imports torchvision or timm (checked in a fresh process).

    python benchmarks/rerun.py                    # all three (about 4 min on 2 cores)
    python benchmarks/rerun.py --real 0 --cli-model ""    # only the 20,000-file part
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C
from bottleneck_features.extraction import ExtractOptions, extract_dataset
from bottleneck_features.sources import load_backbone, resolve_spec

QUIET = ExtractOptions()
IMPORTS = r"""
import json, sys
from typer.testing import CliRunner
from bottleneck_features.cli import app
run = CliRunner().invoke(app, ["extract", sys.argv[1], "--model", sys.argv[2], "--cache", sys.argv[3], "-q"])
assert run.exit_code == 0 and " 0 computed" in run.output, run.output
print(json.dumps({"torchvision": "torchvision" in sys.modules, "timm": "timm" in sys.modules}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=20000, help="tiny files for part 1")
    ap.add_argument("--model", default="raw8", help="backbone for part 1")
    ap.add_argument("--real", type=int, default=5000, help="small JPEGs for part 2 (0: skip)")
    ap.add_argument("--real-model", default="squeezenet1_1")
    ap.add_argument("--cli-model", default="efficientnet_lite0", help="model for part 3 ('': skip)")
    ap.add_argument("--json", type=Path, default=C.OUT / "rerun.json")
    args = ap.parse_args()
    machine = C.machine()  # load average at the start

    result: dict = {"machine": machine}
    with tempfile.TemporaryDirectory() as tmp:
        root, cache = C.tiny_set(args.files), Path(tmp) / "cache.h5"
        backbone = load_backbone(args.model)
        first = extract_dataset(root, backbone, cache, options=QUIET)
        reruns = [extract_dataset(root, backbone, cache, options=QUIET) for _ in range(3)]
        assert all(r.computed == 0 and r.reused == args.files for r in reruns)
        cli = Path(sys.executable).with_name("bottleneck")
        start = time.perf_counter()
        subprocess.run([str(cli), "extract", str(root), "--model", args.model, "--cache", str(cache), "-q"],
                       check=True, capture_output=True)
        cli_seconds = time.perf_counter() - start
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import bottleneck_features.cli, bottleneck_features.extraction, bottleneck_features.sources"],
                       check=True)
        import_seconds = time.perf_counter() - start
    rerun_seconds = statistics.median(r.seconds for r in reruns)
    result["tiny"] = {"files": args.files, "model": args.model, "first_s": first.seconds,
                      "rerun_s": [r.seconds for r in reruns], "rerun_median_s": rerun_seconds,
                      "cli_total_s": cli_seconds, "cli_imports_s": import_seconds}
    print(f"\n{args.files} tiny files, {args.model}: first run {first.seconds:.1f} s; cached rerun "
          f"{rerun_seconds:.2f} s in-process (median of 3); CLI total {cli_seconds:.1f} s, of which "
          f"~{import_seconds:.1f} s is starting Python and importing")

    if args.real:
        root = C.small_set(args.real)
        backbone = load_backbone(args.real_model)
        with tempfile.TemporaryDirectory() as tmp:
            cache = Path(tmp) / "cache.h5"
            C.evict(root)
            a = extract_dataset(root, backbone, cache, options=QUIET)
            d = extract_dataset(root, backbone, cache, options=QUIET)
        assert a.computed == args.real and d.computed == 0
        result["real"] = {"images": args.real, "model": args.real_model, "a_s": a.seconds, "d_s": d.seconds,
                          "a": a.found_per_second, "d": d.found_per_second,
                          "d_over_a": d.found_per_second / a.found_per_second}
        print(f"\n{args.real} small JPEGs, {args.real_model}")
        C.print_table(["run", "seconds", "images/s"], [["first (a)", a.seconds, a.found_per_second],
                                                       ["cached rerun (d)", d.seconds, d.found_per_second]])
        print(f"d/a = {result['real']['d_over_a']:.0f}")

    if args.cli_model and not C.SMALL_SOURCE.is_dir():
        print(f"\n{C.SMALL_SOURCE} is missing: skipping the CLI rerun against `import torch`")
    elif args.cli_model:
        result["cli_vs_torch"] = _cli_vs_torch(C.SMALL_SOURCE, args.cli_model)
    C.write_json(args.json, result)


def _cli_vs_torch(root: Path, model: str) -> dict:
    """`bottleneck extract ROOT -q` on the cached folder against `python -c "import torch"`, median of 3 each."""
    cli = Path(sys.executable).with_name("bottleneck")
    cli_s, torch_s = [], []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache.h5"
        first = extract_dataset(root, resolve_spec(model), cache, options=QUIET)
        command = [str(cli), "extract", str(root), "--model", model, "--cache", str(cache), "-q"]
        for _ in range(3):  # interleaved, so both see the same machine load
            start = time.perf_counter()
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            cli_s.append(time.perf_counter() - start)
            assert f"{first.found} images found, 0 computed" in out, out
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import torch"], check=True)
            torch_s.append(time.perf_counter() - start)
        out = subprocess.run([sys.executable, "-c", IMPORTS, str(root), model, str(cache)],
                             check=True, capture_output=True, text=True).stdout
    imported = json.loads(out.splitlines()[-1])
    r = {"data": str(root), "images": first.found, "model": model, "first_s": first.seconds,
         "cli_rerun_s": cli_s, "cli_rerun_median_s": statistics.median(cli_s),
         "import_torch_s": torch_s, "import_torch_median_s": statistics.median(torch_s),
         "imports_torchvision": imported["torchvision"], "imports_timm": imported["timm"]}
    r["ratio"] = r["cli_rerun_median_s"] / r["import_torch_median_s"]
    print(f"\n{r['images']} JPEGs of {root.name}, {model}, cached: CLI rerun vs `python -c \"import torch\"` "
          "(median of 3 each)")
    C.print_table(["command", "seconds"], [["bottleneck extract -q", r["cli_rerun_median_s"]],
                                           ["import torch", r["import_torch_median_s"]]])
    print(f"ratio {r['ratio']:.2f}x (target < 1.5x); the rerun imports torchvision: {imported['torchvision']}, "
          f"timm: {imported['timm']}")
    return r


if __name__ == "__main__":
    main()
