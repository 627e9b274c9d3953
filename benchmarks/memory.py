"""Peak memory of extraction must not grow with the folder: 1k vs 10k tiny images, each in a fresh process.

Reports, per run: the main process's peak RSS (getrusage RUSAGE_SELF) and the peak over the run of
the whole process tree's PSS (proportional set size from /proc/<pid>/smaps_rollup, sampled every
50 ms; PSS splits pages shared between forked processes instead of counting them once per process).
On a CPU, extract decodes in threads of the main process; the tree also holds what torch forks. The default model is a
real CNN (squeezenet1_1), whose activations exercise the allocator; `--model raw64` stores 12,288
floats per image instead, so holding every vector (or anything else per image) would show.

    python benchmarks/memory.py --counts 1000,10000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import _common as C

CHILD = r"""
import json, os, resource, sys, tempfile, threading, time
from pathlib import Path
from bottleneck_features.extraction import ExtractOptions, extract_dataset
from bottleneck_features.sources import load_backbone

def tree(pid):
    kids = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            kids += open(f"/proc/{pid}/task/{tid}/children").read().split()
        except OSError:
            pass
    return [pid] + [p for k in kids for p in tree(int(k))]

def pss_kib(pid):
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0

peak, done = 0, threading.Event()
def sample():
    global peak
    while not done.wait(0.05):
        peak = max(peak, sum(pss_kib(p) for p in tree(os.getpid())))

backbone = load_backbone(sys.argv[2])
threading.Thread(target=sample, daemon=True).start()
with tempfile.TemporaryDirectory() as tmp:
    report = extract_dataset(Path(sys.argv[1]), backbone, Path(tmp) / "cache.h5",
                             options=ExtractOptions())
done.set()
print(json.dumps({
    "images": report.computed, "seconds": report.seconds,
    "main_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "tree_peak_pss_mib": peak / 1024,
}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", default="1000,10000")
    ap.add_argument("--model", default="squeezenet1_1")
    ap.add_argument("--json", type=Path, default=C.OUT / "memory.json")
    args = ap.parse_args()
    machine = C.machine()  # load average at the start

    runs = []
    for n in map(int, args.counts.split(",")):
        root = C.tiny_set(n)
        out = subprocess.run([sys.executable, "-c", CHILD, str(root), args.model],
                             capture_output=True, text=True, check=True).stdout
        runs.append(json.loads(out.splitlines()[-1]))
        print(runs[-1], flush=True)
    keys = ["main_peak_rss_mib", "tree_peak_pss_mib"]
    rows = [[r["images"], r["seconds"], *(r[k] for k in keys)] for r in runs]
    rows.append([f"ratio {runs[-1]['images']}/{runs[0]['images']}", "",
                 *(runs[-1][k] / runs[0][k] for k in keys)])
    print(f"\npeak memory of extract_dataset, {args.model}, fresh process per run (MiB)")
    C.print_table(["images", "seconds", "main RSS", "tree PSS"], rows)
    C.write_json(args.json, {"machine": machine, "model": args.model, "runs": runs})


if __name__ == "__main__":
    main()
