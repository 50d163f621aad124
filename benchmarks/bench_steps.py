"""The pipeline's steps timed (issue 10, item 4): theory steps against base training.

`python -m benchmarks.bench_steps [--repeats N] [PRESET ...]` (default demo-mlp demo-resnet, N=3)
runs each preset's pipeline 1 + N times in this process with one torch thread, after a warm-up
optimizer (the first one imports torch._dynamo, seconds that belong to no step), and prints the
per-step timings that `run_pipeline` records, the theory steps' total (estimate_margins +
jumpboard + terms_and_routes) and its ratio to train_base (target <= 0.5), and the warm median of
the certify step and of the whole run (issue 25: the step's time per preset).

The first run of a preset is reported as `cold` and the N later ones as `warm`, with their median:
the app's workers are persistent processes (resx.runs.workers), so a class sees the warm figure
from its second run on, and the cold one pays one-off costs (lazy imports, allocator growth,
kernel selection) that belong to no step of the method.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

from .harness import machine_info

THEORY_STEPS = ("estimate_margins", "jumpboard", "terms_and_routes")


def time_run(config) -> dict:
    from resx.runs.pipeline import run_pipeline
    t0 = time.perf_counter()
    t = run_pipeline(config)["timings"]
    theory = sum(t[s] for s in THEORY_STEPS)
    return {"total_s": round(time.perf_counter() - t0, 2), "timings": t, "theory_s": round(theory, 3),
            "theory_over_base": round(theory / t["train_base"], 3)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_steps")
    p.add_argument("presets", nargs="*", default=["demo-mlp", "demo-resnet"])
    p.add_argument("--repeats", type=int, default=3, help="warm runs after the cold one (default 3)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])
    from resx.core.config import PRESETS

    print(json.dumps({"machine": machine_info()}), flush=True)
    for name in a.presets:
        runs = [time_run(PRESETS[name]) for _ in range(1 + a.repeats)]
        for i, r in enumerate(runs):
            print(json.dumps({"preset": name, "run": "cold" if i == 0 else f"warm {i}", **r}), flush=True)
        warm = [r["theory_over_base"] for r in runs[1:]]
        certify = [r["timings"].get("certify") for r in runs[1:] if r["timings"].get("certify") is not None]
        print(json.dumps({"preset": name, "cold_theory_over_base": runs[0]["theory_over_base"],
                          "warm_theory_over_base_median": round(statistics.median(warm), 3) if warm else None,
                          "warm_certify_s_median": round(statistics.median(certify), 3) if certify else None,
                          "warm_total_s_median": round(statistics.median(r["total_s"] for r in runs[1:]), 2)
                          if runs[1:] else None,
                          "loadavg": [round(x, 2) for x in os.getloadavg()]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
